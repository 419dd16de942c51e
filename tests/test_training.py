"""The training core (sftpack.training) and the framework adapters (sftpack.frameworks): one stack for all.

    .venv/bin/python -m pytest tests/test_training.py -m "not integration"    # adapters, no-branch rule (~2 s)
    .venv/bin/python -m pytest tests/test_training.py                         # + bench vs pipeline, real CLIs

`sftpack bench` and `sftpack run` train through the same `run_training`; these tests check that the two
produce result.json files with the same keys and the same measurement fields, and that no module outside
sftpack/frameworks/ branches on a framework's name.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from sftpack import frameworks as fw
from sftpack.bench.results import read_json
from sftpack.training import TrainJob, environment, new_result

PACKAGE = fw.REPO_ROOT / "plugins" / "sftpack"
NAMES = set(fw.ADAPTERS)


def _branches_on_a_name(path: Path) -> list[str]:
    """`x == "swift"`, `x != "llamafactory"`, `x in ("swift", ...)` in a comparison: a framework branch."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                values = [operand] + (list(operand.elts) if isinstance(operand, (ast.Tuple, ast.List, ast.Set))
                                      else [])
                if any(isinstance(v, ast.Constant) and v.value in NAMES for v in values):
                    found.append(f"{path.relative_to(fw.REPO_ROOT)}:{node.lineno}")
    return found


def test_no_framework_branch_outside_the_adapters():
    files = [p for p in PACKAGE.rglob("*.py") if "frameworks" not in p.relative_to(PACKAGE).parts]
    branches = [where for path in files for where in _branches_on_a_name(path)]
    assert branches == [], f"framework-specific branches belong in sftpack/frameworks/: {branches}"


