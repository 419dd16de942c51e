"""The GPU kit's one call, run ON the lent GPU machine (no network): install, preflight, benchmark, send back.

    python3 benchmarks/gpu/run.py                       # the device tool's command; results land in $OUT
    python3 benchmarks/gpu/run.py --budget-s 540 --out /tmp/out --pipeline benchmarks/pipelines/qwen2.5_1.5b_gpu_smoke.yaml

Standard library only until the wheels are in. Steps, each logged with the elapsed time:
1. `pip install --no-index --no-deps --require-hashes --target SITE` the kit's wheels (benchmarks/gpu/kit/wheels,
   written by prepare.py) — skipped when SITE already holds this manifest's install;
2. PYTHONPATH=plugins:SITE and PATH=SITE/bin:$PATH for everything after, hubs off (HF_HUB_OFFLINE=1, ...);
3. preflight.py (versions actually imported, CLIs, CUDA, Liger on a 2-layer model of the real width): a fatal
   finding ends the call (exit 2); an unusable Liger drops the Liger runs with its reason;
4. `sftpack bench SUITE --deadline-s D` (default gpu_quick.yaml: it builds the random-weight Qwen2.5-1.5B-shape
   model with the real tokenizer), D = what is left of --budget-s minus the time to report and pack;
   meanwhile `OUT/results.tar.gz` is rewritten whenever a result changes, so a killed call still returns every
   run that finished;
5. `sftpack bench report`, then the final tar; with --pipeline and enough time left, the smoke pipeline too.
OUT gets at most 6 files: kit.log, preflight.json, summary.json, report.md, results.tar.gz, pipeline.tar.gz.
Exit 0 when at least one run finished ok, 1 when none did, 2 when set-up or preflight failed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
T0 = time.monotonic()
REPORT_RESERVE_S = 45.0      # after the bench deadline: stop the run in flight, report, pack
TAR_EVERY_S = 10.0


class Log:
    """Prints to the terminal and to OUT/kit.log, each line with the seconds since the start."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("a", encoding="utf-8")
        self.lock = threading.Lock()

    def __call__(self, message: str) -> None:
        line = f"[{time.monotonic() - T0:6.1f} s] {message}"
        with self.lock:
            print(line, flush=True)
            self.handle.write(line + "\n")
            self.handle.flush()


def elapsed() -> float:
    return time.monotonic() - T0


def run_logged(cmd: list[str], env: dict, log: Log, timeout_s: float | None = None) -> int:
    """Run `cmd`, every output line into the log; SIGTERM then SIGKILL after `timeout_s`."""
    log("$ " + " ".join(map(str, cmd)))
    proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)

    def pump() -> None:
        for line in proc.stdout:
            log("  " + line.rstrip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log(f"  time limit of {timeout_s:.0f} s reached: SIGTERM (it records what it has), SIGKILL after 20 s")
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    reader.join(timeout=5)
    return code


def requirements(scratch: Path) -> tuple[Path, str]:
    """The manifest, less torchaudio when the image has its own (it must match the image's torch build)."""
    text = (HERE / "manifest.txt").read_text(encoding="utf-8")
    if importlib.util.find_spec("torchaudio") is not None:
        text = "".join(line for line in text.splitlines(True) if not line.startswith("torchaudio=="))
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "kit-requirements.txt"
    path.write_text(text, encoding="utf-8")
    return path, hashlib.sha256(text.encode()).hexdigest()[:16]


def install(wheels: Path, site: Path, scratch: Path, log: Log) -> None:
    reqs, digest = requirements(scratch)
    stamp = site / ".sftpack-gpu-kit"
    if stamp.is_file() and stamp.read_text() == digest:
        log(f"wheels already installed in {site} (same requirements)")
        return
    if not any(wheels.glob("*.whl")):
        raise SystemExit(f"run.py: no wheels in {wheels}: run `python benchmarks/gpu/prepare.py` where PyPI is "
                         "reachable, and carry benchmarks/gpu/kit/wheels with the working tree")
    shutil.rmtree(site, ignore_errors=True)
    code = run_logged([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--require-hashes",
                       "--disable-pip-version-check", "--no-compile", "--target", site, "--find-links", wheels,
                       "-r", reqs], dict(os.environ), log)
    if code != 0:
        raise SystemExit(f"run.py: installing the wheels failed (exit {code}); see kit.log")
    stamp.write_text(digest)
    log(f"installed the {sum(1 for line in reqs.read_text().splitlines() if '==' in line)} pinned wheels into {site}")


def repair_torchaudio(site: Path, env: dict, log: Log) -> None:
    """LLaMA-Factory imports torchaudio but text never calls it: when the kit's torchaudio cannot load its
    compiled libraries beside this torch, remove them (in SITE only) so it imports as pure Python, as
    plugins/bootstrap.py does for CPU builds."""
    if not (site / "torchaudio").is_dir():
        return
    probe = [sys.executable, "-c", "import torchaudio"]
    if subprocess.run(probe, env=env, capture_output=True).returncode == 0:
        return
    removed = list((site / "torchaudio" / "lib").glob("*.so"))
    for path in removed:
        path.unlink()
    ok = subprocess.run(probe, env=env, capture_output=True).returncode == 0
    log(f"torchaudio's compiled libraries do not load beside this torch: removed {len(removed)} from {site} "
        f"(text training never uses them); import now {'works' if ok else 'STILL FAILS'}")


def unpack_tokenizer(log: Log) -> None:
    """prepare.py's qwen2.5-tokenizer.tar.gz -> kit/qwen2.5-tokenizer/ (the folder the suites name)."""
    packed, folder = HERE / "kit" / "qwen2.5-tokenizer.tar.gz", HERE / "kit" / "qwen2.5-tokenizer"
    if (folder / "tokenizer_config.json").is_file() or not packed.is_file():
        return
    with tarfile.open(packed) as tar:
        tar.extractall(folder.parent, filter="data")
    log(f"unpacked {packed.name} into {folder}")


def kit_env(site: Path, cache: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"), str(site)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PATH"] = f"{site / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               HF_HOME=str(cache / "hf"), MODELSCOPE_CACHE=str(cache / "modelscope"),
               MPLCONFIGDIR=str(cache / "matplotlib"), TOKENIZERS_PARALLELISM="false")
    return env


