"""The interface every framework adapter implements: everything framework-specific, in one object per framework.

    from sftpack.frameworks import adapter
    lf = adapter("llamafactory")
    cmd = lf.command(config, {**lf.run_overrides(model, output_dir), **user_overrides})
    log = lf.parse_log(output_dir, stdout, on_gpu=False, samples_per_step=4, padding_free=False)

Callers (the training core, bench, pipeline, fairness) never branch on a framework's name: they ask its adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        return cls(list(input_ids), list(labels), decode(input_ids[:start]), decode(input_ids[start:]))


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

    # -- the command ----------------------------------------------------------------------------------------
    def command(self, config: Path, overrides: Mapping[str, Any]) -> list[str]:
        raise NotImplementedError

    def run_overrides(self, model: Path, output_dir: Path) -> dict[str, Any]:
        """The harness keys' values for one run (model, output folder, token counting, dataset plugin)."""
        raise NotImplementedError

    def local_model_overrides(self, model: Path) -> dict[str, Any]:
        """What the framework needs to load a local model folder without a hub; a spec's overrides win."""
        return {}

    def env(self, gpus: int) -> dict[str, str]:
        """Environment variables the framework needs for a run on `gpus` GPUs (on top of the offline ones)."""
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
