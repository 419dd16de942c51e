"""The tiny offline Qwen2 model: deterministic, Qwen-shaped tokenizer, loadable by transformers."""

from __future__ import annotations

import json

from sftpack import tiny_model as builder

FILES = ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json")


def test_same_seed_same_bytes_other_seed_other_weights(tiny_model, tmp_path):
    rebuilt = builder.build(tmp_path / "again", seed=0)
    for name in FILES:
        assert (rebuilt / name).read_bytes() == (tiny_model / name).read_bytes(), name
    other = builder.build(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_model / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (tiny_model / "tokenizer.json").read_bytes()


def test_loads_and_follows_qwen_conventions(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings
    assert 250_000 < sum(p.numel() for p in model.parameters()) < 400_000
    specials = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    assert specials == list(range(len(tokenizer) - 3, len(tokenizer)))  # appended, in Qwen's order
    # what `sftpack estimate --shape tiny` and bench's plan take for the vocabulary without training the tokenizer
    assert len(tokenizer) == len(builder.build_tokenizer()) == builder.tiny_tokenizer_size() == 3003
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    text = tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == (f"<|im_start|>system\n{builder.DEFAULT_SYSTEM}<|im_end|>\n"
                    "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    sentence = "Natalia sold 48/2 = 24 clips.\n#### 72"
    assert tokenizer.decode(tokenizer(sentence)["input_ids"]) == sentence


def test_folder_is_written_for_transformers_4_and_5(tiny_model):
    """transformers 4.57 needs a top-level rope_theta and a list of additional_special_tokens."""
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["rope_theta"] == 1000000.0
    tok_config = json.loads((tiny_model / "tokenizer_config.json").read_text())
    assert tok_config["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]
    assert "extra_special_tokens" not in tok_config
