"""The benchmark harness (sftpack.bench): suite schema, fairness, measurement, results, report, CLI.

    .venv/bin/python -m pytest tests/test_bench.py                      # all (~1.5 min on 2 cores)
    .venv/bin/python -m pytest tests/test_bench.py -m "not integration"  # no framework CLI (~15 s)

Unit tests use real processes (a forked Python allocating memory) but no framework. The integration test runs
a suite derived from benchmarks/suites/cpu_tiny.yaml through `sftpack bench` with the real
`llamafactory-cli` and `swift` CLIs, including a run whose bad override makes LLaMA-Factory exit non-zero,
then re-runs and rebuilds the report. The committed CPU results are checked against the report and README
built from them, and against a fresh parse of their own raw logs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from sftpack import frameworks as fw
from sftpack.bench import fairness, report
from sftpack.bench.monitor import Nvml, run_measured
from sftpack.bench.results import SCHEMA_VERSION, load_session, read_json, sessions, write_json
from sftpack.bench.suite import SuiteError, load_suite

SUITES = fw.REPO_ROOT / "benchmarks" / "suites"
RESULTS = fw.REPO_ROOT / "benchmarks" / "results"
README = fw.REPO_ROOT / "benchmarks" / "README.md"
SHIPPED = sorted(SUITES.glob("*.yaml"))
PY = sys.executable


def _suite_file(tmp_path: Path, data: dict, name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _minimal(**extra) -> dict:
    return {"model": {"build_shape": "tiny"},
            "runs": [{"name": "a", "framework": "llamafactory", "config": "train_configs/qwen_gsm8k.yaml",
                      "group": "g"},
                     {"name": "b", "framework": "swift", "config": "train_configs/swift/qwen_lora_gsm8k.yaml",
                      "group": "g"}], **extra}


# -- suite schema --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where,patch", [
    ("top", lambda d: d.update(colour="red")),
    ("run", lambda d: d["runs"][0].update(colour="red")),
    ("model", lambda d: d["model"].update(colour="red")),
    ("defaults", lambda d: d.update(defaults={"colour": "red"})),
    ("overhead", lambda d: d.update(overhead={"run": "a", "colour": "red"})),
])
def test_unknown_keys_are_errors_listing_the_allowed_ones(tmp_path, where, patch):
    data = _minimal()
    patch(data)
    with pytest.raises(SuiteError) as err:
        load_suite(_suite_file(tmp_path, data))
    assert "colour: unknown key" in str(err.value) and "expected one of " in str(err.value), where


@pytest.mark.parametrize("patch,expected", [
    (lambda d: d["runs"][0].update(framework="axolotl"), "runs[0].framework: unknown value (got 'axolotl')"),
    (lambda d: d["runs"][0].update(config="train_configs/nope.yaml"), str(fw.REPO_ROOT / "train_configs/nope.yaml")),
    (lambda d: d["runs"][1].update(framework="llamafactory", config="train_configs/qwen_gsm8k.yaml"),
     "exactly one llamafactory and one swift"),
    (lambda d: d["runs"][0].update(overrides={"output_dir": "x"}), "set by the harness"),
    (lambda d: d["runs"][1].update(name="a"), "run names must be unique"),
    (lambda d: d.update(model={"build_shape": "gpt5"}), "model.build_shape: unknown value (got 'gpt5')"),
    (lambda d: d.update(defaults={"presets": ["turbo"]}), "defaults.presets[0]: unknown value (got 'turbo')"),
    (lambda d: d.update(fairness="maybe"), "fairness: unknown value (got 'maybe')"),
])
def test_invalid_suites_say_what_to_fix(tmp_path, patch, expected):
    data = _minimal()
    patch(data)
    with pytest.raises(SuiteError, match="t.yaml") as err:
        load_suite(_suite_file(tmp_path, data))
    assert expected in str(err.value)


def test_shipped_suites_load_and_every_pair_is_fair():
    names = {path.stem for path in SHIPPED}
    assert {"cpu_tiny", "gpu_qwen2.5_1.5b", "distributed"} <= names
    for path in SHIPPED:
        suite = load_suite(path)
        assert path.read_text().startswith("# "), f"{path}: opens with its header comment"
        assert f"sftpack bench benchmarks/suites/{path.name}" in path.read_text(), f"{path}: header has the command"
        verdicts = fairness.check_suite(suite)
        assert verdicts and all(v.comparable for v in verdicts), [v.describe() for v in verdicts]
    cpu, gpu, dist = (load_suite(SUITES / f"{n}.yaml") for n in ("cpu_tiny", "gpu_qwen2.5_1.5b", "distributed"))
    assert {cpu.gpus(r) for r in cpu.runs} == {0} and {g for g in cpu.groups()} == {"lora", "full"}
    assert {gpu.gpus(r) for r in gpu.runs} == {1} and {dist.gpus(r) for r in dist.runs} == {2}
    assert gpu.model.path == "Qwen/Qwen2.5-1.5B" and gpu.model.build_shape == "qwen2.5-1.5b"
    assert {"lora_fast", "full_fast"} <= set(gpu.groups())
    assert set(dist.groups()) == {"ddp", "zero2", "zero3", "fsdp"}


def test_fsdp_configs_of_both_frameworks_hold_the_same_settings():
    swift = json.loads((SUITES / "fsdp2_swift.json").read_text())
    hf = json.loads((SUITES / "fsdp2_hf.json").read_text())
    assert swift["fsdp_config"] == hf and swift["fsdp"] == "full_shard auto_wrap"
    lf_run = load_suite(SUITES / "distributed.yaml").run("lf_fsdp")
    assert lf_run.overrides["fsdp"] == swift["fsdp"]


def test_fairness_refuses_an_unfair_pair_before_running(tmp_path):
    data = _minimal()
    data["runs"][1]["overrides"] = {"lora_alpha": 64, "learning_rate": 2.0e-4}
    path = _suite_file(tmp_path, data)
    from sftpack.bench.runner import run_suite

    with pytest.raises(SuiteError, match="refusing to run unfair") as err:
        run_suite(path, results_root=tmp_path / "results", work_root=tmp_path / "work")
    assert "lora_alpha: 32 vs 64" in str(err.value) and "learning_rate" in str(err.value)
    assert not (tmp_path / "results").exists(), "nothing may be run or recorded for a refused suite"
    data["fairness"] = "mark"
    (verdict,) = fairness.check_suite(load_suite(_suite_file(tmp_path, data)))
    assert not verdict.comparable and verdict.differences == {"lora_alpha": [32, 64],
                                                              "learning_rate": [1.0e-4, 2.0e-4]}


def test_fairness_counts_gpus_in_the_effective_batch(tmp_path):
    data = _minimal()
    data["runs"][1]["gpus"] = 2
    (verdict,) = fairness.check_suite(load_suite(_suite_file(tmp_path, data)))
    assert verdict.differences == {"effective_batch": [16, 32], "gpus": [0, 2]}


# -- measurement of a real process tree ----------------------------------------------------------------------
FORKING_CHILD = """
import os, time
a = bytearray(300 * 1024 * 1024)
for i in range(0, len(a), 4096):
    a[i] = 1
