"""lm-eval's own command line, with only the --include_path tasks indexed: `python -m sftpack.evaluate.lm_eval_local
ARGS` is `lm_eval ARGS` (the same `lm_eval.__main__.cli_evaluate`: parsing, model, requests, scores, output files),
except that lm-eval's task index is built with `TaskManager(include_defaults=False)`, lm-eval's own switch.

Why: the `lm_eval` script indexes all of lm-eval's built-in tasks before it looks at the ones asked for: 14,000 YAML
files parsed, ~6 s of CPU at every start (lm-eval 0.4.13, one core), more than the whole evaluation of a few
questions on a small model. `sftpack eval` runs this entry only when every task it was given is in its task folders
(checked before: sftpack.evaluate.tasks.check_tasks); a built-in task name runs the plain `lm_eval`. The plain
command stays in eval.json beside each run (`lm_eval_command`) for a run by hand; it gives the same results.

`python -m sftpack.evaluate.lm_eval_local --runs RUNS.json` runs several of these one after another in one process
(`sftpack eval` does, for the hf backend, when runs would otherwise wait for each other): the imports of torch,
transformers, peft and lm-eval (~5 s of CPU) are paid once instead of once per run. Each run is the same
`cli_evaluate` on its own arguments, with its output in its own log (first line: the one-run command that repeats
it); lm-eval seeds every run itself, and each run's model is released before the next one loads. RUNS.json:

    {"runs": [{"args": [...], "log": "PATH", "command": "python -m ... ARGS", "header": ""}, ...],
     "echo": false, "status": "PATH"}

With `echo`, each run's output also goes to this process's stdout, after its `header` line.

`status` gets, after each run, [{"exit": 0, "wall_s": 1.2}, ...]; the first run that fails ends the sequence
(exit status: that run's).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path


def _index_only_the_include_path() -> None:
    from lm_eval.tasks import manager

    if getattr(manager.TaskManager.__init__, "_sftpack_local", False):
        return
    index_everything = manager.TaskManager.__init__

    def local_only(self, *args, include_defaults: bool = False, **kwargs) -> None:
        index_everything(self, *args, include_defaults=include_defaults, **kwargs)

    local_only._sftpack_local = True
    manager.TaskManager.__init__ = local_only


def _evaluate(args: list[str]) -> int:
    """lm-eval's `cli_evaluate` on `args` (as `lm_eval ARGS`); its exit status."""
    _index_only_the_include_path()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *args]
    try:
        cli_evaluate()
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


class _Output:
    """fds 1 and 2 of this process into `log` (and, with `echo`, also to where they went before) until `close`."""

    def __init__(self, log: Path, echo: bool, first_line: str):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log.open("wb")
        self.log.write(first_line.encode("utf-8", errors="replace"))
        self.log.flush()
        self.copier = None
        if echo:
            read, write = os.pipe()
            self.copier = threading.Thread(target=self._copy, args=(read,), daemon=True)
            self.copier.start()
            target = write
        else:
            target = self.log.fileno()
        os.dup2(target, 1)
        os.dup2(target, 2)
        if echo:
            os.close(write)

    def _copy(self, read: int) -> None:
        with os.fdopen(read, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                self.log.write(chunk)
                self.log.flush()
                os.write(self.saved[0], chunk)

    def close(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)      # the pipe's last write end closes: the copier reads to its end
        os.dup2(self.saved[1], 2)
        if self.copier is not None:
            self.copier.join()
        for fd in self.saved:
            os.close(fd)
        self.log.close()


def _release_memory() -> None:
    """What a run's model held, freed before the next run loads its own (the runs' processes used to do this)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_sequence(spec_path: Path) -> int:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    runs, status = spec["runs"], []
    for number, run in enumerate(runs, 1):
        if run.get("header"):
            print(run["header"], flush=True)
        started = time.monotonic()
        output = _Output(Path(run["log"]), bool(spec.get("echo")),
                         f"$ {run['command']}\n# cwd: {os.getcwd()}\n# run {number} of {len(runs)} in one process: "
                         f"{spec_path}\n")
        try:
            code = _evaluate(list(run["args"]))
        except Exception:   # noqa: BLE001 - the run's failure goes to its own log; the sequence stops here
            traceback.print_exc()
            code = 1
        finally:
            output.close()
        _release_memory()
        status.append({"exit": code, "wall_s": round(time.monotonic() - started, 2)})
        Path(spec["status"]).write_text(json.dumps(status), encoding="utf-8")
        if code != 0:
            print(f"lm_eval_local: run {number} of {len(runs)} exited {code} (log: {run['log']}); the runs after it "
                  "were not started", file=sys.stderr, flush=True)
            return code
    return 0


def main() -> int | None:
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--runs":
        return run_sequence(Path(args[1]))
    return _evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
