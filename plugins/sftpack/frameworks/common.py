"""What every framework adapter shares: the repo's paths, the offline environment, finding a CLI, `lm_eval`'s
command line, a logged runner. Framework-specific knowledge lives in llamafactory.py and swift.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from sftpack.errors import SftpackError

REPO_ROOT = Path(__file__).resolve().parents[3]
TRAIN_CONFIGS = REPO_ROOT / "train_configs"
EVAL_TASKS = REPO_ROOT / "eval_tasks"
SWIFT_PLUGIN = REPO_ROOT / "plugins" / "sftpack_swift_datasets.py"

LF_LORA_CONFIG = TRAIN_CONFIGS / "qwen_gsm8k.yaml"
LF_FULL_CONFIG = TRAIN_CONFIGS / "qwen_full_gsm8k.yaml"
SWIFT_LORA_CONFIG = TRAIN_CONFIGS / "swift" / "qwen_lora_gsm8k.yaml"
SWIFT_FULL_CONFIG = TRAIN_CONFIGS / "swift" / "qwen_full_gsm8k.yaml"


def offline_env(cache_root: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) with hubs off and every cache inside `cache_root`."""
    env = dict(os.environ if base is None else base)
    cache_root = Path(cache_root).resolve()
    env.update({
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(cache_root / "hf"),
        "HF_DATASETS_CACHE": str(cache_root / "hf_datasets"),
        "MODELSCOPE_CACHE": str(cache_root / "modelscope"),
        "MPLCONFIGDIR": str(cache_root / "matplotlib"),
        "TOKENIZERS_PARALLELISM": "false",
        "DISABLE_VERSION_CHECK": "0",
        "WANDB_DISABLED": "true",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def executable(name: str) -> str:
    """A console script of this environment (beside sys.executable), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise SftpackError(f"'{name}' not found beside {sys.executable} or on PATH; run `make setup` "
                           "(python3 plugins/bootstrap.py) to install the frameworks")
    return found


def text(value: Any) -> str:
    """A value as a framework CLI reads it (booleans lower-case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def lm_eval_cmd(model: Path | str, tasks: list[str], output_path: Path, adapter: Path | None = None,
                limit: int | None = None, include_path: Path = EVAL_TASKS, device: str = "cpu",
                batch_size: int | str = 1, extra: list[str] | None = None) -> list[str]:
    """`lm_eval --model hf --model_args pretrained=MODEL[,peft=ADAPTER] --tasks ... --include_path ...`."""
    model_args = f"pretrained={model}" + (f",peft={adapter}" if adapter else "")
    cmd = [executable("lm_eval"), "--model", "hf", "--model_args", model_args, "--tasks", ",".join(tasks),
           "--include_path", str(include_path), "--output_path", str(output_path), "--device", device,
           "--batch_size", str(batch_size)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    return cmd + (extra or [])


def last_checkpoint(output_dir: Path) -> Path:
    """The highest `checkpoint-N` folder of a training run (Swift saves adapters only there)."""
    checkpoints = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not checkpoints:
        raise SftpackError(f"{output_dir}: no checkpoint-N folder; did training finish?")
    return checkpoints[-1]


def run_logged(cmd: list[str], cwd: Path, env: Mapping[str, str], log_path: Path, echo: bool = True) -> None:
    """Run `cmd`, copying its output to `log_path` (and the terminal when `echo`); raise on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + f"\n# cwd: {cwd}\n")
        log.flush()
        process = subprocess.Popen(cmd, cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace", bufsize=1)
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if echo:
                sys.stdout.write(line)
        code = process.wait()
    if code != 0:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:])
        raise SftpackError(f"`{Path(cmd[0]).name} {' '.join(cmd[1:2])}` exited {code}; log: {log_path}\n{tail}")
