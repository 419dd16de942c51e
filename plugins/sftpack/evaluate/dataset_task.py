"""`sftpack eval --dataset NAME`: an lm-eval task generated from a `dataset_info.json` entry, prompting the model
exactly as training does.

Each row becomes the chat messages LLaMA-Factory builds from it (the same converter the sftpack Swift plugin serves
Swift: `sftpack.swift_datasets.plan`, alpaca or sharegpt, system column, history), and is encoded by the training
config's framework with its template and system prompt (`Adapter.encoder`, the framework's own training encoder).
The prompt is everything before the last answer's first labelled token, decoded with special tokens: lm-eval's hf
model encodes that string back to the same ids (a test checks it against each framework's own dataset pipeline).
Generation stops at the template's end-of-turn string (cut from the same encoding, as the chat task's is) and the
model's eos (lm-eval adds it).

Written into one folder (the eval run's `OUT/tasks/`), per dataset:

    <task>.yaml               the lm-eval task (its header says how it was made and how to re-run it by hand)
    <task>.jsonl              the documents: prompt, target (the last answer), gold (option letter, MCQ only), row
    sftpack_task_metrics.py   `process_results` (sftpack.evaluate.metrics), shared by the tasks of the folder

Metrics (sftpack.evaluate.metrics): exact match, token F1 and ROUGE-L; for multiple-choice data (every reference an
option letter of the prompt's option lines) option-letter accuracy and exact match.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sftpack import dataset_info
from sftpack.artifacts import write_text
from sftpack.errors import SftpackError
from sftpack.evaluate import metrics

TASK_VERSION = "1.0"
METRICS_MODULE = "sftpack_task_metrics"
ROLES = ("system", "user", "assistant")
# LLaMA-Factory's / datasets' file types -> the `datasets` builder that reads them (as both frameworks do)
BUILDERS = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet", "arrow": "arrow"}


@dataclass
class DatasetTask:
    """One generated task, as listed in eval.json's `generated_tasks`."""

    task: str
    dataset: str
    dataset_info: str
    data_file: str
    formatting: str
    config: str
    framework: str
    template: str | None
    system: str | None
    kind: str                        # "free_text" | "multiple_choice"
    metrics: list[str]
    documents: int
    dropped: dict[str, int] = field(default_factory=dict)   # reason -> rows
    max_gen_toks: int = 0
    stop: list[str] = field(default_factory=list)
    yaml: str = ""
    docs: str = ""


def task_name(dataset: str) -> str:
    return f"{dataset}-chat"


def info_file(dataset_dir: Path) -> Path:
    return Path(dataset_dir) / dataset_info.FILE_NAME


def check(datasets: list[str], dataset_dir: Path, config: Path) -> None:
    """Everything `generate` needs, checked before any model loads: the entries exist, are chat data from a
    local file, and the training config is a config of one framework."""
    from sftpack.swift_datasets import plan

    info = info_file(dataset_dir)
    if not info.is_file():
        raise SftpackError(f"--dataset: {info.resolve()} does not exist; pass --dataset-dir the folder that holds "
                           "the dataset_info.json the data was prepared into")
    entries = dataset_info.load(info)
    for name in datasets:
        if name not in entries:
            raise SftpackError(f"--dataset {name}: no such entry in {info.resolve()}. Entries: {sorted(entries)}")
        served = plan(name, entries[name], info.parent)
        if served.reason:
            raise SftpackError(f"--dataset {name} ({info.resolve()}): cannot be evaluated: {served.reason}")
        if served.kind == "text":
            raise SftpackError(f"--dataset {name}: pretraining text (no response column): there is no answer "
                               "to generate and score")
        if "dataset_path" not in served.where:
            raise SftpackError(f"--dataset {name}: a hub dataset; evaluate a local file entry (sftpack prepare or "
                               "a recipe writes one)")
    if not Path(config).is_file():
        raise SftpackError(f"--train-config {config}: no such file (resolved: {Path(config).resolve()})")
    _framework(config)


def _framework(config: Path):
    from sftpack.frameworks import ADAPTERS
    from sftpack.parity import load_yaml

    cfg = load_yaml(config)
    owners = [fw for fw in ADAPTERS.values() if fw.owns(cfg)]
    if len(owners) != 1:
        raise SftpackError(f"--train-config {config}: not a training config of one framework; expected "
                           + " or ".join(f"{fw.name} ({', '.join(fw.config_keys)})" for fw in ADAPTERS.values()))
    return owners[0], cfg


def _rows(path: Path) -> list[dict[str, Any]]:
    """The file's rows, read by the `datasets` builder both frameworks read it with."""
    import datasets

    builder = BUILDERS.get(path.suffix.lstrip(".").lower())
    if builder is None:
        raise SftpackError(f"{path}: a '{path.suffix}' file has no rows to evaluate (json, jsonl, csv, parquet, "
                           "arrow)")
    try:
        return list(datasets.load_dataset(builder, data_files=str(path), split="train"))
    except Exception as err:  # noqa: BLE001 - the builder's own words name the problem
        raise SftpackError(f"{path}: cannot be read as {builder}: {err}") from None


