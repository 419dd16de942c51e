"""GPU-side memory the trace cannot see, as named terms with documented defaults (the GPU kit calibrates them).

    terms = GpuTerms()                                   # or GpuTerms(cuda_context_mib=610, ...) once measured
    predicted = predict(traced_peak_bytes, terms, attention_backward_workspace(model_config, batch, plan))

The trace counts every tensor the step allocates, each rounded up to the CUDA caching allocator's 512-byte blocks
(in the trace: sftpack.estimate.step.GPU_BLOCK_BYTES). On a GPU the process also holds:

| term | in torch.cuda.max_memory_allocated | default | what it is |
| --- | --- | --- | --- |
| `cublas_workspace_mib` | yes | 32 MiB | cuBLAS/cuBLASLt workspace, allocated through the caching allocator on the first matmul (Hopper default `CUBLAS_WORKSPACE_CONFIG=:4096:8`: 8 x 4 MiB) |
| attention backward workspace | yes | computed | flash-attention 2's backward allocates inside the kernel a fp32 dQ accumulator (rows x round128(L) x heads x head_dim), the softmax row sums, and with grouped-query attention dK/dV expanded to every query head; invisible to a dispatch-level trace; added at full size (conservative: one layer's at a time) |
| `reserved_overhead` | no (max_memory_reserved) | 0.10 | the caching allocator keeps whole segments (2 MiB for small blocks, 20 MiB or the rounded size for large ones) and does not return freed blocks: reserved = allocated x (1 + this) at the peak; 5-20 % is typical for Trainer loops |
| `cuda_context_mib` | no (NVML only) | 512 MiB | the CUDA context and loaded kernels of the training process (torch 2.x, CUDA 12 lazy loading, H100/H200: 0.4-0.6 GiB) |

A run fits a GPU of M bytes when reserved + context <= M. Not included: NCCL buffers (multi-GPU), Triton's and
torch.compile's caches, another process on the same GPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

MIB = 1024 ** 2
GIB = 1024 ** 3


@dataclass(frozen=True)
class GpuTerms:
    cublas_workspace_mib: float = 32.0
    reserved_overhead: float = 0.10
    cuda_context_mib: float = 512.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def attention_backward_workspace(model_config: Mapping[str, Any], rows: int, length: int, dtype_bytes: int,
                                 attention: str) -> int:
    """Bytes flash-attention 2's backward allocates inside the kernel for one layer (0 for eager attention)."""
    if attention == "eager":
        return 0
    heads = int(model_config["num_attention_heads"])
    kv_heads = int(model_config.get("num_key_value_heads") or heads)
    head_dim = int(model_config.get("head_dim") or int(model_config["hidden_size"]) // heads)
    rounded = math.ceil(length / 128) * 128
    dq_accum = rows * rounded * heads * head_dim * 4
    softmax_sums = rows * heads * rounded * 4
    expanded_kv = 2 * rows * length * heads * head_dim * dtype_bytes if kv_heads < heads else 0
    return dq_accum + softmax_sums + expanded_kv


def predict(traced_bytes: int, terms: GpuTerms, attention_workspace: int) -> dict[str, int]:
    """Predicted torch max allocated, max reserved, and device memory (NVML) of the run, in bytes."""
    allocated = traced_bytes + int(terms.cublas_workspace_mib * MIB) + attention_workspace
    reserved = int(allocated * (1 + terms.reserved_overhead))
    return {"traced_bytes": traced_bytes, "cublas_workspace_bytes": int(terms.cublas_workspace_mib * MIB),
            "attention_workspace_bytes": attention_workspace, "allocated_bytes": allocated,
            "reserved_bytes": reserved, "cuda_context_bytes": int(terms.cuda_context_mib * MIB),
            "device_bytes": reserved + int(terms.cuda_context_mib * MIB)}


def parse_size(text: str) -> int:
    """'8GiB', '8 GiB', '8GB' (10^9), '8192MiB', '8G' (GiB) -> bytes."""
    units = {"": 1, "b": 1, "kib": 1024, "mib": MIB, "gib": GIB, "tib": 1024 * GIB, "k": 1024, "m": MIB, "g": GIB,
             "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4}
    raw = str(text).strip().lower().replace(" ", "")
    number = raw.rstrip("kmgtib")
    unit = raw[len(number):]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a memory size: {text!r} (expected e.g. 8GiB, 80GB, 24576MiB)") from None
    if unit not in units or value <= 0:
        raise ValueError(f"not a memory size: {text!r} (expected e.g. 8GiB, 80GB, 24576MiB)")
    return int(value * units[unit])


def visible_gpu_bytes() -> tuple[int | None, str]:
    """(total memory of the first GPU this process sees, how it was found); (None, why) without one.

    `SFTPACK_GPU_MEM` (e.g. 80GiB) wins: for GPUs NVML cannot see and for tests. Else NVML for the first id in
    CUDA_VISIBLE_DEVICES, else torch.cuda.
    """
    import os

    forced = os.environ.get("SFTPACK_GPU_MEM")
    if forced:
        return parse_size(forced), f"SFTPACK_GPU_MEM={forced}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return None, "CUDA_VISIBLE_DEVICES hides every GPU"
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            first = (visible or "0").split(",")[0].strip()
            handle = (pynvml.nvmlDeviceGetHandleByUUID(first) if first.startswith(("GPU-", "MIG-"))
                      else pynvml.nvmlDeviceGetHandleByIndex(int(first)))
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).total), f"NVML: {name}"
        finally:
            pynvml.nvmlShutdown()
    except Exception:   # no pynvml, no driver, no such device: try torch
        pass
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return int(props.total_memory), f"torch.cuda: {props.name}"
    except Exception as err:
        return None, f"torch.cuda failed: {err}"
    return None, "no GPU visible (NVML and torch.cuda see none)"
