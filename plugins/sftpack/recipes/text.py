"""Pure text helpers shared by the recipe steps: normalisation, language guess, shingles, tokenizers.

Nothing here reads rows or files except `load_tokenizer`, which loads a tokenizer once per process.
"""

from __future__ import annotations

import re
import string
import unicodedata
from pathlib import Path
from typing import Any, Callable

from sftpack.errors import SftpackError

NORMALIZERS = ("nfkc", "lower", "punct", "whitespace")  # applied in this order, whatever order a recipe lists
DEFAULT_NORMALIZE = ("nfkc", "lower", "whitespace")

_PUNCT_RE = re.compile(r"[^\w\s]+")


def collapse_whitespace(text: str) -> str:
    """`" ".join(text.split())`, fast when there is nothing to collapse: every whitespace character but the
    ASCII space is non-printable (Unicode 'Separator'/'Other'), so printable text without a double space
    only needs its ends trimmed."""
    if "  " not in text and text.isprintable():
        return text.strip(" ")
    return " ".join(text.split())


def normalizer(ops: tuple[str, ...]) -> Callable[[str], str]:
    """A function applying the named normalisers (`NORMALIZERS`) in their fixed order."""
    nfkc, lower, punct, space = (op in ops for op in NORMALIZERS)
    if nfkc and lower and space and not punct:  # the default, inlined: it runs once per row per field
        def default(text: str) -> str:
            if not text.isascii():  # ASCII is NFKC-invariant
                text = unicodedata.normalize("NFKC", text)
            text = text.lower()
            if "  " not in text and text.isprintable():
                return text.strip(" ")
            return " ".join(text.split())
        return default

    def apply(text: str) -> str:
        if nfkc and not text.isascii():
            text = unicodedata.normalize("NFKC", text)
        if lower:
            text = text.lower()
        if punct:
            text = _PUNCT_RE.sub(" ", text)
        if space:
            text = collapse_whitespace(text)
        return text
    return apply


# ASCII bytes that str.split() splits on (besides the space): tab, LF, VT, FF, CR, FS, GS, RS, US.
_ASCII_SPACE = b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f"


def key_encoder(ops: tuple[str, ...]) -> Callable[[str], bytes]:
    """`normalizer(ops)(text).encode("utf-8")`, computed on bytes for ASCII text (one C-level table lookup
    for case and whitespace instead of splitting into words): the dedup key of a row, ~4x faster."""
    norm = normalizer(ops)
    if "punct" in ops or "whitespace" not in ops:
        return lambda text: norm(text).encode("utf-8", "surrogatepass")
    source = _ASCII_SPACE + (string.ascii_uppercase.encode() if "lower" in ops else b"")
    target = b" " * len(_ASCII_SPACE) + (string.ascii_lowercase.encode() if "lower" in ops else b"")
    table = bytes.maketrans(source, target)

    def encode(text: str) -> bytes:
        if text.isascii():
            data = text.encode("ascii").translate(table)
            while b"  " in data:
                data = data.replace(b"  ", b" ")
            return data.strip(b" ")
        return norm(text).encode("utf-8", "surrogatepass")
    return encode


def normalize(text: str, ops: tuple[str, ...]) -> str:
    """Apply the named normalisers (`NORMALIZERS`) in their fixed order."""
    return normalizer(ops)(text)


# CJK Unified Ideographs, Extension A and Compatibility Ideographs.
CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LATIN_RE = re.compile(r"[A-Za-z]")


def guess_language(text: str, zh_ratio: float) -> str:
    """'zh' when CJK ideographs are at least `zh_ratio` of the CJK + Latin letters, 'en' when there are
    Latin letters otherwise, 'other' when there are neither (digits, symbols, other scripts)."""
    cjk = len(CJK_RE.findall(text))
    latin = len(LATIN_RE.findall(text))
    if cjk + latin == 0:
        return "other"
    return "zh" if cjk >= zh_ratio * (cjk + latin) else "en"


def shingles(text: str, n: int, unit: str) -> set[bytes]:
    """The set of `n`-grams of `text`: characters (`unit='char'`, good for Chinese; as UTF-32 byte slices,
    one fixed-width slice per n-gram) or words (UTF-8)."""
    if unit == "char":
        data = text.encode("utf-32-le")
        width = 4 * n
        if len(data) <= width:
            return {data}
        return {data[i:i + width] for i in range(0, len(data) - width + 4, 4)}
    words = text.split()
    if len(words) <= n:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i:i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


_TOKENIZERS: dict[str, Any] = {}


def load_tokenizer(name: str):
    """A `tokenizers.Tokenizer` from a local folder (its tokenizer.json), a tokenizer.json file, or a hub id
    loaded with transformers (needs the hub or its cache). Cached per process. Local or hub id is
    `sftpack.paths.looks_local`'s rule: a missing local-looking path (`./runs/tiny-model`, `x/tokenizer.json`)
    is an error at once, never a hub request."""
    if name in _TOKENIZERS:
        return _TOKENIZERS[name]
    from tokenizers import Tokenizer

    from sftpack.paths import looks_local

    path = Path(name).expanduser()
    if not path.exists() and looks_local(name):
        raise SftpackError(f"tokenizer {name}: no such file or folder (resolved to {path.resolve()}). Build one "
                           "with `sftpack tiny-model DIR`, or pass a model folder with a tokenizer.json")
    if path.is_dir() and (path / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    elif path.is_file() and path.suffix == ".json":
        tokenizer = Tokenizer.from_file(str(path))
    elif path.exists():
        raise SftpackError(f"tokenizer {name} (resolved to {path.resolve()}): no tokenizer.json there; "
                           "pass a model folder with a fast tokenizer, a tokenizer.json, or a hub id")
    else:
        from sftpack.extras import require

        require("transformers", what=f"tokenizer '{name}' (a hub id, loaded with transformers)")
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(name).backend_tokenizer
        except Exception as err:  # offline, unknown repo, slow-only tokenizer
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SftpackError(f"tokenizer '{name}': not a local path (resolved to {path.resolve()}) and not "
                               f"loadable from the hub: {first}. Build one with `sftpack tiny-model DIR` "
                               "or pass a local model folder") from None
    _TOKENIZERS[name] = tokenizer
    return tokenizer


def count_tokens(tokenizer, texts: list[str]) -> list[int]:
    """Token counts of `texts` without special tokens (batched in Rust)."""
    if not texts:
        return []
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # no offsets: ~2x faster
    return [len(encoding.ids) for encoding in encode(texts, add_special_tokens=False)]

