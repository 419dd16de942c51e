"""Read, validate and atomically merge LLaMA-Factory `dataset_info.json` entries.

LLaMA-Factory (0.9.5, `llamafactory/data/parser.py`) silently drops keys it does not know, so a typo such as
`"fromatting"` falls back to alpaca and fails later with `KeyError: 'instruction'`. Here an unknown key is an
error at write time, listing what is allowed. The key sets below are the ones `get_dataset_list` reads;
`tests/test_dataset_info.py` checks them against the installed LLaMA-Factory source.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from sftpack.artifacts import write_text
from sftpack.errors import SftpackError

# Where the data comes from: exactly one of these (LLaMA-Factory's precedence: hub > script > cloud > file).
SOURCE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name", "file_name")
# Plain attributes read by `DatasetAttr.set_attr`.
ATTR_KEYS = ("formatting", "ranking", "subset", "split", "folder", "num_samples")
ENTRY_KEYS = SOURCE_KEYS + ATTR_KEYS + ("columns", "tags")
COLUMN_KEYS = (
    "prompt", "query", "response", "history", "messages", "system", "tools",
    "images", "videos", "audios", "chosen", "rejected", "kto_tag",
)
TAG_KEYS = (
    "role_tag", "content_tag", "user_tag", "assistant_tag",
    "observation_tag", "function_tag", "system_tag",
)
FORMATTINGS = ("alpaca", "sharegpt", "openai")

FILE_NAME = "dataset_info.json"


def _unknown(kind: str, where: str, got: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(got) - set(allowed))
    if extra:
        raise SftpackError(
            f"{where}: unknown {kind} {extra} (LLaMA-Factory would drop them silently). "
            f"Expected: {list(allowed)}"
        )


def validate_entry(name: str, entry: Any, where: str = FILE_NAME) -> None:
    """Raise SftpackError when `entry` has a key LLaMA-Factory does not read, or a wrong shape."""
    here = f"{where}: entry '{name}'"
    if not isinstance(entry, dict):
        raise SftpackError(f"{here}: must be a JSON object, got {type(entry).__name__}")
    _unknown("keys", here, entry, ENTRY_KEYS)
    if not any(key in entry for key in SOURCE_KEYS):
        raise SftpackError(f"{here}: needs one of {list(SOURCE_KEYS)}")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        raise SftpackError(f"{here}: formatting '{formatting}' is not one of {list(FORMATTINGS)}")
    for key, allowed in (("columns", COLUMN_KEYS), ("tags", TAG_KEYS)):
        value = entry.get(key, {})
        if not isinstance(value, dict):
            raise SftpackError(f"{here}: '{key}' must be a JSON object")
        _unknown(f"{key} keys", here, value, allowed)
    columns = entry.get("columns")
    if formatting == "alpaca" and columns is not None and not entry.get("ranking"):
        # Once `columns` is given, every column left out becomes None in LLaMA-Factory.
        missing = [key for key in ("prompt", "response") if key not in columns]
        if missing:
            raise SftpackError(f"{here}: alpaca 'columns' must name {missing} too")


def load(path: Path) -> dict[str, Any]:
    """The entries of an existing dataset_info.json ({} when the file does not exist)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise SftpackError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise SftpackError(
            f"{path}: line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}); "
            "fix or move the file, nothing was changed"
        ) from None
    if not isinstance(data, dict):
        raise SftpackError(f"{path}: must hold a JSON object of named entries")
    return data


def dumps(entries: Mapping[str, Any]) -> str:
    return json.dumps(entries, indent=2, ensure_ascii=False) + "\n"


def merge(path: Path, new_entries: Mapping[str, Any]) -> dict[str, Any]:
    """Add or replace `new_entries` in `path`, keeping every other entry and their order; atomic."""
    for name, entry in new_entries.items():
        validate_entry(name, entry, where=str(path))
    entries = load(path)
    entries.update(new_entries)
    write_text(path, dumps(entries))
    return entries
