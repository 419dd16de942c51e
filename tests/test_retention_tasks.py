"""The retention tasks squad-local and mmlu-local (eval_tasks/): upstream lm-eval's `squadv2` prompt and `mmlu` task
on files the user brings.

    .venv/bin/python -m pytest tests/test_retention_tasks.py                       # ~1 min on 2 cores
    .venv/bin/python -m pytest tests/test_retention_tasks.py -m "not integration"  # without the real sftpack eval

Offline; every file is written by the tests: a small SQuAD v2.0-layout JSON file (three articles, one unanswerable
question, a Chinese answer, Jinja-like braces in a context) and a few MMLU CSV rows per subject in hendrycks/test's
layout. The upstream tasks are lm-eval's own: the `SQuAD2` class with its dataset replaced by the same questions as
the hub's squad_v2 builder reads them, and the `mmlu` YAML files pointed at the same rows in cais/mmlu's columns.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from sftpack.evaluate.metrics import process_results_squad

REPO = Path(__file__).resolve().parents[1]
EVAL_TASKS = REPO / "eval_tasks"
SQUAD_TASKS = EVAL_TASKS / "squad-local"
MMLU_TASKS = EVAL_TASKS / "mmlu-local"
pytestmark = pytest.mark.xdist_group("retention_tasks")   # one worker builds the module's task index

# ------------------------------------------------------------------------------------------------- the data


def _answer(context: str, text: str) -> dict:
    return {"text": text, "answer_start": context.index(text)}


NORMANS = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
           "France.")
ROLLO = " Rollo agreed to swear fealty to King Charles III.\nHe was a Viking leader."   # leading space kept (GH-2585)
WALL = "长城是中国古代的军事防御工程，现存的长城大多修建于明朝。"
BRACES = "Jinja {{ braces }} and {% tags %} are plain text in a document."
SQUAD = {"version": "v2.0", "data": [
    {"title": "Normans", "paragraphs": [
        {"context": NORMANS, "qas": [
            {"id": "n1", "question": "In what country is Normandy located?", "is_impossible": False,
             "answers": [_answer(NORMANS, "France"), _answer(NORMANS, "France"),
                         _answer(NORMANS, "a region in France")]},
            {"id": "n2", "question": "When did the Normans give their name to Normandy?", "is_impossible": False,
             "answers": [_answer(NORMANS, "10th and 11th centuries")]},
            {"id": "n3", "question": "Who gave their name to Normandy in the 1000s and 1100s?", "is_impossible": True,
             "answers": [], "plausible_answers": [_answer(NORMANS, "The Normans")]},
        ]},
        {"context": ROLLO, "qas": [
            {"id": "n4", "question": "Who did Rollo swear fealty to? ", "is_impossible": False,
             "answers": [_answer(ROLLO, "King Charles III")]},
        ]},
    ]},
    {"title": "长城", "paragraphs": [{"context": WALL, "qas": [
        {"id": "c1", "question": "现存的长城大多修建于哪个朝代？", "is_impossible": False,
         "answers": [_answer(WALL, "明朝")]},
    ]}]},
    {"paragraphs": [{"context": BRACES, "qas": [   # SQuAD v1.1 style: no is_impossible; and no title
        {"id": "b1", "question": "What are {{ braces }} here?", "answers": [_answer(BRACES, "plain text")]},
    ]}]},
]}
ANSWERABLE = ["n1", "n2", "n4", "c1", "b1"]
OUTPUTS = {"n1": "France", "n2": "the 10th century", "n4": "King Charles III.", "c1": "明朝初年", "b1": "nothing"}


def _hub_rows(squad: dict) -> list[dict]:
    """The questions as the hub's squad_v2 builder yields them (the rows upstream `squadv2` reads)."""
    rows = []
    for article in squad["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows.append({"id": qa["id"], "title": article.get("title", ""), "context": paragraph["context"],
                             "question": qa["question"],
                             "answers": {"text": [a["text"] for a in qa["answers"]],
                                         "answer_start": [a["answer_start"] for a in qa["answers"]]}})
    return rows


# MMLU rows (question, A, B, C, D, answer) with what a CSV can hold: spaces around the question, a newline, commas,
# quotes, an empty option, non-ASCII text
MMLU_SUBJECTS = ("anatomy", "high_school_us_history", "virology")