class Packer(threading.Thread):
    """Keeps OUT/<name>.tar.gz equal to `folder` (rewritten atomically when something in it changed)."""

    def __init__(self, folder: Path, target: Path, log: Log):
        super().__init__(daemon=True, name="packer")
        self.folder, self.target, self.log = folder, target, log
        self.stop_event = threading.Event()
        self.signature: tuple = ()

    def pack(self, force: bool = False) -> None:
        if not self.folder.is_dir():
            return
        files = sorted(p for p in self.folder.rglob("*") if p.is_file())
        signature = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
        if signature == self.signature and not force:
            return
        tmp = self.target.with_name(f".{self.target.name}.tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.folder, arcname=self.folder.name)
        os.replace(tmp, self.target)
        self.signature = signature

    def run(self) -> None:
        while not self.stop_event.wait(TAR_EVERY_S):
            try:
                self.pack()
            except OSError as err:   # a file vanished while packing: the next round takes it
                self.log(f"packer: {err}")

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
        self.pack(force=True)


def statuses(results: Path) -> dict[str, str]:
    out = {}
    for path in sorted(results.rglob("result.json")):
        if "overhead" in path.parts:
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        out[f"{data['run']}-r{data['repeat']}"] = data["status"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "runs" / "gpu-kit" / "out"),
                        help="the folder sent back ($OUT on the device machine)")
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="the whole call's time, set-up included (the device command's limit minus a margin)")
    parser.add_argument("--wheels", type=Path, default=HERE / "kit" / "wheels")
    parser.add_argument("--site", type=Path, default=Path("/tmp/sftpack-gpu-site"), help="where the wheels go")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "gpu-kit", help="models, checkpoints, results")
    parser.add_argument("--suite", type=Path, default=REPO / "benchmarks" / "suites" / "gpu_quick.yaml")
    parser.add_argument("--set", action="append", default=[], help="passed to `sftpack bench --set` (repeatable)")
    parser.add_argument("--deadline-s", type=float, help="bench's deadline (default: what the budget leaves)")
    parser.add_argument("--timeout-s", type=float, help="bench's per-run timeout (default: the suite's)")
    parser.add_argument("--only", help="bench's --only: comma-separated run names (default: every run)")
    parser.add_argument("--fit-check", choices=["warn", "refuse", "off"], default="warn",
                        help="before each run `sftpack estimate` predicts its peak (recorded in estimate.json beside result.json, to compare with the measured peak); warn (default): run even when predicted not to fit; off: no estimate (saves ~5-15 s per distinct config)")
    parser.add_argument("--allow-no-cuda", action="store_true", help="the CPU twin (tests/test_gpu_kit.py)")
    parser.add_argument("--pipeline", type=Path, help="a pipeline to run after the suite when time is left")
    parser.add_argument("--pipeline-min-s", type=float, default=200.0, help="time the pipeline needs to start")
    args = parser.parse_args(argv)

    out, work = args.out.resolve(), args.work.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "kit.log")
    summary = {"budget_s": args.budget_s, "suite": str(args.suite), "sets": args.set, "steps": {}}

    def step(name: str, started: float) -> None:
        summary["steps"][name] = round(elapsed() - started, 1)

    def write_summary() -> None:
        summary["elapsed_s"] = round(elapsed(), 1)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    log(f"GPU kit: python {sys.version.split()[0]} at {sys.executable}; budget {args.budget_s:.0f} s; out {out}")
    started = elapsed()
    install(args.wheels.resolve(), args.site.resolve(), work, log)
    env = kit_env(args.site.resolve(), work / "cache")
    repair_torchaudio(args.site.resolve(), env, log)
    unpack_tokenizer(log)
    step("install", started)

    started = elapsed()
    code = run_logged([sys.executable, HERE / "preflight.py", "--site", args.site.resolve(), "--json",
                       out / "preflight.json"] + (["--allow-no-cuda"] if args.allow_no_cuda else []), env, log, 240)
    step("preflight", started)
    if code != 0:
        summary["result"] = "preflight failed: see preflight.json"
        write_summary()
        return 2
    preflight = json.loads((out / "preflight.json").read_text(encoding="utf-8"))

    results = work / "results"
    packer = Packer(results, out / "results.tar.gz", log)
    packer.start()
    deadline = args.deadline_s or args.budget_s - elapsed() - REPORT_RESERVE_S
    bench = [sys.executable, "-m", "sftpack", "bench", args.suite, "--results", results, "--work", work / "bench",
             "--deadline-s", f"{max(deadline, 1.0):.0f}"]
    for item in args.set:
        bench += ["--set", item]
    if args.timeout_s:
        bench += ["--timeout-s", f"{args.timeout_s:g}"]
    if args.only:
        bench += ["--only", args.only]
    if args.fit_check != "refuse":
        bench += ["--force-fit" if args.fit_check == "warn" else "--no-fit-check"]
    if not preflight["liger"]["usable"]:
        bench += ["--skip-module", f"liger_kernel=preflight: {preflight['liger']['reason']}"]
    started = elapsed()
    summary["bench_exit"] = run_logged(bench, env, log, timeout_s=max(deadline, 1.0) + 30)
    step("bench", started)

    started = elapsed()
    suite_name = args.suite.stem
    run_logged([sys.executable, "-m", "sftpack", "bench", "report", "--results", results, "--suite", suite_name],
               env, log, timeout_s=60)
    report = results / suite_name / "report.md"
    if report.is_file():
        shutil.copy2(report, out / "report.md")
    packer.finish()
    step("report_and_pack", started)
    summary["runs"] = statuses(results) if results.is_dir() else {}

    left = args.budget_s - elapsed()
    if args.pipeline and left >= args.pipeline_min_s:
        started = elapsed()
        pipeline_out = work / "pipeline"
        summary["pipeline_exit"] = run_logged([sys.executable, "-m", "sftpack", "run", args.pipeline, "--out",
                                               pipeline_out], env, log, timeout_s=left - 20)
        if (pipeline_out / "report").is_dir():
            Packer(pipeline_out / "report", out / "pipeline.tar.gz", log).pack(force=True)
        step("pipeline", started)
    elif args.pipeline:
        log(f"pipeline {args.pipeline} not started: {left:.0f} s left, it needs {args.pipeline_min_s:.0f} s")
        summary["pipeline_exit"] = f"not started: {left:.0f} s left"

    ok = [run for run, status in summary["runs"].items() if status == "ok"]
    summary["result"] = (f"{len(ok)} of {len(summary['runs'])} runs ok" if summary["runs"] else
                         f"bench stopped before any run (exit {summary['bench_exit']}): see kit.log")
    write_summary()
    log(f"done: {summary['result']}: {summary['runs']}; sent back: {sorted(p.name for p in out.iterdir())}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
