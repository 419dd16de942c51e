"""Qwen2.5's real tokenizer built offline from the dashscope wheel: ids equal tiktoken's, specials, tiny model.

Needs PyPI (as CI has): the session fixture runs `pip download dashscope==2.0.2 --no-deps --only-binary=:all:`
into pytest's cache (reused on later runs) and FAILS with pip's message when it cannot. The tokenizer is built
once per session (~5 s); the whole file takes ~30 s on 2 cores.
Run: `.venv/bin/python -m pytest tests/test_qwen_tokenizer.py -q`
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sftpack import qwen_tokenizer
from sftpack import tiny_model as builder
from sftpack.errors import SftpackError

DASHSCOPE = "dashscope==2.0.2"
FIRST_ADDED_ID = 151643


def _download_wheel(folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", DASHSCOPE, "--no-deps", "--only-binary=:all:",
               "-d", str(folder), "--disable-pip-version-check", "--quiet"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    wheels = sorted(folder.glob("dashscope-2.0.2-*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.fail(f"`{' '.join(command)}` failed (rc {done.returncode}); these tests need PyPI:\n"
                    f"{done.stdout}{done.stderr}", pytrace=False)
    return wheels[0]


@pytest.fixture(scope="session")
def tiktoken_file(request, build_once) -> Path:
    """qwen.tiktoken out of the dashscope wheel (downloaded once into pytest's cache; extracted once per session)."""
    cache = Path(request.config.cache.mkdir("sftpack-dashscope"))

    def build(folder: Path) -> None:
        wheels = sorted(cache.glob("dashscope-2.0.2-*.whl"))
        wheel = wheels[0] if wheels else _download_wheel(cache)
        (folder / "qwen.tiktoken").write_bytes(qwen_tokenizer.qwen_tiktoken_from_wheel(wheel))

    return build_once("qwen-tiktoken", build) / "qwen.tiktoken"


@pytest.fixture(scope="session")
def qwen_dir(tiktoken_file, build_once) -> Path:
    """The tokenizer built once per session (both xdist workers read it; a test that builds again writes elsewhere)."""
    return build_once("qwen-tokenizer", lambda folder: qwen_tokenizer.build(tiktoken_file, folder / "tokenizer")) \
        / "tokenizer"


@pytest.fixture(scope="session")
def qwen(qwen_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_dir)


def test_ids_equal_tiktoken_on_the_gsm8k_sample(qwen_dir, tiktoken_file, record_property):
    texts = qwen_tokenizer.gsm8k_sample_texts()
    counts = qwen_tokenizer.verify(qwen_dir, tiktoken_file, texts)
    record_property("verify_counts", json.dumps(counts))
    print(f"verify on the GSM8K sample: {counts}")
    assert counts["texts"] == len(texts) == 2400
    assert counts["mismatched_texts"] == 0 and counts["first_mismatch"] is None
    assert counts["tokens"] > 100_000  # 215,811 with dashscope 2.0.2's qwen.tiktoken


def test_hello_world_and_round_trip(qwen):
    assert qwen("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]
    text = "Natalia sold 48/2 = 24 clips in May.\n#### 72 — café, 数学"
    assert qwen.decode(qwen(text)["input_ids"]) == text


def test_the_22_added_tokens_and_eos_pad_bos_are_qwen2_5_base(qwen, qwen_dir):
    added = qwen.added_tokens_decoder
    expected = qwen_tokenizer.ADDED_TOKENS
    assert len(expected) == 22 and len(qwen) == FIRST_ADDED_ID + 22
    assert [(i, added[i].content, added[i].special) for i in sorted(added)] == [
        (FIRST_ADDED_ID + n, token, special) for n, (token, special) in enumerate(expected)]
    assert qwen.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|file_sep|>"]) == [151644, 151645, 151664]
    assert qwen.eos_token == qwen.pad_token == "<|endoftext|>" and qwen.bos_token is None
    tok_config = json.loads((qwen_dir / "tokenizer_config.json").read_text())
    assert tok_config["additional_special_tokens"] == list(qwen_tokenizer.ADDITIONAL_SPECIAL_TOKENS)
    assert "extra_special_tokens" not in tok_config  # transformers 4.57 reads the list form above


def test_chat_template_renders(qwen):
    text = qwen.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False,
                                    add_generation_prompt=True)
    assert text == (f"<|im_start|>system\n{builder.DEFAULT_SYSTEM}<|im_end|>\n"
                    "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    ids = qwen(text)["input_ids"]
    assert ids[0] == 151644 and ids.count(151645) == 2 and qwen.decode(ids) == text


def test_rebuild_is_byte_identical(qwen_dir, tiktoken_file, tmp_path):
    again = qwen_tokenizer.build(tiktoken_file, tmp_path / "again")
    names = sorted(p.name for p in qwen_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (again / name).read_bytes() == (qwen_dir / name).read_bytes(), name


def test_tiny_model_with_the_qwen_tokenizer(qwen, qwen_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = builder.build(tmp_path / "model", shape="tiny", tokenizer=qwen_dir)
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size >= len(qwen) == len(tokenizer) == 151665
    assert model.config.eos_token_id == tokenizer.eos_token_id == qwen.eos_token_id == 151643
    assert model.config.pad_token_id == tokenizer.pad_token_id == 151643
    assert model.generation_config.eos_token_id == 151643
    assert tokenizer("Hello world")["input_ids"] == [9707, 1879]
    with torch.no_grad():
        logits = model(torch.tensor([[9707, 1879, 151664]])).logits
    assert logits.shape == (1, 3, model.config.vocab_size)
    assert "copied from `tokenizer`" in (out / "README.md").read_text()
    again = builder.build(tmp_path / "again", shape="tiny", tokenizer=qwen_dir)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json",
                 "generation_config.json", "README.md"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_errors_name_the_file(tmp_path):
    wheel = tmp_path / "not_dashscope-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/__init__.py", "")
    with pytest.raises(SftpackError, match="not_dashscope.*qwen.tiktoken"):
        qwen_tokenizer.qwen_tiktoken_from_wheel(wheel)
    short = tmp_path / "short.tiktoken"
    short.write_text("IQ== 0\nIg== 1\n")
    with pytest.raises(SftpackError, match="short.tiktoken.*ranks 0..151642"):
        qwen_tokenizer.build(short, tmp_path / "out")
    with pytest.raises(SftpackError, match="tokenizer folder .*missing.* not found"):
        builder.build(tmp_path / "model", tokenizer=tmp_path / "missing")


def test_a_shape_smaller_than_the_tokenizer_is_an_error(qwen_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(builder.SHAPES, "tiny", {**builder.SHAPES["tiny"], "vocab_size": 1000})
    with pytest.raises(SftpackError, match="vocab_size 1,000 but the tokenizer has 151,665"):
        builder.build(tmp_path / "model", shape="tiny", tokenizer=qwen_dir)