pid = os.fork()          # the child shares the 300 MiB copy-on-write: RSS counts it twice, PSS once
if pid == 0:
    time.sleep(2.0); os._exit(0)
time.sleep(2.5); os.waitpid(pid, 0)
"""


MEASURE_FORKING_CHILD = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
from sftpack.bench.monitor import run_measured
folder = Path(sys.argv[1])
m = run_measured([sys.executable, "-c", sys.argv[2]], folder, {}, folder / "log.txt", timeout_s=60)
print(json.dumps({"exit_code": m.exit_code, "timed_out": m.timed_out, "wall_s": m.wall_s, "sampler": m.sampler,
                  "peak_rss_largest_process_mib": m.peak_rss_largest_process_mib, "cpu_user_s": m.cpu_user_s}))
"""


def test_monitor_measures_rss_pss_and_the_tree_of_a_real_process(tmp_path):
    """Measured from a fresh harness process, as `sftpack bench` is one: Linux carries the forking parent's RSS
    high-water mark across exec (the monitor's docstring), so from a pytest worker that has run pipelines in-process
    the largest process's figure would start at the worker's own RSS (494 MiB seen)."""
    done = subprocess.run([PY, "-c", MEASURE_FORKING_CHILD, str(tmp_path), FORKING_CHILD], capture_output=True,
                          text=True, timeout=120, check=True)
    m = SimpleNamespace(**json.loads(done.stdout))
    assert m.exit_code == 0 and not m.timed_out and 2.5 < m.wall_s < 30
    assert 300 < m.peak_rss_largest_process_mib < 400
    s = m.sampler
    assert s["max_tree_processes"] == 2 and s["pss_samples"] >= 1
    assert s["peak_rss_sum_tree_mib"] > 580, "both processes map the 300 MiB: summed RSS double-counts"
    assert 290 < s["peak_pss_tree_mib"] < 450, "PSS counts the shared pages once"
    assert s["peak_gpu_tree_nvml_mib"] is None and m.cpu_user_s > 0


