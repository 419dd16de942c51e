"""Shared fixtures: the offline environment, the tiny model, prepared GSM8K, the reference data.

Every test runs offline with its caches in a temp folder. `make test` runs the suite in 2 pytest-xdist workers
(`-n 2`); each worker's framework processes then use 1 CPU thread (OMP_NUM_THREADS=1), so the two do not fight for
the cores. Fixtures that build something expensive and read-only (the tiny model, prepared data, a trained run)
are built once per session across the workers with `once()`: the first worker builds under a file lock, the
others reuse the folder.
Run: `make test` (all), `make test PYTEST_ARGS="-m 'not integration'"` (no framework CLIs).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def workers() -> int:
    """The number of pytest-xdist workers of this session (1 without xdist)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """`build(folder)` run once per test session, across xdist workers, into a folder shared by all of them;
    returns the folder. The first worker to ask builds under a file lock (a `.built` file marks it done); the
    others wait for it and reuse it. What is built must be read-only for its users (copy it to change it)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent            # the session's folder, shared by its workers (xdist's documented recipe)
    folder = root / f"once-{name}"
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".built").is_file():
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            value = build(folder)
            (folder / ".built").write_text(json.dumps({"value": str(value)}), encoding="utf-8")
    return folder


def once_value(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """Like `once`, returning the path `build` returned (stored beside the build) instead of the folder."""
    folder = once(tmp_path_factory, name, build)
    return Path(json.loads((folder / ".built").read_text(encoding="utf-8"))["value"])


@pytest.fixture(scope="session")
def build_once(tmp_path_factory) -> Callable[[str, Callable[[Path], object]], Path]:
    """`build_once(name, build)` = `once(...)` for a test module: its module-scoped fixtures would run once per xdist
    worker (the workers share a module's tests), this once per session."""
    return lambda name, build: once(tmp_path_factory, name, build)


@pytest.fixture(scope="session", autouse=True)
def _offline(tmp_path_factory):
    """Hubs off and caches inside a session temp folder, for in-process code and every subprocess. Under
    xdist with 2+ workers, every process the tests start uses 1 CPU thread (the workers share the cores)."""
    from sftpack.frameworks import offline_env

    cache = tmp_path_factory.mktemp("cache")
    env = offline_env(cache, base={})
    if workers() > 1:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        import torch

        torch.set_num_threads(1)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield cache
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (CI and every checkout have ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from sftpack import tiny_model as builder

    return once_value(tmp_path_factory, "tiny-model", lambda folder: builder.build(folder / "model", seed=0))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory, shared_data) -> Path:
    """A folder holding dataset_info/ with the full GSM8K train/test prepared: the frameworks' cwd."""
    from sftpack.convert import prepare
    from sftpack.converters import CONVERTERS

    return once(tmp_path_factory, "work", lambda root: prepare(CONVERTERS["gsm8k"], str(shared_data / "gsm8k"),
                                                               root / "dataset_info", progress=False))


@pytest.fixture(scope="session")
def sample_workdir(tmp_path_factory) -> Path:
    """A folder holding dataset_info/ with the GSM8K sample shipped in the package prepared (1,000 train / 200 test
    rows): the frameworks' cwd for runs whose claim is not about the full split (tokenising it is 7x cheaper)."""
    from sftpack.convert import prepare
    from sftpack.converters import CONVERTERS
    from sftpack.samples import sample_dir

    return once(tmp_path_factory, "sample-work", lambda root: prepare(CONVERTERS["gsm8k"], str(sample_dir("gsm8k")),
                                                                      root / "dataset_info", progress=False))


@pytest.fixture(scope="session")
def env(_offline) -> dict[str, str]:
    """The environment for framework subprocesses."""
    return dict(os.environ)


# -- shared real-CLI runs: each launched once per session, read by every test that only reads its outputs ---------
LORA_STEPS = 4


@pytest.fixture(scope="session")
def lora_runs(tmp_path_factory, tiny_model, workdir, env) -> SimpleNamespace:
    """`llamafactory-cli train train_configs/qwen_gsm8k.yaml` and `swift sft train_configs/swift/qwen_lora_gsm8k.yaml`
    as written, with only the tiny-model/CPU overrides (`fw.tiny_*_overrides`: tiny model, fp32, 1 worker, batch 2,
    LORA_STEPS steps), on the FULL GSM8K train split (the one run that proves Swift keeps all 7,473 rows). Both at
    once (1 thread each). Read by test_integration (the runs themselves) and, through `adapter_eval`, by
    test_evaluate and test_integration (lm-eval on each adapter). Fields: model, lf (LF's output = its adapter),
    swift_out (Swift's output folder), swift (its last checkpoint = its adapter), steps, logs."""
    from concurrent.futures import ThreadPoolExecutor

    from sftpack import frameworks as fw

    model = Path(tiny_model).resolve()

    def build(root: Path) -> None:
        jobs = [fw.lf_train_cmd(fw.LF_LORA_CONFIG, fw.tiny_lf_overrides(model, root / "lf-lora", LORA_STEPS)),
                fw.swift_sft_cmd(fw.SWIFT_LORA_CONFIG, fw.tiny_swift_overrides(model, root / "swift-lora", LORA_STEPS))]
        with ThreadPoolExecutor(len(jobs)) as pool:
            list(pool.map(lambda cmd, log: fw.run_logged(cmd, workdir, env, root / log, echo=False), jobs,
                          ["llamafactory.log", "swift.log"]))

    root = once(tmp_path_factory, "lora-runs", build)
    return SimpleNamespace(model=model, steps=LORA_STEPS, lf=root / "lf-lora", swift_out=root / "swift-lora",
                           swift=fw.last_checkpoint(root / "swift-lora"), logs=root)


EVAL_LIMIT = 3


@pytest.fixture(scope="session")
def adapter_eval(tmp_path_factory, lora_runs, sample_workdir, env) -> SimpleNamespace:
    """`python -m sftpack eval` of the tiny base model and both `lora_runs` adapters (labels base, lf, swift), tasks
    gsm8k-local (5-shot) and gsm8k-local-chat (+ two CMMLU subjects when ../shared/data/cmmlu is there), --limit 3,
    max_gen_toks=32: three real lm-eval runs (`--model hf --model_args pretrained=M[,peft=ADAPTER] --include_path
    eval_tasks`), one after another in one process (sftpack.evaluate.lm_eval_local --runs). Read by test_evaluate
    (the report) and test_integration (lm-eval's own results per adapter). Fields: tasks, out (eval.json, eval.md,
    logs/), done (returncode, stdout, stderr of sftpack eval)."""
    import subprocess
    import sys

    tasks = ["gsm8k-local", "gsm8k-local-chat"] + (["cmmlu-local-agronomy", "cmmlu-local-anatomy"]
                                                   if (SHARED_DATA / "cmmlu" / "test").is_dir() else [])

    def build(root: Path) -> None:
        cmd = [sys.executable, "-m", "sftpack", "eval", "--model", str(lora_runs.model),
               "--tuned", f"lf={lora_runs.lf}", f"swift={lora_runs.swift}", "--tasks", ",".join(tasks),
               "--limit", str(EVAL_LIMIT), "--device", "cpu", "--gen-kwargs", "max_gen_toks=32",
               "--workdir", str(sample_workdir), "--out", str(root / "eval"), "--quiet"]
        if len(tasks) > 2:
            cmd += ["--cmmlu-dir", str(SHARED_DATA / "cmmlu")]
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        (root / "done.json").write_text(json.dumps({"returncode": done.returncode, "stdout": done.stdout,
                                                    "stderr": done.stderr}), encoding="utf-8")

    root = once(tmp_path_factory, "adapter-eval", build)
    done = json.loads((root / "done.json").read_text(encoding="utf-8"))
    return SimpleNamespace(tasks=tasks, out=root / "eval", limit=EVAL_LIMIT, done=SimpleNamespace(**done))


@pytest.fixture(scope="session")
def bench_session(tmp_path_factory) -> SimpleNamespace:
    """`sftpack bench` (the real CLI, cwd = the repo) on a mini suite derived from benchmarks/suites/cpu_tiny.yaml:
    lf_lora and swift_lora (3 steps, the real `llamafactory-cli` and `swift`), lf_broken (an unknown key: LLaMA-
    Factory exits non-zero), swift_on_gpu (needs a GPU: skipped), the harness overhead on lf_lora (1 pair), 1 repeat.
    Read by test_bench (the whole session) and test_training (lf_lora's and swift_lora's result.json). Fields: suite
    (mini.yaml), results, work, first (the session folder), done (returncode, stdout, stderr). Read-only: a test
    that re-runs or rebuilds copies results/ first."""
    import subprocess
    import sys

    import yaml
    from sftpack.bench.results import sessions

    repo = REPO_ROOT

    def build(root: Path) -> None:
        data = yaml.safe_load((repo / "benchmarks" / "suites" / "cpu_tiny.yaml").read_text())
        data["runs"] = [run for run in data["runs"] if run["name"] in ("lf_lora", "swift_lora")]
        for run in data["runs"]:
            run["overrides"] = {"max_steps": 3, "save_steps": 3}
        data["runs"] += [
            # LLaMA-Factory refuses unknown keys: the real CLI exits non-zero and the suite must go on
            {"name": "lf_broken", "framework": "llamafactory", "config": "train_configs/qwen_gsm8k.yaml",
             "overrides": {"max_steps": 3, "not_a_real_key": 1}},
            {"name": "swift_on_gpu", "framework": "swift", "config": "train_configs/swift/qwen_lora_gsm8k.yaml",
             "gpus": 1},
        ]
        data["overhead"] = {"run": "lf_lora", "repeats": 1}
        data["defaults"]["repeats"] = 1
        (root / "mini.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        done = subprocess.run([sys.executable, "-m", "sftpack", "bench", str(root / "mini.yaml"), "--results",
                               str(root / "results"), "--work", str(root / "work")], cwd=repo, capture_output=True,
                              text=True, timeout=900)
        (root / "done.json").write_text(json.dumps({"returncode": done.returncode, "stdout": done.stdout,
                                                    "stderr": done.stderr}), encoding="utf-8")

    root = once(tmp_path_factory, "bench-session", build)
    done = json.loads((root / "done.json").read_text(encoding="utf-8"))
    found = sessions(root / "results" / "mini")
    return SimpleNamespace(suite=root / "mini.yaml", results=root / "results", work=root / "work",
                           first=found[0] if found else None, done=SimpleNamespace(**done))


