"""Where converter input comes from: a local file or folder, the HuggingFace hub, or ModelScope.

Every row is yielded with its location (`line 12` of a jsonl file, `row 12` of a table) so that errors can
name it. Local formats: `.jsonl`, `.json` (JSON lines or one array), `.parquet`, `.arrow` (both the stream
format that `datasets.save_to_disk` writes and the file format), `.csv`, `.txt` (plain text: one row `{"text": line}`
per non-empty line), and folders holding a split's files:
`{split}.jsonl|json|parquet|csv|arrow`, `{split}-*.parquet|arrow` / `data/{split}-*.parquet` / `main/{split}-*.parquet`
(a hub repo's layout), `*-{split}.arrow` / `*-{split}-00000-of-00002.arrow` (the `datasets` cache layout,
e.g. `gsm8k-train.arrow`), a `save_to_disk` folder (`dataset_dict.json` + `{split}/data-*.arrow`), or one
split's `save_to_disk` folder (`state.json` + `data-*.arrow`). Two different layouts for one split in a folder
are an error, never a silent pick or a concatenation.

Which split a single file holds is read from its name only when the name is unambiguous (`split_in_name`).
Local path or hub id: `sftpack.paths.looks_local` decides (the one rule); a missing local-looking path is "no
such file or folder" at once.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sftpack.errors import SftpackError
from sftpack.paths import hubs_off, looks_local

MODELSCOPE_PREFIX = "modelscope/"
TABLE_SUFFIXES = (".parquet", ".arrow")
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".txt") + TABLE_SUFFIXES
# A word in a file name -> the split it names (`gsm8k-test.arrow`, `train-00000-of-00001.parquet`, `dev.jsonl`).
SPLIT_WORDS = {"train": "train", "training": "train", "test": "test", "testing": "test", "eval": "test",
               "evaluation": "test", "validation": "validation", "valid": "validation", "val": "validation",
               "dev": "validation"}
_WORD_RE = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Located:
    """One input row and where it was read: `source` is a file or hub id, `where` e.g. 'line 3'.

    A line that could not be decoded has `row=None` and the reason in `problem`, so that a caller can
    stop on it or skip it (`--skip-invalid`) and go on reading.
    """

    source: str
    where: str
    row: Any
    problem: str | None = None


def _iter_json_lines(path: Path) -> Iterator[Located]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"line {number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield Located(str(path), where, None,
                              f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})")
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                yield Located(str(path), where, None, f"not valid JSON ({err.msg} at column {err.colno})")
                continue
            yield Located(str(path), where, row)


def _iter_json(path: Path) -> Iterator[Located]:
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip()
    if not head.startswith(b"["):
        yield from _iter_json_lines(path)
        return
    try:
        rows = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise SftpackError(f"{path}: not valid UTF-8 (byte offset {err.start})") from None
    except json.JSONDecodeError as err:
        raise SftpackError(f"{path}: line {err.lineno}, column {err.colno}: not valid JSON ({err.msg})") from None
    for number, row in enumerate(rows, start=1):
        yield Located(str(path), f"row {number}", row)


def _iter_csv(path: Path) -> Iterator[Located]:
    with path.open("r", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            for row in reader:
                yield Located(str(path), f"line {reader.line_num}", row)
        except UnicodeDecodeError as err:
            raise SftpackError(f"{path}: not valid UTF-8 near line {reader.line_num + 1} ({err.reason})") from None


def _iter_text(path: Path) -> Iterator[Located]:
    """Plain text, one row `{"text": line}` per non-empty line (the `datasets` text builder's rows, which
    LLaMA-Factory reads a .txt file with)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                yield Located(str(path), f"line {number}", None,
                              f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})")
                continue
            if text.strip():
                yield Located(str(path), f"line {number}", {"text": text})


def _arrow_tables(path: Path):
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_file(source).read_all()


