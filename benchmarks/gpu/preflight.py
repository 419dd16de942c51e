"""Fail-fast checks on the GPU machine, after the kit's wheels are installed (run by run.py; seconds, not minutes).

    PYTHONPATH=plugins:SITE PATH=SITE/bin:$PATH python benchmarks/gpu/preflight.py --site SITE --json out.json

Checks, and writes as JSON: the version each manifest package actually resolves to (the kit's wheels must win
over the image's own transformers/tokenizers/peft/accelerate), where the frameworks import from, LLaMA-Factory's
own dependency check, that each CLI (llamafactory-cli, swift, lm_eval) resolves to the kit's, that torch sees
CUDA, and whether Liger's kernels run forward + backward on a 2-layer model of Qwen2.5-1.5B's width. Exit 1 when
something the suite cannot run without is wrong (`fatal` in the JSON); an unusable Liger is not fatal: run.py then
skips the Liger runs with the reason.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shutil
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLIS = ("llamafactory-cli", "swift", "lm_eval")
# Distribution -> module whose file location proves which copy is imported.
MODULES = {"transformers": "transformers", "tokenizers": "tokenizers", "peft": "peft", "accelerate": "accelerate",
           "datasets": "datasets", "trl": "trl", "llamafactory": "llamafactory", "ms-swift": "swift",
           "lm-eval": "lm_eval"}
# What each CLI imports before it trains or evaluates (an ImportError here would end every run in seconds).
ENTRY_MODULES = ("llamafactory.train.tuner", "swift.cli.sft", "lm_eval.__main__")


def manifest_pins() -> dict[str, str]:
    pins = {}
    for line in (HERE / "manifest.txt").read_text(encoding="utf-8").splitlines():
        match = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", line.split("#", 1)[0].strip())
        if match:
            pins[match.group(1)] = match.group(2)
    return pins


def check_versions(site: Path) -> tuple[dict, list[str]]:
    found, fatal = {}, []
    for name, pinned in manifest_pins().items():
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = None
        found[name] = {"pinned": pinned, "found": version}
        if version != pinned:
            fatal.append(f"{name}: {version or 'not installed'} resolves, the kit pins {pinned}")
    for dist, module in MODULES.items():
        try:
            location = Path(importlib.import_module(module).__file__).resolve()
        except Exception as err:  # noqa: BLE001 - any import failure is the finding
            fatal.append(f"import {module} failed: {type(err).__name__}: {str(err)[:300]}")
            continue
        found[dist]["imported_from"] = str(location)
        if site.resolve() not in location.parents:
            fatal.append(f"{module} imports from {location}, not from the kit's {site}")
    for module in ENTRY_MODULES:
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001
            fatal.append(f"import {module} failed: {type(err).__name__}: {str(err)[:300]}")
    return found, fatal


def check_clis(site: Path) -> tuple[dict, list[str]]:
    clis, fatal = {}, []
    for name in CLIS:
        path = shutil.which(name)
        clis[name] = path
        if path is None:
            fatal.append(f"{name} not on PATH (is {site}/bin on PATH?)")
        elif Path(path).resolve().parent != (site / "bin").resolve():
            fatal.append(f"{name} resolves to {path}, not to the kit's {site}/bin")
    try:
        from llamafactory.extras.misc import check_dependencies

        check_dependencies()   # what `llamafactory-cli train` checks first
        clis["llamafactory_check_dependencies"] = "ok"
    except Exception as err:  # noqa: BLE001
        clis["llamafactory_check_dependencies"] = f"{type(err).__name__}: {err}"
        fatal.append(f"LLaMA-Factory's dependency check fails: {err}")
    return clis, fatal


def check_cuda() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "available": torch.cuda.is_available()}
    if info["available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, memory_mib=round(props.total_memory / 2**20), count=torch.cuda.device_count())
    return info


def check_liger(cuda: bool) -> dict:
    """Liger's Qwen2 kernels on a 2-layer model of the real width, forward + backward in bf16."""
    if not cuda:
        return {"usable": False, "reason": "no CUDA device: Liger's Triton kernels need a GPU"}
    started = time.perf_counter()
    try:
        import torch
        from liger_kernel.transformers import apply_liger_kernel_to_qwen2
        from transformers import Qwen2Config, Qwen2ForCausalLM

        apply_liger_kernel_to_qwen2()
        config = Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=2, num_attention_heads=12,
                             num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
        model = Qwen2ForCausalLM(config).to("cuda", torch.bfloat16)
        ids = torch.randint(0, config.vocab_size, (2, 256), device="cuda")
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.cuda.synchronize()
        if not torch.isfinite(loss).item():
            return {"usable": False, "reason": f"Liger forward gave a non-finite loss {loss.item()}"}
        return {"usable": True, "loss": round(loss.item(), 4), "seconds": round(time.perf_counter() - started, 1)}
    except Exception as err:  # noqa: BLE001 - any failure means: skip the Liger runs, with this reason
        tail = traceback.format_exc().strip().splitlines()[-1]
        return {"usable": False, "reason": f"{type(err).__name__}: {str(err)[:300]} ({tail[:200]})"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, required=True, help="the folder the kit's wheels were installed into")
    parser.add_argument("--json", type=Path, required=True, help="where to write the findings")
    parser.add_argument("--allow-no-cuda", action="store_true", help="the CPU twin: no GPU is not fatal")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report: dict = {"python": sys.version.split()[0], "executable": sys.executable}
    report["packages"], fatal = check_versions(args.site)
    report["clis"], cli_fatal = check_clis(args.site)
    fatal += cli_fatal
    report["cuda"] = check_cuda()
    if not report["cuda"]["available"] and not args.allow_no_cuda:
        fatal.append("torch sees no CUDA device")
    report["liger"] = check_liger(report["cuda"]["available"])
    report["fatal"] = fatal
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for line in fatal:
        print(f"preflight: FATAL: {line}", file=sys.stderr)
    liger = report["liger"]
    print(f"preflight: {len(report['packages'])} packages checked, CLIs {'ok' if not cli_fatal else 'NOT ok'}, CUDA "
          f"{report['cuda'].get('device') or 'absent'}, Liger {'usable' if liger['usable'] else 'unusable: ' + liger['reason']}"
          f" ({report['seconds']} s)", flush=True)
    return 1 if fatal else 0


if __name__ == "__main__":
    sys.exit(main())
