"""One training step of a MemoryPlan, traced on FakeTensors (any model size, no memory) or on real CPU tensors.

    trace = trace_step(model_config, plan, MicroBatch(rows=4, length=2048, logits_kept=2048))
    trace.peak_bytes, trace.breakdown, trace.phase

The model is built on the meta device from its config.json (`AutoModelForCausalLM.from_config`), prepared as the
framework prepares it (its adapter's `memory_traits`, sftpack.frameworks.base.MemoryTraits: weights' dtype,
gradient checkpointing before or after LoRA, PEFT LoRA with the config's rank/alpha/dropout/targets, trainable params upcast, Liger twins), then its parameters are
created inside the tracer as FakeTensors (`fake=True`) or real CPU tensors (`fake=False`, the exactness proof).
The step is the steady state of the Hugging Face Trainer loop both frameworks run, at its worst micro-batch:

1. optimizer states exist (created by one optimizer step on zero gradients before measuring);
2. with gradient accumulation > 1 the gradients of the earlier micro-batches exist (the last micro-batch of an
   accumulation cycle is the largest: forward with gradients alive, then clipping and the optimizer step);
3. forward under the framework's AMP autocast, with the loss as the framework computes it (the model's
   ForCausalLMLoss; Swift's logits from the first labelled token and its accuracy argmax; Liger's fused loss),
   and with AMP the fp32 copy of the half logits that accelerate's `convert_outputs_to_fp32` returns (alive
   until the loss is back in the Trainer);
4. backward (checkpointed layers recomputed), gradient-norm clipping, the optimizer step, zero_grad(set_to_none).

On a GPU the Trainer's AdamW and clipping run their foreach (multi-tensor) implementations, which allocate a
temporary of all exp_avg_sq at once; the trace forces foreach for a GPU plan, and uses CPU autocast in place of
CUDA's (the same cast lists for the ops a Qwen2 step runs: linear/matmul/SDPA to half, the loss in fp32).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Mapping

from sftpack.errors import SftpackError
from sftpack.estimate.plan import MemoryPlan
from sftpack.estimate.tracer import CATEGORIES, AllocationTracer

# LLaMA-Factory's LAYERNORM_NAMES (extras/constants.py): 1-D parameters whose name contains one are upcast.
LAYERNORM_NAMES = ("norm", "ln")
# Byte rounding of the CUDA caching allocator: every block is a multiple of 512 bytes (c10 kMinBlockSize).
GPU_BLOCK_BYTES = 512
STEP_MARKER = "sftpack.estimate.step"   # torch.profiler range around the measured step (benchmarks/estimate_cpu.py)
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit",
              "paged_adamw", "paged_adamw_32bit", "sgd", "adafactor")


@dataclass(frozen=True)
class MicroBatch:
    rows: int                 # sequences in the forward (1 when padding-free: the batch is one row)
    length: int               # tokens per row, padded
    logits_kept: int          # positions whose logits are computed (< length with Swift's logits_to_keep)
    padded: bool = False      # rows of different lengths: the 4-D attention mask is materialised

    def describe(self) -> str:
        kept = f", logits for the last {self.logits_kept}" if self.logits_kept < self.length else ""
        return f"{self.rows} x {self.length} tokens{kept}{' (padded)' if self.padded else ''}"


@dataclass
class Trace:
    peak_bytes: int
    breakdown: dict[str, int]
    phase: str                       # where the peak was: forward, backward, optimizer step, ...
    before_step: dict[str, int]      # live bytes per category when the step starts (weights, states, grads)
    params: int
    trainable_params: int
    param_bytes: dict[str, int]      # closed form: sum(numel x element size) of frozen / trainable parameters
    ops: int
    seconds: float
    batch: MicroBatch
    fake: bool
    extras: dict[str, Any] = field(default_factory=dict)


def _dtype(name: str | None):
    import torch

    return getattr(torch, name) if name else None


def _enable_checkpointing(model, plan: MemoryPlan) -> None:
    """Gradient checkpointing per decoder layer, the framework's way (see traits)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    if plan.checkpointing_inputs == "first_float_arg":
        # LLaMA-Factory's get_custom_gradient_checkpointing_func (model_utils/checkpointing.py), verbatim in effect.
        gc_func = partial(checkpoint, use_reentrant=plan.use_reentrant)

        def custom(func, *args, **kwargs):
            module = func.func.__self__ if isinstance(func, partial) else func.__self__
            if any(p.requires_grad for p in module.parameters()):
                for arg in args:
                    if torch.is_tensor(arg) and torch.is_floating_point(arg):
                        arg.requires_grad_(True)
                        break
                return gc_func(func, *args, **kwargs)
            return func(*args, **kwargs)

        model._set_gradient_checkpointing(enable=True, gradient_checkpointing_func=custom)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": plan.use_reentrant})
        model.enable_input_require_grads()
    model.config.use_cache = False


