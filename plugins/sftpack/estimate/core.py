"""The estimate of one training config: plan, traces (worst and typical micro-batch), GPU terms, fit search.

    report = estimate(Path("train_configs/qwen_gsm8k.yaml"), gpu_mem=8 * 2**30)
    report["batches"]["worst"]["gpu"]["device_bytes"], report["fit"]

`report` is what `sftpack estimate --json` writes (SCHEMA_VERSION below; bytes in keys ending `_bytes`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from sftpack.errors import SftpackError
from sftpack.estimate import plan as plans
from sftpack.estimate.gpu import GpuTerms, attention_backward_workspace, predict
from sftpack.estimate.lengths import LengthStats, dataset_lengths, typical_batch, worst_batch
from sftpack.estimate.step import MicroBatch, Trace, trace_step

SCHEMA_VERSION = 1
# The fit search's changes, cheapest first: the same maths (recompute, fused loss), then optimizer precision, then
# the method, then the data (a shorter max length cuts long rows).
CHANGES = ("gradient_checkpointing", "liger", "optim_8bit", "lora")
CHANGE_TEXT = {"gradient_checkpointing": "turn on gradient checkpointing (~+33 % compute)",
               "liger": "Liger kernels: fused linear cross-entropy, no full logits (needs liger-kernel)",
               "optim_8bit": "8-bit AdamW (bitsandbytes)",
               "lora": "LoRA r16 on every linear layer instead of full fine-tuning"}


class Estimator:
    """One config's context: the framework, the merged config, the model's config.json, the options."""

    def __init__(self, config: Path, overrides: Mapping[str, Any], framework: str | None = None,
                 model: str | None = None, shape: str | None = None, device: str = "gpu",
                 terms: GpuTerms | None = None, cwd: Path | None = None,
                 progress: Callable[[str], None] | None = None):
        from sftpack import parity
        from sftpack.estimate import model as models

        self.config_path = Path(config)
        if not self.config_path.is_file():
            raise SftpackError(f"config {self.config_path.resolve()}: no such file")
        self.cwd = Path(cwd) if cwd else Path.cwd()
        self.cfg = {**parity.load_yaml(self.config_path), **overrides}
        self.overrides = dict(overrides)
        self.framework = framework or plans.detect_framework(self.cfg, str(self.config_path))
        self.model_name = model or plans.model_name(self.framework, self.cfg)
        self.model_config, self.model_source = models.resolve(self.model_name, self.cwd, shape)
        self.device = device
        self.terms = terms or GpuTerms()
        self.progress = progress or (lambda text: None)
        self.traces = 0
        self._cache: dict[tuple, Trace] = {}

    def plan(self, changes: Mapping[str, Any] | None = None) -> plans.MemoryPlan:
        return plans.make_plan(self.framework, {**self.cfg, **(changes or {})}, self.model_config, self.device)

    def trace(self, plan: plans.MemoryPlan, batch: MicroBatch, fake: bool = True) -> Trace:
        key = (plan, batch, fake)
        if key not in self._cache:
            started = time.perf_counter()
            self.progress(f"  tracing {plan.method} {batch.describe()} (accumulation {plan.accumulation}) ...")
            self._cache[key] = trace_step(self.model_config, plan, batch, fake=fake)
            self.traces += 1
            self.progress(f"    {self._cache[key].peak_bytes / 2**30:.2f} GiB traced in "
                          f"{time.perf_counter() - started:.1f} s")
        return self._cache[key]

    def gpu(self, plan: plans.MemoryPlan, trace: Trace) -> dict[str, int]:
        dtype_bytes = 4 if (plan.autocast_dtype or plan.weight_dtype) == "float32" else 2
        workspace = attention_backward_workspace(self.model_config, trace.batch.rows, trace.batch.length,
                                                 dtype_bytes, plan.attention)
        return predict(trace.peak_bytes, self.terms, workspace)

    def measure(self, plan: plans.MemoryPlan, batch: MicroBatch, gpu_mem: int | None) -> dict[str, Any]:
        trace = self.trace(plan, batch)
        out: dict[str, Any] = {
            "batch": {"rows": batch.rows, "length": batch.length, "logits_kept": batch.logits_kept,
                      "padded": batch.padded, "text": batch.describe()},
            "peak_bytes": trace.peak_bytes, "peak_phase": trace.phase, "breakdown_bytes": trace.breakdown,
            "before_step_bytes": trace.before_step, "trace_seconds": round(trace.seconds, 2), "ops": trace.ops}
        if plan.device == "gpu":
            out["gpu"] = self.gpu(plan, trace)
            out["fits"] = None if gpu_mem is None else out["gpu"]["device_bytes"] <= gpu_mem
        return out


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def largest_batch(est: Estimator, changes: Mapping[str, Any], gpu_mem: int,
                  stats: LengthStats | None) -> dict[str, Any] | None:
    """The largest micro-batch dividing the config's effective batch whose worst micro-batch fits `gpu_mem`."""
    base = est.plan(changes)
    effective = base.effective_batch
    options = _divisors(effective)
    results: dict[int, dict[str, Any]] = {}

    def fits(batch: int) -> bool:
        plan = base.with_batch(batch, effective // batch)
        results[batch] = est.measure(plan, worst_batch(plan, batch, stats), gpu_mem)
        return bool(results[batch]["fits"])

    if not fits(options[0]):
        return None
    low, high = 0, len(options) - 1          # options[low] fits; find the last that does
    while low < high:
        mid = (low + high + 1) // 2
        if fits(options[mid]):
            low = mid
        else:
            high = mid - 1
    batch = options[low]
    return {"batch": batch, "accumulation": effective // batch, "effective_batch": effective,
            "worst": results[batch], "tried": {b: results[b]["gpu"]["device_bytes"] for b in sorted(results)}}


def run_fit_search(est: Estimator, gpu_mem: int, stats: LengthStats | None) -> dict[str, Any]:
    """Largest micro-batch that fits; if none, the cheapest change that does: each of CHANGES alone (cheapest
    first), then cumulative sets of them (pruned of changes the fit does not need), then shorter max lengths."""
    base = est.plan()
    tried: list[dict[str, Any]] = []

    def attempt(names: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        changes: dict[str, Any] = {}
        for name in names:
            changes.update(plans.change_overrides(est.framework, name))
        changes.update(extra or {})
        parts = [CHANGE_TEXT[n] for n in names]
        if extra:
            parts.append(f"max length {next(iter(extra.values()))}")
        label = "+".join(names + (["max_length"] if extra else [])) or "none"
        text = " + ".join(parts) or "the config as it is, micro-batch from the effective batch down"
        est.progress(f"fit search: {text}")
        try:
            found = largest_batch(est, changes, gpu_mem, stats)
        except SftpackError as err:   # a change this model cannot take (no Liger twin for its architecture)
            tried.append({"change": label, "text": text, "overrides": changes, "fits": False, "error": str(err)})
            return None
        tried.append({"change": label, "text": text, "overrides": changes, "fits": found is not None})
        if found is None:
            return None
        overrides = {**changes, **plans.batch_overrides(est.framework, found["batch"], found["accumulation"])}
        return {"fits": True, "change": label, "changes": names, "text": text, "overrides": overrides, **found}

    def finish(found: dict[str, Any]) -> dict[str, Any]:
        found["tried_changes"] = tried
        return found

    found = attempt([])
    if found:
        return finish(found)
    applicable = []
    for name in CHANGES:
        try:
            changed = est.plan(plans.change_overrides(est.framework, name))
        except SftpackError:
            continue
        if _changes_memory(base, changed):
            applicable.append(name)
    for name in applicable:
        found = attempt([name])
        if found:
            return finish(found)
    for count in range(2, len(applicable) + 1):
        names = applicable[:count]
        found = attempt(names)
        if found:
            for name in reversed(names[:-1]):   # drop what the fit does not need, the costliest first
                fewer = [n for n in found["changes"] if n != name]
                smaller = attempt(fewer)
                if smaller:
                    found = smaller
            return finish(found)
    length = base.max_length
    while length > 128:
        length //= 2
        found = attempt(applicable, plans.max_length_overrides(est.framework, length))
        if found:
            if stats is not None:
                found["rows_cut"] = sum(1 for n in stats.lengths if n > length)
            return finish(found)
    return {"fits": False, "change": None, "tried_changes": tried,
            "text": "nothing tried fits: a larger GPU, or sharding (ZeRO-3/FSDP) over several"}


def _changes_memory(base: plans.MemoryPlan, changed: plans.MemoryPlan) -> bool:
    keys = ("gradient_checkpointing", "liger", "optim", "method")
    return any(getattr(base, k) != getattr(changed, k) for k in keys)


def closed_form(trace: Trace, plan: plans.MemoryPlan) -> dict[str, int]:
    """Weights, gradients and optimizer states as parameter counts x bytes (the unit test's arithmetic)."""
    trainable_bytes = trace.param_bytes["weights_trainable"]
    per_param = {"adamw_torch": 2, "adamw_torch_fused": 2, "sgd": 0}.get(plan.optim)
    return {"weights_bytes": trace.param_bytes["weights_frozen"] + trainable_bytes, "grads_bytes": trainable_bytes,
            "optimizer_state_bytes": per_param * trainable_bytes if per_param is not None else None}


def estimate(config: Path, overrides: Mapping[str, Any] | None = None, framework: str | None = None,
             model: str | None = None, shape: str | None = None, dataset: str | None = None,
             tokenizer: Path | None = None, device: str = "gpu", gpu_mem: int | None = None,
             gpu_mem_source: str | None = None, terms: GpuTerms | None = None, cwd: Path | None = None,
             progress: Callable[[str], None] | None = None, fit_search: str = "always") -> dict[str, Any]:
    """The estimate report of `config` (+ overrides); see the module docstring. `fit_search` (with `gpu_mem`):
    "always", "if-not-fit" (only when the config's worst micro-batch does not fit) or "never"."""
    started = time.perf_counter()
    est = Estimator(config, overrides or {}, framework, model, shape, device, terms, cwd, progress)
    plan = est.plan()
    stats = None
    if dataset:
        tok = tokenizer or _model_folder(est)
        if tok is None:
            raise SftpackError("--dataset needs a tokenizer: the model is not a local folder; pass --tokenizer DIR "
                               "(Qwen2.5's can be built offline with sftpack.qwen_tokenizer)")
        dataset_dir = est.cwd / str(est.cfg.get("dataset_dir") or "dataset_info")
        est.progress(f"measuring {dataset} with the tokenizer in {tok} ...")
        stats = dataset_lengths(dataset, dataset_dir, Path(tok), plan.system, plan.max_length, plan.drop_long_rows)
    worst = est.measure(plan, worst_batch(plan, plan.batch, stats), gpu_mem)
    typical = est.measure(plan, typical_batch(plan, plan.batch, stats), gpu_mem) if stats else None
    search = gpu_mem is not None and device == "gpu" and (
        fit_search == "always" or (fit_search == "if-not-fit" and worst["fits"] is False))
    fit = run_fit_search(est, gpu_mem, stats) if search else None
    trace = est.trace(plan, worst_batch(plan, plan.batch, stats))
    notes = list(plan.notes)
    if stats is None and plan.logits_to_keep:
        notes.append("without --dataset the logits of every position are counted (the framework keeps them only "
                     "from the batch's first labelled token: pass --dataset to see the saving)")
    if plan.device == "cpu":
        notes.append("device cpu: torch's CPU allocator, no GPU terms (the exactness proof's setting)")
    return {
        "schema_version": SCHEMA_VERSION, "config": str(config), "framework": est.framework,
        "overrides": {k: (str(v) if isinstance(v, Path) else v) for k, v in est.overrides.items()},
        "model": {"source": est.model_source, "params": trace.params, "trainable_params": trace.trainable_params,
                  "model_type": est.model_config.get("model_type"),
                  "hidden_size": est.model_config.get("hidden_size"),
                  "num_hidden_layers": est.model_config.get("num_hidden_layers"),
                  "vocab_size": est.model_config.get("vocab_size")},
        "plan": plan.to_dict(), "device": device, "dataset": stats.summary() if stats else None,
        "batches": {"worst": worst, "typical": typical},
        "closed_form": closed_form(trace, plan),
        "gpu_terms": est.terms.to_dict() if device == "gpu" else None,
        "gpu_mem_bytes": gpu_mem, "gpu_mem_source": gpu_mem_source, "fit": fit, "notes": notes,
        "traces": est.traces, "seconds": round(time.perf_counter() - started, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "environment": _versions(),
    }


def _model_folder(est: Estimator) -> Path | None:
    name = est.model_name
    if not name:
        return None
    path = Path(name) if Path(name).is_absolute() else est.cwd / name
    return path if (path / "tokenizer_config.json").is_file() else None


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for package in ("torch", "transformers", "peft"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out
