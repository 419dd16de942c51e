"""The one conversion pipeline every converter runs through: read, validate, write, count, register.

`prepare()` converts each split of a source into `<out>/<name>_<split>.jsonl` and merges one
dataset_info entry per split. Nothing under `<out>` changes unless every split converted: rows are written
to temp files first, and only then renamed into place and registered (atomically, keeping the user's
other entries).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from sftpack import dataset_info
from sftpack.artifacts import file_mode
from sftpack.converters import ConverterSpec, FieldError
from sftpack.errors import RowError, SftpackError
from sftpack.sources import Located, iter_source

SHOWN_SKIPS = 5


@dataclass
class SplitResult:
    dataset: str
    split: str
    file: Path
    rows_in: int = 0
    rows_out: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        text = (f"{self.dataset}: {self.rows_out} rows -> {self.file} "
                f"({self.rows_in} read, {self.rows_per_s:,.0f} rows/s)")
        if self.skipped:
            shown = "; ".join(self.skipped[:SHOWN_SKIPS])
            more = f"; and {len(self.skipped) - SHOWN_SKIPS} more" if len(self.skipped) > SHOWN_SKIPS else ""
            text += f"\n  skipped {len(self.skipped)} invalid rows: {shown}{more}"
        return text


def _progress(rows: Iterable[Located], label: str, enabled: bool) -> Iterable[Located]:
    if not enabled:
        return rows
    from tqdm import tqdm

    return tqdm(rows, desc=label, unit=" rows", mininterval=0.5, file=sys.stderr, leave=False)


def convert_split(spec: ConverterSpec, rows: Iterable[Located], out, result: SplitResult,
                  skip_invalid: bool, progress: bool) -> None:
    """Convert `rows` into the open text file `out`, filling `result`; raise RowError on a bad row."""
    started = time.perf_counter()
    for located in _progress(rows, result.dataset, progress):
        result.rows_in += 1
        try:
            if located.problem is not None:
                raise RowError(located.source, located.where, None, located.problem)
            try:
                converted = spec.convert(located.row)
            except FieldError as err:
                raise RowError(located.source, located.where, err.field, err.problem) from None
        except RowError as err:
            if not skip_invalid:
                raise
            result.skipped.append(f"{err.where}" + (f" ({err.field})" if err.field else ""))
            continue
        out.write(json.dumps(converted, ensure_ascii=False))
        out.write("\n")
        result.rows_out += 1
    result.seconds = time.perf_counter() - started
    if result.rows_in == 0:
        raise SftpackError(f"{result.dataset}: the source has no rows for split '{result.split}'")
    if result.rows_out == 0:
        raise SftpackError(f"{result.dataset}: all {result.rows_in} rows were invalid; nothing written")


def prepare(spec: ConverterSpec, source: str, out_dir: Path, name: str | None = None,
            splits: tuple[str, ...] | None = None, skip_invalid: bool = False,
            progress: bool = True) -> list[SplitResult]:
    """Convert `source` into `out_dir` and register the splits; returns one result per split.

    A single file is one split (`splits`, default `('train',)`); a folder or hub id gives every split in
    `splits` (default: the family's).
    """
    name = name or spec.family
    out_dir = Path(out_dir)
    info_path = out_dir / dataset_info.FILE_NAME
    dataset_info.load(info_path)  # a malformed file stops us before any work
    if splits is None:
        splits = ("train",) if Path(source).is_file() else spec.splits
    elif Path(source).is_file() and len(splits) != 1:
        raise SftpackError(f"{source}: a single file holds one split; pass --splits with one name")

    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    pending: list[tuple[Path, SplitResult]] = []
    done = False
    try:
        for split in splits:
            result = SplitResult(dataset=f"{name}_{split}", split=split, file=out_dir / f"{name}_{split}.jsonl")
            fd, tmp = tempfile.mkstemp(prefix=f".{result.file.name}.", suffix=".tmp", dir=out_dir)
            os.fchmod(fd, file_mode())
            pending.append((Path(tmp), result))
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                convert_split(spec, iter_source(source, spec.hub_subset, split), out, result,
                              skip_invalid, progress)
        entries = {result.dataset: {"file_name": result.file.name, **spec.entry} for _, result in pending}
        for entry_name, entry in entries.items():
            dataset_info.validate_entry(entry_name, entry, where=str(info_path))
        for tmp, result in pending:
            os.replace(tmp, result.file)
        dataset_info.merge(info_path, entries)
        done = True
    finally:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        if created and not done and not any(out_dir.iterdir()):
            out_dir.rmdir()  # leave no trace of a failed first run
    return [result for _, result in pending]
