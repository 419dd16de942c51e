"""Stages with outputs and done-markers keyed by their inputs: the resumable part of `sftpack run`.

Each stage owns the folder `<out>/<stage>/` and, when it finishes, writes `<out>/<stage>/done.json`: its outputs,
elapsed time, its resolved `inputs` (the part of the pipeline spec its outputs depend on, with file hashes and
package versions), the `reads` keys of the stages it reads from, and `key` = sha256 of those two. A re-run
computes every stage's key first (no work yet) and then, stage by stage:

    key == done.json's key     "unchanged, skipped": its outputs are reused
    key != done.json's key     re-run, saying why: "spec changed (overrides.max_steps: 40 -> 60)" and/or
                               "train_llamafactory changed"; every stage that reads it changes key and re-runs too
    a stage it reads ran       re-run ("train_swift ran again"): its outputs are new files, whatever the key says
    done.json without a key    (written before keys existed) counted as changed: re-run, said so
    no done.json               run

Stages of one `group` (the train stages) run at the same time when the run allows `parallel` > 1, each in its own
thread driving its own processes; the others run one after another. While stages run, a line every `PROGRESS_EVERY_S`
says each running stage's progress (from the stage's own: training steps, lm-eval requests) and an ETA for the stage
and the whole run (pending stages: their time in this folder's previous run, when there was one).

The whole run holds the OS lock of `<out>` (sftpack.locks): a second run on the same `--out` fails at once, naming
the first; nothing of either is deleted. A stage folder is replaced only when sftpack wrote it (its .sftpack-stage
marker). `--force STAGE` deletes that stage's folder and the done-markers of every later stage, so they run again. A stage
that runs starts from an empty folder (no leftovers of an unfinished attempt). A stage that raises stops the
pipeline: its folder has no done-marker, earlier stages keep theirs, and the error names the log to read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftpack.artifacts import file_sha256, write_json
from sftpack.bench.monitor import concurrently
from sftpack.errors import SftpackError
from sftpack.locks import hold
from sftpack.provenance import utc_now

DONE = "done.json"
OWNED = ".sftpack-stage"   # written into a stage folder when sftpack creates it: only such folders are ever deleted
SHOWN_CHANGES = 4    # spec differences named in a banner; the rest are counted
PROGRESS_EVERY_S = 15.0   # seconds between progress lines while stages run


class StageFailed(SftpackError):
    def __init__(self, stage: str, error: BaseException, log: Path | None):
        self.stage, self.error, self.log = stage, error, log
        where = f"\n  log: {log}" if log else ""
        super().__init__(f"stage '{stage}' failed: {error}{where}\n  earlier stages' outputs are kept; fix the "
                         f"cause and run the same command again (finished, unchanged stages are skipped)")


@dataclass
class Stage:
    name: str
    run: Callable[[Context], dict[str, Any]]   # returns the stage's outputs (JSON-serialisable)
    what: str = ""
    inputs: Callable[[], dict[str, Any]] = dict  # the resolved spec its outputs depend on (JSON-serialisable)
    reads: tuple[str, ...] | None = None        # stages whose outputs it reads; None = every earlier stage
    group: str | None = None                    # consecutive stages of one group may run at the same time
    progress: Callable[[Context], Progress | None] | None = None   # how far it is, while it runs


@dataclass
class Progress:
    """How far a running stage is: `fraction` of its work (None: not known yet) and the words for it."""

    fraction: float | None
    text: str


@dataclass
class Context:
    out: Path
    outputs: dict[str, dict[str, Any]]          # stage name -> its outputs (from done.json or just run)
    started: float

    def dir(self, stage: str) -> Path:
        folder = self.out / stage
        folder.mkdir(parents=True, exist_ok=True)
        return folder


@dataclass
class Plan:
    """What one stage's output depends on, resolved before any stage runs."""

    inputs: dict[str, Any]
    reads: dict[str, str]                       # stage it reads -> that stage's key
    key: str = field(init=False)

    def __post_init__(self):
        self.key = stage_key(self.inputs, self.reads)


def banner(text: str, started: float) -> None:
    print(f"\n=== sftpack run [{clock(time.monotonic() - started)}] {text}", flush=True)


def clock(seconds: float) -> str:
    """1 min 05 s, 12 s: a duration as a person reads it."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def read_done(out: Path, stage: str) -> dict[str, Any] | None:
    """The stage's done-record; None when it has none. An unreadable one (edited, truncated by hand) counts as a
    record without a key: the stage re-runs, saying why."""
    marker = out / stage / DONE
    if not marker.is_file():
        return None
    try:
        done = json.loads(marker.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        return {"unreadable": f"{marker} is not valid JSON ({err})"}
    return done if isinstance(done, dict) else {"unreadable": f"{marker} holds no JSON object"}


def _canonical(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples -> lists, paths -> str), so stored and fresh inputs compare."""
    return json.loads(json.dumps(value, default=str))


