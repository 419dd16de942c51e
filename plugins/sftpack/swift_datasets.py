"""Register LLaMA-Factory `dataset_info.json` entries with ms-swift, under the same names.

Loaded by `swift sft --external_plugins plugins/sftpack_swift_datasets.py` (the shipped Swift configs name it),
so `--dataset gsm8k_train` means in Swift exactly what `dataset: gsm8k_train` means in LLaMA-Factory.

Which file: `$SFTPACK_DATASET_INFO` (a dataset_info.json or its folder) if set, else
`./dataset_info/dataset_info.json` resolved against the current directory — the same folder LLaMA-Factory's
`dataset_dir: dataset_info` reads. File entries resolve against that folder.

What Swift is served, each row built as LLaMA-Factory 0.9.5 builds it (`llamafactory/data/converter.py`), by a
Swift `RowPreprocessor` of ours (Swift's own preprocessors rename columns automatically, LF's never do):
- alpaca with `prompt|query|response|system|history` (AlpacaDatasetConverter: history turns, then prompt and
  query joined by "\\n", then the response; the system column if any). A row without a response is dropped,
  as LF's SFT drops it;
- alpaca without a `response` column, e.g. `columns: {prompt: text}` (LF's pretraining text): the text as one
  assistant message, Swift's pretraining format (`swift pt`);
- sharegpt with any role/content/user/assistant/system/observation/function tags (SharegptDatasetConverter: a
  leading system turn or the system column; turns must alternate, else the row is dropped, as in LF).
Everything else is skipped with a one-line warning naming the entry and why (preference/KTO data, tools and
media columns, `formatting: openai`, script/cloud/om-hub sources, folders, missing files, unknown keys ...).
A skipped entry breaks no run that does not ask for it. A run that asks for one stops at once with one line:
the plugin reads the requested datasets from Swift's arguments while they are being parsed
(`requested_datasets`), and the entry is registered with a loader that refuses it, for any other caller.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sftpack import dataset_info
from sftpack.errors import SftpackError

ENV_VAR = "SFTPACK_DATASET_INFO"

# LLaMA-Factory's defaults (llamafactory/data/parser.py DatasetAttr) for keys an entry leaves out.
LF_ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
LF_SHAREGPT_COLUMNS = {"messages": "conversations"}
LF_SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                    "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
# File types both read: LF's FILEEXT2TYPE (llamafactory/extras/constants.py); Swift's path loader takes the
# extension as the `datasets` builder name (jsonl -> json, txt -> text).
FILE_TYPES = ("arrow", "csv", "json", "jsonl", "parquet", "txt")
NOT_SERVED_COLUMNS = ("tools", "images", "videos", "audios")

Warn = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def info_path() -> Path:
    """The dataset_info.json this process registers (see module docstring)."""
    configured = os.environ.get(ENV_VAR)
    path = Path(configured) if configured else Path("dataset_info")
    if path.is_dir() or not path.suffix:
        path = path / dataset_info.FILE_NAME
    return path.resolve()


# ------------------------------------------------------------------------------ rows, as LLaMA-Factory reads them


def alpaca_columns(entry: dict[str, Any]) -> dict[str, str]:
    """LLaMA-Factory's alpaca columns for an entry: without `columns` the defaults, with it only those given."""
    columns = entry.get("columns")
    return dict(LF_ALPACA_COLUMNS) if columns is None else {k: v for k, v in columns.items() if v}


def alpaca_messages(row: dict[str, Any], columns: dict[str, str]) -> list[dict[str, str]] | None:
    """The chat messages LLaMA-Factory builds from one alpaca row (AlpacaDatasetConverter); None for a row
    without a response (LF's SFT drops it)."""
    response = row.get(columns["response"]) if columns.get("response") else None
    if not isinstance(response, str):
        return None
    messages = []
    if columns.get("system") and row.get(columns["system"]):
        messages.append({"role": "system", "content": row[columns["system"]]})
    history = row.get(columns["history"]) if columns.get("history") else None
    for old_prompt, old_response in history if isinstance(history, list) else []:
        messages.append({"role": "user", "content": old_prompt})
        messages.append({"role": "assistant", "content": old_response})
    parts = [row[columns[key]] for key in ("prompt", "query") if columns.get(key) and row.get(columns[key])]
    messages.append({"role": "user", "content": "\n".join(parts)})
    messages.append({"role": "assistant", "content": response})
    return messages


