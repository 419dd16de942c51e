"""Per-row features that select steps decide on, collected while rows stream past.

A collector sees one row at a time (in a worker process when the pass runs in parallel), keeps only a small
value per row (a 64-bit hash, a length, a token count, a MinHash signature, a group code) and returns a
picklable result; `merge` concatenates the results of consecutive chunks in row order. Row text is never kept.
"""

from __future__ import annotations

from array import array
from typing import Any, Callable

import numpy as np

from sftpack.converters import FieldError
from sftpack.recipes import text as textlib

TOKEN_BATCH = 2048


def field_text(row: dict, tags: dict, name: str, tag_names: frozenset[str]) -> str:
    """The text of field (or tag) `name`: strings as they are, other JSON values as canonical JSON."""
    if name in tag_names:
        value = tags.get(name)
    else:
        value = row.get(name)
    if value is None:
        raise FieldError(name, "missing" if name not in row and name not in tag_names else "is null")
    if isinstance(value, str):
        return value
    import orjson

    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode("utf-8")


class Collector:
    needs_row = True

    def key(self):
        """Collectors with the same key in one pass compute the same values: only the first one runs."""
        return None

    def add(self, row: dict, tags: dict) -> None:
        raise NotImplementedError

    def skip(self) -> None:
        """A placeholder for a row this step does not look at (keeps the arrays aligned with the rows)."""
        raise NotImplementedError

    def result(self) -> Any:
        raise NotImplementedError

    @staticmethod
    def merge(results: list[Any]) -> Any:
        raise NotImplementedError


class ArrayCollector(Collector):
    """One number per row in an `array` of `typecode`; merged into one numpy array of `dtype`."""

    typecode = "q"
    dtype = np.int64

    def __init__(self):
        self.values = array(self.typecode)

    def skip(self):
        self.values.append(0)

    def result(self):
        return self.values

    @classmethod
    def merge(cls, results):
        if not results:
            return np.zeros(0, cls.dtype)
        return np.concatenate([np.frombuffer(r, dtype=cls.dtype) for r in results])


class HashCollector(ArrayCollector):
    """xxh3-64 of the normalised fields joined by U+001F. Two different keys share a hash with probability
    about n^2 / 2^65 (3e-8 for a million distinct rows)."""

    typecode = "Q"
    dtype = np.uint64

    def __init__(self, fields: list[str], ops: tuple[str, ...], tag_names: frozenset[str],
                 any_order: tuple[str, ...] = ()):
        import xxhash

        super().__init__()
        self.fields, self.ops, self.tag_names = fields, ops, tag_names
        self.any_order = tuple(any_order)    # fields compared as a set: MCQ options in any order
        self._hash = xxhash.xxh3_64_intdigest
        self._encode = textlib.key_encoder(ops)

    def key(self):
        return ("hash", tuple(self.fields), self.ops) + ((self.any_order,) if self.any_order else ())

    def add(self, row, tags):
        encode, tag_names = self._encode, self.tag_names
        if self.any_order:
            fixed = [encode(field_text(row, tags, f, tag_names)) for f in self.fields if f not in self.any_order]
            loose = sorted(encode(field_text(row, tags, f, tag_names)) for f in self.any_order)
            self.values.append(self._hash(b"\x1f".join(fixed) + b"\x1e" + b"\x1f".join(loose)))
            return
        if len(self.fields) == 1:
            name = self.fields[0]
            value = row.get(name)
            if type(value) is not str or name in tag_names:
                value = field_text(row, tags, name, tag_names)
            key = encode(value)
        else:
            key = b"\x1f".join(encode(field_text(row, tags, f, tag_names)) for f in self.fields)
        self.values.append(self._hash(key))


class LengthCollector(ArrayCollector):
    """Characters in the fields (summed)."""

    def __init__(self, fields: list[str], tag_names: frozenset[str]):
        super().__init__()
        self.fields, self.tag_names = fields, tag_names

    def add(self, row, tags):
        self.values.append(sum(len(field_text(row, tags, f, self.tag_names)) for f in self.fields))


class TokenCollector(ArrayCollector):
    """Tokens in the fields (each field encoded alone, no special tokens, summed)."""

    def __init__(self, fields: list[str], tokenizer: str, tag_names: frozenset[str]):
        super().__init__()
        self.fields, self.tokenizer_name, self.tag_names = fields, tokenizer, tag_names
        self.pending: list[str] = []

    def key(self):
        return ("tokens", tuple(self.fields), self.tokenizer_name)

    def add(self, row, tags):
        for f in self.fields:
            self.pending.append(field_text(row, tags, f, self.tag_names))
        if len(self.pending) >= TOKEN_BATCH:
            self._flush()

    def skip(self):
        self.pending.extend([""] * len(self.fields))

    def _flush(self):
        if not self.pending:
            return
        counts = textlib.count_tokens(textlib.load_tokenizer(self.tokenizer_name), self.pending)
        width = len(self.fields)
        self.values.extend(sum(counts[i:i + width]) for i in range(0, len(counts), width))
        self.pending = []

    def result(self):
        self._flush()
        return self.values


class MinHashCollector(Collector):
    """MinHash signatures (datasketch, affine32 scheme, xxh32 of each n-gram): num_perm x 4 bytes a row."""

    def __init__(self, fields, ops, ngram, unit, num_perm, seed, tag_names):
        import xxhash
        from datasketch import MinHash

        self.fields, self.ops, self.ngram, self.unit, self.tag_names = fields, ops, ngram, unit, tag_names
        self.template = MinHash(num_perm=num_perm, seed=seed, hashfunc=xxhash.xxh32_intdigest)
        self._norm = textlib.normalizer(ops)
        self.rows: list[np.ndarray] = []

    def add(self, row, tags):
        text = " ".join(self._norm(field_text(row, tags, f, self.tag_names)) for f in self.fields)
        minhash = self.template.copy()
        minhash.update_batch(list(textlib.shingles(text, self.ngram, self.unit)))
        self.rows.append(minhash.hashvalues)

    def skip(self):
        self.rows.append(self.template.hashvalues)

    def result(self):
        if not self.rows:
            return np.zeros((0, len(self.template.hashvalues)), dtype=self.template.hashvalues.dtype)
        return np.vstack(self.rows)

    @staticmethod
    def merge(results):
        return np.vstack(results)


class GroupCollector(Collector):
    """A field's value per row as a code into a vocabulary (for `by:` on a row field)."""

    def __init__(self, name: str, tag_names: frozenset[str], convert: Callable[[str], str] = str):
        self.name, self.tag_names = name, tag_names
        self.vocab: dict[str, int] = {}
        self.codes = array("l")

    def key(self):
        return ("group", self.name)

    def add(self, row, tags):
        value = field_text(row, tags, self.name, self.tag_names)
        code = self.vocab.get(value)
        if code is None:
            code = self.vocab[value] = len(self.vocab)
        self.codes.append(code)

    def skip(self):
        self.codes.append(0)

    def result(self):
        return (list(self.vocab), self.codes)

    @staticmethod
    def merge(results):
        """-> (codes int32 array, vocab list) over one vocabulary, in first-seen order."""
        vocab: dict[str, int] = {}
        parts = []
        for local_vocab, codes in results:
            mapping = np.array([vocab.setdefault(v, len(vocab)) for v in local_vocab] or [0], dtype=np.int32)
            parts.append(mapping[np.frombuffer(codes, dtype=np.int64 if codes.itemsize == 8 else np.int32)]
                         if len(codes) else np.zeros(0, np.int32))
        return (np.concatenate(parts) if parts else np.zeros(0, np.int32)), list(vocab)
