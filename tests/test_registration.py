"""dataset_info.json as the frameworks read it: LLaMA-Factory's own parser and loader, Swift's registry."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sftpack import dataset_info


def plain(messages: list[dict]) -> list[dict]:
    """Swift's Arrow schema adds None-valued keys (loss, loss_scale) to every message: compare the rest."""
    return [{k: v for k, v in message.items() if v is not None} for message in messages]


def test_our_key_sets_are_llamafactorys():
    from llamafactory.data.parser import DatasetAttr

    fields = {f.name for f in dataclasses.fields(DatasetAttr)} - {"load_from", "dataset_name"}
    assert fields == set(dataset_info.ATTR_KEYS) | set(dataset_info.COLUMN_KEYS) | set(dataset_info.TAG_KEYS)
    assert dataset_info.FORMATTINGS == DatasetAttr.__annotations__["formatting"].__args__


def test_llamafactory_loader_reads_prepared_entries(workdir, tiny_model, tmp_path):
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import get_train_args
    from transformers import AutoTokenizer

    attrs = get_dataset_list(["gsm8k_train", "gsm8k_test"], str(workdir / "dataset_info"))
    assert [(a.load_from, a.dataset_name, a.prompt, a.response, a.query) for a in attrs] == [
        ("file", "gsm8k_train.jsonl", "question", "answer", None),
        ("file", "gsm8k_test.jsonl", "question", "answer", None)]
    model_args, data_args, training_args, _, _ = get_train_args({
        "model_name_or_path": str(tiny_model), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "dataset": "gsm8k_test", "dataset_dir": str(workdir / "dataset_info"), "template": "qwen",
        "cutoff_len": 2048, "output_dir": str(tmp_path / "lf_out"), "preprocessing_num_workers": 1,
        "overwrite_cache": True})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage="sft",
                         tokenizer=tokenizer, processor=None)
    assert len(module["train_dataset"]) == 1319


def test_swift_registers_the_same_names_and_messages(workdir, monkeypatch):
    from swift.dataset import load_dataset

    from sftpack.swift_datasets import register_all

    monkeypatch.chdir(workdir)
    assert register_all() == ["gsm8k_train", "gsm8k_test"]
    train, _ = load_dataset(["gsm8k_test"], num_proc=1)
    assert len(train) == 1319
    first = json.loads((workdir / "dataset_info" / "gsm8k_test.jsonl").open().readline())
    assert plain(train[0]["messages"]) == [{"role": "user", "content": first["question"]},
                                    {"role": "assistant", "content": first["answer"]}]


def test_swift_mapping_follows_llamafactory_for_other_formats(tmp_path):
    """alpaca with query/system/history and sharegpt with custom tags map as LLaMA-Factory reads them."""
    from swift.dataset import load_dataset

    from sftpack.swift_datasets import register_all

    folder = tmp_path / "dataset_info"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"ins": "Add", "inp": "2 and 3", "out": "5", "sys": "Be brief",
                                                "hist": [["Hi", "Hello"]]}) + "\n")
    (folder / "s.json").write_text(json.dumps([{"conv": [{"who": "user", "text": "Hi"},
                                                         {"who": "bot", "text": "Yo"}]}]))
    dataset_info.merge(folder / "dataset_info.json", {
        "my_alpaca": {"file_name": "a.jsonl", "columns": {"prompt": "ins", "query": "inp", "response": "out",
                                                          "system": "sys", "history": "hist"}},
        "my_chat": {"file_name": "s.json", "formatting": "sharegpt", "columns": {"messages": "conv"},
                    "tags": {"role_tag": "who", "content_tag": "text", "user_tag": "user",
                             "assistant_tag": "bot"}},
        "my_pairs": {"file_name": "a.jsonl", "ranking": True,
                     "columns": {"prompt": "ins", "chosen": "out", "rejected": "inp"}},
    })
    assert register_all(folder / "dataset_info.json") == ["my_alpaca", "my_chat"]
    alpaca, _ = load_dataset(["my_alpaca"], num_proc=1)
    assert plain(alpaca[0]["messages"]) == [
        {"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Add\n2 and 3"},
        {"role": "assistant", "content": "5"}]
    chat, _ = load_dataset(["my_chat"], num_proc=1)
    assert plain(chat[0]["messages"]) == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]


def test_swift_plugin_without_dataset_info_says_what_to_do(tmp_path, monkeypatch):
    from sftpack.errors import SftpackError
    from sftpack.swift_datasets import register_all

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SftpackError, match=r"dataset_info/dataset_info.json: not found. Run `sftpack prepare"):
        register_all()