def build_model(model_config: Mapping[str, Any], plan: MemoryPlan):
    """The model on the meta device, prepared as the framework prepares it for training."""
    import torch
    from transformers import AutoModelForCausalLM

    from sftpack.estimate.kernels import patch_liger
    from sftpack.estimate.model import transformers_config

    config = transformers_config(dict(model_config), plan.attention)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=_dtype(plan.weight_dtype))
    if plan.upcast_layernorm:
        for name, param in model.named_parameters():
            if param.ndim == 1 and any(ln in name for ln in LAYERNORM_NAMES):
                param.data = param.data.to(torch.float32)
    if plan.upcast_lmhead_output:
        model.get_output_embeddings().register_forward_hook(lambda module, args, out: out.to(torch.float32))
    if plan.liger:
        try:
            patch_liger(model)
        except ValueError as err:
            raise SftpackError(str(err)) from None
    if plan.gradient_checkpointing and plan.checkpointing_before_adapter:
        _enable_checkpointing(model, plan)
    if plan.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = list(plan.lora_targets) if isinstance(plan.lora_targets, tuple) else "all-linear"
        lora = LoraConfig(task_type="CAUSAL_LM", r=plan.lora_rank, lora_alpha=plan.lora_alpha,
                          lora_dropout=plan.lora_dropout or 0.0, target_modules=targets)
        model = get_peft_model(model, lora, autocast_adapter_dtype=plan.lora_dtype is None)
        if plan.lora_dtype:
            for param in model.parameters():
                if param.requires_grad:
                    param.data = param.data.to(_dtype(plan.lora_dtype))
    else:
        model.requires_grad_(True)
    if plan.upcast_trainable:
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.float32)
    if plan.gradient_checkpointing and not plan.checkpointing_before_adapter:
        _enable_checkpointing(model, plan)
    return model


def materialise(model, real: bool) -> None:
    """Replace every meta parameter and buffer by a CPU tensor of the same shape, strides and dtype (tied weights
    stay tied): a FakeTensor under a FakeTensorMode, or real memory filled with N(0, 0.02) when `real`."""
    import torch
    from torch import nn

    memo: dict[int, tuple[Any, Any]] = {}   # keeps the meta tensor alive so its id is not reused
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for key, value in list(store.items()):
                if value is None:
                    continue
                if id(value) not in memo:
                    data = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="cpu")
                    if real and data.is_floating_point():
                        data.normal_(0.0, 0.02)
                    new = nn.Parameter(data, requires_grad=value.requires_grad) if isinstance(value, nn.Parameter) \
                        else data
                    memo[id(value)] = (value, new)
                store[key] = memo[id(value)][1]


def make_optimizer(model, plan: MemoryPlan):
    """The Trainer's optimizer for `plan.optim`, with its two param groups (decay / no decay, as
    transformers.Trainer.get_decay_parameter_names); foreach on a GPU plan, as torch picks it for CUDA tensors."""
    import torch
    from torch import nn
    from transformers.trainer_pt_utils import get_parameter_names

    from sftpack.estimate.kernels import Bnb8bitAdamW

    patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    decay = set(get_parameter_names(model, [nn.LayerNorm], patterns))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": plan.weight_decay},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    foreach = True if plan.device == "gpu" else None
    name = plan.optim
    if name in ("adamw_torch", "adamw_torch_fused"):
        fused = name == "adamw_torch_fused"
        return torch.optim.AdamW(groups, lr=1e-4, fused=fused or None, foreach=None if fused else foreach)
    if name in ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit"):
        return Bnb8bitAdamW(groups, lr=1e-4, optim_bits=8)
    if name in ("paged_adamw", "paged_adamw_32bit"):
        return Bnb8bitAdamW(groups, lr=1e-4, optim_bits=32)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=1e-4, foreach=foreach)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=1e-4, scale_parameter=False, relative_step=False)
    raise SftpackError(f"optim {name!r} is not modelled. Expected one of {list(OPTIMIZERS)}")


