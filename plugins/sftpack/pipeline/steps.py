"""The stages of a pipeline: model -> data -> train_<framework> (each measured) -> eval -> report.

Folders under `<out>/` (one per stage, each with its done.json):
    model/          the base model (a local folder, a hub download, or random weights built offline)
    data/           dataset_info/ from `sftpack prepare`; the frameworks' and lm-eval's current directory
    train_<fw>/     output/ (the trained model), stdout.log (the framework's full output), result.json (the
                    training core's record, the same schema as `sftpack bench`'s), the framework's raw logs
    eval/           `sftpack eval`'s eval.json, eval.md, lm_eval/ and logs/
    report/         report.md, summary.json, loss.png, eval.png, time_memory.png
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftpack import frameworks as fw
from sftpack.errors import SftpackError
from sftpack.pipeline.offline import offline_reason
from sftpack.pipeline.schema import ModelSpec, Pipeline, PipelineError, TrainSpec
from sftpack.pipeline.stages import Context, Progress, Stage, file_sha256, tree_sha256, tree_stat
from sftpack.provenance import versions

if TYPE_CHECKING:
    from sftpack.training import TrainJob

# The installed packages each stage's output depends on (importlib.metadata names); part of the stage's key.
MODEL_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors")
DATA_PACKAGES = ("datasets", "pyarrow")
TRAIN_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets")   # + the framework's own
EVAL_PACKAGES = ("lm-eval", "torch", "transformers", "peft", "accelerate", "datasets")
REPORT_PACKAGES = ("matplotlib",)


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


def stage_threads(parallel: int) -> str:
    """CPU threads for each of `parallel` processes at once: the caller's OMP_NUM_THREADS when set, else this
    process's cores shared out (at least 1)."""
    from sftpack.training import threads

    if os.environ.get("OMP_NUM_THREADS"):
        return os.environ["OMP_NUM_THREADS"]
    return str(max(1, int(threads(os.environ)) // max(1, parallel)))


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


def requested_build_shape(pipeline: Pipeline) -> str | None:
    """`model.build_shape`: given only when the YAML asks for a built model (no default fills it)."""
    return pipeline.model.build_shape


def _missing_model(pipeline: Pipeline, why_not: str | None) -> PipelineError:
    """The error for a `model.path` that cannot be had when no built model was asked for."""
    from sftpack.tiny_model import SHAPES

    spec = pipeline.model
    from sftpack.assets import places_text
    from sftpack.bench.runner import local_model_places

    where = places_text(local_model_places(spec.path, spec.bases))   # where find_local_model looked
    place = "model.path"
    if getattr(spec, "_at", None) is not None:     # the schema records the key's file:line
        place = str(spec._at["path"])
    elif pipeline.path:
        place = f"{pipeline.path}: model.path"
    return PipelineError(
        f"{place} {spec.path!r} cannot be had: {why_not or 'not on this machine'}; resolved folder: "
        f"{where} (no config.json there). No random weights are trained in its place unless asked for. Fix "
        f"model.path (a folder with config.json, or a hub id with `download: true`), or ask for a built model of "
        f"random weights explicitly: `build_shape: SHAPE` under `model:` (one of {sorted(SHAPES)})")


def check_model(pipeline: Pipeline) -> None:
    """Before the first stage: a `model.path` that cannot be had (not here, not cached, no download allowed or the
    hubs off) with no `build_shape` asked for is an error now, not after other work. Local-looking paths were
    checked when the file was read (schema.ModelSpec.check)."""
    from sftpack.bench.runner import find_local_model

    spec = pipeline.model
    if not spec.path or requested_build_shape(pipeline) is not None:
        return
    if find_local_model(spec.path, spec.bases)[0] is not None:
        return
    offline = offline_reason()
    if spec.download and offline is None:
        return   # the model stage tries the hubs
    raise _missing_model(pipeline, _not_found(spec, offline))


def model_inputs(pipeline: Pipeline) -> dict[str, Any]:
    """What the model stage's output depends on: the folder found (by file sizes and times), or the build."""
    from sftpack.bench.runner import find_local_model

    spec = pipeline.model
    found = find_local_model(spec.path, spec.bases)[0] if spec.path else None
    if found is not None:
        return {"path": spec.path, "found": str(found), "files_stat_sha256": tree_stat(found)}
    tokenizer = spec.tokenizer_path
    inputs: dict[str, Any] = {"path": spec.path, "build_shape": spec.build_shape, "seed": spec.seed,
                              "tokenizer": spec.tokenizer,
                              "tokenizer_sha256": tree_sha256(tokenizer) if tokenizer else None,
                              "versions": versions(*MODEL_PACKAGES)}
    if spec.path:   # online, a download is tried first; offline, the build is taken at once
        inputs.update(download=spec.download, offline=offline_reason() is not None)
    return inputs


def model_stage(pipeline: Pipeline):
    def run(ctx: Context) -> dict[str, Any]:
        from sftpack.bench.runner import find_local_model

        spec = pipeline.model
        folder = ctx.dir("model")
        offline = offline_reason()
        why_not = None
        if spec.path:
            found, source = find_local_model(spec.path, spec.bases)     # folders and caches only: no network
            if found is None and spec.download and offline is None:
                print(f"{spec.path} is not on this machine; trying the HuggingFace hub, then ModelScope", flush=True)
                found, source = _download(spec.path, folder, folder / "download.log")
                if found is None:
                    why_not, source = source, None
            elif found is None:
                why_not = _not_found(spec, offline)
            if found is not None:
                return {"path": str(found), "source": source, "random_weights": False, "requested": spec.path,
                        "fallback_reason": None, "offline": offline}
            if requested_build_shape(pipeline) is None:
                raise _missing_model(pipeline, why_not)
            print(f"model: FALLBACK: {spec.path!r}: {why_not}; building random weights of shape "
                  f"{spec.build_shape!r} instead", flush=True)
        return {**_build_model(spec, folder, _env(ctx, "model", pipeline), why_not), "offline": offline}
    return Stage("model", run, "the base model")


def _build_model(spec: ModelSpec, folder: Path, env: dict[str, str], why_not: str | None) -> dict[str, Any]:
    """Random weights of `spec.build_shape` (with `spec.tokenizer` when it is there), built offline."""
    tokenizer = spec.tokenizer_path
    tokenizer_fallback = None
    if spec.tokenizer and tokenizer is None:
        tokenizer_fallback = (f"model.tokenizer {spec.tokenizer!r}: no such folder ({spec.resolved_tokenizer()}; "
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
def _source_inputs(spec, source: str | None) -> dict[str, Any] | None:
    """A data source as the key sees it: a local file or folder by its content, a hub id by its name."""
    if source is None:
        return None
    resolved = spec.resolved_source(source)
    local = Path(resolved)
    return {"source": source, "resolved": resolved,
            "sha256": tree_sha256(local) if local.exists() else None}     # None: a hub id (its rows are not hashed)


def data_inputs(pipeline: Pipeline) -> dict[str, Any]:
    """What the data stage's output depends on: family, source and fallback (local ones by content), offline."""
    from sftpack.sources import is_hub_id

    spec = pipeline.data
    inputs = {"family": spec.family, "source": _source_inputs(spec, spec.source),
              "fallback_source": _source_inputs(spec, spec.fallback_source), "versions": versions(*DATA_PACKAGES)}
    if spec.recipes:
        inputs["recipes"] = [_recipe_inputs(recipe) for recipe in spec.recipes]
    if is_hub_id(spec.resolved_source()):
        inputs["offline"] = offline_reason() is not None
    return inputs


PREPARED = "<the run's dataset_info>"


def _recipe_inputs(recipe) -> dict[str, Any]:
    """A recipe as the data stage's key sees it: its file and its local inputs by content, its vars."""
    inputs: dict[str, Any] = {"recipe": recipe.recipe, "sha256": file_sha256(recipe.path), "vars": recipe.var_values}
    if not recipe.is_mixture:
        from sftpack.recipes.run import load_recipe
        from sftpack.sources import is_hub_id

        # ${dataset_info}: the data stage's own output, covered by the family and source above (kept as a name)
        plan = load_recipe(recipe.path, recipe.run_vars(Path(PREPARED)))
        inputs["inputs"] = {spec.name: (spec.path if is_hub_id(spec.path) or str(spec.path).startswith(PREPARED)
                                        else tree_sha256(Path(spec.path)))
                            for spec in plan.inputs}
    return inputs


def _run_recipes(pipeline: Pipeline, out: Path) -> list[dict[str, Any]]:
    """The pipeline's `data.recipes`, in order, into `out` (the run's dataset_info/): what each wrote."""
    from sftpack.recipes.mixture import run_mixture
    from sftpack.recipes.run import run_recipe

    done = []
    for recipe in pipeline.data.recipes:
        if recipe.is_mixture:
            mix = run_mixture(recipe.path, out, recipe.run_vars(out), overwrite=True)
            done.append({"recipe": str(recipe.path), "mixture": str(mix.file)})
            print(f"data: mixture {recipe.recipe} -> {mix.file}", flush=True)
            continue
        result = run_recipe(recipe.path, out, recipe.run_vars(out), progress=False, overwrite=True)
        outputs = {o.dataset: {"file": str(o.file), "rows": o.rows} for o in result.outputs}
        done.append({"recipe": str(recipe.path), "description": result.plan.description, "outputs": outputs})
        print(f"data: recipe {recipe.recipe} -> " + ", ".join(f"{n} ({o['rows']} rows)" for n, o in outputs.items()),
              flush=True)
    return done


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
                "fallback_reason": fallback_reason, "offline": offline,
                "workdir": str(folder), "dataset_info": str(folder / "dataset_info" / "dataset_info.json"),
                "splits": {r.dataset: {"file": str(r.file), "rows": r.rows_out, "skipped": len(r.skipped)}
                           for r in results},
                "recipes": _run_recipes(pipeline, folder / "dataset_info")}
    recipes = ", then " + ", ".join(Path(r.recipe).name for r in pipeline.data.recipes) if pipeline.data.recipes \
        else ""
    return Stage("data", run, f"{pipeline.data.family} from {pipeline.data.source}{recipes}")


# -- train ------------------------------------------------------------------------------------------------
def train_job(pipeline: Pipeline, spec: TrainSpec, ctx: Context, fit_check: str = "refuse",
              verbose: bool = True) -> TrainJob:
    """The training-core job of one `train:` entry (the same core `sftpack bench` runs: sftpack.training).
    `fit_check`: TrainJob's (`--force-fit`: "warn", `--no-fit-check`: "off"); not part of the stage's key.
    With `parallel: N` the N train stages that run at once share the cores (OMP_NUM_THREADS = cores / N)."""
    from sftpack.training import TrainJob

    folder = ctx.dir(spec.stage)
    threads = stage_threads(pipeline.parallel)
    env = {} if pipeline.parallel <= 1 else {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    model, overrides = start_from(pipeline, spec, ctx)
    return TrainJob(framework=spec.framework, config=spec.config_path, overrides={**overrides, **spec.overrides},
                    kind=spec.kind, model=model, output_dir=folder / "output",
                    cwd=Path(ctx.outputs["data"]["workdir"]), record_dir=folder, cache=folder / "cache",
                    gpus=1 if pipeline.requires_gpu else 0, timeout_s=spec.timeout_s, echo=verbose,
                    identity={"suite": pipeline.name, "session": ctx.out.name, "run": spec.stage, "repeat": 1,
                              "group": None}, fit_check=fit_check, env=env)


def start_from(pipeline: Pipeline, spec: TrainSpec, ctx: Context) -> tuple[Path, dict[str, Any]]:
    """(the model a train entry trains, the overrides that load an earlier adapter): the base model; with
    `after`, the earlier stage's full model, or its LoRA adapter continued on the base (the framework's own keys,
    Adapter.continue_adapter), or merged into the base (sftpack.lora_merge, into `<stage>/merged_base/`)."""
    base = Path(ctx.outputs["model"]["path"])
    before = pipeline.previous(spec)
    if before is None:
        return base, {}
    trained = Path(ctx.outputs[before.stage]["trained_model"])
    if spec.adapter is None:
        return trained, {}
    start = ctx.outputs[before.stage].get("model") or str(base)   # the model the adapter was trained on
    if spec.adapter == "continue":
        return Path(start), fw.adapter(spec.framework).continue_adapter(trained)
    merged = ctx.dir(spec.stage) / "merged_base"
    if merged.exists():
        import shutil

        shutil.rmtree(merged)
    print(f"{spec.stage}: merging {before.stage}'s LoRA adapter into {start} -> {merged}", flush=True)
    _logged([sys.executable, "-m", "sftpack.lora_merge", str(start), str(trained), str(merged)], ctx.dir(spec.stage),
            _env(ctx, spec.stage, pipeline), ctx.dir(spec.stage) / "merge.log")
    return merged, {}


def train_stage(pipeline: Pipeline, spec: TrainSpec, fit_check: str = "refuse", verbose: bool = True):
    def run(ctx: Context) -> dict[str, Any]:
        from sftpack.training import run_standalone

        job = train_job(pipeline, spec, ctx, fit_check, verbose)
        if not verbose:
            print(f"{spec.stage}: {spec.framework}'s output -> {job.record_dir / 'stdout.log'}", flush=True)
        result = run_standalone(job)
        log_path = job.record_dir / "stdout.log"
        if result.status != "ok":
            raise LoggedError(f"{spec.framework} training: {result.status} ({result.status_detail})\n"
                              + "".join((result.log_tail or "").splitlines(True)[-15:]), log_path)
        if not result.loss_curve:
            raise LoggedError(f"{spec.framework}: training exited 0 but logged no loss ({result.warnings})", log_path)
        if not os.environ.get("SFTPACK_KEEP_CACHE"):
            import shutil

            shutil.rmtree(job.cache, ignore_errors=True)
        return {"result": str(job.record_dir / "result.json"), "trained_model": result.trained_model,
                "threads": job.env.get("OMP_NUM_THREADS"), "model": str(job.model), "kind": spec.kind,
                "after": spec.after, "adapter": spec.adapter, "dataset": _dataset_of(spec)}

    def progress(ctx: Context) -> Progress:
        log = fw.adapter(spec.framework).parse_log(ctx.out / spec.stage / "output", "", False, None, False)
        if not log.steps or not log.max_steps:
            return Progress(None, "starting (imports, tokenising)")
        return Progress(log.steps / log.max_steps, f"{log.steps}/{log.max_steps} steps")

    chained = f", after {spec.after}" + (f" (adapter: {spec.adapter})" if spec.adapter else "") if spec.after else ""
    dataset = spec.overrides.get("dataset")
    on = f" on {', '.join(map(str, dataset)) if isinstance(dataset, list) else dataset}" if dataset else ""
    return Stage(spec.stage, run, f"{spec.framework} {spec.kind} from {spec.config}{on}{chained} (measured)",
                 group="train", progress=progress)


def _dataset_of(spec: TrainSpec) -> Any:
    """The dataset(s) a train entry trains on, as its framework reads its config + overrides."""
    from sftpack.training import merged_config

    return merged_config(spec.config_path, spec.overrides).get("dataset")


def train_inputs(pipeline: Pipeline, spec: TrainSpec) -> dict[str, Any]:
    """What a training stage's output depends on besides the model and the data: its config and settings."""
    inputs = {"framework": spec.framework, "config": spec.config, "config_sha256": file_sha256(spec.config_path),
              "overrides": spec.overrides, "timeout_s": spec.timeout_s, "requires_gpu": pipeline.requires_gpu,
              "versions": versions(fw.adapter(spec.framework).package, *TRAIN_PACKAGES)}
    if spec.after is not None or spec.kind != "sft":   # a chained stage: what it starts from, how
        inputs.update(after=spec.after, adapter=spec.adapter, kind=spec.kind)
    if pipeline.parallel > 1:   # the threads each run gets: its measured time (and its float order) depend on them
        inputs["parallel"] = pipeline.parallel
    return inputs


# -- eval -------------------------------------------------------------------------------------------------
def eval_inputs(pipeline: Pipeline) -> dict[str, Any]:
    """What the eval stage's output depends on besides the models and the data: settings, task files, versions."""
    spec = pipeline.eval
    inputs = {"tasks": list(spec.tasks), "limit": spec.limit, "device": spec.device,
              "batch_size": str(spec.batch_size), "dtype": spec.dtype, "gen_kwargs": spec.gen_kwargs,
              "requires_gpu": pipeline.requires_gpu, "eval_tasks_sha256": tree_sha256(spec.tasks_folder),
              "versions": versions(*EVAL_PACKAGES)}
    if spec.include_path is not None:
        inputs["include_path"] = str(spec.tasks_folder)
    if spec.retention:   # the retention data by content
        inputs["retention"] = [{"task": r.task, "data": r.data, "sha256": tree_sha256(r.path)} for r in spec.retention]
    if spec.datasets:    # their rows are the data stage's (read): the names and the prompt's config matter
        inputs["datasets"] = list(spec.datasets)
    if eval_parallel(pipeline) > 1:   # the threads each lm-eval gets
        inputs["parallel"] = eval_parallel(pipeline)
    return inputs


def _training_config(spec: TrainSpec, folder: Path) -> Path:
    """A train entry's config as it trains (config + overrides) written to `folder`, for the task generators."""
    import yaml

    from sftpack.artifacts import write_text
    from sftpack.training import merged_config

    config = folder / f"{spec.stage}.config.yaml"
    write_text(config, yaml.safe_dump(merged_config(spec.config_path, spec.overrides), sort_keys=False))
    return config


def _chat_tasks(pipeline: Pipeline, model: str, folder: Path) -> Path:
    """The task folder for the eval: the shipped `eval_tasks/`, or -- when the training configs (with their
    overrides) train another chat format than the shipped chat task's (another template or system prompt) -- a copy
    of it in `<eval>/chat_tasks/` whose chat task is generated from that format, so that inference uses the training
    prompt (`<eval>/tasks/` holds the tasks of eval.datasets). Train entries that train different chat formats
    cannot share one chat task: an error saying so."""
    import shutil

    from sftpack.artifacts import write_text
    from sftpack.evaluate import tasks as tasklib

    shipped_tasks = pipeline.eval.tasks_folder
    if tasklib.CHAT_TASK not in pipeline.eval.tasks:
        return shipped_tasks

    rendered: dict[str, str] = {}
    for spec in pipeline.final_trains():
        config = _training_config(spec, folder)   # the run's config as trained, for the generator
        body = tasklib.chat_task_yaml(config, tokenizer=model)
        rendered[spec.stage] = body.split("include:", 1)[1]   # the task itself, without the header comment
    if len(set(rendered.values())) > 1:
        raise SftpackError(f"{pipeline.path}: the train entries {sorted(rendered)} train different chat formats "
                           f"(template or system prompt), so one {tasklib.CHAT_TASK} cannot use the training prompt "
                           "of each; give them the same template and system, or evaluate them in separate pipelines")
    shipped = (shipped_tasks / f"{tasklib.CHAT_TASK}.yaml").read_text(encoding="utf-8").split("include:", 1)[1]
    if not rendered or next(iter(rendered.values())) == shipped:
        return shipped_tasks
    tasks = folder / "chat_tasks"
    shutil.rmtree(tasks, ignore_errors=True)
    shutil.copytree(shipped_tasks, tasks, ignore=shutil.ignore_patterns("__pycache__"))
    write_text(tasks / f"{tasklib.CHAT_TASK}.yaml", body)
    print(f"eval: {tasklib.CHAT_TASK} generated from the training configs' chat format -> {tasks}", flush=True)
    return tasks


def _eval_model(pipeline: Pipeline, spec: TrainSpec, ctx: Context, folder: Path) -> str:
    """The model lm-eval scores for a final train stage: its output; but a LoRA adapter trained on another model
    than the base (a chained stage's start) is merged into that model first (`<eval>/merged/<framework>/`), since
    `sftpack eval` loads adapters on the base model."""
    output = ctx.outputs[spec.stage]
    trained, start = Path(output["trained_model"]), output.get("model")
    if not start or Path(start) == Path(ctx.outputs["model"]["path"]) or not (trained / "adapter_config.json").is_file():
        return str(trained)
    merged = folder / "merged" / spec.framework
    if merged.exists():
        import shutil

        shutil.rmtree(merged)
    print(f"eval: {spec.stage}'s adapter was trained on {start}: merged into it for lm-eval -> {merged}", flush=True)
    _logged([sys.executable, "-m", "sftpack.lora_merge", start, str(trained), str(merged)], folder,
            _env(ctx, "eval", pipeline), folder / f"merge-{spec.framework}.log")
    return str(merged)


def eval_parallel(pipeline: Pipeline) -> int:
    """lm-eval runs at the same time: `eval.parallel`, else the pipeline's `parallel`."""
    return pipeline.eval.parallel or pipeline.parallel


def eval_stage(pipeline: Pipeline, verbose: bool = True):
    finals = pipeline.final_trains()
    labels = ["base"] + [t.framework for t in finals]

    def run(ctx: Context) -> dict[str, Any]:
        from sftpack.evaluate.runner import Settings, run_eval

        spec = pipeline.eval
        folder = ctx.dir("eval")
        metadata = {key: value for r in spec.retention for key, value in r.metadata.items()}
        settings = Settings(tasks=list(spec.tasks) + [r.task for r in spec.retention], limit=spec.limit,
                            device=spec.device, batch_size=str(spec.batch_size), dtype=spec.dtype,
                            gen_kwargs=spec.gen_kwargs, workdir=ctx.outputs["data"]["workdir"],
                            parallel=eval_parallel(pipeline), metadata=metadata,
                            include_path=str(_chat_tasks(pipeline, ctx.outputs["model"]["path"], folder)))
        if spec.datasets:   # prompted as the (first) final training renders them, its merged config written here
            settings.datasets = list(spec.datasets)
            settings.train_config = str(_training_config(pipeline.final_trains()[0], folder))
            settings.dataset_dir = str(Path(ctx.outputs["data"]["workdir"]) / "dataset_info")
        tuned = [f"{t.framework}={_eval_model(pipeline, t, ctx, folder)}" for t in finals]
        env = _env(ctx, "eval", pipeline)
        if eval_parallel(pipeline) > 1:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = stage_threads(min(eval_parallel(pipeline), len(labels)))
        if not verbose:
            print(f"eval: lm-eval's output -> {folder / 'logs'}", flush=True)
        try:
            run_eval(ctx.outputs["model"]["path"], tuned, folder, settings, env=env, echo=verbose)
        except SftpackError as err:
            logs = sorted((folder / "logs").glob("*.log"), key=lambda p: p.stat().st_mtime)
            raise LoggedError(str(err), logs[-1] if logs else folder) from err
        return {"eval_json": str(folder / "eval.json"), "eval_md": str(folder / "eval.md")}

    def progress(ctx: Context) -> Progress:
        from sftpack.evaluate.runner import log_progress

        done = [log_progress(path) for path in sorted((ctx.out / "eval" / "logs").glob("*.log"))]
        fraction = sum(done) / len(labels)
        return Progress(fraction or None, f"{sum(f == 1.0 for f in done)}/{len(labels)} models scored "
                                          f"({100 * fraction:.0f} % of the requests)")

    return Stage("eval", run, f"base vs {', '.join(t.label for t in finals)} on "
                              f"{', '.join(pipeline.eval.tasks)} (limit {pipeline.eval.limit})", progress=progress)


def report_stage(pipeline: Pipeline):
    def run(ctx: Context) -> dict[str, Any]:
        from sftpack.pipeline.report import write_report

        return write_report(pipeline, ctx)
    return Stage("report", run, "report.md, summary.json, plots")


def report_inputs(pipeline: Pipeline) -> dict[str, Any]:
    return {"name": pipeline.name, "description": pipeline.description,
            "fallbacks": [f"{f.key}: {f.text}" for f in allowed_fallbacks(pipeline)],
            "versions": versions(*REPORT_PACKAGES)}


def stages(pipeline: Pipeline, fit_check: str = "refuse", verbose: bool = True) -> list[Stage]:
    """The stages in order, each with the inputs its key hashes and the stages it reads (see stages.py);
    `fit_check`: the train stages' GPU fit check (sftpack.training.TrainJob.fit_check); `verbose`: the frameworks'
    and lm-eval's output on the terminal too (always in the stage's log files)."""
    def keyed(stage: Stage, inputs, reads: tuple[str, ...] | None) -> Stage:
        return dataclasses.replace(stage, inputs=inputs, reads=reads)

    trains = tuple(t.stage for t in pipeline.train)
    return ([keyed(model_stage(pipeline), lambda: model_inputs(pipeline), ()),
             keyed(data_stage(pipeline), lambda: data_inputs(pipeline), ())]
            + [keyed(train_stage(pipeline, t, fit_check, verbose), lambda t=t: train_inputs(pipeline, t),
                     ("model", "data") + ((pipeline.previous(t).stage,) if t.after else ()))
               for t in pipeline.train]
            + [keyed(eval_stage(pipeline, verbose), lambda: eval_inputs(pipeline), ("model", "data", *trains)),
               keyed(report_stage(pipeline), lambda: report_inputs(pipeline), None)])


# -- fallbacks: what the spec allows, said before the first stage -------------------------------------------
@dataclasses.dataclass
class Fallback:
    key: str                  # the spec key (or run condition) that allows it
    text: str                 # what is used instead, and when
    now: str | None = None    # why it will be taken in this run, when that is known before the run


def allowed_fallbacks(pipeline: Pipeline, offline: str | None | bool = True) -> list[Fallback]:
    """Every fallback `pipeline` allows, in words. `offline`: the reason the run is offline (True: ask
    offline_reason() now; None/False: online)."""
    from sftpack.sources import is_hub_id

    offline = offline_reason() if offline is True else offline or None
    found = _model_fallbacks(pipeline, offline)
    data = pipeline.data
    hub = is_hub_id(data.resolved_source())
    if data.fallback_source:
        found.append(Fallback("data.fallback_source", f"data.source {data.source!r} -> data.fallback_source "
                              f"{data.fallback_source!r} ({data.resolved_source(data.fallback_source)}) when the "
                              "source cannot be read", offline if offline and hub else None))
    if offline and (pipeline.model.path or hub):     # else no stage would ask a hub anyway
        found.append(Fallback("offline", f"{offline.removeprefix('offline: ')} is set: no hub call; a model or "
                              "data source that is not on this machine takes its fallback at once", "in effect"))
    return found


def _model_fallbacks(pipeline: Pipeline, offline: str | None) -> list[Fallback]:
    from sftpack.bench.runner import find_local_model

    model, shape = pipeline.model, requested_build_shape(pipeline)
    found: list[Fallback] = []
    builds = model.path is None       # known before the run: the model is built
    if model.path and shape:
        how = "not a local folder or in the HF/ModelScope cache"
        if model.download and not offline:
            how += ", and its download fails"
        now = None
        if find_local_model(model.path, model.bases)[0] is None and (offline or not model.download):
            now, builds = offline or "not on this machine, download: false", True
        found.append(Fallback("model.build_shape", f"model.path {model.path!r} -> RANDOM WEIGHTS of shape {shape!r} "
                              f"(seed {model.seed}) when it is {how}: time and memory of the shape, accuracy "
                              "meaningless", now))
    if model.tokenizer and not model.tokenizer_required:
        absent = model.tokenizer_path is None
        found.append(Fallback("model.tokenizer_required", f"model.tokenizer {model.tokenizer!r} -> the built "
                              f"byte-level tokenizer when {model.resolved_tokenizer()} is absent: more tokens per "
                              "row than the real tokenizer", "the folder is absent" if absent and builds else None))
    return found


def print_fallbacks(pipeline: Pipeline) -> list[Fallback]:
    """Print, in one block before the first stage, every fallback the pipeline allows; return them."""
    fallbacks = allowed_fallbacks(pipeline)
    if not fallbacks:
        print("sftpack run: fallbacks: none -- the model and the data are used as the pipeline says, or the run "
              "stops", flush=True)
        return fallbacks
    lines = [("sftpack run: FALLBACKS this pipeline allows (each is printed again when taken, and in bold in the "
              "report):")]
    lines += [f"  - {f.key}: {f.text}" + (f"  [TAKEN in this run: {f.now}]" if f.now else "") for f in fallbacks]
    print("\n".join(lines), flush=True)
    return fallbacks
