"""First-run benchmark: the README's two commands as a newcomer runs them, timed, with the machine load.

    .venv/bin/python benchmarks/first_run.py                     # fresh clone: set-up, make demo, make test, fast tests
    .venv/bin/python benchmarks/first_run.py --steps demo        # only the demo (in a fresh clone, set-up first)
    .venv/bin/python benchmarks/first_run.py --here --steps demo # in this checkout, its .venv as it is
    .venv/bin/python benchmarks/first_run.py --report benchmarks/results/first_run/<session>   # report.md again

By default the benchmark clones this checkout's HEAD into a temp folder (with `../shared` linked beside it, as CI
has it) and runs, in that clone, exactly what the README says:
1. `make setup`  the set-up (plugins/bootstrap.py: the venv from constraints.txt; pip's cache makes it a warm
                 install, not a download: said in the result);
2. `make demo DEMO_OUT=<fresh folder>`  the main job on the embedded default (a fresh output folder, so every
                 stage runs);
3. `make test`   the whole suite;
4. `make test PYTEST_ARGS='-m "not integration"'`  the fast tests (no framework CLI started), as the README gives it.
Each is timed (wall, and the CPU seconds of its process tree), with `uptime`'s load average before and after
(before each step the script waits, up to 3 min, for the previous step's load to decay to idle: `settle_wait_s`);
the demo's format rate before/after training and its stage times are read from its own summary.json, the test
counts from pytest's last line. Nothing is asserted: the figures are the result, and a machine that was not idle
(load before > 0.5 per core, or a load after that says something else ran) is flagged in the report.

Writes benchmarks/results/first_run/<UTC session>/result.json (schema_version 1) and report.md, rebuilt from
result.json alone (`--report`), the demo's own report folder (`demo_report/`: report.md, summary.json, plots) and
the logs of each step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "plugins"))
DEFAULT_OUT = REPO / "benchmarks" / "results" / "first_run"
SCHEMA_VERSION = 1
STEPS = ("setup", "demo", "test", "fast")
# issue 12: set-up <= 3 min, demo and tests <= 5 min, the fast tests (-m 'not integration') under 60 s
TARGETS_S = {"setup": 180, "demo": 300, "test": 300, "fast": 60}
FAST_ARGS = '-m "not integration"'
IDLE_LOAD_PER_CORE = 0.5
SETTLE_MAX_S = 180      # before a step, wait at most this long for the previous step's load to decay to idle


def settle(cores: int, max_s: float = SETTLE_MAX_S) -> float:
    """Wait until the 1-min load is at most IDLE_LOAD_PER_CORE per core (the previous step's own load decays with a
    60 s time constant), at most `max_s`; the seconds waited. A load that does not decay is someone else's: the
    step then starts anyway and the report flags it."""
    started = time.monotonic()
    while os.getloadavg()[0] > IDLE_LOAD_PER_CORE * cores and time.monotonic() - started < max_s:
        time.sleep(5)
    return round(time.monotonic() - started, 1)


def timed(cmd: list[str], cwd: Path, log: Path, env: dict[str, str]) -> dict:
    """Run `cmd` in `cwd` with its output in `log` through sftpack's one measured runner (bench/monitor.py: its own
    process group, wall, the CPU of its whole waited-for tree); plus the 1/5/15-min loads before and after."""
    from sftpack.bench.monitor import run_measured

    load_before = os.getloadavg()
    measured = run_measured(cmd, cwd, env, log, timeout_s=None, sample=False)
    return {"command": shlex.join(cmd), "exit_code": measured.exit_code, "wall_s": round(measured.wall_s, 1),
            "cpu_s": round((measured.cpu_user_s or 0) + (measured.cpu_system_s or 0), 1),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()], "log": str(log)}


def demo_figures(out: Path) -> dict:
    """What the demo's own summary.json says: stage times, format rate and strict match per model."""
    summary = json.loads((out / "report" / "summary.json").read_text(encoding="utf-8"))
    values = summary["eval"]["values"]
    pick = {label: {key.rsplit(" ", 1)[-1] if "format_rate" in key else "strict_exact_match": value
                    for key, value in metrics.items()
                    if key.endswith("format_rate") or key.endswith("strict-match exact_match")}
            for label, metrics in values.items()}
    return {"stages_s": {name: s["elapsed_s"] for name, s in summary["stages"].items()},
            "run_wall_s": summary.get("run_wall_s"), "parallel": summary.get("parallel"),
            "limit": summary["eval"]["settings"].get("limit"), "base_label": summary["eval"]["base_label"],
            "eval": pick, "final_loss": {f: m["final_loss"] for f, m in summary["train"].items()}}


def test_figures(log: Path) -> dict:
    """pytest's last line: passed / failed / skipped / errors and its own seconds."""
    text = log.read_text(encoding="utf-8", errors="replace")
    last = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    line = last[-1] if last else ""
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed)", line)}
    seconds = re.search(r"in ([0-9.]+)s", line)
    return {"line": line.strip(" ="), "counts": counts, "pytest_s": float(seconds.group(1)) if seconds else None}


