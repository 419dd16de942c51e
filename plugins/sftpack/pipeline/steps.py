"""The stages of a pipeline: model -> data -> train_<framework> (each measured) -> eval -> report.

Folders under `<out>/` (one per stage, each with its done.json):
    model/          the base model (a local folder, a hub download, or random weights built offline)
    data/           dataset_info/ from `sftpack prepare`; the frameworks' and lm-eval's current directory
    train_<fw>/     output/ (the trained model), train.log (the framework's full output), metrics.json
    eval/           `sftpack eval`'s eval.json, eval.md, lm_eval/ and logs/
    report/         report.md, summary.json, loss.png, eval.png, time_memory.png
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from sftpack import frameworks as fw
from sftpack.errors import SftpackError
from sftpack.pipeline.offline import offline_reason
from sftpack.pipeline.schema import ModelSpec, Pipeline, PipelineError, TrainSpec, repo_path
from sftpack.pipeline.stages import Context, Stage


class LoggedError(SftpackError):
    def __init__(self, message: str, log_path: Path):
        super().__init__(message)
        self.log_path = log_path


def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpu(pipeline: Pipeline) -> None:
    """Refuse a GPU pipeline on a machine without one, before any stage runs."""
    if pipeline.requires_gpu and gpu_count() == 0:
        raise PipelineError(
            f"{pipeline.path or pipeline.name} says `requires_gpu: true`, but torch sees no CUDA GPU on this machine "
            "(torch.cuda.is_available() is False). Run it on a GPU machine, or run the embedded CPU default: "
            "`sftpack run benchmarks/pipelines/tiny_cpu.yaml`")


def _env(ctx: Context, stage: str, pipeline: Pipeline) -> dict[str, str]:
    env = fw.offline_env(ctx.out / stage / "cache")
    if not pipeline.requires_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""   # the CPU pipeline stays on the CPU, even on a GPU machine
    return env


def train_env(ctx: Context, spec: TrainSpec, pipeline: Pipeline) -> dict[str, str]:
    """The environment of one training run: offline, caches in the stage folder, and on a GPU `RECORD_VRAM=1`.

    LLaMA-Factory writes `vram_allocated`/`vram_reserved` (torch max counters, GiB) into trainer_log.jsonl only
    with RECORD_VRAM=1; ms-swift logs `memory(GiB)` by itself and ignores the variable.
    """
    env = _env(ctx, spec.stage, pipeline)
    if pipeline.requires_gpu:
        env["RECORD_VRAM"] = "1"
    return env


def _logged(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
    try:
        fw.run_logged(cmd, cwd, env, log)
    except SftpackError as err:
        raise LoggedError(str(err), log) from err


# -- model ------------------------------------------------------------------------------------------------
def _download(repo_id: str, folder: Path, log: Path) -> tuple[Path | None, str]:
    """Try HuggingFace, then ModelScope; (folder, how) or (None, why not)."""
    tried = []
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id, local_dir=str(folder / "hf"), allow_patterns=["*.json", "*.safetensors",
                                                                                           "*.txt", "*.model"])
        return Path(path), f"downloaded from the HuggingFace hub ({repo_id})"
    except Exception as err:  # noqa: BLE001 - no network, no such repo, ...
        tried.append(f"HuggingFace: {type(err).__name__}: {str(err)[:200]}")
    try:
        from modelscope import snapshot_download as ms_download

        path = ms_download(repo_id, local_dir=str(folder / "modelscope"))
        return Path(path), f"downloaded from ModelScope ({repo_id})"
    except Exception as err:  # noqa: BLE001
        tried.append(f"ModelScope: {type(err).__name__}: {str(err)[:200]}")
    log.write_text("\n".join(tried) + "\n", encoding="utf-8")
    return None, "; ".join(tried)


def _not_found(spec: ModelSpec, offline: str | None) -> str:
    """Why `spec.path` is not used, said before the fallback is built."""
    where = "no local folder, no HuggingFace/ModelScope cache entry"
    if not spec.download:
        return f"not on this machine ({where}; download: false)"
    return f"{offline}, so no download was tried ({where})"


def model_stage(pipeline: Pipeline):
    def run(ctx: Context) -> dict[str, Any]:
        from sftpack.bench.runner import find_local_model

        spec = pipeline.model
        folder = ctx.dir("model")
        offline = offline_reason()
        why_not = None
        if spec.path:
            found, source = find_local_model(spec.path)     # folders and caches only: no network
            if found is None and spec.download and offline is None:
                print(f"{spec.path} is not on this machine; trying the HuggingFace hub, then ModelScope", flush=True)
                found, source = _download(spec.path, folder, folder / "download.log")
                if found is None:
                    why_not, source = source, None
            elif found is None:
                why_not = _not_found(spec, offline)
            if found is not None:
                return {"path": str(found), "source": source, "random_weights": False, "requested": spec.path,
                        "fallback_reason": None}
            if spec.build_shape is None:
                raise PipelineError(f"model.path {spec.path!r} is not available ({why_not}) and no build_shape is "
                                    "given")
            print(f"model: FALLBACK: {spec.path!r}: {why_not}; building random weights of shape "
                  f"{spec.build_shape!r} instead", flush=True)
        return _build_model(spec, folder, _env(ctx, "model", pipeline), why_not)
    return Stage("model", run, "the base model")


def _build_model(spec: ModelSpec, folder: Path, env: dict[str, str], why_not: str | None) -> dict[str, Any]:
    """Random weights of `spec.build_shape` (with `spec.tokenizer` when it is there), built offline."""
    tokenizer = spec.tokenizer_path
    tokenizer_fallback = None
    if spec.tokenizer and tokenizer is None:
        tokenizer_fallback = (f"model.tokenizer {spec.tokenizer!r}: no such folder ({repo_path(spec.tokenizer)}; "
                              "tokenizer_required: false), so the built byte-level tokenizer is used: more tokens "
                              "per row than the real tokenizer")
        print(f"model: FALLBACK: {tokenizer_fallback}", flush=True)
    built = folder / "weights"
    cmd = [sys.executable, "-m", "sftpack", "tiny-model", str(built), "--shape", spec.build_shape,
           "--seed", str(spec.seed)] + (["--tokenizer", str(tokenizer)] if tokenizer else [])
    _logged(cmd, folder, env, folder / "build.log")
    note = (f"random weights of shape {spec.build_shape!r} (seed {spec.seed}) built offline by "
            f"`sftpack {' '.join(cmd[3:])}`")
    if spec.path:
        note += (f", because {spec.path!r} could not be had ({why_not or 'not on this machine'}). The weights "
                 "are random: time and memory match the real shape, accuracy is meaningless")
    return {"path": str(built.resolve()), "source": note, "random_weights": True, "requested": spec.path,
            "shape": spec.build_shape, "seed": spec.seed, "fallback_reason": why_not,
            "tokenizer": str(tokenizer) if tokenizer else None, "tokenizer_fallback_reason": tokenizer_fallback}


# -- data -------------------------------------------------------------------------------------------------
def data_stage(pipeline: Pipeline):
    def run(ctx: Context) -> dict[str, Any]:
        from sftpack.convert import prepare
        from sftpack.converters import CONVERTERS
        from sftpack.sources import is_hub_id

        spec = pipeline.data
        source = spec.resolved_source()
        folder = ctx.dir("data")
        fallback_reason = None
        offline = offline_reason()
        if offline and is_hub_id(source):
            if spec.fallback_source is None or is_hub_id(spec.resolved_source(spec.fallback_source)):
                raise PipelineError(f"data.source {spec.source!r} is a hub id and this run is {offline}; give a "
                                    "local folder, or a local data.fallback_source (e.g. sample)")
            fallback_reason = f"{offline}, so the hub id {source!r} was not tried"
            source = spec.resolved_source(spec.fallback_source)
            print(f"data: FALLBACK: {fallback_reason}; using data.fallback_source {source}", flush=True)
        try:
            results = prepare(CONVERTERS[spec.family], source, folder / "dataset_info", progress=False)
        except Exception as err:
            if spec.fallback_source is None or fallback_reason is not None:
                raise
            fallback_reason = f"{source!r} could not be read ({type(err).__name__}: {str(err)[:300]})"
            source = spec.resolved_source(spec.fallback_source)
            print(f"data: FALLBACK: {fallback_reason}; using data.fallback_source {source}", flush=True)
            results = prepare(CONVERTERS[spec.family], source, folder / "dataset_info", progress=False)
        for result in results:
            print(result.summary(), flush=True)
        return {"family": spec.family, "source": spec.source, "resolved_source": source,
                "fallback_reason": fallback_reason,
                "workdir": str(folder), "dataset_info": str(folder / "dataset_info" / "dataset_info.json"),
                "splits": {r.dataset: {"file": str(r.file), "rows": r.rows_out, "skipped": len(r.skipped)}
                           for r in results}}
    return Stage("data", run, f"{pipeline.data.family} from {pipeline.data.source}")


# -- train ------------------------------------------------------------------------------------------------
def train_command(spec: TrainSpec, model: Path, output_dir: Path) -> tuple[list[str], dict[str, Any]]:
    if spec.framework == "llamafactory":
        overrides = {**spec.overrides, "model_name_or_path": model, "output_dir": output_dir,
                     "include_num_input_tokens_seen": "non_padding"}
        return fw.lf_train_cmd(spec.config_path, overrides), overrides
    # Swift parses include_num_input_tokens_seen as a bool (true = all tokens, padding included).
    overrides = {**swift_local_model(model), **spec.overrides, "model": model, "output_dir": output_dir,
                 "include_num_input_tokens_seen": True, "add_version": False, "external_plugins": [fw.SWIFT_PLUGIN]}
    return fw.swift_sft_cmd(spec.config_path, overrides), overrides


def swift_local_model(model: Path) -> dict[str, Any]:
    """Swift's flags for a local model folder (the pipeline's model always is one); train.overrides win.

    `check_model: false`: no ModelScope look-up of the folder (network retries). `model_type: qwen2` when the
    folder's config.json says qwen2 (every model `sftpack tiny-model` builds does): else Swift stops with "Multiple
    possible types found: ['qwen2', 'qwen2_gte']". Other architectures are left to Swift's detection.
    """
    flags: dict[str, Any] = {"check_model": False}
    try:
        model_type = json.loads((Path(model) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        model_type = None
    if model_type == "qwen2":
        flags["model_type"] = "qwen2"
    return flags


def _number(config: Path, overrides: dict[str, Any], key: str, default: Any) -> Any:
    import yaml

    if key in overrides:
        return overrides[key]
    return (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get(key, default)


def train_stage(pipeline: Pipeline, spec: TrainSpec):
    def run(ctx: Context) -> dict[str, Any]:
        from sftpack.bench import logs
        from sftpack.bench.monitor import run_measured

        folder = ctx.dir(spec.stage)
        output_dir = folder / "output"
        model = Path(ctx.outputs["model"]["path"])
        cmd, overrides = train_command(spec, model, output_dir)
        log_path = folder / "train.log"
        measured = run_measured(cmd, Path(ctx.outputs["data"]["workdir"]), train_env(ctx, spec, pipeline),
                                log_path, spec.timeout_s, echo=True)
        if measured.exit_code != 0 or measured.timed_out:
            tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:])
            why = "timed out" if measured.timed_out else f"exited {measured.exit_code}"
            raise LoggedError(f"{spec.framework} training {why}\n{tail}", log_path)
        stdout = log_path.read_text(encoding="utf-8", errors="replace")
        on_gpu = pipeline.requires_gpu
        if spec.framework == "llamafactory":
            log = logs.parse_lf(output_dir, stdout, on_gpu)
            trained = output_dir
        else:
            per_step = (int(_number(spec.config_path, overrides, "per_device_train_batch_size", 1))
                        * int(_number(spec.config_path, overrides, "gradient_accumulation_steps", 1)))
            padding_free = bool(_number(spec.config_path, overrides, "packing", False)
                                or _number(spec.config_path, overrides, "padding_free", False))
            log = logs.parse_swift(output_dir, stdout, on_gpu, per_step, padding_free)
            trained = fw.last_checkpoint(output_dir)
        if not log.loss_curve:
            raise LoggedError(f"{spec.framework}: training exited 0 but logged no loss ({log.warnings})", log_path)
        runtime = log.train_runtime_s
        sampler = measured.sampler
        metrics = {
            "framework": spec.framework, "config": spec.config, "command": [str(c) for c in cmd],
            "overrides": json.loads(json.dumps(overrides, default=str)),
            "log": str(log_path), "output_dir": str(output_dir), "trained_model": str(trained),
            "wall_s": measured.wall_s, "train_runtime_s": runtime,
            "cpu_user_s": measured.cpu_user_s, "cpu_system_s": measured.cpu_system_s,
            "load_avg_1m_before": measured.load_avg_1m_before, "load_avg_1m_after": measured.load_avg_1m_after,
            "peak_rss_largest_process_mib": measured.peak_rss_largest_process_mib,
            "peak_pss_tree_mib": sampler.get("peak_pss_tree_mib"),
            "peak_rss_sum_tree_mib": sampler.get("peak_rss_sum_tree_mib"),
            "peak_gpu_torch_reserved_mib": log.torch_peak_reserved_mib,
            "steps": log.steps, "max_steps": log.max_steps, "samples_per_s": log.samples_per_s,
            "tokens_seen": log.tokens_seen, "tokens_counted": log.tokens_counted,
            "tokens_per_s": log.tokens_seen / runtime if log.tokens_seen and runtime else None,
            "non_padding_tokens": log.non_padding_tokens, "non_padding_tokens_source": log.non_padding_tokens_source,
            "non_padding_tokens_per_s": (log.non_padding_tokens / runtime
                                         if log.non_padding_tokens and runtime else None),
            "first_loss": log.loss_curve[0][1], "final_loss": log.final_loss, "train_loss_mean": log.train_loss_mean,
            "loss_curve": log.loss_curve,
            "trainable_params": log.trainable_params, "total_params": log.total_params,
            "trainable_percent": log.trainable_percent, "params_source": log.params_source,
            "warnings": list(log.warnings),
        }
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        if not os.environ.get("SFTPACK_KEEP_CACHE"):
            import shutil

            shutil.rmtree(folder / "cache", ignore_errors=True)
        return {"metrics": str(folder / "metrics.json"), "trained_model": str(trained)}
    return Stage(spec.stage, run, f"{spec.framework} from {spec.config} (measured)")


# -- eval -------------------------------------------------------------------------------------------------
def eval_stage(pipeline: Pipeline):
    def run(ctx: Context) -> dict[str, Any]:
        from sftpack.evaluate.runner import Settings, run_eval

        spec = pipeline.eval
        settings = Settings(tasks=list(spec.tasks), limit=spec.limit, device=spec.device,
                            batch_size=str(spec.batch_size), dtype=spec.dtype, gen_kwargs=spec.gen_kwargs,
                            workdir=ctx.outputs["data"]["workdir"])
        tuned = [f"{t.framework}={ctx.outputs[t.stage]['trained_model']}" for t in pipeline.train]
        folder = ctx.dir("eval")
        try:
            run_eval(ctx.outputs["model"]["path"], tuned, folder, settings, env=_env(ctx, "eval", pipeline))
        except SftpackError as err:
            logs = sorted((folder / "logs").glob("*.log"), key=lambda p: p.stat().st_mtime)
            raise LoggedError(str(err), logs[-1] if logs else folder) from err
        return {"eval_json": str(folder / "eval.json"), "eval_md": str(folder / "eval.md")}
    return Stage("eval", run, f"base vs {', '.join(t.framework for t in pipeline.train)} on "
                              f"{', '.join(pipeline.eval.tasks)} (limit {pipeline.eval.limit})")


def report_stage(pipeline: Pipeline):
    def run(ctx: Context) -> dict[str, Any]:
        from sftpack.pipeline.report import write_report

        return write_report(pipeline, ctx)
    return Stage("report", run, "report.md, summary.json, plots")


def stages(pipeline: Pipeline) -> list[Stage]:
    return ([model_stage(pipeline), data_stage(pipeline)] + [train_stage(pipeline, t) for t in pipeline.train]
            + [eval_stage(pipeline), report_stage(pipeline)])
