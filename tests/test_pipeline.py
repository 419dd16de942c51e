"""`sftpack run`: the pipeline schema, the stage runner (skip, --force, failure) and the default pipeline end to end.

    .venv/bin/python -m pytest tests/test_pipeline.py -m "not integration"   # schema + stage runner, seconds
    .venv/bin/python -m pytest tests/test_pipeline.py -m integration         # the default pipeline, fewer steps
"""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from sftpack import frameworks as fw
from sftpack.errors import SftpackError
from sftpack.pipeline.schema import Pipeline, PipelineError, load_pipeline
from sftpack.pipeline.stages import DONE, Stage, StageFailed, run_stages

PIPELINES = fw.REPO_ROOT / "benchmarks" / "pipelines"
DEFAULT = PIPELINES / "tiny_cpu.yaml"


def _default() -> dict:
    return yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))


# -- schema -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_loads(path):
    pipeline = load_pipeline(path)
    assert {t.framework for t in pipeline.train} == {"llamafactory", "swift"}
    assert path.read_text(encoding="utf-8").startswith("#"), "every YAML opens with its header comment"


@pytest.mark.parametrize("where, key", [(None, "trainer"), ("model", "shape"), ("data", "sorce"), ("eval", "limits"),
                                        ("train0", "override")])
def test_unknown_keys_are_errors(where, key):
    data = _default()
    target = data if where is None else data["train"][0] if where == "train0" else data[where]
    target[key] = 1
    with pytest.raises(PipelineError, match=rf"Unknown keys in .*\['{key}'\]\. Expected: "):
        Pipeline.from_dict(data)


def test_bad_values_name_the_fix():
    data = _default()
    data["train"][1]["framework"] = "axolotl"
    with pytest.raises(PipelineError, match="axolotl.*Expected one of"):
        Pipeline.from_dict(data)
    data = _default()
    data["train"][0]["config"] = "train_configs/nope.yaml"
    with pytest.raises(PipelineError, match="no such file"):
        Pipeline.from_dict(data)
    data = _default()
    data["train"][0]["overrides"]["output_dir"] = "x"
    with pytest.raises(PipelineError, match="set by the pipeline itself"):
        Pipeline.from_dict(data)
    data = _default()
    data["model"]["build_shape"] = "huge"
    with pytest.raises(PipelineError, match="huge"):
        Pipeline.from_dict(data)


def test_gpu_pipeline_refuses_without_gpu():
    from sftpack.pipeline.steps import check_gpu, gpu_count

    pipeline = load_pipeline(PIPELINES / "qwen2.5_1.5b_gpu.yaml")
    assert pipeline.requires_gpu
    if gpu_count():
        pytest.skip("this machine has a GPU: the refusal cannot be seen here")
    with pytest.raises(PipelineError, match="requires_gpu: true.*no CUDA GPU"):
        check_gpu(pipeline)


# -- the stage runner -------------------------------------------------------------------------------------
def _recording_stages(calls: list[str], fail: str | None = None) -> list[Stage]:
    def make(name):
        def run(ctx):
            calls.append(name)
            if name == fail:
                raise RuntimeError(f"{name} broke")
            previous = [ctx.outputs[s]["value"] for s in ctx.outputs]
            (ctx.dir(name) / "out.txt").write_text(name)
            return {"value": len(previous)}
        return Stage(name, run)
    return [make(n) for n in ("a", "b", "c")]


def test_rerun_skips_finished_stages(tmp_path):
    calls: list[str] = []
    first = run_stages(_recording_stages(calls), tmp_path)
    assert calls == ["a", "b", "c"] and [r["outputs"]["value"] for r in first.values()] == [0, 1, 2]
    second = run_stages(_recording_stages(calls), tmp_path)
    assert calls == ["a", "b", "c"], "nothing re-ran"
    assert all(r["skipped"] for r in second.values())
    assert second["c"]["outputs"] == first["c"]["outputs"]


