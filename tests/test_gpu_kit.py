"""The GPU kit (benchmarks/gpu/): manifest pins, the travelling tree's size, the plan, and its CPU twin.

    .venv/bin/python -m pytest tests/test_gpu_kit.py -m "not integration"   # pins, plan, harness units (~10 s)
    .venv/bin/python -m pytest tests/test_gpu_kit.py                        # + prepare and the CPU twin (~2.5 min)

The CPU twin runs the very script the GPU machine runs (benchmarks/gpu/run.py) in a simulated copy of that
machine's Python: a fresh venv that sees only the distributions the GPU image has (benchmarks/gpu/image.txt and
what they require, linked from this test venv) plus the kit's wheels installed by run.py itself
(`pip install --no-index --no-deps --target`), here as the cp311 builds of the same pins. The suite is the real
gpu_quick.yaml with `--set` overrides for a CPU (tiny shape with Qwen2.5's real tokenizer, 2 steps, fp32).
Network: prepare.py downloads from PyPI (CI reaches it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from sftpack import frameworks as fw
from sftpack.bench import flops
from sftpack.bench.suite import SuiteError, apply_sets, load_suite

REPO = fw.REPO_ROOT
KIT_DIR = REPO / "benchmarks" / "gpu"
PY = sys.executable
sys.path.insert(0, str(KIT_DIR))
import prepare  # noqa: E402  (benchmarks/gpu/prepare.py)


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[prepare.normalise(name)] = version.strip()
    return pins


# -- pins, hashes, sizes --------------------------------------------------------------------------------------
def test_manifest_pins_equal_constraints_and_are_hashed():
    constraints = _constraints()
    pins = prepare.read_pins(prepare.MANIFEST) + prepare.read_pins(prepare.TOKENIZER_SOURCE)
    # DEVICE_FACTS' 33 + 13 that the twin found imported at run time and an image may lack (see manifest.txt)
    assert len(prepare.read_pins(prepare.MANIFEST)) == 46
    for name, version, hashes in pins:
        assert constraints.get(prepare.normalise(name)) == version, f"{name}=={version} differs from constraints.txt"
        assert hashes, f"{name}: no sha256"
    binary = {"cffi", "pydantic-core", "multiprocess", "xxhash", "torchaudio", "aiohttp", "frozenlist"}
    assert all(len(h) == 2 for n, _, h in pins if prepare.normalise(n) in binary)   # cp312 + the twin's cp311


def test_suite_set_overrides_are_unshared_typed_and_checked(tmp_path):
    from sftpack.bench.suite import _unshared

    data = yaml.safe_load((REPO / "benchmarks" / "suites" / "gpu_quick.yaml").read_text())
    data = apply_sets(_unshared(data), ["defaults.swift.max_steps=2", "defaults.gpus=0", "new.key=[1, 2]"], "w")
    # `swift: {<<: *common}` shares nothing with llamafactory's defaults after the copy
    assert data["defaults"]["swift"]["max_steps"] == 2 and data["defaults"]["llamafactory"]["max_steps"] == 60
    assert data["defaults"]["gpus"] == 0 and data["new"]["key"] == [1, 2]
    with pytest.raises(SuiteError, match="expected KEY.PATH=VALUE"):
        apply_sets({}, ["nonsense"], "w")
    with pytest.raises(SuiteError, match="runs is a list"):
        apply_sets({"runs": []}, ["runs.x=1"], "w")
    for bad in ("defaults.timeout_s=fast", "defaults.timeout_s=-1", "defaults.gpus=two"):
        with pytest.raises(SuiteError, match=bad.split("=")[0].split(".")[-1]):
            load_suite(REPO / "benchmarks" / "suites" / "gpu_quick.yaml", [bad])


def test_flops_formula_on_qwen25_15b():
    from sftpack.tiny_model import SHAPES

    n = flops.matmul_params(SHAPES["qwen2.5-1.5b"])
    # 28 x (q,o 2 x 1536^2 + k,v 2 x 1536 x 256 + mlp 3 x 1536 x 8960) + lm head 151,936 x 1536
    assert n == 28 * (2 * 1536 ** 2 + 2 * 1536 * 256 + 3 * 1536 * 8960) + 151936 * 1536 == 1_543_569_408
    assert flops.train_flops_per_token(n, None, full=True) == 6 * n
    assert flops.train_flops_per_token(n, 1000, full=False) == 4 * n + 6000
    peak, source = flops.gpu_peak_bf16("NVIDIA H200")
    assert peak == 989.4e12 and "H200" in source
    assert flops.gpu_peak_bf16("NVIDIA H200 NVL")[0] == 835.5e12
    assert flops.gpu_peak_bf16("Some Future GPU")[0] is None
    assert flops.mfu(6 * n, 50_000, peak) == pytest.approx(6 * n * 50_000 / 989.4e12)
    assert flops.mfu(None, 1.0, peak) is None


def test_quick_suite_plan_fits_420_s_and_is_ordered_plain_first(tmp_path):
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer_config.json").write_text("{}")
    done = subprocess.run([PY, "-m", "sftpack", "bench", str(REPO / "benchmarks/suites/gpu_quick.yaml"), "--plan",
                           "--set", f"model.tokenizer={tokenizer}", "--deadline-s", "420"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    planned = float(re.search(r"Planned: (\d+) s for the runs", done.stdout).group(1))
    assert planned <= 420, done.stdout
    assert "the plan fits" in done.stdout
    order = re.findall(r"\| \d+ \| (\w+) r1 \|", done.stdout)
    assert order[:4] == ["lf_lora", "swift_lora", "lf_full", "swift_full"] and len(order) == 8
    suite = load_suite(REPO / "benchmarks/suites/gpu_quick.yaml")
    for run in suite.runs:
        assert suite.timeout_s(run) <= 150 and suite.repeats(run) == 1
        if run.framework == "swift":
            assert suite.overrides(run)["model_type"] == "qwen2" and suite.overrides(run)["check_model"] is False
    # without the kit's tokenizer the suite refuses before any work, naming the key and the command
    missing = subprocess.run([PY, "-m", "sftpack", "bench", str(REPO / "benchmarks/suites/gpu_quick.yaml"), "--plan",
                              "--set", f"model.tokenizer={tmp_path / 'nope'}"], capture_output=True, text=True)
    assert missing.returncode == 1 and "model.tokenizer" in missing.stderr and "prepare.py" in missing.stderr


def test_swift_runs_of_every_gpu_suite_pin_model_type():
    for name in ("gpu_quick", "gpu_qwen2.5_1.5b", "distributed"):
        suite = load_suite(REPO / "benchmarks" / "suites" / f"{name}.yaml")
        for run in suite.runs:
            if run.framework == "swift":
                assert suite.overrides(run).get("model_type") == "qwen2", f"{name}: {run.name}"
                assert suite.overrides(run).get("check_model") is False, f"{name}: {run.name}"


# -- prepare + the CPU twin -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kit(build_once):
    """prepare.py as a user runs it (wheels for the GPU machine, the tokenizer, the size check), plus the cp311
    wheels of the same pins for the twin. Once per session: xdist workers that share this module's tests would
    otherwise each run it, writing benchmarks/gpu/kit/ at the same time."""
    def build(root: Path) -> None:
        # both at once (different folders; each prints a few lines): the cp311 download overlaps the tokenizer check
        calls = [[PY, str(KIT_DIR / "prepare.py")],
                 [PY, str(KIT_DIR / "prepare.py"), "--python-version", "3.11", "--wheels", str(root / "wheels"),
                  "--wheels-only"]]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
                 for cmd in calls]
        outputs = [proc.communicate()[0] for proc in procs]   # both finished before either is judged
        for proc, output in zip(procs, outputs):
            assert proc.returncode == 0, output

    root = build_once("gpu-kit", build)
    return {"prepared": json.loads((KIT_DIR / "kit" / "prepared.json").read_text()), "twin_wheels": root / "wheels"}


def _image_distributions() -> list[metadata.Distribution]:
    """The GPU image's distributions (image.txt) and everything they require, as installed in this test venv."""
    from packaging.requirements import Requirement

    wanted = [line.split("#", 1)[0].strip() for line in (KIT_DIR / "image.txt").read_text().splitlines()]
    todo, seen, found = [w for w in wanted if w], set(), []
    while todo:
        name = prepare.normalise(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue   # on the image, not in this venv (e.g. triton, nvidia-*): the twin runs without it
        found.append(dist)
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def _top_levels(dist: metadata.Distribution) -> set[str]:
    names = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first not in ("..", "__pycache__") and not first.endswith(".pth"):
            names.add(first)
    return names


@pytest.fixture(scope="module")
def image(build_once) -> Path:
    """A venv whose site-packages holds links to the image's distributions only: the GPU machine's Python (once per
    session; the twins only read it)."""
    def build(folder: Path) -> None:
        root = folder / "venv"
        subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(root)], check=True)
        site = next(root.glob("lib/python3*/site-packages"))
        venv_site = Path(metadata.distribution("pyyaml").locate_file(""))
        for dist in _image_distributions():
            for name in _top_levels(dist):
                source = venv_site / name
                if source.exists() and not (site / name).exists():
                    (site / name).symlink_to(source)

    return build_once("gpu-image", build) / "venv" / "bin" / "python"


