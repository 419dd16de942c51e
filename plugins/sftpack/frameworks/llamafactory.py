"""LLaMA-Factory 0.9.5: `llamafactory-cli train CONFIG key=value ...` and everything else specific to it.

- Overrides are `key=value` after the YAML (merged into it); unknown keys are fatal (LF's HfArgumentParser).
- The harness counts non-padding tokens exactly (`include_num_input_tokens_seen=non_padding`); GPU memory is the
  torch max counters LF writes into trainer_log.jsonl with env `RECORD_VRAM=1` (GiB, 0.01 resolution).
- Several processes or nodes (GPUs, or gloo on a CPU): `FORCE_TORCHRUN=1` and `torchrun` on PATH; the caller sets
  torchrun's variables (NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT).
- CPU: fp32 (`bf16: true` needs `use_cpu`), one preprocessing worker.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from sftpack import parity
from sftpack.frameworks.base import Adapter, Config, MemoryTraits, Sample
from sftpack.frameworks.common import path_with_this_environment, text
from sftpack.frameworks.logs import GIB_TO_MIB, TrainLog, max_number

LOG = "trainer_log.jsonl"
RESULTS = ("train_results.json", "all_results.json")
_PARAMS = re.compile(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+) \|\| trainable%: ([\d.]+)")


# -- memory traits (sftpack estimate): see base.MemoryTraits for the table ----------------------------------
def _lf_weight_dtype(cfg: Config, model_dtype: str | None, on_gpu: bool) -> str:
    if cfg.get("bf16") or cfg.get("pure_bf16"):
        return "bfloat16"
    if cfg.get("fp16"):
        return "float16"
    if on_gpu:   # infer_optim_dtype: bf16 on a bf16 GPU when config.json says bf16 or nothing
        return "bfloat16" if model_dtype in (None, "bfloat16") else "float16"
    return "float32"


def _lf_autocast(cfg: Config, weight_dtype: str) -> str | None:
    return "bfloat16" if cfg.get("bf16") else "float16" if cfg.get("fp16") else None


def _lf_upcast_trainable(cfg: Config) -> bool:
    zero3 = "z3" in str(cfg.get("deepspeed") or "") or "zero3" in str(cfg.get("deepspeed") or "")
    return not (cfg.get("pure_bf16") or cfg.get("use_badam") or zero3)


def _lf_unsupported(cfg: Config) -> list[str]:
    keys = ("use_galore", "use_apollo", "use_badam", "use_muon", "use_unsloth", "use_unsloth_gc", "quantization_bit",
            "use_dora", "pissa_init")
    return [f"{key}: {cfg[key]}" for key in keys if cfg.get(key)]


MEMORY_TRAITS = MemoryTraits(
    method_key="finetuning_type",
    weight_dtype=_lf_weight_dtype,
    autocast_dtype=_lf_autocast,
    upcast_trainable=_lf_upcast_trainable,
    lora_dtype=lambda cfg: None,
    gradient_checkpointing=lambda cfg: not cfg.get("disable_gradient_checkpointing", False),
    checkpointing_before_adapter=True,
    checkpointing_inputs="first_float_arg",
    use_reentrant=lambda cfg: bool(cfg.get("use_reentrant_gc", True)),
    attention=lambda cfg: {"disabled": "eager", "eager": "eager", "fa2": "flash"}.get(
        str(cfg.get("flash_attn", "auto")), "sdpa"),
    liger=lambda cfg: bool(cfg.get("enable_liger_kernel", False)),
    packing=lambda cfg: "rows" if (cfg.get("packing") or cfg.get("neat_packing")
                                   or (cfg.get("packing") is None and cfg.get("stage") == "pt")) else "none",
    pad_to_multiple_of=8,
    logits_to_keep=lambda cfg: False,
    accuracy_from_logits=False,
    upcast_layernorm=lambda cfg: bool(cfg.get("upcast_layernorm", False)),
    upcast_lmhead_output=lambda cfg: bool(cfg.get("upcast_lmhead_output", False)),
    max_length_default=lambda cfg, model: 2048,
    accumulation_default=lambda batch: 1,
    unsupported=_lf_unsupported,
    max_length_key="cutoff_len",
    changes={
        "gradient_checkpointing": {"disable_gradient_checkpointing": False},
        "liger": {"enable_liger_kernel": True},
        "optim_8bit": {"optim": "adamw_bnb_8bit"},
        "lora": {"finetuning_type": "lora", "lora_rank": 16, "lora_alpha": 32, "lora_target": "all"},
    },
)


# Keys whose string value transformers' TrainingArguments splits on whitespace itself (`fsdp: "full_shard auto_wrap"`).
_WHITESPACE_LISTS = ("fsdp",)


def _cli_value(key: str, value: Any) -> str:
    """`value` as one `key=value` argument that survives LLaMA-Factory's torchrun launch: its launcher re-splits the
    arguments on whitespace (`" ".join(sys.argv[1:]).split()`, llamafactory/launcher.py), so lists are written in
    OmegaConf's list syntax without spaces (`[a,b]`), and an `fsdp` string becomes that list (the same options)."""
    if isinstance(value, str) and key in _WHITESPACE_LISTS and len(value.split()) > 1:
        value = value.split()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(text(item) for item in value) + "]"
    return text(value)


