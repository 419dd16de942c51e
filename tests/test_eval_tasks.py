"""The tasks in eval_tasks/: every file loads, each local copy is upstream lm-eval's task on local files, and the chat
task sends exactly the prompt training saw.

    .venv/bin/python -m pytest tests/test_eval_tasks.py                       # ~1 min on 2 cores
    .venv/bin/python -m pytest tests/test_eval_tasks.py -m "not integration"  # without LLaMA-Factory / ms-swift

Offline. Data: ../shared/data/gsm8k (else the GSM8K sample shipped in the package) and ../shared/data/cmmlu
(tests that need it skip with a reason when it is absent). The upstream tasks are lm-eval's own YAML files from the
installed package, pointed at the same local files instead of the hub.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

from sftpack.answer import extract_answer

REPO = Path(__file__).resolve().parents[1]
EVAL_TASKS = REPO / "eval_tasks"
CMMLU_TASKS = EVAL_TASKS / "cmmlu-local"
SHARED = REPO.parent / "shared" / "data"
CMMLU = SHARED / "cmmlu"
LM_EVAL_VERSION = "0.4.13"  # the version the equivalence below was proven on (eval_tasks/README.md)

needs_cmmlu = pytest.mark.skipif(not (CMMLU / "test").is_dir(), reason=f"CMMLU CSVs not found at {CMMLU}")
# the module's fixtures (lm-eval's task index) live in memory: with `pytest -n 2 --dist loadgroup` its tests share one
# worker instead of building them in both
pytestmark = pytest.mark.xdist_group("eval_tasks")


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def eval_cwd(tmp_path_factory, request):
    """A folder holding dataset_info/ (GSM8K: the full split prepared once per session by conftest's `workdir`, else
    the shipped sample), the current directory with hubs off and caches inside it."""
    import datasets

    from sftpack.frameworks import offline_env

    root = tmp_path_factory.mktemp("eval_tasks")
    prepared = request.getfixturevalue("workdir" if (SHARED / "gsm8k" / "test.jsonl").exists() else "sample_workdir")
    (root / "dataset_info").symlink_to(prepared / "dataset_info")   # read-only here
    patch = pytest.MonkeyPatch()
    env = offline_env(root / "cache", base={})
    for key, value in env.items():
        patch.setenv(key, value)
    patch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(env["HF_DATASETS_CACHE"]))
    patch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    patch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    patch.chdir(root)
    yield root
    patch.undo()


@pytest.fixture(scope="module")
def lm_eval_tasks():
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


@pytest.fixture(scope="module")
def manager(eval_cwd, lm_eval_tasks):
    """One index over upstream gsm8k + cmmlu and our eval_tasks/ (lm-eval's ~14k built-ins take ~10 s to index)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False, metadata={"cmmlu_dir": str(CMMLU)},
                       include_path=[str(lm_eval_tasks / "gsm8k"), str(lm_eval_tasks / "cmmlu"), str(EVAL_TASKS)])


def _upstream(manager, name: str, **overrides) -> dict:
    """Upstream task `name`'s config (its own YAML, includes merged) with `overrides`; tags dropped."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(manager.task_index[name].yaml_path, resolve_func=True)
    cfg.pop("tag", None)
    cfg.pop("dataset_name", None)
    cfg.update(overrides)
    return cfg


def _build(manager, spec, limit: int | None, shots: int | None = None):
    """Task `spec` with its requests built as lm-eval's evaluator builds them (`--num_fewshot shots`)."""
    task = next(iter(manager.load([spec])["tasks"].values()))
    if shots is not None:
        task.set_config(key="num_fewshot", value=shots)  # evaluator.simple_evaluate, for a task whose default != 0
    task.set_fewshot_seed(seed=1234)  # lm-eval's default fewshot seed (evaluator.simple_evaluate)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return task


def _requests(task) -> list[tuple]:
    return [(inst.doc_id, inst.idx, inst.request_type, json.dumps(inst.args, ensure_ascii=False, default=str))
            for inst in task.instances]


def _scores(task, output_for_doc) -> dict[tuple[str, str], float]:
    """Filters + metrics of `task` on given model outputs, as lm-eval's evaluator computes them."""
    for inst in task.instances:
        inst.resps = [output_for_doc(inst)]
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


COMPARED_CONFIG = ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "target_delimiter",
                   "fewshot_delimiter", "fewshot_config", "training_split", "fewshot_split", "test_split",
                   "description", "generation_kwargs", "filter_list", "metric_list", "repeats", "num_fewshot")


