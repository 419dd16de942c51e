"""The frameworks sftpack drives, one adapter each, plus what they share.

    from sftpack import frameworks as fw
    lf = fw.adapter("llamafactory")          # fw.ADAPTERS: {"llamafactory": LlamaFactory(), "swift": Swift()}
    cmd = lf.command(fw.LF_LORA_CONFIG, {**lf.run_overrides(model, out), "max_steps": 20})

| module | what |
| --- | --- |
| `base.py` | the Adapter interface: command, harness keys, environment, local-model flags, normalisation for the fairness check, speed options, log parsing, the trained model's folder |
| `llamafactory.py`, `swift.py` | the two adapters; the only places that know a framework's CLI, flags, defaults and logs |
| `logs.py` | TrainLog: what a run logged about itself, in one vocabulary |
| `common.py` | repo paths, the offline environment, finding a CLI, the torchrun launch shape, a logged runner |

No code outside this package branches on a framework's name (tests/test_training.py checks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftpack.errors import SftpackError
from sftpack.frameworks.base import Adapter
from sftpack.frameworks.common import (
    EVAL_TASKS,
    LF_FULL_CONFIG,
    LF_LORA_CONFIG,
    REPO_ROOT,
    SWIFT_FULL_CONFIG,
    SWIFT_LORA_CONFIG,
    SWIFT_PLUGIN,
    TRAIN_CONFIGS,
    executable,
    last_checkpoint,
    launch_shape,
    offline_env,
    run_logged,
    text,
)
from sftpack.frameworks.llamafactory import LlamaFactory
from sftpack.frameworks.swift import Swift

ADAPTERS: dict[str, Adapter] = {a.name: a for a in (LlamaFactory(), Swift())}
FRAMEWORKS = tuple(ADAPTERS)
TINY_CPU_LF = ADAPTERS["llamafactory"].tiny_cpu
TINY_CPU_SWIFT = ADAPTERS["swift"].tiny_cpu

__all__ = ["ADAPTERS", "Adapter", "EVAL_TASKS", "FRAMEWORKS", "LF_FULL_CONFIG", "LF_LORA_CONFIG", "REPO_ROOT",
           "SWIFT_FULL_CONFIG", "SWIFT_LORA_CONFIG", "SWIFT_PLUGIN", "TINY_CPU_LF", "TINY_CPU_SWIFT", "TRAIN_CONFIGS",
           "adapter", "executable", "last_checkpoint", "launch_shape", "lf_train_cmd", "offline_env",
           "run_logged",
           "swift_sft_cmd", "text", "tiny_lf_overrides", "tiny_overrides", "tiny_swift_overrides"]


def adapter(name: str) -> Adapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise SftpackError(f"framework {name!r} unknown. Expected one of {list(ADAPTERS)}") from None


def tiny_overrides(name: str, model: Path, output_dir: Path, steps: int, batch: int = 2,
                   **extra: Any) -> dict[str, Any]:
    """A shipped config of framework `name` on the tiny model for `steps` steps on a CPU (tests, quick runs)."""
    fw = adapter(name)
    return {**fw.tiny_cpu, **fw.run_overrides(model, output_dir), "max_steps": steps,
            "per_device_train_batch_size": batch, "gradient_accumulation_steps": 1, "logging_steps": 1,
            "save_steps": steps, **extra}


def tiny_lf_overrides(model: Path, output_dir: Path, steps: int, batch: int = 2, **extra: Any) -> dict[str, Any]:
    return tiny_overrides("llamafactory", model, output_dir, steps, batch, **extra)


def tiny_swift_overrides(model: Path, output_dir: Path, steps: int, batch: int = 2, **extra: Any) -> dict[str, Any]:
    return tiny_overrides("swift", model, output_dir, steps, batch, **extra)


def lf_train_cmd(config: Path, overrides: dict[str, Any]) -> list[str]:
    """`llamafactory-cli train CONFIG key=value ...`."""
    return ADAPTERS["llamafactory"].command(config, overrides)


def swift_sft_cmd(config: Path, overrides: dict[str, Any]) -> list[str]:
    """`swift sft CONFIG --key value ...`."""
    return ADAPTERS["swift"].command(config, overrides)
