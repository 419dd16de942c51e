"""The recipe engine: stream rows through the steps in passes, decide, and write the kept rows.

The steps are cut into segments, each some map steps followed by some select steps. One pass per segment
streams every row once: it applies the segment's maps, hands each row to the collectors of the segment's
selects (which keep a few bytes per row: a hash, a count, a code), and, if a map changed rows, writes them
to a spool file. Then the selects decide, in order, over those small arrays. The next pass reads the
spool (or, when nothing changed the rows, the inputs again) and skips the rows dropped. A last pass
copies the kept rows, as raw JSON lines, into the output file(s). Memory therefore grows with the number
of rows (tens of bytes each), not with their text.

A pass is cut into chunks (16 MiB of a JSONL file, one other file, or one spool part); with `workers > 1`
and enough input, forked worker processes run the chunks and the main process merges their results in
order, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sftpack.converters import FieldError
from sftpack.errors import RowError, SftpackError
from sftpack.recipes import inputs as inp
from sftpack.recipes.features import Collector
from sftpack.recipes.registry import MapStep, RowContext, SelectContext, SelectStep, Tag
from sftpack.recipes.steps import SPLIT_TAG

MIN_PARALLEL_BYTES = 32 * 1024 * 1024
SUB_BASE = 64          # expanded rows: sub = parent_sub * SUB_BASE + child + 1
WRITE_BUFFER = 1 << 20


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Annotations:
    """Per-row small values beside a pass's rows: where each came from, and its tags."""

    file: np.ndarray      # int32 index into the run's files
    number: np.ndarray    # int64 line/row number in that file
    sub: np.ndarray       # int64 variant path of expanded rows (0 for source rows)
    tags: dict[str, Tag]

    def __len__(self) -> int:
        return len(self.file)


@dataclass
class PassOutput:
    tasks: list[inp.Task]    # how to read this pass's rows again, in order
    ann: Annotations
    mask: np.ndarray         # rows still in
    rewritten: bool


@dataclass
class StepStats:
    index: int
    step: str
    kind: str
    rows_in: int = 0
    rows_out: int = 0
    details: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


@dataclass
class Segment:
    maps: list[MapStep]
    selects: list[SelectStep]


def segments(steps: list) -> list[Segment]:
    """Maps then selects, repeated; always at least one segment (a pass that reads and checks the rows)."""
    out = [Segment([], [])]
    for step in steps:
        if step.KIND == "map":
            if out[-1].selects:
                out.append(Segment([], []))
            out[-1].maps.append(step)
        else:
            out[-1].selects.append(step)
    return out


@dataclass
class ChunkResult:
    rows: int = 0
    read: int = 0          # source rows read (pass 1)
    part: str | None = None
    part_rows: int = 0
    lines: int = 0
    file: Any = None
    number: Any = None
    sub: Any = None
    tags: dict = field(default_factory=dict)       # name -> (local vocab list, codes array)
    features: dict = field(default_factory=dict)   # step index -> {name: collector result}
    map_counts: list = field(default_factory=list)
    error: tuple | None = None                     # (file, number, number_is_local, field, problem) or (msg,)


# ---------------------------------------------------------------------------------------------- one pass


@dataclass
class PassState:
    """Everything a chunk needs; a module global so that forked workers inherit it."""

    run: Any                      # the Run (plan, files, inputs)
    pass_no: int
    maps: list[MapStep]
    selects: list[SelectStep]
    tasks: list[inp.Task]
    prev: PassOutput | None
    rewrite: bool
    tag_names: list[str]          # tags the rows carry after this pass's maps
    workdir: Path


_STATE: PassState | None = None


def _loads(raw: bytes):
    import orjson

    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError:
        pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg} at column {err.colno})"


def _dumps(row: dict) -> bytes:
    import orjson

    return orjson.dumps(row, default=str)


class _Fail(Exception):
    def __init__(self, info: tuple):
        self.info = info


class _TagEncoder:
    def __init__(self):
        self.vocab: dict[Any, int] = {}
        self.codes = array("i")

    def add(self, value) -> None:
        code = self.vocab.get(value)
        if code is None:
            code = self.vocab[value] = len(self.vocab)
        self.codes.append(code)


