"""ms-swift 4.5.3: `swift sft CONFIG --key value ...` and everything else specific to it.

- The config file is the first positional argument; flags after it override it (FRAMEWORK_FACTS).
- A local model folder needs `--model_type` (auto-detection finds ['qwen2', 'qwen2_gte'] for Qwen2) and
  `--check_model false` (else ModelScope network look-ups with retries).
- Datasets: our plugin (`--external_plugins plugins/sftpack_swift_datasets.py`) registers dataset_info/ entries.
- `include_num_input_tokens_seen` is parsed as a bool: true counts all tokens, padding included; the non-padding
  figure is then an ESTIMATE (samples seen x Swift's mean tokenised length), exact only with packing.
- GPU memory: `memory(GiB)` in logging.jsonl = torch max reserved (Swift logs no allocated figure).
- Saves LoRA adapters and full models only in `output_dir/checkpoint-N/`.
- Several processes or nodes: `swift sft` runs `python -m torch.distributed.run` itself when NPROC_PER_NODE or
  NNODES is set (swift/cli/main.py), passing NNODES/NODE_RANK/MASTER_ADDR/MASTER_PORT on: nothing more needed.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

from sftpack import parity
from sftpack.frameworks.base import Adapter, Config, MemoryTraits, Sample
from sftpack.frameworks.common import SWIFT_PLUGIN, last_checkpoint, text
from sftpack.frameworks.logs import GIB_TO_MIB, TrainLog, max_number

LOG = "logging.jsonl"
_PARAMS = re.compile(r"([\d.]+)M Params \(([\d.]+)M Trainable \[([\d.]+)%\]\)")
_DATASET = re.compile(r"^([\d.]+)±")
# Swift's model types for a config.json `model_type` whose auto-detection is ambiguous.
MODEL_TYPES = {"qwen2": "qwen2"}


# -- memory traits (sftpack estimate): see base.MemoryTraits for the table ----------------------------------
def _swift_weight_dtype(cfg: Config, model_dtype: str | None, on_gpu: bool) -> str:
    return str(cfg.get("torch_dtype") or model_dtype or "bfloat16")


def _swift_autocast(cfg: Config, weight_dtype: str) -> str | None:
    if cfg.get("bf16") is not None or cfg.get("fp16") is not None:
        return "bfloat16" if cfg.get("bf16") else "float16" if cfg.get("fp16") else None
    return "bfloat16" if weight_dtype == "bfloat16" else "float16"   # fp16 AMP for fp16 *and* fp32 weights


def _swift_unsupported(cfg: Config) -> list[str]:
    keys = ("quant_bits", "quant_method", "use_galore", "lisa_activated_layers", "sequence_parallel_size")
    found = [f"{key}: {cfg[key]}" for key in keys if cfg.get(key) and cfg.get(key) != 1]
    if str(cfg.get("tuner_backend") or "peft") != "peft":
        found.append(f"tuner_backend: {cfg['tuner_backend']}")
    return found


MEMORY_TRAITS = MemoryTraits(
    method_key="tuner_type",
    weight_dtype=_swift_weight_dtype,
    autocast_dtype=_swift_autocast,
    upcast_trainable=lambda cfg: False,
    lora_dtype=lambda cfg: cfg.get("lora_dtype"),
    gradient_checkpointing=lambda cfg: bool(cfg.get("gradient_checkpointing", True)),
    checkpointing_before_adapter=False,
    checkpointing_inputs="embedding_hook",
    use_reentrant=lambda cfg: bool(((cfg.get("gradient_checkpointing_kwargs") or {}).get("use_reentrant", True))
                                   if isinstance(cfg.get("gradient_checkpointing_kwargs"), dict) else True),
    attention=lambda cfg: {"eager": "eager", "flash_attn": "flash", "flash_attention_2": "flash"}.get(
        str(cfg.get("attn_impl") or "sdpa"), "sdpa"),
    liger=lambda cfg: bool(cfg.get("use_liger_kernel", False)),
    packing=lambda cfg: "padding_free" if (cfg.get("packing") or cfg.get("padding_free")) else "none",
    pad_to_multiple_of=1,
    logits_to_keep=lambda cfg: cfg.get("use_logits_to_keep") is not False,
    accuracy_from_logits=True,
    upcast_layernorm=lambda cfg: False,
    upcast_lmhead_output=lambda cfg: False,
    max_length_default=lambda cfg, model: int(model.get("max_position_embeddings") or 32768),
    accumulation_default=lambda batch: max(1, math.ceil(16 / batch)),
    unsupported=_swift_unsupported,
    max_length_key="max_length",
    changes={
        "gradient_checkpointing": {"gradient_checkpointing": True},
        "liger": {"use_liger_kernel": True},
        "optim_8bit": {"optim": "adamw_bnb_8bit"},
        "lora": {"tuner_type": "lora", "lora_rank": 16, "lora_alpha": 32, "target_modules": ["all-linear"]},
    },
)


class Swift(Adapter):
    memory_traits = MEMORY_TRAITS
    name, short, cli, package = "swift", "Swift", ("swift", "sft"), "ms-swift"
    harness_keys = ("model", "output_dir", "include_num_input_tokens_seen", "external_plugins", "add_version")
    log_file, raw_logs = LOG, (LOG, "args.json")
    tiny_cpu = {
        "model_type": "qwen2",                 # auto-detection finds two candidates for a local folder
        "check_model": False,                  # else ~7 s of ModelScope network retries
        "torch_dtype": "float32",
        "dataset_num_proc": 1,
        "dataloader_num_workers": 0,
        "dataloader_persistent_workers": False,  # required together with 0 workers
    }
    model_key, config_keys = "model", ("model", "tuner_type")

    def command(self, config: Path, overrides: Mapping[str, Any], kind: str = "sft") -> list[str]:
        cli = self._cli()
        if kind == "pt":   # `swift pt`: SftArguments + use_chat_template false, loss on every token
            cli[-1] = "pt"
        cmd = cli + [str(config)]
        for key, value in overrides.items():
            cmd += [f"--{key}"] + ([text(v) for v in value] if isinstance(value, (list, tuple)) else [text(value)])
        return cmd

    def continue_adapter(self, adapter: Path) -> dict[str, Any]:
        # swift/pipelines/train/tuner.py: `adapters` (one) is loaded with is_trainable=True
        return {"adapters": str(adapter)}

    def run_overrides(self, model: Path, output_dir: Path) -> dict[str, Any]:
        # include_num_input_tokens_seen is a bool to Swift: true = all tokens (see parse_log).
        return {"model": model, "output_dir": output_dir, "include_num_input_tokens_seen": True,
                "external_plugins": [SWIFT_PLUGIN], "add_version": False}

    def local_model_overrides(self, model: Path) -> dict[str, Any]:
        flags: dict[str, Any] = {"check_model": False}
        try:
            model_type = json.loads((Path(model) / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError):
            model_type = None
        if model_type in MODEL_TYPES:
            flags["model_type"] = MODEL_TYPES[model_type]
        return flags

    def normalise(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return parity.normalise_swift(config)

    def encoder(self, config: Mapping[str, Any], tokenizer: Path | str):
        """Swift's template in training mode, as `swift sft` encodes each row (a row too long for `max_length`
        with truncation_strategy delete, Swift's default, is refused: ValueError, as Swift drops it)."""
        from swift.model import get_processor
        from swift.template import get_template

        model_type = config.get("model_type") or self.local_model_overrides(Path(tokenizer)).get("model_type")
        processor = get_processor(str(tokenizer), model_type=model_type)
        strategy = config.get("truncation_strategy", "delete")  # Swift's 'delete' = the template raises, row dropped
        template = get_template(processor, default_system=config.get("system"), max_length=config.get("max_length"),
                                template_type=config.get("template"),
                                truncation_strategy="raise" if strategy == "delete" else strategy)
        template.set_mode("train")

        def encode(messages: list[dict[str, str]]) -> Sample:
            try:
                encoded = template.encode({"messages": [dict(message) for message in messages]})
            except Exception as err:  # noqa: BLE001 - Swift's MaxLengthError and its kin: the row is dropped
                raise ValueError(f"Swift refuses it: {err}") from None
            return Sample.of(encoded["input_ids"], encoded["labels"],
                             lambda part: processor.decode(part, skip_special_tokens=False))

        return encode

    def speed_options(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"attention": config.get("attn_impl") or "auto",
                "liger_kernel": bool(config.get("use_liger_kernel", False)),
                "gradient_checkpointing": bool(config.get("gradient_checkpointing", True)),
                "packing": bool(config.get("packing", False)),
                "packing_without_cross_attention": bool(config.get("packing", False)),  # padding-free packing
                "deepspeed": config.get("deepspeed"), "fsdp": config.get("fsdp")}

    def parse_log(self, output_dir: Path, stdout: str, on_gpu: bool, samples_per_step: int | None,
                  padding_free: bool) -> TrainLog:
        log, rows = self._new_log(output_dir)
        losses = []
        for row in (r for r in rows if "global_step/max_steps" in r):
            step, total = (int(x) for x in str(row["global_step/max_steps"]).split("/"))
            log.steps, log.max_steps = max(log.steps or 0, step), total
            if isinstance(row.get("loss"), (int, float)):
                losses.append([step, row["loss"]])
        log.loss_curve = losses
        log.final_loss = losses[-1][1] if losses else None
        summary = next((r for r in rows if "train_runtime" in r), {})
        log.train_runtime_s = summary.get("train_runtime")
        log.samples_per_s = summary.get("train_samples_per_second")
        log.train_loss_mean = summary.get("train_loss")
        if on_gpu:
            memory = max_number([r.get("memory(GiB)") for r in rows])
            log.torch_peak_reserved_mib = memory * GIB_TO_MIB if memory else None
        seen = [r["num_input_tokens_seen"] for r in rows if isinstance(r.get("num_input_tokens_seen"), int)]
        final = next((r for r in reversed(rows) if "model_parameter_info" in r), {})
        match = _DATASET.match(str(final.get("train_dataset", "")))
        log.dataset_mean_tokens = float(match.group(1)) if match else None
        if seen:
            log.tokens_seen = max(seen)
            log.tokens_counted = "padding_free" if padding_free else "all_including_padding"
        if padding_free and log.tokens_seen:
            log.non_padding_tokens = float(log.tokens_seen)
            log.non_padding_tokens_source = "swift num_input_tokens_seen (packing is padding-free: exact)"
        elif samples_per_step and log.steps and log.dataset_mean_tokens:
            log.non_padding_tokens = samples_per_step * log.steps * log.dataset_mean_tokens
            log.non_padding_tokens_source = ("ESTIMATE: samples seen x swift's mean tokenised length of the "
                                             "training set (swift logs only padded token counts)")
        match = _PARAMS.search(str(final.get("model_parameter_info", ""))) or _PARAMS.search(stdout)
        if match:
            log.total_params = round(float(match.group(1)) * 1e6)
            log.trainable_params = round(float(match.group(2)) * 1e6)
            log.trainable_percent = float(match.group(3))
            log.params_source = "swift model_parameter_info (millions, 4 decimals: +-50 parameters)"
        return log

    def trained_model(self, output_dir: Path) -> Path:
        return last_checkpoint(output_dir)


def end_process_group_at_exit() -> None:
    """In a Swift process (called by plugins/sftpack_swift_datasets.py, which every shipped Swift config loads in
    each rank): destroy torch.distributed's process group when the process exits, as LLaMA-Factory's run_exp does
    after training. ms-swift 4.5.3 leaves it to interpreter shutdown, where gloo's threads can be torn down unjoined:
    'terminate called without an active exception', SIGABRT of a rank after its last checkpoint was saved, and
    torchrun reports the run as failed (seen once in ~5 CPU DDP runs of tests/test_distributed_cpu.py)."""
    import atexit
    import sys

    def end() -> None:
        if "torch.distributed" not in sys.modules:   # nothing distributed was imported: nothing to end
            return
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - exit-time clean-up must never change how the run ends
            pass

    atexit.register(end)
