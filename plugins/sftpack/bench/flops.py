"""Model FLOPs per training token, MFU, and the time model that plans a suite before it runs.

    from sftpack.bench.flops import matmul_params, train_flops_per_token, mfu, gpu_peak_bf16
    n = matmul_params(json.load(open("model/config.json")))        # Qwen2.5-1.5B: 1,543,503,872
    flops = train_flops_per_token(n, trainable_params=18_464_768, full=False)
    mfu(flops, tokens_per_s=40_000, peak_flops=gpu_peak_bf16("NVIDIA H200")[0])

The FLOP formula (written into every report that shows MFU; PaLM's appendix B without the attention term):
- `N` = parameters that take part in a matrix multiply per token: every linear layer of the decoder plus the
  LM head (with tied embeddings the embedding matrix counts once, as the head; an untied input embedding is a
  lookup and costs nothing). Biases and norms are left out.
- forward = 2N; backward = 2N for the activations' gradients + 2N for the weights' gradients.
  Full fine-tuning: **6N** per token. LoRA (frozen base): **4N + 6·trainable** (no weight gradients for the
  frozen matrices; the adapters' own 6 FLOPs per parameter).
- Gradient checkpointing recomputes the forward (+2N of the decoder): that is hardware work, not model work,
  so MFU leaves it out (it would be in "HFU"). The attention score matmuls (~12·layers·hidden·seq per token,
  about 1 % at GSM8K's ~210 tokens) are left out too: MFU here is a slight underestimate.
- MFU = flops per token x non-padding tokens per second of the training loop / the GPU's dense bf16 peak
  (the vendor's figure for the device name NVML/torch report; `GPU_BF16_PEAK` below). Padding tokens are
  computed too but are not useful work, so they do not count.
"""

from __future__ import annotations

from typing import Any, Mapping

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, FLOP/s. Matched by substring of the
# device name, first match wins (so "H100 PCIe" is listed before "H100").
GPU_BF16_PEAK: list[tuple[str, float]] = [
    ("H200 NVL", 835.5e12),
    ("H200", 989.4e12),          # H200 SXM
    ("H100 PCIe", 756.0e12),
    ("H100 NVL", 835.5e12),
    ("H100", 989.4e12),          # H100 SXM5
    ("H800", 989.4e12),
    ("H20", 148.0e12),
    ("GH200", 989.4e12),
    ("B200", 2250.0e12),
    ("A100", 312.0e12),
    ("A800", 312.0e12),
    ("L40S", 362.05e12),
    ("L40", 181.0e12),
    ("L4", 121.0e12),
    ("A10G", 70.0e12),   # as NVIDIA lists the A10G (AWS)
    ("A10", 125.0e12),
    ("RTX 4090", 165.2e12),
    ("RTX 3090", 71.0e12),
]
FORMULA = ("MFU = model FLOPs per token x non-padding tokens/s (training loop) / the GPU's dense bf16 peak; "
           "FLOPs per token: full 6N, LoRA 4N + 6 x trainable, N = matmul parameters (decoder linears + LM head); "
           "recomputation (gradient checkpointing) and attention-score matmuls not counted")


def matmul_params(config: Mapping[str, Any]) -> int:
    """N of the module docstring, from a decoder's config.json (Qwen2/Llama-style: q, k, v, o, gate, up, down)."""
    hidden = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config["intermediate_size"])
    vocab = int(config["vocab_size"])
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2   # q, o + k, v
    mlp = 3 * hidden * inter
    return layers * (attention + mlp) + vocab * hidden


def train_flops_per_token(n_matmul: int, trainable_params: int | None, full: bool) -> float:
    if full:
        return 6.0 * n_matmul
    return 4.0 * n_matmul + 6.0 * (trainable_params or 0)


def gpu_peak_bf16(device_name: str | None) -> tuple[float | None, str]:
    """(peak FLOP/s, where it comes from) for a device name; (None, why) when unknown."""
    if not device_name:
        return None, "no GPU"
    for key, peak in GPU_BF16_PEAK:
        if key.lower() in device_name.lower():
            return peak, f"{key} dense bf16 data-sheet peak ({peak / 1e12:,.1f} TFLOP/s) for device {device_name!r}"
    return None, f"no bf16 peak known for {device_name!r} (add it to sftpack.bench.flops.GPU_BF16_PEAK)"


def mfu(flops_per_token: float | None, tokens_per_s: float | None, peak_flops: float | None) -> float | None:
    if not flops_per_token or not tokens_per_s or not peak_flops:
        return None
    return flops_per_token * tokens_per_s / peak_flops


# -- the time model (plan before running) ---------------------------------------------------------------------
def planned_run_s(time_model: Mapping[str, Any], config: Mapping[str, Any], full: bool, steps: int,
                  samples_per_step: int, gradient_checkpointing: bool, liger: bool) -> dict[str, float]:
    """Seconds one run should take by the suite's `time_model` (fixed costs + compute at an assumed MFU).

    compute = steps x samples/step x tokens/sample x FLOPs/token (with recomputation when checkpointing) /
    (peak x assumed MFU). Fixed = start-up (imports, model load, tokenising) + saving (bytes / write rate) +
    Liger's Triton compilation when used.
    """
    n_matmul = matmul_params(config)
    flops = train_flops_per_token(n_matmul, int(n_matmul * 0.012), full)   # LoRA r16 all-linear: ~1.2 % trainable
    if gradient_checkpointing:   # the decoder's forward again (the LM head is not checkpointed)
        flops += 2.0 * (n_matmul - int(config["vocab_size"]) * int(config["hidden_size"]))
    tokens = steps * samples_per_step * float(time_model["tokens_per_sample"])
    compute = tokens * flops / (float(time_model["peak_tflops"]) * 1e12 * float(time_model["assumed_mfu"]))
    save = (2.0 * n_matmul / 1e9 / float(time_model["save_gb_per_s"])) if full else 1.0
    fixed = float(time_model["startup_s"]) + (float(time_model.get("liger_compile_s", 0)) if liger else 0.0)
    return {"compute_s": compute, "save_s": save, "fixed_s": fixed, "total_s": compute + save + fixed}
