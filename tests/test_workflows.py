"""The reference workflows of dataset_info/recipes/README.md (issue 15 part 5), run as written.

Each `<!-- workflow: NAME -->` YAML block is read from the README and run by `sftpack run`. Only these change:
- the model becomes the built tiny one (`requires_gpu: false`, CPU keys);
- steps and questions are cut;
- `/data/...` points at the test data: the reference GSM8K and CMMLU, a two-subject CMMLU for the recipes, and a
  small synthetic SQuAD file.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from sftpack import frameworks as fw

README = fw.REPO_ROOT / "dataset_info" / "recipes" / "README.md"
BLOCK = re.compile(r"<!-- workflow: (\w+) -->\n```yaml\n(.*?)```", re.S)
SQUAD = {"version": "1.1", "data": [{"title": "Normans", "paragraphs": [{
    "context": "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a "
               "region in France.",
    "qas": [{"id": "q1", "question": "In what country is Normandy located?",
             "answers": [{"text": "France", "answer_start": 97}]},
            {"id": "q2", "question": "When did the Normans give their name to Normandy?",
             "answers": [{"text": "10th and 11th centuries", "answer_start": 37}]}]}]}]}


def workflows() -> dict[str, str]:
    return dict(BLOCK.findall(README.read_text(encoding="utf-8")))


def test_the_readme_has_the_three_workflows():
    assert set(workflows()) == {"cmmlu_mcq", "math_quota", "billa_stages"}


@pytest.fixture(scope="module")
def data_root(build_once, shared_data) -> Path:
    """/data of the workflows: GSM8K and CMMLU as shipped for the tests; `cmmlu/test` for the recipes cut to two
    subjects (the retention task reads the whole `cmmlu/` through dev/ and test/ ... of its own copy)."""
    def build(root: Path) -> None:
        (root / "gsm8k").symlink_to(shared_data / "gsm8k")
        (root / "cmmlu").symlink_to(shared_data / "cmmlu")
        small = root / "cmmlu_small" / "test"
        small.mkdir(parents=True)
        for subject in ("agronomy", "anatomy"):
            shutil.copy(shared_data / "cmmlu" / "test" / f"{subject}.csv", small / f"{subject}.csv")
        (root / "squad").mkdir()
        (root / "squad" / "dev-v1.1.json").write_text(json.dumps(SQUAD), encoding="utf-8")

    return build_once("workflow-data", build)


def as_tested(text: str, data_root: Path, model: Path | None = None) -> dict:
    """A README workflow with the test's model (`model`, else built: the tiny shape), data, steps and questions
    (nothing else changed)."""
    text = text.replace("/data/cmmlu/test", str(data_root / "cmmlu_small" / "test")).replace("/data", str(data_root))
    data = yaml.safe_load(text)
    data["requires_gpu"] = False
    data["model"] = {"path": str(model)} if model else {"path": None, "build_shape": "tiny", "seed": 0}
    for train in data["train"]:
        overrides = train.setdefault("overrides", {})
        overrides.update({**fw.adapter(train["framework"]).tiny_cpu, "max_steps": 2, "logging_steps": 1})
        if "mixture" not in train:   # a mixture stage keeps the mixture's batch rule
            overrides.update(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    data["eval"].update(limit=2, device="cpu", batch_size=2, gen_kwargs="max_gen_toks=8")
    return data


def _write(folder: Path, data: dict) -> Path:
    """In `folder`, beside copies of nothing: relative paths (train_configs/..., dataset_info/recipes/...) resolve
    to the shipped files, as in a folder where they are not (sftpack.assets.relative)."""
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["cmmlu_mcq", "math_quota", "billa_stages"])
def test_workflow_validates_as_written(name, data_root, tmp_path):
    from sftpack.pipeline.schema import load_pipeline

    pipeline = load_pipeline(_write(tmp_path, as_tested(workflows()[name], data_root)))
    assert pipeline.final_trains()[0].framework == "llamafactory"


def _run(name: str, data_root: Path, folder: Path, model: Path) -> Path:
    """The workflow on the session's tiny model (the same shape and seed a model stage would build: one build for
    the three workflows; building is tested by tests/test_pipeline.py)."""
    from sftpack.pipeline.cli import run_pipeline

    path = _write(folder, as_tested(workflows()[name], data_root, model))
    run_pipeline(path, folder / "out", verbose=False)
    return folder / "out"


@pytest.mark.integration
def test_cmmlu_mcq_workflow_scores_the_test_split_and_squad_retention(data_root, tmp_path, tiny_model):
    out = _run("cmmlu_mcq", data_root, tmp_path, tiny_model)
    text = (out / "report" / "report.md").read_text(encoding="utf-8")
    summary = json.loads((out / "report" / "summary.json").read_text(encoding="utf-8"))
    assert "## Retention" in text and "squad-local" in text and "## Your datasets" in text
    assert {row["task"] for row in summary["eval"]["retention_rows"]} == {"squad-local"}
    assert {row["metric"] for row in summary["eval"]["retention_rows"]} == {"exact_match", "f1"}
    dataset_rows = summary["eval"]["dataset_rows"]
    assert {row["task"] for row in dataset_rows} == {"cmmlu_mcq_test-chat"}
    assert {row["metric"] for row in dataset_rows} == {"acc", "exact_match"}
    for row in dataset_rows + summary["eval"]["retention_rows"]:   # base vs each framework, with deltas
        assert set(row["values"]) == {"base", "llamafactory", "swift"} and set(row["delta"]) == {"llamafactory",
                                                                                                 "swift"}
    assert summary["train"]["llamafactory"]["dataset"] == "cmmlu_mcq_train"
    assert "llamafactory sft on cmmlu_mcq_train" in text


@pytest.mark.integration
def test_math_quota_workflow_reports_cmmlu_retention(data_root, tmp_path, tiny_model):
    out = _run("math_quota", data_root, tmp_path, tiny_model)
    summary = json.loads((out / "report" / "summary.json").read_text(encoding="utf-8"))
    tasks = {row["task"] for row in summary["eval"]["retention_rows"]}
    assert "cmmlu-local" in tasks and len(tasks) == 68          # the group and its 67 subjects
    assert summary["train"]["swift"]["dataset"] == ["gsm8k_math_quota"] or \
        summary["train"]["swift"]["dataset"] == "gsm8k_math_quota"
    assert any("format_rate" in key for key in summary["eval"]["values"]["base"])   # the target task's table


@pytest.mark.integration
def test_billa_workflow_trains_three_chained_stages_with_a_fixed_batch_mix(data_root, tmp_path, tiny_model):
    out = _run("billa_stages", data_root, tmp_path, tiny_model)
    summary = json.loads((out / "report" / "summary.json").read_text(encoding="utf-8"))
    train = summary["train"]
    assert list(train) == ["lf_pt", "swift_pt", "lf_mix", "swift_mix", "llamafactory", "swift"]
    assert [train[s]["kind"] for s in train] == ["pt", "pt", "sft", "sft", "sft", "sft"]
    assert train["lf_mix"]["dataset"] == "batch_mix" and train["swift_mix"]["dataset"] == ["batch_mix"]
    assert train["swift"]["after"] == "swift_mix" and train["lf_mix"]["after"] == "lf_pt"
    # the mixture's keys reached each framework's command: its order is kept, one block per optimizer step
    lf_mix = json.loads((out / "train_lf_mix" / "result.json").read_text())["command"]
    swift_mix = json.loads((out / "train_swift_mix" / "result.json").read_text())["command"]
    assert "disable_shuffling=true" in lf_mix and "per_device_train_batch_size=4" in lf_mix
    assert "gradient_accumulation_steps=2" in lf_mix
    assert swift_mix[swift_mix.index("--train_dataloader_shuffle") + 1] == "false"
    assert swift_mix[swift_mix.index("--dataset_shuffle") + 1] == "false"
    assert f"model_name_or_path={out / 'train_lf_pt' / 'output'}" in lf_mix