def _mmlu_rows(subject: str, split: str, n: int) -> list[tuple[str, ...]]:
    rows = []
    for i in range(n):
        question = [f"Which {split} statement {i} about {subject.replace('_', ' ')} is right?",
                    f"  {subject}: \"quoted\", with commas, and a line\nbreak ({i})  ",
                    f"Café {i} — 中文 {subject}?"][i % 3]
        options = [f"option {c} of {i}" if (i + k) % 5 else "" for k, c in enumerate("ABCD")]
        rows.append((question, *options, "ABCD"[(i // 2 + len(subject)) % 4]))
    return rows


def _write_mmlu(root: Path, subjects, test_rows: int = 12) -> Path:
    for split, n in (("dev", 5), ("test", test_rows)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / "cais" / split).mkdir(parents=True, exist_ok=True)
        for subject in subjects:
            rows = _mmlu_rows(subject, split, n)
            with open(root / split / f"{subject}_{split}.csv", "w", encoding="utf-8", newline="") as handle:
                csv.writer(handle).writerows(rows)
            # the same rows in cais/mmlu's columns, for upstream's YAML through the `json` builder
            with open(root / "cais" / split / f"{subject}.jsonl", "w", encoding="utf-8") as handle:
                for question, a, b, c, d, answer in rows:
                    handle.write(json.dumps({"question": question, "subject": subject, "choices": [a, b, c, d],
                                             "answer": "ABCD".index(answer)}, ensure_ascii=False) + "\n")
    return root


# ------------------------------------------------------------------------------------------------- fixtures


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The SQuAD file and the MMLU folder, and the datasets cache (for upstream's `json` builder) inside the module's
    own temp folder."""
    import datasets

    root = tmp_path_factory.mktemp("retention")
    squad = root / "squad-dev.json"
    squad.write_text(json.dumps(SQUAD, ensure_ascii=False, indent=1), encoding="utf-8")
    mmlu = _write_mmlu(root / "mmlu", MMLU_SUBJECTS)
    patch = pytest.MonkeyPatch()
    patch.setattr(datasets.config, "HF_DATASETS_CACHE", root / "hf_datasets")
    patch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    yield {"squad_file": str(squad), "mmlu_dir": str(mmlu), "root": root}
    patch.undo()


@pytest.fixture(scope="module")
def lm_eval_tasks():
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


@pytest.fixture(scope="module")
def manager(data):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False, include_path=[str(SQUAD_TASKS), str(MMLU_TASKS)],
                       metadata={"squad_file": data["squad_file"], "mmlu_dir": data["mmlu_dir"]})


def _build(manager, spec, limit: int | None = None, shots: int | None = None):
    """Task `spec` with its requests built as lm-eval's evaluator builds them (`--num_fewshot shots`)."""
    task = next(iter(manager.load([spec])["tasks"].values()))
    if shots is not None:
        task.set_config(key="num_fewshot", value=shots)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return task


def _requests(task) -> list[tuple]:
    return [(inst.doc_id, inst.idx, inst.request_type, json.dumps(inst.args, ensure_ascii=False, default=str))
            for inst in task.instances]


def _scores(task, output_for) -> dict[tuple[str, str], float]:
    """Filters + metrics of `task` on given model outputs, as lm-eval's evaluator computes them."""
    for inst in task.instances:
        inst.resps = [output_for(inst)]
    task.apply_filters()
    by_doc = defaultdict(list)
    for inst in task.instances:
        by_doc[inst.doc_id].append(inst)
    values = defaultdict(list)
    for filter_key in task.instances[0].filtered_resps:
        for _, instances in sorted(by_doc.items()):
            instances.sort(key=lambda inst: inst.idx)
            metrics = task.process_results(instances[0].doc, [inst.filtered_resps[filter_key] for inst in instances])
            for metric, value in metrics.items():
                values[(metric, filter_key)].append(value)
    aggregation = task.aggregation()
    return {key: aggregation[key[0]](items) for key, items in values.items()}


# ------------------------------------------------------------------------------------ squad-local = squadv2's prompt


def _upstream_squad2(rows: list[dict]):
    """lm-eval's own `SQuAD2` task class (lm_eval/tasks/squadv2/task.py) with its hub dataset replaced by `rows`."""
    import datasets
    from lm_eval.tasks.squadv2.task import SQuAD2

    class LocalSQuAD2(SQuAD2):
        def download(self, *args, **kwargs):
            split = datasets.Dataset.from_list(rows)
            self.dataset = datasets.DatasetDict({"train": split, "validation": split})

    return LocalSQuAD2()


def test_squad_local_sends_upstream_squadv2s_requests(manager):
    ours = _build(manager, "squad-local")
    theirs = _upstream_squad2(_hub_rows(SQUAD))
    theirs.build_all_requests(limit=None, rank=0, world_size=1)

    ours_by_id = {inst.doc["id"]: (inst.args[0], inst.args[1]["until"]) for inst in ours.instances}
    theirs_by_id = {inst.doc["id"]: (inst.args[0], inst.args[1]["until"]) for inst in theirs.instances
                    if inst.request_type == "generate_until"}
    assert [inst.doc["id"] for inst in sorted(ours.instances, key=lambda i: i.doc_id)] == ANSWERABLE  # file order
    assert set(theirs_by_id) == {*ANSWERABLE, "n3"}        # upstream keeps the unanswerable question; we skip it
    assert ours_by_id == {doc_id: theirs_by_id[doc_id] for doc_id in ANSWERABLE}   # same context string, same stop
    assert ours_by_id["n4"][0] == ("Title: Normans\n\nBackground:  Rollo agreed to swear fealty to King Charles III."
                                   "\nHe was a Viking leader.\n\nQuestion: Who did Rollo swear fealty to? \n\nAnswer:")
    assert "{{ braces }}" in ours_by_id["b1"][0] and ours_by_id["b1"][0].startswith("Title: \n\n")
    # one generation per question, greedy (upstream sends `until` only, which lm-eval 0.4.13 decodes greedily too)
    assert {inst.request_type for inst in ours.instances} == {"generate_until"}
    assert ours.config.generation_kwargs == {"until": ["\n"], "do_sample": False, "temperature": 0.0}
    assert ours.config.num_fewshot == 0


def test_squad_local_scores_are_process_results_squad(manager):
    task = _build(manager, "squad-local")
    scores = _scores(task, lambda inst: OUTPUTS[inst.doc["id"]])
    references = {row["id"]: row["answers"]["text"] for row in _hub_rows(SQUAD)}   # straight from the JSON
    expected = [process_results_squad({"answers": references[doc_id]}, [OUTPUTS[doc_id]]) for doc_id in ANSWERABLE]
    for metric in ("exact_match", "f1"):
        assert scores[(metric, "none")] == pytest.approx(sum(e[metric] for e in expected) / len(expected))
    assert scores[("exact_match", "none")] == pytest.approx(2 / 5)   # n1, n4 (punctuation normalised away)
    chinese = process_results_squad({"answers": ["明朝"]}, ["明朝初年"])   # per character: 2 of 4 right, 2 of 2 found
    assert chinese == {"exact_match": 0.0, "f1": pytest.approx(2 / 3)}
    assert task.higher_is_better() == {"exact_match": True, "f1": True}


def test_squad_loader_skips_unanswerable_questions_and_logs_it(data):
    loader = _load_module(SQUAD_TASKS / "squad_loader.py", "sftpack_squad_loader")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("lm_eval.squad-local")
    logger.addHandler(handler)
    try:
        dataset = loader.load(squad_file=data["squad_file"], version=1.0)
    finally:
        logger.removeHandler(handler)
    assert list(dataset) == ["validation"]
    rows = dataset["validation"].to_list()
    assert [row["id"] for row in rows] == ANSWERABLE
    assert rows[0] == {"id": "n1", "title": "Normans", "context": NORMANS,
                       "question": "In what country is Normandy located?",
                       "answers": ["France", "France", "a region in France"]}
    assert [r.getMessage() for r in records] == [
        f"squad-local: {Path(data['squad_file']).resolve()}: skipped 1 unanswerable (SQuAD v2) question(s) of 6; "
        "scoring the 5 answerable ones"]


@pytest.mark.parametrize("content, error", [
    ('{"data": [\n  {"title": "x",\n   "paragraphs": [}\n]}', r"line 3 column 19: not valid JSON: Expecting value"),
    ('[1, 2]', r"the top level: expected a JSON object, got list"),
    ('{"version": "v2.0"}', r"the top level: missing key 'data'"),
    ('{"data": [{"title": "x"}]}', r"data\[0\]: missing key 'paragraphs'"),
    ('{"data": [{"paragraphs": [{"context": "c", "qas": []}, {"qas": []}]}]}',
     r"data\[0\]\.paragraphs\[1\]: missing key 'context'"),
    ('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q"}]}]}]}',
     r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: missing key 'answers'"),
    ('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q", "answers": [{"t": 1}]}]}]}]}',
     r"data\[0\]\.paragraphs\[0\]\.qas\[0\]\.answers\[0\]: missing key 'text'"),
    ('{"data": [{"paragraphs": [{"context": 5, "qas": []}]}]}', r"'context' must be a str, got int"),
    (('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q", "answers": [], '
      '"is_impossible": true}]}]}]}'), r"no answerable questions \(1 unanswerable skipped\)"),
])
def test_squad_loader_errors_name_the_file_and_the_place(tmp_path, content, error):
    loader = _load_module(SQUAD_TASKS / "squad_loader.py", "sftpack_squad_loader")
    bad = tmp_path / "bad.json"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad.resolve()))}: .*{error}"):
        loader.load(squad_file=str(bad))


def test_squad_loader_errors_name_the_metadata_key(tmp_path, monkeypatch):
    loader = _load_module(SQUAD_TASKS / "squad_loader.py", "sftpack_squad_loader")
    with pytest.raises(FileNotFoundError, match='--metadata .{"squad_file"'):
        loader.load(version=1.0)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"squad_file=dev.json resolves to {tmp_path / 'dev.json'}, which "
                                                "is not a file"):
        loader.load(squad_file="dev.json")


def test_sftpack_eval_checks_stop_on_bad_data_before_any_model(tmp_path, data):
    """`sftpack eval` builds custom-dataset tasks before loading a model (check_tasks): the loaders' errors surface
    there as one message."""
    from sftpack.errors import SftpackError
    from sftpack.evaluate.tasks import check_tasks

    (tmp_path / "bad.json").write_text('{"data": [{"paragraphs": [{"qas": []}]}]}', encoding="utf-8")
    with pytest.raises(SftpackError, match=r"bad.json: data\[0\]\.paragraphs\[0\]: missing key 'context'"):
        check_tasks(["squad-local"], EVAL_TASKS, tmp_path, {"squad_file": str(tmp_path / "bad.json")})
    with pytest.raises(SftpackError, match='mmlu-local needs the folder of your MMLU CSVs.*"mmlu_dir"'):
        check_tasks(["mmlu-local-anatomy"], EVAL_TASKS, tmp_path, {})
    leaves = check_tasks(["squad-local", "mmlu-local-anatomy"], EVAL_TASKS, tmp_path,
                         {"squad_file": data["squad_file"], "mmlu_dir": data["mmlu_dir"]})
    assert leaves == {"squad-local": ["squad-local"], "mmlu-local-anatomy": ["mmlu-local-anatomy"]}


# ------------------------------------------------------------------------------------- mmlu-local = upstream mmlu


def _upstream_mmlu(lm_eval_tasks: Path, subject: str, cais: Path) -> dict:
    """Upstream mmlu_<subject> (its own YAML, includes merged) reading the same rows in cais/mmlu's columns."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(lm_eval_tasks / "mmlu" / "default" / f"mmlu_{subject}.yaml", resolve_func=True)
    cfg.pop("tag", None)
    cfg.pop("dataset_name", None)
    files = {split: str(cais / split / f"{subject}.jsonl") for split in ("dev", "test")}
    cfg.update(task=f"upstream-mmlu-{subject}", dataset_path="json", dataset_kwargs={"data_files": files})
    return cfg


COMPARED_CONFIG = ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "target_delimiter",
                   "fewshot_delimiter", "fewshot_config", "training_split", "validation_split", "fewshot_split",
                   "test_split", "description", "generation_kwargs", "filter_list", "metric_list", "repeats",
                   "num_fewshot", "task_alias")


@pytest.mark.parametrize("subject", MMLU_SUBJECTS)
@pytest.mark.parametrize("shots", [0, 5])
def test_mmlu_local_is_upstream_mmlu_on_local_csvs(manager, lm_eval_tasks, data, subject, shots):
    ours = _build(manager, f"mmlu-local-{subject}", shots=shots)
    theirs = _build(manager, _upstream_mmlu(lm_eval_tasks, subject, Path(data["mmlu_dir"]) / "cais"), shots=shots)
    assert ours.config.num_fewshot == shots
    assert {k: getattr(ours.config, k) for k in COMPARED_CONFIG} == {k: getattr(theirs.config, k)
                                                                     for k in COMPARED_CONFIG}
    assert len(ours.instances) == 4 * 12   # every test row, one loglikelihood request per choice
    assert _requests(ours) == _requests(theirs)
    assert [inst.doc for inst in ours.instances] == [inst.doc for inst in theirs.instances]   # cais/mmlu's columns
    # loglikelihoods that make choice (doc_id % 4) the most likely: the same accuracy through both tasks
    pick = lambda inst: (-float(inst.idx != inst.doc_id % 4), inst.idx == inst.doc_id % 4)  # noqa: E731
    ours_scores, theirs_scores = _scores(ours, pick), _scores(theirs, pick)
    assert ours_scores == theirs_scores
    assert 0 < ours_scores[("acc", "none")] < 1


def test_mmlu_subjects_prompts_and_groups_are_upstreams(lm_eval_tasks):
    from lm_eval.tasks._yaml_loader import load_yaml

    generator = _load_module(MMLU_TASKS / "_generate.py", "sftpack_mmlu_generate")
    upstream = _load_module(lm_eval_tasks / "mmlu" / "_generate_configs.py", "lm_eval_mmlu_generate")
    assert generator.SUBJECTS == upstream.SUBJECTS and len(generator.SUBJECTS) == 57
    default = lm_eval_tasks / "mmlu" / "default"
    members = defaultdict(list)   # upstream: a category's subjects are the files tagged mmlu_<category>_tasks
    for subject in generator.SUBJECTS:
        ours = load_yaml(MMLU_TASKS / f"mmlu-local-{subject}.yaml", resolve_func=False)
        theirs = load_yaml(default / f"mmlu_{subject}.yaml", resolve_func=False)
        assert ours["description"] == theirs["description"], subject
        assert ours["task_alias"] == theirs["task_alias"], subject
        assert ours["dataset_kwargs"] == {"subject": theirs["dataset_name"]}
        for key in ("test_split", "fewshot_split", "fewshot_config", "output_type", "doc_to_text", "doc_to_choice",
                    "doc_to_target", "metric_list", "metadata"):
            assert ours[key] == theirs[key], (subject, key)
        members[theirs["tag"].removeprefix("mmlu_").removesuffix("_tasks")].append(f"mmlu-local-{subject}")
    top = load_yaml(MMLU_TASKS / "_mmlu-local.yaml", resolve_func=False)
    upstream_top = load_yaml(default / "_mmlu.yaml", resolve_func=False)
    assert top["task"] == [name.replace("mmlu_", "mmlu-local-", 1) for name in upstream_top["task"]]
    for key in ("aggregate_metric_list", "metadata"):
        assert top[key] == upstream_top[key]
    for category in ("stem", "other", "social_sciences", "humanities"):
        group = load_yaml(MMLU_TASKS / f"_mmlu-local-{category}.yaml", resolve_func=False)
        theirs = load_yaml(default / f"_mmlu_{category}.yaml", resolve_func=False)
        assert group["group"] == f"mmlu-local-{category}"
        assert sorted(group["task"]) == sorted(members[category]), category
        for key in ("group_alias", "aggregate_metric_list", "metadata"):
            assert group[key] == theirs[key], (category, key)


def test_mmlu_local_group_loads_every_subject(tmp_path):
    """The whole `mmlu-local` group on one row per subject: 57 tasks in upstream's four category groups, so lm-eval
    aggregates it as it aggregates `mmlu` (size-weighted mean of acc at each level)."""
    from lm_eval.tasks import TaskManager

    generator = _load_module(MMLU_TASKS / "_generate.py", "sftpack_mmlu_generate")
    root = _write_mmlu(tmp_path / "mmlu", generator.SUBJECTS, test_rows=1)
    manager = TaskManager(include_defaults=False, include_path=str(MMLU_TASKS), metadata={"mmlu_dir": str(root)})
    loaded = manager.load(["mmlu-local"])
    assert sorted(loaded["tasks"]) == sorted(f"mmlu-local-{s}" for s in generator.SUBJECTS)
    group_map = {str(getattr(k, "group_name", k)): v for k, v in loaded["group_map"].items()}
    assert sorted(group_map["mmlu-local"]) == sorted(f"mmlu-local-{c}" for c in generator.CATEGORIES)
    for category in generator.CATEGORIES:
        assert sorted(group_map[f"mmlu-local-{category}"]) == sorted(
            f"mmlu-local-{s}" for s, c in generator.SUBJECTS.items() if c == category)
    for task in loaded["tasks"].values():
        assert task.dataset["test"].num_rows == 1 and task.dataset["dev"].num_rows == 5


def test_generated_mmlu_files_are_up_to_date(tmp_path):
    generator = _load_module(MMLU_TASKS / "_generate.py", "sftpack_mmlu_generate")
    generator.write(tmp_path)
    generated = {p.name: p.read_text(encoding="utf-8") for p in tmp_path.glob("*.yaml")}
    shipped = {p.name: p.read_text(encoding="utf-8") for p in MMLU_TASKS.glob("*.yaml")}
    assert generated == shipped, "run: python eval_tasks/mmlu-local/_generate.py"
    assert len(shipped) == 57 + 4 + 1


def test_mmlu_loader_reads_through_the_cmmlu_csv_loader(tmp_path, data):
    """One CSV reader for both families (eval_tasks/cmmlu-local/csv_loader.py): the same rows, cais/mmlu's columns,
    errors that name mmlu-local's own metadata key."""
    loader = _load_module(MMLU_TASKS / "mmlu_loader.py", "sftpack_mmlu_loader")
    dataset = loader.load("virology", mmlu_dir=data["mmlu_dir"], version=1.0)
    expected = [{"question": q, "subject": "virology", "choices": [a, b, c, d], "answer": "ABCD".index(answer)}
                for q, a, b, c, d, answer in _mmlu_rows("virology", "test", 12)]
    assert dataset["test"].to_list() == expected and dataset["dev"].num_rows == 5
    with pytest.raises(FileNotFoundError, match=r'mmlu-local needs .*--metadata .{"mmlu_dir": "/path/to/mmlu"}'):
        loader.load("virology")
    with pytest.raises(FileNotFoundError, match="mmlu-local: mmlu_dir=.* which has no test/ folder"):
        loader.load("virology", mmlu_dir=str(tmp_path))
    (tmp_path / "test").mkdir()
    (tmp_path / "dev").mkdir()
    with pytest.raises(FileNotFoundError, match=r"mmlu-local: no dev CSV for subject 'virology': .*virology_dev.csv"):
        loader.load("virology", mmlu_dir=str(tmp_path))
    (tmp_path / "dev" / "virology_dev.csv").write_text("q,a,b,c,d,A\n", encoding="utf-8")
    (tmp_path / "test" / "virology_test.csv").write_text("q,a,b,c,d,A\nq2,a,b,c,E\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"virology_test.csv: line 2: expected 6 columns"):
        loader.load("virology", mmlu_dir=str(tmp_path))


# ------------------------------------------------------------------------------------- a real sftpack eval


@pytest.mark.integration
def test_sftpack_eval_runs_both_tasks_with_metadata(tiny_model, data, env, tmp_path):
    """`sftpack eval --tasks squad-local,mmlu-local-anatomy --metadata '{"squad_file": ..., "mmlu_dir": ...}'` on
    the tiny model (random weights: the scores mean nothing), --limit 3: lm-eval's scores equal the metrics
    recomputed from its own samples (~30 s)."""
    metadata = json.dumps({"squad_file": data["squad_file"], "mmlu_dir": data["mmlu_dir"]})
    done = subprocess.run([sys.executable, "-m", "sftpack", "eval", "--model", str(tiny_model), "--device", "cpu",
                           "--tasks", "squad-local,mmlu-local-anatomy", "--metadata", metadata, "--limit", "3",
                           "--gen-kwargs", "max_gen_toks=8", "--out", "ev"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "ev" / "eval.json").read_text(encoding="utf-8"))
    rows = {(row["task"], row["metric"]): row["values"]["base"]["value"] for row in report["rows"]}
    assert {("squad-local", "exact_match"), ("squad-local", "f1"), ("mmlu-local-anatomy", "acc")} <= set(rows)
    samples = [json.loads(line) for path in (tmp_path / "ev" / "lm_eval").rglob("samples_squad-local_*.jsonl")
               for line in path.read_text(encoding="utf-8").splitlines()]
    assert [s["doc"]["id"] for s in samples] == ANSWERABLE[:3]
    for metric in ("exact_match", "f1"):
        recomputed = [process_results_squad(s["doc"], [s["filtered_resps"][0]])[metric] for s in samples]
        assert rows[("squad-local", metric)] == pytest.approx(sum(recomputed) / len(recomputed))
    log = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "ev" / "logs").glob("*.log"))
    assert "skipped 1 unanswerable (SQuAD v2) question(s) of 6" in log
