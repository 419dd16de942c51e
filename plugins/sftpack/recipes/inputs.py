"""Recipe inputs -> the files (or hub splits) to read, cut into chunks that workers read in order.

JSONL files are read here as raw lines (so an unchanged row is written back byte for byte, and large files
split into byte ranges for parallel workers); every other format goes through `sftpack.sources` (the
converter pipeline's reader), one task per file. Headerless CSVs (MMLU's layout) take their column names
from the input's `columns`. Row locations read 'line N' (1-based physical line) or 'row N'.
"""

from __future__ import annotations

import csv
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sftpack import sources
from sftpack.errors import SftpackError
from sftpack.recipes.schema import InputSpec

CHUNK_BYTES = 16 * 1024 * 1024
READ_BLOCK = 8 * 1024 * 1024


@dataclass(frozen=True)
class FileRef:
    """One file (or hub split) of one input; `unit` is 'line' or 'row' for error locations."""

    input: int
    path: str
    unit: str
    stem: str
    hub: bool = False      # `path` is a hub id (sftpack.paths' rule), read with `datasets`


@dataclass(frozen=True)
class Task:
    """A piece of work for one pass. kind 'jsonl': lines of `path` in [start, end) (byte offsets at line
    starts); 'source': every row of file `file` via sftpack.sources; 'hub': a hub split."""

    kind: str
    file: int
    path: str
    start: int = 0
    end: int = 0
    first_row: int = 0     # for spool parts: the global index of the part's first row
    rows: int = 0          # for spool parts: how many rows it holds


def resolve_files(index: int, spec: InputSpec, where) -> list[FileRef]:
    """The files an input names, in a stable order."""
    path = Path(spec.path).expanduser()
    if sources.is_hub_id(spec.path):
        if spec.glob or spec.columns:
            raise where.error(f"{spec.path} looks like a hub id: 'glob' and 'columns' need a local path "
                              f"(start it with ./ if it is one: ./{spec.path})")
        return [FileRef(index, spec.path, "row", spec.path.rsplit("/", 1)[-1], hub=True)]
    if not path.exists():
        raise where.error(f"{spec.path}: no such file or folder (resolved to {path.resolve()})")
    if path.is_file():
        if spec.glob:
            raise where.error(f"{spec.path} is a file; 'glob' needs a folder")
        files = [path]
    elif spec.glob:
        files = sorted(p for p in path.rglob("*") if p.is_file() and fnmatch.fnmatch(p.relative_to(path).as_posix(),
                                                                                   spec.glob))
        if not files:
            raise where.error(f"{path.resolve()}: no file matches glob {spec.glob!r}")
    elif sources.is_split_folder(path):
        files = sources.split_files(path, spec.split)
        if not files:
            raise where.error(f"{path.resolve()}: one split's save_to_disk folder, not split '{spec.split}' (its name "
                              f"says {sources.SPLIT_WORDS.get(path.name.lower())!r}); set `split` to match")
    else:
        try:
            files = sources.split_files(path, spec.split)
        except SftpackError as err:
            raise where.error(str(err)) from None
        if not files:
            raise where.error(f"{path.resolve()}: no files for split '{spec.split}' (looked for {spec.split}.jsonl|"
                              f"json|parquet|csv, {spec.split}-*.parquet, a save_to_disk folder; or set 'glob')")
    refs = []
    for file in files:
        if file.suffix not in sources.FILE_SUFFIXES:
            raise where.error(f"{file}: unsupported file type '{file.suffix}'; expected one of "
                              f"{list(sources.FILE_SUFFIXES)}")
        if spec.columns and file.suffix != ".csv":
            raise where.error(f"{file}: 'columns' is for CSV files without a header row")
        unit = "line" if file.suffix in (".jsonl", ".csv", ".txt") or _json_lines(file) else "row"
        refs.append(FileRef(index, str(file), unit, file.name.split(".")[0]))
    return refs


def _json_lines(path: Path) -> bool:
    if path.suffix != ".json":
        return False
    with path.open("rb") as handle:
        return not handle.read(4096).lstrip().startswith(b"[")


def is_jsonl(ref: FileRef) -> bool:
    return ref.path.endswith(".jsonl") or (ref.path.endswith(".json") and _json_lines(Path(ref.path)))