def text_messages(row: dict[str, Any], columns: dict[str, str]) -> list[dict[str, str]] | None:
    """A pretraining row (alpaca without a response): the text LLaMA-Factory's pretraining reads (prompt and
    query joined by "\\n") as one assistant message, Swift's pretraining format; None for an empty row."""
    text = "\n".join(row[columns[key]] for key in ("prompt", "query") if columns.get(key) and row.get(columns[key]))
    return [{"role": "assistant", "content": text}] if text else None


def sharegpt_messages(row: dict[str, Any], columns: dict[str, str], tags: dict[str, str]) -> list[dict] | None:
    """The chat messages LLaMA-Factory builds from one sharegpt row (SharegptDatasetConverter), in Swift's
    roles; None for a row LF skips (turns that do not alternate user/assistant, an odd count)."""
    messages = row.get(columns["messages"]) or []
    role_key, content_key, system_tag = tags["role_tag"], tags["content_tag"], tags.get("system_tag")
    if system_tag and messages and messages[0][role_key] == system_tag:
        system, messages = messages[0][content_key], messages[1:]
    else:
        system = row.get(columns["system"]) if columns.get("system") else ""
    roles = {tags.get("user_tag"): "user", tags.get("observation_tag"): "tool_response",
             tags.get("assistant_tag"): "assistant", tags.get("function_tag"): "tool_call"}
    accepted = ((tags.get("user_tag"), tags.get("observation_tag")),
                (tags.get("assistant_tag"), tags.get("function_tag")))
    out = []
    for turn, message in enumerate(messages):
        if message[role_key] not in accepted[turn % 2]:
            return None
        out.append({"role": roles[message[role_key]], "content": message[content_key]})
    if not out or len(out) % 2:
        return None
    return ([{"role": "system", "content": system}] if system else []) + out


# --------------------------------------------------------------------------------------- what can be served


@dataclass
class Plan:
    """How one entry reaches Swift: `rows(row) -> messages | None` and where the data is; or why it cannot."""

    name: str
    reason: str | None = None                  # set: not servable
    rows: Callable[[dict[str, Any]], list | None] | None = None
    where: dict[str, Any] = field(default_factory=dict)   # DatasetMeta's dataset_path / hf_dataset_id / ...
    sample: int | None = None                  # LF num_samples
    kind: str = ""                             # alpaca | text | sharegpt


def _key_problem(entry: dict[str, Any]) -> str | None:
    """Keys LLaMA-Factory does not read (it drops them silently: a typo?), or a columns/tags that is no object."""
    for key in ("columns", "tags"):
        if key in entry and not isinstance(entry[key], dict):
            return f"'{key}' must be a JSON object (got {type(entry[key]).__name__})"
    bad = sorted(set(entry) - set(dataset_info.ENTRY_KEYS))
    for key, allowed in (("columns", dataset_info.COLUMN_KEYS), ("tags", dataset_info.TAG_KEYS)):
        bad += [f"{key}.{k}" for k in sorted(set(entry.get(key) or {}) - set(allowed))]
    return f"unknown keys {bad} (LLaMA-Factory would drop them silently: a typo?)" if bad else None


def _source(entry: dict[str, Any], base_dir: Path) -> tuple[dict[str, Any], str | None]:
    """(DatasetMeta keys for where the data is, or the reason Swift cannot read it)."""
    if "hf_hub_url" in entry or "ms_hub_url" in entry:
        if entry.get("folder"):
            return {}, "'folder' (a hub sub-folder): Swift's hub loader has no data_dir"
        return {"hf_dataset_id": entry.get("hf_hub_url"), "ms_dataset_id": entry.get("ms_hub_url"),
                "subsets": [entry.get("subset") or "default"], "split": [entry.get("split", "train")]}, None
    for key in ("om_hub_url", "script_url", "cloud_file_name"):
        if key in entry:
            return {}, f"source '{key}': Swift has no loader for it (file_name, hf_hub_url, ms_hub_url are served)"
    if "file_name" not in entry:
        return {}, f"no source: needs one of {list(dataset_info.SOURCE_KEYS)}"
    path = (base_dir / str(entry["file_name"])).resolve()
    if not path.exists():
        return {}, f"file not found: {path}"
    if path.is_dir():
        return {}, (f"{path} is a folder (LLaMA-Factory reads every file in it, Swift's path loader one file): "
                    "register each file as an entry")
    ext = path.suffix.lstrip(".").lower()
    if ext not in FILE_TYPES:
        return {}, f"{path}: extension '.{ext}' is not one of {list(FILE_TYPES)}"
    return {"dataset_path": str(path)}, None


