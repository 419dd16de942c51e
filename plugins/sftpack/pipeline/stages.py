"""Stages with outputs and done-markers: the resumable part of `sftpack run`.

Each stage owns the folder `<out>/<stage>/` and, when it finishes, writes `<out>/<stage>/done.json` (its outputs
and elapsed time). A re-run skips every stage with a done-marker and reuses its outputs. `--force STAGE` deletes
that stage's folder and the done-markers of every later stage (their inputs change), so they run again. A stage
that runs starts from an empty folder (no leftovers of an unfinished attempt). A stage that raises stops the pipeline: its folder has no done-marker, earlier stages keep theirs, and the error names
the log to read.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftpack.errors import SftpackError

DONE = "done.json"


class StageFailed(SftpackError):
    def __init__(self, stage: str, error: BaseException, log: Path | None):
        self.stage, self.error, self.log = stage, error, log
        where = f"\n  log: {log}" if log else ""
        super().__init__(f"stage '{stage}' failed: {error}{where}\n  earlier stages' outputs are kept; fix the "
                         f"cause and run the same command again (finished stages are skipped)")


@dataclass
class Stage:
    name: str
    run: Callable[[Context], dict[str, Any]]   # returns the stage's outputs (JSON-serialisable)
    what: str = ""


@dataclass
class Context:
    out: Path
    outputs: dict[str, dict[str, Any]]          # stage name -> its outputs (from done.json or just run)
    started: float

    def dir(self, stage: str) -> Path:
        folder = self.out / stage
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def banner(text: str, started: float) -> None:
    print(f"\n=== sftpack run [{time.monotonic() - started:7.1f} s] {text}", flush=True)


def read_done(out: Path, stage: str) -> dict[str, Any] | None:
    marker = out / stage / DONE
    return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None


def run_stages(stages: list[Stage], out: Path, force: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run `stages` in order under `out`, skipping finished ones; return {stage: done-record}."""
    names = [s.name for s in stages]
    force = list(force or [])
    unknown = [f for f in force if f not in names]
    if unknown:
        raise SftpackError(f"--force {unknown}: no such stage. Expected one of {names}")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if force:
        first = min(names.index(f) for f in force)
        for i, stage in enumerate(stages):
            if stage.name in force:
                shutil.rmtree(out / stage.name, ignore_errors=True)
            elif i > first and (out / stage.name / DONE).is_file():
                (out / stage.name / DONE).unlink()
    started = time.monotonic()
    ctx = Context(out=out, outputs={}, started=started)
    records: dict[str, dict[str, Any]] = {}
    for i, stage in enumerate(stages, 1):
        done = read_done(out, stage.name)
        label = f"{i}/{len(stages)} {stage.name}" + (f": {stage.what}" if stage.what else "")
        if done is not None:
            banner(f"{label} -- done before ({done['elapsed_s']:.1f} s), skipped; --force {stage.name} redoes it",
                   started)
            ctx.outputs[stage.name] = done["outputs"]
            records[stage.name] = {**done, "skipped": True}
            continue
        banner(label, started)
        shutil.rmtree(out / stage.name, ignore_errors=True)   # an unfinished stage starts clean
        stage_started = time.monotonic()
        try:
            outputs = stage.run(ctx)
        except KeyboardInterrupt:
            raise
        except Exception as err:
            log = getattr(err, "log_path", None)
            (out / stage.name).mkdir(parents=True, exist_ok=True)
            (out / stage.name / "error.txt").write_text("".join(traceback.format_exception(err)), encoding="utf-8")
            raise StageFailed(stage.name, err, Path(log) if log else out / stage.name / "error.txt") from err
        elapsed = time.monotonic() - stage_started
        record = {"stage": stage.name, "elapsed_s": round(elapsed, 2), "outputs": outputs,
                  "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        folder = out / stage.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.txt").unlink(missing_ok=True)
        (folder / DONE).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
        ctx.outputs[stage.name] = outputs
        records[stage.name] = {**record, "skipped": False}
        banner(f"{stage.name} done in {elapsed:.1f} s", started)
    return records
