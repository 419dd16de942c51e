"""A training config, read through its framework's adapter and memory traits, as one framework-free MemoryPlan.

    plan = make_plan("swift", merged_cfg, model_config, device="gpu")
    plan.method, plan.weight_dtype, plan.gradient_checkpointing, plan.batch, plan.max_length, ...

The shared hyper-parameters come from `adapter.normalise(cfg)` (sftpack.parity: method, LoRA rank/alpha/dropout/
targets, optimizer, batch, accumulation, max length, packing); what each framework does on top of its keys comes
from each adapter's `memory_traits` (sftpack.frameworks). Nothing below knows a framework's name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from sftpack.errors import SftpackError
from sftpack.frameworks.base import MemoryTraits

DEVICES = ("gpu", "cpu")


@dataclass(frozen=True)
class MemoryPlan:
    framework: str
    device: str                     # "gpu": what the step allocates on a CUDA device; "cpu": on this CPU
    method: str                     # "lora" | "full"
    weight_dtype: str
    upcast_trainable: bool          # trainable params cast to fp32 after the adapter is applied
    autocast_dtype: str | None      # AMP dtype, None: no autocast
    lora_rank: int | None
    lora_alpha: int | None
    lora_dropout: float | None
    lora_targets: Any               # "all-linear" or a tuple of module names
    lora_dtype: str | None
    gradient_checkpointing: bool
    checkpointing_before_adapter: bool
    checkpointing_inputs: str
    use_reentrant: bool
    attention: str                  # "sdpa" | "eager" | "flash"
    liger: bool
    packing: str                    # "none" | "rows" | "padding_free"
    pad_to_multiple_of: int
    logits_to_keep: bool
    accuracy_from_logits: bool
    upcast_layernorm: bool
    upcast_lmhead_output: bool
    optim: str
    weight_decay: float
    max_grad_norm: float
    batch: int                      # per-device micro-batch
    accumulation: int
    max_length: int
    drop_long_rows: bool = False    # rows over max_length are dropped (Swift's truncation_strategy: delete)
    system: str | None = None       # the system prompt the template renders (dataset lengths)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def effective_batch(self) -> int:
        return self.batch * self.accumulation

    def with_batch(self, batch: int, accumulation: int) -> "MemoryPlan":
        return replace(self, batch=batch, accumulation=accumulation)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "notes": list(self.notes)}


def traits(framework: str) -> MemoryTraits:
    """The framework adapter's memory traits (sftpack.frameworks: one adapter owns what is framework-specific)."""
    from sftpack import frameworks as fw

    adapter = fw.ADAPTERS.get(framework)
    if adapter is None or adapter.memory_traits is None:
        raise SftpackError(f"no memory traits for framework {framework!r}. Expected one of {sorted(fw.ADAPTERS)}")
    return adapter.memory_traits


def detect_framework(cfg: Mapping[str, Any], where: str) -> str:
    """The framework whose config keys `cfg` uses (most matches); an error naming both when it is unclear."""
    from sftpack import frameworks as fw

    scores = {name: sum(key in cfg for key in a.config_keys) for name, a in fw.ADAPTERS.items()}
    best = max(scores.values())
    winners = [name for name, score in scores.items() if score == best]
    if best == 0 or len(winners) > 1:
        raise SftpackError(f"{where}: cannot tell which framework this config is for (matching keys: {scores}); "
                           f"pass --framework {'|'.join(sorted(fw.ADAPTERS))}")
    return winners[0]


def model_name(framework: str, cfg: Mapping[str, Any]) -> str | None:
    from sftpack import frameworks as fw

    value = cfg.get(fw.adapter(framework).model_key)
    return str(value) if value else None


