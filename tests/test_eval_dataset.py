"""`sftpack eval --dataset NAME` (issue 15 part 1): a dataset_info entry evaluated as it was trained.

The integration test runs a recipe's test split (CMMLU MCQ), a recipe's sharegpt output and a user's own multi-turn
sharegpt + alpaca-with-system entries through `sftpack eval` and the real lm-eval, then checks each prompt lm-eval
sent against LLaMA-Factory's own dataset pipeline (token ids) and ms-swift's own template (text), and each score
against the metric recomputed from lm-eval's samples.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sftpack.evaluate import metrics

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------- metrics


def test_squad_normalisation_exact_match_and_f1():
    assert metrics.exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert metrics.exact_match("Eiffel", "eiffel tower") == 0.0
    # SQuAD's token F1: 1 common token of 1 predicted and 2 reference tokens -> P 1, R 0.5, F1 2/3
    assert metrics.f1("Eiffel", "the Eiffel tower") == pytest.approx(2 / 3)
    assert metrics.f1("", "") == 1.0 and metrics.f1("x", "") == 0.0
    assert metrics.f1("a b c", "d e") == 0.0


def test_chinese_is_scored_per_character():
    # on whitespace alone both would be one token each, F1 0; per character: 2 of 3 in common
    assert metrics.tokens("北京大学，") == ["北", "京", "大", "学"]
    assert metrics.tokens("GPU 训练abc") == ["gpu", "训", "练", "abc"]
    assert metrics.f1("北京大", "北京市") == pytest.approx(2 / 3)
    assert metrics.rouge_l("北京大", "北京市") == pytest.approx(2 / 3)   # rouge_score's own would give 0 here
    assert metrics.rouge_l("the cat sat", "the cat sat") == 1.0
    assert metrics.rouge_l("sat cat", "cat sat on mat") == pytest.approx(1 / 3)  # LCS 1: P 1/2, R 1/4


@pytest.mark.parametrize("text, letter", [
    ("B. 土地", "B"), ("B", "B"), ("(C) blood", "C"), ("D：风", "D"), ("The right option is A.", "A"),
    ("I think the answer is c", "C"), ("答案是B", "B"), ("Banana", None), ("", None), ("A1 steak", None),
    ("A cat", None), ("B\nbecause", "B"),
])
def test_option_letter(text, letter):
    assert metrics.option_letter(text) == letter


def test_multiple_choice_needs_every_reference_among_the_prompts_options():
    prompt = "Which is red?\nA. sky\nB. blood"
    assert metrics.is_multiple_choice([(prompt, "B. blood"), (prompt, "A")])
    assert not metrics.is_multiple_choice([(prompt, "B. blood"), (prompt, "C. snow")])    # C is no option here
    assert not metrics.is_multiple_choice([("What is 2+2?", "4")])
    assert not metrics.is_multiple_choice([])
    doc = {"target": "B. blood", "gold": "B"}
    assert metrics.process_results(doc, ["B. blood"]) == {"exact_match": 1.0, "acc": 1.0}
    assert metrics.process_results(doc, ["The right option is B"]) == {"exact_match": 0.0, "acc": 1.0}
    free = metrics.process_results({"target": "Paris is the capital"}, ["paris is the capital."])
    assert free == {"exact_match": 1.0, "f1": 1.0, "rougeL": 1.0}


def test_sample_prompt_ends_before_the_last_answer():
    from sftpack.frameworks.base import IGNORE_INDEX, Sample

    ignore = IGNORE_INDEX
    sample = Sample.of([1, 2, 3, 4, 5, 6, 7], [ignore, 2, 3, ignore, ignore, 6, 7],
                       lambda ids: ",".join(map(str, ids)))
    assert (sample.prompt, sample.response) == ("1,2,3,4,5", "6,7")


# -------------------------------------------------------------------------------------- errors before any model


def _eval_cli(*argv: str) -> int:
    from sftpack.cli import main

    return main(["eval", *argv])


@pytest.fixture
def own_data(tmp_path) -> Path:
    """A user's own dataset_info folder: multi-turn sharegpt (one row that does not alternate), alpaca with a
    system column, pretraining text."""
    folder = tmp_path / "dataset_info"
    folder.mkdir()
    with (folder / "chat.jsonl").open("w", encoding="utf-8") as handle:
        for i in range(3):
            handle.write(json.dumps({"conversations": [
                {"from": "system", "value": "Be brief."}, {"from": "human", "value": f"Hi {i}"},
                {"from": "gpt", "value": f"Hello {i}."}, {"from": "human", "value": "Capital of France?"},
                {"from": "gpt", "value": "Paris."}]}) + "\n")
        handle.write(json.dumps({"conversations": [{"from": "human", "value": "no answer"}]}) + "\n")
    with (folder / "qa.jsonl").open("w", encoding="utf-8") as handle:
        for i in range(3):
            handle.write(json.dumps({"q": f"What is {i} + {i}?", "a": str(2 * i), "sys": "Answer with a number."}) + "\n")
    (folder / "text.jsonl").write_text('{"text": "plain text"}\n', encoding="utf-8")
    (folder / "dataset_info.json").write_text(json.dumps({
        "own_chat": {"file_name": "chat.jsonl", "formatting": "sharegpt"},
        "own_qa": {"file_name": "qa.jsonl", "columns": {"prompt": "q", "response": "a", "system": "sys"}},
        "own_text": {"file_name": "text.jsonl", "columns": {"prompt": "text"}},
        "hub": {"hf_hub_url": "openai/gsm8k"}}), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "nosuch"], "--dataset nosuch: no such entry in .*dataset_info.json. Entries: \\['hub', 'own_chat'"),
    (["--dataset", "own_text"], "--dataset own_text: pretraining text"),
    (["--dataset", "hub"], "--dataset hub: a hub dataset"),
    (["--dataset", "own_qa", "--train-config", "nosuch.yaml"], "--train-config .*nosuch.yaml: no such file"),
    (["--dataset", "own_qa", "--dataset-dir", "elsewhere"], "elsewhere/dataset_info.json does not exist"),
])
def test_bad_dataset_arguments_stop_before_any_model_loads(own_data, tiny_model, capsys, argv, message):
    import re

    code = _eval_cli("--model", str(tiny_model), "--workdir", str(own_data), "--out", str(own_data / "out"), *argv)
    err = capsys.readouterr().err
    assert code == 1 and re.search(message, err), err
    assert "Traceback" not in err and not (own_data / "out").exists()   # nothing written, nothing started


# ------------------------------------------------------------------------- the real run: prompts and scores


@pytest.fixture(scope="module")
def dataset_eval(build_once, tiny_model, shared_data, env):
    """`sftpack eval --dataset` on four entries: the CMMLU MCQ recipe's test split (2 subjects, 2 questions each), a
    recipe's GSM8K rows written as sharegpt, and a user's own multi-turn sharegpt and alpaca-with-system entries."""
    import subprocess
    import sys

    def build(root: Path) -> None:
        from sftpack.recipes.run import run_recipe

        cmmlu = root / "cmmlu"
        for sub in ("test",):
            (cmmlu / sub).mkdir(parents=True)
            for subject in ("agronomy", "anatomy"):
                shutil.copy(shared_data / "cmmlu" / sub / f"{subject}.csv", cmmlu / sub / f"{subject}.csv")
        out = root / "dataset_info"
        run_recipe(REPO / "dataset_info" / "recipes" / "cmmlu_mcq_epoch.yaml", out,
                   var_overrides={"cmmlu": str(cmmlu / "test"), "per_subject": "2"})
        recipe = root / "gsm8k_chat.yaml"
        recipe.write_text(
            "description: GSM8K test rows as sharegpt\nseed: 1\n"
            f"inputs:\n  - name: gsm8k\n    path: {shared_data / 'gsm8k' / 'test.jsonl'}\n"
            "steps:\n  - sample: {count: 3}\n  - format: {to: sharegpt, user: question, assistant: answer}\n"
            "output:\n  name: gsm8k_chat\n", encoding="utf-8")
        run_recipe(recipe, out)
        info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
        (out / "chat.jsonl").write_text("".join(json.dumps({"conversations": [
            {"from": "system", "value": "Be brief."}, {"from": "human", "value": f"Hi {i}"},
            {"from": "gpt", "value": f"Hello {i}."}, {"from": "human", "value": "Capital of France?"},
            {"from": "gpt", "value": "Paris."}]}) + "\n" for i in range(3)), encoding="utf-8")
        (out / "qa.jsonl").write_text("".join(json.dumps({"q": f"What is {i} + {i}?", "a": str(2 * i),
                                                          "sys": "Answer with a number."}) + "\n" for i in range(3)),
                                      encoding="utf-8")
        info.update(own_chat={"file_name": "chat.jsonl", "formatting": "sharegpt"},
                    own_qa={"file_name": "qa.jsonl", "columns": {"prompt": "q", "response": "a", "system": "sys"}})
        (out / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        subprocess.run([sys.executable, "-m", "sftpack", "eval", "--model", str(tiny_model), "--device", "cpu",
                        "--dataset", "cmmlu_mcq_test,gsm8k_chat", "--dataset", "own_chat,own_qa", "--limit", "3",
                        "--gen-kwargs", "max_gen_toks=6", "--batch-size", "3", "--out", str(root / "eval"),
                        "--quiet"], cwd=root, env=env, check=True)

    root = build_once("dataset-eval", build)
    report = json.loads((root / "eval" / "eval.json").read_text(encoding="utf-8"))
    return root, report


def _samples(report, task: str) -> list[dict]:
    run = report["models"][0]["runs"][0]
    path = Path(run["samples_files"][task])
    return sorted((json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()), key=lambda r: r["doc_id"])


def _lf_training_ids(root: Path, tiny: Path, dataset: str) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) of every row of `dataset` as LLaMA-Factory's own dataset pipeline tokenizes it for
    training with train_configs/qwen_gsm8k.yaml (template, default_system, cutoff_len)."""
    import yaml
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    cfg = yaml.safe_load((REPO / "train_configs" / "qwen_gsm8k.yaml").read_text(encoding="utf-8"))
    cfg.update(model_name_or_path=str(tiny), dataset=dataset, dataset_dir=str(root / "dataset_info"),
               output_dir=str(root / "lf_out"), bf16=False, preprocessing_num_workers=None, report_to="none",
               overwrite_cache=True)
    model_args, data_args, training_args, _, _ = get_train_args(cfg)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    rows = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    return [(row["input_ids"], row["labels"]) for row in rows["train_dataset"]]


