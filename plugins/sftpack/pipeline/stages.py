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
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftpack.artifacts import file_sha256, write_json
from sftpack.errors import SftpackError
from sftpack.locks import hold
from sftpack.provenance import utc_now

DONE = "done.json"
OWNED = ".sftpack-stage"   # written into a stage folder when sftpack creates it: only such folders are ever deleted
SHOWN_CHANGES = 4    # spec differences named in a banner; the rest are counted


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
    print(f"\n=== sftpack run [{time.monotonic() - started:7.1f} s] {text}", flush=True)


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
               command: str = "sftpack run") -> dict[str, dict[str, Any]]:
    """Run `stages` in order under `out`, skipping those whose key is unchanged; return {stage: done-record}.

    `out` is locked for the whole run (sftpack.locks): a second run on it fails at once, naming this one."""
    force = list(force or [])
    out = Path(out).resolve()
    check_owned(stages, out)   # before anything is written into `out`, the lock file included
    plans = plan_stages(stages)
    with hold(out, command):
        check_owned(stages, out)   # again under the lock
        return _run_all(stages, out, plans, force)


def _run_all(stages: list[Stage], out: Path, plans: dict[str, Plan], force: list[str]) -> dict[str, dict[str, Any]]:
    forced = _force(stages, out, force)
    started = time.monotonic()
    ctx = Context(out=out, outputs={}, started=started)
    records: dict[str, dict[str, Any]] = {}
    announced: set[str] = set()      # stages already named as re-running because of an earlier one
    for i, stage in enumerate(stages, 1):
        plan, done = plans[stage.name], read_done(out, stage.name)
        label = f"{i}/{len(stages)} {stage.name}" + (f": {stage.what}" if stage.what else "")
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
        banner(label, started)
        records[stage.name] = _run(stage, plan, ctx, reason)
        banner(f"{stage.name} done in {records[stage.name]['elapsed_s']:.1f} s", started)
    return records


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