def run_chunk(i: int) -> ChunkResult:
    """Process task `i` of the current pass (in a worker or in-process)."""
    state = _STATE
    assert state is not None
    task = state.tasks[i]
    result = ChunkResult(map_counts=[[0, 0] for _ in state.maps])
    collectors: dict[int, dict[str, Collector]] = {}
    shared: dict[Any, Collector] = {}
    flat = []   # (step, collector) pairs that run; a collector equal to an earlier one's is shared
    for s in state.selects:
        collectors[s._index] = {}
        for name, collector in s.collectors().items():
            key = collector.key()
            if key is not None and (key, tuple(s.inputs or ())) in shared:
                collector = shared[(key, tuple(s.inputs or ()))]
            else:
                if key is not None:
                    shared[(key, tuple(s.inputs or ()))] = collector
                flat.append((s, collector))
            collectors[s._index][name] = collector
    need_row = bool(state.maps) or any(c.needs_row for _, c in flat)
    files, numbers, subs = array("i"), array("q"), array("q")
    encoders = {name: _TagEncoder() for name in state.tag_names}
    spool = None
    input_names = state.run.input_names
    file_input = state.run.file_input
    if state.rewrite:
        part = state.workdir / f"p{state.pass_no}-{i:05d}.jsonl"
        spool = open(part, "wb", buffering=WRITE_BUFFER)
        result.part = str(part)
    fast = (state.prev is None and task.kind == "jsonl" and not state.maps and not encoders
            and state.run.input_maps[state.run.file_input[task.file]] is None)
    try:
        if fast:
            numbers = _fast_source_chunk(state, task, result, flat, spool)
            files = array("i", [task.file]) * len(numbers)
            subs = array("q", bytes(8 * len(numbers)))
        for row, raw, file, number, sub, tags, active in () if fast else _chunk_rows(state, task, result, need_row):
            if not active:  # carried unchanged (a pass that keeps the rows in place)
                for _, collector in flat:
                    collector.skip()
                files.append(file), numbers.append(number), subs.append(sub)
                for name, enc in encoders.items():
                    enc.add(tags.get(name))
                continue
            input_name = input_names[file_input[file]]
            items = [(row, raw, sub, tags)]
            try:
                for m, step in enumerate(state.maps):
                    counts = result.map_counts[m]
                    counts[0] += len(items)
                    if step.inputs is not None and input_name not in step.inputs:
                        counts[1] += len(items)
                        continue
                    new = []
                    for item_row, item_raw, item_sub, item_tags in items:
                        if item_row is None:
                            item_row = _loads(item_raw)[0]
                        ctx = RowContext(input_name, item_tags, file, number, item_sub, state.run.seed)
                        out = step.apply(item_row, ctx)
                        if step.EXPANDS:
                            for k, (child, updates) in enumerate(out):
                                new.append((child, None, item_sub * SUB_BASE + k + 1, {**item_tags, **updates}))
                        else:
                            new.append((out, None if step.MODIFIES_ROW else item_raw, item_sub, item_tags))
                    counts[1] += len(new)
                    items = new
                for item_row, item_raw, item_sub, item_tags in items:
                    if item_row is None and need_row:
                        item_row = _loads(item_raw)[0]
                    for step, collector in flat:
                        if step.inputs is not None and input_name not in step.inputs:
                            collector.skip()
                        else:
                            collector.add(item_row, item_tags)
                    if spool is not None:
                        spool.write(item_raw if item_raw is not None else _dumps(item_row))
                        spool.write(b"\n")
                    files.append(file), numbers.append(number), subs.append(item_sub)
                    for name, enc in encoders.items():
                        enc.add(item_tags.get(name))
            except FieldError as err:
                local = task.kind == "jsonl" and state.pass_no == 0
                raise _Fail((file, number, local, err.field, err.problem)) from None
    except _Fail as fail:
        result.error = fail.info
        return result
    except SftpackError as err:
        result.error = (str(err),)
        return result
    finally:
        if spool is not None:
            spool.close()
    result.rows = len(files)
    result.part_rows = len(files)
    result.file, result.number, result.sub = files, numbers, subs
    result.tags = {name: (list(enc.vocab), enc.codes) for name, enc in encoders.items()}
    result.features = {index: {name: c.result() for name, c in cs.items()} for index, cs in collectors.items()}
    return result


