"""Build a tiny Qwen2-architecture model and tokenizer offline: the test fixture and the demo's model.

    sftpack tiny-model OUT_DIR [--seed 0] [--shape tiny|small|qwen2.5-1.5b] [--tokenizer DIR]

No hub access: a byte-level BPE tokenizer is trained with `tokenizers` on the GSM8K sample shipped in the
package (Qwen2's split regex, NFC, ByteLevel), Qwen's special tokens are appended in Qwen's order, and a
randomly initialised `Qwen2ForCausalLM` (hidden 64, 2 layers, 4 heads, 2 KV heads, tied embeddings) is saved
beside it. `--tokenizer DIR` copies that tokenizer folder instead (e.g. Qwen2.5's real one, built offline by
`sftpack.qwen_tokenizer`); its bos/eos/pad ids go into the configs. The same seed gives byte-identical files.
The folder loads in transformers 4.57 and 5.x, in LLaMA-Factory (`template: qwen`), ms-swift
(`--model_type qwen2`) and lm-eval (`--model hf`).
"""

from __future__ import annotations

import json
from pathlib import Path

from sftpack.errors import SftpackError
from sftpack.samples import sample_path

# Qwen2's pre-tokenizer split pattern (Qwen/Qwen2.5-1.5B tokenizer.json, `pre_tokenizer.pretokenizers[0]`).
QWEN2_SPLIT_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen2.5's chat template without the tool-calling branches.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# name -> Qwen2Config keyword arguments. `qwen2.5-1.5b` is exactly Qwen/Qwen2.5-1.5B's shape (random weights).
SHAPES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096),
    # The demo's default: big enough to learn GSM8K's answer format on a CPU in minutes, where "tiny" loops.
    "small": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, max_position_embeddings=32768, vocab_size=151936),
}


def gsm8k_sample_texts() -> list[str]:
    """Questions and answers of the shipped GSM8K sample (train, then test): 2,400 texts."""
    texts = []
    for split in ("train", "test"):
        with sample_path("gsm8k", split).open(encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                texts.append(row["question"])
                texts.append(row["answer"])
    return texts


def build_tokenizer(vocab_size: int = 3000):
    """A Qwen2TokenizerFast with a BPE vocabulary trained on the shipped GSM8K sample."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(gsm8k_sample_texts(), trainer=trainer)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    wrapped = Qwen2TokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=32768,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def compat_tokenizer_config(out: Path, additional_special_tokens: list[str]) -> None:
    """transformers 5 writes `extra_special_tokens` as a list, which 4.57 cannot read: write the 4.x key instead."""
    tok_config_path = out / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text())
    extra = tok_config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        tok_config["additional_special_tokens"] = extra
    tok_config.setdefault("additional_special_tokens", list(additional_special_tokens))
    tok_config_path.write_text(json.dumps(tok_config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _compat_files(out: Path, rope_theta: float, additional_special_tokens: list[str]) -> None:
    """Make one folder load the same in transformers 4.57 and 5.x (see FRAMEWORK_FACTS)."""
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["rope_theta"] = rope_theta
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    compat_tokenizer_config(out, additional_special_tokens)


def _load_tokenizer(folder: Path):
    """A tokenizer folder given with `--tokenizer`, loaded with AutoTokenizer; errors name the folder."""
    if not folder.is_dir():
        raise SftpackError(f"tokenizer folder {folder.resolve()} not found (build Qwen2.5's with "
                           "benchmarks/gpu/prepare.py, or leave --tokenizer out for the tiny one)")
    if not (folder / "tokenizer_config.json").is_file():
        raise SftpackError(f"{folder.resolve()}: no tokenizer_config.json; pass a folder written by "
                           "save_pretrained (e.g. by sftpack.qwen_tokenizer.build)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SftpackError(f"{folder.resolve()}: cannot load a tokenizer: {first_line}") from err


def _vocab_size(shape: str, tokenizer_size: int) -> int:
    """The shape's own vocab_size when it sets one (embedding rows), else the tokenizer's size."""
    vocab_size = SHAPES[shape].get("vocab_size", tokenizer_size)
    if vocab_size < tokenizer_size:
        raise SftpackError(f"shape {shape!r} has vocab_size {vocab_size:,} but the tokenizer has {tokenizer_size:,} "
                           "tokens: the embedding must have a row for every token id")
    return vocab_size


def _special_ids(tokenizer) -> dict[str, int]:
    """bos/eos/pad ids for the configs; no bos or pad falls back as Qwen's configs do (bos = pad = <|endoftext|>)."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else pad
    return {"bos": bos, "eos": eos, "pad": pad}


def _tokenizer_line(tokenizer, folder: Path | None) -> str:
    specials = f"eos {tokenizer.eos_token}, pad {tokenizer.pad_token}, bos {tokenizer.bos_token}"
    if folder is None:
        return (f"Tokenizer: byte-level BPE trained on the shipped GSM8K sample ({len(tokenizer):,} tokens; "
                f"{specials}).\n")
    return f"Tokenizer: copied from `{folder.name}` ({len(tokenizer):,} tokens; {specials}).\n"


def build(out_dir: Path, seed: int = 0, shape: str = "tiny", tokenizer: Path | None = None) -> Path:
    """Write tokenizer + randomly initialised Qwen2ForCausalLM of `shape` to `out_dir`; return it.

    `tokenizer`: a tokenizer folder to copy instead of training the tiny GSM8K one (e.g. Qwen2.5's, built by
    `sftpack.qwen_tokenizer.build`); the config's bos/eos/pad ids are that tokenizer's.
    """
    if shape not in SHAPES:
        raise ValueError(f"Unknown shape {shape!r}. Expected: {sorted(SHAPES)}")
    folder = Path(tokenizer) if tokenizer is not None else None
    tok = _load_tokenizer(folder) if folder is not None else build_tokenizer()
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    ids = _special_ids(tok)
    rope_theta = 1000000.0
    kwargs = dict(SHAPES[shape])
    kwargs["vocab_size"] = _vocab_size(shape, len(tok))
    config = Qwen2Config(
        **kwargs,
        tie_word_embeddings=True,
        rope_theta=rope_theta,
        rms_norm_eps=1e-6,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        torch_dtype="bfloat16" if shape == "qwen2.5-1.5b" else "float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    if shape == "qwen2.5-1.5b":
        model = model.to(torch.bfloat16)
    stop_ids = list(dict.fromkeys([ids["eos"], ids["pad"]]))  # tiny: [<|im_end|>, <|endoftext|>] as Qwen-Instruct
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"],
        eos_token_id=stop_ids if len(stop_ids) > 1 else stop_ids[0],
        pad_token_id=ids["pad"],
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    extras = getattr(tok, "extra_special_tokens", None)  # transformers 5: a list
    _compat_files(out, rope_theta, list(extras) if isinstance(extras, list) else [])
    readme = (f"# Random-weight Qwen2 model ({shape}), built offline by `sftpack tiny-model`\n\n"
              f"seed {seed}; {sum(p.numel() for p in model.parameters()):,} parameters. Weights are random: "
              "accuracy measured with it means nothing; time and memory per token match the shape.\n\n"
              + _tokenizer_line(tok, folder))
    (out / "README.md").write_text(readme)
    return out
