"""Register every LLaMA-Factory `dataset_info.json` entry with ms-swift, under the same name.

Loaded by `swift sft --external_plugins plugins/sftpack_swift_datasets.py` (the shipped Swift configs name it),
so `--dataset gsm8k_train` means in Swift exactly what `dataset: gsm8k_train` means in LLaMA-Factory.

Which file: `$SFTPACK_DATASET_INFO` (a dataset_info.json or its folder) if set, else
`./dataset_info/dataset_info.json` resolved against the current directory — the same folder LLaMA-Factory's
`dataset_dir: dataset_info` reads. File entries resolve against that folder.

How LLaMA-Factory's formats map onto Swift's preprocessors:
- alpaca: a Swift `RowPreprocessor` that reads LLaMA-Factory's columns itself and builds the messages as
  `llamafactory/data/converter.py` AlpacaDatasetConverter does (history turns, then prompt and query joined
  by "\n", then the response; the system column if any). Swift's own AlpacaPreprocessor cannot be used: its
  automatic column mapping renames `instruction` to `query` before it reads `instruction`;
- sharegpt / openai: `messages` column and role/content/user/assistant/system tags -> `MessagesPreprocessor`.
Preference (`ranking`) and KTO entries are not SFT data: they are left out with a warning.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from sftpack import dataset_info
from sftpack.errors import SftpackError

ENV_VAR = "SFTPACK_DATASET_INFO"

# LLaMA-Factory's defaults (llamafactory/data/parser.py DatasetAttr) for keys an entry leaves out.
LF_ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
LF_SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                    "assistant_tag": "gpt", "system_tag": "system"}
LF_OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                  "assistant_tag": "assistant", "system_tag": "system"}


def info_path() -> Path:
    """The dataset_info.json this process registers (see module docstring)."""
    configured = os.environ.get(ENV_VAR)
    path = Path(configured) if configured else Path("dataset_info")
    if path.is_dir() or not path.suffix:
        path = path / dataset_info.FILE_NAME
    return path.resolve()


def alpaca_columns(entry: dict[str, Any]) -> dict[str, str]:
    """LLaMA-Factory's alpaca columns for an entry: without `columns` the defaults, with it only those given."""
    columns = entry.get("columns")
    return dict(LF_ALPACA_COLUMNS) if columns is None else {k: v for k, v in columns.items() if v}


def alpaca_messages(row: dict[str, Any], columns: dict[str, str]) -> list[dict[str, str]]:
    """The chat messages LLaMA-Factory builds from one alpaca row (AlpacaDatasetConverter)."""
    messages = []
    if columns.get("system") and row.get(columns["system"]):
        messages.append({"role": "system", "content": row[columns["system"]]})
    for old_prompt, old_response in (row.get(columns["history"]) or []) if columns.get("history") else []:
        messages.append({"role": "user", "content": old_prompt})
        messages.append({"role": "assistant", "content": old_response})
    parts = [row[columns[key]] for key in ("prompt", "query") if columns.get(key) and row.get(columns[key])]
    messages.append({"role": "user", "content": "\n".join(parts)})
    messages.append({"role": "assistant", "content": row[columns["response"]]})
    return messages


def _alpaca_preprocessor(columns: dict[str, str]):
    from swift.dataset import RowPreprocessor

    class LlamaFactoryAlpacaPreprocessor(RowPreprocessor):
        def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
            return {"messages": alpaca_messages(row, columns)}

    return LlamaFactoryAlpacaPreprocessor()


def swift_columns(entry: dict[str, Any]) -> dict[str, str]:
    """Column renames {file column: Swift key} for a sharegpt/openai entry."""
    formatting = entry.get("formatting", "alpaca")
    columns = entry.get("columns") or {}
    renames = {columns.get("messages", "conversations" if formatting == "sharegpt" else "messages"): "messages"}
    if columns.get("system"):
        renames[columns["system"]] = "system"
    return renames


def dataset_meta(name: str, entry: dict[str, Any], base_dir: Path):
    """The Swift `DatasetMeta` for one entry (None for entries that are not SFT data)."""
    from swift.dataset import DatasetMeta, MessagesPreprocessor

    if entry.get("ranking") or (entry.get("columns") or {}).get("kto_tag"):
        print(f"sftpack: {name}: preference/KTO data, not registered for swift sft", file=sys.stderr)
        return None
    formatting = entry.get("formatting", "alpaca")
    if formatting == "alpaca":
        preprocess = _alpaca_preprocessor(alpaca_columns(entry))
    else:
        tags = {**(LF_SHAREGPT_TAGS if formatting == "sharegpt" else LF_OPENAI_TAGS), **entry.get("tags", {})}
        preprocess = MessagesPreprocessor(
            role_key=tags["role_tag"], content_key=tags["content_tag"], user_role=tags["user_tag"],
            assistant_role=tags["assistant_tag"], system_role=tags["system_tag"],
            columns=swift_columns(entry),
        )
    where: dict[str, Any] = {}
    if "hf_hub_url" in entry or "ms_hub_url" in entry:
        where["hf_dataset_id"] = entry.get("hf_hub_url")
        where["ms_dataset_id"] = entry.get("ms_hub_url")
    elif "file_name" in entry:
        path = base_dir / entry["file_name"]
        where["dataset_path"] = str(path)
    else:
        print(f"sftpack: {name}: only file and hub entries can be registered for Swift", file=sys.stderr)
        return None
    return DatasetMeta(
        dataset_name=name,
        subsets=[entry["subset"]] if entry.get("subset") else ["default"],
        split=[entry.get("split", "train")],
        preprocess_func=preprocess,
        **where,
    )


def register_all(path: Path | None = None) -> list[str]:
    """Register every entry of `path` (default: `info_path()`) with Swift; return the names."""
    from swift.dataset import register_dataset

    path = path or info_path()
    if not path.is_file():
        raise SftpackError(f"{path}: not found. Run `sftpack prepare ...` first, run from the folder that holds "
                           f"dataset_info/, or set {ENV_VAR}")
    registered = []
    for name, entry in dataset_info.load(path).items():
        dataset_info.validate_entry(name, entry, where=str(path))
        meta = dataset_meta(name, entry, path.parent)
        if meta is not None:
            register_dataset(meta, exist_ok=True)
            registered.append(name)
    return registered
