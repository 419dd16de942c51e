"""The lm-eval tasks of a `sftpack eval` run: names checked against `eval_tasks/`, data checked, before any model loads.

lm-eval itself skips a task file that fails to load with only a log line, and reports a missing data file as a
hub download error. Here an unknown name lists the tasks that exist, and a missing data file names the resolved
path and the command that writes it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sftpack.errors import SftpackError


def task_manager(include_path: Path, metadata: dict[str, Any] | None = None):
    """lm-eval's TaskManager over `include_path` only (~1 s; with lm-eval's ~14k built-in tasks it takes ~10 s)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(include_path), include_defaults=False, metadata=metadata or {})


def builtin_tasks(names: list[str]) -> set[str]:
    """Which of `names` are lm-eval built-in tasks, groups or tags (a text search, then only matching files parsed)."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    found: set[str] = set()
    for path in sorted(Path(lm_eval.tasks.__file__).parent.rglob("*.yaml")):
        text = path.read_text(encoding="utf-8", errors="replace")
        candidates = [name for name in names if name not in found and name in text]
        if not candidates:
            continue
        try:
            cfg = load_yaml(path, resolve_func=False, recursive=False)
        except Exception:  # noqa: BLE001 - lm-eval skips such files too
            continue
        tags = cfg.get("tag") or []
        declared = {value for value in (cfg.get("task"), cfg.get("group")) if isinstance(value, str)}
        declared.update([tags] if isinstance(tags, str) else tags)
        found.update(name for name in candidates if name in declared)
    return found


def _members(entry) -> list[str]:
    names = []
    for item in (entry.cfg or {}).get("task") or []:
        name = item if isinstance(item, str) else item.get("task") or item.get("group")
        if name:
            names.append(name)
    return names


def leaf_tasks(manager, name: str) -> list[str]:
    """`name` itself for a task; every task under it for a group."""
    from lm_eval.tasks._index import Kind

    entry = manager.task_index[name]
    if entry.kind != Kind.GROUP:
        return [name]
    leaves = []
    for member in _members(entry):
        leaves += leaf_tasks(manager, member) if member in manager.task_index else [member]
    return leaves


def available(manager) -> str:
    """The tasks of an index, groups with their member count instead of every member."""
    grouped: set[str] = set()
    parts = []
    for group in manager.all_groups:
        members = _members(manager.task_index[group])
        grouped.update(members)
        parts.append(f"{group} (group of {len(members)} tasks, e.g. {members[0]})" if members else group)
    parts = [t for t in manager.all_subtasks if t not in grouped] + parts
    return ", ".join(parts)


def _data_files(cfg: dict[str, Any]) -> list[str]:
    files = ((cfg.get("dataset_kwargs") or {}).get("data_files")) or []
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        out = []
        for value in files.values():
            out += [value] if isinstance(value, str) else list(value)
        return out
    return list(files)


def _prepare_hint(relative: str, workdir: Path) -> str:
    from sftpack.converters import CONVERTERS

    rel = Path(relative)
    family = rel.stem.rsplit("_", 1)[0]
    if family in CONVERTERS:
        hub = (CONVERTERS[family].hub_ids or ("SOURCE",))[0]
        return (f"create it with `sftpack prepare {family} --source {hub} --out {workdir / rel.parent}` "
                "(--source may be a local copy), or pass --workdir the folder that holds "
                f"{rel.parent}/")
    return f"create it, or pass --workdir the folder that {relative} is relative to"


def check_tasks(names: list[str], include_path: Path, workdir: Path,
                metadata: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """Check every task name and its data; return {name: its leaf tasks}. Raises SftpackError."""
    from lm_eval.tasks._yaml_loader import load_yaml

    include_path = Path(include_path).resolve()
    if not include_path.is_dir():
        raise SftpackError(f"--include-path {include_path}: no such folder")
    manager = task_manager(include_path, metadata)
    unknown = [name for name in names if name not in manager.task_index]
    if unknown:
        builtin = builtin_tasks(unknown)
        missing = [name for name in unknown if name not in builtin]
        if missing:
            raise SftpackError(f"unknown task(s) {missing}: not in {include_path} (nor lm-eval's built-in tasks). "
                               f"Tasks in {include_path}: {available(manager)}")
    leaves: dict[str, list[str]] = {}
    custom = []
    for name in names:
        if name in unknown:
            leaves[name] = [name]  # a built-in lm-eval task: lm-eval checks (and downloads) its data
            continue
        leaves[name] = leaf_tasks(manager, name)
        for leaf in leaves[name]:
            cfg = load_yaml(manager.task_index[leaf].yaml_path, resolve_func=False)
            for relative in _data_files(cfg):
                path = Path(relative) if Path(relative).is_absolute() else workdir / relative
                if not path.exists():
                    raise SftpackError(f"task {leaf} reads {relative}, resolved against the folder lm-eval runs in "
                                       f"(--workdir {workdir}): {path.resolve()} does not exist; "
                                       + _prepare_hint(relative, workdir))
            if cfg.get("custom_dataset"):
                custom.append(leaf)
    if custom:  # data read by the task's own Python loader (cmmlu-local): build the tasks to run its checks
        task_logger = logging.getLogger("lm_eval.api.task")
        level = task_logger.level
        task_logger.setLevel(logging.ERROR)  # lm-eval warns "Custom kwargs can be passed ..." once per task
        try:
            manager.load(sorted(set(custom)))
        except (FileNotFoundError, ValueError) as err:
            raise SftpackError(str(err)) from None
        finally:
            task_logger.setLevel(level)
    return leaves
