"""The one conversion pipeline every converter runs through: read, validate, write, count, register.

`prepare()` converts each split of a source into `<out>/<name>_<split>.jsonl` and merges one
dataset_info entry per split. Nothing under `<out>` changes unless every split converted: rows are written
to temp files first, and only then `commit()` renames them into place and registers them. `sftpack recipe`
commits its outputs through the same `commit()`, which, under the folder's lock (`sftpack.locks`):

- replaces an entry or file only when sftpack wrote it and it is unchanged since (the folder's manifest,
  `dataset_info.Manifest`) or when the new one is identical; anything else is an error naming it and
  `--overwrite`;
- removes what the same output set wrote before and no longer writes (a recipe that stopped writing `_test`);
- refuses a training set that shares a normalised prompt with an eval set written now or registered in the
  same dataset_info.json (`--allow-overlap` to allow it); near-duplicates (same words in another order, as the
  MCQ option shuffle makes on purpose) are counted in a note;
- does the renames and the dataset_info.json read-modify-write with SIGINT/SIGTERM held back, so a signal
  leaves the old set or the new one.

Temp files carry the writer's pid (`.<name>.<pid>.<random>.tmp`, `.recipe-<pid>-<random>/`): a signal
removes them on the way out (`interruptible()`), and the next run into the folder removes those of a
process that is gone (`clean_stale_temps()`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import sys
import threading
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from sftpack import dataset_info, sources
from sftpack.artifacts import clean_stale_temps, temp_file
from sftpack.bench.monitor import install_stop_handlers, restore_handlers
from sftpack.converters import ConverterSpec, FieldError
from sftpack.errors import RowError, SftpackError
from sftpack.sources import Located, iter_source

SHOWN_SKIPS = 5
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")   # a dataset name or split: it names files in the folder
DEFAULT_MAX_INVALID = "1%"
SKIPPED_SUFFIX = ".skipped.jsonl"     # <name>_<split>.skipped.jsonl: every row --skip-invalid skipped, with why


@dataclass
class SplitResult:
    dataset: str
    split: str
    file: Path
    rows_in: int = 0
    rows_out: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped_file: Path | None = None

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
            if self.skipped_file is not None:
                text += f"\n  every skipped row and why: {self.skipped_file}"
        return text


def _progress(rows: Iterable[Located], label: str, enabled: bool) -> Iterable[Located]:
    if not enabled:
        return rows
    from tqdm import tqdm

    return tqdm(rows, desc=label, unit=" rows", mininterval=0.5, file=sys.stderr, leave=False)


def convert_split(spec: ConverterSpec, rows: Iterable[Located], out, result: SplitResult,
                  skip_invalid: bool, progress: bool, skipped_out=None) -> None:
    """Convert `rows` into the open text file `out`, filling `result`; raise RowError on a bad row.

    With `skip_invalid`, a bad row is counted instead and, when `skipped_out` is an open text file, written
    there as one JSON line: source, where, field, problem and the row itself (null when it could not be read).
    """
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
            if skipped_out is not None:
                skipped_out.write(json.dumps({"source": err.source, "where": err.where, "field": err.field,
                                              "problem": err.problem, "row": located.row},
                                             ensure_ascii=False, default=str) + "\n")
            continue
        out.write(json.dumps(converted, ensure_ascii=False))
        out.write("\n")
        result.rows_out += 1
    result.seconds = time.perf_counter() - started
    if result.rows_in == 0:
        raise SftpackError(f"{result.dataset}: the source has no rows for split '{result.split}'")
    if result.rows_out == 0:
        raise SftpackError(f"{result.dataset}: all {result.rows_in} rows were invalid; nothing written")


def parse_max_invalid(text: str) -> tuple[str, float]:
    """`--max-invalid`: '25' (rows) -> ('rows', 25.0); '2.5%' -> ('percent', 2.5)."""
    value = str(text).strip()
    try:
        if value.endswith("%"):
            number = float(value[:-1])
            if 0 <= number <= 100:
                return "percent", number
        elif int(value) >= 0:
            return "rows", float(int(value))
    except ValueError:
        pass
    raise SftpackError(f"--max-invalid {text!r}: expected a number of rows (e.g. 25) or a percentage (e.g. 2%)")


def check_invalid(result: SplitResult, limit: tuple[str, float], shown: str) -> None:
    """Raise when `result` skipped more rows than `--max-invalid` allows; nothing is written then."""
    kind, value = limit
    skipped = len(result.skipped)
    share = 100.0 * skipped / result.rows_in if result.rows_in else 0.0
    if (skipped > value) if kind == "rows" else (share > value + 1e-9):
        first = "; ".join(result.skipped[:SHOWN_SKIPS])
        raise SftpackError(f"{result.dataset}: {skipped} of {result.rows_in} rows invalid ({share:.2f}%), more than "
                           f"--max-invalid {shown} allows ({first}{'; ...' if skipped > SHOWN_SKIPS else ''}); "
                           "nothing was written. Fix the source, or raise --max-invalid (e.g. 100%) to write the "
                           f"rest and every skipped row with its reason to <out>/{result.dataset}{SKIPPED_SUFFIX}")


def _choose_splits(spec: ConverterSpec, source: str, splits: tuple[str, ...] | None) -> tuple[str, ...]:
    """The splits to convert: given, read from a single file's name when it is unambiguous, or the family's."""
    single = sources.single_split(source)
    if single is None:
        return tuple(splits) if splits is not None else spec.splits
    named = sources.split_in_name(single)
    if splits is None:
        if named is None:
            raise SftpackError(f"{source}: one split, and its name does not say which (train, test or validation): "
                               f"pass --splits train (or --splits test) so it is registered as what it holds")
        return (named,)
    if len(splits) != 1:
        raise SftpackError(f"{source}: a single file holds one split; pass --splits with one name")
    if named is not None and named != splits[0]:
        print(f"sftpack: warning: {source}: its name says '{named}', registering it as '{splits[0]}' "
              "as --splits says", file=sys.stderr)
    return tuple(splits)


def prepare(spec: ConverterSpec, source: str, out_dir: Path, name: str | None = None,
            splits: tuple[str, ...] | None = None, skip_invalid: bool = False,
            progress: bool = True, overwrite: bool = False, allow_overlap: bool = False,
            max_invalid: str | None = None) -> list[SplitResult]:
    """Convert `source` into `out_dir` and register the splits; returns one result per split.

    A single file is one split: `splits` (one name), else the split its name says (`gsm8k-test.arrow`), else an
    error. A folder or hub id gives every split in `splits` (default: the family's). `skip_invalid` (implied
    by `max_invalid`) skips bad rows, writes them with their reasons to `<name>_<split>.skipped.jsonl`, and
    fails when more than `max_invalid` ('N' rows or 'P%', default 1%) were skipped. `overwrite`: replace
    entries and files sftpack did not write; `allow_overlap`: write a train set sharing prompts with an eval
    set (see `commit`).
    """
    name = name or spec.family
    out_dir = Path(out_dir)
    info_path = out_dir / dataset_info.FILE_NAME
    check_out_dir(out_dir)
    dataset_info.load(info_path)  # a malformed file stops us before any work
    limit = parse_max_invalid(max_invalid or DEFAULT_MAX_INVALID)
    skip_invalid = skip_invalid or max_invalid is not None
    splits = _choose_splits(spec, source, splits)
    for label, value in [("--name", name)] + [("--splits", split) for split in splits]:
        if not NAME_RE.match(value):
            raise SftpackError(f"{label} {value!r}: use letters, digits, '_', '.' and '-' "
                               f"(it names files in {out_dir})")
    if len(set(splits)) != len(splits):
        raise SftpackError(f"--splits {','.join(splits)}: a split is named twice")
    planned = {f"{name}_{split}": {"file_name": f"{name}_{split}.jsonl", **spec.entry} for split in splits}
    for entry_name, entry in planned.items():
        dataset_info.validate_entry(entry_name, entry, where=str(info_path))
    refuse_own_inputs(sources.local_files(source, splits), [out_dir / e["file_name"] for e in planned.values()])
    precheck(out_dir, planned, overwrite)
    for note in clean_stale_temps(out_dir):
        print(f"sftpack: {note}", file=sys.stderr)

    created = not out_dir.exists()
    with _writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    results: list[SplitResult] = []
    outputs: list[Output] = []
    temps: list[Path] = []
    try:
        with interruptible():
            for split in splits:
                result = SplitResult(dataset=f"{name}_{split}", split=split, file=out_dir / f"{name}_{split}.jsonl")
                results.append(result)
                skipped_final = out_dir / f"{result.dataset}{SKIPPED_SUFFIX}"
                with _writing(out_dir):
                    fd, tmp = temp_file(result.file)
                    temps.append(tmp)
                    skipped_fd, skipped_tmp = temp_file(skipped_final) if skip_invalid else (None, None)
                    if skipped_tmp is not None:
                        temps.append(skipped_tmp)
                    skipped_out = os.fdopen(skipped_fd, "w", encoding="utf-8") if skipped_fd is not None else None
                    try:
                        with os.fdopen(fd, "w", encoding="utf-8") as out:
                            convert_split(spec, iter_source(source, spec.hub_subset, split), out, result,
                                          skip_invalid, progress, skipped_out)
                    finally:
                        if skipped_out is not None:
                            skipped_out.close()
                check_invalid(result, limit, max_invalid or DEFAULT_MAX_INVALID)
                by = f"prepare {result.dataset}"
                outputs.append(Output(result.file, tmp, dataset_info.file_sha256(tmp), by, result.dataset,
                                      planned[result.dataset], rows=result.rows_out))
                if result.skipped and skipped_tmp is not None:
                    result.skipped_file = skipped_final
                    outputs.append(Output(skipped_final, skipped_tmp, dataset_info.file_sha256(skipped_tmp), by))
            notes = commit(out_dir, outputs, f"sftpack prepare {name}", overwrite=overwrite,
                           allow_overlap=allow_overlap)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # leave no trace of a failed first run
    for note in notes:
        print(f"sftpack: {note}", file=sys.stderr)
    return results


# ---------------------------------------------------------------------------------------------- the folder


def check_out_dir(out_dir: Path) -> None:
    """An output folder that is a file (or under one) is a one-line error before any work."""
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise SftpackError(f"--out {out_dir}: {folder} is a file, not a folder; nothing was written")
            return


@contextmanager
def _writing(out_dir: Path) -> Iterator[None]:
    """OS errors while writing into `out_dir` (no space, read-only, no permission) -> one line naming it.

    An OSError that names a file outside `out_dir` (e.g. the source being read) goes on as it is.
    """
    try:
        yield
    except OSError as err:
        name = getattr(err, "filename", None)
        if name is not None and not Path(os.fsdecode(name)).resolve().is_relative_to(out_dir.resolve()):
            raise
        cause = err.strerror or type(err).__name__
        if err.errno == errno.EFBIG:
            cause += " (file size limit)"
        raise SftpackError(f"{out_dir}: cannot write there: {cause}; nothing was changed "
                           f"(temp files removed)") from None


@contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP raise `Interrupted` inside the block (sftpack.bench.monitor's one stop handler,
    which the CLI installs too; kept when already there, as is an ignored SIGHUP under nohup), so every `finally`
    runs and temp files go. Only in the main thread; the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread() or callable(signal.getsignal(signal.SIGTERM)):
        yield
        return
    previous = install_stop_handlers()
    try:
        yield
    finally:
        restore_handlers(previous)


def worker_signals() -> None:
    """In a forked worker: SIGTERM ends it at once (its parent cleans up), Ctrl-C is the parent's to handle, and
    the worker dies with its parent even when that one is killed (Linux's parent-death signal)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP wait until the block is done (delivered right after): renames are all or nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def refuse_own_inputs(inputs: Iterable[Path], targets: Iterable[Path], what: str = "an output") -> None:
    """A run whose output would replace one of its own input files is refused (it would overwrite its input)."""
    targets = list(targets)
    for source in inputs:
        for target in targets:
            same = (os.path.samefile(source, target) if source.exists() and target.exists()
                    else source.resolve() == target.resolve())
            if same:
                raise SftpackError(f"{target}: {what} would replace its own input {source}; nothing was changed. "
                                   "Write to another --out (or output name)")


def precheck(out_dir: Path, planned: dict[str, dict[str, Any]], overwrite: bool) -> None:
    """Before any work: refuse entries this run would replace that sftpack did not write (see `commit`)."""
    folders = [str(out_dir / e["file_name"]) for e in planned.values() if (out_dir / e["file_name"]).is_dir()]
    if folders:
        raise SftpackError(f"{', '.join(folders)}: a folder where this run writes a file; nothing was changed. "
                           "Move it away, or write to another name or --out")
    if overwrite:
        return
    entries = dataset_info.load(out_dir / dataset_info.FILE_NAME)
    manifest = dataset_info.Manifest.load(out_dir)
    foreign = [f"dataset_info.json entry '{n}'" for n, entry in planned.items()
               if n in entries and entries[n] != entry and not manifest.owns_entry(n, entries[n])]
    if foreign:
        raise _not_ours(out_dir, foreign)


def _not_ours(out_dir: Path, what: list[str]) -> SftpackError:
    shown = ", ".join(what[:4]) + (f" and {len(what) - 4} more" if len(what) > 4 else "")
    return SftpackError(f"{out_dir}: {shown} would be replaced, and sftpack did not write "
                        f"{'it' if len(what) == 1 else 'them'} (or it was changed since); nothing was changed. "
                        "Pass --overwrite to replace it, or write to another name or --out")


@dataclass
class Output:
    """One file a run has written to a temp file: where it goes, its sha256, the output set it belongs to (`by`)
    and, for a dataset, its dataset_info entry."""

    final: Path
    tmp: Path
    sha256: str
    by: str
    name: str | None = None
    entry: dict[str, Any] | None = None
    rows: int | None = None


def commit(out_dir: Path, outputs: list[Output], command: str, overwrite: bool = False,
           allow_overlap: bool = False) -> list[str]:
    """Move `outputs` into `out_dir` and register their entries, as one step under the folder's lock; return
    notes for the user. Nothing changes when it raises. See the module docstring for the rules."""
    from sftpack import locks

    info_path = out_dir / dataset_info.FILE_NAME
    notes: list[str] = []
    with locks.hold(out_dir, command, wait=True):
        entries = dataset_info.load(info_path)
        manifest = dataset_info.Manifest.load(out_dir)
        for o in outputs:
            if o.final.is_dir():
                raise SftpackError(f"{o.final}: a folder where this run writes a file; nothing was changed. Move it "
                                   "away, or write to another name or --out")
        replaced = {o.final.name: _current_sha(o.final) for o in outputs}
        if not overwrite:
            foreign = []
            for o in outputs:
                current = entries.get(o.name)
                if o.name in entries and current != o.entry and not manifest.owns_entry(o.name, current):
                    foreign.append(f"dataset_info.json entry '{o.name}'")
                sha = replaced[o.final.name]
                if sha is not None and sha != o.sha256 and not manifest.owns_file(o.final.name, sha):
                    foreign.append(str(o.final))
            if foreign:
                raise _not_ours(out_dir, foreign)
        for o in outputs:
            earlier = manifest.files.get(o.final.name, {}).get("by")
            if earlier and earlier != o.by and replaced[o.final.name] is not None:
                notes.append(f"{o.final.name}: replacing what `{earlier}` wrote")
        stale_entries, stale_files = _stale(out_dir, outputs, entries, manifest, notes)
        notes += check_overlap(out_dir, outputs, entries, set(stale_entries), allow_overlap)
        with signals_held():
            for o in outputs:   # 1: the manifest knows both the old and the new content (a crash in between)
                old = manifest.files.get(o.final.name, {})
                manifest.files[o.final.name] = {"sha256": o.sha256, "size": o.tmp.stat().st_size, "by": o.by,
                                                "entry": o.name,
                                                "replacing": replaced[o.final.name] or old.get("sha256")}
                if o.name is not None:
                    manifest.entries[o.name] = {"entry": o.entry, "file": o.final.name, "by": o.by,
                                                "replacing": entries.get(o.name)}
            manifest.save()
            for o in outputs:   # 2: the files, the stale ones, the entries
                os.replace(o.tmp, o.final)
            for name in stale_files:
                (out_dir / name).unlink(missing_ok=True)
                manifest.files.pop(name, None)
            new_entries = {o.name: o.entry for o in outputs if o.name is not None}
            if new_entries or stale_entries:
                dataset_info.merge(info_path, new_entries, remove=stale_entries)
            for name in stale_entries:
                manifest.entries.pop(name, None)
            for record in (*manifest.files.values(), *manifest.entries.values()):   # 3: done
                record.pop("replacing", None)
            manifest.save()
    if stale_entries or stale_files:
        notes.append(f"removed what an earlier run of the same output wrote and this one no longer does: "
                     f"{', '.join(sorted(set(stale_entries) | set(stale_files)))}")
    return notes


def _current_sha(path: Path) -> str | None:
    return dataset_info.file_sha256(path) if path.is_file() else None


def _stale(out_dir: Path, outputs: list[Output], entries: dict[str, Any], manifest: "dataset_info.Manifest",
           notes: list[str]) -> tuple[list[str], list[str]]:
    """(entry names, file names) an earlier run of the same output set(s) wrote and this run does not: sftpack's
    own and unchanged ones are removed; changed ones are kept and named in a note."""
    names = {o.name for o in outputs if o.name}
    files = {o.final.name for o in outputs}
    stale_entries, stale_files, kept = [], [], []
    for by in sorted({o.by for o in outputs}):
        old_entries, old_files = manifest.by(by)
        for name in old_files:
            if name in files:
                continue
            if manifest.owns_file(name):
                stale_files.append(name)
            else:
                kept.append(name)
        for name in old_entries:
            if name in names:
                continue
            if name not in entries:
                manifest.entries.pop(name, None)
            elif manifest.owns_entry(name, entries[name]) and manifest.entries[name].get("file") not in kept:
                stale_entries.append(name)
            else:
                kept.append(f"entry '{name}'")
    if kept:
        notes.append(f"kept {', '.join(kept)}: an earlier run of the same output wrote them and this one does not, "
                     "but they were changed since; remove them by hand if they are stale")
    return stale_entries, stale_files


# ---------------------------------------------------------------------------------------------- overlap


EVAL_NAME_RE = re.compile(r"(^|_)(test|valid|validation|val|dev|eval)$")
_PUNCT_RE = re.compile(r"[^\w\s]+")
_ASCII_PUNCT = str.maketrans({c: " " for c in map(chr, range(128)) if _PUNCT_RE.match(c)})   # fast path
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz")   # option letters, once punctuation is gone ("A." -> "a")
SHOWN_OVERLAPS = 3


def is_eval_name(name: str) -> bool:
    """An eval set by its name: `..._test`, `_valid`, `_validation`, `_val`, `_dev`, `_eval`; else training."""
    return EVAL_NAME_RE.search(name) is not None


def prompt_of(entry: dict[str, Any]) -> Callable[[Any], str]:
    """The prompt of one row of a dataset_info entry: alpaca prompt + query columns; sharegpt/openai the user
    turns (LLaMA-Factory's default column and tag names where the entry gives none)."""
    columns = entry.get("columns") or {}
    formatting = entry.get("formatting", "alpaca")
    if formatting == "alpaca":
        keys = [k for k in (columns.get("prompt", "instruction"), columns.get("query", "input")) if k]

        def alpaca(row) -> str:
            return "\n".join(str(row[k]) for k in keys if isinstance(row, dict) and row.get(k))
        return alpaca
    tags = entry.get("tags") or {}
    sharegpt = formatting == "sharegpt"
    messages = columns.get("messages", "conversations" if sharegpt else "messages")
    role = tags.get("role_tag", "from" if sharegpt else "role")
    content = tags.get("content_tag", "value" if sharegpt else "content")
    user = tags.get("user_tag", "human" if sharegpt else "user")

    def turns(row) -> str:
        items = row.get(messages) if isinstance(row, dict) else None
        return "\n".join(str(m.get(content, "")) for m in items or [] if isinstance(m, dict) and m.get(role) == user)
    return turns


def prompt_keys(text: str) -> tuple[int, int]:
    """(exact, near) keys of a prompt: the text normalised (NFKC, lower case, whitespace collapsed), and the set
    of its words without punctuation or option letters (the same options in another order and lettering)."""
    ascii = text.isascii()
    if not ascii and not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    norm = " ".join(text.lower().split())
    bare = norm.translate(_ASCII_PUNCT) if ascii else _PUNCT_RE.sub(" ", norm)
    return hash(norm), hash(frozenset(bare.split()) - _LETTERS)


def _loads():
    try:
        import orjson

        return orjson.loads
    except ImportError:
        return json.loads


def _rows_of(path: Path, json_lines: bool = False) -> Iterator[tuple[str, Any]]:
    """(where, row) of a data file: JSON lines (`.jsonl`, or `json_lines`: a temp file being committed) read
    fast, anything else through sftpack.sources."""
    if json_lines or path.suffix == ".jsonl":
        loads = _loads()
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if raw.strip():
                    try:
                        yield f"line {number}", loads(raw)
                    except ValueError:
                        continue
        return
    for located in sources.iter_file(path):
        if located.problem is None:
            yield located.where, located.row


@dataclass
class _Set:
    name: str
    path: Path
    entry: dict[str, Any]
    written: bool

    @property
    def eval(self) -> bool:
        return is_eval_name(self.name)


def check_overlap(out_dir: Path, outputs: list[Output], entries: dict[str, Any], removed: set[str],
                  allow_overlap: bool) -> list[str]:
    """Refuse (unless `allow_overlap`) training rows whose normalised prompt is also in an eval set, where one of
    the two is written now and the other is written now or registered in the same dataset_info.json; return
    notes (near-duplicates, allowed overlaps, registered files that could not be read)."""
    written = {o.name: _Set(o.name, o.tmp, o.entry, True) for o in outputs if o.name and o.entry}
    sets = list(written.values())
    notes: list[str] = []
    for name, entry in entries.items():
        if name in written or name in removed or not isinstance(entry, dict) or not entry.get("file_name"):
            continue
        if any(entry.get(k) for k in dataset_info.SOURCE_KEYS[:-1]):
            continue   # a hub/script/cloud entry: its rows are not here to compare
        path = out_dir / str(entry["file_name"])
        if path.is_file() and path.suffix in sources.FILE_SUFFIXES:
            sets.append(_Set(name, path, entry, False))
    evals = [s for s in sets if s.eval]
    trains = [s for s in sets if not s.eval]
    pairs = [(t, e) for t in trains for e in evals if t.written or e.written]
    if not pairs:
        return notes
    started = time.perf_counter()
    index: dict[int, tuple[str, str]] = {}      # exact key -> (eval set, where)
    near_index: dict[int, str] = {}
    needed = {e.name for _, e in pairs}
    for s in evals:
        if s.name not in needed:
            continue
        get = prompt_of(s.entry)
        for where, row in _rows_safe(s, notes):
            exact, near = prompt_keys(get(row))
            index.setdefault(exact, (s.name, where))
            near_index.setdefault(near, s.name)
    exact_hits: dict[tuple[str, str], int] = {}
    near_hits: dict[tuple[str, str], int] = {}
    examples: list[str] = []
    for t in trains:
        partners = {e.name for tt, e in pairs if tt is t}
        if not partners:
            continue
        get = prompt_of(t.entry)
        for where, row in _rows_safe(t, notes):
            text = get(row)
            exact, near = prompt_keys(text)
            hit = index.get(exact)
            if hit is not None and hit[0] in partners:
                exact_hits[(t.name, hit[0])] = exact_hits.get((t.name, hit[0]), 0) + 1
                if len(examples) < SHOWN_OVERLAPS:
                    examples.append(f"{t.name} {where} = {hit[0]} {hit[1]}: {text[:60]!r}")
            elif near_index.get(near) in partners:
                key = (t.name, near_index[near])
                near_hits[key] = near_hits.get(key, 0) + 1
    seconds = time.perf_counter() - started
    for (train, held), count in near_hits.items():
        notes.append(f"note: {count:,} rows of {train} are near-duplicates of rows of {held} (the same words in "
                     "another order, e.g. shuffled options); intended for an epoch split, contamination otherwise")
    if exact_hits:
        found = "; ".join(f"{count:,} rows of {train} (training) have the prompt of a row of {held} (eval)"
                          for (train, held), count in exact_hits.items())
        if not allow_overlap:
            raise SftpackError(f"train/eval overlap: {found} (normalised prompt: NFKC, lower case, whitespace), e.g. "
                               f"{'; '.join(examples)}. Nothing was changed: drop them from the training set, or pass "
                               f"--allow-overlap to write it anyway")
        notes.append(f"warning: train/eval overlap allowed (--allow-overlap): {found}")
    check_overlap.last_seconds = seconds   # read by the tests that measure its cost
    return notes


def _rows_safe(s: _Set, notes: list[str]) -> Iterator[tuple[str, Any]]:
    try:
        yield from _rows_of(s.path, json_lines=s.written)
    except (SftpackError, OSError) as err:
        notes.append(f"{s.name}: not checked for train/eval overlap ({err})")