def test_monitor_timeout_kills_the_whole_group_and_says_so(tmp_path):
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); " \
           "time.sleep(120)"
    m = run_measured([PY, "-c", code], tmp_path, dict(os.environ), tmp_path / "log.txt", timeout_s=2)
    assert m.timed_out and m.signal_name == "SIGTERM" and m.wall_s < 20
    grandchildren = subprocess.run(["pgrep", "-f", "time.sleep\\(120\\)"], capture_output=True, text=True).stdout
    assert not grandchildren.strip(), "the timed-out run's grandchild survived"


def test_result_json_never_holds_nan_or_infinity(tmp_path):
    write_json(tmp_path / "r.json", {"schema_version": SCHEMA_VERSION, "a_s": math.nan, "b": [math.inf, 1.5]})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert read_json(tmp_path / "r.json") == {"schema_version": SCHEMA_VERSION, "a_s": None, "b": [None, 1.5]}


def test_environment_capture_has_versions_hardware_and_git():
    done = subprocess.run([PY, "-m", "sftpack.provenance"], capture_output=True, text=True, check=True)
    env = json.loads(done.stdout)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=fw.REPO_ROOT, capture_output=True, text=True).stdout
    assert env["git"]["sha"] == head.strip() and isinstance(env["git"]["dirty"], bool)
    import torch

    assert env["gpu"]["torch_version"] == torch.__version__ and env["packages"]["torch"]
    assert env["packages"]["llamafactory"] and env["packages"]["ms-swift"]
    assert env["cpu"]["logical_cores"] == os.cpu_count() and env["gpu"]["device_count"] == torch.cuda.device_count()


@pytest.mark.gpu
def test_nvml_sees_the_gpu_and_the_process_using_it():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (NVML sampling is only used when one is present)")
    nvml, why = Nvml.open()
    assert nvml is not None, why
    x = torch.ones(256, 1024, 1024, device="cuda")  # 1 GiB
    assert nvml.device_used_bytes() > x.numel() * 4
    used = nvml.tree_used_bytes({os.getpid()})
    assert used is None or used > x.numel() * 4  # None: NVML lists host PIDs (containers)
    nvml.close()


def test_distributed_suite_records_why_it_is_skipped(tmp_path):
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine can run the distributed suite for real")
    from sftpack.bench.runner import run_suite

    session_dir, results = run_suite(SUITES / "distributed.yaml", tmp_path / "results", tmp_path / "work",
                                     repeats=1)
    assert len(results) == 8 and {r.status for r in results} == {"skipped"}
    assert all(f"needs 2 GPU(s); this machine has {torch.cuda.device_count()}" in r.status_detail for r in results)
    zero = [r for r in results if "zero" in r.run]
    if importlib.util.find_spec("deepspeed") is None:
        assert all("['deepspeed'] not importable" in r.status_detail for r in zero)
    session, stored = load_session(session_dir)
    assert [r["status"] for r in stored] == ["skipped"] * 8 and session["model"]["used"] is None
    assert not (tmp_path / "work" / "models").exists(), "no model is built when every run is skipped"
    assert "| lf_ddp | LF | ddp | skipped |" in report.render_markdown(session, stored)


