"""Memory twins of kernels that cannot run here (Liger's Triton kernels, bitsandbytes' 8-bit optimizers).

Each twin allocates, saves for backward and frees exactly the tensors the real kernel does (read from liger-kernel
0.6 `ops/{rms_norm,swiglu,rope,fused_linear_cross_entropy}.py` and bitsandbytes 0.45 `optim/optimizer.py`), and
computes nothing useful: they exist to be traced on FakeTensors. Memory a kernel keeps inside itself (Triton's
registers, shared memory) is not tensor memory and is not modelled.

    patch_liger(model)      # RMSNorm, SwiGLU MLP, RoPE and the fused linear cross-entropy loss, like
                            # liger_kernel.transformers.apply_liger_kernel_to_qwen2(model=...)
    Bnb8bitAdamW(params, lr=1e-4, optim_bits=8)   # bitsandbytes.optim.AdamW's states
"""

from __future__ import annotations

import contextlib
import math
from types import MethodType

import torch
from torch import nn

# The GPU's streaming multiprocessors: Liger's RMSNorm backward keeps one fp32 row of dW per SM (H100/H200: 132).
SM_COUNT = 132
# Model types whose HF modules Liger patches the way these twins assume (RMSNorm, gate/up/down SwiGLU, RoPE).
LIGER_MODEL_TYPES = ("qwen2", "qwen3", "llama", "mistral")


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


class _RMSNorm(torch.autograd.Function):
    """LigerRMSNorm (casting mode "llama", in_place=True): Y and a fp32 RSTD per row; saves X, W, RSTD."""

    @staticmethod
    def forward(ctx, x, weight):
        rows = x.numel() // x.shape[-1]
        y = torch.empty_like(x)
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        _, weight, _ = ctx.saved_tensors
        grad_w = None
        if ctx.needs_input_grad[1]:   # one fp32 partial row per SM, summed
            grad_w = torch.empty((SM_COUNT, weight.shape[-1]), dtype=torch.float32,
                                 device=weight.device).sum(dim=0).to(weight.dtype)
        return grad_y, grad_w          # dX written into dY (in_place=True)


