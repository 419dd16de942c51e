"""What every framework adapter shares: the shipped files' paths (sftpack.assets), the offline environment,
finding a CLI, `lm_eval`'s command line, a logged runner (through sftpack.bench.monitor: its own process group,
ended on every way out), and where a model is (`model_location`: sftpack.paths' one local-vs-hub rule plus this
machine's hub caches).
Framework-specific knowledge lives in llamafactory.py and swift.py.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping

from sftpack import assets
from sftpack.errors import SftpackError

# The shipped files (sftpack.assets): the checkout's root in a checkout, the wheel's packaged copy when installed.
# REPO_ROOT is kept for callers that name shipped files from it; outputs never go there (they default to ./runs).
REPO_ROOT = assets.root()
TRAIN_CONFIGS = assets.path("train_configs")
EVAL_TASKS = assets.path("eval_tasks")
SWIFT_PLUGIN = assets.path("plugins/sftpack_swift_datasets.py")

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


# torchrun's variables: NPROC_PER_NODE processes on each of NNODES nodes, this one NODE_RANK, rank 0's node at
# MASTER_ADDR:MASTER_PORT. Both CLIs start torchrun from them (LLaMA-Factory also needs FORCE_TORCHRUN=1: its
# adapter's `env`). On a CPU the processes talk over gloo (tests/test_distributed_cpu.py).


def launch_shape(gpus: int, env: Mapping[str, Any]) -> tuple[int, int]:
    """(processes per node, nodes) of a run on `gpus` GPUs whose extra environment is `env`: NPROC_PER_NODE
    processes if `env` sets it, else one per GPU (one on a CPU); NNODES nodes (default 1). More than one of either
    means a torchrun launch."""
    shape = []
    for key, default in (("NPROC_PER_NODE", gpus if gpus > 1 else 1), ("NNODES", 1)):
        value = env.get(key)
        try:
            number = int(value) if value not in (None, "") else default
        except (TypeError, ValueError):
            number = 0
        if number < 1:
            raise SftpackError(f"{key}={value!r}: expected a whole number >= 1")
        shape.append(number)
    return shape[0], shape[1]


def path_with_this_environment(base: Mapping[str, str] | None = None) -> str:
    """`base`'s (default os.environ's) PATH with this Python's script folder first, as in an activated venv: a CLI
    that starts another console script by name (LLaMA-Factory's launcher runs `torchrun`) gets this one's."""
    here = str(Path(sys.executable).parent)
    rest = (os.environ if base is None else base).get("PATH", "").split(os.pathsep)
    return os.pathsep.join([here, *(part for part in rest if part and part != here)])


def executable(name: str) -> str:
    """A console script of this environment (beside sys.executable), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        from sftpack.extras import executable_hint

        raise SftpackError(f"'{name}' not found beside {sys.executable} or on PATH; {executable_hint(name)}")
    return found


def text(value: Any) -> str:
    """A value as a framework CLI reads it (booleans lower-case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def last_checkpoint(output_dir: Path) -> Path:
    """The highest `checkpoint-N` folder of a training run (Swift saves adapters only there)."""
    checkpoints = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not checkpoints:
        raise SftpackError(f"{output_dir}: no checkpoint-N folder; did training finish?")
    return checkpoints[-1]


def run_logged(cmd: list[str], cwd: Path, env: Mapping[str, str], log_path: Path, echo: bool = True) -> None:
    """Run `cmd`, copying its output to `log_path` (and the terminal when `echo`); raise on failure.

    It runs through sftpack.bench.monitor.run_measured (unmeasured), the one place children start: its own process
    group, ended on every way out (Ctrl-C, SIGTERM, an exception, sftpack's own death)."""
    from sftpack.bench.monitor import run_measured

    measured = run_measured([str(part) for part in cmd], Path(cwd), env, log_path, timeout_s=None, sample=False,
                            echo=echo)
    code = measured.exit_code
    if code != 0:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:])
        how = f"was killed by {measured.signal_name}" if measured.signal_name else f"exited {code}"
        shown = [Path(str(cmd[0])).name, *map(str, cmd[1:4 if len(cmd) > 1 and cmd[1] == "-m" else 2])]
        raise SftpackError(f"`{' '.join(shown)}` {how}; log: {log_path}\n{tail}")


