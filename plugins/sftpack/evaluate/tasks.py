"""The lm-eval tasks of a `sftpack eval` run: names checked against `eval_tasks/`, data checked, before any model loads.

lm-eval itself skips a task file that fails to load with only a log line, and reports a missing data file as a
hub download error. Here an unknown name lists the tasks that exist, and a missing data file names the resolved
path and the command that writes it.

It also generates the chat task from a training config, so that evaluation prompts a model exactly as its training
did (the config's template and system prompt; eval_tasks/gsm8k-local-chat.yaml is generated from
train_configs/qwen_gsm8k.yaml, and a test regenerates and compares it):

    python -m sftpack.evaluate.tasks chat train_configs/qwen_gsm8k.yaml [--tokenizer MODEL_DIR] [--out FILE]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sftpack.errors import SftpackError


def task_manager(include_path: Path | list[Path], metadata: dict[str, Any] | None = None):
    """lm-eval's TaskManager over `include_path` only (one folder or several: a later one's task wins), ~1 s; with
    lm-eval's ~14k built-in tasks it takes ~10 s."""
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in include_path] if isinstance(include_path, (list, tuple)) else str(include_path)
    return TaskManager(include_path=paths, include_defaults=False, metadata=metadata or {})


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


def check_tasks(names: list[str], include_path: Path | list[Path], workdir: Path,
                metadata: dict[str, Any] | None = None, found_builtin: list[str] | None = None) -> dict[str, list[str]]:
    """Check every task name and its data; return {name: its leaf tasks}. `include_path`: one task folder or
    several (a later one's task wins). `found_builtin`, when given, gets the names that are lm-eval's built-in tasks
    (not in the folders), asked for or members of a group of the folders. Raises SftpackError."""
    from lm_eval.tasks._yaml_loader import load_yaml

    given = include_path if isinstance(include_path, (list, tuple)) else [include_path]
    folders = [Path(p).resolve() for p in given]
    for folder in folders:
        if not folder.is_dir():
            raise SftpackError(f"--include-path {folder}: no such folder")
    where = " + ".join(map(str, folders))
    manager = task_manager(folders, metadata)
    found_builtin = [] if found_builtin is None else found_builtin

    def builtin(outside: list[str], what: str, hint: str = "") -> None:
        """`outside` (names not in the folders) must be lm-eval's built-in tasks: recorded, else an error."""
        known = builtin_tasks(outside) if outside else set()
        missing = [name for name in outside if name not in known]
        if missing:
            raise SftpackError(f"{what} {missing}: not in {where} (nor lm-eval's built-in tasks){hint}")
        found_builtin.extend(name for name in outside if name not in found_builtin)

    unknown = [name for name in names if name not in manager.task_index]
    builtin(unknown, "unknown task(s)", f". Tasks in {where}: {available(manager)}" if unknown else "")
    leaves: dict[str, list[str]] = {}
    custom = []
    for name in names:
        if name in unknown:
            leaves[name] = [name]  # a built-in lm-eval task: lm-eval checks (and downloads) its data
            continue
        leaves[name] = leaf_tasks(manager, name)
        # a group of the folders may name tasks that are not in them: lm-eval's built-in ones, or none
        outside = [leaf for leaf in leaves[name] if leaf not in manager.task_index]
        builtin(outside, f"task group {name} ({manager.task_index[name].yaml_path}) names task(s)")
        for leaf in leaves[name]:
            if leaf in outside:
                continue   # a built-in lm-eval task: lm-eval checks (and downloads) its data
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


# ------------------------------------------------------------------------- the chat task, from a training config

CHAT_TASK = "gsm8k-local-chat"
CHAT_TASK_VERSION = "1.1"
_QUESTION, _ANSWER = "QUESTIONSLOT", "ANSWERSLOT"   # plain words: every tokenizer round-trips them
_JINJA = ("{{", "{%", "{#")


