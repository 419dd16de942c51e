"""Which model an estimate is for: a config.json (local folder or the hub cache), or a named shape of tiny_model.

    config, source = resolve("Qwen/Qwen2.5-1.5B", cwd=Path.cwd())
    # no local copy and no hub here: tiny_model.SHAPES["qwen2.5-1.5b"], and `source` says so

Only the config is read: the model is built on the meta device, so no weights are loaded or downloaded. A hub id is
looked up in the local Hugging Face cache only (`try_to_load_from_cache`, no network); when it is not there, a hub
id listed in HUB_SHAPES is replaced by that named shape (the exact architecture, so the same memory), and the
estimate says so. A local path is resolved against `cwd`, as the frameworks resolve it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftpack.errors import SftpackError

# Hub ids whose architecture a tiny_model shape reproduces exactly (lower case).
HUB_SHAPES = {
    "qwen/qwen2.5-1.5b": "qwen2.5-1.5b",
    "qwen/qwen2.5-1.5b-instruct": "qwen2.5-1.5b",
}


def shape_config(shape: str) -> dict[str, Any]:
    """config.json of `sftpack tiny-model --shape SHAPE` (the tiny tokenizer's size for tiny/small)."""
    from sftpack import tiny_model

    if shape not in tiny_model.SHAPES:
        raise SftpackError(f"--shape {shape!r} unknown. Expected one of {sorted(tiny_model.SHAPES)}")
    kwargs = dict(tiny_model.SHAPES[shape])
    if "vocab_size" not in kwargs:   # tiny/small: the GSM8K-trained tokenizer's size
        kwargs["vocab_size"] = tiny_model.tiny_tokenizer_size()
    return {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu",
            "tie_word_embeddings": True, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "attention_dropout": 0.0,
            "torch_dtype": "bfloat16" if shape == "qwen2.5-1.5b" else "float32", **kwargs}


def _cached_hub_config(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:   # a malformed id or cache: treated as not cached
        return None
    return Path(found) if isinstance(found, str) else None


def resolve(name: str | None, cwd: Path, shape: str | None = None) -> tuple[dict[str, Any], str]:
    """(config.json as a dict, where it came from) for the model `name` of a config, or the named `shape`."""
    if shape:
        return shape_config(shape), f"named shape {shape!r} (sftpack.tiny_model.SHAPES)"
    if not name:
        raise SftpackError("the config names no model; pass --model DIR or --shape NAME")
    path = Path(name).expanduser()
    path = path if path.is_absolute() else Path(cwd) / path
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise SftpackError(f"model folder {path.resolve()} has no config.json")
        return json.loads(config.read_text(encoding="utf-8")), f"{config.resolve()}"
    cached = _cached_hub_config(name)
    if cached is not None:
        return json.loads(cached.read_text(encoding="utf-8")), f"hub id {name}: config.json from the local cache"
    if name.lower() in HUB_SHAPES:
        named = HUB_SHAPES[name.lower()]
        return shape_config(named), (f"hub id {name} is not available locally: its architecture from the named "
                                     f"shape {named!r} (sftpack.tiny_model.SHAPES; same layers, widths and vocab)")
    raise SftpackError(f"model {name!r}: no folder {path.resolve()} and no config.json in the local hub cache; pass "
                       f"--model DIR (a folder with config.json) or --shape NAME")


def transformers_config(config: dict[str, Any], attention: str):
    """A transformers PretrainedConfig from a config.json dict, with the attention implementation to trace."""
    from transformers import AutoConfig

    values = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version", "architectures")}
    built = AutoConfig.for_model(config["model_type"], **values)
    built._attn_implementation = "eager" if attention == "eager" else "sdpa"
    built.use_cache = False
    return built
