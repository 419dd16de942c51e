"""The allocation tracer: a TorchDispatchMode that sees every tensor storage an op creates and when it is freed.

    tracer = AllocationTracer(round_to=512)          # 512: the CUDA caching allocator's block rounding
    with fake_mode, tracer:                          # or without a fake mode: a real step on the CPU
        tracer.category = "activations"
        ...one training step...
    tracer.peak_bytes, tracer.peak_breakdown, tracer.peak_phase

Every op output's storage is recorded once (views and in-place results share it) with the category current when
it was created; a weak reference to the storage subtracts its bytes when the storage is freed. The peak is checked
after every op, the only moment memory grows. The same code runs on FakeTensors (no memory at all) and on real
CPU tensors, which is what makes the CPU exactness proof possible (tests/test_estimate.py).

Why not torch.distributed._tools.mem_tracker.MemTracker (torch 2.13): it does the same storage bookkeeping, but
updates every tracked module's peak snapshot on every op (O(modules) per op: ~1,000 modules x ~70,000 ops for a
LoRA'd Qwen2.5-1.5B step), refuses a second root forward without `reset_mod_stats`, rounds to 512 bytes only for
tensors whose device is CUDA (ours are fake CPU tensors standing in for the GPU's) and has no category for the
logits and the loss, the largest single term of a small-model SFT step. Its categories are kept: weights,
buffers, gradients, activations, temporaries, optimizer states.

Not seen (by any dispatch-level tracer): memory a kernel allocates for itself (cuBLAS workspace, flash-attention's
backward accumulators, oneDNN scratch buffers on a CPU); sftpack.estimate.gpu adds the GPU ones as named terms.
"""

from __future__ import annotations

import weakref
from functools import partial

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# The categories a storage can be recorded under, in report order.
CATEGORIES = (
    "weights_frozen",          # parameters that do not train (the base model under LoRA)
    "weights_trainable",       # parameters that train (LoRA adapters; every weight for full fine-tuning)
    "buffers",                 # registered buffers (rotary inv_freq)
    "inputs",                  # the micro-batch: input ids, labels, attention mask
    "grads",                   # .grad of the trainable parameters
    "optimizer_states",        # what the optimizer keeps between steps (AdamW exp_avg, exp_avg_sq, step)
    "activations",             # created in the forward (saved for backward) or recomputed by checkpointing
    "logits_loss",             # the LM head's logits, their fp32 copy, log-softmax, and their gradients
    "backward_temporaries",    # activation gradients and other backward intermediates
    "optimizer_temporaries",   # grad clipping and optimizer-step intermediates (foreach AdamW's sqrt(v))
    "other",
)


class _Allocation:
    __slots__ = ("size", "category", "ref")

    def __init__(self, size: int, category: str):
        self.size = size
        self.category = category
        self.ref = None


def _tensors(out):
    """The tensors of an op's output: a tensor, a tuple/list of them (nested), or none."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (tuple, list)):
        for item in out:
            yield from _tensors(item)


class AllocationTracer(TorchDispatchMode):
    """Live bytes per category, their peak and the breakdown at the peak (see the module docstring)."""

    def __init__(self, round_to: int = 1):
        super().__init__()
        self.round_to = max(int(round_to), 1)
        self.category = "other"
        self.phase = "setup"
        self.current = dict.fromkeys(CATEGORIES, 0)
        self.total = 0
        self.peak_bytes = 0
        self.peak_breakdown = dict(self.current)
        self.peak_phase = "setup"
        self.ops = 0
        self._live: dict[int, _Allocation] = {}

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def _size(self, nbytes: int) -> int:
        if self.round_to == 1 or nbytes == 0:
            return nbytes
        return -(-nbytes // self.round_to) * self.round_to

    def _add(self, category: str, nbytes: int) -> None:
        self.current[category] += nbytes
        self.total += nbytes

    def _freed(self, key: int, allocation: _Allocation, _ref) -> None:
        self._add(allocation.category, -allocation.size)
        allocation.size = 0
        self._live.pop(key, None)

    def track(self, tensor: torch.Tensor, category: str | None = None) -> None:
        """Record `tensor`'s storage under `category` (default: the current one) unless already recorded."""
        storage = tensor.untyped_storage()
        key = id(storage)
        allocation = self._live.get(key)
        size = self._size(storage.nbytes())
        if allocation is not None:
            if size != allocation.size:          # resized in place (resize_, out= ops)
                self._add(allocation.category, size - allocation.size)
                allocation.size = size
            return
        allocation = _Allocation(size, category or self.category)
        allocation.ref = weakref.ref(storage, partial(self._freed, key, allocation))
        self._live[key] = allocation
        if size:
            self._add(allocation.category, size)

    def retag(self, tensor: torch.Tensor, category: str) -> None:
        """Move `tensor`'s storage to `category` (gradients once accumulated, optimizer states once created)."""
        allocation = self._live.get(id(tensor.untyped_storage()))
        if allocation is None:
            self.track(tensor, category)
        elif allocation.category != category:
            self.current[allocation.category] -= allocation.size
            self.current[category] += allocation.size
            allocation.category = category

    def reset_peak(self) -> None:
        """Start measuring the peak from what is live now (after building the model and the optimizer states)."""
        self.peak_bytes = self.total
        self.peak_breakdown = dict(self.current)
        self.peak_phase = self.phase

    def live_bytes(self, category: str) -> int:
        return self.current[category]

    # -- the mode -------------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for tensor in _tensors(out):
            self.track(tensor)
        if self.total > self.peak_bytes:
            self.peak_bytes = self.total
            self.peak_breakdown = dict(self.current)
            self.peak_phase = self.phase
        return out
