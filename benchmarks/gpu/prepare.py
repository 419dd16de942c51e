"""Prepare the GPU kit HERE (a machine with PyPI): the wheels the GPU machine lacks, Qwen2.5's tokenizer, sizes.

    .venv/bin/python benchmarks/gpu/prepare.py                  # or: make gpu-kit
    .venv/bin/python benchmarks/gpu/prepare.py --python-version 3.11 --wheels /tmp/twin-wheels --wheels-only

Writes into benchmarks/gpu/kit/ (git-ignored, re-created by this script only):
- `wheels/`: the 33 pinned wheels of `manifest.txt` for the GPU machine (CPython 3.12, manylinux x86_64),
  downloaded with `pip download --require-hashes` (a wheel whose sha256 is not in the manifest is refused);
- `qwen2.5-tokenizer/`: Qwen2.5's real tokenizer built from the `qwen.tiktoken` ranks in PyPI's dashscope wheel
  (`tokenizer-source.txt`), its ids checked equal to tiktoken's on every text of the shipped GSM8K sample;
  and `qwen2.5-tokenizer.tar.gz`, the same folder packed (18 MB -> 3 MB) for the trip: run.py unpacks it there;
- `prepared.json`: what was downloaded (file, sha256, bytes), the tokenizer check and the travelling tree's size.
Then it checks that what travels to the GPU machine (the tracked files + CARRY) stays within 55 MiB (the device
tool carries at most 64 MiB). Exit 1 with one line on any failure. `--update-hashes` rewrites the manifest's
hashes from what PyPI serves now (for a deliberate pin change only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
KIT = HERE / "kit"
MANIFEST = HERE / "manifest.txt"
TOKENIZER_SOURCE = HERE / "tokenizer-source.txt"
TREE_BUDGET_MIB = 55.0
# What the device call carries besides the tracked files (benchmarks/gpu/README.md: `carry`).
CARRY = ("benchmarks/gpu/kit/wheels", "benchmarks/gpu/kit/qwen2.5-tokenizer.tar.gz")
TOKENIZER = KIT / "qwen2.5-tokenizer"
GPU_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
MIB = 1024 * 1024

sys.path.insert(0, str(REPO / "plugins"))


class KitError(Exception):
    """One line for the user: what failed and what to do."""


def read_pins(path: Path) -> list[tuple[str, str, list[str]]]:
    """[(name, version, [sha256, ...])] of a hashed requirements file, in file order."""
    pins = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})*)", line)
        if not match:
            raise KitError(f"{path}:{number}: expected 'name==version --hash=sha256:...', got {line!r}")
        pins.append((match.group(1), match.group(2), re.findall(r"sha256:([0-9a-f]{64})", match.group(3))))
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_dist(filename: str) -> str:
    return normalise(filename.split("-", 1)[0])


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip_download(requirements: Path, dest: Path, python_version: str | None, hashes: bool = True) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(dest), "-r", str(requirements)]
    if hashes:
        cmd.append("--require-hashes")
    if python_version:
        cmd += ["--python-version", python_version, "--implementation", "cp"]
        for platform in GPU_PLATFORMS:
            cmd += ["--platform", platform]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip() and "Location 'file:" not in line]
        raise KitError(f"pip download from {requirements.name} failed (exit {done.returncode}): "
                       + " | ".join(lines[-6:]))


def download_wheels(dest: Path, python_version: str) -> list[dict]:
    """The manifest's wheels for `python_version` into `dest` (only those: other files there are removed)."""
    pins = read_pins(MANIFEST)
    dest.mkdir(parents=True, exist_ok=True)
    pip_download(MANIFEST, dest, python_version)
    wanted = {normalise(name): (version, hashes) for name, version, hashes in pins}
    files = []
    for wheel in sorted(dest.glob("*.whl")):
        dist = wheel_dist(wheel.name)
        if dist not in wanted or f"-{wanted[dist][0]}-" not in wheel.name:
            wheel.unlink()   # a wheel of an older manifest: this folder holds only the kit's own downloads
            continue
        digest = sha256(wheel)
        if digest not in wanted[dist][1]:
            raise KitError(f"{wheel}: sha256 {digest} is not in {MANIFEST.name} for {dist}")
        files.append({"file": wheel.name, "sha256": digest, "bytes": wheel.stat().st_size})
    missing = sorted(set(wanted) - {wheel_dist(f["file"]) for f in files})
    if missing:
        raise KitError(f"{dest}: no wheel for {missing} after pip download")
    return files