def _config(task) -> dict:
    return {key: getattr(task.config, key) for key in COMPARED_CONFIG}


# ---------------------------------------------------------------------------------------------- every file loads


def test_lm_eval_is_the_version_the_equivalence_was_proven_on():
    """eval_tasks/README.md names the lm-eval version; after an upgrade re-run these tests and update it."""
    from importlib.metadata import version

    assert version("lm-eval") == LM_EVAL_VERSION


def test_every_task_file_is_indexed_by_lm_eval():
    """lm-eval skips a YAML it cannot read with only a debug line: each shipped file must be in its index."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    index = TaskManager(include_defaults=False, include_path=str(EVAL_TASKS)).task_index
    files = sorted(EVAL_TASKS.rglob("*.yaml"))
    # gsm8k family, one per CMMLU subject, the cmmlu-local group, squad-local, one per MMLU subject, the mmlu-local
    # group and its four category groups
    assert len(files) == 6 + 67 + 1 + 1 + 57 + 5
    names = []
    for path in files:
        cfg = load_yaml(path, resolve_func=True)  # resolves includes and !function too
        name = cfg.get("task") if isinstance(cfg.get("task"), str) else cfg.get("group")
        assert isinstance(name, str), path
        assert index[name].yaml_path == path.resolve(), f"{path} is not what lm-eval indexes as {name}"
        names.append(name)
    assert sorted(index) == sorted(names)  # nothing else (no tags) is registered


def test_no_shipped_task_shadows_a_builtin():
    """A local task named like a built-in silently replaces it in lm-eval."""
    from sftpack.evaluate.tasks import builtin_tasks, task_manager

    ours = task_manager(EVAL_TASKS).all_tasks
    assert builtin_tasks(["gsm8k", "cmmlu_agronomy", "chain_of_thought"]) == {"gsm8k", "cmmlu_agronomy",
                                                                            "chain_of_thought"}
    assert builtin_tasks(ours) == set()


@needs_cmmlu
def test_every_task_builds_requests(manager):
    from lm_eval.tasks._index import Kind

    # squad-local and mmlu-local need their own data: tests/test_retention_tasks.py builds them (every MMLU subject)
    apart = (EVAL_TASKS / "squad-local", EVAL_TASKS / "mmlu-local")
    ours = {name: e for name, e in manager.task_index.items() if e.yaml_path and EVAL_TASKS in e.yaml_path.parents
            and not any(folder in e.yaml_path.parents for folder in apart)}
    groups = [name for name, e in ours.items() if e.kind == Kind.GROUP]
    grouped = {m for g in groups for m in ours[g].cfg["task"]}
    loaded = manager.load(groups + [name for name, e in ours.items() if e.kind == Kind.TASK and name not in grouped])
    assert sorted(loaded["tasks"]) == sorted(name for name, e in ours.items() if e.kind == Kind.TASK)
    for name, task in loaded["tasks"].items():
        task.build_all_requests(limit=1, rank=0, world_size=1)
        assert task.instances, name
    assert len(loaded["group_map"]["cmmlu-local"]) == 67


# ---------------------------------------------------------------------------------------- gsm8k = upstream gsm8k


def _outputs(doc_id: int, answer: str) -> str:
    """Model outputs of every kind the filters must tell apart, chosen by doc id."""
    final = extract_answer(answer)
    return [answer,                                    # the reference solution: strict and flexible hit
            f"The answer is {final}.",                 # chain-of-thought style
            f"so she has {final} dollars",             # a number, no `####`
            f"#### {final}0",                          # the strict format, the wrong value
            "I cannot tell."][doc_id % 5]


@pytest.mark.parametrize("local, upstream, shots", [
    ("gsm8k-local", "gsm8k", None),
    ("gsm8k-local-0shot", "gsm8k", 0),
    ("gsm8k-local-1shot", "gsm8k", 1),
    ("gsm8k-local-8shot", "gsm8k", 8),
    ("gsm8k-local-cot", "gsm8k_cot", None),
])
def test_gsm8k_variant_is_upstream_on_local_files(manager, local, upstream, shots):
    from lm_eval.tasks._yaml_loader import load_yaml

    local_cfg = load_yaml(manager.task_index[local].yaml_path, resolve_func=False)
    overrides = {"task": f"upstream-{local}", "dataset_path": local_cfg["dataset_path"],
                 "dataset_kwargs": local_cfg["dataset_kwargs"]}
    ours = _build(manager, local, limit=25)
    theirs = _build(manager, _upstream(manager, upstream, **overrides), limit=25, shots=shots)  # = --num_fewshot

    assert _config(ours) == _config(theirs)
    assert ours.config.num_fewshot == (shots if shots is not None else theirs.config.num_fewshot)
    assert len(ours.instances) == 25
    assert _requests(ours) == _requests(theirs)  # byte-identical contexts, few-shot examples, stop sequences
    ours_scores = _scores(ours, lambda inst: _outputs(inst.doc_id, inst.doc["answer"]))
    theirs_scores = _scores(theirs, lambda inst: _outputs(inst.doc_id, inst.doc["answer"]))
    assert ours_scores == theirs_scores
    assert 0 < ours_scores[("exact_match", "strict-match")] < 1  # the outputs really separate right from wrong


# ------------------------------------------------------------------------------------------- the chat task


def test_chat_task_is_gsm8k_local_with_the_chat_prompt(manager):
    chat = _build(manager, "gsm8k-local-chat", limit=3)
    base = _build(manager, "gsm8k-local", limit=3)
    assert chat.config.num_fewshot == 0
    assert chat.config.generation_kwargs["until"] == ["<|im_end|>"]  # lm-eval adds the model's eos itself
    assert chat.config.generation_kwargs["do_sample"] is False
    assert chat.config.filter_list == base.config.filter_list  # upstream gsm8k's strict `#### N` and flexible
    assert chat.config.metric_list == base.config.metric_list
    context = chat.instances[0].args[0]
    assert context.startswith("<|im_start|>system\n") and context.endswith("<|im_start|>assistant\n")


# ------------------------------------------------------------------------------------- cmmlu-local = upstream


def _csv_upstream(manager, subject: str) -> dict:
    """Upstream cmmlu_<subject> reading the CSVs through the `csv` builder (strings kept as strings)."""
    import datasets

    columns = ["Question", "A", "B", "C", "D", "Answer"]
    return _upstream(manager, f"cmmlu_{subject}", task=f"upstream-cmmlu-{subject}", dataset_path="csv",
                     dataset_kwargs={"data_files": {split: str(CMMLU / split / f"{subject}.csv")
                                                    for split in ("dev", "test")},
                                     "usecols": columns, "keep_default_na": False,
                                     "features": datasets.Features({c: datasets.Value("string") for c in columns})})


@needs_cmmlu
@pytest.mark.parametrize("subject", ["agronomy", "computer_science", "world_religions"])
@pytest.mark.parametrize("shots", [0, 5])
def test_cmmlu_local_is_upstream_cmmlu_on_local_csvs(manager, subject, shots):
    ours = _build(manager, f"cmmlu-local-{subject}", limit=40, shots=shots)
    theirs = _build(manager, _csv_upstream(manager, subject), limit=40, shots=shots)
    assert ours.config.num_fewshot == shots
    assert _config(ours) == _config(theirs)
    assert len(ours.instances) == 4 * 40  # one loglikelihood request per choice
    assert _requests(ours) == _requests(theirs)
    # loglikelihoods that make choice (doc_id % 4) the most likely: same accuracy through both tasks
    pick = lambda inst: (-float(inst.idx != inst.doc_id % 4), inst.idx == inst.doc_id % 4)  # noqa: E731
    ours_scores, theirs_scores = _scores(ours, pick), _scores(theirs, pick)
    assert ours_scores == theirs_scores
    assert 0 < ours_scores[("acc", "none")] < 1


def test_cmmlu_subjects_and_prompts_are_upstreams(lm_eval_tasks):
    from lm_eval.tasks._yaml_loader import load_yaml

    generator = _load_module(CMMLU_TASKS / "_generate.py", "sftpack_cmmlu_generate")
    upstream = _load_module(lm_eval_tasks / "cmmlu" / "_generate_configs.py", "lm_eval_cmmlu_generate")
    assert generator.SUBJECTS == upstream.SUBJECTS
    for subject in generator.SUBJECTS:
        ours = load_yaml(CMMLU_TASKS / f"cmmlu-local-{subject}.yaml", resolve_func=False)
        theirs = load_yaml(lm_eval_tasks / "cmmlu" / f"cmmlu_{subject}.yaml", resolve_func=False)
        assert ours["description"] == theirs["description"], subject
        for key in ("test_split", "fewshot_split", "fewshot_config", "output_type", "doc_to_text", "doc_to_choice",
                    "doc_to_target", "metric_list", "metadata"):
            assert ours[key] == theirs[key], (subject, key)
    group = load_yaml(CMMLU_TASKS / "_cmmlu-local.yaml", resolve_func=False)
    upstream_group = load_yaml(lm_eval_tasks / "cmmlu" / "_cmmlu.yaml", resolve_func=False)
    assert group["aggregate_metric_list"] == upstream_group["aggregate_metric_list"]
    assert group["task"] == [name.replace("cmmlu_", "cmmlu-local-", 1) for name in upstream_group["task"]]


def test_generated_chat_task_is_up_to_date(tiny_model):
    """gsm8k-local-chat.yaml is generated from train_configs/qwen_gsm8k.yaml (its template and system prompt)."""
    from sftpack.evaluate.tasks import chat_task_yaml

    generated = chat_task_yaml(REPO / "train_configs" / "qwen_gsm8k.yaml", tiny_model,
                               shown="train_configs/qwen_gsm8k.yaml")
    assert generated == (EVAL_TASKS / "gsm8k-local-chat.yaml").read_text(encoding="utf-8"), \
        "regenerate: python -m sftpack.evaluate.tasks chat train_configs/qwen_gsm8k.yaml --tokenizer MODEL_DIR " \
        "--out eval_tasks/gsm8k-local-chat.yaml"


def test_generated_cmmlu_files_are_up_to_date(tmp_path):
    generator = _load_module(CMMLU_TASKS / "_generate.py", "sftpack_cmmlu_generate")
    generator.write(tmp_path)
    generated = {p.name: p.read_text(encoding="utf-8") for p in tmp_path.glob("*.yaml")}
    shipped = {p.name: p.read_text(encoding="utf-8") for p in CMMLU_TASKS.glob("*.yaml")}
    assert generated == shipped, "run: python eval_tasks/cmmlu-local/_generate.py"


# ------------------------------------------------------------------------------------------- the CSV loader


@needs_cmmlu
def test_csv_loader_reads_mmlu_layout_like_cmmlu(tmp_path):
    loader = _load_module(CMMLU_TASKS / "csv_loader.py", "sftpack_csv_loader")
    cmmlu = loader.load("anatomy", cmmlu_dir=str(CMMLU), version=1.0, pretrained="ignored")
    for split in ("dev", "test"):  # the same rows in MMLU's layout: no header, no index, <subject>_<split>.csv
        (tmp_path / split).mkdir()
        with open(CMMLU / split / "anatomy.csv", encoding="utf-8", newline="") as src, \
                open(tmp_path / split / f"anatomy_{split}.csv", "w", encoding="utf-8", newline="") as dst:
            csv.writer(dst).writerows(row[1:] for row in list(csv.reader(src))[1:])
    mmlu = loader.load("anatomy", cmmlu_dir=str(tmp_path))
    assert cmmlu["test"].to_list() == mmlu["test"].to_list()
    assert cmmlu["dev"].num_rows == 5 and cmmlu["test"].num_rows > 100
    assert set(cmmlu["test"]["Answer"]) == {"A", "B", "C", "D"}


def test_csv_loader_errors_name_the_fix(tmp_path):
    loader = _load_module(CMMLU_TASKS / "csv_loader.py", "sftpack_csv_loader")
    with pytest.raises(FileNotFoundError, match='--metadata .{"cmmlu_dir"'):
        loader.load("anatomy")
    with pytest.raises(FileNotFoundError, match="no test/ folder"):
        loader.load("anatomy", cmmlu_dir=str(tmp_path))
    (tmp_path / "test").mkdir()
    (tmp_path / "dev").mkdir()
    with pytest.raises(FileNotFoundError, match="no dev CSV for subject 'anatomy'"):
        loader.load("anatomy", cmmlu_dir=str(tmp_path))
    (tmp_path / "dev" / "anatomy.csv").write_text(",Question,A,B,C,D,Answer\n0,q,a,b,c,d,E\n", encoding="utf-8")
    (tmp_path / "test" / "anatomy.csv").write_text(",Question,A,B,C,D,Answer\n0,q,a,b,c,d,A\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"anatomy.csv: line 2: answer must be one of"):
        loader.load("anatomy", cmmlu_dir=str(tmp_path))


# ------------------------------------------------- the chat prompt is the training prompt (real frameworks)


def _lf_training_prompts(tiny: Path, workdir: Path, dataset: str, n: int) -> tuple[list[list[int]], object]:
    """Prompt token ids of the first `n` rows of `dataset`, tokenized by LLaMA-Factory exactly as training does:
    train_configs/qwen_gsm8k.yaml (template, default_system, cutoff_len, ...) with only model, data and output
    redirected."""
    import yaml
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.extras.constants import IGNORE_INDEX
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    cfg = yaml.safe_load((REPO / "train_configs" / "qwen_gsm8k.yaml").read_text(encoding="utf-8"))
    cfg.update(model_name_or_path=str(tiny), dataset=dataset, dataset_dir=str(workdir / "dataset_info"),
               max_samples=n, output_dir=str(workdir / "lf_out"), bf16=False, preprocessing_num_workers=None,
               report_to="none")
    model_args, data_args, training_args, _, _ = get_train_args(cfg)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    rows = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    prompts = []
    for row in rows["train_dataset"]:
        start = next(i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX)
        prompts.append(row["input_ids"][:start])
    return prompts, tokenizer_module["tokenizer"]


@pytest.mark.integration
def test_chat_task_sends_the_llamafactory_training_prompt(manager, eval_cwd, tiny_model):
    from lm_eval.models.huggingface import HFLM

    n = 4
    prompts, tokenizer = _lf_training_prompts(tiny_model, eval_cwd, "gsm8k_test", n)
    task = _build(manager, "gsm8k-local-chat", limit=n)
    contexts = [inst.args[0] for inst in sorted(task.instances, key=lambda inst: inst.doc_id)]
    questions = [inst.doc["question"] for inst in sorted(task.instances, key=lambda inst: inst.doc_id)]
    assert len(prompts) == len(contexts) == n
    lm = HFLM(pretrained=str(tiny_model), device="cpu", batch_size=1)
    for ids, context, question in zip(prompts, contexts, questions, strict=True):
        assert question in context
        assert tokenizer.decode(ids, skip_special_tokens=False) == context  # the same string
        assert lm.tok_encode(context) == ids  # and the same token ids, as lm-eval's hf model encodes it
        # ... which is also the model's own (Qwen2.5) chat template with its default system prompt, the `qwen`
        # template's default (no config pins one)
        system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        rendered = tokenizer.apply_chat_template([{"role": "system", "content": system},
                                                  {"role": "user", "content": question}],
                                                 tokenize=False, add_generation_prompt=True)
        assert rendered == context


@pytest.mark.integration
def test_chat_task_sends_the_swift_training_prompt(manager, eval_cwd, tiny_model):
    import yaml

    from sftpack import dataset_info
    from sftpack.swift_datasets import alpaca_columns, alpaca_messages

    os.environ.setdefault("MODELSCOPE_CACHE", str(eval_cwd / "cache" / "modelscope"))
    from swift import get_processor, get_template

    cfg = yaml.safe_load((REPO / "train_configs" / "swift" / "qwen_lora_gsm8k.yaml").read_text(encoding="utf-8"))
    processor = get_processor(str(tiny_model), model_type="qwen2", use_hf=True)
    template = get_template(processor, default_system=cfg.get("system"), template_type=cfg["template"],
                            max_length=cfg["max_length"], truncation_strategy=cfg["truncation_strategy"])
    template.set_mode("train")
    entry = dataset_info.load(eval_cwd / "dataset_info" / "dataset_info.json")["gsm8k_test"]
    task = _build(manager, "gsm8k-local-chat", limit=3)
    for inst in sorted(task.instances, key=lambda inst: inst.doc_id):
        # the rows as the sftpack Swift plugin hands them to Swift at training time
        encoded = template.encode({"messages": alpaca_messages(inst.doc, alpaca_columns(entry))})
        start = next(i for i, label in enumerate(encoded["labels"]) if label != -100)
        assert processor.decode(encoded["input_ids"][:start], skip_special_tokens=False) == inst.args[0]


@pytest.mark.integration
def test_chat_task_leaves_room_for_every_reference_solution(manager, eval_cwd, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    longest = 0
    for split in ("train", "test"):
        with open(eval_cwd / "dataset_info" / f"gsm8k_{split}.jsonl", encoding="utf-8") as rows:
            for line in rows:
                answer = json.loads(line)["answer"]
                longest = max(longest, len(tokenizer(answer + "<|im_end|>")["input_ids"]))
    max_gen_toks = _build(manager, "gsm8k-local-chat", limit=1).config.generation_kwargs["max_gen_toks"]
    assert longest <= max_gen_toks