@pytest.mark.integration
def test_dataset_tasks_send_llamafactorys_training_prompt(dataset_eval, tiny_model):
    """Each prompt lm-eval sent, encoded by lm-eval's hf model, is exactly the ids LLaMA-Factory trains on up to
    the row's last answer, and what follows in training is that answer (multi-turn history and a row's own
    system prompt included)."""
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    root, report = dataset_eval
    lm = HFLM(pretrained=str(tiny_model), device="cpu", batch_size=1)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    generated = {t["dataset"]: t for t in report["generated_tasks"]}
    for dataset in ("cmmlu_mcq_test", "gsm8k_chat", "own_chat", "own_qa"):
        task = generated[dataset]
        training = _lf_training_ids(root, tiny_model, dataset)
        docs = [json.loads(line) for line in Path(task["docs"]).read_text(encoding="utf-8").splitlines()]
        samples = _samples(report, task["task"])
        assert len(samples) == 3
        for sample in samples:
            context = sample["arguments"]["gen_args_0"]["arg_0"]
            doc = docs[sample["doc_id"]]
            ids, labels = training[doc["row"]]
            sent = lm.tok_encode(context)
            assert ids[:len(sent)] == sent, (dataset, context)
            rest = labels[len(sent):]
            assert rest and all(label != -100 for label in rest), "after the prompt: only the last answer, trained"
            assert tokenizer.decode(ids[len(sent):], skip_special_tokens=False).startswith(doc["target"])
            assert sample["arguments"]["gen_args_0"]["arg_1"]["until"] == ["<|im_end|>"]
    own_chat = Path(generated["own_chat"]["docs"]).read_text(encoding="utf-8")
    assert "Hello 0." in own_chat and "Be brief." in own_chat      # history and the row's system prompt
    assert "Answer with a number." in Path(generated["own_qa"]["docs"]).read_text(encoding="utf-8")


