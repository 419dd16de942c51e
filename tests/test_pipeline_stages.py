"""Multi-stage pipelines (issue 15 part 3): train entries of one framework chain (`name`, `after`, `adapter`,
`kind: pt`), recipes in the data stage (plain text for pretraining), each stage's own data in the report.

The integration test runs benchmarks/pipelines/staged_tiny_cpu.yaml with fewer steps through the real CLIs, with
Swift's chain changed to a LoRA pretraining stage continued by the SFT stage: LLaMA-Factory pt (full) -> LoRA SFT on
that model, Swift pt (LoRA) -> SFT continuing the same adapter; then merges Swift's stage-1 adapter the way
`adapter: merge` does and checks the merged model computes what PEFT computes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from sftpack import frameworks as fw
from sftpack.pipeline.schema import PipelineError, load_pipeline

STAGED = fw.REPO_ROOT / "benchmarks" / "pipelines" / "staged_tiny_cpu.yaml"


def _staged() -> dict:
    return yaml.safe_load(STAGED.read_text(encoding="utf-8"))


def _write(folder: Path, data: dict) -> Path:
    """`data` as a pipeline file in `folder`, with the shipped file's relative paths made absolute."""
    for train in data["train"]:
        train["config"] = str((STAGED.parent / train["config"]).resolve())
    for recipe in data["data"].get("recipes", []):
        recipe["recipe"] = str((STAGED.parent / recipe["recipe"]).resolve())
    data["eval"]["include_path"] = str(fw.EVAL_TASKS)
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ the schema


def test_shipped_staged_pipeline_chains_each_framework():
    pipeline = load_pipeline(STAGED)
    assert [t.stage for t in pipeline.train] == ["train_lf_pt", "train_swift_pt", "train_llamafactory", "train_swift"]
    assert [t.label for t in pipeline.final_trains()] == ["llamafactory", "swift"]
    assert pipeline.previous(pipeline.train[2]).label == "lf_pt" and pipeline.previous(pipeline.train[0]) is None
    assert [t.kind for t in pipeline.train] == ["pt", "pt", "sft", "sft"]


@pytest.mark.parametrize("change, message", [
    (lambda d: d["train"][2].pop("after"), r"train\[2\]\.after: missing: this framework already has an entry.*"
                                           r"after: lf_pt"),
    (lambda d: d["train"][2].update(after="swift_pt"), r"train\[2\]\.after: not the previous entry.*lf_pt"),
    (lambda d: d["train"][0].update(after="nothing"), r"train\[0\]\.after: not the previous entry"),
    (lambda d: d["train"][1].update(name="lf_pt"), r"train\[1\]: two train entries share this stage name"),
    (lambda d: d["train"][2].update(adapter="merge"), r"train\[2\]\.adapter: lf_pt trains 'full', not a LoRA"),
    (lambda d: d["train"][0].update(adapter="merge"), r"train\[0\]\.adapter: only with `after`"),
    (lambda d: d["train"][2].update(adapter="concat"), r"train\[2\]\.adapter.*merge.*continue"),
    (lambda d: d["train"][0].update(kind="dpo"), r"train\[0\]\.kind"),
    (lambda d: d["train"][0]["overrides"].update(stage="pt"), r"train\[0\]\.overrides\.stage: the pipeline sets it"),
    (lambda d: d["train"][3]["overrides"].update(adapters="x"), r"train\[3\]\.overrides\.adapters: set by the "
                                                                r"pipeline itself"),
    (lambda d: d["data"]["recipes"].append({"recipe": "nosuch.yaml"}), r"data\.recipes\[1\]\.recipe: no such file"),
    (lambda d: d["data"]["recipes"][0].update(vars={"undeclared": 1}), r"data\.recipes\[0\]\.recipe: the recipe "
                                                                       r"does not load.*undeclared"),
])
def test_bad_chains_are_errors_with_file_line_and_key(tmp_path, change, message):
    data = _staged()
    change(data)
    path = _write(tmp_path, data)
    with pytest.raises(PipelineError, match=message) as err:
        load_pipeline(path)
    assert re.search(rf"{re.escape(str(path))}:\d+: (train|data)", str(err.value))   # file:line: key: ...


