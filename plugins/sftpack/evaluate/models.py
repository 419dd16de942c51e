"""What `sftpack eval` evaluates: the base model and each tuned model, checked before any model is loaded.

A tuned model is a LoRA adapter folder (it has `adapter_config.json`; evaluated on top of `--model`) or a merged /
fully fine-tuned model folder (it has `config.json`; evaluated alone). With the `local-completions` backend every
model is a name the server serves (vLLM `--lora-modules NAME=PATH` serves an adapter under NAME).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from sftpack.errors import SftpackError
from sftpack.frameworks.common import model_location

BACKENDS = ("hf", "vllm", "local-completions")
KINDS = ("base", "adapter", "merged", "served")
# `max_lora_rank` values vLLM accepts (vllm/config/lora.py `MaxLoRARanks`; older releases: LoRAConfig
# `possible_max_ranks`, the same list without 1). The adapter's `r` is rounded up to one of them.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class EvalModel:
    """One column of the results table."""

    label: str
    kind: str                 # one of KINDS
    path: str                 # model folder / hub id, adapter folder, or served model name
    base: str | None = None   # the base model an adapter is loaded on
    lora_rank: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Unknown model kind {self.kind!r}. Expected: {list(KINDS)}")
        if not _LABEL_RE.match(self.label):
            raise SftpackError(f"label {self.label!r} may use only letters, digits and _.+- "
                               "(it names a results folder); pass LABEL=PATH with such a label")


def default_label(path: str) -> str:
    """`saves/lf-lora` -> `lf-lora`; `saves/swift-lora/checkpoint-3` -> `swift-lora-checkpoint-3`."""
    p = Path(path.rstrip("/"))
    name = f"{p.parent.name}-{p.name}" if re.fullmatch(r"checkpoint-\d+", p.name) and p.parent.name else p.name
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", name).lstrip("-._+") or "model"


def split_label(spec: str) -> tuple[str | None, str]:
    """`LABEL=PATH` -> (LABEL, PATH); a bare PATH -> (None, PATH)."""
    label, sep, rest = spec.partition("=")
    if sep and label and "/" not in label and not Path(spec).exists():
        return label, rest
    return None, spec


def read_adapter_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SftpackError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def same_model(recorded: str, given: str) -> bool:
    """True when an adapter's recorded base and `--model` name the same model.

    Equal strings; or two local paths to the same folder; or a hub id and a local folder with the id's last part
    as its name (a local copy of `Qwen/Qwen2.5-1.5B` in `/models/Qwen2.5-1.5B`).
    """
    if recorded.rstrip("/") == given.rstrip("/"):
        return True
    rec_local, giv_local = Path(recorded).expanduser().exists(), Path(given).expanduser().exists()
    if rec_local and giv_local:
        return Path(recorded).expanduser().resolve() == Path(given).expanduser().resolve()
    if rec_local != giv_local:
        return Path(recorded.rstrip("/")).name.lower() == Path(given.rstrip("/")).name.lower()
    return False


def check_base(model: str, environ: Mapping[str, str] | None = None) -> str:
    """`--model` must be a model: a folder with config.json (not an adapter), or a hub id. Returns it as lm-eval
    gets it (an absolute folder, or the hub id). Local or hub is sftpack.paths' one rule: `./m`, `work/tinyy`
    (`work/` exists), `m.safetensors` are local and must exist; a hub id is taken when the hubs are on (`environ`:
    the lm-eval runs' environment) or when it is in this machine's cache."""
    where = model_location(model, "--model", environ=environ)
    if isinstance(where, str):
        return where   # a hub id: lm-eval downloads it (or finds it in the HF cache)
    folder = where
    if not folder.is_dir():
        raise SftpackError(f"--model {model}: {folder.resolve()} is a file; --model takes a model folder (with "
                           "config.json) or a hub id")
    if (folder / "adapter_config.json").exists():
        raise SftpackError(f"--model {model} is a LoRA adapter (it has adapter_config.json); pass the model it was "
                           f"trained on as --model and the adapter with --tuned {model}")
    if not (folder / "config.json").exists():
        raise SftpackError(f"--model {model}: {folder.resolve()} has no config.json, so it is not a model folder")
    return str(folder.resolve())


def tuned_model(spec: str, base: str, backend: str, skip_base_check: bool = False) -> EvalModel:
    """An adapter or merged model from a `--tuned [LABEL=]PATH` argument, with the checks users trip over."""
    label, path = split_label(spec)
    if backend == "local-completions":
        return EvalModel(label=label or default_label(path), kind="served", path=path)
    folder = Path(path).expanduser()
    if folder.is_file():
        raise SftpackError(f"--tuned {spec}: {folder.resolve()} is a file; --tuned takes an adapter or model folder")
    if not folder.is_dir():
        raise SftpackError(f"--tuned {spec}: no such folder ({folder.resolve()})")
    label = label or default_label(path)
    if (folder / "adapter_config.json").exists():
        config = read_adapter_config(folder)
        recorded = config.get("base_model_name_or_path")
        if recorded and not skip_base_check and not same_model(str(recorded), base):
            raise SftpackError(
                f"--tuned {path}: its adapter_config.json says it was trained on '{recorded}', but --model is "
                f"'{base}'. Evaluate it on the model it was trained on (--model {recorded}), or pass "
                f"--skip-base-check if '{base}' is the same weights under another name")
        rank = config.get("r")
        return EvalModel(label=label, kind="adapter", path=str(folder.resolve()), base=base,
                         lora_rank=int(rank) if rank is not None else None)
    if (folder / "config.json").exists():
        return EvalModel(label=label, kind="merged", path=str(folder.resolve()))
    hint = ""
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])
                         if p.name.split("-")[-1].isdigit() else -1)
    adapters = [c for c in checkpoints if (c / "adapter_config.json").exists() or (c / "config.json").exists()]
    if adapters:
        hint = (f"; ms-swift saves adapters inside checkpoint folders: did you mean --tuned {adapters[-1]}"
                " (the last checkpoint)?")
    raise SftpackError(f"--tuned {path}: {folder.resolve()} has no adapter_config.json (so it is not a LoRA adapter) "
                       f"and no config.json (so it is not a merged model){hint}")


def plan(model: str, tuned: list[str], backend: str = "hf", include_base: bool = True,
         skip_base_check: bool = False, environ: Mapping[str, str] | None = None) -> list[EvalModel]:
    """The models of one `sftpack eval` run, base first, every check done; labels unique. `environ`: the lm-eval
    runs' environment (whether the hubs are on for a hub id `model`)."""
    if backend not in BACKENDS:
        raise SftpackError(f"unknown backend {backend!r}. Expected: {list(BACKENDS)}")
    models = []
    if backend == "local-completions":
        if include_base:
            models.append(EvalModel(label="base", kind="served", path=model))
    else:
        base = check_base(model, environ)
        if include_base:
            models.append(EvalModel(label="base", kind="base", path=base))
        model = base
    models += [tuned_model(spec, model, backend, skip_base_check) for spec in tuned]
    if not models:
        raise SftpackError("nothing to evaluate: --no-base and no --tuned models")
    seen: dict[str, str] = {}
    for m in models:
        if m.label in seen:
            raise SftpackError(f"two models get the label '{m.label}' ({seen[m.label]} and {m.path}); "
                               "name them with --tuned LABEL=PATH")
        seen[m.label] = m.path
    return models


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds an adapter of rank `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise SftpackError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}; "
                       "merge the adapter and pass the merged model with --tuned instead")