def plan(name: str, entry: Any, base_dir: Path) -> Plan:
    """How entry `name` of a dataset_info.json in `base_dir` is served to Swift, or why it cannot be."""
    if not isinstance(entry, dict):
        return Plan(name, f"not a JSON object (got {type(entry).__name__})")
    problem = _key_problem(entry)
    if problem:
        return Plan(name, problem)
    formatting = entry.get("formatting", "alpaca")
    columns = entry.get("columns") or {}
    if formatting == "openai":
        return Plan(name, "formatting 'openai': LLaMA-Factory 0.9.5 rewrites its system prompt (adds 'detailed "
                          "thinking off', OpenAIDatasetConverter) and merges tool turns; not mapped. Write it as "
                          "sharegpt with tags {role_tag: role, content_tag: content, user_tag: user, "
                          "assistant_tag: assistant}")
    if formatting not in ("alpaca", "sharegpt"):
        return Plan(name, f"formatting {formatting!r} is not one of ['alpaca', 'sharegpt', 'openai']")
    if entry.get("ranking"):
        return Plan(name, "preference data (ranking: true), not SFT data")
    if columns.get("kto_tag"):
        return Plan(name, "KTO data (columns.kto_tag), not SFT data")
    media = [key for key in NOT_SERVED_COLUMNS if columns.get(key)]
    if media:
        return Plan(name, f"columns {media}: tools and media are not mapped for Swift")
    if formatting == "alpaca":
        cols = alpaca_columns(entry)
        if not any(cols.get(key) for key in ("prompt", "query", "history")):
            return Plan(name, "alpaca entry without a prompt, query or history column")
        if cols.get("response"):
            result = Plan(name, rows=lambda row: alpaca_messages(row, cols), kind="alpaca")
        elif cols.get("history"):
            return Plan(name, "alpaca history without a response column: LLaMA-Factory reads only its first turn "
                              "as pretraining text; not mapped")
        else:
            result = Plan(name, rows=lambda row: text_messages(row, cols), kind="text")
    else:
        cols = {**LF_SHAREGPT_COLUMNS, **{k: v for k, v in columns.items() if v}}
        tags = {**LF_SHAREGPT_TAGS, **(entry.get("tags") or {})}
        if not (tags.get("role_tag") and tags.get("content_tag")):
            return Plan(name, "sharegpt entry without role_tag or content_tag")
        result = Plan(name, rows=lambda row: sharegpt_messages(row, cols, tags), kind="sharegpt")
    result.where, reason = _source(entry, base_dir)
    if reason:
        return Plan(name, reason)
    result.sample = entry.get("num_samples")
    if result.sample is not None and (not isinstance(result.sample, int) or isinstance(result.sample, bool)
                                      or result.sample < 1):
        return Plan(name, f"num_samples must be a positive integer (got {result.sample!r})")
    return result


# ------------------------------------------------------------------------------------------ Swift's registry


def _preprocessor(rows: Callable[[dict[str, Any]], list | None], sample: int | None):
    from swift.dataset import RowPreprocessor

    class LlamaFactoryRows(RowPreprocessor):
        def __init__(self):
            super().__init__(dataset_sample=sample)
            self.columns = {}  # no automatic renames (Swift maps `image`/`images`... by default): LF's columns only

        def preprocess(self, row: dict[str, Any]) -> dict[str, Any] | None:
            messages = rows(row)
            return None if messages is None else {"messages": messages}

    return LlamaFactoryRows()


def _refusing_loader(message: str):
    """A Swift dataset loader class whose `load` raises `message` (an entry that cannot be served)."""
    from swift.dataset.dataset_meta import BaseDatasetLoader

    class Refused(BaseDatasetLoader):
        def __init__(self, **kwargs: Any):
            pass

        def load(self, *args: Any, **kwargs: Any):
            raise SftpackError(message)

    return Refused


def refusal(name: str, reason: str, path: Path) -> str:
    return f"dataset '{name}' cannot be served to swift: {reason} (entry of {path})"


@dataclass
class Registration:
    path: Path
    served: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)   # name -> why

    @property
    def names(self) -> list[str]:
        return self.served + list(self.skipped)