def stage_key(inputs: dict[str, Any], reads: dict[str, str]) -> str:
    text = json.dumps({"inputs": inputs, "reads": reads}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:39] + "…"


def spec_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """['overrides.max_steps: 40 -> 60', 'limit: (unset) -> 5', ...] between two stages' recorded inputs."""
    before, after = _flat(old), _flat(new)
    missing = object()
    changes = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, missing), after.get(key, missing)
        if a != b:
            changes.append(f"{key}: {'(unset)' if a is missing else _show(a)} -> "
                           f"{'(unset)' if b is missing else _show(b)}")
    return changes


def why_changed(done: dict[str, Any], plan: Plan) -> str | None:
    """None when `done` (a done.json record) was made from the same inputs as `plan`; else why not, in words."""
    if "unreadable" in done:
        return f"{done['unreadable']}, counted as changed"
    if "key" not in done:
        return "its done.json has no key (written before stages were keyed), counted as changed"
    if done["key"] == plan.key:
        return None
    reasons = []
    changes = spec_changes(done.get("inputs", {}), plan.inputs)
    if changes:
        more = f", and {len(changes) - SHOWN_CHANGES} more" if len(changes) > SHOWN_CHANGES else ""
        reasons.append(f"spec changed ({', '.join(changes[:SHOWN_CHANGES])}{more})")
    old_reads = done.get("reads", {})
    changed = [name for name, key in plan.reads.items() if old_reads.get(name) != key]
    if changed:
        reasons.append(f"{', '.join(changed)} changed")
    return "; ".join(reasons) or "its key changed"


