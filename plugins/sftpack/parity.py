"""Normalise LLaMA-Factory and ms-swift training configs to one vocabulary, to compare them.

`normalise_lf(cfg)` and `normalise_swift(cfg)` map a config dict (a YAML plus overrides) to the same keys
with each framework's defaults filled in where the config leaves a key out, so that a key one framework
defaults differently shows up as a difference. `differences(a, b)` lists the keys that differ. Used by
tests/test_config_parity.py and by the benchmark harness's fairness check.

The template is compared by rendering (token ids), not here. `system` is the system prompt a run trains with:
the config's own (LF `default_system`, Swift `system`; "" = none) or else its template's default, because the
system prompt belongs to the template choice (train_configs/README.md); "" when there is none, None when it
cannot be known from the config (Swift without `template` takes the model's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

# The keys compared, in the order reports show them.
KEYS = (
    "method", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets",
    "learning_rate", "lr_scheduler_type", "warmup_ratio", "weight_decay", "max_grad_norm", "optim",
    "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "max_length", "truncation", "dtype", "packing", "sampler", "seed", "dataset", "system",
)

# transformers.TrainingArguments defaults both frameworks inherit unless they override them.
_HF = {"learning_rate": 5e-5, "lr_scheduler_type": "linear", "warmup_ratio": 0.0, "weight_decay": 0.0,
       "max_grad_norm": 1.0, "optim": "adamw_torch", "num_train_epochs": 3.0, "max_steps": -1,
       "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "seed": 42}
# LLaMA-Factory 0.9.5 defaults (hparams/finetuning_args.py, data_args.py).
_LF = {**_HF, "lora_rank": 8, "lora_alpha": None, "lora_dropout": 0.0, "lora_target": "all",
       "cutoff_len": 2048, "packing": None}
# ms-swift 4.5.3 defaults (arguments/tuner_args.py, base_args/, sft_args.py).
_SWIFT = {**_HF, "lr_scheduler_type": "cosine", "weight_decay": 0.1, "learning_rate": None,
          "lora_rank": 8, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["all-linear"],
          "max_length": None, "truncation_strategy": "delete", "packing": False,
          "gradient_accumulation_steps": None}

_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Each template's default system prompt, "" for none: LLaMA-Factory's `register_template(default_system=...)`
# (llamafactory/data/template.py) and ms-swift's `TemplateMeta.default_system` (swift/template/templates/).
# The templates below are read from this table (no framework import, and immune to LF writing a config's
# `default_system` into its global registry, see frameworks/llamafactory.py); any other from the framework's
# registry. tests/test_nothing_lost_frameworks.py checks the table against both registries.
LF_TEMPLATE_SYSTEMS = {"qwen": QWEN_SYSTEM, "chatml": "", "empty": "", "default": "", "llama3": "",
                       "alpaca": "Below is an instruction that describes a task. "
                                 "Write a response that appropriately completes the request.\n\n"}
SWIFT_TEMPLATE_SYSTEMS = {"qwen2_5": QWEN_SYSTEM, "qwen": "You are a helpful assistant.", "chatml": "",
                          "default": "You are a helpful assistant.", "dummy": "", "llama3": ""}


def _template_system(template: str | None, known: dict[str, str], registry: Callable[[], dict]) -> str | None:
    """The default system prompt of `template`: from `known` (checked against the registries by a test), else from
    the framework's registry (`registry()`, imported only then); "" for none, None when unknown or unimportable."""
    if template is None:
        return None
    if template in known:
        return known[template]
    try:
        templates = registry()
    except Exception:  # noqa: BLE001 - not installed or not importable here: unknown
        return None
    return templates[template].default_system or "" if template in templates else None


def _lf_templates() -> dict:
    from llamafactory.data.template import TEMPLATES

    return TEMPLATES


def _swift_templates() -> dict:
    from swift.template import TEMPLATE_MAPPING

    return TEMPLATE_MAPPING


def lf_template_system(template: str | None) -> str | None:
    """LLaMA-Factory's default system prompt for `template` ("" for none; None without a template, when LF
    parses the tokenizer's chat template, or for a name LF does not know)."""
    return _template_system(template, LF_TEMPLATE_SYSTEMS, _lf_templates)


def swift_template_system(template: str | None) -> str | None:
    """ms-swift's default system prompt for `template` ("" for none; None without a template or for a name Swift
    does not know)."""
    return _template_system(template, SWIFT_TEMPLATE_SYSTEMS, _swift_templates)


def load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def _float(value: Any) -> Any:
    return float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value