# -- models: the one rule of sftpack.paths, plus this machine's hub caches --------------------------------------
def cached_hub_model(hub_id: str) -> tuple[Path | None, str | None]:
    """A hub id (`org/name`) found in this machine's HuggingFace or ModelScope cache: (folder, where), else (None,
    None). No network."""
    if hub_id.count("/") != 1:
        return None, None
    org, name = hub_id.split("/")
    hf_hubs = [os.environ.get("HF_HUB_CACHE"), os.environ.get("HF_HOME") and os.path.join(os.environ["HF_HOME"], "hub"),
               os.path.expanduser("~/.cache/huggingface/hub")]
    for hub in filter(None, hf_hubs):
        for snapshot in sorted(Path(hub).glob(f"models--{org}--{name}/snapshots/*")):
            if (snapshot / "config.json").is_file() and any(snapshot.glob("*.safetensors")):
                return snapshot.resolve(), f"HuggingFace cache {snapshot.resolve()}"
    ms_hubs = [os.environ.get("MODELSCOPE_CACHE"), os.path.expanduser("~/.cache/modelscope/hub")]
    for hub in filter(None, ms_hubs):
        for folder in (Path(hub) / "models" / org / name, Path(hub) / org / name):
            if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
                return folder.resolve(), f"ModelScope cache {folder.resolve()}"
    return None, None


def model_location(name: str, what: str, bases: tuple[Path, ...] = (),
                   environ: Mapping[str, str] | None = None) -> Path | str:
    """Where the model `name` is: an existing local Path, or a hub id (str). sftpack.paths decides local vs hub.

    `bases`: folders a relative name is looked up in before the current folder (pipelines and suites resolve
    against the repository root); a name whose first part is a folder there is local too. A local-looking name
    that exists nowhere is "no such file or folder" at once (SftpackError naming `what` and every place looked
    in). A hub id is returned when it is in this machine's cache, or when the hubs are on; offline and not
    cached it is "not found" too (sftpack.paths.local_or_hub says so)."""
    from sftpack.paths import local_or_hub, looks_local

    path = Path(name).expanduser()
    relative = not path.is_absolute()
    places = [Path(base) / path for base in bases if relative] + [path]
    for place in places:
        if place.exists():
            return place
    first = name.split("/", 1)[0]
    if looks_local(name) or ("/" in name and relative and any((Path(base) / first).is_dir() for base in bases)):
        looked = " nor ".join(dict.fromkeys(str(place.resolve()) for place in places))
        raise SftpackError(f"{what} {name}: no such file or folder ({looked})")
    if cached_hub_model(name)[0] is not None:
        return name   # in this machine's HuggingFace/ModelScope cache: the frameworks read it offline
    return local_or_hub(name, what, environ)   # a hub id: "not found" when the hubs are off


def model_path_problem(path: str, what: str = "model.path", bases: tuple[Path, ...] = ()) -> str | None:
    """Why a suite's or pipeline's `model.path` cannot be what it says, known before any work; None when it may be.

    A local-looking name (sftpack.paths) must exist -- relative names in `bases` (a pipeline's: its own folder),
    at the assets root (older files named paths from the repository root) or in the current folder -- and be a
    folder with config.json. A hub id is left to the caller (its cache, a download, or the declared
    `build_shape`)."""
    bases = tuple(dict.fromkeys([*bases, REPO_ROOT]))
    try:
        where = model_location(path, what, bases=bases, environ={})   # {}: hubs "on"; the caller decides
    except SftpackError as err:
        return str(err).removeprefix(f"{what} {path}: ")
    if isinstance(where, Path) and not (where / "config.json").is_file():
        kind = "a file" if where.is_file() else "a folder without config.json"
        return f"{where.resolve()} is {kind}, so it is not a model folder"
    return None
