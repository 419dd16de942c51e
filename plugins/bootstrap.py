"""Create or refresh the project's virtualenv (`.venv/`) with the tested version set.

Run from anywhere (stdlib only, Python >= 3.10):

    python3 plugins/bootstrap.py            # set up .venv if needed, print its python
    python3 plugins/bootstrap.py --force    # reinstall even if the stamp says it is current

The README's two commands (`make demo`, `make test`) call this first; when `.venv` already matches
`constraints.txt` and `pyproject.toml` it returns in well under a second.

Order matters (see README "Supported versions"):
1. torch first, at the exact version pinned in constraints.txt, so no other requirement pulls a CUDA build;
2. then the package (editable) with its `frameworks`, `eval` and `test` extras, constrained by constraints.txt;
3. on a CPU build of torch only: two repairs, because PyPI carries only CUDA builds of torchvision and
   torchaudio, which llamafactory requires. torchvision is removed (text-only training never uses it) and
   torchaudio's compiled libraries are deleted so that it imports as pure Python.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".sftpack-installed"
CONSTRAINTS = ROOT / "constraints.txt"

_REPAIR = r"""
import importlib.util, pathlib, subprocess, sys, torch
if torch.version.cuda is not None or getattr(torch.version, "hip", None):
    print("bootstrap: GPU build of torch, no CPU repairs needed")
    sys.exit(0)
if importlib.util.find_spec("torchvision") is not None:
    subprocess.check_call([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "torchvision"])
    print("bootstrap: removed torchvision (CUDA-only build, unused for text)")
spec = importlib.util.find_spec("torchaudio")
if spec is not None:
    lib = pathlib.Path(spec.origin).parent / "lib"
    removed = [p for p in lib.glob("*.so")]
    for p in removed:
        p.unlink()
    if removed:
        print(f"bootstrap: removed {len(removed)} compiled torchaudio libraries (CUDA-only build)")
"""


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for path in (CONSTRAINTS, ROOT / "pyproject.toml"):
        digest.update(path.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def _torch_pin() -> str:
    for line in CONSTRAINTS.read_text().splitlines():
        if line.split("==")[0].strip().lower() == "torch":
            return line.strip()
    raise SystemExit(f"bootstrap: {CONSTRAINTS} has no 'torch==' line")


def _run(cmd: list[str], label: str | None = None) -> None:
    print("bootstrap: $", label or " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure(force: bool = False) -> Path:
    """Make `.venv` match the pinned set; return its python."""
    fingerprint = _fingerprint()
    if not force and STAMP.exists() and STAMP.read_text().strip() == fingerprint:
        return venv_python()
    started = time.monotonic()
    if not venv_python().exists():
        _run([sys.executable, "-m", "venv", str(VENV)])
    py = str(venv_python())
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    _run(pip + ["-q", _torch_pin()])
    _run(pip + ["-q", "-c", str(CONSTRAINTS), "-e", f"{ROOT}[frameworks,eval,test]"])
    _run([py, "-c", _REPAIR], label="CPU repairs of torchvision/torchaudio, if torch is a CPU build")
    STAMP.write_text(fingerprint + "\n")
    print(f"bootstrap: .venv ready in {time.monotonic() - started:.0f} s", flush=True)
    return venv_python()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if .venv looks current")
    args = parser.parse_args()
    os.chdir(ROOT)
    print(ensure(force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
