"""The interface every framework adapter implements: everything framework-specific, in one object per framework.

    from sftpack.frameworks import adapter
    lf = adapter("llamafactory")
    cmd = lf.command(config, {**lf.run_overrides(model, output_dir), **user_overrides})
    log = lf.parse_log(output_dir, stdout, on_gpu=False, samples_per_step=4, padding_free=False)

Callers (the training core, bench, pipeline, fairness) never branch on a framework's name: they ask its adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from sftpack.frameworks.common import executable
from sftpack.frameworks.logs import TrainLog, read_jsonl

IGNORE_INDEX = -100  # the label of a token trained on nothing (both frameworks)


@dataclass
class Sample:
    """One chat sample as a framework's training encodes it: ids, labels, and the two parts decoded (special
    tokens kept) — `prompt` (no labels: what the model is given at inference) and `response`."""

    input_ids: list[int]
    labels: list[int]
    prompt: str
    response: str

    @classmethod
    def of(cls, input_ids: list[int], labels: list[int], decode: Callable[[list[int]], str]) -> "Sample":
        """Split at the start of the last labelled run: with several assistant turns, everything before the last
        answer (earlier turns included) is the prompt, as at inference on that turn."""
        start = len(labels)
        while start > 0 and labels[start - 1] == IGNORE_INDEX:
            start -= 1
        while start > 0 and labels[start - 1] != IGNORE_INDEX:
            start -= 1
        return cls(list(input_ids), list(labels), decode(input_ids[:start]), decode(input_ids[start:]))


Config = Mapping[str, Any]


@dataclass(frozen=True)
class MemoryTraits:
    """What a framework does to a training step's memory that its config keys alone do not say (read by
    `sftpack estimate`; each adapter's `memory_traits`). Each callable reads the merged config (YAML + overrides)
    with the framework's own key names; the values are what the installed versions do, with their source:

    | trait | LLaMA-Factory 0.9.5 | ms-swift 4.5.3 |
    | --- | --- | --- |
    | weights' dtype | `bf16`/`pure_bf16` -> bf16, `fp16` -> fp16, else config.json's dtype on a GPU (`infer_optim_dtype`), fp32 on a CPU (`hparams/parser.py`, `model/patcher.py`) | `torch_dtype`, else config.json's (`model_args.py`) |
    | mixed precision (AMP autocast) | `bf16`/`fp16` | bf16 weights -> bf16; fp16 **or fp32** weights -> fp16 (`_init_mixed_precision`) |
    | trainable params upcast to fp32 | yes, LoRA and full, unless `pure_bf16`, `use_badam` or ZeRO-3 (`model/adapter.py` `init_adapter`) | no (full trains in the weights' dtype); LoRA adapters fp32 by PEFT's `autocast_adapter_dtype` unless `lora_dtype` |
    | layernorm / lm-head upcast | `upcast_layernorm`, `upcast_lmhead_output` (`model_utils/checkpointing.py`) | none |
    | gradient checkpointing | on unless `disable_gradient_checkpointing`; enabled **before** LoRA; only layers with trainable params; the first float argument made to require grad in place; `use_reentrant_gc` (default true) | `gradient_checkpointing` (default true); enabled **after** LoRA with `enable_input_require_grads()`; reentrant on one GPU (`trainers/mixin.py` `_fix_gradient_checkpointing`) |
    | loss path | the model's loss on every position (`ForCausalLMLoss`: logits upcast to fp32) | the same loss, but logits only from the batch's first labelled token (`use_logits_to_keep`, default on), then token accuracy from the logits' argmax (`_compute_acc`) |
    | Liger kernels | `enable_liger_kernel` (RoPE, RMSNorm, SwiGLU, fused linear cross-entropy) | `use_liger_kernel` (the same through transformers' Trainer) |
    | packing | `packing` (rows of `cutoff_len`), `neat_packing` | `packing` (padding-free: one row of the batch's tokens) |
    | padding | to the longest row, rounded up to a multiple of 8 (`train/sft/workflow.py`) | to the longest row |
    | unset max length | `cutoff_len` 2048 | the model's `max_position_embeddings` |
    | unset accumulation | 1 | ceil(16 / batch) (`trainers/arguments.py`) |
    """

    method_key: str
    weight_dtype: Callable[[Config, str | None, bool], str]   # (cfg, config.json torch_dtype, on a GPU) -> dtype
    autocast_dtype: Callable[[Config, str], str | None]       # (cfg, weights' dtype) -> AMP dtype, None: no AMP
    upcast_trainable: Callable[[Config], bool]                # trainable params cast to fp32 after the adapter
    lora_dtype: Callable[[Config], str | None]                # the adapters' dtype; None: PEFT's (fp32 on half)
    gradient_checkpointing: Callable[[Config], bool]
    checkpointing_before_adapter: bool               # enabled before (LF) or after (Swift) LoRA is applied
    checkpointing_inputs: str                        # "first_float_arg": LF's wrapper; "embedding_hook": HF's
    use_reentrant: Callable[[Config], bool]
    attention: Callable[[Config], str]               # "sdpa" | "eager" | "flash" (flash-attn 2: traced as SDPA)
    liger: Callable[[Config], bool]
    packing: Callable[[Config], str]                 # "none" | "rows" | "padding_free"
    pad_to_multiple_of: int
    logits_to_keep: Callable[[Config], bool]         # logits only from the first labelled token
    accuracy_from_logits: bool                       # an argmax over the logits every step
    upcast_layernorm: Callable[[Config], bool]
    upcast_lmhead_output: Callable[[Config], bool]
    max_length_default: Callable[[Config, Mapping[str, Any]], int]   # (cfg, config.json) when unset
    accumulation_default: Callable[[int], int]       # per-device batch -> accumulation when unset
    unsupported: Callable[[Config], list[str]]       # settings the trace does not model (refused, listed)
    # The framework's keys for the changes the fit search proposes.
    batch_key: str = "per_device_train_batch_size"
    accumulation_key: str = "gradient_accumulation_steps"
    max_length_key: str = ""
    changes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class Adapter:
    name: str = ""              # as in suites and pipelines: "llamafactory" | "swift"
    short: str = ""             # in reports: "LF" | "Swift"
    cli: tuple[str, ...] = ()   # the console script and its sub-command
    package: str = ""           # its distribution on PyPI (versions in records and stage keys)
    # Keys the training core sets in every run (model, output folder, token counting, ...); a spec may not.
    harness_keys: tuple[str, ...] = ()
    log_file: str = ""                    # the framework's per-step JSONL log in output_dir
    raw_logs: tuple[str, ...] = ()        # the framework's own log files, copied next to result.json
    tiny_cpu: Mapping[str, Any] = {}      # overrides every shipped config needs on the tiny model on a CPU
    model_key: str = ""                   # the config key naming the model (its tokenizer renders the chat format)
    config_keys: tuple[str, ...] = ()     # keys only this framework's training configs have
    memory_traits: MemoryTraits | None = None   # for `sftpack estimate`
    kind_keys: tuple[str, ...] = ()       # config keys `command(kind=...)` sets (a pipeline's `kind` owns them)

    # -- the command ----------------------------------------------------------------------------------------
    def command(self, config: Path, overrides: Mapping[str, Any], kind: str = "sft") -> list[str]:
        """The training command: `kind` "sft" (supervised fine-tuning) or "pt" (pretraining on plain text: a
        dataset_info entry `columns: {prompt: text}`)."""
        raise NotImplementedError

    def continue_adapter(self, adapter: Path) -> dict[str, Any]:
        """Overrides that load the LoRA adapter folder `adapter` on the base model and train it further."""
        raise NotImplementedError

    def run_overrides(self, model: Path, output_dir: Path) -> dict[str, Any]:
        """The harness keys' values for one run (model, output folder, token counting, dataset plugin)."""
        raise NotImplementedError

    def local_model_overrides(self, model: Path) -> dict[str, Any]:
        """What the framework needs to load a local model folder without a hub; a spec's overrides win."""
        return {}

    def env(self, gpus: int, distributed: bool | None = None,
            base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment variables the framework needs for a run on `gpus` GPUs (on top of the offline ones and
        torchrun's variables); `distributed` (default: more than one GPU): launched by torchrun — several
        processes or nodes (common.launch_shape), on GPUs or a CPU; `base`: the caller's environment."""
        return {}

    # -- the config's meaning -------------------------------------------------------------------------------
    def normalise(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The merged config in sftpack.parity's shared vocabulary (framework defaults filled in)."""
        raise NotImplementedError

    def speed_options(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Attention kernel, Liger, gradient checkpointing, packing, DeepSpeed/FSDP in one vocabulary."""
        raise NotImplementedError

    def owns(self, config: Mapping[str, Any]) -> bool:
        """Whether `config` is a training config of this framework."""
        return any(key in config for key in self.config_keys)

    # -- the chat format -----------------------------------------------------------------------------------
    def encode_sample(self, config: Mapping[str, Any], tokenizer: Path | str,
                      messages: list[dict[str, str]]) -> Sample:
        """`messages` (a leading system turn optional, the last turn the assistant's) encoded as this framework's
        training encodes them with `config`'s template and system prompt (its own, else the template's
        default), with the tokenizer of the model folder `tokenizer`."""
        return self.encoder(config, tokenizer)(messages)

    def encoder(self, config: Mapping[str, Any], tokenizer: Path | str) -> Callable[[list[dict[str, str]]], Sample]:
        """`encode_sample` for many samples: the tokenizer and template are loaded once. A sample the framework
        refuses (too long with Swift's `truncation_strategy: delete`) raises ValueError."""
        raise NotImplementedError

    # -- after the run -------------------------------------------------------------------------------------
    def parse_log(self, output_dir: Path, stdout: str, on_gpu: bool, samples_per_step: int | None,
                  padding_free: bool):
        """The run's own logs as a sftpack.frameworks.logs.TrainLog."""
        raise NotImplementedError

    def _new_log(self, output_dir: Path) -> tuple[TrainLog, list[dict[str, Any]]]:
        """An empty TrainLog and the rows of the framework's JSONL log (a warning when there are none)."""
        log, rows = TrainLog(), read_jsonl(output_dir / self.log_file)
        if not rows:
            log.warnings.append(f"no {self.log_file} in {output_dir}")
        return log, rows

    def trained_model(self, output_dir: Path) -> Path:
        """The folder lm-eval loads (a full model, or a LoRA adapter for `peft=`)."""
        return output_dir

    # -- shared helpers --------------------------------------------------------------------------------------
    def _cli(self) -> list[str]:
        return [executable(self.cli[0]), *self.cli[1:]]

    def __repr__(self) -> str:
        return f"<{self.short} adapter>"