def test_force_redoes_that_stage_and_later_ones(tmp_path):
    calls: list[str] = []
    run_stages(_recording_stages(calls), tmp_path)
    calls.clear()
    records = run_stages(_recording_stages(calls), tmp_path, force=["b"])
    assert calls == ["b", "c"]
    assert records["a"]["skipped"] and not records["b"]["skipped"]
    with pytest.raises(SftpackError, match="no such stage"):
        run_stages(_recording_stages(calls), tmp_path, force=["z"])


def test_failing_stage_stops_and_keeps_earlier_outputs(tmp_path):
    calls: list[str] = []
    with pytest.raises(StageFailed, match=r"stage 'b' failed: b broke\n  log: .*error.txt") as info:
        run_stages(_recording_stages(calls, fail="b"), tmp_path)
    assert calls == ["a", "b"]
    assert (tmp_path / "a" / DONE).is_file() and (tmp_path / "a" / "out.txt").is_file()
    assert not (tmp_path / "b" / DONE).exists() and "b broke" in info.value.log.read_text()
    calls.clear()
    run_stages(_recording_stages(calls), tmp_path)       # fixed: resumes at b
    assert calls == ["b", "c"]
    assert not (tmp_path / "b" / "error.txt").exists()


def test_failing_command_names_its_log(tmp_path):
    """A real subprocess that fails: the error carries the stage's log file, not a generic message."""
    from sftpack.pipeline.steps import _logged

    def run(ctx):
        _logged([sys.executable, "-c", "print('about to fail'); raise SystemExit(3)"], tmp_path, {},
                ctx.dir("x") / "x.log")
        return {}

    with pytest.raises(StageFailed) as info:
        run_stages([Stage("x", run)], tmp_path)
    assert info.value.log == tmp_path / "x" / "x.log"
    assert "about to fail" in info.value.log.read_text() and "exited 3" in str(info.value)


# -- the default pipeline, end to end ---------------------------------------------------------------------
@pytest.mark.integration
def test_default_pipeline_end_to_end(tmp_path):
    from sftpack.pipeline.cli import run_pipeline

    data = _default()
    steps = 20
    for train in data["train"]:
        train["overrides"].update(max_steps=steps, logging_steps=5)
    data["eval"].update(limit=3, gen_kwargs="max_gen_toks=32")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    out = tmp_path / "out"
    records = run_pipeline(path, out)
    report = out / "report"
    for name in ("report.md", "summary.json", "loss.png", "eval.png", "time_memory.png"):
        assert (report / name).stat().st_size > 0, name
    summary = json.loads((report / "summary.json").read_text())
    eval_report = json.loads((out / "eval" / "eval.json").read_text())
    text = (report / "report.md").read_text()
    for framework in ("llamafactory", "swift"):
        metrics = json.loads((out / f"train_{framework}" / "metrics.json").read_text())
        assert summary["train"][framework] == metrics
        assert metrics["steps"] == steps and metrics["loss_curve"][-1][0] == steps
        assert metrics["final_loss"] == metrics["loss_curve"][-1][1] < metrics["first_loss"]
        assert metrics["wall_s"] > metrics["train_runtime_s"] > 0
        assert metrics["peak_rss_largest_process_mib"] > 100 and metrics["trainable_percent"] == pytest.approx(100)
        assert f"{metrics['final_loss']:.3f}" in text
    for row in eval_report["rows"]:
        for label, cell in row["values"].items():
            key = f"{row['task']} {row['filter']} {row['metric']}"
            if row["metric"] in ("exact_match", "format_rate"):
                assert summary["eval"]["values"][label][key] == cell["value"]
    assert set(summary["eval"]["values"]) == {"base", "llamafactory", "swift"}
    assert any("format_rate" in k for k in summary["eval"]["values"]["base"])
    assert set(summary["stages"]) == {"model", "data", "train_llamafactory", "train_swift", "eval"}
    assert summary["stages"]["train_swift"]["elapsed_s"] == records["train_swift"]["elapsed_s"]
    assert "Random weights" in text and "format_rate" in text
    # a second run skips everything; --force report rebuilds only the report from the stored outputs
    again = run_pipeline(path, out, force=["report"])
    assert [n for n, r in again.items() if not r["skipped"]] == ["report"]
    assert json.loads((report / "summary.json").read_text())["train"] == summary["train"]