def _make_inputs(batch: MicroBatch, plan: MemoryPlan, vocab: int) -> dict[str, Any]:
    """The collated micro-batch on the device: what the model gets, and what only lives beside it."""
    import torch

    shape = (batch.rows, batch.length)
    ids = torch.randint(0, vocab, shape, dtype=torch.long)
    labels = ids.clone()
    model_kwargs: dict[str, Any] = {"input_ids": ids, "labels": labels}
    if plan.packing == "padding_free":   # one row of the batch's sequences, their positions restarting
        model_kwargs["position_ids"] = torch.arange(batch.length, dtype=torch.long).unsqueeze(0)
    else:
        model_kwargs["attention_mask"] = torch.ones(shape, dtype=torch.long)
    if batch.logits_kept < batch.length:
        model_kwargs["labels"] = labels[:, -batch.logits_kept:]
        model_kwargs["logits_to_keep"] = batch.logits_kept
    return {"model": model_kwargs}


@contextlib.contextmanager
def _masks(batch: MicroBatch):
    """transformers' mask decisions, made as on real data of this micro-batch.

    transformers 5 treats FakeTensors as tracing and then always materialises the 4-D causal mask; on real data
    it skips the mask when no token is padded (SDPA's is_causal) and sees no packed sequences in plain position
    ids. The two data-dependent checks are answered from what the micro-batch is, for fake and real tensors
    alike: padded rows get their (rows, 1, L, L) mask, unpadded and padding-free batches none (padding-free
    sequences are attended as one causal row: flash-attn's varlen kernel saves the same tensors).
    """
    from transformers import masking_utils

    saved = masking_utils._ignore_causal_mask_sdpa, masking_utils.find_packed_sequence_indices

    def ignore_causal_mask(padding_mask, query_length, kv_length, kv_offset, local_attention_size=None):
        return (query_length == 1 or kv_length == query_length) and not batch.padded and (
            local_attention_size is None or kv_length < local_attention_size)

    masking_utils._ignore_causal_mask_sdpa = ignore_causal_mask
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils._ignore_causal_mask_sdpa, masking_utils.find_packed_sequence_indices = saved


class _Regions:
    """Phases and categories while the step runs: the LM head and loss region, recomputation in backward."""

    def __init__(self, tracer: AllocationTracer, model):
        self.tracer = tracer
        self.model = model
        self.depth = 0
        self.handles: list = []

    def __enter__(self):
        import torch

        self.handles.append(torch.nn.modules.module.register_module_forward_pre_hook(self._pre))
        self.handles.append(torch.nn.modules.module.register_module_forward_hook(self._post))
        head = self.model.get_output_embeddings()
        self.handles.append(head.register_forward_pre_hook(self._head))
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        base.sftpack_loss_region = self._loss_region   # the Liger twin's fused loss has no head call
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def _pre(self, module, args):
        if self.tracer.phase.startswith("backward"):
            self.depth += 1
            self.tracer.category, self.tracer.phase = "activations", "backward (recompute)"

    def _post(self, module, args, out):
        if self.depth:
            self.depth -= 1
            if self.depth == 0:
                self.tracer.category, self.tracer.phase = "backward_temporaries", "backward"

    def _loss_region(self):
        if self.tracer.phase == "forward":
            self.tracer.category, self.tracer.phase = "logits_loss", "forward (logits and loss)"

    def _head(self, module, args):
        if self.tracer.phase != "forward":
            return
        self._loss_region()
        hidden = args[0] if args else None
        if hidden is not None and hidden.requires_grad:
            hidden.register_hook(self._head_input_grad)

    def _head_input_grad(self, grad):
        self.tracer.category, self.tracer.phase = "backward_temporaries", "backward"