# -- CLI ------------------------------------------------------------------------------------------------------
def test_harness_imports_no_framework_torch_or_plotting():
    """The harness process stays small (its memory is part of the measured overhead)."""
    code = ("import sys, sftpack.bench.cli, sftpack.bench.runner, sftpack.bench.report, sftpack.bench.monitor; "
            "print(sorted(m for m in ('torch', 'llamafactory', 'swift', 'transformers', 'matplotlib', 'pynvml') "
            "if m in sys.modules))")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_help_and_clear_errors(tmp_path):
    out = subprocess.run([PY, "-m", "sftpack", "bench", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "sftpack bench report" in out.stdout
    out = subprocess.run([PY, "-m", "sftpack", "bench", "report", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--readme" in out.stdout
    (tmp_path / "empty").mkdir()
    out = subprocess.run([PY, "-m", "sftpack", "bench", "report", "--results", str(tmp_path / "empty")],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "no suite results under" in out.stderr
    out = subprocess.run([PY, "-m", "sftpack", "bench", str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert out.returncode == 1 and "suite file not found" in out.stderr


def test_add_parser_wires_bench_into_a_parent_cli():
    from sftpack.bench.cli import add_parser

    parser = argparse.ArgumentParser(prog="sftpack")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "benchmarks/suites/cpu_tiny.yaml", "--repeats", "1", "--only", "lf_lora"])
    assert args.command == "bench" and args.target.endswith("cpu_tiny.yaml")
    assert args.rest == ["--repeats", "1", "--only", "lf_lora"] and callable(args.func)
    args = parser.parse_args(["bench", "report", "--suite", "cpu_tiny"])
    assert (args.target, args.rest) == ("report", ["--suite", "cpu_tiny"])


# -- committed results ----------------------------------------------------------------------------------------
def _committed() -> list[Path]:
    return [suite_dir for suite_dir in sorted(RESULTS.iterdir()) if suite_dir.is_dir() and sessions(suite_dir)] \
        if RESULTS.is_dir() else []


def test_cpu_results_are_committed():
    assert RESULTS / "cpu_tiny" in _committed(), "benchmarks/results/cpu_tiny/ has no session"


@pytest.mark.parametrize("suite_dir", _committed(), ids=lambda p: p.name)
def test_committed_report_and_readme_are_rebuilt_from_results(suite_dir):
    session, results = load_session(sessions(suite_dir)[-1])
    assert (suite_dir / "report.md").read_text() == report.render_markdown(session, results), \
        f"stale: run `sftpack bench report --suite {suite_dir.name}`"
    for name in report.PLOTS:
        assert (suite_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    start, end = f"<!-- bench:{suite_dir.name} -->\n", f"\n<!-- /bench:{suite_dir.name} -->"
    text = README.read_text()
    if start in text:
        section = text.split(start, 1)[1].split(end, 1)[0]
        prefix = os.path.relpath(suite_dir, README.parent) + "/"
        assert section == report.render_section(session, results, prefix), \
            f"stale README section: run `sftpack bench report --suite {suite_dir.name} --readme {README}`"


UNITLESS = {"schema_version", "exit_code", "repeat", "gpus", "steps", "max_steps", "samples_seen", "tokens_seen",
            "non_padding_tokens", "max_tree_processes", "trainable_params", "total_params", "samples", "pss_samples",
            "final_loss", "train_loss_mean", "trainable_percent", "pss_budget_of_one_core",
            "mfu", "matmul_params", "model_flops_per_token", "seed", "data_seed"}


def _numeric_keys(data, prefix=""):
    for key, value in data.items():
        if key in ("environment", "overrides", "env_overrides", "model", "fairness_differences", "speed_options"):
            continue
        if isinstance(value, dict):
            yield from _numeric_keys(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield prefix + key, key


@pytest.mark.parametrize("suite_dir", _committed(), ids=lambda p: p.name)
def test_committed_results_follow_the_schema_and_reparse_from_raw_logs(suite_dir):
    session, results = load_session(sessions(suite_dir)[-1])
    assert session["environment"]["git"]["sha"] and session["environment"]["packages"]["torch"]
    for result in results:
        for path, key in _numeric_keys(result):
            assert key in UNITLESS or key.endswith(("_s", "_mib", "_per_s", "_utc")) or "load_avg" in key, path
        run_dir = sessions(suite_dir)[-1] / f"{result['run']}-r{result['repeat']}"
        assert (run_dir / "stdout.log").is_file()
        if result["status"] != "ok":
            assert result["log_tail"], f"{run_dir}: a failed run keeps its log tail"
            continue
        stdout = (run_dir / "stdout.log").read_text()
        per_step = result["throughput"]["samples_seen"] // result["throughput"]["steps"]
        log = fw.adapter(result["framework"]).parse_log(run_dir, stdout, result["gpus"] > 0, per_step,
                                                        padding_free=result["speed_options"]["packing"])
        assert (log.steps, log.final_loss, log.train_runtime_s, log.trainable_params) == \
            (result["throughput"]["steps"], result["final_loss"], result["train_runtime_s"],
             result["trainable_params"])
        assert log.non_padding_tokens == result["throughput"]["non_padding_tokens"]
        assert log.loss_curve == result["loss_curve"] and len(log.loss_curve) == log.steps


# -- the real CLIs --------------------------------------------------------------------------------------------
def _bench(*args, cwd=fw.REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "sftpack", "bench", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.integration
def test_suite_runs_real_clis_records_failures_and_never_overwrites(tmp_path, bench_session):
    """conftest's `bench_session`: `sftpack bench` on a mini cpu_tiny suite (lf_lora, swift_lora, lf_broken whose
    unknown key makes LLaMA-Factory exit non-zero, swift_on_gpu skipped here, the overhead of lf_lora). Then, on a
    copy of its results: a re-run adds a session and changes no stored result, and the report is rebuilt."""
    import shutil

    done = bench_session.done
    assert done.returncode == 1, done.stdout + done.stderr  # one run failed: recorded, exit status says so
    assert "lf_broken r1: failed" in done.stderr
    results, work, suite = tmp_path / "results", tmp_path / "work", bench_session.suite
    shutil.copytree(bench_session.results, results, symlinks=True)          # the shared session stays read-only
    shutil.copytree(bench_session.work / "models", work / "models", symlinks=True)   # the model the suite built
    (first,) = sessions(results / "mini")
    session, runs = load_session(first)
    by_name = {r["run"]: r for r in runs}
    assert [r["run"] for r in runs] == ["lf_lora", "swift_lora", "lf_broken", "swift_on_gpu"]

    broken = by_name["lf_broken"]
    assert broken["status"] == "failed" and broken["exit_code"] not in (0, None)
    assert "not_a_real_key" in broken["log_tail"] and broken["wall_s"] > 0

    skipped = by_name["swift_on_gpu"]
    assert skipped["status"] == "skipped" and "needs 1 GPU(s)" in skipped["status_detail"]

    for name, raw in (("lf_lora", "trainer_log.jsonl"), ("swift_lora", "logging.jsonl")):
        r = by_name[name]
        assert r["status"] == "ok" and r["exit_code"] == 0 and r["comparable"] is True
        assert (first / f"{name}-r1" / raw).is_file() and (first / f"{name}-r1" / "memory_timeline.csv").is_file()
        assert r["throughput"]["steps"] == 3 and len(r["loss_curve"]) == 3
        assert 0 < r["train_runtime_s"] < r["wall_s"]
        assert r["memory"]["peak_rss_largest_process_mib"] > 200 and r["memory"]["peak_pss_tree_mib"] > 100
        assert r["throughput"]["non_padding_tokens_per_s"] > 0 and r["throughput"]["samples_seen"] == 12
        assert 0 < r["trainable_params"] < r["total_params"]
        assert r["memory"]["peak_gpu_torch_reserved_mib"] is None  # CPU: the frameworks' GPU figures mean nothing
        assert r["environment"]["git"]["sha"] and r["model"]["random_weights"] is True
    assert by_name["swift_lora"]["memory"]["max_tree_processes"] >= 2  # `swift sft` launches its trainer
    assert by_name["lf_lora"]["throughput"]["tokens_counted"] == "non_padding"
    assert by_name["swift_lora"]["throughput"]["non_padding_tokens_source"].startswith("ESTIMATE")
    assert abs(by_name["lf_lora"]["trainable_params"] - by_name["swift_lora"]["trainable_params"]) <= 50

    overhead = session["overhead"]
    assert overhead["bare_wall_s"][0] > 0 and overhead["harness_wall_s"][0] > 0
    assert overhead["harness_process_peak_rss_mib"] < 50 and 0 <= overhead["sampler_cpu_pct_of_wall"] < 5
    assert (first / "overhead" / "bare-r1" / "stdout.log").is_file()

    before = {p: p.read_bytes() for p in first.rglob("result.json")}
    again = _bench(suite, "--results", results, "--work", work, "--only", "lf_broken", "--overhead-repeats", "0")
    assert again.returncode == 1
    assert len(sessions(results / "mini")) == 2, "a re-run adds a session"
    assert {p: p.read_bytes() for p in first.rglob("result.json")} == before, "a re-run changed stored results"

    built = _bench("report", "--results", results, "--suite", "mini", "--session", first.name)
    assert built.returncode == 0, built.stderr
    text = (results / "mini" / "report.md").read_text()
    assert "lf_broken r1: **failed**" in text and "swift_on_gpu r1: **skipped**" in text
    assert "| lora | wall time (s) |" in text and "Harness overhead" in text
    for name in report.PLOTS:
        assert (results / "mini" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
def test_every_suite_override_is_a_framework_argument():
    """GPU suites cannot run here: at least every key they pass must exist in the framework's arguments."""
    import dataclasses

    from llamafactory.hparams import (DataArguments, FinetuningArguments, GeneratingArguments, ModelArguments,
                                      TrainingArguments)
    from swift.arguments import SftArguments

    lf_keys = {f.name for cls in (ModelArguments, DataArguments, TrainingArguments, FinetuningArguments,
                                  GeneratingArguments) for f in dataclasses.fields(cls)}
    swift_keys = {f.name for f in dataclasses.fields(SftArguments)}
    for path in SHIPPED:
        suite = load_suite(path)
        for run in suite.runs:
            framework = fw.adapter(run.framework)
            keys = set(suite.overrides(run)) | set(framework.run_overrides(Path("m"), Path("o"))) \
                | set(framework.local_model_overrides(Path("m")))
            known = lf_keys if run.framework == "llamafactory" else swift_keys
            assert keys <= known, f"{path.name} {run.name}: {sorted(keys - known)} unknown to {run.framework}"


@pytest.mark.integration
def test_sigint_in_the_background_stops_the_run_in_flight_and_records_it(tmp_path):
    """A non-interactive shell starts background jobs with SIGINT ignored: the harness must still stop cleanly."""
    import signal
    import time

    results = tmp_path / "results"
    cmd = [PY, "-m", "sftpack", "bench", str(SUITES / "cpu_tiny.yaml"), "--results", str(results), "--work",
           str(tmp_path / "work"), "--only", "lf_full,swift_full", "--repeats", "1", "--overhead-repeats", "0",
           "--set", "defaults.llamafactory.max_steps=5000", "--set", "defaults.swift.max_steps=5000",
           "--set", "defaults.llamafactory.save_steps=5000", "--set", "defaults.swift.save_steps=5000"]
    proc = subprocess.Popen(cmd, cwd=fw.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(results.glob("cpu_tiny/*/lf_full-r1/stdout.log")):
        time.sleep(0.5)
    time.sleep(3)   # the framework is running
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    (session_dir,) = sessions(results / "cpu_tiny")
    session = read_json(session_dir / "session.json")
    assert session["interrupted"] and session["runs"][-1]["status"] == "interrupted"
    stored = read_json(session_dir / "lf_full-r1" / "result.json")
    assert stored["status"] == "interrupted" and not (session_dir / "swift_full-r1").exists()