DEFAULT_PIPELINE_STEPS = 10


@pytest.fixture(scope="session")
def default_pipeline_run(tmp_path_factory) -> SimpleNamespace:
    """`sftpack run benchmarks/pipelines/tiny_cpu.yaml` (the README's main job, `run_pipeline` in-process) with
    DEFAULT_PIPELINE_STEPS steps per training and 3 questions of at most 32 new tokens, nothing else changed: model
    stage (small shape built), data stage (sample + the shipped recipe), both trainings at once, the three lm-eval runs
    at once, report. Read by test_pipeline (end to end) and test_training (the pipeline's result.json beside bench's).
    Fields: path (the pipeline file), out, records (run_pipeline's), printed (its stdout), steps. Read-only: a test
    that re-runs it copies `out` first."""
    import contextlib
    import io

    import yaml

    def build(root: Path) -> None:
        from sftpack.pipeline.cli import run_pipeline

        data = yaml.safe_load((REPO_ROOT / "benchmarks" / "pipelines" / "tiny_cpu.yaml").read_text(encoding="utf-8"))
        for train in data["train"]:
            train["overrides"].update(max_steps=DEFAULT_PIPELINE_STEPS, logging_steps=5)
        data["eval"].update(limit=3, gen_kwargs="max_gen_toks=32")
        (root / "pipeline.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            records = run_pipeline(root / "pipeline.yaml", root / "out")
        (root / "printed.txt").write_text(printed.getvalue(), encoding="utf-8")
        (root / "records.json").write_text(json.dumps(records, default=str), encoding="utf-8")

    root = once(tmp_path_factory, "default-pipeline", build)
    return SimpleNamespace(path=root / "pipeline.yaml", out=root / "out", steps=DEFAULT_PIPELINE_STEPS,
                           records=json.loads((root / "records.json").read_text(encoding="utf-8")),
                           printed=(root / "printed.txt").read_text(encoding="utf-8"))
