"""Provenance: what produced a result. Package versions, torch/CUDA, GPUs and driver, CPU, and the git commit
of sftpack itself. The one module every record uses (bench results, pipeline reports and stage keys, eval
reports, recipe stats).

    python -m sftpack.provenance                   # prints the JSON the harness stores with every result
    from sftpack.provenance import versions, git_info
    versions("torch", "transformers")              # {"torch": "2.13.0+cpu", "transformers": "5.6.0"}
    git_info()                                     # {"sha": ..., "dirty": ...}: of sftpack's checkout, or nulls

Versions come from package metadata (`sftpack` too). The git commit is sftpack's only when sftpack runs from its
own checkout (sftpack.assets.checkout_root(): the folder above `plugins/` holds sftpack's pyproject.toml, and it is
a git work tree's top): installed from a wheel into a venv that happens to sit inside some other repository, the
sha would be that repository's, so it is null. The harness runs `capture()` in a
subprocess once per session, so torch is never imported into the harness process.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from sftpack.assets import checkout_root

PACKAGES = ("sftpack", "torch", "transformers", "accelerate", "peft", "trl", "datasets", "tokenizers",
            "llamafactory", "ms-swift", "deepspeed", "flash-attn", "liger-kernel", "lm-eval", "psutil",
            "nvidia-ml-py", "matplotlib", "numpy")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def utc_now() -> str:
    """The timestamp every record carries (UTC, second resolution): 2026-12-01T02:48:54Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def versions(*names: str) -> dict[str, str | None]:
    """{distribution: installed version or None}."""
    return {name: _version(name) for name in names}


@functools.lru_cache(maxsize=1)
def is_checkout() -> bool:
    """True when sftpack runs from its own git checkout (sftpack.assets.checkout_root() is a git work tree's top),
    not from a wheel installed somewhere."""
    root = checkout_root()
    if root is None:
        return False
    top = _git_raw("rev-parse", "--show-toplevel")
    return top is not None and Path(top.strip()).resolve() == root.resolve()


def _git_raw(*args: str) -> str | None:
    root = checkout_root()
    if root is None:
        return None
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _git(*args: str) -> str | None:
    return _git_raw(*args) if is_checkout() else None


def git_sha() -> str | None:
    """sftpack's commit, with '-dirty' when the checkout has changes; None outside a checkout."""
    info = git_info()
    return (info["sha"] + ("-dirty" if info["dirty"] else "")) if info["sha"] else None


def git_info() -> dict[str, Any]:
    sha = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain")
    dirty = [line[3:] for line in status.splitlines()] if status is not None else None
    return {"sha": sha.strip() if sha else None,
            "dirty": bool(dirty) if dirty is not None else None,
            "dirty_paths": dirty[:30] if dirty else [],
            "dirty_paths_total": len(dirty) if dirty is not None else None}


def cpu_info() -> dict[str, Any]:
    model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), None)
    except OSError:
        model = platform.processor() or None
    memory_gib = None
    try:
        import psutil

        memory_gib = round(psutil.virtual_memory().total / 1024**3, 1)
    except ImportError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"model": model, "logical_cores": os.cpu_count(), "usable_cores": affinity, "memory_total_gib": memory_gib}


def gpu_info() -> dict[str, Any]:
    """torch's view (what the frameworks use) plus NVML's (name, memory, driver) when available."""
    info: dict[str, Any] = {"torch_version": None, "cuda": None, "cudnn": None, "cuda_available": False,
                            "device_count": 0, "torch_threads": None, "devices": [], "driver": None,
                            "nvml": None}
    try:
        import torch

        info.update(torch_version=torch.__version__, cuda=torch.version.cuda, torch_threads=torch.get_num_threads(),
                    cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            info["cudnn"] = torch.backends.cudnn.version()
            info["device_count"] = torch.cuda.device_count()
            for i in range(info["device_count"]):
                props = torch.cuda.get_device_properties(i)
                info["devices"].append({"name": props.name, "memory_total_mib": round(props.total_memory / 1024**2),
                                        "capability": f"{props.major}.{props.minor}"})
    except ImportError:
        pass
    if info["device_count"]:
        from sftpack.bench.monitor import Nvml

        nvml, why = Nvml.open()
        if nvml is None:
            info["nvml"] = why
        else:
            pynvml = nvml._nvml
            driver = pynvml.nvmlSystemGetDriverVersion()
            info["driver"] = driver.decode() if isinstance(driver, bytes) else driver
            info["nvml"] = "ok"
            nvml.close()
    return info


def capture() -> dict[str, Any]:
    return {
        "captured_at_utc": utc_now(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "gpu": gpu_info(),
        "cpu": cpu_info(),
        "git": git_info(),
    }


def summary_line(env: dict[str, Any]) -> str:
    """One line for reports: hardware, key versions, git sha."""
    gpu, cpu, pkgs, git = env.get("gpu") or {}, env.get("cpu") or {}, env.get("packages") or {}, env.get("git") or {}
    if gpu.get("devices"):
        names = sorted({d["name"] for d in gpu["devices"]})
        hardware = f"{len(gpu['devices'])}x {', '.join(names)} (driver {gpu.get('driver')}, CUDA {gpu.get('cuda')})"
    else:
        hardware = "no GPU"
    cores = cpu.get("usable_cores") or cpu.get("logical_cores")
    sha = (git.get("sha") or "unknown")[:10] + (" (dirty)" if git.get("dirty") else "")
    versions = ", ".join(f"{name} {pkgs[name]}" for name in ("torch", "transformers", "llamafactory", "ms-swift")
                         if pkgs.get(name))
    return (f"{hardware}; CPU {cpu.get('model')} ({cores} cores, {cpu.get('memory_total_gib')} GiB); "
            f"Python {env.get('python')}; {versions}; git {sha}")


# What `sftpack --version` reports, in this order (distribution names).
VERSION_PACKAGES = ("torch", "transformers", "llamafactory", "ms-swift", "lm-eval", "datasets", "peft", "trl",
                    "accelerate", "deepspeed", "vllm")


def tested_pins() -> dict[str, str]:
    """{distribution (normalised): version} of the tested set, the shipped constraints.txt (sftpack.assets)."""
    from sftpack.assets import path

    pins = {}
    try:
        lines = path("constraints.txt").read_text(encoding="utf-8").splitlines()
    except OSError:
        return pins
    for line in lines:
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def version_report() -> str:
    """`sftpack --version`: sftpack's version (package metadata), where it runs from (and its git commit in a
    checkout), Python, and each framework found, marked where it differs from the tested pins. Nothing imported."""
    from sftpack import __version__
    from sftpack.assets import source

    git = git_info() if is_checkout() else {}
    sha = f", git {git['sha'][:12]}" + (" dirty" if git.get("dirty") else "") if git.get("sha") else ""
    lines = [f"sftpack {_version('sftpack') or __version__} ({source()}{sha})",
             f"python {platform.python_version()}"]
    pins = tested_pins()
    for name in VERSION_PACKAGES:
        found = _version(name)
        tested = pins.get(name)
        note = "" if found is None or tested is None or found.split("+")[0] == tested.split("+")[0] \
            else f" (tested: {tested})"
        lines.append(f"{name} {found or 'not installed'}{note}")
    return "\n".join(lines)


if __name__ == "__main__":
    json.dump(capture(), sys.stdout, indent=2)
    sys.stdout.write("\n")
