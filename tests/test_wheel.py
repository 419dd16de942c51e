"""The wheel works from any folder (issue 16 part 5): built, installed non-editable into a fresh venv, used as a user
who never saw the checkout would, from an empty folder outside the repository.

    .venv/bin/python -m pytest tests/test_wheel.py -q        # ~2-3 min on 2 cores (marked integration and wheel)

1. `pip wheel --no-deps --no-build-isolation` on a copy of the sources (setup.py's hook puts the shipped files into
   sftpack/_assets/), then `pip install --no-deps` of that wheel into `python -m venv --without-pip FRESH`. FRESH reuses
   the pinned packages of .venv without downloading them: a `.pth` file appends .venv's site-packages after FRESH's
   own, written only after the install (so pip never sees the checkout's editable sftpack), and only as a plain
   path (so .venv's own .pth files, the editable install's among them, are not read). The frameworks' console scripts
   are .venv's with FRESH's python in their first line, as pip would write them in FRESH.
2. From an empty folder: `sftpack init`, `sftpack prepare` on the copied GSM8K sample, `sftpack tiny-model`,
   2 steps of `llamafactory-cli train` and of `swift sft` on the copied LoRA configs as written (dataset_dir and the
   Swift plugin resolve against that folder) with only CPU / tiny-model overrides, and `sftpack run` of a copied
   pipeline (2 steps, 1 question) whose model, full-training configs and task folder resolve against its own folder:
   its eval stage is FRESH's lm-eval (`--include_path <folder>/eval_tasks`) on the base and both trained models, with
   the copied 0-shot chat task and the copied 5-shot `gsm8k-local`: the three runs one after another in one process
   of the wheel's `sftpack.evaluate.lm_eval_local --runs` (`eval.parallel: 1`; each run's command is FRESH's
   `lm_eval` script's, so no separate `lm_eval` launch is needed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml
from sftpack import assets
from sftpack import frameworks as fw

pytestmark = [pytest.mark.integration, pytest.mark.wheel]
REPO = Path(__file__).resolve().parent.parent
PINNED_SITE = Path(sysconfig.get_paths()["purelib"])      # .venv's site-packages: the tested set
SOURCES = ("pyproject.toml", "setup.py", "README.md", "plugins/sftpack", *assets.SHIPPED)   # what the build reads
SCRIPTS = ("llamafactory-cli", "swift", "lm_eval", "accelerate")
STEPS = 2


def _run(cmd: list, cwd: Path, env: dict, log: Path, timeout: float = 600) -> str:
    started = time.monotonic()
    with log.open("w") as handle:
        done = subprocess.run([str(part) for part in cmd], cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                              timeout=timeout)
    text = log.read_text(errors="replace")
    print(f"{Path(str(cmd[0])).name} {cmd[1] if len(cmd) > 1 else ''}: {time.monotonic() - started:.1f} s")
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{text[-4000:]}"
    return text


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, env) -> dict:
    """The wheel installed into a fresh venv: {"bin": FRESH/bin, "env": its environment, "wheel": the file}."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    for name in SOURCES:   # a copy: building in the checkout would write build/ and egg-info there
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns(*assets.IGNORED))
        else:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    logs = root / "logs"
    logs.mkdir()
    # the build backend from .venv (setuptools >= 77 comes with the pinned set): no download; else pip's isolation
    from importlib.metadata import version

    isolation = ["--no-build-isolation", "--no-index"] if int(version("setuptools").split(".")[0]) >= 77 else []
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", root / "dist", source],
         root, env, logs / "wheel.log")
    (wheel,) = (root / "dist").glob("sftpack-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], root, env, logs / "venv.log")
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         root, env, logs / "install.log")
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "zz-sftpack-pinned-set.pth").write_text(f"{PINNED_SITE}\n")   # after FRESH's own site-packages
    for name in SCRIPTS:
        script = Path(sys.executable).parent / name
        lines = script.read_text().splitlines(keepends=True)
        (venv / "bin" / name).write_text(f"#!{python}\n" + "".join(lines[1:]))
        (venv / "bin" / name).chmod(0o755)
    fresh_env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    fresh_env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv))
    return {"bin": venv / "bin", "env": fresh_env, "wheel": wheel, "site": site}


def test_the_wheel_carries_the_shipped_files_and_runs_from_them(fresh, tmp_path):
    import zipfile

    names = set(zipfile.ZipFile(fresh["wheel"]).namelist())
    for name in assets.files():
        packed = f"sftpack/{name}" if name.startswith(assets.SAMPLES + "/") else f"sftpack/{assets.PACKAGED}/{name}"
        assert packed in names, f"{name} is not in the wheel"
    code = ("import sftpack, sftpack.assets as a, sftpack.frameworks as fw; "
            "print(sftpack.__file__, a.checkout_root(), a.root(), fw.SWIFT_PLUGIN.is_file(), sep='\\n')")
    where, checkout, root, plugin = subprocess.check_output([fresh["bin"] / "python", "-c", code], cwd=tmp_path,
                                                            env=fresh["env"], text=True).split()
    assert Path(where).is_relative_to(fresh["site"]), f"the fresh venv imported {where}, not the wheel's sftpack"
    assert checkout == "None" and Path(root) == fresh["site"] / "sftpack" / assets.PACKAGED and plugin == "True"
    version = subprocess.check_output([fresh["bin"] / "sftpack", "--version"], cwd=tmp_path, env=fresh["env"],
                                      text=True)
    assert version.startswith("sftpack 0.1.0 (installed package ") and "git" not in version.splitlines()[0]


