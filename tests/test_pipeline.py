"""`sftpack run`: the pipeline schema, the stage runner (skip, --force, failure), offline fallbacks, the GPU
pipelines' settings, and the default pipeline end to end.

    .venv/bin/python -m pytest tests/test_pipeline.py -m "not integration"   # schema, runner, offline: seconds
    .venv/bin/python -m pytest tests/test_pipeline.py -m integration         # the default pipeline, fewer steps
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
import yaml
from sftpack import frameworks as fw
from sftpack.errors import SftpackError
from sftpack.pipeline.offline import HUB_MODULES, OFFLINE_VARS, go_offline, offline_reason
from sftpack.pipeline.schema import Pipeline, PipelineError, load_pipeline
from sftpack.pipeline.stages import DONE, Context, Stage, StageFailed, run_stages

PIPELINES = fw.REPO_ROOT / "benchmarks" / "pipelines"
DEFAULT = PIPELINES / "tiny_cpu.yaml"
GPU = PIPELINES / "qwen2.5_1.5b_gpu.yaml"
GPU_SMOKE = PIPELINES / "qwen2.5_1.5b_gpu_smoke.yaml"


def _default() -> dict:
    return yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))


# -- schema -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_loads(path):
    pipeline = load_pipeline(path)
    assert {t.framework for t in pipeline.train} == {"llamafactory", "swift"}
    assert path.read_text(encoding="utf-8").startswith("#"), "every YAML opens with its header comment"


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_trains_both_frameworks_at_parity(path):
    """Config + overrides, normalised (sftpack.parity): the two trainings of a shipped pipeline differ in nothing
    that matters to the comparison -- hyper-parameters, lengths, dtype, packing, the batch sampler (LF's
    train_sampling_strategy vs Swift's group_by_length), seed, data, system prompt."""
    from sftpack.parity import differences, normalise_lf, normalise_swift
    from sftpack.training import merged_config

    pipeline = load_pipeline(path)
    lf_stages = [t for t in pipeline.train if t.framework == "llamafactory"]
    swift_stages = [t for t in pipeline.train if t.framework == "swift"]
    assert len(lf_stages) == len(swift_stages)
    for lf_spec, swift_spec in zip(lf_stages, swift_stages):   # stage k of one framework vs stage k of the other
        assert lf_spec.kind == swift_spec.kind and lf_spec.adapter == swift_spec.adapter
        lf_cfg = {**merged_config(lf_spec.config_path, lf_spec.overrides), "stage": lf_spec.kind}
        swift_cfg = merged_config(swift_spec.config_path, swift_spec.overrides)
        assert differences(normalise_lf(lf_cfg), normalise_swift(swift_cfg)) == {}, (lf_spec.label, swift_spec.label)
    by = {t.framework: merged_config(t.config_path, t.overrides) for t in pipeline.final_trains()}
    lf, swift = normalise_lf(by["llamafactory"]), normalise_swift(by["swift"])
    if path == DEFAULT:
        assert lf["sampler"] == swift["sampler"] == "group_by_length"
        ungrouped = normalise_swift({**by["swift"], "group_by_length": False})
        assert differences(lf, ungrouped) == {"sampler": ("group_by_length", "random")}


@pytest.mark.parametrize("where, key", [(None, "trainer"), ("model", "shape"), ("data", "sorce"), ("eval", "limits"),
                                        ("train0", "override")])
def test_unknown_keys_are_errors(where, key):
    data = _default()
    target = data if where is None else data["train"][0] if where == "train0" else data[where]
    target[key] = 1
    with pytest.raises(PipelineError, match=rf"{key}: unknown key.*; expected one of "):
        Pipeline.from_dict(data)


def test_bad_values_name_the_fix():
    data = _default()
    data["train"][1]["framework"] = "axolotl"
    with pytest.raises(PipelineError, match="axolotl.*expected one of"):
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


def _tokenizer_folder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer_config.json", "tokenizer.json"):
        (folder / name).write_text("{}", encoding="utf-8")
    return folder


def test_model_tokenizer_is_checked_at_load_and_errors_name_key_and_path(tmp_path):
    data = _default()
    data["model"]["tokenizer"] = "runs/no-such-tokenizer-folder"      # relative: resolved against the repo root
    resolved = fw.REPO_ROOT / "runs" / "no-such-tokenizer-folder"
    with pytest.raises(PipelineError, match=r"model\.tokenizer: no such folder \(got 'runs/no-such-tokenizer-folder'") as info:
        Pipeline.from_dict(data)
    assert f"resolved: {resolved}" in str(info.value)
    (tmp_path / "empty").mkdir()
    data["model"]["tokenizer"] = str(tmp_path / "empty")
    with pytest.raises(PipelineError, match=r"model\.tokenizer: .*empty holds no tokenizer_config\.json / tokenizer"):
        Pipeline.from_dict(data)
    data["model"].update(tokenizer=str(_tokenizer_folder(tmp_path / "tok")), build_shape=None, path="some/model")
    with pytest.raises(PipelineError, match=r"model\.tokenizer: used only when the model is built"):
        Pipeline.from_dict(data)
    data["model"].update(build_shape="tiny")
    assert Pipeline.from_dict(data).model.tokenizer_path == tmp_path / "tok"
    data["model"].update(tokenizer="runs/no-such-tokenizer-folder", tokenizer_required=False)
    assert Pipeline.from_dict(data).model.tokenizer_path is None          # absent but optional: the stage falls back


def _smoke_settings(pipeline: Pipeline, framework: str) -> dict:
    spec = next(t for t in pipeline.train if t.framework == framework)
    config = yaml.safe_load(spec.config_path.read_text(encoding="utf-8"))
    return {**config, **spec.overrides}


@pytest.mark.parametrize("path", [GPU, GPU_SMOKE], ids=lambda p: p.name)
def test_gpu_pipelines_validate_with_and_without_the_kit_tokenizer(path, tmp_path):
    pipeline = load_pipeline(path)
    assert pipeline.requires_gpu and pipeline.model.build_shape == "qwen2.5-1.5b"
    assert pipeline.model.tokenizer == "../gpu/kit/qwen2.5-tokenizer" and not pipeline.model.tokenizer_required
    kit = fw.REPO_ROOT / "benchmarks" / "gpu" / "kit" / "qwen2.5-tokenizer"   # relative to the pipeline's folder
    assert pipeline.model.resolved_tokenizer().startswith(str(kit))
    assert pipeline.eval.device == "cuda"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["model"].update(tokenizer=str(_tokenizer_folder(tmp_path / "qwen2.5-tokenizer")), tokenizer_required=True)
    assert Pipeline.from_dict(data).model.tokenizer_path == tmp_path / "qwen2.5-tokenizer"


def test_gpu_smoke_is_small():
    """60 steps of effective batch 16 per framework, full-parameter, 16 questions with short generations, no hub."""
    pipeline = load_pipeline(GPU_SMOKE)
    assert pipeline.model.path is None and not pipeline.model.download
    assert pipeline.data.source == "sample"
    for framework in ("llamafactory", "swift"):
        settings = _smoke_settings(pipeline, framework)
        assert settings["max_steps"] == 60
        assert settings["per_device_train_batch_size"] * settings["gradient_accumulation_steps"] == 16
        assert settings.get("finetuning_type", settings.get("tuner_type")) == "full"
    assert pipeline.eval.limit == 16 and pipeline.eval.gen_kwargs == "max_gen_toks=256"


def _job(pipeline, spec, tmp_path, model):
    from sftpack.pipeline.steps import train_job

    ctx = Context(out=tmp_path, outputs={"model": {"path": str(model)}, "data": {"workdir": str(tmp_path)}},
                  started=0.0)
    return train_job(pipeline, spec, ctx)


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.yaml")), ids=lambda p: p.name)
def test_swift_gets_model_type_and_no_model_check_on_a_built_model(path, tmp_path):
    """Every Swift command the pipeline builds for a local Qwen2 folder (a built model in particular) pins
    model_type qwen2 (else "Multiple possible types found: ['qwen2', 'qwen2_gte']") and check_model false."""
    from sftpack.training import new_result

    model = tmp_path / "weights"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2"}), encoding="utf-8")
    pipeline = load_pipeline(path)
    spec = next(t for t in pipeline.train if t.framework == "swift")
    pinned = ("model_type", "check_model")
    for overrides in (spec.overrides, {k: v for k, v in spec.overrides.items() if k not in pinned}):
        spec.overrides = overrides
        result = new_result(_job(pipeline, spec, tmp_path, model))
        cmd, used = result.command, result.overrides
        assert used["model_type"] == "qwen2" and used["check_model"] is False
        assert cmd[cmd.index("--model_type") + 1] == "qwen2" and cmd[cmd.index("--check_model") + 1] == "false"


def test_gpu_training_env_records_vram_and_arms_nvml(tmp_path):
    from sftpack.training import arm_nvml, environment

    gpu = load_pipeline(GPU_SMOKE)
    for spec in gpu.train:
        job = _job(gpu, spec, tmp_path, tmp_path)
        env, _ = environment(job)
        assert job.gpus == 1 and env["HF_HUB_OFFLINE"] == "1"
        assert env.get("RECORD_VRAM") == ("1" if spec.framework == "llamafactory" else None)   # Swift logs its own
        assert env["CUDA_VISIBLE_DEVICES"] == os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
        why = arm_nvml(job)   # armed when a GPU is there; here, without one, NVML says why not
        assert (job.nvml is not None) or ("NVML" in why or "nvidia-ml-py" in why)
        if job.nvml is not None:
            job.nvml.close()
    cpu = load_pipeline(DEFAULT)
    job = _job(cpu, cpu.train[0], tmp_path, tmp_path)
    env, _ = environment(job)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and arm_nvml(job) is None and job.nvml is None
    assert env["RECORD_VRAM"] == "1"   # LLaMA-Factory's adapter sets it always: its figures are null on a CPU


# -- offline: no hub call, the declared fallbacks at once --------------------------------------------------
def test_offline_reason_and_go_offline():
    assert offline_reason({}) is None and offline_reason({"HF_HUB_OFFLINE": "0"}) is None
    assert offline_reason({"TRANSFORMERS_OFFLINE": "1"}) == "offline: TRANSFORMERS_OFFLINE=1"
    assert offline_reason({"HF_DATASETS_OFFLINE": "true", "HF_HUB_OFFLINE": "1"}) == "offline: HF_HUB_OFFLINE=1"
    env = {"HF_DATASETS_OFFLINE": "yes"}
    assert go_offline(environ=env) == "offline: HF_DATASETS_OFFLINE=yes"
    assert env == {"HF_DATASETS_OFFLINE": "yes", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env = {}
    assert go_offline(flag=True, environ=env) == "offline: HF_HUB_OFFLINE=1"    # sftpack run --offline
    assert env == dict.fromkeys(OFFLINE_VARS, "1")
    env = {"HF_HUB_OFFLINE": "0"}
    assert go_offline(environ=env) is None and env == {"HF_HUB_OFFLINE": "0"}


@pytest.fixture
def hub_offline(monkeypatch):
    """Only HF_HUB_OFFLINE=1 set (restored after the test), and every in-process hub call recorded."""
    from sftpack import sources
    from sftpack.pipeline import steps

    for var in OFFLINE_VARS:
        monkeypatch.setenv(var, "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls: list[str] = []
    monkeypatch.setattr(steps, "_download", lambda repo_id, *a: calls.append(f"download {repo_id}") or (None, "x"))
    monkeypatch.setattr(sources, "iter_hub", lambda source, *a: calls.append(f"hub {source}") or iter(()))
    for module in HUB_MODULES:
        monkeypatch.setitem(sys.modules, module, None)    # an import of a hub library in-process fails
    return calls


def test_offline_model_and_data_stages_take_the_fallbacks_without_a_hub_call(tmp_path, hub_offline, capsys):
    from sftpack.pipeline.steps import stages
    from sftpack.samples import sample_dir

    pipeline = Pipeline.from_dict({
        "name": "offline", "model": {"path": "sftpack-tests/no-such-model", "download": True, "build_shape": "tiny"},
        "data": {**_default()["data"], "source": "openai/gsm8k", "fallback_source": "sample"},
        "train": _default()["train"]})
    assert go_offline() == "offline: HF_HUB_OFFLINE=1"
    started = time.monotonic()
    records = run_stages(stages(pipeline)[:2], tmp_path)
    with capsys.disabled():   # seen with -s; the tiny model's build is most of it, the hubs none of it
        print(f"\noffline model+data stages: {time.monotonic() - started:.1f} s "
              f"(model {records['model']['elapsed_s']} s, data {records['data']['elapsed_s']} s)")
    assert hub_offline == [], "no hub call"
    model = json.loads((tmp_path / "model" / DONE).read_text())["outputs"]
    data = json.loads((tmp_path / "data" / DONE).read_text())["outputs"]
    assert model["random_weights"] and model["fallback_reason"].startswith("offline: HF_HUB_OFFLINE=1")
    assert "offline: HF_HUB_OFFLINE=1" in model["source"] and (tmp_path / "model" / "weights" / "config.json").is_file()
    assert data["fallback_reason"].startswith("offline: HF_HUB_OFFLINE=1")
    assert data["resolved_source"] == str(sample_dir("gsm8k")) and data["splits"]["gsm8k_train"]["rows"] == 1000
    out = capsys.readouterr().out
    assert (out.index("model: FALLBACK: 'sftpack-tests/no-such-model': offline: HF_HUB_OFFLINE=1")
            < out.index("model done"))
    assert out.index("data: FALLBACK: offline: HF_HUB_OFFLINE=1") < out.index("data done")


def test_offline_data_without_a_fallback_names_the_fix(tmp_path, hub_offline):
    from sftpack.pipeline.steps import data_stage

    pipeline = Pipeline.from_dict({**_default(), "data": {**_default()["data"], "source": "openai/gsm8k"}})
    with pytest.raises(StageFailed, match=r"'openai/gsm8k' is a hub id and this run is offline: HF_HUB_OFFLINE=1"):
        run_stages([data_stage(pipeline)], tmp_path)
    assert hub_offline == []


def test_built_model_gets_the_tokenizer_or_says_it_fell_back(tmp_path, monkeypatch, capsys):
    from sftpack.pipeline import steps

    commands: list[list[str]] = []
    monkeypatch.setattr(steps, "_logged", lambda cmd, *a: commands.append(cmd))
    data = _default()
    data["model"].update(tokenizer=str(_tokenizer_folder(tmp_path / "tok")))
    run_stages([steps.model_stage(Pipeline.from_dict(data))], tmp_path / "a")
    assert commands[-1][-2:] == ["--tokenizer", str(tmp_path / "tok")]
    model = json.loads((tmp_path / "a" / "model" / DONE).read_text())["outputs"]
    assert model["tokenizer"] == str(tmp_path / "tok") and model["tokenizer_fallback_reason"] is None
    data["model"].update(tokenizer=str(tmp_path / "absent"), tokenizer_required=False)
    run_stages([steps.model_stage(Pipeline.from_dict(data))], tmp_path / "b")
    assert "--tokenizer" not in commands[-1]
    model = json.loads((tmp_path / "b" / "model" / DONE).read_text())["outputs"]
    assert model["tokenizer"] is None and str(tmp_path / "absent") in model["tokenizer_fallback_reason"]
    assert "model: FALLBACK: model.tokenizer" in capsys.readouterr().out


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


def _group_stages(calls: list[str], barrier, fail: str | None = None) -> list[Stage]:
    """a -> (t1, t2 of group "train", each reading only a) -> c; t1 and t2 meet at `barrier` when it is given."""
    def make(name, group=None, reads=None):
        def run(ctx):
            if barrier is not None and group:
                barrier.wait()    # both must be running at once to pass (raises BrokenBarrierError on timeout)
            calls.append(name)
            if name == fail:
                raise RuntimeError(f"{name} broke")
            return {"value": name}
        return Stage(name, run, group=group, reads=reads)
    return [make("a"), make("t1", "train", ("a",)), make("t2", "train", ("a",)), make("c")]


def test_stages_of_a_group_run_at_the_same_time_with_parallel(tmp_path):
    """parallel: 2 runs the two train-group stages at once (they meet at a barrier); 1 runs them one by one."""
    import threading

    calls: list[str] = []
    records = run_stages(_group_stages(calls, threading.Barrier(2, timeout=20)), tmp_path / "p", parallel=2)
    assert calls[0] == "a" and sorted(calls[1:3]) == ["t1", "t2"] and calls[3] == "c"
    assert all(not r["skipped"] for r in records.values())
    calls.clear()
    run_stages(_group_stages(calls, None), tmp_path / "s", parallel=1)
    assert calls == ["a", "t1", "t2", "c"]
    with pytest.raises(StageFailed):   # one at a time, the barrier of two can never be passed
        run_stages(_group_stages([], threading.Barrier(2, timeout=0.5)), tmp_path / "b", parallel=1)


def test_a_failing_parallel_stage_keeps_the_others_outputs(tmp_path):
    """When one of two stages running together fails, the other finishes and keeps its done.json; a re-run redoes
    only the failed one (and the stages after it)."""
    calls: list[str] = []
    with pytest.raises(StageFailed, match="stage 't1' failed: t1 broke"):
        run_stages(_group_stages(calls, None, fail="t1"), tmp_path, parallel=2)
    assert sorted(calls) == ["a", "t1", "t2"]
    assert (tmp_path / "t2" / DONE).is_file() and not (tmp_path / "t1" / DONE).exists()
    calls.clear()
    run_stages(_group_stages(calls, None), tmp_path, parallel=2)
    assert calls == ["t1", "c"]


def test_progress_line_gives_each_running_stage_and_the_run_eta(tmp_path):
    """The progress line: each running stage's own progress; a stage's ETA from its pace since its first progress
    (its start-up is not extrapolated); the run's ETA adds the pending stages' times in the previous run."""
    from sftpack.pipeline.stages import Progress, Ticker

    fraction = {"t1": 0.1}
    stages = [Stage("t1", lambda ctx: {}, group="train", progress=lambda ctx: Progress(fraction["t1"], "60/600 steps")),
              Stage("eval", lambda ctx: {})]
    ctx = Context(out=tmp_path, outputs={}, started=time.monotonic() - 100)
    ticker = Ticker(stages, ctx, previous={"eval": 30.0}, records={})
    ticker.begin("t1")
    ticker.running["t1"] = time.monotonic() - 50
    first = ticker.line()
    assert "t1 60/600 steps (50 s so far)" in first and "run ETA: after the first progress" in first
    ticker.first["t1"] = (time.monotonic() - 10, 0.1)    # 10 s ago it was at 10 %; now at 20 %: 80 s to go
    fraction["t1"] = 0.2
    line = ticker.line()
    assert "(ETA 1 min 20 s)" in line and "run ETA ~1 min 50 s" in line, line    # + eval's 30 s
    ticker.previous["eval"] = None
    assert "run ETA >= 1 min 20 s (eval: no earlier time to go by)" in ticker.line()
    ticker.end("t1")
    assert ticker.line() is None


@pytest.mark.integration
def test_sigterm_while_both_trainings_run_at_once_ends_both_and_exits(tmp_path, tiny_model):
    """With `parallel: 2` the main thread waits on two stage threads, each driving a framework: SIGTERM must end
    both frameworks' process trees (not wait for them: it once hung until they finished) and exit 143, with no
    done.json for either training and the finished stages kept."""
    from test_nothing_lost_cli import assert_interrupted, matching, pipeline_file, start, stop, wait_for

    pipe = pipeline_file(tmp_path, {"path": str(tiny_model), "seed": 0}, max_steps=100000, save_steps=100000)
    out = tmp_path / "project"
    first = start("run", pipe, "--out", out, cwd=tmp_path)
    try:
        wait_for(lambda: matching(first.pid, "llamafactory-cli") and matching(first.pid, "swift"), 300,
                 "both frameworks to start", first)
        time.sleep(3)
        started = time.monotonic()
        err, left = stop(first, "SIGTERM")
        assert time.monotonic() - started < 30, "SIGTERM must not wait for the trainings to finish"
    finally:
        if first.poll() is None:
            first.kill()
    assert_interrupted(first, err, "SIGTERM", left)
    assert (out / "data" / DONE).is_file()
    assert not (out / "train_llamafactory" / DONE).exists() and not (out / "train_swift" / DONE).exists()


def test_report_says_whether_the_trainings_really_ran_together():
    """With `parallel: 2`, a re-run that retrained one framework alone (the other reused) must not be reported as
    two trainings at the same time: the report reads the stages' own done.json times."""
    from sftpack.pipeline.report import _parallel_note, overlapped

    together = {"train_a": {"finished_utc": "2026-12-01T08:03:00Z", "elapsed_s": 180.0},
                "train_b": {"finished_utc": "2026-12-01T08:02:50Z", "elapsed_s": 170.0}}
    alone = {**together, "train_b": {"finished_utc": "2026-12-01T07:00:00Z", "elapsed_s": 170.0}}
    assert overlapped(together, ["train_a", "train_b"]) and not overlapped(alone, ["train_a", "train_b"])
    summary = {"parallel": 2, "threads": {"a": "1", "b": "1"}, "run_wall_s": 190.0}
    assert "ran at the same time" in _parallel_note({**summary, "trained_together": True})[0]
    assert "not at the same time" in _parallel_note({**summary, "trained_together": False})[0]
    assert _parallel_note({**summary, "parallel": 1}) == []


# -- the default pipeline, end to end ---------------------------------------------------------------------
@pytest.mark.integration
def test_default_pipeline_end_to_end(default_pipeline_run, tmp_path):
    """conftest's `default_pipeline_run`: the shipped default with fewer steps and questions, nothing else changed."""
    import shutil

    from sftpack.pipeline.cli import run_pipeline

    path, out, records, printed = (default_pipeline_run.path, default_pipeline_run.out, default_pipeline_run.records,
                                   default_pipeline_run.printed)
    steps = default_pipeline_run.steps
    report = out / "report"
    for name in ("report.md", "summary.json", "loss.png", "eval.png", "time_memory.png"):
        assert (report / name).stat().st_size > 0, name
    summary = json.loads((report / "summary.json").read_text())
    eval_report = json.loads((out / "eval" / "eval.json").read_text())
    text = (report / "report.md").read_text()
    for framework in ("llamafactory", "swift"):
        result = json.loads((out / f"train_{framework}" / "result.json").read_text())
        metrics = summary["train"][framework]
        assert result["final_loss"] == metrics["final_loss"] and result["wall_s"] == metrics["wall_s"]
        assert metrics["cpu_s"] > 0 and metrics["tokens_per_cpu_s"] > 0
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
    # the shipped default trains both frameworks at once (parallel: 2), and says so wherever times are shown
    assert summary["parallel"] == 2 and summary["trained_together"] and "The train stages ran at the same time" in text
    assert summary["run_wall_s"] < summary["stages_wall_s"]
    # the one-screen summary at the end: time per stage, format rate base -> each framework, where the report is
    end = printed[printed.index("sftpack run: tiny_cpu finished in"):]
    assert "train_llamafactory" in end and "format_rate: base 0.0 % -> llamafactory" in end
    assert f"report: {report / 'report.md'}" in end
    assert eval_report["settings"]["parallel"] == 3    # eval.parallel: the three lm-eval runs at once
    assert {run["parallel"] for model in eval_report["models"] for run in model["runs"]} == {3}
    # a second run skips everything; --force report rebuilds only the report from the stored outputs (on a copy)
    copy = tmp_path / "out"
    shutil.copytree(out, copy, symlinks=True)
    again = run_pipeline(path, copy, force=["report"])
    assert [n for n, r in again.items() if not r["skipped"]] == ["report"]
    assert json.loads((copy / "report" / "summary.json").read_text())["train"] == summary["train"]


# -- stages keyed by their resolved spec (issue 10 part 4) ------------------------------------------------
def _small_pipeline(folder, max_steps=40, limit=3, **model):
    """The default pipeline with fewer steps and questions, written to `folder`/pipeline.yaml and loaded."""
    data = _default()
    for train in data["train"]:
        train["overrides"].update(max_steps=max_steps, logging_steps=5)
    data["eval"].update(limit=limit)
    data["model"].update(model)
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_pipeline(path)


def _faked(pipeline, calls: list[str]) -> list[Stage]:
    """The pipeline's real stages (names, inputs, reads) with runs that only record that they ran."""
    import dataclasses

    from sftpack.pipeline.steps import stages

    def fake(name):
        def run(ctx):
            calls.append(name)
            return {"ran": name}
        return run
    return [dataclasses.replace(s, run=fake(s.name)) for s in stages(pipeline)]


def _ran(pipeline, out, capsys) -> tuple[list[str], str]:
    calls: list[str] = []
    run_stages(_faked(pipeline, calls), out)
    return calls, capsys.readouterr().out


def test_changed_spec_reruns_that_stage_and_its_readers_unchanged_is_skipped(tmp_path, capsys):
    from sftpack.pipeline.stages import preview

    out = tmp_path / "out"
    everything = ["model", "data", "train_llamafactory", "train_swift", "eval", "report"]
    assert _ran(_small_pipeline(tmp_path), out, capsys)[0] == everything
    calls, text = _ran(_small_pipeline(tmp_path), out, capsys)
    assert calls == [] and text.count("unchanged, skipped") == 6
    done = json.loads((out / "train_llamafactory" / DONE).read_text())
    assert done["inputs"]["overrides"]["max_steps"] == 40 and set(done["reads"]) == {"model", "data"}
    assert len(done["key"]) == 64 and done["inputs"]["versions"]["llamafactory"]

    calls, text = _ran(_small_pipeline(tmp_path, max_steps=60), out, capsys)      # both trainings' max_steps
    assert calls == ["train_llamafactory", "train_swift", "eval", "report"]
    assert ("train_llamafactory: spec changed (overrides.max_steps: 40 -> 60), re-running it and the stages after "
            "it that read it (eval, report)") in text
    assert "eval: train_llamafactory, train_swift changed, re-running it" in text
    assert text.count("unchanged, skipped") == 2                                   # model, data

    changed = _small_pipeline(tmp_path, max_steps=60, limit=5)
    assert preview(_faked(changed, []), out) == {"model": None, "data": None, "train_llamafactory": None,
                                                 "train_swift": None, "eval": "spec changed (limit: 3 -> 5)",
                                                 "report": "eval changed"}           # --check can say this
    calls, text = _ran(changed, out, capsys)
    assert calls == ["eval", "report"] and "eval: spec changed (limit: 3 -> 5)" in text
    calls, _ = _ran(_small_pipeline(tmp_path, max_steps=60, limit=5, seed=1), out, capsys)
    assert calls == ["model", "train_llamafactory", "train_swift", "eval", "report"]   # data reads no model


def test_old_done_json_without_a_key_counts_as_changed(tmp_path, capsys):
    out = tmp_path / "out"
    _ran(_small_pipeline(tmp_path), out, capsys)
    marker = out / "train_swift" / DONE
    old = json.loads(marker.read_text())
    marker.write_text(json.dumps({k: old[k] for k in ("stage", "elapsed_s", "outputs", "finished_utc")}))
    calls, text = _ran(_small_pipeline(tmp_path), out, capsys)
    assert calls == ["train_swift", "eval", "report"]
    assert "train_swift: its done.json has no key (written before stages were keyed), counted as changed" in text


def test_key_follows_file_contents_not_names(tmp_path):
    from sftpack.pipeline.stages import spec_changes, tree_sha256

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jsonl").write_text("1\n")
    first = tree_sha256(tmp_path / "a")
    (tmp_path / "a" / "x.jsonl").write_text("2\n")
    assert tree_sha256(tmp_path / "a") != first
    assert spec_changes({"o": {"lr": 1, "s": 2}}, {"o": {"lr": 1}, "t": [1]}) == ["o.s: 2 -> (unset)",
                                                                                  "t: (unset) -> [1]"]


# -- no silent fallback (issue 10 part 6) ------------------------------------------------------------------
def test_mistyped_model_path_without_build_shape_is_an_error_before_training(tmp_path):
    import dataclasses

    from sftpack.pipeline.steps import stages

    data = _default()
    data["model"] = {"path": "modles/Qwen2.5-typo", "seed": 0}     # no build_shape: no random weights asked for
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    trained: list[str] = []
    stage_list = [dataclasses.replace(s, run=lambda ctx, n=s.name: trained.append(n) or {})
                  if s.name.startswith("train_") else s for s in stages(load_pipeline(path))]
    started = time.monotonic()
    with pytest.raises(StageFailed, match=r"stage 'model' failed: .*typo\.yaml:\d+: model\.path 'modles/Qwen2\.5-typo' "
                                          r"cannot be had") as info:
        run_stages(stage_list, tmp_path / "out")
    assert time.monotonic() - started < 5 and trained == []
    message = str(info.value)
    # looked for next to the pipeline file first, then at the assets root (older files' paths) and the cwd
    assert f"resolved folder: {tmp_path / 'modles' / 'Qwen2.5-typo'} (nor {fw.REPO_ROOT / 'modles' / 'Qwen2.5-typo'}" \
        in message
    assert "`build_shape: SHAPE` under `model:`" in message and not (tmp_path / "out" / "model" / DONE).exists()


def test_build_shape_given_in_the_yaml_allows_the_fallback_and_it_is_said(tmp_path, monkeypatch, capsys):
    from sftpack.pipeline import steps

    monkeypatch.setattr(steps, "_logged", lambda cmd, *a: None)      # no real build: only the decision matters
    pipeline = _small_pipeline(tmp_path, path="modles/Qwen2.5-typo", build_shape="small")
    assert steps.requested_build_shape(pipeline) == "small"
    run_stages([steps.model_stage(pipeline)], tmp_path / "out")
    assert "model: FALLBACK: 'modles/Qwen2.5-typo': not on this machine" in capsys.readouterr().out
    assert steps.requested_build_shape(Pipeline.from_dict({**_default(), "model": {"path": "x/y"}})) is None
    assert steps.requested_build_shape(load_pipeline(DEFAULT)) == "small"           # path: null asks for a build


def test_every_allowed_fallback_is_printed_before_the_run_and_bold_in_the_report(monkeypatch, capsys):
    from sftpack.pipeline.report import fallback_section, fallbacks
    from sftpack.pipeline.steps import print_fallbacks

    for var in OFFLINE_VARS:
        monkeypatch.setenv(var, "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gpu = load_pipeline(GPU)
    listed = print_fallbacks(gpu)
    text = capsys.readouterr().out
    assert [f.key for f in listed] == ["model.build_shape", "model.tokenizer_required", "data.fallback_source",
                                       "offline"]
    assert text.startswith("sftpack run: FALLBACKS this pipeline allows")
    assert "model.path 'Qwen/Qwen2.5-1.5B' -> RANDOM WEIGHTS of shape 'qwen2.5-1.5b'" in text
    assert "[TAKEN in this run: offline: HF_HUB_OFFLINE=1]" in text
    model = {"random_weights": True, "fallback_reason": "offline: HF_HUB_OFFLINE=1, so no download was tried",
             "tokenizer_fallback_reason": None, "offline": "offline: HF_HUB_OFFLINE=1"}
    section = fallback_section(fallbacks(gpu, model, {"fallback_reason": None, "offline": None}))
    bold = [line for line in section if line.startswith("- **")]
    assert len(bold) == 4 and all(line.endswith("**") for line in bold)
    assert "TAKEN: offline: HF_HUB_OFFLINE=1, so no download was tried**" in bold[0] and "not taken" in bold[2]
    monkeypatch.setenv("HF_HUB_OFFLINE", "")
    print_fallbacks(load_pipeline(DEFAULT))
    assert "fallbacks: none" in capsys.readouterr().out


def test_an_out_folder_holding_the_users_own_stage_named_folders_is_refused_untouched(tmp_path):
    """`sftpack run --out myproject` must never delete the user's myproject/data (or model, eval, ...)."""
    mine = tmp_path / "myproject" / "data"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own work")
    ran = []

    def run(ctx):
        ran.append(1)
        return {}

    with pytest.raises(SftpackError, match="not written by `sftpack run`") as info:
        run_stages([Stage("model", run), Stage("data", run)], tmp_path / "myproject")
    assert str(mine) in str(info.value) and not ran
    assert (mine / "notes.txt").read_text() == "my own work"
    # folders sftpack wrote itself are still replaced when their stage re-runs
    records = run_stages([Stage("model", run)], tmp_path / "ours")
    assert not records["model"]["skipped"] and (tmp_path / "ours" / "model" / ".sftpack-stage").is_file()
    run_stages([Stage("model", run)], tmp_path / "ours", force=["model"])
    assert len(ran) == 2