class _SiLUMul(torch.autograd.Function):
    """LigerSiLUMulFunction: c = silu(a) * b; saves a and b; the backward writes da, db into a, b in place."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return torch.empty_like(a)

    @staticmethod
    def backward(ctx, grad_c):
        a, b = ctx.saved_tensors
        return a, b


class _Rope(torch.autograd.Function):
    """LigerRopeFunction: rotates q and k in place in their (batch, seq, heads, dim) layout; saves cos, sin."""

    @staticmethod
    def forward(ctx, q, k, cos, sin):
        ctx.save_for_backward(cos, sin)
        return q.view_as(q), k.view_as(k)

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        return grad_q, grad_k, None, None


def _liger_rope(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
    return _Rope.apply(q, k, cos, sin)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """LigerFusedLinearCrossEntropyFunction: the loss and both gradients in the forward, chunk by chunk.

    Allocates grad_input (BT x H, the input's dtype), grad_weight (V x H, only when the head trains), a fp32 loss
    per row, and per chunk of next_pow2(BT / ceil(V / H)) rows: that chunk's logits (chunk x V) and its input
    gradient; saves grad_input and grad_weight for the backward, which only rescales them.
    """

    @staticmethod
    def forward(ctx, x, weight, compute_dtype):
        rows, hidden = x.shape
        vocab = weight.shape[0]
        chunk = _next_power_of_2(math.ceil(rows / math.ceil(vocab / hidden)))
        grad_weight = torch.zeros_like(weight) if weight.requires_grad else None
        grad_input = torch.zeros_like(x)
        loss_rows = torch.zeros(rows, dtype=torch.float32, device=x.device)
        w = weight.to(compute_dtype)          # AMP's cast of the head (the same tensor when already that dtype)
        for start in range(0, rows, chunk):
            x_chunk = x[start:start + chunk].to(compute_dtype)
            logits = x_chunk @ w.t()          # the kernel then writes d(loss)/d(logits) into it in place
            grad_input[start:start + chunk] = logits @ w
            if grad_weight is not None:
                grad_weight.addmm_(logits.t().to(grad_weight.dtype), x_chunk.to(grad_weight.dtype))
        ctx.save_for_backward(grad_input, grad_weight)
        return loss_rows.sum()

    @staticmethod
    def backward(ctx, grad_loss):
        grad_input, grad_weight = ctx.saved_tensors
        return grad_input, grad_weight, None


def _lce_forward(self, input_ids=None, labels=None, logits_to_keep=0, position_ids=None, **kwargs):
    """liger_kernel.transformers.model.qwen2.lce_forward in training: no logits, the fused loss."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    hidden = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
    region = getattr(self, "sftpack_loss_region", None)   # the tracer's "logits and loss" category, when tracing
    if region is not None:
        region()
    kept = hidden[:, slice(-logits_to_keep, None), :] if isinstance(logits_to_keep, int) else hidden
    kept = kept.contiguous().view(-1, kept.shape[-1])
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else kept.dtype
    with torch.autocast("cpu", enabled=False):
        padded = nn.functional.pad(labels, (0, 1), value=-100)
        _ = padded[..., 1:].contiguous().view(-1)   # the shifted labels Liger builds
        loss = _FusedLinearCrossEntropy.apply(kept, self.lm_head.weight, dtype)
    return CausalLMOutputWithPast(loss=loss, logits=None)


def patch_liger(model: nn.Module) -> None:
    """Replace RMSNorm, the SwiGLU MLP and the causal-LM forward of `model` (a HF *ForCausalLM) by the twins."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in LIGER_MODEL_TYPES:
        raise ValueError(f"Liger twins for model_type {model_type!r} are not written. Expected one of "
                         f"{list(LIGER_MODEL_TYPES)}")
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm"):
            module.forward = MethodType(lambda self, x: _RMSNorm.apply(x, self.weight), module)
        elif name.endswith("MLP") and hasattr(module, "gate_proj"):
            module.forward = MethodType(
                lambda self, x: self.down_proj(_SiLUMul.apply(self.gate_proj(x), self.up_proj(x))), module)
    model.forward = MethodType(_lce_forward, model)


@contextlib.contextmanager
def liger_rope(model: nn.Module, enabled: bool):
    """While tracing: the model's modeling module uses the RoPE twin (Liger patches the module function too)."""
    import importlib

    if not enabled:
        yield
        return
    base = model.get_base_model() if hasattr(model, "get_base_model") else model   # under a PEFT wrapper
    modeling = importlib.import_module(type(base).__module__)
    original = modeling.apply_rotary_pos_emb
    modeling.apply_rotary_pos_emb = _liger_rope
    try:
        yield
    finally:
        modeling.apply_rotary_pos_emb = original


class Bnb8bitAdamW(torch.optim.Optimizer):
    """bitsandbytes.optim.AdamW's state tensors (8-bit blockwise, or 32-bit), without its fused CUDA update.

    8-bit (tensors of >= min_8bit_size elements): state1, state2 uint8 like the parameter; absmax1, absmax2 fp32,
    one per block of 256; the two shared 256-entry fp32 quantisation maps. Smaller tensors and optim_bits=32: fp32
    state1, state2. The update is one fused kernel: no temporaries. Paged variants keep the same states in CUDA
    unified memory (resident while the GPU has room), counted here as on the device.
    """

    BLOCK = 256

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, optim_bits=8,
                 min_8bit_size=4096):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.optim_bits = optim_bits
        self.min_8bit_size = min_8bit_size
        self._qmaps = None

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    if self.optim_bits == 32 or p.numel() < self.min_8bit_size:
                        state["state1"] = torch.zeros_like(p, dtype=torch.float32)
                        state["state2"] = torch.zeros_like(p, dtype=torch.float32)
                    else:
                        if self._qmaps is None:
                            self._qmaps = (torch.zeros(256, dtype=torch.float32, device=p.device),
                                           torch.zeros(256, dtype=torch.float32, device=p.device))
                        blocks = math.ceil(p.numel() / self.BLOCK)
                        state["state1"] = torch.zeros_like(p, dtype=torch.uint8)
                        state["state2"] = torch.zeros_like(p, dtype=torch.uint8)
                        state["absmax1"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
                        state["absmax2"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
                        state["qmap1"], state["qmap2"] = self._qmaps
                state["step"] += 1