def _fast_source_chunk(state: PassState, task: inp.Task, result: ChunkResult, flat: list, spool) -> array:
    """Pass 1 over a JSONL range with no map step: parse, check, collect. The common, large case."""
    import orjson

    input_name = state.run.input_names[state.run.file_input[task.file]]
    adds = [c.add for s, c in flat if s.inputs is None or input_name in s.inputs]
    skips = [c.skip for s, c in flat if not (s.inputs is None or input_name in s.inputs)]
    loads, decode_error, empty = orjson.loads, orjson.JSONDecodeError, {}
    numbers = array("q")
    number = 0
    try:
        for first, lines in inp.iter_blocks(task.path, task.start, task.end):
            number = first - 1
            for raw in lines:
                number += 1
                if not raw or raw.isspace():
                    continue
                try:
                    row = loads(raw)
                except decode_error:
                    row, problem = _loads(raw)
                    if problem is not None:
                        raise _Fail((task.file, number, True, None, problem)) from None
                if type(row) is not dict:
                    problem = f"must be a JSON object, got {type(row).__name__}"
                    raise _Fail((task.file, number, True, None, problem))
                for add in adds:
                    add(row, empty)
                for skip in skips:
                    skip()
                numbers.append(number)
                if spool is not None:
                    spool.write(raw)
                    spool.write(b"\n")
    except FieldError as err:
        raise _Fail((task.file, number, True, err.field, err.problem)) from None
    result.lines = number
    result.read = len(numbers)
    return numbers


def _chunk_rows(state: PassState, task: inp.Task, result: ChunkResult, need_row: bool):
    """(row, raw, file, number, sub, tags, active) for every row of a task."""
    if state.prev is None:
        yield from _source_rows(state, task, result)
        return
    prev = state.prev
    ann, mask = prev.ann, prev.mask
    tag_items = list(ann.tags.items())
    index = task.first_row
    for _, raw in inp.iter_lines(task.path, task.start, task.end):
        g = index
        index += 1
        active = bool(mask[g])
        if not active and state.rewrite:
            continue
        tags = {name: tag.vocab[tag.codes[g]] for name, tag in tag_items}
        row = _loads(raw)[0] if (need_row and active) else None
        yield row, raw, int(ann.file[g]), int(ann.number[g]), int(ann.sub[g]), tags, active
    if index != task.first_row + task.rows:
        raise SftpackError(f"{task.path}: changed while the recipe ran ({index - task.first_row} rows, "
                           f"expected {task.rows})")


def _source_rows(state: PassState, task: inp.Task, result: ChunkResult):
    run = state.run
    ref = run.files[task.file]
    spec = run.inputs[ref.input]
    prepare = run.input_maps[ref.input]
    if task.kind == "jsonl":
        counter = [0]
        for number, raw in inp.iter_lines(task.path, task.start, task.end, counter):
            row, problem = _loads(raw)
            if problem is None and not isinstance(row, dict):
                problem = f"must be a JSON object, got {type(row).__name__}"
            if problem is not None:
                raise _Fail((task.file, number, True, None, problem))
            if prepare is not None:
                try:
                    row = prepare(row, ref)
                except FieldError as err:
                    raise _Fail((task.file, number, True, err.field, err.problem)) from None
                raw = None
            result.read += 1
            yield row, raw, task.file, number, 0, {}, True
        result.lines = counter[0]
        return
    for located in inp.iter_rows(ref, spec):
        number = int(located.where.split()[-1])
        if located.problem is None and not isinstance(located.row, dict):
            located = located.__class__(located.source, located.where, None,
                                        f"must be a mapping, got {type(located.row).__name__}")
        if located.problem is not None:
            raise _Fail((task.file, number, False, None, located.problem))
        row = located.row
        if prepare is not None:
            try:
                row = prepare(row, ref)
            except FieldError as err:
                raise _Fail((task.file, number, False, err.field, err.problem)) from None
        result.read += 1
        yield row, None, task.file, number, 0, {}, True


# ---------------------------------------------------------------------------------------------- merging


def _merge_tag(parts: list[tuple[list, Any]]) -> Tag:
    vocab: dict[Any, int] = {}
    arrays = []
    for local_vocab, codes in parts:
        mapping = np.array([vocab.setdefault(v, len(vocab)) for v in local_vocab] or [0], dtype=np.int32)
        arrays.append(mapping[np.frombuffer(codes, dtype=np.int32)] if len(codes) else np.zeros(0, np.int32))
    return Tag(np.concatenate(arrays) if arrays else np.zeros(0, np.int32), list(vocab))


def _progress(total: int, label: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="B", unit_scale=True, mininterval=0.5, file=sys.stderr,
                leave=False)