def _step(model, plan: MemoryPlan, inputs: dict[str, Any], trainable: list, optimizer, tracer: AllocationTracer):
    """The measured micro-batch: forward, the loss, backward, clipping, optimizer step, zero_grad."""
    import torch

    tracer.category, tracer.phase = "activations", "forward"
    autocast = (torch.autocast("cpu", dtype=_dtype(plan.autocast_dtype)) if plan.autocast_dtype
                else contextlib.nullcontext())
    with autocast:
        out = model(**inputs["model"])
    if plan.autocast_dtype and out.logits is not None and out.logits.dtype != torch.float32:
        out.logits = out.logits.float()   # accelerate's convert_outputs_to_fp32: the Trainer's AMP forward
    loss = out.loss
    if plan.accuracy_from_logits and out.logits is not None:
        with torch.no_grad():   # Swift's _compute_acc: argmax over the logits, compared with the labels
            labels = inputs["model"]["labels"]
            _ = (out.logits.argmax(dim=-1)[:, :-1] == labels[:, 1:]).sum()
    del out                                # the Trainer keeps only the loss
    loss = loss / plan.accumulation
    tracer.category = "backward_temporaries" if plan.liger else "logits_loss"
    tracer.phase = "backward" if plan.liger else "backward (logits and loss)"
    loss.backward()
    del loss
    tracer.category, tracer.phase = "optimizer_temporaries", "grad clipping"
    if plan.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainable, plan.max_grad_norm, foreach=True if plan.device == "gpu" else None)
    tracer.phase = "optimizer step"
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def trace_step(model_config: Mapping[str, Any], plan: MemoryPlan, batch: MicroBatch, fake: bool = True) -> Trace:
    """Build, materialise and run one steady-state training step of `plan` on `batch` under the tracer."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from sftpack.estimate.kernels import liger_rope

    started = time.perf_counter()
    model = build_model(model_config, plan)
    tracer = AllocationTracer(GPU_BLOCK_BYTES if plan.device == "gpu" else 1)
    fake_mode = FakeTensorMode() if fake else contextlib.nullcontext()
    with fake_mode, tracer, liger_rope(model, plan.liger), _masks(batch), _Regions(tracer, model):
        tracer.category = "weights_frozen"
        materialise(model, real=not fake)
        params = list(model.parameters())
        param_bytes = {"weights_frozen": 0, "weights_trainable": 0}
        for param in params:
            category = "weights_trainable" if param.requires_grad else "weights_frozen"
            tracer.retag(param, category)
            param_bytes[category] += param.numel() * param.element_size()
        for buffer in model.buffers():
            tracer.retag(buffer, "buffers")
        model.train()
        trainable = [p for p in params if p.requires_grad]
        optimizer = make_optimizer(model, plan)
        tracer.category, tracer.phase = "other", "optimizer states"
        for param in trainable:                 # one step on zero gradients creates the states
            param.grad = torch.zeros_like(param)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    tracer.retag(value, "optimizer_states")
        for param in trainable:
            param.register_post_accumulate_grad_hook(lambda p: tracer.retag(p.grad, "grads"))
        if plan.accumulation > 1:               # the earlier micro-batches' gradients
            tracer.category = "grads"
            for param in trainable:
                param.grad = torch.zeros_like(param)
        tracer.category, tracer.phase = "inputs", "inputs"
        inputs = _make_inputs(batch, plan, int(model_config["vocab_size"]))
        before = {key: tracer.current[key] for key in CATEGORIES}
        tracer.reset_peak()
        with torch.profiler.record_function(STEP_MARKER):   # the window benchmarks/estimate_cpu.py reads
            _step(model, plan, inputs, trainable, optimizer, tracer)
    return Trace(peak_bytes=tracer.peak_bytes, breakdown=dict(tracer.peak_breakdown), phase=tracer.peak_phase,
                 before_step=before, params=sum(p.numel() for p in params),
                 trainable_params=sum(p.numel() for p in trainable), param_bytes=param_bytes, ops=tracer.ops,
                 seconds=time.perf_counter() - started, batch=batch, fake=fake)
