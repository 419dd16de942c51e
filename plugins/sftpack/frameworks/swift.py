"""ms-swift 4.5.3: `swift sft CONFIG --key value ...` and everything else specific to it.

- The config file is the first positional argument; flags after it override it (FRAMEWORK_FACTS).
- A local model folder needs `--model_type` (auto-detection finds ['qwen2', 'qwen2_gte'] for Qwen2) and
  `--check_model false` (else ModelScope network look-ups with retries).
- Datasets: our plugin (`--external_plugins plugins/sftpack_swift_datasets.py`) registers dataset_info/ entries.
- `include_num_input_tokens_seen` is parsed as a bool: true counts all tokens, padding included; the non-padding
  figure is then an ESTIMATE (samples seen x Swift's mean tokenised length), exact only with packing.
- GPU memory: `memory(GiB)` in logging.jsonl = torch max reserved (Swift logs no allocated figure).
- Saves LoRA adapters and full models only in `output_dir/checkpoint-N/`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from sftpack import parity
from sftpack.frameworks.base import Adapter, Sample
from sftpack.frameworks.common import SWIFT_PLUGIN, last_checkpoint, text
from sftpack.frameworks.logs import GIB_TO_MIB, TrainLog, max_number

LOG = "logging.jsonl"
_PARAMS = re.compile(r"([\d.]+)M Params \(([\d.]+)M Trainable \[([\d.]+)%\]\)")
_DATASET = re.compile(r"^([\d.]+)±")
# Swift's model types for a config.json `model_type` whose auto-detection is ambiguous.
MODEL_TYPES = {"qwen2": "qwen2"}


class Swift(Adapter):
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

    def command(self, config: Path, overrides: Mapping[str, Any]) -> list[str]:
        cmd = self._cli() + [str(config)]
        for key, value in overrides.items():
            cmd += [f"--{key}"] + ([text(v) for v in value] if isinstance(value, (list, tuple)) else [text(value)])
        return cmd

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

    def encode_sample(self, config: Mapping[str, Any], tokenizer: Path | str,
                      messages: list[dict[str, str]]) -> Sample:
        """Swift's template in training mode on one sample, as `swift sft` encodes a row."""
        from swift.model import get_processor
        from swift.template import get_template

        model_type = config.get("model_type") or self.local_model_overrides(Path(tokenizer)).get("model_type")
        processor = get_processor(str(tokenizer), model_type=model_type)
        strategy = config.get("truncation_strategy", "delete")  # Swift's 'delete' = the template raises, row dropped
        template = get_template(processor, default_system=config.get("system"), max_length=config.get("max_length"),
                                template_type=config.get("template"),
                                truncation_strategy="raise" if strategy == "delete" else strategy)
        template.set_mode("train")
        encoded = template.encode({"messages": [dict(message) for message in messages]})
        return Sample.of(encoded["input_ids"], encoded["labels"],
                         lambda part: processor.decode(part, skip_special_tokens=False))

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