def run_pass(run, pass_no: int, segment: Segment, prev: PassOutput | None, tag_names: list[str],
             stats: dict[int, StepStats]) -> PassOutput:
    """One pass: maps + collectors over every row, then the selects' decisions."""
    global _STATE
    if prev is None:
        tasks = run.source_tasks
        rewrite = (any(not inp.is_jsonl(f) for f in run.files) or any(m is not None for m in run.input_maps)
                   or any(s.MODIFIES_ROW or s.EXPANDS for s in segment.maps))
    else:
        tasks = prev.tasks
        rewrite = any(s.MODIFIES_ROW or s.EXPANDS for s in segment.maps)
    for step in segment.maps:
        step.prepare()
    _STATE = PassState(run, pass_no, segment.maps, segment.selects, tasks, prev, rewrite, tag_names, run.workdir)
    sizes = [max(t.end - t.start, 1) if t.kind == "jsonl" else _file_size(t.path) for t in tasks]
    parallel = run.workers > 1 and len(tasks) > 1 and sum(sizes) >= run.min_parallel_bytes
    bar = _progress(sum(sizes), f"pass {pass_no + 1}", run.progress)
    results: list[ChunkResult] = []
    line_offsets: dict[int, int] = {}
    started = time.perf_counter()
    try:
        if parallel:
            from sftpack.convert import worker_signals

            pool = multiprocessing.get_context("fork").Pool(min(run.workers, len(tasks)), initializer=worker_signals)
            chunks = pool.imap(run_chunk, range(len(tasks)))
        else:
            pool = None
            chunks = (run_chunk(i) for i in range(len(tasks)))
        try:
            for i, chunk in enumerate(chunks):
                task = tasks[i]
                offset = line_offsets.get(task.file, 0) if prev is None and task.kind == "jsonl" else 0
                if chunk.error is not None:
                    raise _chunk_error(run, chunk.error, offset)
                if prev is None and task.kind == "jsonl":
                    line_offsets[task.file] = offset + chunk.lines
                    if offset:
                        chunk.number = np.frombuffer(chunk.number, dtype=np.int64) + offset
                results.append(chunk)
                if bar is not None:
                    bar.update(sizes[i])
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    finally:
        _STATE = None
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started

    ann = Annotations(
        file=np.concatenate([np.frombuffer(r.file, dtype=np.int32) for r in results]).astype(np.int32),
        number=np.concatenate([np.asarray(r.number if isinstance(r.number, np.ndarray)
                                          else np.frombuffer(r.number, dtype=np.int64)) for r in results]),
        sub=np.concatenate([np.frombuffer(r.sub, dtype=np.int64) for r in results]),
        tags={name: _merge_tag([r.tags[name] for r in results]) for name in tag_names},
    )
    rows = len(ann)
    if prev is None and rows == 0:
        raise SftpackError(f"the inputs have no rows: {[f.path for f in run.files]}")
    if rewrite:
        out_tasks, first = [], 0
        for r in results:
            size = os.path.getsize(r.part)
            out_tasks.append(inp.Task("jsonl", -1, r.part, 0, size, first, r.part_rows))
            first += r.part_rows
        mask = np.ones(rows, dtype=bool)
    elif prev is None:
        out_tasks, first = [], 0
        for task, r in zip(tasks, results, strict=True):
            out_tasks.append(inp.Task("jsonl", task.file, task.path, task.start, task.end, first, r.rows))
            first += r.rows
        mask = np.ones(rows, dtype=bool)
    else:
        out_tasks, mask = prev.tasks, prev.mask.copy()
    for m, step in enumerate(segment.maps):
        st = stats[step._index]
        st.rows_in = sum(r.map_counts[m][0] for r in results)
        st.rows_out = sum(r.map_counts[m][1] for r in results)
    run.pass_seconds.append(round(seconds, 3))
    if prev is None:
        run.rows_read = sum(r.read for r in results)

    question = ann.file.astype(np.int64) * (1 << 40) + ann.number
    input_of_row = run.file_input_array[ann.file]
    for step in segment.selects:
        features = {}
        names = list(step.collectors().keys()) if segment.selects else []
        for name in names:
            cls = type(step.collectors()[name])
            features[name] = cls.merge([r.features[step._index][name] for r in results])
        active = mask.copy()
        if step.inputs is not None:
            wanted = [run.input_names.index(n) for n in step.inputs]
            active &= np.isin(input_of_row, wanted)
        st = stats[step._index]
        st.rows_in = int(mask.sum())
        ctx = SelectContext(mask=mask, active=active, features=features, tags=ann.tags,
                            origin=lambda i: run.origin(ann, int(i)), question=question,
                            progress=run.progress)
        step.select(ctx)
        for name, tag in ctx.new_tags.items():
            ann.tags[name] = tag
        st.rows_out = int(mask.sum())
        st.details.update(ctx.details)
        st.warnings.extend(ctx.warnings)
        for warning in ctx.warnings:
            print(f"sftpack: warning: {step.label()}: {warning}", file=sys.stderr)
    return PassOutput(out_tasks, ann, mask, rewrite)


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 1


