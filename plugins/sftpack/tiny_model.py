"""Build a tiny Qwen2-architecture model and tokenizer offline: the test fixture and the demo's model.

    sftpack tiny-model OUT_DIR [--seed 0] [--shape tiny|small|qwen2.5-1.5b] [--tokenizer DIR]

No hub access: a byte-level BPE tokenizer is trained with `tokenizers` on the GSM8K sample shipped in the
package (Qwen2's split regex, NFC, ByteLevel), Qwen's special tokens are appended in Qwen's order, and a
randomly initialised `Qwen2ForCausalLM` (hidden 64, 2 layers, 4 heads, 2 KV heads, tied embeddings) is saved
beside it. `--tokenizer DIR` copies that tokenizer folder instead (e.g. Qwen2.5's real one, built offline by
`sftpack.qwen_tokenizer`); its bos/eos/pad ids go into the configs. The same seed gives byte-identical files.
The folder loads in transformers 4.57 and 5.x, in LLaMA-Factory (`template: qwen`), ms-swift
(`--model_type qwen2`) and lm-eval (`--model hf`).

The folder is built in a temp folder beside it and moved into place at the end, with a marker
(`.sftpack-model.json`: every file and its sha256). A folder that holds a model sftpack did not build (a
`config.json` or weights without the marker, or changed since) is refused before any work unless
`overwrite=True` (`--overwrite`); rebuilding sftpack's own replaces it, and other files there are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
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


TINY_BPE_RANKS = 3000   # build_tokenizer's default: the byte-level BPE ranks it learns from the GSM8K sample


def tiny_tokenizer_size(vocab_size: int = TINY_BPE_RANKS) -> int:
    """len(build_tokenizer(vocab_size)) without training it (~1.4 s): the learnt ranks plus SPECIAL_TOKENS. The
    vocabulary of the tiny/small shapes, for what needs only the shape (sftpack estimate --shape, bench's plan);
    tests/test_tiny_model.py trains the tokenizer and compares."""
    return vocab_size + len(SPECIAL_TOKENS)


def build_tokenizer(vocab_size: int = TINY_BPE_RANKS):
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


MARKER = ".sftpack-model.json"
MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
MODEL_NAMES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "model.safetensors.index.json", "pytorch_model.bin.index.json")


def _marker(folder: Path) -> dict:
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}


_HASHED: dict[tuple, str] = {}   # (path, size, mtime) -> sha256: weights of GBs are read once per run


def _unchanged(path: Path, record: dict | None) -> bool:
    from sftpack.dataset_info import file_sha256

    if record is None or not path.is_file():
        return False
    stat = path.stat()
    if stat.st_size != record.get("size"):
        return False
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = file_sha256(path)
    return _HASHED[key] == record.get("sha256")


def _check_target(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, a folder holding a model (config.json, weights) that sftpack did not build."""
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise SftpackError(f"{out}: {folder} is a file, not a folder; nothing was written")
            break
    if overwrite or not out.is_dir():
        return
    owned = _marker(out)
    foreign = [p.name for p in sorted(out.iterdir())
               if (p.name in MODEL_NAMES or p.name.endswith(MODEL_SUFFIXES)) and not _unchanged(p, owned.get(p.name))]
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise SftpackError(f"{out}: holds a model sftpack did not build, or one changed since ({shown}); nothing was "
                           "changed. Choose another folder, or pass --overwrite to replace it")


def _move_into(built: Path, out: Path, overwrite: bool) -> None:
    """Move the built files into `out`: a rename when `out` is new or empty; else file by file, the marker last,
    removing what sftpack built there before and no longer builds (if unchanged)."""
    from sftpack.convert import signals_held

    umask = os.umask(0)
    os.umask(umask)
    os.chmod(built, 0o777 & ~umask)   # mkdtemp makes 0700; a folder made by mkdir gets this
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        with signals_held():
            os.rename(built, out)
        return
    owned = _marker(out)
    new = _marker(built)
    folders = [name for name in [*new, MARKER] if (out / name).is_dir()]
    if folders:
        raise SftpackError(f"{out}: {', '.join(folders)} is a folder where the model has a file; nothing was changed")
    if not overwrite:
        clash = [name for name in new if (out / name).exists() and not _unchanged(out / name, owned.get(name))
                 and not _unchanged(out / name, new[name])]
        if clash:
            raise SftpackError(f"{out}: {', '.join(clash[:4])} would be replaced, and sftpack did not write them (or "
                               "they were changed since); nothing was changed. Pass --overwrite to replace them")
    with signals_held():
        (out / MARKER).unlink(missing_ok=True)
        for name in new:
            os.replace(built / name, out / name)
        for name, record in owned.items():
            if name not in new and _unchanged(out / name, record):
                (out / name).unlink()
        os.replace(built / MARKER, out / MARKER)


def build(out_dir: Path, seed: int = 0, shape: str = "tiny", tokenizer: Path | None = None,
          overwrite: bool = False) -> Path:
    """Write tokenizer + randomly initialised Qwen2ForCausalLM of `shape` to `out_dir`; return it.

    `tokenizer`: a tokenizer folder to copy instead of training the tiny GSM8K one (e.g. Qwen2.5's, built by
    `sftpack.qwen_tokenizer.build`); the config's bos/eos/pad ids are that tokenizer's. A folder holding a
    model sftpack did not build is refused unless `overwrite` (see the module docstring).
    """
    from sftpack.artifacts import clean_stale_temps, temp_dir
    from sftpack.convert import interruptible

    if shape not in SHAPES:
        raise ValueError(f"Unknown shape {shape!r}. Expected: {sorted(SHAPES)}")
    out = Path(out_dir)
    _check_target(out, overwrite)
    folder = Path(tokenizer) if tokenizer is not None else None
    tok = _load_tokenizer(folder) if folder is not None else build_tokenizer()
    out.parent.mkdir(parents=True, exist_ok=True)
    for note in clean_stale_temps(out.parent, files=False):
        print(f"sftpack: {note}", file=sys.stderr)
    built = temp_dir(out.parent, "build")
    try:
        with interruptible():
            _write_model(built, seed, shape, tok, folder)
            _move_into(built, out, overwrite)
    finally:
        shutil.rmtree(built, ignore_errors=True)
    return out


def _write_model(out: Path, seed: int, shape: str, tok, folder: Path | None) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from sftpack.artifacts import file_mode
    from sftpack.dataset_info import file_sha256

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
    for path in out.iterdir():
        path.chmod(file_mode())   # safetensors writes 0600; give every file the mode open() would
    files = {p.name: {"sha256": file_sha256(p), "size": p.stat().st_size} for p in sorted(out.iterdir()) if p.is_file()}
    marker = {"written_by": "sftpack tiny-model", "shape": shape, "seed": seed,
              "tokenizer": folder.name if folder is not None else None, "files": files,
              "note": "sftpack replaces these files on a rebuild only while they are unchanged"}
    (out / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