def _twin_sets(tokenizer: Path) -> list[str]:
    sets = ["model.path=null", "model.build_shape=tiny", f"model.tokenizer={tokenizer}", "defaults.gpus=0",
            "defaults.presets=[tiny_cpu]", "defaults.timeout_s=400"]
    for framework in ("llamafactory", "swift"):
        sets += [f"defaults.{framework}.{key}={value}" for key, value in
                 (("max_steps", 2), ("save_steps", 2), ("logging_steps", 1), ("per_device_train_batch_size", 1),
                  ("gradient_accumulation_steps", 1))]
    return sets


def _run_kit(image: Path, kit: dict, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    """run.py as the device command runs it; calls with the same `tmp.parent` share its SITE (`--site`)."""
    cmd = [str(image), str(KIT_DIR / "run.py"), "--out", str(tmp / "out"), "--wheels", str(kit["twin_wheels"]),
           "--site", str(tmp.parent / "site"), "--work", str(tmp / "work"), "--allow-no-cuda", "--budget-s", "900"]
    for item in _twin_sets(KIT_DIR / "kit" / "qwen2.5-tokenizer"):
        cmd += ["--set", item]
    # The GPU machine's python3 caches bytecode; a test session may not (PYTHONDONTWRITEBYTECODE=1), and then every
    # process of the twin compiles the kit's sources again (pip installs them with --no-compile): ~3 CPU-s each.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    return subprocess.run(cmd + list(extra), capture_output=True, text=True, cwd=REPO, timeout=1200, env=env)


@pytest.mark.integration
def test_prepare_checks_hashes_tokenizer_and_the_travelling_tree(kit):
    prepared = kit["prepared"]
    assert len(prepared["wheels"]) == 46 and prepared["python_version"] == "3.12"
    # binary wheels are for CPython 3.12 (abi3 builds such as cryptography's cp311-abi3 serve 3.11 and up)
    assert not [w["file"] for w in prepared["wheels"] if re.search(r"-(cp311-cp311|py311)-", w["file"])]
    tokenizer = prepared["tokenizer"]
    assert tokenizer["mismatched_texts"] == 0 and tokenizer["texts"] >= 2400 and tokenizer["tokens"] > 100_000
    tree = prepared["tree"]
    assert tree["total_mib"] <= 55, tree
    assert prepare.tree_bytes()["total_mib"] <= 55


@pytest.mark.integration
def test_cpu_twin_runs_the_gpu_script_packs_results_and_stops_at_the_deadline(kit, image, tmp_path):
    """Two calls of run.py sharing one SITE, as two calls on one lent machine would: the whole call (its wheels
    installed by run.py, preflight, the 4 plain runs ok, the 4 Liger runs skipped, report, tar), then a call whose
    deadline comes while its first run is in flight (one test: the second call reuses the first's install, bytecode
    and built model instead of repeating them)."""
    done = _run_kit(image, kit, tmp_path / "full")
    out = tmp_path / "full" / "out"
    log = (out / "kit.log").read_text() if (out / "kit.log").is_file() else ""
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "installed the 46 pinned wheels into" in log   # by run.py itself
    files = sorted(p.name for p in out.iterdir())
    assert files == ["kit.log", "preflight.json", "report.md", "results.tar.gz", "summary.json"], files
    preflight = json.loads((out / "preflight.json").read_text())
    assert preflight["fatal"] == [] and preflight["packages"]["transformers"]["found"] == "5.6.0"
    assert str(tmp_path / "site") in preflight["packages"]["llamafactory"]["imported_from"]
    assert preflight["liger"]["usable"] is False and "no CUDA" in preflight["liger"]["reason"]
    summary = json.loads((out / "summary.json").read_text())
    plain = ["lf_lora-r1", "swift_lora-r1", "lf_full-r1", "swift_full-r1"]
    assert [summary["runs"][r] for r in plain] == ["ok"] * 4, log[-3000:]
    liger = [r for r in summary["runs"] if "liger" in r]
    assert len(liger) == 4 and {summary["runs"][r] for r in liger} == {"skipped"}
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
        session = next(n for n in names if n.endswith("session.json"))
        record = json.load(tar.extractfile(session))
        results = [json.load(tar.extractfile(n)) for n in names if n.endswith("result.json")]
    assert "results/gpu_quick/report.md" in names
    assert record["model"]["tokenizer"].endswith("qwen2.5-tokenizer") and record["model"]["random_weights"]
    assert "liger_kernel" in record["skip_modules"]
    by_run = {r["run"]: r for r in results}
    assert "unusable here: preflight" in by_run["lf_lora_liger"]["status_detail"]
    assert by_run["lf_lora"]["environment"]["packages"]["transformers"] == "5.6.0"
    assert by_run["lf_lora"]["utilisation"]["mfu"] is None   # CPU: no MFU
    report = (out / "report.md").read_text()
    assert "| lf_lora | LF | lora | 1 / 1 |" in report and "lf_lora_liger r1: **skipped**" in report

    # The deadline: 2,000 steps (minutes on a CPU), so lf_lora is in flight when the 15 s deadline comes (bench's
    # set-up before it took 1.6 s at load 4: the first call's built model is reused, as its marker allows).
    late = tmp_path / "late"
    (late / "work" / "bench").mkdir(parents=True)
    (late / "work" / "bench" / "models").symlink_to(tmp_path / "full" / "work" / "bench" / "models")
    done = _run_kit(image, kit, late, "--deadline-s", "15", "--set", "defaults.llamafactory.max_steps=2000",
                    "--set", "defaults.swift.max_steps=2000")
    out = late / "out"
    assert done.returncode == 1, done.stdout[-3000:]   # no run finished ok
    assert "wheels already installed in" in (out / "kit.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"]["lf_lora-r1"] == "deadline", summary
    assert all(status == "skipped" for run, status in summary["runs"].items() if run != "lf_lora-r1")
    with tarfile.open(out / "results.tar.gz") as tar:
        results = {json.load(tar.extractfile(n))["run"]: json.load(tar.extractfile(n))
                   for n in tar.getnames() if n.endswith("result.json")}
    assert "session deadline" in results["lf_lora"]["status_detail"]
    assert "not started" in results["swift_lora"]["status_detail"]
