"""Issue 11, parts 8-10: the frameworks' side of "nothing lost, nothing stale, nothing silent".

    .venv/bin/python -m pytest tests/test_nothing_lost_frameworks.py                       # ~2 min on 2 busy cores
    .venv/bin/python -m pytest tests/test_nothing_lost_frameworks.py -m "not integration"  # no CLI runs, ~20 s

- The Swift dataset plugin never breaks unrelated runs: every LLaMA-Factory entry Swift can read is served with the
  rows LF's own converters build; each one it cannot is skipped with one line naming it and why; a run fails
  (at once, one line, before the model loads) only when it asks for such an entry — the real `swift sft`.
- The system prompt belongs to the template: no shipped config pins it, both frameworks take the template's
  default, a template switch gives the same token ids in both and no Qwen system prompt under a non-Qwen
  template — the frameworks' own encoders and the real CLIs — and the chat eval task is generated from it.
- Safe defaults: nothing shipped turns on trust_remote_code.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from sftpack import frameworks as fw
from sftpack import parity
from sftpack.errors import SftpackError
from sftpack.samples import sample_path
from sftpack.swift_datasets import alpaca_columns, plan

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
ROWS = 16

# ------------------------------------------------------------------------------------- a user's dataset_info


def _user_folder(root: Path) -> Path:
    """A dataset_info/ as a user keeps it: sftpack's GSM8K, LF-docs style entries, and entries Swift cannot
    serve (preference data, openai formatting, a script, a folder, a typo'd key, a missing file, not an object)."""
    folder = root / "dataset_info"
    folder.mkdir(parents=True)
    rows = [json.loads(line) for line in sample_path("gsm8k", "train").read_text().splitlines()[:ROWS]]

    def write(name: str, items: list[dict]) -> None:
        (folder / name).write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")

    write("gsm8k_train.jsonl", [{"question": r["question"], "answer": r["answer"]} for r in rows])
    write("alpaca.jsonl", [{"instruction": "Solve.", "input": r["question"], "output": r["answer"],
                            "system": "Be brief." if i % 2 else "", "history": [["Hi", "Hello"]] if i % 3 else []}
                           for i, r in enumerate(rows)])
    write("text.jsonl", [{"text": r["question"] + "\n" + r["answer"]} for r in rows])
    write("chat.jsonl", [{"conv": [{"who": "sys", "text": "Be brief."}, {"who": "me", "text": r["question"]},
                                   {"who": "it", "text": r["answer"]}]} for r in rows])
    entries = {
        "gsm8k_train": {"file_name": "gsm8k_train.jsonl", "columns": {"prompt": "question", "response": "answer"}},
        # LLaMA-Factory's data/README.md alpaca example, and one with query/response only
        "lf_doc_alpaca": {"file_name": "alpaca.jsonl", "columns": {
            "prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history"}},
        "query_response": {"file_name": "alpaca.jsonl", "columns": {"query": "input", "response": "output"}},
        "pt_text": {"file_name": "text.jsonl", "columns": {"prompt": "text"}},     # LF's pretraining entry
        "my_chat": {"file_name": "chat.jsonl", "formatting": "sharegpt", "columns": {"messages": "conv"},
                    "tags": {"role_tag": "who", "content_tag": "text", "user_tag": "me", "assistant_tag": "it",
                             "system_tag": "sys"}},
        "pairs": {"file_name": "alpaca.jsonl", "ranking": True,
                  "columns": {"prompt": "instruction", "chosen": "output", "rejected": "input"}},
        "oai": {"file_name": "chat.jsonl", "formatting": "openai", "columns": {"messages": "conv"}},
        "scripted": {"script_url": "some/script"},
        "a_folder": {"file_name": "."},
        "typo": {"file_name": "alpaca.jsonl", "fromatting": "sharegpt"},
        "gone": {"file_name": "gone.jsonl"},
        "not_an_object": ["gone.jsonl"],
    }
    (folder / "dataset_info.json").write_text(json.dumps(entries, indent=2), encoding="utf-8")
    return folder


SERVED = {"gsm8k_train": "alpaca", "lf_doc_alpaca": "alpaca", "query_response": "alpaca", "pt_text": "text",
          "my_chat": "sharegpt"}
SKIPPED = {"pairs": "preference data", "oai": "formatting 'openai'", "scripted": "source 'script_url'",
           "a_folder": "is a folder", "typo": "unknown keys ['fromatting']", "gone": "file not found",
           "not_an_object": "not a JSON object"}


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    return _user_folder(tmp_path_factory.mktemp("user"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ----------------------------------------------------------------------------- part 8: what Swift is served


def test_every_entry_is_served_or_skipped_with_its_reason(user_folder):
    entries = json.loads((user_folder / "dataset_info.json").read_text())
    plans = {name: plan(name, entry, user_folder) for name, entry in entries.items()}
    assert {n: p.kind for n, p in plans.items() if not p.reason} == SERVED
    for name, words in SKIPPED.items():
        assert words in plans[name].reason, (name, plans[name].reason)
    assert str(user_folder / "gone.jsonl") in plans["gone"].reason  # the resolved path, not just the name


@pytest.mark.parametrize("entry, words", [
    ({"file_name": "x.jsonl", "columns": "oops"}, "'columns' must be a JSON object"),
    ({"file_name": "x.jsonl", "formatting": "sharegpt", "tags": ["who"]}, "'tags' must be a JSON object"),
    ({"file_name": "x.jsonl", "columns": {"prompt": "q", "respones": "a"}}, "unknown keys ['columns.respones']"),
    ({"file_name": "x.xlsx"}, "extension '.xlsx' is not one of"),
    ({"file_name": 3}, "file not found"),
    ({"hf_hub_url": "org/data", "folder": "sub"}, "'folder' (a hub sub-folder)"),
    ({"om_hub_url": "org/data"}, "source 'om_hub_url'"),
    ({"file_name": "x.jsonl", "num_samples": "ten"}, "num_samples must be a positive integer"),
    ({"file_name": "x.jsonl", "columns": {"prompt": "q", "response": "a", "images": "img"}}, "tools and media"),
    ({"file_name": "x.jsonl", "columns": {"prompt": "q", "response": "a", "tools": "t"}}, "tools and media"),
    ({"file_name": "x.jsonl", "columns": {"prompt": "q", "response": "a", "kto_tag": "ok"}}, "KTO data"),
    ({"file_name": "x.jsonl", "columns": {"history": "h"}}, "history without a response column"),
    ({"file_name": "x.jsonl", "columns": {"response": "a"}}, "without a prompt, query or history column"),
    ({"file_name": "x.jsonl", "formatting": 3}, "formatting 3 is not one of"),
    ({}, "no source"),
])
def test_odd_entries_are_skipped_with_a_reason(entry, words, tmp_path):
    (tmp_path / "x.jsonl").write_text("{}\n")
    (tmp_path / "x.xlsx").write_text("")
    reason = plan("odd", entry, tmp_path).reason
    assert reason and words in reason and "\n" not in reason


def test_hub_entries_and_samples_are_served(tmp_path):
    hub = plan("hub", {"hf_hub_url": "openai/gsm8k", "subset": "main", "split": "test"}, tmp_path)
    assert hub.reason is None and hub.where == {"hf_dataset_id": "openai/gsm8k", "ms_dataset_id": None,
                                                "subsets": ["main"], "split": ["test"]}
    (tmp_path / "x.jsonl").write_text("{}\n")
    assert plan("n", {"file_name": "x.jsonl", "num_samples": 4}, tmp_path).sample == 4


def _lf_messages(entry: dict, row: dict) -> list[dict] | None:
    """LLaMA-Factory's own converter on one row, in Swift's message roles (None: LF would drop the row)."""
    from llamafactory.data.converter import DATASET_CONVERTERS
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import DataArguments

    attr = get_dataset_list(["x"], {"x": entry})[0]
    out = DATASET_CONVERTERS[attr.formatting](dataset_attr=attr, data_args=DataArguments())(row)
    turns = out["_prompt"] + out["_response"]
    if len(out["_response"]) != 1 or not turns:
        return None
    roles = {"user": "user", "assistant": "assistant", "observation": "tool_response", "function": "tool_call"}
    system = [{"role": "system", "content": out["_system"]}] if out["_system"] else []
    return system + [{"role": roles[t["role"]], "content": t["content"]} for t in turns]


TAGS = {"role_tag": "who", "content_tag": "text", "user_tag": "me", "assistant_tag": "it", "system_tag": "sys",
        "observation_tag": "tool", "function_tag": "call"}
SHAREGPT = {"file_name": "x.jsonl", "formatting": "sharegpt", "columns": {"messages": "conv", "system": "sys_col"},
            "tags": TAGS}
ALPACA = {"file_name": "x.jsonl", "columns": {"prompt": "ins", "query": "inp", "response": "out", "system": "sys",
                                              "history": "hist"}}


@pytest.mark.parametrize("entry, row", [
    (ALPACA, {"ins": "Add", "inp": "2 and 3", "out": "5", "sys": "Be brief", "hist": [["Hi", "Hello"]]}),
    (ALPACA, {"ins": "Add", "inp": "", "out": "5", "sys": "", "hist": None}),
    (ALPACA, {"ins": "Add", "inp": "2 and 3", "out": None, "sys": "", "hist": []}),          # no response: dropped
    ({"file_name": "x.jsonl", "columns": {"query": "q", "response": "r"}}, {"q": "2+3?", "r": "5"}),
    ({"file_name": "x.jsonl"}, {"instruction": "Add", "input": "2 and 3", "output": "5"}),  # LF's default columns
    (SHAREGPT, {"conv": [{"who": "sys", "text": "Be brief"}, {"who": "me", "text": "Hi"}, {"who": "it", "text": "Yo"}],
                "sys_col": "ignored: a system turn wins"}),
    (SHAREGPT, {"conv": [{"who": "me", "text": "Weather?"}, {"who": "call", "text": '{"name": "w"}'},
                         {"who": "tool", "text": "sunny"}, {"who": "it", "text": "Sunny."}], "sys_col": "Be brief"}),
    (SHAREGPT, {"conv": [{"who": "me", "text": "Hi"}, {"who": "me", "text": "Hi again"}], "sys_col": ""}),  # dropped
    (SHAREGPT, {"conv": [{"who": "me", "text": "Hi"}], "sys_col": ""}),                                 # dropped
])
def test_swift_rows_are_llamafactorys_rows(entry, row, tmp_path):
    """The rows Swift trains on are the messages LLaMA-Factory's own converter builds from the same row."""
    (tmp_path / "x.jsonl").write_text("{}\n")
    how = plan("x", entry, tmp_path)
    assert how.reason is None
    assert how.rows(dict(row)) == _lf_messages(entry, dict(row))


def test_pretraining_text_is_the_text_llamafactory_pretrains_on(tmp_path):
    """LF's pretraining reads `_prompt[0]["content"]` of an alpaca entry without response (PretrainDatasetProcessor);
    Swift gets that text as one assistant message, its pretraining format."""
    from llamafactory.data.converter import DATASET_CONVERTERS
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import DataArguments

    (tmp_path / "t.jsonl").write_text("{}\n")
    for entry, row in (({"file_name": "t.jsonl", "columns": {"prompt": "text"}}, {"text": "Natalia sold clips."}),
                       ({"file_name": "t.jsonl", "columns": {"prompt": "title", "query": "body"}},
                        {"title": "Clips", "body": "Natalia sold clips."})):
        attr = get_dataset_list(["t"], {"t": entry})[0]
        lf = DATASET_CONVERTERS["alpaca"](dataset_attr=attr, data_args=DataArguments())(row)
        how = plan("t", entry, tmp_path)
        assert how.kind == "text" and alpaca_columns(entry) == entry["columns"]
        assert how.rows(row) == [{"role": "assistant", "content": lf["_prompt"][0]["content"]}]


def test_requests_fail_only_for_what_cannot_be_served(user_folder, monkeypatch):
    from sftpack.errors import SftpackError
    from sftpack.swift_datasets import check_requested, register

    warnings: list[str] = []
    registration = register(user_folder / "dataset_info.json", warn=warnings.append)
    assert registration.served == list(SERVED)
    assert [w.split("'")[1] for w in warnings] == list(SKIPPED)  # one line each, naming the entry
    assert all(len(w.splitlines()) == 1 for w in warnings)
    monkeypatch.chdir(user_folder.parent)
    check_requested(["gsm8k_train", "pt_text#4", "my_chat:default", "AI-ModelScope/alpaca-gpt4-data-en",
                     str(user_folder / "text.jsonl"), "self-cognition", "hf::squad"], registration)
    for requested, words in (("gone", "file not found: " + str(user_folder / "gone.jsonl")),
                             ("pairs#10", "preference data"), ("gsm8k_trian", "did you mean 'gsm8k_train'?")):
        with pytest.raises(SftpackError, match=r"dataset '.*") as err:
            check_requested(["gsm8k_train", requested], registration)
        assert words in str(err.value) and "\n" not in str(err.value)
    # no dataset_info.json: a bare name cannot be served, a hub id or a path still can
    check_requested(["AI-ModelScope/alpaca-gpt4-data-en", str(user_folder / "text.jsonl")], None, "FILE: not found")
    with pytest.raises(SftpackError, match=r"\['my_data'\] requested, but FILE: not found"):
        check_requested(["my_data#5"], None, "FILE: not found")


def test_a_refused_entry_fails_by_name_in_swifts_loader_too(user_folder):
    """Any other caller (Swift's own load_dataset) gets the same one-line reason, not a hub lookup."""
    from swift.dataset import load_dataset

    from sftpack.errors import SftpackError
    from sftpack.swift_datasets import register

    register(user_folder / "dataset_info.json", warn=lambda line: None)
    with pytest.raises(SftpackError, match=r"dataset 'gone' cannot be served to swift: file not found: .*gone.jsonl"):
        load_dataset(["gone"], num_proc=1)
    served, _ = load_dataset(["my_chat"], num_proc=1)
    assert [m["role"] for m in served[0]["messages"]] == ["system", "user", "assistant"]


def _swift(tiny_model: Path, cwd: Path, out: Path, env: dict, *flags: str) -> tuple[int, str, float]:
    cmd = fw.swift_sft_cmd(fw.SWIFT_LORA_CONFIG, fw.tiny_swift_overrides(tiny_model, out, steps=2))
    started = time.perf_counter()
    done = subprocess.run([str(c) for c in cmd] + list(flags), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - started


@pytest.mark.integration
def test_swift_sft_trains_beside_entries_it_cannot_serve(tiny_model, tmp_path, env):
    """The real `swift sft`, a dataset_info.json that also holds unmappable and broken entries."""
    folder = _user_folder(tmp_path)
    before = _snapshot(folder)
    code, output, _ = _swift(tiny_model, tmp_path, tmp_path / "ok", env,
                             "--dataset", "gsm8k_train", "lf_doc_alpaca", "query_response", "pt_text", "my_chat")
    assert code == 0, output[-3000:]
    for name, words in SKIPPED.items():  # one warning line per skipped entry, naming it and why
        assert sum(f"sftpack: swift: skipped '{name}': " in line and words in line
                   for line in output.splitlines()) == 1, name
    summary = next(json.loads(line) for line in (tmp_path / "ok" / "logging.jsonl").read_text().splitlines()
                   if "train_dataset" in line)
    assert f"size={5 * ROWS}" in summary["train_dataset"]  # every row of every requested entry
    assert "Traceback" not in output
    assert _snapshot(folder) == before  # the plugin reads only

    # one run requesting a servable entry and three that cannot be served (a missing file, preference data, a typo):
    # it fails at once with one line that names each of the three with its reason
    refused = {"gone": f"file not found: {folder / 'gone.jsonl'}", "pairs": "preference data (ranking: true)",
               "gsm8k_trian": "did you mean 'gsm8k_train'?"}
    code, output, seconds = _swift(tiny_model, tmp_path, tmp_path / "refused", env,
                                   "--dataset", "gsm8k_train", *refused)
    errors = [line for line in output.splitlines() if line.startswith("sftpack: error:")]
    assert code != 0 and len(errors) == 1, output[-3000:]
    for requested, words in refused.items():
        assert f"'{requested}'" in errors[0] and words in errors[0], (requested, errors[0])
    assert "Traceback" not in output and "model_kwargs" not in output  # stopped before the model loads
    print(f"swift sft --dataset gsm8k_train {' '.join(refused)}: exit {code} after {seconds:.1f} s: {errors[0]}")
    assert _snapshot(folder) == before


# ------------------------------------------------------------- part 9: the system prompt follows the template


def test_no_shipped_config_pins_a_system_prompt():
    for path in sorted(fw.TRAIN_CONFIGS.rglob("*.yaml")):
        cfg = parity.load_yaml(path)
        assert "default_system" not in cfg and "system" not in cfg, path


def test_template_defaults_are_the_frameworks_own():
    """sftpack.parity's table of template system prompts = the installed frameworks' registries."""
    from llamafactory.data.template import TEMPLATES
    from swift.template import TEMPLATE_MAPPING

    for name, system in parity.LF_TEMPLATE_SYSTEMS.items():
        assert (TEMPLATES[name].default_system or "") == system, name
    for name, system in parity.SWIFT_TEMPLATE_SYSTEMS.items():
        assert (TEMPLATE_MAPPING[name].default_system or "") == system, name


def _pair(lf_template: str, swift_template: str, **system) -> tuple[dict, dict]:
    lf = {**parity.load_yaml(fw.LF_LORA_CONFIG), "template": lf_template}
    swift = {**parity.load_yaml(fw.SWIFT_LORA_CONFIG), "template": swift_template}
    if system:
        lf["default_system"], swift["system"] = system["system"], system["system"]
    return lf, swift


def _encode(lf_cfg: dict, swift_cfg: dict, tiny_model: Path, row: dict):
    messages = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
    return (fw.adapter("llamafactory").encode_sample(lf_cfg, tiny_model, messages),
            fw.adapter("swift").encode_sample(swift_cfg, tiny_model, messages))


GSM8K_ROW = json.loads(sample_path("gsm8k", "train").read_text().splitlines()[0])


@pytest.mark.parametrize("lf_template, swift_template, system, expected", [
    ("qwen", "qwen2_5", None, QWEN_SYSTEM),       # the shipped pair: Qwen2.5's own default
    ("chatml", "chatml", None, ""),               # a non-Qwen template: no system prompt at all
    ("chatml", "chatml", "Be brief.", "Be brief."),   # the user's own, in both
    ("qwen", "qwen2_5", "", ""),                  # explicitly none
])
def test_switching_template_gives_same_ids_and_its_own_system(lf_template, swift_template, system, expected,
                                                               tiny_model):
    lf_cfg, swift_cfg = _pair(lf_template, swift_template, **({} if system is None else {"system": system}))
    assert parity.differences(parity.normalise_lf(lf_cfg), parity.normalise_swift(swift_cfg)) == {}
    assert parity.normalise_lf(lf_cfg)["system"] == expected
    lf, swift = _encode(lf_cfg, swift_cfg, tiny_model, GSM8K_ROW)
    assert (lf.input_ids, lf.labels) == (swift.input_ids, swift.labels)
    assert lf.prompt == swift.prompt and lf.response == swift.response
    assert (QWEN_SYSTEM in lf.prompt) == (expected == QWEN_SYSTEM)
    assert (f"<|im_start|>system\n{expected}<|im_end|>" in lf.prompt) == bool(expected)


def test_a_non_qwen_template_brings_its_own_system_prompt(tiny_model):
    """LF's alpaca template (no Swift twin) trains with alpaca's system prompt, not the Qwen one it had pinned."""
    lf_cfg, _ = _pair("alpaca", "qwen2_5")
    sample = fw.adapter("llamafactory").encode_sample(lf_cfg, tiny_model, [
        {"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}])
    assert sample.prompt.startswith(parity.LF_TEMPLATE_SYSTEMS["alpaca"] + "### Instruction:\n2+3?")
    assert "Qwen" not in sample.prompt


def test_parity_reports_templates_whose_defaults_differ():
    """LF `qwen` and Swift `qwen` share a name but not a system prompt: the fairness check must see it."""
    lf_cfg, swift_cfg = _pair("qwen", "qwen")
    assert parity.differences(parity.normalise_lf(lf_cfg), parity.normalise_swift(swift_cfg)) == {
        "system": (QWEN_SYSTEM, "You are a helpful assistant.")}


def test_one_configs_system_prompt_does_not_leak_into_the_next(tiny_model):
    """LLaMA-Factory writes `default_system` into its global template registry: the adapter renders on a copy."""
    lf = fw.adapter("llamafactory")
    messages = [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}]
    assert "Be brief." in lf.encode_sample(_pair("qwen", "qwen2_5", system="Be brief.")[0], tiny_model, messages).prompt
    assert QWEN_SYSTEM in lf.encode_sample(_pair("qwen", "qwen2_5")[0], tiny_model, messages).prompt


def _body(task_yaml: str) -> list[str]:
    return [line for line in task_yaml.splitlines() if not line.startswith("#")]


def test_chat_task_is_generated_from_the_template_choice(tiny_model, tmp_path, workdir, monkeypatch):
    """A switched template: the chat task from the LF config = from the Swift twin, and lm-eval sends exactly the
    prompt LLaMA-Factory trains on."""
    import datasets
    from lm_eval.tasks import TaskManager

    from sftpack.evaluate.tasks import chat_task_yaml

    configs = {}
    for name, cfg in zip(("lf", "swift"), _pair("chatml", "chatml")):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(cfg), encoding="utf-8")
    lf_task = chat_task_yaml(configs["lf"], tiny_model, task="gsm8k-chat-chatml")
    assert _body(lf_task) == _body(chat_task_yaml(configs["swift"], tiny_model, task="gsm8k-chat-chatml"))
    assert "Qwen" not in "\n".join(_body(lf_task)) and "system prompt: none" in lf_task
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "gsm8k-local.yaml").write_bytes((fw.EVAL_TASKS / "gsm8k-local.yaml").read_bytes())
    (tasks / "gsm8k-chat-chatml.yaml").write_text(lf_task, encoding="utf-8")
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(os.environ["HF_DATASETS_CACHE"]))
    task = next(iter(TaskManager(include_path=str(tasks), include_defaults=False)
                     .load(["gsm8k-chat-chatml"])["tasks"].values()))
    task.build_all_requests(limit=2, rank=0, world_size=1)
    for inst in task.instances:
        lf, _ = _encode(parity.load_yaml(configs["lf"]), parity.load_yaml(configs["swift"]), tiny_model,
                        {"question": inst.doc["question"], "answer": inst.doc["answer"]})
        assert inst.args[0] == lf.prompt
        assert inst.args[1]["until"] == ["<|im_end|>"]


def test_the_shipped_chat_task_is_the_shipped_configs_format():
    text = (fw.EVAL_TASKS / "gsm8k-local-chat.yaml").read_text(encoding="utf-8")
    assert "generated" in text.lower() and "train_configs/qwen_gsm8k.yaml" in text
    assert f"<|im_start|>system\\n{QWEN_SYSTEM}<|im_end|>" in text  # = the qwen template's default


def test_a_pipeline_evaluates_with_the_chat_format_it_trains(tiny_model, tmp_path):
    """`sftpack run`: the shipped configs keep the shipped chat task; a template switched in the pipeline's train
    overrides gets a chat task generated from it (inference = training prompt); LF and Swift trained in different
    chat formats cannot share one chat task -- an error, not a silent mismatch."""
    from sftpack.pipeline import steps
    from sftpack.pipeline.schema import load_pipeline

    pipeline = load_pipeline(fw.REPO_ROOT / "benchmarks/pipelines/tiny_cpu.yaml")
    assert steps._chat_tasks(pipeline, str(tiny_model), tmp_path) == fw.EVAL_TASKS
    for spec in pipeline.train:
        spec.overrides = {**spec.overrides, "template": "chatml"}
    tasks = steps._chat_tasks(pipeline, str(tiny_model), tmp_path)
    chat = (tasks / "gsm8k-local-chat.yaml").read_text(encoding="utf-8")
    assert tasks == tmp_path / "chat_tasks" and "Qwen" not in "\n".join(_body(chat))
    assert 'doc_to_text: "<|im_start|>user\\n{{question}}<|im_end|>\\n<|im_start|>assistant\\n"' in chat
    assert (tasks / "gsm8k-local.yaml").read_bytes() == (fw.EVAL_TASKS / "gsm8k-local.yaml").read_bytes()
    pipeline.train[0].overrides["default_system"] = "Be brief."
    with pytest.raises(SftpackError, match="different chat formats"):
        steps._chat_tasks(pipeline, str(tiny_model), tmp_path)


@pytest.mark.integration
def test_real_clis_train_with_the_switched_templates_system_prompt(tiny_model, sample_workdir, tmp_path, env):
    """`llamafactory-cli train template=chatml` and `swift sft --template chatml` on the shipped configs (8 rows of
    the shipped GSM8K sample): the training sample each prints carries no system prompt (the Qwen one was pinned
    before)."""
    lf_cmd = fw.lf_train_cmd(fw.LF_LORA_CONFIG, fw.tiny_lf_overrides(tiny_model, tmp_path / "lf", steps=1,
                                                                      template="chatml", max_samples=8))
    done = subprocess.run([str(c) for c in lf_cmd], cwd=sample_workdir, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    shown = (done.stdout + done.stderr).split("inputs:\n", 1)[1]
    assert shown.startswith("<|im_start|>user\n") and "Qwen" not in shown.split("<|im_end|>")[0]
    swift_cmd = fw.swift_sft_cmd(fw.SWIFT_LORA_CONFIG, fw.tiny_swift_overrides(tiny_model, tmp_path / "sw", steps=1,
                                                                               template="chatml"))
    done = subprocess.run([str(c) for c in swift_cmd] + ["--dataset", "gsm8k_test#8"], cwd=sample_workdir, env=env,
                          capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "[INFO:swift] default_system: None" in output
    assert "[INFO:swift] [INPUT] <|im_start|>user\n" in output and QWEN_SYSTEM not in output.split("[INPUT]")[1]


# ----------------------------------------------------------------------------------- part 10: safe defaults


def _shipped_configs() -> list[Path]:
    root = fw.REPO_ROOT
    folders = [root / "train_configs", root / "eval_tasks", root / "benchmarks" / "suites",
               root / "benchmarks" / "pipelines", root / "dataset_info", root / "plugins"]
    return sorted(p for folder in folders if folder.is_dir() for p in folder.rglob("*")
                  if p.suffix in (".yaml", ".yml", ".json") and ".venv" not in p.parts)


def _trusting(value) -> list[str]:
    """Paths of keys named trust_remote_code with a true value anywhere in a parsed YAML/JSON document."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "trust_remote_code" and item not in (False, None, "false", "False"):
                found.append(key)
            found += [f"{key}.{sub}" for sub in _trusting(item)]
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += [f"{i}.{sub}" for sub in _trusting(item)]
    return found


def test_nothing_shipped_trusts_remote_code():
    configs = _shipped_configs()
    assert fw.LF_LORA_CONFIG in configs and fw.SWIFT_FULL_CONFIG in configs
    for path in configs:
        text = path.read_text(encoding="utf-8")
        if "trust_remote_code" in text:
            doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            assert _trusting(doc) == [], path
    for path in sorted((fw.REPO_ROOT / "plugins").rglob("*.py")):  # code passing trust_remote_code=True
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not (isinstance(node.value, ast.Constant) and node.value.value), f"{path}:{node.lineno}"
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "trust_remote_code":
                        assert not (isinstance(value, ast.Constant) and value.value), f"{path}:{node.lineno}"
