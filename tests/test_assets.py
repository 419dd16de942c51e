"""Issue 16, without building anything: the shipped files are found through sftpack.assets, paths in a YAML resolve
against its folder, `sftpack init` / `cp` / `ls`, `--version`, the extras' one-line errors, `python -m` entry
points, and `sftpack eval`'s lm-eval spellings. The wheel itself: tests/test_wheel.py (integration).

    .venv/bin/python -m pytest tests/test_assets.py -q      # ~15 s
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sftpack import assets
from sftpack import frameworks as fw
from sftpack.errors import SftpackError

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def sftpack(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([PY, "-m", "sftpack", *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


# -- where the shipped files are ------------------------------------------------------------------------------
def test_the_checkout_is_the_assets_root_and_repo_root_still_names_it():
    assert assets.checkout_root() == REPO and assets.root() == REPO and fw.REPO_ROOT == REPO
    assert fw.SWIFT_PLUGIN == REPO / "plugins" / "sftpack_swift_datasets.py" and fw.EVAL_TASKS.is_dir()
    for name in assets.SHIPPED:
        assert (REPO / name).exists(), f"{name}: in SHIPPED but not in the checkout"
    assert assets.path("data/gsm8k_sample/train.jsonl").is_file()


def test_setup_py_reads_the_same_list_that_sftpack_uses():
    """setup.py parses SHIPPED out of assets.py without importing sftpack; the two must agree."""
    tree = ast.parse((REPO / "plugins" / "sftpack" / "assets.py").read_text(encoding="utf-8"))
    shipped = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                   and any(getattr(t, "id", None) == "SHIPPED" for t in node.targets))
    assert shipped == assets.SHIPPED
    assert "plugins/sftpack_swift_datasets.py" in shipped and "train_configs" in shipped


def test_a_path_in_a_yaml_resolves_against_its_folder_then_the_old_places(tmp_path):
    (tmp_path / "train_configs").mkdir()
    (tmp_path / "train_configs" / "qwen_gsm8k.yaml").write_text("x: 1\n")
    here = tmp_path / "benchmarks" / "pipelines"
    here.mkdir(parents=True)
    found, places = assets.relative("../../train_configs/qwen_gsm8k.yaml", here)
    assert found == tmp_path / "train_configs" / "qwen_gsm8k.yaml" and len(places) == 2
    # a shipped pipeline copied alone elsewhere, and an older root-relative file: the shipped config
    assert assets.relative("../../train_configs/qwen_full_gsm8k.yaml", tmp_path)[0] == fw.LF_FULL_CONFIG
    assert assets.relative("train_configs/qwen_full_gsm8k.yaml", tmp_path)[0] == fw.LF_FULL_CONFIG
    missing, places = assets.relative("../nope.yaml", here)
    assert missing == tmp_path / "benchmarks" / "nope.yaml" and places[1] == REPO / "nope.yaml"
    assert assets.relative("/abs/x.yaml", here) == (Path("/abs/x.yaml"), [Path("/abs/x.yaml")])


def test_shipped_pipelines_and_suites_name_their_configs_relative_to_themselves():
    from sftpack.bench.suite import load_suite
    from sftpack.pipeline.schema import load_pipeline

    for path in sorted((REPO / "benchmarks" / "pipelines").glob("*.yaml")):
        for train in load_pipeline(path).train:
            assert train.config.startswith("../../train_configs/"), f"{path.name}: {train.config}"
            assert train.config_path == (path.parent / train.config).resolve()
    for path in sorted((REPO / "benchmarks" / "suites").glob("*.yaml")):
        for run in load_suite(path).runs:
            assert run.config.startswith("../../train_configs/"), f"{path.name}: {run.config}"


def test_outputs_default_to_the_current_folder():
    from sftpack.bench.runner import DEFAULT_RESULTS, DEFAULT_WORK
    from sftpack.pipeline.cli import default_out

    for path in (DEFAULT_RESULTS, DEFAULT_WORK, default_out("x")):
        assert not path.is_absolute(), f"{path}: outputs go to the current folder, never beside the package"


# -- init / cp / ls ---------------------------------------------------------------------------------------------
def test_init_copies_everything_and_never_replaces_a_users_file(tmp_path):
    work = tmp_path / "work"
    first = sftpack("init", work, cwd=tmp_path)
    assert f"{len(assets.files())} new" in first.stdout
    for name in assets.files():
        assert (work / name).read_bytes() == assets.path(name).read_bytes(), name
    assert (work / "plugins" / "sftpack_swift_datasets.py").is_file() and (work / "data" / "gsm8k_sample").is_dir()
    assert "unchanged" in sftpack("init", work, cwd=tmp_path).stdout

    edited = work / "train_configs" / "qwen_gsm8k.yaml"
    edited.write_text(edited.read_text() + "# my change\n")
    (work / "eval_tasks" / "gsm8k-local.yaml").unlink()
    refused = sftpack("init", work, cwd=tmp_path, check=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"{edited.relative_to(tmp_path)}: exists and sftpack init did not write it" in refused.stderr
    assert "--overwrite" in refused.stderr and edited.read_text().endswith("# my change\n")
    assert not (work / "eval_tasks" / "gsm8k-local.yaml").exists(), "nothing is copied when one file is refused"

    manifest = json.loads((work / ".sftpack-init.json").read_text())
    manifest["files"]["train_configs/qwen_gsm8k.yaml"] = "0" * 64      # as if an older version had written it
    (work / ".sftpack-init.json").write_text(json.dumps(manifest))
    assert sftpack("init", work, cwd=tmp_path, check=False).returncode == 1
    done = sftpack("init", work, "--overwrite", cwd=tmp_path)
    assert "1 replaced" in done.stdout and "1 new" in done.stdout
    assert edited.read_bytes() == fw.LF_LORA_CONFIG.read_bytes()


def test_cp_copies_one_file_or_folder_and_ls_lists_what_ships(tmp_path):
    done = sftpack("cp", "qwen_lora_gsm8k", "mine.yaml", cwd=tmp_path)
    assert (tmp_path / "mine.yaml").read_bytes() == fw.SWIFT_LORA_CONFIG.read_bytes()
    assert "plugins/sftpack_swift_datasets.py" in done.stdout          # the note: what it loads beside it
    sftpack("cp", "eval_tasks", "tasks/", cwd=tmp_path)
    assert (tmp_path / "tasks" / "eval_tasks" / "gsm8k-local.yaml").is_file()
    (tmp_path / "mine.yaml").write_text("mine\n")
    refused = sftpack("cp", "qwen_lora_gsm8k", "mine.yaml", cwd=tmp_path, check=False)
    assert refused.returncode == 1 and "mine.yaml: exists and differs" in refused.stderr
    assert (tmp_path / "mine.yaml").read_text() == "mine\n"
    ambiguous = sftpack("cp", "qwen_full_gsm8k", ".", cwd=tmp_path, check=False)
    assert "train_configs/qwen_full_gsm8k.yaml, train_configs/swift/qwen_full_gsm8k.yaml" in ambiguous.stderr
    listing = sftpack("ls", cwd=tmp_path).stdout
    for name in ("train_configs/qwen_gsm8k.yaml", "benchmarks/pipelines/tiny_cpu.yaml", "eval_tasks/cmmlu-local/",
                 "plugins/sftpack_swift_datasets.py", "data/gsm8k_sample/train.jsonl", "constraints.txt"):
        assert name in listing, name
    assert f"checkout {REPO}" in listing


def test_prepare_reads_the_shipped_sample(tmp_path):
    done = sftpack("prepare", "gsm8k", "--source", "sample", "--out", "dataset_info", "--quiet", cwd=tmp_path)
    assert "sample shipped with sftpack" in done.stdout
    assert len((tmp_path / "dataset_info" / "gsm8k_train.jsonl").read_text().splitlines()) == 1000


# -- install conventions ---------------------------------------------------------------------------------------
def test_version_names_sftpack_its_source_and_the_frameworks(tmp_path):
    out = sftpack("--version", cwd=tmp_path).stdout
    assert out.startswith("sftpack 0.1.0 (checkout ") and "git " in out.splitlines()[0]
    for name in ("torch", "transformers", "llamafactory", "ms-swift", "lm-eval", "deepspeed"):
        assert any(line.startswith(name + " ") for line in out.splitlines()), name


def test_a_missing_optional_package_is_one_line_naming_its_extra(monkeypatch):
    from sftpack import extras

    monkeypatch.setattr(extras, "installed", lambda module: module != "lm_eval")
    with pytest.raises(SftpackError, match=r"^sftpack eval needs lm-eval \(not installed\): pip install "
                                           r"'sftpack\[eval\]' -c constraints.txt"):
        extras.require("torch", "lm_eval", what="sftpack eval")
    err = ModuleNotFoundError("No module named 'swift'", name="swift")
    assert extras.from_import_error(err).endswith("pip install 'sftpack[frameworks]' -c constraints.txt (the tested "
                                                  "pins; `sftpack cp constraints.txt .`)")
    assert extras.from_import_error(ModuleNotFoundError("x", name="sftpack.nope")) is None   # a bug stays a traceback
    assert "sftpack[eval]" in extras.executable_hint("lm_eval")


def test_core_dependencies_cover_the_core_commands():
    """What `prepare`, `recipe` and the CLI import outside the frameworks is declared in `dependencies`."""
    import tomllib

    declared = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower()
                for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert {"pyyaml", "tqdm", "numpy", "orjson", "xxhash", "datasketch", "pyarrow"} <= declared
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"frameworks", "eval", "gpu", "deepspeed", "test"} <= set(extras)


@pytest.mark.parametrize("module, command", [("sftpack.bench", "bench"), ("sftpack.recipes", "recipe")])
def test_python_dash_m_entry_points(module, command, tmp_path):
    done = subprocess.run([PY, "-m", module, "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and command in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("command", ["tiny-model", "prepare", "eval", "recipe", "run", "init", "cp", "ls"])
def test_every_subcommand_help_has_examples(command, tmp_path):
    text = sftpack(command, "--help", cwd=tmp_path).stdout
    examples = [line for line in text.splitlines()[1:] if line.lstrip().startswith(f"sftpack {command} ")]
    assert examples, f"`sftpack {command} --help` shows no example command:\n{text}"


# -- sftpack eval speaks lm-eval's spellings -------------------------------------------------------------------
def _eval_args(*argv: str) -> argparse.Namespace:
    from sftpack.evaluate import cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["eval", *argv])


def test_eval_accepts_lm_evals_flag_spellings():
    from sftpack.evaluate import cli

    args = _eval_args("--model_args", "pretrained=/m,max_length=64", "--num_fewshot", "5", "--batch_size", "8",
                      "--include_path", "mine", "--include_path", "more", "--gen_kwargs", "max_gen_toks=8",
                      "--output_path", "o")
    assert cli.base_model(args) == ("/m", "max_length=64")
    settings = cli.settings_from_args(args)
    assert settings.num_fewshot == [5] and settings.batch_size == "8" and settings.gen_kwargs == "max_gen_toks=8"
    assert settings.add_include == ["mine", "more"] and settings.include_path == str(fw.EVAL_TASKS)
    assert settings.extra_model_args == "max_length=64" and args.out == "o"


@pytest.mark.parametrize("argv, message", [
    (["--model", "hf", "--model_args", "pretrained=Qwen/Qwen2.5-1.5B"],
     "--model hf: that is lm-eval's model type; in sftpack eval --model is the base model (hub id or folder) and the "
     "type is --backend: sftpack eval --backend hf --model Qwen/Qwen2.5-1.5B"),
    (["--model", "vllm"], "--backend vllm --model MODEL"),
    (["--model", "m", "--model_args", "peft=a"], "give it as --tuned a"),
    (["--model", "a", "--model_args", "pretrained=b"], "name two base models"),
    ([], "no base model"),
])
def test_eval_model_never_silently_means_lm_evals_model(argv, message):
    from sftpack.evaluate import cli

    with pytest.raises(SftpackError) as info:
        cli.base_model(_eval_args(*argv))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_added_task_folders_are_combined_with_the_later_one_winning(tmp_path):
    from lm_eval.tasks import TaskManager
    from sftpack.evaluate.runner import combine_task_folders

    mine = tmp_path / "mine"
    mine.mkdir()
    base = yaml.safe_load((fw.EVAL_TASKS / "gsm8k-local-0shot.yaml").read_text())
    (mine / "gsm8k-local-0shot.yaml").write_text(yaml.safe_dump({**base, "include": str(fw.EVAL_TASKS /
                                                                                       "gsm8k-local.yaml"),
                                                                 "num_fewshot": 3}))
    (mine / "my-task.yaml").write_text(yaml.safe_dump({"include": str(fw.EVAL_TASKS / "gsm8k-local.yaml"),
                                                       "task": "my-task"}))
    combined = combine_task_folders([fw.EVAL_TASKS, mine], tmp_path / "out" / "include_path")
    index = TaskManager(include_path=str(combined), include_defaults=False).task_index
    assert {"gsm8k-local", "gsm8k-local-chat", "my-task"} <= set(index)
    assert index["gsm8k-local-0shot"].yaml_path.parent.name == "00-mine"   # the added folder wins, as in lm-eval


@pytest.mark.integration
def test_eval_in_lm_evals_spellings_runs_an_added_task_folder(tiny_model, tmp_path, env, sample_workdir):
    """`sftpack eval --model_args pretrained=M --include_path MINE --num_fewshot 0 --batch_size 1`: a task of MINE
    runs beside the shipped ones, through the combined folder lm-eval reads (~25 s). The current folder's
    dataset_info/ is the shipped sample as `sftpack prepare gsm8k --source sample` writes it (conftest, shared)."""
    (tmp_path / "dataset_info").symlink_to(sample_workdir / "dataset_info")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "my-gsm8k.yaml").write_text(yaml.safe_dump({"include": str(fw.EVAL_TASKS / "gsm8k-local.yaml"),
                                                        "task": "my-gsm8k"}))
    done = subprocess.run([PY, "-m", "sftpack", "eval", "--model_args", f"pretrained={tiny_model}", "--tasks",
                           "my-gsm8k,gsm8k-local", "--include_path", "mine", "--num_fewshot", "0", "--batch_size", "1",
                           "--limit", "1", "--gen_kwargs", "max_gen_toks=4", "--device", "cpu", "--output_path", "ev",
                           "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert {row["task"] for row in report["rows"]} >= {"my-gsm8k", "gsm8k-local"}
    assert report["settings"]["add_include"] == [str(mine)] and report["models"][0]["path"] == str(tiny_model)
    assert (tmp_path / "ev" / "include_path" / "00-mine" / "my-gsm8k.yaml").is_file()
    command = report["models"][0]["runs"][0]["command"]
    assert command[command.index("--include_path") + 1] == str(tmp_path / "ev" / "include_path")
