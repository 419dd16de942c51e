"""Read, validate and atomically merge LLaMA-Factory `dataset_info.json` entries.

LLaMA-Factory (0.9.5, `llamafactory/data/parser.py`) silently drops keys it does not know, so a typo such as
`"fromatting"` falls back to alpaca and fails later with `KeyError: 'instruction'`. Here an unknown key is an
error at write time, listing what is allowed. The key sets below are the ones `get_dataset_list` reads;
`tests/test_dataset_info.py` checks them against the installed LLaMA-Factory source.

Who wrote what: entries stay plain LLaMA-Factory keys, so what sftpack wrote into a folder is recorded beside
them in `.sftpack-manifest.json` (`Manifest`): each entry as written and each file with its sha256, by the
command that made it (`prepare gsm8k_train`, `recipe cmmlu_mcq`). An entry or file is sftpack's to replace
or remove only while it is unchanged since; everything else in the folder is the user's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from sftpack.artifacts import file_sha256, write_json, write_text
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
        # Once `columns` is given, every column left out becomes None in LLaMA-Factory. Without `response` the
        # entry is pretraining text (`{prompt: text}`, LLaMA-Factory's own c4_demo; stage: pt / swift pt).
        if "prompt" not in columns:
            raise SftpackError(f"{here}: alpaca 'columns' must name ['prompt'] too (with 'response' for SFT data; "
                               "without it the entry is pretraining text)")


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


def merge(path: Path, new_entries: Mapping[str, Any], remove: Iterable[str] = ()) -> dict[str, Any]:
    """Add or replace `new_entries` in `path` and drop the names in `remove`, keeping every other entry and
    their order; atomic. Callers that share a folder hold its lock (`sftpack.locks.hold`) around the
    read-modify-write."""
    for name, entry in new_entries.items():
        validate_entry(name, entry, where=str(path))
    entries = load(path)
    for name in remove:
        entries.pop(name, None)
    entries.update(new_entries)
    write_text(path, dumps(entries))
    return entries


# ---------------------------------------------------------------------------------------------- ownership

MANIFEST_NAME = ".sftpack-manifest.json"
MANIFEST_SCHEMA = 1


@dataclass
class Manifest:
    """What sftpack wrote in `folder`: `entries` {name: {entry, file, by}} and `files` {name: {sha256, size,
    by, entry}}, `by` naming the output set (a re-run of the same set replaces it and removes what it no
    longer writes). While a commit is under way a record also holds `replacing` (the entry or sha256 it
    replaces), so that a crash in between still reads as sftpack's own."""

    folder: Path
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME

    @classmethod
    def load(cls, folder: Path) -> "Manifest":
        manifest = cls(Path(folder))
        if not manifest.path.is_file():
            return manifest
        try:
            data = json.loads(manifest.path.read_text(encoding="utf-8"))
            manifest.entries, manifest.files = dict(data["entries"]), dict(data["files"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise SftpackError(f"{manifest.path}: not a manifest sftpack can read; move it away (sftpack then "
                               "treats every entry and file in the folder as the user's)") from None
        return manifest

    def save(self) -> None:
        write_json(self.path, {"schema_version": MANIFEST_SCHEMA,
                               "about": "written by sftpack: the dataset_info entries and files it wrote here, so "
                                        "that a re-run replaces or removes only its own, unchanged ones",
                               "entries": dict(sorted(self.entries.items())),
                               "files": dict(sorted(self.files.items()))}, ensure_ascii=False)

    def owns_entry(self, name: str, current: Any) -> bool:
        """`current` (the entry now in dataset_info.json) is the one sftpack wrote under `name`."""
        record = self.entries.get(name)
        return record is not None and current in (record.get("entry"), record.get("replacing"))

    def owns_file(self, name: str, sha256: str | None = None) -> bool:
        """The file `name` is as sftpack wrote it (or is gone: nothing to lose). `sha256`: its hash if known."""
        record = self.files.get(name)
        path = self.folder / name
        if not path.exists() and not path.is_symlink():
            return True
        if record is None or not path.is_file():
            return False
        sha256 = sha256 or file_sha256(path)
        return sha256 in (record.get("sha256"), record.get("replacing"))

    def by(self, producer: str) -> tuple[list[str], list[str]]:
        """(entry names, file names) recorded for the output set `producer`."""
        return ([n for n, r in self.entries.items() if r.get("by") == producer],
                [n for n, r in self.files.items() if r.get("by") == producer])