def _answer_tokens(labels: list[int]) -> int:
    from sftpack.frameworks.base import IGNORE_INDEX

    end = len(labels)
    while end and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return end - start


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def generate(datasets: list[str], dataset_dir: Path, config: Path, tokenizer: Path | str,
             folder: Path) -> list[DatasetTask]:
    """Write one task per dataset into `folder` (see the module docstring); return what was written."""
    from sftpack.evaluate.tasks import chat_format
    from sftpack.swift_datasets import plan

    check(datasets, dataset_dir, config)
    fw, cfg = _framework(config)
    fmt = chat_format(config, tokenizer)
    try:
        encode = fw.encoder(cfg, tokenizer)
    except (OSError, ValueError, KeyError) as err:
        raise SftpackError(f"--train-config {config}: cannot render its template with the tokenizer of "
                           f"{tokenizer}: {err}") from None
    info = info_file(dataset_dir)
    entries = dataset_info.load(info)
    folder = Path(folder)
    write_text(folder / f"{METRICS_MODULE}.py",
               '"""lm-eval process_results of the tasks sftpack eval --dataset generated here."""\n'
               "from sftpack.evaluate.metrics import process_results  # noqa: F401\n")
    out = []
    for name in datasets:
        served = plan(name, entries[name], info.parent)
        path = Path(served.where["dataset_path"])
        docs, dropped, answer_tokens = [], {}, 0
        for index, row in enumerate(_rows(path)):
            messages = served.rows(row)
            if messages is None:
                reason = "LLaMA-Factory drops it (no response, or turns that do not alternate)"
            elif any(m["role"] not in ROLES for m in messages):
                reason = "tool turns (not evaluated)"
            else:
                try:
                    sample = encode(messages)
                    reason = None
                except ValueError as err:
                    reason = str(err).split(":")[0] if "cutoff_len" in str(err) else "the framework refuses it"
            if reason:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            answer_tokens = max(answer_tokens, _answer_tokens(sample.labels))
            users = [m["content"] for m in messages if m["role"] == "user"]
            docs.append({"row": index, "prompt": sample.prompt, "target": messages[-1]["content"],
                         "question": users[-1] if users else ""})
        if not docs:
            raise SftpackError(f"--dataset {name} ({path}): no row can be evaluated ({dropped or 'the file is empty'})")
        multiple_choice = metrics.is_multiple_choice((doc["question"], doc["target"]) for doc in docs)
        for doc in docs:
            if multiple_choice:
                doc["gold"] = metrics.option_letter(doc["target"])
            del doc["question"]
        task = task_name(name)
        docs_file, yaml_file = folder / f"{task}.jsonl", folder / f"{task}.yaml"
        write_text(docs_file, "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs))
        generated = DatasetTask(
            task=task, dataset=name, dataset_info=str(info.resolve()), data_file=str(path),
            formatting=entries[name].get("formatting", "alpaca"), config=str(Path(config).resolve()),
            framework=fw.name, template=fmt["template"], system=fmt["system"],
            kind="multiple_choice" if multiple_choice else "free_text",
            metrics=list(metrics.MULTIPLE_CHOICE if multiple_choice else metrics.FREE_TEXT),
            documents=len(docs), dropped=dropped, max_gen_toks=answer_tokens + 16,
            stop=[fmt["stop"]] if fmt["stop"] else [], yaml=str(yaml_file.resolve()), docs=str(docs_file.resolve()))
        write_text(yaml_file, task_yaml(generated))
        out.append(generated)
    return out


def task_yaml(t: DatasetTask) -> str:
    system = _quoted(t.system) if t.system else "none"
    dropped = "; ".join(f"{n} dropped: {reason}" for reason, n in t.dropped.items()) or "none dropped"
    lines = [
        f"# {t.task}: dataset_info entry '{t.dataset}' ({t.formatting}, {t.documents} rows; {dropped})",
        f"# from {t.dataset_info}, prompted as training with {t.config} does",
        f"# ({t.framework}, template {t.template}; system prompt: {system}, or the row's own): each document's",
        "# prompt is that framework's own encoding of the row up to its last answer. Generated by `sftpack eval",
        "# --dataset`; do not edit, re-generate. Metrics: sftpack.evaluate.metrics (" + ", ".join(t.metrics) + ").",
        "# Re-run by hand (sftpack installed; no --apply_chat_template: the prompt already is the chat format):",
        f"#   lm_eval --model hf --model_args pretrained=MODEL[,peft=ADAPTER] --tasks {t.task} "
        f"--include_path {Path(t.yaml).parent}",
        f"task: {t.task}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {_quoted(t.docs)}",
        "test_split: test",
        "output_type: generate_until",
        "doc_to_text: prompt",
        "doc_to_target: target",
        f"process_results: !function {METRICS_MODULE}.process_results",
        "metric_list:",
        *[line for metric in t.metrics for line in
          (f"  - metric: {metric}", "    aggregation: mean", "    higher_is_better: true")],
        "generation_kwargs:",
        "  until:" + ("" if t.stop else " []"),
        *[f"    - {_quoted(stop)}" for stop in t.stop],
        "  do_sample: false",
        "  temperature: 0.0",
        f"  max_gen_toks: {t.max_gen_toks}   # the longest answer's tokens + 16",
        "metadata:",
        f"  version: {TASK_VERSION}",
    ]
    return "\n".join(lines) + "\n"


def records(tasks: list[DatasetTask]) -> list[dict[str, Any]]:
    return [asdict(t) for t in tasks]
