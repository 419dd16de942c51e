"""The proof: the real CLIs run the shipped configs and the eval task on the tiny model, on a CPU, offline.

    make test PYTEST_ARGS="-m integration"

`llamafactory-cli train` (LoRA and full) and `swift sft` (LoRA and full) run the shipped configs with only
CPU/tiny-model overrides (tiny model, a few steps, fp32, small batch). The LoRA pair (conftest `lora_runs`, shared
with test_evaluate) trains on the full GSM8K train split prepared by `sftpack prepare` (Swift keeps all 7,473 rows);
the full pair on the 1,000-row sample shipped in the package (Swift keeps all 1,000). The real `lm_eval ... --tasks
gsm8k-local --include_path eval_tasks` scores the adapter of each framework: lm-eval's own results of the runs
`sftpack eval` makes (conftest `adapter_eval`, shared with test_evaluate). The README's main job (`sftpack run`) is
tested in test_pipeline.py.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sftpack import frameworks as fw

pytestmark = pytest.mark.integration
STEPS = 4   # = conftest's LORA_STEPS
# rows Swift must keep of the split each run trains on (truncation_strategy: right; the default 'delete' drops rows)
SWIFT_ROWS = {"swift_lora": 7473, "swift_full": 1000}
LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def run(cmd: list[str], cwd: Path, env: dict, log: Path) -> float:
    started = time.perf_counter()
    fw.run_logged(cmd, cwd, env, log, echo=False)
    seconds = time.perf_counter() - started
    print(f"{Path(cmd[0]).name} {cmd[1] if len(cmd) > 1 else ''}: {seconds:.1f} s wall")
    return seconds


FULL = {"lf_full": (fw.LF_FULL_CONFIG, fw.lf_train_cmd, fw.tiny_lf_overrides),
        "swift_full": (fw.SWIFT_FULL_CONFIG, fw.swift_sft_cmd, fw.tiny_swift_overrides)}


@pytest.fixture
def trained(request, build_once, tiny_model, sample_workdir, env) -> Callable[[str], Path]:
    """`trained(name)`: the output folder of one run of a shipped config, each run once per session. The LoRA pair
    is conftest's `lora_runs` (full split); each full run is launched here, on the sample, when a test first asks."""
    def output(name: str) -> Path:
        if name in FULL:
            config, build, overrides = FULL[name]
            return build_once(f"integration-{name}", lambda root: run(
                build(config, overrides(tiny_model, root / "out", STEPS)), sample_workdir, env, root / "log")) / "out"
        lora_runs = request.getfixturevalue("lora_runs")
        assert lora_runs.steps == STEPS
        return {"lf_lora": lora_runs.lf, "swift_lora": lora_runs.swift_out}[name]

    return output


@pytest.mark.parametrize("name", ["lf_lora", "lf_full"])
def test_llamafactory_trains_from_shipped_config(trained, name):
    out = trained(name)
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
    out = trained(name)
    rows = [json.loads(line) for line in (out / "logging.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "loss" in row and "global_step/max_steps" in row]
    assert [row["global_step/max_steps"] for row in steps] == [f"{i}/{STEPS}" for i in range(1, STEPS + 1)]
    assert all(math.isfinite(row["loss"]) and row["loss"] > 0 for row in steps)
    summary = next(row for row in rows if "train_dataset" in row)
    assert f"size={SWIFT_ROWS[name]}" in summary["train_dataset"], "Swift must keep every row (truncation right)"
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


@pytest.mark.parametrize("name", ["lf", "swift"])
def test_lm_eval_scores_each_frameworks_adapter(adapter_eval, lora_runs, name):
    """The real `lm_eval --model hf --model_args pretrained=TINY,peft=ADAPTER --tasks gsm8k-local ... --include_path
    eval_tasks --limit 3` on the adapter of each framework (as `sftpack eval` runs it): scores, shots, samples."""
    assert adapter_eval.done.returncode == 0, adapter_eval.done.stdout[-3000:] + adapter_eval.done.stderr[-3000:]
    adapter = getattr(lora_runs, name)
    report = json.loads((adapter_eval.out / "eval.json").read_text(encoding="utf-8"))
    (run,) = next(m for m in report["models"] if m["label"] == name)["runs"]
    cmd = run["command"]
    assert cmd[1:3] == ["-m", "sftpack.evaluate.lm_eval_local"] and cmd[cmd.index("--model") + 1] == "hf"
    assert Path(run["lm_eval_command"][0]).name == "lm_eval" and run["lm_eval_command"][1:] == cmd[3:]
    assert "gsm8k-local" in cmd[cmd.index("--tasks") + 1].split(",")
    assert cmd[cmd.index("--include_path") + 1] == str(fw.EVAL_TASKS)
    results = json.loads(Path(run["results_file"]).read_text())
    scores = results["results"]["gsm8k-local"]
    for key in ("exact_match,strict-match", "exact_match,flexible-extract"):
        assert 0.0 <= scores[key] <= 1.0
    assert results["n-shot"]["gsm8k-local"] == 5
    assert results["config"]["model_args"]["peft"] == str(adapter)
    assert results["n-samples"]["gsm8k-local"]["effective"] == 3
