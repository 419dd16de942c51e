"""Qwen2.5's real tokenizer, built offline from the `qwen.tiktoken` ranks that PyPI's `dashscope` wheel ships.

    pip download dashscope==2.0.2 --no-deps --only-binary=:all: -d wheels/

    from pathlib import Path
    from sftpack import qwen_tokenizer as q
    Path("qwen.tiktoken").write_bytes(q.qwen_tiktoken_from_wheel(Path("wheels/dashscope-2.0.2-py3-none-any.whl")))
    out = q.build(Path("qwen.tiktoken"), Path("qwen2.5-tokenizer"))          # ~4.5 s on 2 cores
    print(q.verify(out, Path("qwen.tiktoken"), q.gsm8k_sample_texts()))     # ids vs tiktoken, ~4 s

    sftpack tiny-model OUT --shape qwen2.5-1.5b --tokenizer qwen2.5-tokenizer

`build` writes a `Qwen2TokenizerFast` folder like Qwen/Qwen2.5-1.5B's (base): byte-level BPE whose vocabulary is the
151,643 ranks, merges derived from the ranks by transformers' `TikTokenConverter`, NFC, Qwen2's split regex +
ByteLevel, and the 22 added tokens at ids 151643-151664; eos = pad = `<|endoftext|>`, no bos (as the base model).
Two known differences from the hub folder: the merge list is the converter's (every split of a token into two
tokens, 294,166 merges) rather than Qwen's `merges.txt` (one per token, 151,387) — `verify` checks the ids agree with
tiktoken — and the chat template is `tiny_model.CHAT_TEMPLATE` (Qwen2.5's without the tool-calling branches).
The same `qwen.tiktoken` gives the same bytes: tokenizer.json 18.7 MB, the folder 2.7 MiB as tar.gz.
Framework packages (tokenizers, transformers, tiktoken) are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sftpack.errors import SftpackError
from sftpack.tiny_model import CHAT_TEMPLATE, QWEN2_SPLIT_RE, compat_tokenizer_config, gsm8k_sample_texts

__all__ = ["ADDED_TOKENS", "build", "gsm8k_sample_texts", "qwen_tiktoken_from_wheel", "verify"]

BPE_RANKS = 151_643  # lines of qwen.tiktoken; the added tokens follow at ids 151643..151664
# (content, special) in id order, as Qwen/Qwen2.5-1.5B's tokenizer_config.json `added_tokens_decoder`.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
)
# Qwen2.5's `additional_special_tokens`: the special added tokens except <|endoftext|> (eos and pad).
ADDITIONAL_SPECIAL_TOKENS = tuple(token for token, special in ADDED_TOKENS[1:] if special)
EOS_TOKEN = PAD_TOKEN = "<|endoftext|>"  # the base model's; Qwen2.5-1.5B-Instruct's eos is <|im_end|>
MODEL_MAX_LENGTH = 131072
HELLO_WORLD = ("Hello world", [9707, 1879])  # Qwen2.5's ids, a quick check that the ranks are Qwen's


def qwen_tiktoken_from_wheel(wheel: Path) -> bytes:
    """The bytes of `qwen.tiktoken` inside a `dashscope` wheel (e.g. dashscope-2.0.2-py3-none-any.whl)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [name for name in archive.namelist() if name.endswith("qwen.tiktoken")]
            if not names:
                raise SftpackError(f"{wheel}: no member ending in 'qwen.tiktoken'; use a dashscope wheel "
                                   "(pip download dashscope==2.0.2 --no-deps --only-binary=:all:)")
            return archive.read(names[0])
    except (OSError, zipfile.BadZipFile) as err:
        raise SftpackError(f"{wheel}: cannot read the wheel: {err}") from err


@contextmanager
def _tiktoken_cache_off() -> Iterator[None]:
    """tiktoken caches even local files, keyed by path, in /tmp: a changed file at the same path would be stale."""
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


def _check_ranks(ranks: Iterable[int], tiktoken_file: Path) -> None:
    if sorted(ranks) != list(range(BPE_RANKS)):
        raise SftpackError(f"{tiktoken_file}: expected ranks 0..{BPE_RANKS - 1}, one per line, as Qwen's "
                           "qwen.tiktoken has; is this the file from the dashscope wheel?")


def load_ranks(tiktoken_file: Path) -> dict[bytes, int]:
    """qwen.tiktoken's `base64-token rank` lines as {token bytes: rank}, checked to be Qwen's 151,643 ranks."""
    from tiktoken.load import load_tiktoken_bpe

    with _tiktoken_cache_off():
        try:
            ranks = load_tiktoken_bpe(str(tiktoken_file))
        except (OSError, ValueError) as err:
            raise SftpackError(f"{tiktoken_file}: cannot read tiktoken ranks: {err}") from err
    _check_ranks(ranks.values(), tiktoken_file)
    return ranks