# -- what goes into a key: file contents and package versions ------------------------------------------------
def _files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def tree_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's file names and contents (sorted): the same bytes give the same hash."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in _files(path):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def tree_stat(folder: Path) -> str:
    """sha256 of a folder's file names, sizes and modification times: for weights too large to read every run."""
    digest = hashlib.sha256()
    for file in _files(folder):
        stat = file.stat()
        digest.update(f"{file.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def plan_stages(stages: list[Stage]) -> dict[str, Plan]:
    """Every stage's inputs, reads and key, in order; no stage runs. Raises on a `reads` that names no earlier stage."""
    plans: dict[str, Plan] = {}
    for stage in stages:
        reads = list(plans) if stage.reads is None else list(stage.reads)
        unknown = [name for name in reads if name not in plans]
        if unknown:
            raise SftpackError(f"stage {stage.name!r} reads {unknown}, which do not run before it "
                               f"(stages before it: {list(plans)})")
        plans[stage.name] = Plan(_canonical(stage.inputs()), {name: plans[name].key for name in reads})
    return plans


def readers(plans: dict[str, Plan], name: str) -> list[str]:
    """The stages that read `name`'s outputs, directly or through another stage, in order."""
    found = {name}
    for stage, plan in plans.items():
        if found & set(plan.reads):
            found.add(stage)
    return [stage for stage in plans if stage in found and stage != name]


def _force(stages: list[Stage], out: Path, force: list[str]) -> dict[str, str]:
    """Delete the forced stages' folders and every later stage's done.json; {stage: why it runs again}."""
    names = [s.name for s in stages]
    unknown = [f for f in force if f not in names]
    if unknown:
        raise SftpackError(f"--force {unknown}: no such stage. Expected one of {names}")
    if not force:
        return {}
    first = min(names.index(f) for f in force)
    why = {}
    for i, stage in enumerate(stages):
        if stage.name in force:
            shutil.rmtree(out / stage.name, ignore_errors=True)
            why[stage.name] = f"--force {stage.name}"
        elif i > first:
            (out / stage.name / DONE).unlink(missing_ok=True)
            why[stage.name] = f"after --force {names[first]}"
    return why


def check_owned(stages: list[Stage], out: Path) -> None:
    """Refuse, before anything runs, an `--out` whose stage-named folders sftpack did not write: they would be
    replaced. A folder is sftpack's when it holds the OWNED marker or a done.json (written by earlier versions)."""
    foreign = [out / s.name for s in stages if (out / s.name).exists()
               and not ((out / s.name / OWNED).is_file() or (out / s.name / DONE).is_file())]
    if foreign:
        raise SftpackError(f"--out {out}: {', '.join(str(p) for p in foreign)} already exist(s) and were not "
                           f"written by `sftpack run` (no {OWNED} marker): a stage would replace them. Nothing was "
                           "changed; choose another --out, or move those folders away")


def run_stages(stages: list[Stage], out: Path, force: list[str] | None = None,
               command: str = "sftpack run", parallel: int = 1) -> dict[str, dict[str, Any]]:
    """Run `stages` in order under `out`, skipping those whose key is unchanged; return {stage: done-record}.
    `parallel` > 1: up to that many stages of one `group` run at the same time.

    `out` is locked for the whole run (sftpack.locks): a second run on it fails at once, naming this one."""
    force = list(force or [])
    out = Path(out).resolve()
    check_owned(stages, out)   # before anything is written into `out`, the lock file included
    plans = plan_stages(stages)
    with hold(out, command):
        check_owned(stages, out)   # again under the lock
        return _run_all(stages, out, plans, force, parallel)


def _run_all(stages: list[Stage], out: Path, plans: dict[str, Plan], force: list[str],
             parallel: int = 1) -> dict[str, dict[str, Any]]:
    previous = {stage.name: (read_done(out, stage.name) or {}).get("elapsed_s") for stage in stages}
    forced = _force(stages, out, force)
    started = time.monotonic()
    ctx = Context(out=out, outputs={}, started=started)
    records: dict[str, dict[str, Any]] = {}
    announced: set[str] = set()      # stages already named as re-running because of an earlier one
    ticker = Ticker(stages, ctx, previous, records)
    index = 0
    with ticker:
        while index < len(stages):
            batch = _batch(stages, index, parallel)
            to_run = []
            for offset, stage in enumerate(batch):
                label = _label(stages, index + offset, stage)
                plan, done = plans[stage.name], read_done(out, stage.name)
                reason = _why_run(done, plan, records, forced.get(stage.name))
                if reason is None:
                    banner(f"{label} -- unchanged, skipped (done before in {done['elapsed_s']:.1f} s); "
                           f"--force {stage.name} redoes it", started)
                    ctx.outputs[stage.name] = done["outputs"]
                    records[stage.name] = {**done, "skipped": True}
                    continue
                if done is not None:
                    after = [name for name in readers(plans, stage.name) if name not in announced]
                    announced.update(after)
                    then = f" and the stages after it that read it ({', '.join(after)})" if after else ""
                    label += f"\n    {stage.name}: {reason}, re-running it{then}"
                elif stage.name in forced:
                    label += f" -- {reason}, re-running it"
                to_run.append((stage, label, reason))
            _run_batch(to_run, plans, ctx, records, ticker)
            index += len(batch)
    return records


def _label(stages: list[Stage], index: int, stage: Stage) -> str:
    return f"{index + 1}/{len(stages)} {stage.name}" + (f": {stage.what}" if stage.what else "")


def _batch(stages: list[Stage], index: int, parallel: int) -> list[Stage]:
    """The stages from `index` that may run together: one stage, or (parallel > 1) the consecutive stages of its
    group that read none of each other."""
    first = stages[index]
    batch = [first]
    if parallel <= 1 or first.group is None:
        return batch
    for stage in stages[index + 1:]:
        reads = set(stage.reads) if stage.reads is not None else {s.name for s in stages}
        if stage.group != first.group or reads & {s.name for s in batch}:
            break
        batch.append(stage)
    return batch


def _run_batch(to_run: list[tuple[Stage, str, str]], plans: dict[str, Plan], ctx: Context,
               records: dict[str, dict[str, Any]], ticker: Ticker) -> None:
    """Run the stages of a batch: one in this thread, or several in threads at once. A stage that fails does not
    stop the others of its batch (their outputs are kept); the first failure is raised when all have ended."""
    def one(stage: Stage, label: str, reason: str) -> dict[str, Any]:
        banner(label, ctx.started)
        ticker.begin(stage.name)
        try:
            record = _run(stage, plans[stage.name], ctx, reason)
        finally:
            ticker.end(stage.name)
        banner(f"{stage.name} done in {clock(record['elapsed_s'])}", ctx.started)
        return record

    if len(to_run) <= 1:
        for stage, label, reason in to_run:
            records[stage.name] = one(stage, label, reason)
        return
    banner(f"{', '.join(stage.name for stage, _, _ in to_run)} run at the same time (parallel: {len(to_run)})",
           ctx.started)
    results = concurrently([lambda s=s, lab=lab, why=why: one(s, lab, why) for s, lab, why in to_run], len(to_run),
                           "stage")
    failures = [result for result in results if isinstance(result, Exception)]
    for (stage, _, _), result in zip(to_run, results):
        if not isinstance(result, Exception):
            records[stage.name] = result
    if failures:
        raise failures[0]   # once every stage of the batch has ended: the others' outputs are kept


class Ticker:
    """Prints, every PROGRESS_EVERY_S while stages run, each running stage's progress and the ETAs."""

    def __init__(self, stages: list[Stage], ctx: Context, previous: dict[str, float | None],
                 records: dict[str, dict[str, Any]]):
        self.stages, self.ctx, self.previous, self.records = stages, ctx, previous, records
        self.running: dict[str, float] = {}     # stage -> when it started
        self.first: dict[str, tuple[float, float]] = {}   # stage -> (when, fraction) of its first progress seen
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def __enter__(self) -> Ticker:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()

    def begin(self, name: str) -> None:
        with self.lock:
            self.running[name] = time.monotonic()

    def end(self, name: str) -> None:
        with self.lock:
            self.running.pop(name, None)

    def _remaining(self, name: str, now: float, fraction: float | None) -> float | None:
        """Seconds left for a stage at `fraction`, at the pace since its first progress was seen (so that its
        start-up -- imports, model loading, tokenising -- is not extrapolated); None until it has moved."""
        if not fraction:
            return None
        first = self.first.setdefault(name, (now, fraction))
        if fraction >= 1.0:
            return 0.0
        if fraction <= first[1]:
            return None
        return (now - first[0]) * (1 - fraction) / (fraction - first[1])

    def _loop(self) -> None:
        while not self.stop.wait(PROGRESS_EVERY_S):
            line = self.line()
            if line:
                print(line, flush=True)

    def line(self) -> str | None:
        """`[1 min 35 s] train_llamafactory 312/600 steps (52 %, ETA 1 min 28 s) · ... · run ETA ~2 min 10 s`."""
        with self.lock:
            running = dict(self.running)
        if not running:
            return None
        now = time.monotonic()
        parts, left = [], 0.0
        known = True
        for name, since in running.items():
            stage = next(s for s in self.stages if s.name == name)
            try:
                progress = stage.progress(self.ctx) if stage.progress else None
            except Exception:   # noqa: BLE001 - a progress line must never stop a run
                progress = None
            elapsed = now - since
            remaining = self._remaining(name, now, progress.fraction if progress else None)
            if remaining is not None:
                parts.append(f"{name} {progress.text} (ETA {clock(remaining)})")
            else:
                parts.append(f"{name} {progress.text if progress else 'running'} ({clock(elapsed)} so far)")
            if remaining is None:
                known = False
            else:
                left = max(left, remaining) if stage.group else left + remaining
        pending = [s.name for s in self.stages if s.name not in self.records and s.name not in running]
        unknown = [name for name in pending if self.previous.get(name) is None]
        left += sum(self.previous.get(name) or 0 for name in pending)
        if not known:
            eta = "run ETA: after the first progress"
        elif unknown:
            eta = f"run ETA >= {clock(left)} ({', '.join(unknown)}: no earlier time to go by)"
        else:
            eta = f"run ETA ~{clock(left)}"
        return f"  [{clock(now - self.ctx.started)}] " + " · ".join(parts) + f" · {eta}"


def preview(stages: list[Stage], out: Path) -> dict[str, str | None]:
    """What a run into `out` would do, running nothing: {stage: why it would run, or None when skipped}."""
    out = Path(out).resolve()
    plans = plan_stages(stages)
    records: dict[str, dict[str, Any]] = {}
    for stage in stages:
        reason = _why_run(read_done(out, stage.name), plans[stage.name], records, None)
        records[stage.name] = {"skipped": reason is None, "reason": reason}
    return {name: record["reason"] for name, record in records.items()}


def _why_run(done: dict[str, Any] | None, plan: Plan, records: dict[str, dict[str, Any]],
             forced: str | None) -> str | None:
    """None: skip the stage (same key, and no stage it reads ran in this run); else why it runs."""
    if done is None:
        return forced or "no done.json: not run here before"
    again = [name for name in plan.reads if not records[name]["skipped"]]
    return why_changed(done, plan) or (f"{', '.join(again)} ran again" if again else None)


def _run(stage: Stage, plan: Plan, ctx: Context, reason: str) -> dict[str, Any]:
    folder = ctx.out / stage.name
    shutil.rmtree(folder, ignore_errors=True)   # an unfinished or changed stage starts clean (sftpack's: checked)
    folder.mkdir(parents=True)
    (folder / OWNED).write_text(f"written by `sftpack run`: stage {stage.name}; replaced when it re-runs\n",
                                encoding="utf-8")
    stage_started = time.monotonic()
    try:
        outputs = stage.run(ctx)
    except KeyboardInterrupt:
        raise
    except Exception as err:
        log = getattr(err, "log_path", None)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.txt").write_text("".join(traceback.format_exception(err)), encoding="utf-8")
        raise StageFailed(stage.name, err, Path(log) if log else folder / "error.txt") from err
    record = {"stage": stage.name, "key": plan.key, "elapsed_s": round(time.monotonic() - stage_started, 2),
              "outputs": outputs, "finished_utc": utc_now(),
              "ran_because": reason, "inputs": plan.inputs, "reads": plan.reads}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "error.txt").unlink(missing_ok=True)
    write_json(folder / DONE, json.loads(json.dumps(record, default=str)))   # atomic: a done-marker is whole
    ctx.outputs[stage.name] = outputs
    return {**record, "skipped": False}