def test_adapters_build_commands_env_and_local_model_flags(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    lf, swift = fw.adapter("llamafactory"), fw.adapter("swift")
    assert lf.command(fw.LF_LORA_CONFIG, {"max_steps": 2, "bf16": False})[-2:] == ["max_steps=2", "bf16=false"]
    cmd = swift.command(fw.SWIFT_LORA_CONFIG, {"target_modules": ["q_proj", "v_proj"]})
    assert cmd[-3:] == ["--target_modules", "q_proj", "v_proj"]
    assert swift.local_model_overrides(model) == {"check_model": False, "model_type": "qwen2"}
    assert lf.local_model_overrides(model) == {}
    assert lf.env(1) == {"RECORD_VRAM": "1"} and lf.env(2)["FORCE_TORCHRUN"] == "1" and swift.env(2) == {}
    assert set(lf.run_overrides(model, tmp_path)) == set(lf.harness_keys)
    assert set(swift.run_overrides(model, tmp_path)) == set(swift.harness_keys)
    with pytest.raises(Exception, match="unknown"):
        fw.adapter("axolotl")


def test_a_job_merges_local_flags_spec_and_owned_keys_in_that_order(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    job = TrainJob(framework="swift", config=fw.SWIFT_LORA_CONFIG, model=model, output_dir=tmp_path / "o",
                   cwd=tmp_path, record_dir=tmp_path / "r", cache=tmp_path / "c",
                   overrides={"check_model": True, "output_dir": "ignored", "max_steps": 3}, gpus=0)
    result = new_result(job)
    assert result.overrides["check_model"] is True          # the spec wins over the adapter's local flags
    assert result.overrides["output_dir"] == str(tmp_path / "o")   # the core's own keys win over the spec
    assert result.overrides["model_type"] == "qwen2" and result.overrides["max_steps"] == 3
    env, extra = environment(job)
    assert extra["CUDA_VISIBLE_DEVICES"] == "" and env["HF_HUB_OFFLINE"] == "1"
    assert env["HF_HOME"].startswith(str((tmp_path / "c").resolve()))


# -- one schema through bench and pipeline ---------------------------------------------------------------------
def _keys(data, prefix=""):
    out = set()
    for key, value in data.items():
        out.add(prefix + key)
        if isinstance(value, dict) and key not in ("environment", "overrides", "env_overrides", "model", "dataset",
                                                   "fairness_differences", "speed_options", "harness"):
            out |= _keys(value, f"{prefix}{key}.")
    return out


MEASURED = ("wall_s", "train_runtime_s", "cpu_user_s", "load_avg_1m_before", "memory.peak_rss_largest_process_mib",
            "memory.peak_pss_tree_mib", "throughput.steps", "throughput.non_padding_tokens_per_s", "final_loss",
            "trainable_params")


def _value(data, path):
    for key in path.split("."):
        data = data[key]
    return data


@pytest.mark.integration
def test_bench_and_pipeline_write_the_same_result_schema(bench_session, default_pipeline_run):
    """lf_lora and swift_lora (3 steps) through `sftpack bench` (conftest's `bench_session`, shared with test_bench)
    and the default pipeline's two trainings through `sftpack run` (conftest's `default_pipeline_run`, shared with
    test_pipeline; its eval and report stages read these result.json): the same keys and measurements."""
    assert bench_session.first is not None, bench_session.done.stdout[-3000:] + bench_session.done.stderr[-3000:]
    bench = {name: read_json(bench_session.first / f"{name}-r1" / "result.json") for name in ("lf_lora", "swift_lora")}
    assert list(default_pipeline_run.records)[:4] == ["model", "data", "train_llamafactory", "train_swift"]
    out = default_pipeline_run.out
    piped = {f: read_json(out / f"train_{f}" / "result.json") for f in ("llamafactory", "swift")}

    assert _keys(bench["lf_lora"]) == _keys(piped["llamafactory"])
    assert _keys(bench["swift_lora"]) == _keys(piped["swift"])
    for result in [*bench.values(), *piped.values()]:
        assert result["status"] == "ok" and result["schema_version"] == 2
        for path in MEASURED:
            assert _value(result, path) is not None, path
    assert piped["swift"]["trained_model"].endswith(f"checkpoint-{default_pipeline_run.steps}")


def test_comparisons_say_when_conditions_differ():
    from sftpack.bench.compare import not_comparable

    def result(before, after, counted):
        return {"load_avg_1m_before": before, "load_avg_1m_after": after, "throughput": {"tokens_counted": counted}}

    assert not_comparable(result(0.4, 1.1, "non_padding"), result(0.5, 1.2, "non_padding"), cores=2) == []
    # the default pipeline's measured case: LLaMA-Factory at load 3.65, Swift at 2.83, on 2 cores
    reasons = not_comparable(result(3.1, 3.65, "non_padding"), result(2.5, 2.83, "all_including_padding"), 2)
    assert "oversubscribed" in reasons[0] and "3.65 vs 2.83" in reasons[0]
    assert "tokens/s count different things" in reasons[1]
    assert "load differed" in not_comparable(result(0.1, 0.2, None), result(1.5, 1.6, None), 2)[0]


def test_a_job_pins_and_records_what_makes_it_repeatable(tmp_path):
    job = TrainJob(framework="llamafactory", config=fw.LF_LORA_CONFIG, model=tmp_path, output_dir=tmp_path / "o",
                   cwd=tmp_path, record_dir=tmp_path / "r", cache=tmp_path / "c", overrides={"max_steps": 3},
                   base_env={"PATH": "/usr/bin"})
    result = new_result(job)
    env, _ = environment(job)
    assert result.overrides["data_seed"] == 42 == result.repeatability["seed"] == result.repeatability["data_seed"]
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == result.repeatability["threads"] != ""
    job.overrides = {"seed": 7, "data_seed": 3}                 # a spec's own seeds win
    assert (new_result(job).repeatability["seed"], new_result(job).repeatability["data_seed"]) == (7, 3)
    job.base_env = {"OMP_NUM_THREADS": "1"}
    assert environment(job)[0]["OMP_NUM_THREADS"] == "1"       # the caller's thread count is kept, and recorded