def update_hashes(python_versions: tuple[str, ...] = ("3.12", "3.11")) -> None:
    """Rewrite the manifest's hashes from what PyPI serves now for the GPU machine and the CPU twin."""
    text = MANIFEST.read_text(encoding="utf-8")
    found: dict[str, set[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "pins.txt"
        plain.write_text("\n".join(f"{n}=={v}" for n, v, _ in read_pins(MANIFEST)) + "\n")
        for version in python_versions:
            dest = Path(tmp) / version
            pip_download(plain, dest, version, hashes=False)
            for wheel in dest.glob("*.whl"):
                found.setdefault(wheel_dist(wheel.name), set()).add(sha256(wheel))
    lines = []
    for line in text.splitlines():
        match = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", line)
        if match:
            hashes = " ".join(f"--hash=sha256:{h}" for h in sorted(found[normalise(match.group(1))]))
            line = f"{match.group(1)}=={match.group(2)} {hashes}"
        lines.append(line)
    MANIFEST.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_tokenizer(out: Path) -> dict:
    """Qwen2.5's tokenizer from dashscope's qwen.tiktoken, checked against tiktoken on the GSM8K sample."""
    from sftpack import qwen_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        pip_download(TOKENIZER_SOURCE, Path(tmp), None)
        wheel = next(Path(tmp).glob("dashscope-*.whl"))
        ranks = Path(tmp) / "qwen.tiktoken"
        ranks.write_bytes(qwen_tokenizer.qwen_tiktoken_from_wheel(wheel))
        started = time.perf_counter()
        staging = out.with_name(out.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        qwen_tokenizer.build(ranks, staging)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        check = qwen_tokenizer.verify(staging, ranks, qwen_tokenizer.gsm8k_sample_texts())
        check["verify_s"] = round(time.perf_counter() - started, 2)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    pack_folder(out, out.with_name(out.name + ".tar.gz"))
    check.update(build_s=round(build_s, 2), source=f"{wheel.name} qwen.tiktoken", folder=str(out.relative_to(REPO)))
    return check


def pack_folder(folder: Path, target: Path) -> None:
    """`folder` as a gzip tar holding `folder.name/...` (file order and times fixed: same bytes each build)."""
    import gzip
    import tarfile

    def fixed(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for path in [folder] + sorted(folder.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder.parent)), recursive=False, filter=fixed)
    tmp.replace(target)


def tree_bytes() -> dict:
    """Bytes that travel to the GPU machine: the tracked files of the working tree plus the CARRY paths."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    tracked = sum((REPO / name).stat().st_size for name in listed.decode().split("\0")
                  if name and (REPO / name).is_file())
    carried = 0
    for name in CARRY:
        path = REPO / name
        if not path.exists():
            raise KitError(f"{path} is missing: run `python benchmarks/gpu/prepare.py` (without --wheels-only)")
        carried += path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*")
                                                                  if p.is_file())
    return {"tracked_bytes": tracked, "carried_bytes": carried, "carry": list(CARRY),
            "total_mib": round((tracked + carried) / MIB, 2), "budget_mib": TREE_BUDGET_MIB}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", default="3.12", help="the wheels' CPython (GPU machine: 3.12)")
    parser.add_argument("--wheels", type=Path, default=KIT / "wheels", help="where the wheels go")
    parser.add_argument("--wheels-only", action="store_true", help="no tokenizer, no size check (the CPU twin)")
    parser.add_argument("--update-hashes", action="store_true", help="rewrite manifest.txt's hashes, then prepare")
    args = parser.parse_args(argv)
    try:
        started = time.perf_counter()
        if args.update_hashes:
            update_hashes()
        wheels = download_wheels(args.wheels, args.python_version)
        total = sum(w["bytes"] for w in wheels)
        print(f"wheels: {len(wheels)} for CPython {args.python_version} in {args.wheels} ({total / MIB:.1f} MiB), "
              f"sha256 checked against {MANIFEST.name}")
        if args.wheels_only:
            return 0
        tokenizer = build_tokenizer(TOKENIZER)
        print(f"tokenizer: {tokenizer['folder']} built in {tokenizer['build_s']} s; ids equal to tiktoken on "
              f"{tokenizer['texts']:,} GSM8K texts ({tokenizer['tokens']:,} tokens, {tokenizer['mismatched_texts']} "
              f"differ)")
        tree = tree_bytes()
        record = {"python_version": args.python_version, "wheels": wheels, "tokenizer": tokenizer, "tree": tree,
                  "prepare_s": round(time.perf_counter() - started, 1)}
        (KIT / "prepared.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"travelling tree: {tree['total_mib']} MiB (tracked {tree['tracked_bytes'] / MIB:.1f} + carried "
              f"{tree['carried_bytes'] / MIB:.1f}: {', '.join(CARRY)}), budget {TREE_BUDGET_MIB:g} MiB")
        if tree["total_mib"] > TREE_BUDGET_MIB:
            raise KitError(f"the travelling tree is {tree['total_mib']} MiB, over the {TREE_BUDGET_MIB:g} MiB budget")
    except KitError as err:
        print(f"prepare: error: {err}", file=sys.stderr)
        return 1
    print(f"ready in {time.perf_counter() - started:.0f} s: run it on the GPU machine as benchmarks/gpu/README.md says")
    return 0


if __name__ == "__main__":
    sys.exit(main())
