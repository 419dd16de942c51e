"""The proof: the real CLIs run the shipped configs and the eval task on the tiny model, on a CPU, offline.

    make test PYTEST_ARGS="-m integration"

`llamafactory-cli train` (LoRA and full) and `swift sft` (LoRA and full) run the shipped configs with only
CPU/tiny-model overrides (tiny model, a few steps, fp32, small batch) on the full GSM8K train split prepared
by `sftpack prepare`; `lm_eval ... --tasks gsm8k-local --include_path eval_tasks` scores an adapter of each
framework. The README's main job (`sftpack run`) is tested in test_pipeline.py.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from sftpack import frameworks as fw

pytestmark = pytest.mark.integration
STEPS = 4
LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def run(cmd: list[str], cwd: Path, env: dict, log: Path) -> float:
    started = time.perf_counter()
    fw.run_logged(cmd, cwd, env, log, echo=False)
    seconds = time.perf_counter() - started
    print(f"{Path(cmd[0]).name} {cmd[1] if len(cmd) > 1 else ''}: {seconds:.1f} s wall")
    return seconds


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model, workdir, env) -> dict[str, Path]:
    """One run of each shipped config; {name: output folder}."""
    root = tmp_path_factory.mktemp("runs")
    outputs = {}
    for name, config, build, overrides in (
        ("lf_lora", fw.LF_LORA_CONFIG, fw.lf_train_cmd, fw.tiny_lf_overrides),
        ("lf_full", fw.LF_FULL_CONFIG, fw.lf_train_cmd, fw.tiny_lf_overrides),
        ("swift_lora", fw.SWIFT_LORA_CONFIG, fw.swift_sft_cmd, fw.tiny_swift_overrides),
        ("swift_full", fw.SWIFT_FULL_CONFIG, fw.swift_sft_cmd, fw.tiny_swift_overrides),
    ):
        out = root / name
        run(build(config, overrides(tiny_model, out, STEPS)), workdir, env, root / f"{name}.log")
        outputs[name] = out
    return outputs


@pytest.mark.parametrize("name", ["lf_lora", "lf_full"])
def test_llamafactory_trains_from_shipped_config(trained, name):
    out = trained[name]
    rows = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    log = [row for row in rows if "loss" in row]  # the last line is a summary without loss
    assert [row["current_steps"] for row in log] == list(range(1, STEPS + 1))
    assert all(math.isfinite(row["loss"]) and row["loss"] > 0 for row in log)
    assert rows[-1]["total_tokens"] > 0  # include_num_input_tokens_seen from the config
    if name == "lf_lora":
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (16, 32, 0.05)
        assert sorted(adapter["target_modules"]) == LINEAR
        assert (out / "adapter_model.safetensors").is_file()
    else:
        assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()


@pytest.mark.parametrize("name", ["swift_lora", "swift_full"])
def test_swift_trains_from_shipped_config(trained, name):
    out = trained[name]
    rows = [json.loads(line) for line in (out / "logging.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "loss" in row and "global_step/max_steps" in row]
    assert [row["global_step/max_steps"] for row in steps] == [f"{i}/{STEPS}" for i in range(1, STEPS + 1)]
    assert all(math.isfinite(row["loss"]) and row["loss"] > 0 for row in steps)
    summary = next(row for row in rows if "train_dataset" in row)
    assert "size=7473" in summary["train_dataset"], "Swift must keep every GSM8K row (truncation_strategy right)"
    checkpoint = fw.last_checkpoint(out)
    assert checkpoint.name == f"checkpoint-{STEPS}"
    args = json.loads((out / "args.json").read_text())
    assert args["dataset"] == ["gsm8k_train"] and args["lora_alpha"] == 32 and args["weight_decay"] == 0.0
    if name == "swift_lora":
        adapter = json.loads((checkpoint / "adapter_config.json").read_text())
        assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (16, 32, 0.05)
        assert sorted(adapter["target_modules"]) == LINEAR
    else:
        assert (checkpoint / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["lf_lora", "swift_lora"])
def test_lm_eval_scores_each_frameworks_adapter(trained, name, tiny_model, workdir, env, tmp_path):
    adapter = trained[name] if name.startswith("lf") else fw.last_checkpoint(trained[name])
    cmd = fw.lm_eval_cmd(tiny_model, ["gsm8k-local"], tmp_path / "eval", adapter=adapter, limit=3)
    run(cmd, workdir, env, tmp_path / "lm_eval.log")
    (results_file,) = (tmp_path / "eval").rglob("results_*.json")
    results = json.loads(results_file.read_text())
    scores = results["results"]["gsm8k-local"]
    for key in ("exact_match,strict-match", "exact_match,flexible-extract"):
        assert 0.0 <= scores[key] <= 1.0
    assert results["n-shot"]["gsm8k-local"] == 5
    assert results["config"]["model_args"]["peft"] == str(adapter)
    assert results["n-samples"]["gsm8k-local"]["effective"] == 3

