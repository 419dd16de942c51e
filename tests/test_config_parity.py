"""Every shipped training config parses in its framework, and each LF/Swift pair trains the same thing.

- every YAML under train_configs/ (recursively) is parsed by its own framework's argument parser
  (LLaMA-Factory `get_train_args`; ms-swift `SftArguments` via `swift.utils.parse_args_from_dict`), with only
  the model pointed at the tiny local model (no hub here) and, on a CPU, `use_cpu` (both refuse bf16 without);
- each LF config has a Swift twin with the same normalised hyper-parameters (`sftpack.parity`);
- one GSM8K training sample renders to the same token ids and labels through LLaMA-Factory's training
  processor and Swift's template, with each config's template and system prompt (the template's default: no
  config pins one; switching templates is tested in test_nothing_lost_frameworks.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftpack import frameworks as fw
from sftpack.parity import QWEN_SYSTEM, differences, load_yaml, normalise_lf, normalise_swift

ALL_CONFIGS = sorted(fw.TRAIN_CONFIGS.rglob("*.yaml"))
LF_CONFIGS = [p for p in ALL_CONFIGS if "stage" in load_yaml(p)]
SWIFT_CONFIGS = [p for p in ALL_CONFIGS if "tuner_type" in load_yaml(p)]
PAIRS = [(fw.LF_LORA_CONFIG, fw.SWIFT_LORA_CONFIG), (fw.LF_FULL_CONFIG, fw.SWIFT_FULL_CONFIG)]


def _id(path: Path) -> str:
    return str(path.relative_to(fw.TRAIN_CONFIGS))


def test_every_config_belongs_to_one_framework_and_one_pair():
    assert ALL_CONFIGS, "no configs found"
    assert sorted(LF_CONFIGS + SWIFT_CONFIGS) == ALL_CONFIGS, "a YAML is neither LF (stage:) nor Swift (tuner_type:)"
    paired = sorted(p for pair in PAIRS for p in pair)
    assert paired == ALL_CONFIGS, "every config needs a twin in the other framework (add it to PAIRS)"


def test_every_config_opens_with_its_header():
    for path in ALL_CONFIGS:
        head = path.read_text().split("\n\n")[0]
        assert head.startswith("# "), f"{path}: no header comment"
        assert f"{_id(path)}" in path.read_text().split("###")[0].split("\n# model")[0], \
            f"{path}: header must show the exact command with this file"


@pytest.mark.parametrize("path", LF_CONFIGS, ids=_id)
def test_llamafactory_parses(path, tiny_model, tmp_path):
    import torch
    from llamafactory.hparams import get_train_args

    cfg = {**load_yaml(path), "model_name_or_path": str(tiny_model), "output_dir": str(tmp_path / "out")}
    if not torch.cuda.is_available():
        cfg["use_cpu"] = True  # bf16 on a CPU is refused otherwise
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(cfg)
    assert finetuning_args.finetuning_type == cfg["finetuning_type"]
    assert data_args.cutoff_len == cfg["cutoff_len"] and data_args.template == cfg["template"]
    assert training_args.learning_rate == float(cfg["learning_rate"])
    assert training_args.bf16 is True
    assert model_args.trust_remote_code is False  # Qwen2.5 is in transformers: no code from the hub runs


@pytest.mark.parametrize("path", SWIFT_CONFIGS, ids=_id)
def test_swift_parses(path, tiny_model, tmp_path, workdir, monkeypatch):
    import torch
    from swift.arguments import SftArguments
    from swift.utils import parse_args_from_dict

    monkeypatch.chdir(workdir)  # the dataset plugin reads ./dataset_info/ like LF
    cfg = {**load_yaml(path), "model": str(tiny_model), "model_type": "qwen2", "check_model": False,
           "output_dir": str(tmp_path / "out"), "external_plugins": [str(fw.SWIFT_PLUGIN)]}
    if not torch.cuda.is_available():
        cfg["use_cpu"] = True  # bf16 on a CPU is refused otherwise
    args = parse_args_from_dict(SftArguments, cfg)
    assert args.tuner_type == cfg["tuner_type"]
    assert args.max_length == cfg["max_length"] and args.truncation_strategy == "right"
    assert args.gradient_accumulation_steps == cfg["gradient_accumulation_steps"]
    assert args.weight_decay == cfg["weight_decay"]


@pytest.mark.parametrize("lf,swift", PAIRS, ids=lambda p: _id(p))
def test_pair_has_same_hyperparameters(lf, swift):
    a, b = normalise_lf(load_yaml(lf)), normalise_swift(load_yaml(swift))
    assert differences(a, b) == {}
    assert a["lora_alpha"] == (32 if a["method"] == "lora" else None)


def test_parity_catches_a_swift_default():
    """Leaving weight_decay out of the Swift config would silently give Swift's 0.1: the check must see it."""
    cfg = load_yaml(fw.SWIFT_LORA_CONFIG)
    del cfg["weight_decay"], cfg["gradient_accumulation_steps"]
    diff = differences(normalise_lf(load_yaml(fw.LF_LORA_CONFIG)), normalise_swift(cfg))
    assert diff == {"weight_decay": (0.0, 0.1), "gradient_accumulation_steps": (4, None)}


@pytest.mark.parametrize("lf,swift", PAIRS, ids=lambda p: _id(p))
def test_pair_renders_identical_token_ids(lf, swift, tiny_model, workdir):
    from llamafactory.data.processor import SupervisedDatasetProcessor
    from llamafactory.data.template import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from swift.model import get_processor
    from swift.template import get_template
    from transformers import AutoTokenizer

    lf_cfg, sw_cfg = load_yaml(lf), load_yaml(swift)
    row = json.loads((workdir / "dataset_info" / "gsm8k_train.jsonl").open().readline())

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data_args = DataArguments(template=lf_cfg["template"], default_system=lf_cfg.get("default_system"),
                              cutoff_len=lf_cfg["cutoff_len"])
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    processor = SupervisedDatasetProcessor(template=template, tokenizer=tokenizer, processor=None,
                                           data_args=data_args)
    lf_ids, lf_labels = processor._encode_data_example(
        prompt=[{"role": "user", "content": row["question"]}],
        response=[{"role": "assistant", "content": row["answer"]}],
        system="", tools="", images=[], videos=[], audios=[])

    swift_template = get_template(get_processor(str(tiny_model), model_type="qwen2"),
                                  default_system=sw_cfg.get("system"), max_length=sw_cfg["max_length"],
                                  template_type=sw_cfg["template"], truncation_strategy="right")
    swift_template.set_mode("train")
    encoded = swift_template.encode({"messages": [{"role": "user", "content": row["question"]},
                                                  {"role": "assistant", "content": row["answer"]}]})
    assert encoded["input_ids"] == lf_ids
    assert encoded["labels"] == lf_labels
    text = tokenizer.decode(lf_ids)
    system = normalise_lf(lf_cfg)["system"]  # no config pins it: the template's default (Qwen2.5's own)
    assert system == normalise_swift(sw_cfg)["system"] == QWEN_SYSTEM
    assert text.startswith(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n")
    assert text.endswith(row["answer"] + "<|im_end|>\n")