def register(path: Path | None = None, warn: Warn = _stderr) -> Registration:
    """Register every entry of `path` (default: `info_path()`) with Swift: the servable ones with their rows,
    the others with a loader that refuses them, each named in one `warn` line. Raises SftpackError only when
    the file itself cannot be read."""
    from swift.dataset import DatasetMeta, register_dataset

    path = path or info_path()
    if not path.is_file():
        raise SftpackError(f"{path}: not found. Run `sftpack prepare ...` first, run from the folder that holds "
                           f"dataset_info/, or set {ENV_VAR}")
    try:
        entries = dataset_info.load(path)
    except OSError as err:
        raise SftpackError(f"{path}: cannot be read ({err.strerror or err})") from None
    registration = Registration(path)
    for name, entry in entries.items():
        try:
            how = plan(name, entry, path.parent)
        except Exception as err:  # noqa: BLE001 - one odd entry must not break every other dataset's run
            how = Plan(name, f"cannot be read ({type(err).__name__}: {err})")
        if how.reason:
            registration.skipped[name] = how.reason
            warn(f"sftpack: swift: skipped '{name}': {how.reason}")
            meta = DatasetMeta(dataset_name=name, loader=_refusing_loader(refusal(name, how.reason, path)))
        else:
            registration.served.append(name)
            if how.sample:
                warn(f"sftpack: swift: '{name}': num_samples {how.sample}: Swift draws its own sample "
                     "(not LLaMA-Factory's rows)")
            meta = DatasetMeta(dataset_name=name, preprocess_func=_preprocessor(how.rows, how.sample), **how.where)
        register_dataset(meta, exist_ok=True)
    return registration


def register_all(path: Path | None = None, warn: Warn = _stderr) -> list[str]:
    """Register every entry of `path` (default: `info_path()`) with Swift; return the names it can serve."""
    return register(path, warn).served


# ------------------------------------------------------------------------------- the run that loads the plugin


def requested_datasets() -> list[str] | None:
    """The datasets the Swift run importing this plugin asks for (`dataset` + `val_dataset`, as written), read
    from its arguments object, which is being parsed while Swift imports external plugins
    (`BaseArguments._import_external_plugins`). None when not imported that way."""
    frame = sys._getframe(1)
    while frame is not None:
        args = frame.f_locals.get("self")
        if args is not None and hasattr(args, "external_plugins") and hasattr(args, "dataset"):
            names = []
            for key in ("dataset", "val_dataset"):
                value = getattr(args, key, None) or []
                names += [value] if isinstance(value, str) else list(value)
            return [str(name) for name in names]
        frame = frame.f_back
    return None


def _entry_name(raw: str) -> str | None:
    """The name a request means when it can only mean a dataset_info entry (Swift's syntax `name[:subsets][#n]`,
    no `hf::`/`ms::` prefix, no owner/ part, not an existing path); None for a hub id or a path."""
    from swift.dataset.dataset_syntax import DatasetSyntax

    name = DatasetSyntax.parse(raw).dataset
    return None if "::" in raw or "/" in name or Path(name).exists() else name


def check_requested(requested: list[str], registration: Registration | None, problem: str | None = None,
                    warn: Warn = _stderr) -> None:
    """Raise SftpackError naming every requested dataset (as written, Swift's syntax) that cannot be served: a
    skipped entry, a bare name that is no entry (a typo; a hub id needs its owner/ or an hf::/ms:: prefix), or
    any bare name while the dataset_info.json could not be read (`problem`)."""
    import difflib

    from swift.dataset import DATASET_MAPPING

    ours = set(registration.names) if registration is not None else set()
    # a name registered by Swift itself (e.g. self-cognition) is Swift's to serve
    wanted = [name for name in map(_entry_name, requested) if name and (name in ours or name not in DATASET_MAPPING)]
    if registration is None:
        if wanted:
            raise SftpackError(f"dataset(s) {wanted} requested, but {problem}")
        if problem:
            warn(f"sftpack: swift: no dataset_info entries registered: {problem}")
        return
    errors = []
    for name in wanted:
        if name in registration.skipped:
            errors.append(refusal(name, registration.skipped[name], registration.path))
        elif name not in registration.names:
            close = difflib.get_close_matches(name, registration.names, n=1)
            errors.append(f"dataset '{name}' is not an entry of {registration.path}"
                          + (f" (did you mean '{close[0]}'?)" if close else
                             f" (entries: {', '.join(registration.names) or 'none'})")
                          + "; a hub dataset needs its owner/name id or an hf::/ms:: prefix")
    if errors:
        raise SftpackError("; ".join(errors))


def plugin_main(warn: Warn = _stderr) -> Registration | None:
    """What plugins/sftpack_swift_datasets.py does: register, then check what this run asks for. Raises
    SftpackError (one line) only for a requested dataset that cannot be served."""
    requested = requested_datasets() or []
    try:
        registration, problem = register(warn=warn), None
    except SftpackError as err:
        registration, problem = None, str(err)
    check_requested(requested, registration, problem, warn)
    if registration is not None:
        skipped = f"; skipped {len(registration.skipped)}" if registration.skipped else ""
        warn(f"sftpack: registered {len(registration.served)} datasets for swift from {registration.path}: "
             f"{', '.join(registration.served)}{skipped}")
    return registration
