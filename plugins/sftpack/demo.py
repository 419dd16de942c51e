"""The main job on the embedded default, offline on a CPU: `sftpack demo` (or `make demo`).

1. build the tiny Qwen2 model (`sftpack tiny-model`);
2. prepare GSM8K from the sample shipped in the package into `<out>/dataset_info/`;
3. train it with LLaMA-Factory from `train_configs/qwen_gsm8k.yaml` (LoRA) for a few steps;
4. train it with ms-swift from `train_configs/swift/qwen_lora_gsm8k.yaml` for the same steps;
5. evaluate both adapters with lm-eval's `gsm8k-local` task (`eval_tasks/`) on a few test questions;
then print where everything was written. Everything runs inside `<out>` (the current directory of every
framework, so `dataset_dir: dataset_info` and the eval task's data files resolve there).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from sftpack import frameworks as fw


def _banner(step: str, started: float) -> None:
    print(f"\n=== [{time.monotonic() - started:6.1f} s] {step}", flush=True)


def lf_overrides(model: Path, output_dir: Path, steps: int) -> dict:
    return {**fw.TINY_CPU_LF, "model_name_or_path": model, "output_dir": output_dir, "max_steps": steps,
            "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "logging_steps": 1,
            "save_steps": steps, "learning_rate": 1e-3}


def swift_overrides(model: Path, output_dir: Path, steps: int) -> dict:
    return {**fw.TINY_CPU_SWIFT, "model": model, "output_dir": output_dir, "max_steps": steps,
            "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "logging_steps": 1,
            "save_steps": steps, "learning_rate": 1e-3, "external_plugins": [fw.SWIFT_PLUGIN]}


def eval_scores(output_path: Path) -> dict[str, float]:
    """exact_match per filter from the newest lm-eval results JSON under `output_path`."""
    newest = max(output_path.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    results = json.loads(newest.read_text())["results"]["gsm8k-local"]
    return {key.split(",")[1]: value for key, value in results.items()
            if key.startswith("exact_match,") and isinstance(value, (int, float))}


def run_demo(out: Path, steps: int = 20, eval_limit: int = 20) -> dict:
    from sftpack import tiny_model
    from sftpack.convert import prepare
    from sftpack.converters import CONVERTERS
    from sftpack.samples import sample_dir

    started = time.monotonic()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = fw.offline_env(out / "cache")
    logs = out / "logs"
    model = out / "tiny-model"

    _banner(f"1/5 tiny Qwen2 model -> {model}", started)
    tiny_model.build(model)

    _banner("2/5 prepare GSM8K (embedded sample) -> dataset_info/", started)
    for result in prepare(CONVERTERS["gsm8k"], str(sample_dir("gsm8k")), out / "dataset_info", progress=False):
        print(result.summary())

    adapters = {}
    _banner(f"3/5 LLaMA-Factory LoRA, {steps} steps ({fw.LF_LORA_CONFIG.name})", started)
    lf_out = out / "saves" / "llamafactory-lora"
    fw.run_logged(fw.lf_train_cmd(fw.LF_LORA_CONFIG, lf_overrides(model, lf_out, steps)), out, env,
                  logs / "llamafactory.log")
    adapters["llamafactory"] = lf_out

    _banner(f"4/5 ms-swift LoRA, {steps} steps ({fw.SWIFT_LORA_CONFIG.name})", started)
    swift_out = out / "saves" / "swift-lora"
    fw.run_logged(fw.swift_sft_cmd(fw.SWIFT_LORA_CONFIG, swift_overrides(model, swift_out, steps)), out, env,
                  logs / "swift.log")
    adapters["swift"] = fw.last_checkpoint(swift_out)

    scores = {}
    for framework, adapter in adapters.items():
        _banner(f"5/5 lm-eval gsm8k-local, {framework} adapter, {eval_limit} questions", started)
        eval_out = out / "eval" / framework
        fw.run_logged(fw.lm_eval_cmd(model, ["gsm8k-local"], eval_out, adapter=adapter, limit=eval_limit), out,
                      env, logs / f"lm_eval-{framework}.log")
        scores[framework] = eval_scores(eval_out)

    _banner("done", started)
    summary = {"model": str(model), "dataset_info": str(out / "dataset_info" / "dataset_info.json"),
               "adapters": {k: str(v) for k, v in adapters.items()},
               "eval": {k: {"output": str(out / "eval" / k), "exact_match": v} for k, v in scores.items()},
               "logs": str(logs), "wall_s": round(time.monotonic() - started, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"tiny model:           {model}")
    print(f"dataset_info.json:    {summary['dataset_info']}")
    for framework, adapter in adapters.items():
        print(f"{framework + ' adapter:':22}{adapter}")
        print(f"{'  gsm8k-local:':22}{scores[framework]}  -> {out / 'eval' / framework}")
    print(f"logs:                 {logs}")
    print(f"summary:              {out / 'summary.json'}  ({summary['wall_s']} s)")
    return summary