def _targets(value: Any) -> Any:
    """'all' (LF) and ['all-linear'] (Swift) both mean every linear layer but lm_head."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    items = sorted(str(item).strip() for item in items)
    return "all-linear" if items in (["all"], ["all-linear"]) else items


def _trainer_keys(c: Mapping[str, Any]) -> dict[str, Any]:
    """The transformers.TrainingArguments keys both frameworks take under the same name."""
    return {
        "learning_rate": _float(c["learning_rate"]),
        "lr_scheduler_type": c["lr_scheduler_type"],
        "warmup_ratio": _float(c["warmup_ratio"]),
        "weight_decay": _float(c["weight_decay"]),
        "max_grad_norm": _float(c["max_grad_norm"]),
        "optim": c["optim"],
        "num_train_epochs": _float(c["num_train_epochs"]),
        "max_steps": int(c["max_steps"]),
    }


def normalise_lf(cfg: Mapping[str, Any]) -> dict[str, Any]:
    c = {**_LF, **cfg}
    method = c.get("finetuning_type", "lora")
    lora = method == "lora"
    rank = int(c["lora_rank"])
    dtype = next((name for flag, name in _DTYPES.items() if c.get(flag)), "float32")
    packing = c["packing"] if c["packing"] is not None else c.get("stage") == "pt"
    dataset = c.get("dataset")
    return {
        "method": method,
        "lora_rank": rank if lora else None,
        "lora_alpha": (int(c["lora_alpha"]) if c["lora_alpha"] is not None else 2 * rank) if lora else None,
        "lora_dropout": float(c["lora_dropout"]) if lora else None,
        "lora_targets": _targets(c["lora_target"]) if lora else None,
        **_trainer_keys(c),
        "per_device_train_batch_size": int(c["per_device_train_batch_size"]),
        "gradient_accumulation_steps": int(c["gradient_accumulation_steps"]),
        "max_length": int(c["cutoff_len"]),
        "truncation": "truncate",  # LF always truncates over-long rows (never drops them)
        "dtype": dtype,
        "packing": bool(packing),
        # transformers 5's train_sampling_strategy (random / sequential / group_by_length); LF's
        # disable_shuffling makes it sequential
        "sampler": "sequential" if c.get("disable_shuffling") else str(c.get("train_sampling_strategy") or "random"),
        "seed": int(c["seed"]),
        "dataset": sorted(str(dataset).split(",")) if dataset else None,
        "system": c["default_system"] if c.get("default_system") is not None else lf_template_system(c.get("template")),
    }


def normalise_swift(cfg: Mapping[str, Any]) -> dict[str, Any]:
    c = {**_SWIFT, **cfg}
    method = c.get("tuner_type", "lora")
    lora = method == "lora"
    batch = int(c["per_device_train_batch_size"])
    # Swift picks 16 / (batch x world) when unset; recorded as None here so an unpinned value shows up.
    accumulation = c["gradient_accumulation_steps"]
    dataset = c.get("dataset")
    dataset = dataset if isinstance(dataset, (list, tuple)) else [dataset] if dataset else None
    strategy = c["truncation_strategy"]
    return {
        "method": method,
        "lora_rank": int(c["lora_rank"]) if lora else None,
        "lora_alpha": int(c["lora_alpha"]) if lora else None,
        "lora_dropout": float(c["lora_dropout"]) if lora else None,
        "lora_targets": _targets(c["target_modules"]) if lora else None,
        **_trainer_keys(c),
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": int(accumulation) if accumulation is not None else None,
        "max_length": int(c["max_length"]) if c["max_length"] is not None else None,
        "truncation": "truncate" if strategy in ("right", "left") else strategy,
        "dtype": str(c.get("torch_dtype") or "auto"),
        "packing": bool(c["packing"]),
        # Swift's own batch sampler: group_by_length, else shuffled unless train_dataloader_shuffle is false
        "sampler": "group_by_length" if c.get("group_by_length") else
                   "random" if c.get("train_dataloader_shuffle", True) else "sequential",
        "seed": int(c["seed"]),
        "dataset": sorted(str(d).split("#")[0] for d in dataset) if dataset else None,
        "system": c["system"] if c.get("system") is not None else swift_template_system(c.get("template")),
    }


def differences(a: Mapping[str, Any], b: Mapping[str, Any], keys: tuple[str, ...] = KEYS) -> dict[str, tuple]:
    """{key: (a value, b value)} for every compared key whose values differ."""
    return {key: (a.get(key), b.get(key)) for key in keys if a.get(key) != b.get(key)}