def _jinja_literal(text: str) -> str:
    """`text` as literal Jinja (lm-eval renders doc_to_text as a Jinja template)."""
    return "{% raw %}" + text + "{% endraw %}" if any(mark in text for mark in _JINJA) else text


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar (JSON's escapes are YAML's)."""
    return json.dumps(text, ensure_ascii=False)


def chat_format(config: Path, tokenizer: Path | str | None = None) -> dict[str, Any]:
    """The prompt and stop string of a model trained with `config` (an LLaMA-Factory or ms-swift training YAML),
    cut out of one sample its framework encodes as training does (`Adapter.encode_sample`: the config's template
    and system prompt, or the template's default): {framework, template, system, before, after, stop}, the
    question going between `before` and `after`. `tokenizer`: a model folder (default: the config's model)."""
    from sftpack.frameworks import ADAPTERS
    from sftpack.parity import load_yaml

    if not Path(config).is_file():
        raise SftpackError(f"{config}: no such file (resolved: {Path(config).resolve()})")
    cfg = load_yaml(config)
    owners = [fw for fw in ADAPTERS.values() if fw.owns(cfg)]
    if len(owners) != 1:
        raise SftpackError(f"{config}: not a training config of one framework (keys {sorted(cfg)[:8]}...); expected "
                           + " or ".join(f"{fw.name} ({', '.join(fw.config_keys)})" for fw in ADAPTERS.values()))
    fw = owners[0]
    tokenizer = tokenizer or cfg.get(fw.model_key)
    if not tokenizer:
        raise SftpackError(f"{config}: no {fw.model_key}; pass --tokenizer MODEL_DIR")
    try:
        sample = fw.encode_sample(cfg, tokenizer, [{"role": "user", "content": _QUESTION},
                                                   {"role": "assistant", "content": _ANSWER}])
    except (OSError, ValueError, KeyError) as err:  # no such model folder / template (the frameworks' own words)
        raise SftpackError(f"{config}: cannot render template {cfg.get('template')!r} with the tokenizer of "
                           f"{tokenizer}: {err}") from None
    if sample.prompt.count(_QUESTION) != 1 or _ANSWER not in sample.response:
        raise SftpackError(f"{config}: the {cfg.get('template')} template does not render the question once "
                           f"and the answer after it (prompt {sample.prompt!r}, response {sample.response!r})")
    before, after = sample.prompt.split(_QUESTION)
    stop = sample.response.split(_ANSWER, 1)[1].strip()
    return {"framework": fw.name, "template": cfg.get("template"), "system": fw.normalise(cfg)["system"],
            "before": before, "after": after, "stop": stop}


def chat_task_yaml(config: Path, tokenizer: Path | str | None = None, task: str = CHAT_TASK,
                   shown: str | None = None) -> str:
    """The lm-eval task YAML of GSM8K in the chat format `config` trains (see `chat_format`); `shown`: how the
    config is named in the file's header (default: its path)."""
    fmt = chat_format(config, tokenizer)
    shown = shown or str(config)
    system = _quoted(fmt["system"]) if fmt["system"] else "none"
    until = [fmt["stop"]] if fmt["stop"] else []
    lines = [
        f"# {task}: GSM8K, 0-shot, in the chat format of training with {shown}",
        f"# ({fmt['framework']}, template {fmt['template']}; system prompt: {system}).",
        "# The prompt and the stop string are cut from that framework's own encoding of a training sample; lm-eval",
        "# adds the model's eos to the stop strings itself. Filters and metric are upstream gsm8k's: the strict",
        "# match is the `#### N` line the SFT data teaches.",
        "#",
        "# GENERATED, do not edit: another template or system prompt is a change of the training config, then",
        f"#   python -m sftpack.evaluate.tasks chat {shown} --task {task} --out FILE.yaml",
        "# (add --tokenizer MODEL_DIR when the config's model is not on this machine).",
        "# Do not add `--apply_chat_template`: the prompt already is the chat format (it would be wrapped twice).",
        "#",
        "# Run from the folder that holds dataset_info/ (data_files resolve against the current directory):",
        f"#   lm_eval --model hf --model_args pretrained=MODEL[,peft=ADAPTER] --tasks {task} --include_path eval_tasks",
        "include: gsm8k-local.yaml",
        f"task: {task}",
        "num_fewshot: 0",
        f"doc_to_text: {_quoted(_jinja_literal(fmt['before']) + '{{question}}' + _jinja_literal(fmt['after']))}",
        "generation_kwargs:",
        "  until:" + ("" if until else " []"),
        *[f"    - {_quoted(stop)}" for stop in until],
        "  do_sample: false",
        "  temperature: 0.0",
        "  max_gen_toks: 512   # every GSM8K solution fits: at most 1,228 bytes, 466 tokens even with the tiny "
        "model's 3k vocab",
        "metadata:",
        f"  version: {CHAT_TASK_VERSION}        # bump when the prompt changes (eval_tasks/README.md changelog)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import contextlib
    import sys

    parser = argparse.ArgumentParser(prog="python -m sftpack.evaluate.tasks",
                                     description="Generate lm-eval tasks from a training config.")
    sub = parser.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat", help="GSM8K in the chat format a training config trains (its template and "
                                       "system prompt)")
    chat.add_argument("config", type=Path, help="an LLaMA-Factory or ms-swift training YAML")
    chat.add_argument("--tokenizer", help="model folder whose tokenizer renders the template (default: the "
                                          "config's model)")
    chat.add_argument("--task", default=CHAT_TASK, help=f"task name (default: {CHAT_TASK})")
    chat.add_argument("--out", type=Path, help="write the YAML here (default: print it)")
    args = parser.parse_args(argv)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the frameworks log to stdout; stdout is the YAML
            text = chat_task_yaml(args.config, args.tokenizer, args.task)
    except SftpackError as err:
        print(f"sftpack: error: {err}", file=sys.stderr)
        return 1
    if args.out:
        from sftpack.artifacts import write_text

        write_text(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