def _chunk_error(run, info: tuple, offset: int) -> SftpackError:
    if len(info) == 1:
        return SftpackError(info[0])
    file, number, local, field_name, problem = info
    ref = run.files[file]
    return RowError(ref.path, f"{ref.unit} {number + offset if local else number}", field_name, problem)


# ---------------------------------------------------------------------------------------------- writing


class OutputWriter:
    """A temp file in the output folder, written in large blocks, hashed (sha256) and counted on the way."""

    def __init__(self, final: Path):
        from sftpack.artifacts import temp_file

        self.final = final
        fd, self.tmp = temp_file(final)   # .<name>.<pid>.<random>.tmp, the mode open() would give
        self.handle = os.fdopen(fd, "wb")
        self.sha = hashlib.sha256()
        self.rows = 0
        self.buffer: list[bytes] = []
        self.buffered = 0

    def write(self, raw: bytes) -> None:
        self.buffer.append(raw)
        self.buffered += len(raw) + 1
        self.rows += 1
        if self.buffered >= WRITE_BUFFER:
            self.flush()

    def write_block(self, block: bytes, rows: int) -> None:
        """Whole lines, each ending with a newline."""
        self.flush()
        self.handle.write(block)
        self.sha.update(block)
        self.rows += rows

    def flush(self) -> None:
        if self.buffer:
            block = b"\n".join(self.buffer) + b"\n"
            self.handle.write(block)
            self.sha.update(block)
            self.buffer, self.buffered = [], 0

    def close(self) -> None:
        self.flush()
        self.handle.close()

    def discard(self) -> None:
        """Close and remove the temp file (after a commit renamed it, nothing is left to remove)."""
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


_WHITESPACE = np.frombuffer(b" \t\n\r\x0b\x0c", dtype=np.uint8)


def _copy_kept(block: memoryview, window: np.ndarray, writer: "OutputWriter") -> int:
    """Write the lines of `block` (whole lines) whose row is kept in `window` (one flag per non-blank line,
    in order), as runs of consecutive lines copied byte for byte; return how many rows the block held."""
    data = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(data == 10)                 # each line's newline
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    maybe_blank = np.flatnonzero(np.isin(data[starts], _WHITESPACE))   # rare: checked one by one
    rows = np.ones(len(ends), dtype=bool)
    for i in maybe_blank:
        rows[i] = bool(bytes(block[starts[i]:ends[i]]).strip())
    lines = np.flatnonzero(rows)                      # line index of each row
    kept = lines[window[:len(lines)]]
    if len(kept):
        breaks = np.flatnonzero(np.diff(kept) != 1)
        first = kept[np.concatenate(([0], breaks + 1))]
        last = kept[np.concatenate((breaks, [len(kept) - 1]))]
        writer.write_block(b"".join([block[a:b] for a, b in zip(starts[first].tolist(),
                                                              (ends[last] + 1).tolist(), strict=True)]),
                           len(kept))
    return len(lines)


def emit(run, final: PassOutput, route_names: list[str], writers: list[OutputWriter],
         on_row: Callable[[int, bytes], None] | None = None) -> None:
    """Copy the kept rows, raw, into `writers` (routed by the split tag when there is more than one)."""
    mask = final.mask
    total = sum(t.end - t.start for t in final.tasks)
    bar = _progress(total, "write", run.progress)
    route = None
    if len(writers) > 1:
        tag = final.ann.tags[SPLIT_TAG]
        lookup = np.array([route_names.index(str(v)) if str(v) in route_names else -1 for v in tag.vocab],
                          dtype=np.int64)
        route = lookup[tag.codes]
    started = time.perf_counter()
    try:
        for task in final.tasks:
            window = mask[task.first_row:task.first_row + task.rows]
            if route is None and on_row is None:
                at = 0
                for block in inp.iter_raw_blocks(task.path, task.start, task.end):
                    at += _copy_kept(block, window[at:], writers[0])
                if at != task.rows:
                    raise SftpackError(f"{task.path}: changed while the recipe ran ({at} rows, expected {task.rows})")
            else:
                lines = (raw for _, raw in inp.iter_lines(task.path, task.start, task.end))
                for k, raw in enumerate(lines):
                    if window[k]:
                        g = task.first_row + k
                        writers[0 if route is None else int(route[g])].write(raw)
                        if on_row is not None:
                            on_row(g, raw)
            if bar is not None:
                bar.update(task.end - task.start)
    finally:
        if bar is not None:
            bar.close()
    run.pass_seconds.append(round(time.perf_counter() - started, 3))