def clone(dest: Path) -> Path:
    """HEAD of this checkout in `dest/sftpack`, with the shared reference data linked beside it (as CI has it)."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest / "sftpack")], check=True)
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (dest / "shared").symlink_to(shared)
    return dest / "sftpack"


def run(steps: list[str], here: bool, out_root: Path) -> Path:
    from sftpack.provenance import capture, git_sha, utc_now

    session = out_root / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    session.mkdir(parents=True)
    logs = session / "logs"
    logs.mkdir()
    work = Path(tempfile.mkdtemp(prefix="sftpack-first-run-"))
    try:
        checkout = REPO if here else clone(work)
        result = {"schema_version": SCHEMA_VERSION, "created_utc": utc_now(), "git_sha": git_sha(),
                  "where": "this checkout" if here else "a fresh clone of HEAD (../shared linked beside it)",
                  "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                  "targets_s": TARGETS_S, "environment": capture(), "steps": {}}
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        wanted = [s for s in STEPS if s in steps or (s == "setup" and not here)]
        for step in wanted:
            waited = settle(result["cores"] or 1)
            print(f"first_run: {step} ..." + (f" (waited {waited:.0f} s for the load to settle)" if waited else ""),
                  flush=True)
            if step == "setup":
                record = timed(["make", "setup"], checkout, logs / "setup.log", env)
                record["note"] = "pip's cache of this machine is warm: the packages are installed, not downloaded"
            elif step == "demo":
                demo_out = work / "demo"
                record = timed(["make", "demo", f"DEMO_OUT={demo_out}"], checkout, logs / "demo.log", env)
                if record["exit_code"] == 0:
                    record["figures"] = demo_figures(demo_out)
                    shutil.copytree(demo_out / "report", session / "demo_report")   # report.md, summary.json, plots
            else:
                args = [f"PYTEST_ARGS={FAST_ARGS}"] if step == "fast" else []
                record = timed(["make", "test", *args], checkout, logs / f"{step}.log", env)
                record["figures"] = test_figures(logs / f"{step}.log")
            record["settle_wait_s"] = waited
            result["steps"][step] = record
            print(f"first_run: {step}: {record['wall_s']} s wall, exit {record['exit_code']}", flush=True)
        (session / "result.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        (session / "report.md").write_text(render(result), encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return session


def render(result: dict) -> str:
    from sftpack.pipeline.stages import clock

    cores = result["cores"] or 1
    lines = ["# First run: the README's commands, timed", "",
             f"{result['created_utc']}, git `{result['git_sha']}`, in {result['where']}, {cores} cores.", "",
             "| step | command | wall | target | CPU s | load before (1/5/15 min) | load after | exit |",
             "|---|---|---:|---:|---:|---|---|---:|"]
    flags = []
    for step, r in result["steps"].items():
        target = result["targets_s"].get(step)
        lines.append(f"| {step} | `{r['command']}` | {clock(r['wall_s'])} | {clock(target) if target else ''} | "
                     f"{r['cpu_s']:.0f} | {' / '.join(map(str, r['load_before']))} | "
                     f"{' / '.join(map(str, r['load_after']))} | {r['exit_code']} |")
        if r["load_before"][0] > IDLE_LOAD_PER_CORE * cores:
            flags.append(f"{step}: load {r['load_before'][0]} before it started (not idle)")
    lines.append("")
    if flags:
        lines += ["**Not measured on an idle machine:** " + "; ".join(flags) + ".", ""]
    else:
        lines += [f"Load before each step was at most {IDLE_LOAD_PER_CORE} per core (idle); the load during a step "
                  "is its own.", ""]
    demo = result["steps"].get("demo", {}).get("figures")
    if demo:
        base = demo["base_label"]
        lines += ["## Demo", "", "Stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in demo["stages_s"].items())
                  + (f"; train stages {demo['parallel']} at a time" if (demo.get("parallel") or 1) > 1 else ""), "",
                  f"| model | format rate ({demo['limit']} questions) | strict exact match |", "|---|---:|---:|"]
        for label, metrics in demo["eval"].items():
            rate, em = metrics.get("format_rate"), metrics.get("strict_exact_match")
            lines.append(f"| {label}{' (base)' if label == base else ''} | "
                         f"{'—' if rate is None else f'{100 * rate:.1f} %'} | "
                         f"{'—' if em is None else f'{100 * em:.1f} %'} |")
        lines.append("")
    tests = [(step, result["steps"][step]["figures"]) for step in ("test", "fast")
             if result["steps"].get(step, {}).get("figures")]
    if tests:
        lines += ["## Tests", ""]
        for step, figures in tests:
            what = "pytest" if step == "test" else "pytest, fast tests only"
            lines += [f"{what}: `{figures['line']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated: " + ", ".join(STEPS))
    parser.add_argument("--here", action="store_true", help="run in this checkout (its .venv as it is; no set-up "
                                                             "unless asked) instead of a fresh clone")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results root (default: %(default)s)")
    parser.add_argument("--report", metavar="SESSION", help="rebuild SESSION/report.md from its result.json")
    args = parser.parse_args(argv)
    if args.report:
        folder = Path(args.report)
        result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        (folder / "report.md").write_text(render(result), encoding="utf-8")
        print(folder / "report.md")
        return 0
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"--steps: unknown {unknown}; expected some of {list(STEPS)}")
    session = run(steps, args.here, Path(args.out))
    print((session / "report.md").read_text(encoding="utf-8"))
    result = json.loads((session / "result.json").read_text(encoding="utf-8"))
    return 0 if all(r["exit_code"] == 0 for r in result["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