class LlamaFactory(Adapter):
    memory_traits = MEMORY_TRAITS
    name, short, cli, package = "llamafactory", "LF", ("llamafactory-cli", "train"), "llamafactory"
    harness_keys = ("model_name_or_path", "output_dir", "include_num_input_tokens_seen")
    log_file, raw_logs = LOG, (LOG,) + RESULTS
    tiny_cpu = {"bf16": False, "preprocessing_num_workers": 1, "plot_loss": False, "dataloader_num_workers": 0}
    model_key, config_keys = "model_name_or_path", ("model_name_or_path", "stage", "finetuning_type")
    kind_keys = ("stage",)

    def command(self, config: Path, overrides: Mapping[str, Any], kind: str = "sft") -> list[str]:
        overrides = {"stage": "pt", **overrides} if kind == "pt" else overrides   # LF's pretraining: stage pt
        return self._cli() + [str(config)] + [f"{key}={_cli_value(key, value)}" for key, value in overrides.items()]

    def continue_adapter(self, adapter: Path) -> dict[str, Any]:
        # llamafactory/model/adapter.py: the last adapter_name_or_path is resumed (trainable) unless
        # create_new_adapter
        return {"adapter_name_or_path": str(adapter), "create_new_adapter": False}

    def run_overrides(self, model: Path, output_dir: Path) -> dict[str, Any]:
        return {"model_name_or_path": model, "output_dir": output_dir, "include_num_input_tokens_seen": "non_padding"}

    def env(self, gpus: int, distributed: bool | None = None,
            base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {"RECORD_VRAM": "1"}          # vram_allocated / vram_reserved in trainer_log.jsonl (0 on a CPU)
        if gpus > 1 if distributed is None else distributed:
            # `llamafactory-cli train` starts torchrun only with FORCE_TORCHRUN=1 on a CPU or one GPU (and for
            # DeepSpeed), and starts it by name from PATH (llamafactory/launcher.py): this environment's first.
            env["FORCE_TORCHRUN"] = "1"
            env["PATH"] = path_with_this_environment(base)
        return env

    def normalise(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return parity.normalise_lf(config)

    def encoder(self, config: Mapping[str, Any], tokenizer: Path | str):
        """LF's training processor (SupervisedDatasetProcessor), as `llamafactory-cli train` encodes each row.

        LF's `get_template_and_fix_tokenizer` writes `default_system` into its global TEMPLATES registry, so in
        one process a later config without `default_system` would inherit an earlier one's: the template is
        rendered from a copy. A sample that reaches `cutoff_len` is refused (ValueError): LF truncates it."""
        import copy

        from llamafactory.data import template as lf_templates
        from llamafactory.data.processor import SupervisedDatasetProcessor
        from llamafactory.hparams import DataArguments
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tokenizer))
        cutoff = int(config.get("cutoff_len", 2048))
        data_args = DataArguments(template=config.get("template"), default_system=config.get("default_system"),
                                  cutoff_len=cutoff)
        name = data_args.template
        registered = lf_templates.TEMPLATES.get(name) if name else None
        if registered is not None:
            lf_templates.TEMPLATES[name] = copy.deepcopy(registered)
        try:
            template = lf_templates.get_template_and_fix_tokenizer(tok, data_args)
        finally:
            if registered is not None:
                lf_templates.TEMPLATES[name] = registered
        processor = SupervisedDatasetProcessor(template=template, tokenizer=tok, processor=None, data_args=data_args)

        def encode(messages: list[dict[str, str]]) -> Sample:
            system = messages[0]["content"] if messages[0]["role"] == "system" else ""
            turns = messages[1:] if messages[0]["role"] == "system" else messages
            ids, labels = processor._encode_data_example(prompt=turns[:-1], response=turns[-1:], system=system,
                                                         tools="", images=[], videos=[], audios=[])
            if len(ids) >= cutoff:
                raise ValueError(f"{len(ids)} tokens reach cutoff_len {cutoff}: LLaMA-Factory truncates it")
            return Sample.of(ids, labels, lambda part: tok.decode(part, skip_special_tokens=False))

        return encode

    def speed_options(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"attention": config.get("flash_attn", "auto"),
                "liger_kernel": bool(config.get("enable_liger_kernel", False)),
                "gradient_checkpointing": not config.get("disable_gradient_checkpointing", False),
                "packing": bool(config.get("packing") or config.get("neat_packing")),
                "packing_without_cross_attention": bool(config.get("neat_packing", False)),
                "deepspeed": config.get("deepspeed"), "fsdp": config.get("fsdp")}

    def parse_log(self, output_dir: Path, stdout: str, on_gpu: bool, samples_per_step: int | None,
                  padding_free: bool) -> TrainLog:
        log, rows = self._new_log(output_dir)
        losses = [(r["current_steps"], r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float))]
        log.loss_curve = [list(p) for p in losses]
        log.final_loss = losses[-1][1] if losses else None
        steps = [r["current_steps"] for r in rows if isinstance(r.get("current_steps"), int)]
        log.steps = max(steps) if steps else None
        log.max_steps = rows[-1].get("total_steps") if rows else None
        tokens = [r["total_tokens"] for r in rows if isinstance(r.get("total_tokens"), int)]
        if on_gpu:
            reserved = max_number([r.get("vram_reserved") for r in rows])
            allocated = max_number([r.get("vram_allocated") for r in rows])
            log.torch_peak_reserved_mib = reserved * GIB_TO_MIB if reserved is not None and reserved > 0 else None
            log.torch_peak_allocated_mib = allocated * GIB_TO_MIB if allocated is not None and allocated > 0 else None
        results: dict[str, Any] = {}
        for name in RESULTS:
            path = output_dir / name
            if path.is_file():
                results.update(json.loads(path.read_text(encoding="utf-8")))
        log.train_runtime_s = results.get("train_runtime")
        log.samples_per_s = results.get("train_samples_per_second")
        log.train_loss_mean = results.get("train_loss")
        seen = results.get("num_input_tokens_seen", tokens[-1] if tokens else None)
        if seen:
            log.tokens_seen = int(seen)
            log.tokens_counted = "non_padding"
            log.non_padding_tokens = float(seen)
            log.non_padding_tokens_source = "llamafactory total_tokens (include_num_input_tokens_seen=non_padding)"
        match = _PARAMS.search(stdout)
        if match:
            log.trainable_params = int(match.group(1).replace(",", ""))
            log.total_params = int(match.group(2).replace(",", ""))
            log.trainable_percent = float(match.group(3))
            log.params_source = "llamafactory log 'trainable params: N || all params: M' (exact)"
        return log
