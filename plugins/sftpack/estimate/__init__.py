"""`sftpack estimate`: the peak GPU memory of a LLaMA-Factory or ms-swift training config, without a GPU.

    sftpack estimate train_configs/qwen_gsm8k.yaml [KEY=VALUE ...] [--gpu-mem 8GiB] [--dataset NAME] [--json PATH]
    python -m sftpack.estimate ...                     (the same)

    from sftpack.estimate import estimate
    report = estimate(Path("train_configs/qwen_gsm8k.yaml"), gpu_mem=8 * 2**30)

The model is built on the meta device from its config.json (or a named shape when a hub id is not available
locally), prepared as its framework prepares it, and one steady-state training step (forward, the framework's loss,
backward, clipping, the optimizer step with its states) runs on FakeTensors under a dispatch mode that records
every tensor allocation and free: the peak, and the breakdown at the peak. The same tracer on a real CPU step gives
the same bytes (tests/test_estimate.py); benchmarks/estimate_cpu.py compares it with torch's CPU allocator.

| module | what |
| --- | --- |
| `cli.py` | the command: options, the table, `--json` |
| `core.py` | one config's estimate: plan, worst/typical micro-batch, GPU terms, the fit search |
| `plan.py` | the config read through its adapter (`normalise`) and traits, as one framework-free MemoryPlan |
| `model.py` | config.json: local folder, hub cache, or a tiny_model shape |
| `step.py` | the model built on meta, materialised fake or real, one training step traced |
| `tracer.py` | the TorchDispatchMode: live bytes per category, the peak and its breakdown |
| `kernels.py` | memory twins of Liger's kernels and bitsandbytes' 8-bit AdamW (they cannot run here) |
| `lengths.py` | micro-batch shapes from the config, or from a dataset's token lengths |
| `gpu.py` | GPU-side terms the trace cannot see (cuBLAS workspace, attention workspaces, reserved, context) |

Framework packages (torch, transformers, peft) are imported inside the functions.
"""

from __future__ import annotations

from typing import Any


def add_parser(subparsers):
    """Add the `estimate` subcommand to an argparse subparsers object; see sftpack.estimate.cli."""
    from sftpack.estimate.cli import add_parser as _add_parser

    return _add_parser(subparsers)


def estimate(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See sftpack.estimate.core.estimate."""
    from sftpack.estimate.core import estimate as _estimate

    return _estimate(*args, **kwargs)
