"""`sftpack estimate`: the traced step is exact on a CPU, the arithmetic is the closed form, the fit search works.

    .venv/bin/python -m pytest tests/test_estimate.py -q          # ~1.5 min on 2 cores (one Qwen2.5-1.5B trace)

- exactness: the same tracer on FakeTensors and on a real CPU training step of the tiny and small shapes gives the
  same peak bytes, the same breakdown at the peak, the same phase (LoRA and full, fp32 and bf16 autocast,
  gradient checkpointing on and off, accumulation 1 and 4, Swift's logits_to_keep, a padded batch, a GPU plan);
- closed form: weights, gradients and AdamW states = parameter count x bytes, the count from config.json by
  formula (Qwen2.5-1.5B: 1,543,714,304 parameters, LoRA r16 all-linear 18,464,768); 8-bit AdamW's states;
- the four shipped configs are read (framework, plan); one is estimated at Qwen2.5-1.5B's shape;
- the fit search's micro-batch is the largest that fits; with none, the first change that fits;
- dataset lengths, the CLI (table, JSON, exit 3, wired as a sub-command), and the training core refusing a GPU
  run that does not fit;
- the committed CPU agreement benchmark (benchmarks/estimate_cpu.py: the real step against torch's own allocator
  statistics and the RSS) within its stated tolerance, its report.md rebuilt from its result.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest
from sftpack import frameworks as fw
from sftpack import parity
from sftpack.errors import SftpackError
from sftpack.estimate import add_parser
from sftpack.estimate import plan as plans
from sftpack.estimate.core import CHANGES, Estimator, estimate, largest_batch
from sftpack.estimate.gpu import GpuTerms, parse_size
from sftpack.estimate.model import shape_config
from sftpack.estimate.step import MicroBatch, trace_step

REPO = fw.REPO_ROOT
CONFIGS = {"lf_lora": ("llamafactory", fw.LF_LORA_CONFIG), "lf_full": ("llamafactory", fw.LF_FULL_CONFIG),
           "swift_lora": ("swift", fw.SWIFT_LORA_CONFIG), "swift_full": ("swift", fw.SWIFT_FULL_CONFIG)}
NO_GPU_TERMS = GpuTerms(cublas_workspace_mib=0, reserved_overhead=0, cuda_context_mib=0)


@pytest.fixture(scope="module")
def shapes():
    return {name: shape_config(name) for name in ("tiny", "small")}


def _plan(name: str, model_config, device: str = "cpu", **overrides):
    framework, path = CONFIGS[name]
    return plans.make_plan(framework, {**parity.load_yaml(path), **overrides}, model_config, device)


# -- exactness: fake trace == real CPU step ------------------------------------------------------------------
EXACT_CASES = [
    ("tiny", "lf_lora", {"bf16": False}, MicroBatch(2, 64, 64), "cpu"),
    ("tiny", "lf_full", {"bf16": False, "gradient_accumulation_steps": 1}, MicroBatch(2, 64, 64), "cpu"),
    ("small", "swift_lora", {"torch_dtype": "float32"}, MicroBatch(3, 96, 40), "cpu"),
    ("small", "lf_lora", {"disable_gradient_checkpointing": True}, MicroBatch(2, 80, 80), "cpu"),
    ("small", "swift_full", {}, MicroBatch(2, 64, 64, padded=True), "cpu"),
    ("small", "lf_full", {}, MicroBatch(2, 64, 64), "gpu"),
]


@pytest.mark.parametrize("shape,config,overrides,batch,device", EXACT_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[4]}-{i}" for i, c in enumerate(EXACT_CASES)])
def test_fake_trace_equals_the_real_cpu_step(shapes, shape, config, overrides, batch, device):
    plan = _plan(config, shapes[shape], device, **overrides)
    fake = trace_step(shapes[shape], plan, batch, fake=True)
    real = trace_step(shapes[shape], plan, batch, fake=False)
    assert fake.peak_bytes == real.peak_bytes > 0
    assert fake.breakdown == real.breakdown
    assert fake.before_step == real.before_step
    assert fake.phase == real.phase
    assert (fake.params, fake.trainable_params) == (real.params, real.trainable_params)


# -- closed form ---------------------------------------------------------------------------------------------
def qwen2_params(c) -> int:
    hidden, inter, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
    head_dim = hidden // heads
    attention = (hidden * hidden + hidden) + 2 * (hidden * kv * head_dim + kv * head_dim) + hidden * hidden
    return vocab * hidden + layers * (attention + 3 * hidden * inter + 2 * hidden) + hidden   # tied head


def lora_params(c, rank: int) -> int:
    hidden, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv_out = c["num_key_value_heads"] * hidden // c["num_attention_heads"]
    pairs = [(hidden, hidden), (hidden, kv_out), (hidden, kv_out), (hidden, hidden),
             (hidden, inter), (hidden, inter), (inter, hidden)]
    return layers * sum(rank * (i + o) for i, o in pairs)


def test_closed_form_counts_match_qwen25_15b():
    c = shape_config("qwen2.5-1.5b")
    assert qwen2_params(c) == 1_543_714_304            # Qwen/Qwen2.5-1.5B's published count
    assert lora_params(c, 16) == 18_464_768            # LLaMA-Factory's log for r16 all-linear (bench/flops.py)


@pytest.mark.parametrize("config,overrides,weight_bytes,trainable_bytes,state_bytes", [
    ("lf_lora", {"bf16": False}, 4, 4, 4),          # fp32 everywhere
    ("lf_lora", {}, 2, 4, 4),                       # bf16 base, LF upcasts LoRA to fp32
    ("lf_full", {}, 4, 4, 4),                       # LF full: every trainable param upcast to fp32
    ("swift_full", {}, 2, 2, 2),                    # Swift full: bf16 weights, grads and AdamW states
    ("swift_lora", {}, 2, 4, 4),                    # PEFT's fp32 adapters on a bf16 base
])
def test_weights_grads_and_adamw_states_are_params_times_bytes(shapes, config, overrides, weight_bytes,
                                                               trainable_bytes, state_bytes):
    c = shapes["tiny"]
    plan = _plan(config, c, "cpu", **overrides)
    trace = trace_step(c, plan, MicroBatch(1, 16, 16))
    total, lora = qwen2_params(c), lora_params(c, plan.lora_rank) if plan.method == "lora" else 0
    trainable = lora if lora else total
    frozen = total if lora else 0
    before = trace.before_step
    assert (trace.params, trace.trainable_params) == (total + lora, trainable)
    assert before["weights_frozen"] == frozen * weight_bytes
    assert before["weights_trainable"] == trainable * trainable_bytes
    assert before["grads"] == trainable * trainable_bytes            # accumulation 4: earlier micro-batches' grads
    tensors = _trainable_tensors(c, plan)
    assert before["optimizer_states"] == 2 * trainable * state_bytes + 4 * tensors   # exp_avg, exp_avg_sq, step


def _trainable_tensors(c, plan) -> int:
    layers = c["num_hidden_layers"]
    if plan.method == "lora":
        return layers * 7 * 2                                      # lora_A, lora_B per linear
    return 1 + layers * (4 + 3 + 3 + 2) + 1                        # embed, q/k/v/o (+3 biases), mlp, norms, norm


def test_8bit_adamw_states(shapes):
    c = shapes["tiny"]
    plan = _plan("lf_full", c, "cpu", bf16=False, optim="adamw_bnb_8bit")
    import torch
    from sftpack.estimate.step import build_model, materialise

    trace = trace_step(c, plan, MicroBatch(1, 16, 16))

    model = build_model(c, plan)
    expected = 2 * 256 * 4                                           # the two shared quantisation maps
    with torch._subclasses.fake_tensor.FakeTensorMode():
        materialise(model, real=False)
        for p in model.parameters():
            n = p.numel()
            expected += 2 * n + 2 * 4 * math.ceil(n / 256) if n >= 4096 else 2 * 4 * n
    assert trace.before_step["optimizer_states"] == expected


# -- the shipped configs ---------------------------------------------------------------------------------------
def test_shipped_configs_are_read_by_their_framework():
    c = shape_config("qwen2.5-1.5b")
    seen = {}
    for name, (framework, path) in CONFIGS.items():
        cfg = parity.load_yaml(path)
        assert plans.detect_framework(cfg, str(path)) == framework
        seen[name] = plans.make_plan(framework, cfg, c, "gpu")
    assert seen["lf_lora"].upcast_trainable and not seen["swift_full"].upcast_trainable
    assert seen["swift_lora"].logits_to_keep and not seen["lf_lora"].logits_to_keep
    assert {p.batch * p.accumulation for p in seen.values()} == {16}
    assert all(p.gradient_checkpointing and p.autocast_dtype == "bfloat16" for p in seen.values())
    with pytest.raises(SftpackError, match="deepspeed"):
        plans.make_plan("llamafactory", {**parity.load_yaml(fw.LF_FULL_CONFIG), "deepspeed": "ds.json"}, c)
    with pytest.raises(SftpackError, match="cannot tell"):
        plans.detect_framework({"learning_rate": 1e-4}, "x.yaml")


def test_shipped_lora_config_at_qwen25_15b_shape():
    report = estimate(fw.LF_LORA_CONFIG, gpu_mem=80 * 2 ** 30, fit_search="never")
    worst = report["batches"]["worst"]
    assert "not available locally" in report["model"]["source"]
    assert report["model"]["params"] == 1_543_714_304 + 18_464_768
    assert worst["before_step_bytes"]["weights_frozen"] == 1_543_714_304 * 2
    assert worst["gpu"]["device_bytes"] > worst["gpu"]["allocated_bytes"] > worst["peak_bytes"]
    assert worst["fits"] is True and report["fit"] is None
    assert report["seconds"] < 120


# -- fit search ----------------------------------------------------------------------------------------------
def test_fit_search_finds_the_largest_micro_batch(shapes):
    est = Estimator(fw.LF_LORA_CONFIG, {"bf16": False, "cutoff_len": 128}, shape="tiny", terms=NO_GPU_TERMS)
    base = est.plan()
    peaks = {}
    for b in (1, 2, 4, 8, 16):
        plan = base.with_batch(b, 16 // b)
        peaks[b] = est.measure(plan, MicroBatch(b, 128, 128), None)["gpu"]["device_bytes"]
    assert peaks[1] < peaks[2] < peaks[4] < peaks[8] < peaks[16]
    found = largest_batch(est, {}, (peaks[4] + peaks[8]) // 2, None)
    assert (found["batch"], found["accumulation"]) == (4, 4)
    assert largest_batch(est, {}, peaks[1] - 1, None) is None


def test_fit_search_proposes_the_first_change_that_fits(shapes):
    terms = NO_GPU_TERMS
    lora = estimate(fw.LF_LORA_CONFIG, {"bf16": False, "cutoff_len": 128, "per_device_train_batch_size": 1,
                                        "gradient_accumulation_steps": 16}, shape="tiny", terms=terms)
    budget = lora["batches"]["worst"]["gpu"]["device_bytes"] + 1
    report = estimate(fw.LF_FULL_CONFIG, {"bf16": False, "cutoff_len": 128}, shape="tiny", terms=terms,
                      gpu_mem=budget)
    fit = report["fit"]
    assert report["batches"]["worst"]["fits"] is False and fit["fits"] is True
    assert fit["worst"]["gpu"]["device_bytes"] <= budget
    names = [t["change"] for t in fit["tried_changes"]]
    assert names[0] == "none" and fit["change"] == names[-1]
    assert all(part in CHANGES for part in fit["change"].split("+"))
    assert not any(t["fits"] for t in fit["tried_changes"][:-1])
    assert set(fit["overrides"]) >= {"per_device_train_batch_size", "gradient_accumulation_steps"}


# -- dataset lengths -------------------------------------------------------------------------------------------
def test_dataset_lengths_and_micro_batches(tiny_model, shapes):
    from sftpack.estimate.lengths import dataset_lengths, typical_batch, worst_batch
    from sftpack.samples import sample_path
    from transformers import AutoTokenizer

    data = sample_path("gsm8k", "train")
    stats = dataset_lengths(str(data), REPO, tiny_model, "You are a helper.", 2048, drop_long=False)
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()[:20]]
    for row, length in zip(rows, stats.lengths):
        messages = [{"role": "system", "content": "You are a helper."}, {"role": "user", "content": row["question"]},
                    {"role": "assistant", "content": row["answer"]}]
        ids = tok.apply_chat_template(messages, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        assert abs(len(ids) - length) <= 2
    lf = _plan("lf_lora", shapes["tiny"])
    swift = _plan("swift_lora", shapes["tiny"])
    worst = worst_batch(lf, 4, stats)
    assert worst.length == math.ceil(max(stats.lengths) / 8) * 8 and worst.logits_kept == worst.length
    kept = worst_batch(swift, 4, stats)
    assert kept.logits_kept == kept.length - min(stats.prompts) + 1 < kept.length
    typical = typical_batch(lf, 4, stats)
    assert typical.padded and typical.length < worst.length
    median = sorted(stats.lengths)[len(stats.lengths) // 2]
    short = dataset_lengths(str(data), REPO, tiny_model, "You are a helper.", median, drop_long=True)
    assert short.dropped > 0 and max(short.lengths) <= median
    assert short.dropped + len(short.lengths) == stats.rows_read
    cut = dataset_lengths(str(data), REPO, tiny_model, "You are a helper.", median, drop_long=False)
    assert cut.truncated == short.dropped and max(cut.lengths) == median


# -- command line and the training core ------------------------------------------------------------------------
def test_cli_table_json_and_exit_status(tmp_path, capsys):
    """One real `python -m sftpack.estimate` process (a config that does not fit: table, JSON and exit 3 together)
    and the fitting case in-process through the `sftpack estimate` sub-command (exit 0, table, JSON)."""
    out = tmp_path / "estimate.json"
    proc = subprocess.run([sys.executable, "-m", "sftpack.estimate", str(fw.SWIFT_LORA_CONFIG), "torch_dtype=float32",
                           "--shape", "tiny", "max_length=64", "--quiet",   # overrides before and after options
                           "--gpu-mem", "1MiB", "--fit-search", "never", "--json", str(out)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 3, proc.stderr
    assert "**traced peak**" in proc.stdout and "logits and loss" in proc.stdout
    assert "| fits 0.00 GiB | **no** |" in proc.stdout
    report = json.loads(out.read_text())
    assert report["schema_version"] == 1 and report["framework"] == "swift"
    assert report["plan"]["max_length"] == 64 and report["batches"]["worst"]["batch"]["length"] == 64
    assert report["batches"]["worst"]["fits"] is False
    assert parse_size("8GiB") == 8 * 2 ** 30 and parse_size("80GB") == 80 * 10 ** 9
    parser = argparse.ArgumentParser(prog="sftpack")
    add_parser(parser.add_subparsers(dest="command"))                 # as sftpack.cli wires it
    args = parser.parse_args(["estimate", str(fw.LF_LORA_CONFIG), "--shape", "tiny", "--device", "cpu",
                              "bf16=false", "cutoff_len=32", "--json", str(tmp_path / "sub.json"), "--quiet"])
    capsys.readouterr()
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "**traced peak**" in printed and "logits and loss" in printed and "fits" not in printed
    sub = json.loads((tmp_path / "sub.json").read_text())
    assert sub["framework"] == "llamafactory" and sub["batches"]["worst"]["batch"]["length"] == 32


def test_training_core_refuses_a_gpu_run_that_does_not_fit(tiny_model, tmp_path):
    from sftpack.training import TrainJob, fit_check, run_training

    def job(gpu_mem: str, mode: str = "refuse") -> TrainJob:
        return TrainJob(framework="llamafactory", config=fw.LF_LORA_CONFIG,
                        overrides={**fw.TINY_CPU_LF, "max_steps": 1, "cutoff_len": 64},
                        model=tiny_model, output_dir=tmp_path / gpu_mem / "out", cwd=tmp_path,
                        record_dir=tmp_path / gpu_mem / "record", cache=tmp_path / "cache", gpus=1,
                        base_env={**os.environ, "SFTPACK_GPU_MEM": gpu_mem}, fit_check=mode)

    refused = run_training(job("1MiB"))
    assert refused.status == "skipped" and refused.status_detail.startswith("refused before starting")
    assert "does NOT fit" in refused.status_detail and refused.harness["estimate"]["fits"] is False
    assert (tmp_path / "1MiB" / "record" / "estimate.json").is_file()
    assert not (tmp_path / "1MiB" / "record" / "stdout.log").exists()          # nothing was started
    roomy = job("80GiB")
    summary = fit_check(roomy, {**os.environ, "SFTPACK_GPU_MEM": "80GiB", "CUDA_VISIBLE_DEVICES": "0"})
    assert summary["fits"] is True and summary["predicted_device_mib"] > summary["predicted_allocated_mib"] > 0
    assert fit_check(replace(roomy, gpus=0), dict(os.environ)) is None
    assert fit_check(replace(roomy, fit_check="off"), dict(os.environ)) is None
    with pytest.raises(ValueError, match="fit_check"):
        replace(roomy, fit_check="maybe")


def test_cpu_benchmark_report_is_rebuilt_from_its_results(tmp_path):
    """benchmarks/results/estimate_cpu/*/report.md is generated from result.json: regenerate and compare."""
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("estimate_cpu", REPO / "benchmarks" / "estimate_cpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    sessions = sorted((REPO / "benchmarks" / "results" / "estimate_cpu").glob("*/result.json"))
    assert sessions, "no committed estimate_cpu result"
    for result in sessions:
        copy = tmp_path / result.parent.name
        copy.mkdir()
        shutil.copy(result, copy / "result.json")
        assert bench.main(["--report", str(copy)]) == 0
        assert (copy / "report.md").read_text() == (result.parent / "report.md").read_text()
        assert not any(bench.verdicts(json.loads(result.read_text())).values())
