"""A path is a path: the one rule that decides whether a name a user gives is a local path or a hub id.

    from sftpack.paths import local_or_hub
    where = local_or_hub(args.model, "--model")   # Path (exists) or str (a hub id, only when the hubs are on)

A name is **local** when it exists; starts with `.`, `/` or `~`; ends in a file extension data or models use
(`data/train.jsonl`); has more than one `/` (hub ids are `org/name`); or its first part is an existing folder
(`work/tinyy` when `./work` exists). A local name that does not exist is a "no such file or folder" error at
once -- never 30-70 s of hub retries first. Anything else is a hub id, tried only when the hubs are on; offline
(`HF_HUB_OFFLINE=1` & co.) a missing hub-looking name is also "not found", saying the hubs are off.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from sftpack.errors import SftpackError

# Extensions of files that sftpack, LLaMA-Factory, Swift or lm-eval read; a hub id never ends in one of these.
FILE_EXTENSIONS = (
    ".jsonl", ".json", ".parquet", ".arrow", ".csv", ".tsv", ".txt", ".yaml", ".yml", ".py",
    ".safetensors", ".bin", ".pt", ".pth", ".gguf", ".model", ".tiktoken", ".gz", ".tar", ".zip", ".zst",
)
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def looks_local(name: str) -> bool:
    """True when `name` must be a local path (see the module docstring for the rule)."""
    if not name:
        return False
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")) or "\\" in name:
        return True
    if name.lower().endswith(FILE_EXTENSIONS) or name.count("/") > 1 or not HUB_ID_RE.match(name):
        return True
    first = name.split("/", 1)[0]
    return "/" in name and Path(first).is_dir()


def hubs_off(environ: Mapping[str, str] | None = None) -> str | None:
    """'offline: HF_HUB_OFFLINE=1' when the environment turns the hubs off, else None."""
    from sftpack.pipeline.offline import offline_reason

    return offline_reason(environ)


def local_or_hub(name: str, what: str, environ: Mapping[str, str] | None = None) -> Path | str:
    """`name` as an existing local Path, or as a hub id (str) when it is not local and the hubs are on.

    Raises SftpackError naming `what` (e.g. "--model", "pipeline.yaml:4 model.path") when a local-looking name
    does not exist, or when the hubs are off and nothing local has that name.
    """
    path = Path(name).expanduser()
    if path.exists():
        return path
    if looks_local(name):
        raise SftpackError(f"{what} {name}: no such file or folder ({path.resolve()})")
    reason = hubs_off(environ)
    if reason is not None:
        raise SftpackError(f"{what} {name}: no such file or folder ({path.resolve()}), and the hubs are off "
                           f"({reason.removeprefix('offline: ')}) so it is not fetched as a hub id")
    return name