def test_a_lora_stage_needs_merge_or_continue_and_continue_needs_lora(tmp_path):
    data = _staged()
    data["train"][1]["config"] = "../../train_configs/swift/qwen_lora_gsm8k.yaml"   # swift_pt: LoRA now
    with pytest.raises(PipelineError, match=r"train\[3\]\.adapter: missing: swift_pt trains a LoRA adapter.*"
                                            r"adapter: merge.*adapter: continue"):
        load_pipeline(_write(tmp_path, data))
    data = _staged()
    data["train"][1]["config"] = "../../train_configs/swift/qwen_lora_gsm8k.yaml"
    data["train"][3].update(adapter="continue", config="../../train_configs/swift/qwen_full_gsm8k.yaml")
    with pytest.raises(PipelineError, match=r"train\[3\]\.adapter: continuing a LoRA adapter needs a LoRA stage"):
        load_pipeline(_write(tmp_path, data))


def test_a_sweep_refuses_a_chained_base(tmp_path):
    from sftpack.sweep.schema import SweepError, load_sweep

    base = _write(tmp_path, _staged())
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"name: s\nbase: {base}\ngrid:\n  learning_rate: [1.0e-3]\n", encoding="utf-8")
    with pytest.raises(SweepError, match="chains train stages"):
        load_sweep(sweep)


def test_pretraining_text_recipe_writes_text_rows(tmp_path):
    from sftpack.recipes.run import run_recipe

    (tmp_path / "corpus.txt").write_text("first line\n\nsecond line\nfirst line\n", encoding="utf-8")
    recipe = tmp_path / "text.yaml"
    recipe.write_text("description: t\ninputs:\n  - {name: corpus, path: " + str(tmp_path / "corpus.txt") + "}\n"
                      "steps:\n  - exact_dedup: {fields: [text]}\n  - format: {to: text, text: text}\n"
                      "output: {name: corpus_pt}\n", encoding="utf-8")
    run_recipe(recipe, tmp_path / "di", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "di" / "corpus_pt.jsonl").read_text().splitlines()]
    assert rows == [{"text": "first line"}, {"text": "second line"}]
    entry = json.loads((tmp_path / "di" / "dataset_info.json").read_text())["corpus_pt"]
    assert entry == {"file_name": "corpus_pt.jsonl", "formatting": "alpaca", "columns": {"prompt": "text"}}
    with pytest.raises(Exception, match=r"to: text takes \['text'\], not \['instruction'\]"):
        recipe.write_text(recipe.read_text().replace("{to: text, text: text}", "{to: text, instruction: text}"))
        run_recipe(recipe, tmp_path / "di2", progress=False)


def test_commands_per_kind_and_continue_keys():
    lf, swift = fw.adapter("llamafactory"), fw.adapter("swift")
    assert "stage=pt" in lf.command(Path("c.yaml"), {}, "pt") and "stage=pt" not in lf.command(Path("c.yaml"), {})
    assert swift.command(Path("c.yaml"), {}, "pt")[1] == "pt" and swift.command(Path("c.yaml"), {})[1] == "sft"
    assert lf.continue_adapter(Path("/a")) == {"adapter_name_or_path": "/a", "create_new_adapter": False}
    assert swift.continue_adapter(Path("/a")) == {"adapters": "/a"}


# ----------------------------------------------------------------------------------------- the real chain


@pytest.fixture(scope="module")
def staged_run(build_once):
    def build(root: Path) -> None:
        from sftpack.pipeline.cli import run_pipeline

        data = _staged()
        for train in data["train"]:
            train["overrides"].update(max_steps=4, logging_steps=2)
        data["train"][1]["config"] = "../../train_configs/swift/qwen_lora_gsm8k.yaml"   # Swift pt: LoRA ...
        data["train"][3]["adapter"] = "continue"                                       # ... continued by SFT
        data["train"][3]["overrides"]["learning_rate"] = 1.0e-7     # stage 2 barely moves the adapter it continues
        data["eval"].update(limit=2, batch_size=2, gen_kwargs="max_gen_toks=8")
        path = _write(root, data)
        run_pipeline(path, root / "out", verbose=False)

    return build_once("staged-pipeline", build) / "out"


def _result(out: Path, stage: str) -> dict:
    return json.loads((out / stage / "result.json").read_text(encoding="utf-8"))


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    assert files, folder
    return {k: v for f in files for k, v in load_file(str(f)).items()}