def _vocab_and_merges(tiktoken_file: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocabulary and merges from the ranks, exactly as transformers' TikTokenConverter derives them."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    with _tiktoken_cache_off():
        try:
            vocab, merges = TikTokenConverter(vocab_file=str(tiktoken_file)).extract_vocab_merges_from_model(
                str(tiktoken_file))
        except (OSError, ValueError) as err:
            raise SftpackError(f"{tiktoken_file}: cannot read tiktoken ranks: {err}") from err
    _check_ranks(vocab.values(), tiktoken_file)
    return vocab, merges


def _backend(tiktoken_file: Path):
    """The `tokenizers.Tokenizer` of Qwen2.5's tokenizer.json: BPE, NFC, split regex + ByteLevel, added tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab, merges = _vocab_and_merges(tiktoken_file)
    tokenizer = Tokenizer(models.BPE(vocab, merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                                     end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_tokens([AddedToken(token, special=special, normalized=False) for token, special in ADDED_TOKENS])
    return tokenizer


def _readme(tiktoken_file: Path) -> str:
    sha256 = hashlib.sha256(tiktoken_file.read_bytes()).hexdigest()
    return ("# Qwen2.5 tokenizer, built offline by `sftpack.qwen_tokenizer.build`\n\n"
            f"From `qwen.tiktoken` (sha256 {sha256}) of PyPI's dashscope wheel: {BPE_RANKS:,} byte-level BPE ranks "
            f"and {len(ADDED_TOKENS)} added tokens at ids {BPE_RANKS}-{BPE_RANKS + len(ADDED_TOKENS) - 1}; "
            f"eos = pad = {EOS_TOKEN}, no bos (as Qwen/Qwen2.5-1.5B). Ids checked against tiktoken by "
            "`sftpack.qwen_tokenizer.verify`.\n")


def build(tiktoken_file: Path, out_dir: Path) -> Path:
    """Write Qwen2.5-1.5B's tokenizer (Qwen2TokenizerFast) built from `tiktoken_file` to `out_dir`; return it."""
    from transformers import Qwen2TokenizerFast

    tiktoken_file, out = Path(tiktoken_file), Path(out_dir)
    wrapped = Qwen2TokenizerFast(
        tokenizer_object=_backend(tiktoken_file),
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=list(ADDITIONAL_SPECIAL_TOKENS),
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(out)
    compat_tokenizer_config(out, list(ADDITIONAL_SPECIAL_TOKENS))
    (out / "README.md").write_text(_readme(tiktoken_file))
    return out


def _tiktoken_encoding(tiktoken_file: Path):
    """Qwen's reference encoder: tiktoken with the same ranks, regex (same syntax in tiktoken) and added tokens."""
    import tiktoken

    specials = {token: BPE_RANKS + index for index, (token, _) in enumerate(ADDED_TOKENS)}
    return tiktoken.Encoding(name="qwen", pat_str=QWEN2_SPLIT_RE, mergeable_ranks=load_ranks(tiktoken_file),
                             special_tokens=specials)


def _mismatch(text: str, ours: list[int], reference: list[int], limit: int = 200) -> dict:
    """The text and both id lists around their first difference, truncated to stay readable."""
    start = next((i for i, (a, b) in enumerate(zip(ours, reference, strict=False)) if a != b),
                 min(len(ours), len(reference)))
    window = slice(max(0, start - 8), start + 16)
    return {"text": text[:limit], "first_difference_at": start, "window_start": window.start,
            "hf_ids": ours[window], "tiktoken_ids": reference[window]}


def verify(tokenizer_dir: Path, tiktoken_file: Path, texts: Iterable[str], strict: bool = True) -> dict:
    """Encode `texts` with the built tokenizer and with tiktoken; return counts, raise on a difference if `strict`.

    tiktoken gets the NFC-normalised text (Qwen's own tiktoken tokenizer normalises the same way) and may match the
    added tokens in it, like the HF tokenizer. Returns {texts, tokens (ours), mismatched_texts, first_mismatch
    (None, or the text and both id lists around the first difference), hello_world_ids}. With `strict` (default)
    any mismatch, or 'Hello world' not giving [9707, 1879], raises SftpackError naming the folder and the first
    mismatch; with `strict=False` the caller decides.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    encoding = _tiktoken_encoding(Path(tiktoken_file))
    texts = list(texts)
    ours = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    reference = encoding.encode_batch([unicodedata.normalize("NFC", text) for text in texts], allowed_special="all")
    bad = [i for i, (a, b) in enumerate(zip(ours, reference, strict=True)) if a != b]
    hello = tokenizer(HELLO_WORLD[0], add_special_tokens=False)["input_ids"]
    counts = {"texts": len(texts), "tokens": sum(len(ids) for ids in ours), "mismatched_texts": len(bad),
              "first_mismatch": _mismatch(texts[bad[0]], ours[bad[0]], reference[bad[0]]) if bad else None,
              "hello_world_ids": hello}
    if strict and hello != HELLO_WORLD[1]:
        raise SftpackError(f"{tokenizer_dir}: {HELLO_WORLD[0]!r} gives {hello}, Qwen2.5 gives {HELLO_WORLD[1]}; "
                           f"is {tiktoken_file} Qwen's qwen.tiktoken?")
    if strict and bad:
        raise SftpackError(f"{tokenizer_dir}: ids differ from tiktoken's ({tiktoken_file}) on {len(bad)} of "
                           f"{len(texts)} texts; first: {json.dumps(counts['first_mismatch'], ensure_ascii=False)}")
    return counts
