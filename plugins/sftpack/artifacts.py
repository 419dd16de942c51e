"""The one way sftpack writes a file a user keeps: atomically (temp file in the same folder, fsync, rename).

    from sftpack.artifacts import write_json, write_text
    write_json(out / "result.json", result)      # NaN/inf -> null, Paths -> str; never half-written
    write_text(out / "report.md", markdown)

A crash or Ctrl-C leaves the old file or the new one, never a half-written one, and no temp file behind.
Files get the mode a plain open() would give (the umask's), not mkstemp's 0600.
"""

from __future__ import annotations

import json
import math
import os
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp creates 0600; give the mode a plain open() would
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