def make_plan(framework: str, cfg: Mapping[str, Any], model_config: Mapping[str, Any], device: str = "gpu") -> MemoryPlan:
    """The MemoryPlan of the merged config `cfg` of `framework` for `model_config` (config.json) on `device`."""
    from sftpack import frameworks as fw

    if device not in DEVICES:
        raise SftpackError(f"device {device!r} unknown. Expected one of {list(DEVICES)}")
    t = traits(framework)
    problems = t.unsupported(cfg)
    if cfg.get("deepspeed") or cfg.get("fsdp"):
        problems.append(f"deepspeed/fsdp ({cfg.get('deepspeed') or cfg.get('fsdp')}): sharded states are not "
                        "modelled (the estimate is one GPU without sharding)")
    values = fw.adapter(framework).normalise(cfg)
    method = str(cfg.get(t.method_key, "lora"))
    if method not in ("lora", "full"):
        problems.append(f"{t.method_key}: {method} (only lora and full are modelled)")
    if problems:
        raise SftpackError("not modelled by sftpack estimate: " + "; ".join(problems))
    notes = []
    model_dtype = model_config.get("torch_dtype") or model_config.get("dtype")
    weight_dtype = t.weight_dtype(cfg, model_dtype, device == "gpu")
    autocast = t.autocast_dtype(cfg, weight_dtype)
    if device == "cpu" and autocast == "float16":
        notes.append("fp16 autocast has no CPU counterpart: traced without autocast")
        autocast = None
    batch = int(values["per_device_train_batch_size"])
    accumulation = values["gradient_accumulation_steps"]
    if accumulation is None:
        accumulation = t.accumulation_default(batch)
        notes.append(f"gradient accumulation unset: the framework's default {accumulation}")
    max_length = values["max_length"]
    if max_length is None:
        max_length = t.max_length_default(cfg, model_config)
        notes.append(f"max length unset: the framework's default {max_length}")
    attention = t.attention(cfg)
    if attention == "flash":
        notes.append("flash-attn 2 traced as SDPA's flash kernel (same saved tensors: output + log-sum-exp)")
    lora = method == "lora"
    return MemoryPlan(
        framework=framework, device=device, method=method, weight_dtype=weight_dtype,
        upcast_trainable=t.upcast_trainable(cfg), autocast_dtype=autocast,
        lora_rank=values["lora_rank"] if lora else None, lora_alpha=values["lora_alpha"] if lora else None,
        lora_dropout=values["lora_dropout"] if lora else None,
        lora_targets=(tuple(values["lora_targets"]) if isinstance(values["lora_targets"], list)
                      else values["lora_targets"]) if lora else None,
        lora_dtype=t.lora_dtype(cfg) if lora else None,
        gradient_checkpointing=t.gradient_checkpointing(cfg),
        checkpointing_before_adapter=t.checkpointing_before_adapter, checkpointing_inputs=t.checkpointing_inputs,
        use_reentrant=t.use_reentrant(cfg), attention=attention, liger=t.liger(cfg), packing=t.packing(cfg),
        pad_to_multiple_of=t.pad_to_multiple_of, logits_to_keep=t.logits_to_keep(cfg),
        accuracy_from_logits=t.accuracy_from_logits, upcast_layernorm=t.upcast_layernorm(cfg),
        upcast_lmhead_output=t.upcast_lmhead_output(cfg), optim=str(values["optim"]),
        weight_decay=float(values["weight_decay"]), max_grad_norm=float(values["max_grad_norm"]),
        batch=batch, accumulation=int(accumulation), max_length=int(max_length),
        drop_long_rows=values["truncation"] == "delete", system=values["system"], notes=tuple(notes))


def change_overrides(framework: str, change: str) -> dict[str, Any]:
    """The framework's own overrides for a fit-search change ("gradient_checkpointing", "liger", ...)."""
    return dict(traits(framework).changes[change])


def batch_overrides(framework: str, batch: int, accumulation: int) -> dict[str, Any]:
    t = traits(framework)
    return {t.batch_key: batch, t.accumulation_key: accumulation}


def max_length_overrides(framework: str, length: int) -> dict[str, Any]:
    return {traits(framework).max_length_key: length}