def _iter_table(path: Path) -> Iterator[Located]:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            table = _arrow_tables(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise SftpackError(f"{path}: cannot be read as {path.suffix[1:]} ({err})") from None
    for number, row in enumerate(table.to_pylist(), start=1):
        yield Located(str(path), f"row {number}", row)


def iter_file(path: Path) -> Iterator[Located]:
    """Rows of one local file, chosen by its suffix."""
    if path.stat().st_size == 0:
        raise SftpackError(f"{path}: file is empty, no rows to convert")
    if path.suffix == ".jsonl":
        return _iter_json_lines(path)
    if path.suffix == ".json":
        return _iter_json(path)
    if path.suffix == ".csv":
        return _iter_csv(path)
    if path.suffix == ".txt":
        return _iter_text(path)
    if path.suffix in TABLE_SUFFIXES:
        return _iter_table(path)
    raise SftpackError(f"{path}: unsupported file type '{path.suffix}'; expected one of {list(FILE_SUFFIXES)}")


def split_in_name(path: Path) -> str | None:
    """The split that a file's name (or, for a generic name, its folder's name) says it holds.

    `gsm8k-test.arrow` -> 'test', `train-00000-of-00001.parquet` -> 'train', `test/data-00000-of-00001.arrow`
    -> 'test', `dev.jsonl` -> 'validation'; None when the name names no split (`mydata.jsonl`). A name that names
    two (`train_test.jsonl`) is an error asking for --splits.
    """
    path = Path(path)
    found = sorted({SPLIT_WORDS[w] for w in _WORD_RE.split(path.name.lower()) if w in SPLIT_WORDS})
    if not found and path.parent.name.lower() in SPLIT_WORDS:
        found = [SPLIT_WORDS[path.parent.name.lower()]]
    if len(found) > 1:
        raise SftpackError(f"{path}: its name names several splits ({', '.join(found)}); pass --splits with the "
                           "one it holds")
    return found[0] if found else None


def is_split_folder(folder: Path) -> bool:
    """One split written by `Dataset.save_to_disk`: `state.json` + `data-*.arrow` (no `dataset_dict.json`)."""
    return (folder / "state.json").is_file() and any(folder.glob("data-*.arrow"))


def split_files(folder: Path, split: str) -> list[Path]:
    """The files that hold `split` in a local dataset folder (empty when there are none).

    Raises SftpackError when two different layouts hold it (`train.jsonl` and `train-*.parquet`, or GSM8K's
    `main/train-*.parquet` and `socratic/train-*.parquet`): which one was meant is the user's call.
    """
    if is_split_folder(folder):
        named = SPLIT_WORDS.get(folder.name.lower())
        return sorted(folder.glob("data-*.arrow")) if named == split else []
    groups: list[list[Path]] = []
    for suffix in (".jsonl", ".json", ".parquet", ".csv", ".arrow"):
        single = folder / f"{split}{suffix}"
        if single.is_file():
            groups.append([single])
    shard = "[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]"
    for pattern in (f"{split}-*.parquet", f"{split}-*.arrow", f"*/{split}-*.parquet", f"*-{split}.arrow",
                    f"*-{split}-{shard}.arrow"):
        by_folder: dict[Path, list[Path]] = {}
        for path in sorted(folder.glob(pattern)):
            by_folder.setdefault(path.parent, []).append(path)
        groups += list(by_folder.values())
    if (folder / "dataset_dict.json").is_file():
        groups.append(sorted((folder / split).glob("data-*.arrow")))
    distinct: list[list[Path]] = []
    for group in groups:
        if group and group not in distinct:
            distinct.append(group)
    if len(distinct) > 1:
        shown = "; ".join(", ".join(str(p.relative_to(folder)) for p in g[:2]) + (" ..." if len(g) > 2 else "")
                          for g in distinct)
        raise SftpackError(f"{folder}: several sets of files hold split '{split}' ({shown}); pass the one you mean "
                           "as the source (a file, or its folder)")
    return distinct[0] if distinct else []


def is_hub_id(source: str) -> bool:
    """True when `source` is not a local path by sftpack.paths' rule (exists, starts with . / ~, has a file
    extension, has more than one '/', or its first part is an existing folder), so it is read from a hub."""
    return not looks_local(source)


def iter_hub(source: str, subset: str | None, split: str) -> Iterator[Located]:
    """Rows of one split of a hub dataset: ModelScope for ids starting 'modelscope/', else HuggingFace."""
    on_modelscope = source.startswith(MODELSCOPE_PREFIX)
    hint = ("Download it on a machine with access and pass --source PATH (jsonl, json, parquet or a "
            "save_to_disk folder), or " + ("use the HuggingFace id (HF_ENDPOINT for a mirror)" if on_modelscope
                                           else "set HF_ENDPOINT to a mirror, or try the ModelScope id "
                                                f"{MODELSCOPE_PREFIX}{source.split('/')[-1]}"))
    from sftpack.extras import require

    require("modelscope" if on_modelscope else "datasets", what=f"reading '{source}' from a hub")
    try:
        if on_modelscope:
            from modelscope.msdatasets import MsDataset

            dataset = MsDataset.load(source, subset_name=subset, split=split)
        else:
            import datasets

            dataset = datasets.load_dataset(source, subset, split=split)
    except Exception as err:  # the hubs raise many types: network, auth, offline mode, missing repo
        hub = "ModelScope" if on_modelscope else "the HuggingFace hub"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        off = hubs_off()
        off = (f" (the hubs are off here, {off.removeprefix('offline: ')}: only a cached copy could be read)"
               if off else "")
        raise SftpackError(f"cannot load '{source}' (subset {subset}, split {split}) from {hub}{off}: {first}. "
                           f"{hint}") from None
    for number, row in enumerate(dataset, start=1):
        yield Located(source, f"row {number}", dict(row))


def iter_source(source: str, subset: str | None, split: str) -> Iterator[Located]:
    """Rows of `split` from `source`: a hub id, a folder, or (for a single split) a file."""
    path = Path(source).expanduser()
    if is_hub_id(source):
        return iter_hub(source, subset, split)
    if not path.exists():
        raise SftpackError(f"{source}: no such file or folder (resolved to {path.resolve()})")
    if path.is_file():
        return iter_file(path)
    files = sorted(path.glob("data-*.arrow")) if is_split_folder(path) else split_files(path, split)
    if not files:
        raise SftpackError(f"{path.resolve()}: no files for split '{split}' (looked for {split}.jsonl|json|"
                           f"parquet|csv|arrow, {split}-*.parquet, *-{split}.arrow and a save_to_disk folder)")
    return (located for file in files for located in iter_file(file))


def single_split(source: str) -> Path | None:
    """The local file or save_to_disk split folder when `source` is one split; None for a dataset folder or hub id."""
    path = Path(source).expanduser()
    if is_hub_id(source) or not path.exists():
        return None
    return path if path.is_file() or is_split_folder(path) else None


def local_files(source: str, splits: tuple[str, ...]) -> list[Path]:
    """The local files a source's splits are read from (empty for a hub id or a missing path)."""
    path = Path(source).expanduser()
    if is_hub_id(source) or not path.exists():
        return []
    if path.is_file():
        return [path]
    if is_split_folder(path):
        return sorted(path.glob("data-*.arrow"))
    return [file for split in splits for file in split_files(path, split)]
