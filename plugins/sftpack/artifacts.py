"""The one way sftpack writes a file a user keeps: atomically (temp file in the same folder, fsync, rename).

    from sftpack.artifacts import write_json, write_text
    write_json(out / "result.json", result)      # NaN/inf -> null, Paths -> str; never half-written
    write_text(out / "report.md", markdown)

A crash or Ctrl-C leaves the old file or the new one, never a half-written one, and no temp file behind.
Temp files and work folders carry the writer's pid (`.<name>.<pid>.<random>.tmp`, `.<kind>-<pid>-<random>/`), so
that after a SIGKILL the next writer into the folder removes them (`clean_stale_temps`).
Files get the mode a plain open() would give (the umask's), not mkstemp's 0600.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any


def file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file in the same folder and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(path)   # a full disk names no file itself; the one-line error needs it
        raise


TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp$")
WORKDIR_RE = re.compile(r"^\.(?:recipe|build)-(?P<pid>\d+)-[a-z0-9_]{8}$")


def temp_file(final: Path) -> tuple[int, Path]:
    """An open temp file beside `final`, named `.<name>.<pid>.<random>.tmp`, with the mode open() would give."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent)
    os.fchmod(fd, file_mode())
    return fd, Path(tmp)


def temp_dir(folder: Path, kind: str = "recipe") -> Path:
    """A work folder `.<kind>-<pid>-<random>` inside `folder`."""
    return Path(tempfile.mkdtemp(prefix=f".{kind}-{os.getpid()}-", dir=folder))


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs here (a zombie counts as gone)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def clean_stale_temps(folder: Path, files: bool = True) -> list[str]:
    """Remove the temp files and work folders in `folder` that a process which is gone left behind (killed, or
    out of memory); return notes saying what was removed and what could not be.
    `files=False`: work folders only (a folder that is not sftpack's, e.g. the parent of a tiny-model)."""
    notes: list[str] = []
    if not Path(folder).is_dir():
        return notes
    removed, left = [], []
    for path in sorted(Path(folder).iterdir()):
        match = (files and TEMP_RE.match(path.name)) or WORKDIR_RE.match(path.name)
        if match:
            if pid_alive(int(match["pid"])):
                continue
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path.name)
            except OSError as err:
                left.append(f"{path.name} ({err.strerror})")
    if removed:
        notes.append(f"{folder}: removed {len(removed)} temp file(s) of an earlier run that ended without cleaning "
                     f"up: {', '.join(removed[:5])}{' ...' if len(removed) > 5 else ''}")
    if left:
        notes.append(f"{folder}: temp file(s) left by an earlier run could not be removed: "
                     f"{', '.join(left[:5])}{' ...' if len(left) > 5 else ''}; delete them when nothing writes here")
    return notes


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (ownership manifests, stage keys)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, Paths -> str, tuples -> lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: Any, ensure_ascii: bool = True) -> None:
    """`data` as indented JSON (NaN/inf refused: written as null), atomically."""
    write_text(path, json.dumps(clean(data), indent=2, allow_nan=False, ensure_ascii=ensure_ascii) + "\n")