def chunk_tasks(file_index: int, ref: FileRef, chunk_bytes: int = CHUNK_BYTES) -> list[Task]:
    """Byte ranges of a JSONL file, each starting at a line start."""
    size = Path(ref.path).stat().st_size
    if size == 0:
        raise SftpackError(f"{ref.path}: file is empty, no rows")
    bounds = [0]
    with open(ref.path, "rb") as handle:
        while bounds[-1] + chunk_bytes < size:
            handle.seek(bounds[-1] + chunk_bytes)
            handle.readline()
            if handle.tell() >= size:
                break
            bounds.append(handle.tell())
    bounds.append(size)
    return [Task("jsonl", file_index, ref.path, start, end) for start, end in zip(bounds, bounds[1:], strict=False)]


def iter_blocks(path: str, start: int, end: int) -> Iterator[tuple[int, list[bytes]]]:
    """(number of the first line, lines) for blocks of about 8 MiB of [start, end): every physical line,
    blank ones included, without its newline. Numbers are 1-based within the range. A block ends at its
    last newline and the next read starts there (no copy of the block to carry a partial line)."""
    number, pos, size = 1, start, READ_BLOCK
    with open(path, "rb") as handle:
        while pos < end:
            handle.seek(pos)
            block = handle.read(min(size, end - pos))
            if not block:
                break
            lines = block.split(b"\n")
            tail = lines.pop()
            if pos + len(block) >= end and tail:
                lines.append(tail)      # the range's last line has no newline
                tail = b""
            if not lines:               # a line longer than the block: read more at once
                size *= 2
                continue
            yield number, lines
            number += len(lines)
            pos += len(block) - len(tail)


def iter_raw_blocks(path: str, start: int, end: int) -> Iterator[memoryview]:
    """[start, end) in blocks of about 8 MiB of whole lines, each line ending with a newline (one is added
    to a last line without it)."""
    pos, size = start, READ_BLOCK
    with open(path, "rb") as handle:
        while pos < end:
            handle.seek(pos)
            block = handle.read(min(size, end - pos))
            if not block:
                break
            cut = block.rfind(b"\n") + 1
            if pos + len(block) >= end and cut < len(block):
                yield memoryview(block + b"\n")
                break
            if not cut:
                size *= 2
                continue
            yield memoryview(block)[:cut]
            pos += cut


def iter_lines(path: str, start: int, end: int, counter: list | None = None) -> Iterator[tuple[int, bytes]]:
    """(1-based line number within the range, line without its newline) for every non-blank line; when the
    range is exhausted, `counter[0]` holds its number of physical lines."""
    number = 0
    for first, lines in iter_blocks(path, start, end):
        number = first - 1
        for raw in lines:
            number += 1
            if raw and not raw.isspace():
                yield number, raw
    if counter is not None:
        counter[0] = number


def iter_rows(ref: FileRef, spec: InputSpec) -> Iterator[sources.Located]:
    """Rows of a non-JSONL file or a hub split, located."""
    if ref.hub:
        return sources.iter_hub(ref.path, spec.subset, spec.split)
    path = Path(ref.path)
    if path.suffix == ".csv":
        return _iter_csv(path, spec.columns)
    return sources.iter_file(path)


def _iter_csv(path: Path, columns: list[str] | None) -> Iterator[sources.Located]:
    """CSV rows (via sftpack.sources for a file with a header; `columns` for one without), checking that
    every row has exactly as many values as there are columns."""
    if columns is None:
        for located in sources.iter_file(path):
            row = located.row
            if located.problem is None and (None in row or None in row.values()):
                header = [k for k in row if k is not None]
                got = len(header) + len(row.get(None) or []) if None in row else \
                    sum(v is not None for k, v in row.items() if k is not None)
                located = sources.Located(located.source, located.where, None,
                                          f"{got} values, but the header has {len(header)} columns "
                                          f"({', '.join(repr(c) for c in header)})")
            yield located
        return
    if path.stat().st_size == 0:
        raise SftpackError(f"{path}: file is empty, no rows")
    with path.open("r", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        try:
            for values in reader:
                if not values:
                    continue
                where = f"line {reader.line_num}"
                if len(values) != len(columns):
                    yield sources.Located(str(path), where, None,
                                          f"{len(values)} values, but 'columns' has {len(columns)} "
                                          f"({', '.join(repr(c) for c in columns)})")
                    continue
                yield sources.Located(str(path), where, dict(zip(columns, values, strict=True)))
        except UnicodeDecodeError as err:
            raise SftpackError(f"{path}: not valid UTF-8 near line {reader.line_num + 1} ({err.reason})") from None
        except csv.Error as err:
            raise SftpackError(f"{path}: line {reader.line_num}: not valid CSV ({err})") from None