@pytest.mark.integration
def test_dataset_tasks_send_swifts_training_prompt(dataset_eval, tiny_model):
    """The same tasks generated from the Swift twin of the config hold the same prompts, and each is the text
    Swift's own template encodes before the last answer of the row the sftpack Swift plugin serves."""
    from swift import get_processor, get_template

    from sftpack import dataset_info
    from sftpack.evaluate import dataset_task
    from sftpack.swift_datasets import plan

    root, report = dataset_eval
    config = REPO / "train_configs" / "swift" / "qwen_lora_gsm8k.yaml"
    names = ["cmmlu_mcq_test", "gsm8k_chat", "own_chat", "own_qa"]
    swift_tasks = dataset_task.generate(names, root / "dataset_info", config, tiny_model, root / f"swift-{id(root)}")
    entries = dataset_info.load(root / "dataset_info" / "dataset_info.json")
    processor = get_processor(str(tiny_model), model_type="qwen2", use_hf=True)
    template = get_template(processor, template_type="qwen2_5", max_length=2048)
    template.set_mode("train")
    for lf_task, swift_task, name in zip(report["generated_tasks"], swift_tasks, names, strict=True):
        assert swift_task.framework == "swift" and swift_task.kind == lf_task["kind"]
        lf_docs = Path(lf_task["docs"]).read_text(encoding="utf-8")
        assert Path(swift_task.docs).read_text(encoding="utf-8") == lf_docs
        served = plan(name, entries[name], root / "dataset_info")
        rows = [json.loads(line) for line in Path(served.where["dataset_path"]).read_text("utf-8").splitlines()]
        for doc in map(json.loads, lf_docs.splitlines()[:3]):
            encoded = template.encode({"messages": served.rows(rows[doc["row"]])})
            labels = encoded["labels"]
            end = max(i for i, label in enumerate(labels) if label != -100)
            start = max(i for i, label in enumerate(labels[:end]) if label == -100) + 1   # the last answer's start
            assert processor.decode(encoded["input_ids"][:start], skip_special_tokens=False) == doc["prompt"]
    shutil.rmtree(root / f"swift-{id(root)}")