@pytest.mark.integration
def test_each_stage_starts_from_the_previous_one(staged_run):
    import torch

    out = staged_run
    lf_pt, lf_sft = _result(out, "train_lf_pt"), _result(out, "train_llamafactory")
    swift_pt, swift_sft = _result(out, "train_swift_pt"), _result(out, "train_swift")
    # pretraining through each framework's own pretraining entry point, on the recipe's plain text
    assert "stage=pt" in lf_pt["command"] and "dataset=gsm8k_text" in lf_pt["command"]
    assert Path(swift_pt["command"][0]).name == "swift" and swift_pt["command"][1] == "pt"
    assert Path(swift_sft["command"][0]).name == "swift" and swift_sft["command"][1] == "sft"
    # LLaMA-Factory: stage 2 trains a LoRA adapter on stage 1's full model, whose weights pretraining changed
    stage1 = out / "train_lf_pt" / "output"
    assert f"model_name_or_path={stage1}" in lf_sft["command"]
    config = json.loads((out / "train_llamafactory" / "output" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(stage1)
    base, pretrained = _tensors(out / "model" / "weights"), _tensors(stage1)
    assert any(not torch.equal(base[k], pretrained[k]) for k in base if k in pretrained)
    # Swift: stage 2 continues stage 1's adapter (loaded, trainable): at lr 1e-7 it ends where stage 1 left it,
    # far from a fresh adapter (lora_B starts at zero)
    adapter1 = Path(swift_sft["command"][swift_sft["command"].index("--adapters") + 1])
    assert adapter1.parent == out / "train_swift_pt" / "output"
    first, second = _tensors(adapter1), _tensors(Path(_result(out, "train_swift")["trained_model"]))
    lora_b = [k for k in first if "lora_B" in k]
    assert lora_b and set(first) == set(second)
    assert max(first[k].abs().max().item() for k in lora_b) > 1e-3
    assert max((first[k] - second[k]).abs().max().item() for k in lora_b) < 1e-4
    assert not all(torch.equal(first[k], second[k]) for k in lora_b)     # it did train


@pytest.mark.integration
def test_report_names_each_stages_data_and_the_models_scored(staged_run):
    out = staged_run
    summary = json.loads((out / "report" / "summary.json").read_text(encoding="utf-8"))
    text = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert list(summary["train"]) == ["lf_pt", "swift_pt", "llamafactory", "swift"]
    assert summary["train"]["lf_pt"]["kind"] == "pt" and summary["train"]["lf_pt"]["dataset"] == "gsm8k_text"
    assert summary["train"]["swift"]["dataset"] == "gsm8k_train" and summary["train"]["swift"]["after"] == "swift_pt"
    assert "- lf_pt: llamafactory pt on gsm8k_text:" in text
    assert "- swift: swift sft on gsm8k_train, from swift_pt's LoRA adapter (continued):" in text
    assert "- llamafactory: llamafactory sft on gsm8k_train, from lf_pt's model:" in text
    assert "recipe" in text and "gsm8k_text 1,000 rows" in text
    recipes = summary["data"]["recipes"]
    assert recipes[0]["outputs"]["gsm8k_text"]["rows"] == 1000
    rows = [json.loads(line) for line in Path(recipes[0]["outputs"]["gsm8k_text"]["file"]).read_text().splitlines()]
    assert set(rows[0]) == {"text"} and rows[0]["text"].endswith("#### 72")
    # the eval scores each framework's final model: LF's adapter merged into its stage-1 model, Swift's adapter
    # (trained on the base) as it is
    models = {m["label"]: m for m in json.loads((out / "eval" / "eval.json").read_text())["models"]}
    assert set(models) == {"base", "llamafactory", "swift"}
    assert models["llamafactory"]["path"] == str(out / "eval" / "merged" / "llamafactory")
    assert models["llamafactory"]["kind"] == "merged" and models["swift"]["kind"] == "adapter"


@pytest.mark.integration
def test_a_rerun_skips_every_stage(staged_run, capsys):
    from sftpack.pipeline.cli import run_pipeline

    records = run_pipeline(Path(staged_run).parent / "pipeline.yaml", staged_run, verbose=False)
    assert [name for name, record in records.items() if not record["skipped"]] == ["report"] or \
        all(record["skipped"] for record in records.values())


@pytest.mark.integration
def test_merging_an_adapter_computes_what_peft_computes(staged_run, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sftpack.lora_merge import main

    base = staged_run / "model" / "weights"
    adapter = Path(_result(staged_run, "train_swift_pt")["trained_model"])
    assert main([str(base), str(adapter), str(tmp_path / "merged")]) == 0
    assert main([str(base), str(adapter), str(tmp_path / "merged")]) == 1   # never over an existing folder
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter))
        expected = peft(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(str(base))(ids).logits
    assert torch.allclose(merged, expected, atol=1e-4) and not torch.allclose(plain, expected, atol=1e-4)
    assert (tmp_path / "merged" / "tokenizer_config.json").is_file()