def test_from_an_empty_folder_init_prepare_train_eval_run(fresh, tmp_path_factory):
    work = tmp_path_factory.mktemp("user")   # outside the repository, empty
    assert not any(work.iterdir()) and not work.is_relative_to(REPO)
    env, bin_ = fresh["env"], fresh["bin"]
    logs = tmp_path_factory.mktemp("logs")

    def sftpack(*args, log: str) -> str:
        return _run([bin_ / "sftpack", *args], work, env, logs / f"{log}.log")

    sftpack("init", log="init")
    assert (work / "train_configs" / "qwen_gsm8k.yaml").is_file() and (work / ".sftpack-init.json").is_file()
    sftpack("prepare", "gsm8k", "--source", "data/gsm8k_sample", "--out", "dataset_info/", "--quiet", log="prepare")
    assert len((work / "dataset_info" / "gsm8k_train.jsonl").read_text().splitlines()) == 1000
    sftpack("tiny-model", "model", log="tiny-model")

    # the README's commands on the copied configs, as written; only CPU / tiny-model / step-count overrides
    lf = fw.adapter("llamafactory")
    overrides = fw.tiny_overrides("llamafactory", Path("model"), Path("saves/lf"), STEPS)
    _run([bin_ / "llamafactory-cli", "train", "train_configs/qwen_gsm8k.yaml",
          *lf.command(Path("x"), overrides)[3:]], work, env, logs / "lf.log")
    rows = [json.loads(line) for line in (work / "saves" / "lf" / "trainer_log.jsonl").read_text().splitlines()]
    assert [row["current_steps"] for row in rows if "loss" in row] == [1, 2]
    assert (work / "saves" / "lf" / "adapter_model.safetensors").is_file()

    swift = fw.adapter("swift")
    overrides = fw.tiny_overrides("swift", Path("model"), Path("saves/swift"), STEPS)
    overrides.pop("external_plugins")   # the config's own: plugins/sftpack_swift_datasets.py of this folder
    _run([bin_ / "swift", "sft", "train_configs/swift/qwen_lora_gsm8k.yaml",
          *swift.command(Path("x"), overrides)[3:]], work, env, logs / "swift.log")
    args = json.loads((work / "saves" / "swift" / "args.json").read_text())
    assert args["external_plugins"] == ["plugins/sftpack_swift_datasets.py"] and args["dataset"] == ["gsm8k_train"]
    assert fw.last_checkpoint(work / "saves" / "swift").name == f"checkpoint-{STEPS}"
    found = subprocess.check_output([bin_ / "python", "-c", "import sys; sys.path.insert(0, 'plugins'); "
                                     "import sftpack; print(sftpack.__file__)"], cwd=work, env=env, text=True)
    assert Path(found.strip()).is_relative_to(fresh["site"]), "Swift's plugin would import another sftpack"

    # a copied pipeline: its model, configs, task folder and outputs resolve against its folder and the current one
    sftpack("cp", "benchmarks/pipelines/tiny_cpu.yaml", "benchmarks/pipelines/quick.yaml", log="cp")
    path = work / "benchmarks" / "pipelines" / "quick.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(name="quick", model={"path": "../../model"})
    for train in data["train"]:
        length = "cutoff_len" if train["framework"] == "llamafactory" else "max_length"
        train["overrides"].update(max_steps=STEPS, logging_steps=1, save_steps=STEPS, per_device_train_batch_size=2,
                                  **{length: 256})
    assert data["eval"]["include_path"] == "../../eval_tasks"          # as shipped: the folder beside the configs
    data["eval"].update(limit=1, gen_kwargs="max_gen_toks=8", tasks=["gsm8k-local-chat", "gsm8k-local"], parallel=1)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    sftpack("run", "benchmarks/pipelines/quick.yaml", "--offline", log="run")
    out = work / "runs" / "pipelines" / "quick"
    assert (out / "report" / "report.md").is_file() and (out / "eval" / "eval.json").is_file()
    # the eval stage: the user's lm-eval (FRESH's, its CLI through the wheel's sftpack.evaluate.lm_eval_local; the
    # same run as FRESH's `lm_eval` script) with --include_path on the copied task folder
    models = json.loads((out / "eval" / "eval.json").read_text())["models"]
    assert len(models) == 1 + len(fw.FRAMEWORKS)
    for model in models:
        (run,) = model["runs"]
        cmd = run["command"]
        assert Path(cmd[0]).parent == bin_ and cmd[1:3] == ["-m", "sftpack.evaluate.lm_eval_local"]
        assert run["process"]["runs"] == len(models) and Path(run["process"]["command"][0]).parent == bin_
        assert run["lm_eval_command"] == [str(bin_ / "lm_eval"), *cmd[3:]]
        assert cmd[cmd.index("--include_path") + 1] == str(work / "eval_tasks")
        results = json.loads(Path(run["results_file"]).read_text())
        for task, shots in (("gsm8k-local-chat", 0), ("gsm8k-local", 5)):
            assert results["n-samples"][task]["effective"] == 1 and results["n-shot"][task] == shots, task
    commands = " ".join(" ".join(json.loads((out / f"train_{name}" / "result.json").read_text())["command"])
                        for name in fw.FRAMEWORKS)
    assert str(work / "train_configs" / "qwen_full_gsm8k.yaml") in commands, "the pipeline trained another config"
    assert str(work / "train_configs" / "swift" / "qwen_full_gsm8k.yaml") in commands
    assert not list(fresh["site"].rglob("runs")), "an output went into the installed package"