@pytest.mark.integration
def test_dataset_task_scores_are_the_metrics_of_the_generations(dataset_eval):
    root, report = dataset_eval
    generated = {t["dataset"]: t for t in report["generated_tasks"]}
    assert generated["cmmlu_mcq_test"]["kind"] == "multiple_choice"
    assert generated["cmmlu_mcq_test"]["metrics"] == ["acc", "exact_match"]
    for name in ("gsm8k_chat", "own_chat", "own_qa"):
        assert generated[name]["kind"] == "free_text" and generated[name]["metrics"] == ["exact_match", "f1",
                                                                                         "rougeL"]
    assert generated["cmmlu_mcq_test"]["documents"] == 4 and generated["own_chat"]["documents"] == 3
    for task in generated.values():
        docs = [json.loads(line) for line in Path(task["docs"]).read_text(encoding="utf-8").splitlines()]
        samples = _samples(report, task["task"])
        for metric in task["metrics"]:
            expected = [metrics.process_results(docs[s["doc_id"]], [s["filtered_resps"][0]])[metric]
                        for s in samples]
            assert [s[metric] for s in samples] == expected
            row = next(r for r in report["rows"] if r["task"] == task["task"] and r["metric"] == metric)
            assert row["values"]["base"]["value"] == pytest.approx(sum(expected) / len(expected))
        # the task files are written next to the run's outputs, listed in its report, and named in eval.md
        assert Path(task["yaml"]).parent == root / "eval" / "tasks" and task["yaml"] in (
            root / "eval" / "eval.md").read_text(encoding="utf-8")
    docs = [json.loads(line) for line in Path(generated["cmmlu_mcq_test"]["docs"]).read_text("utf-8").splitlines()]
    assert all(doc["gold"] == doc["target"][0] for doc in docs)
