"""One lock per shared output: an OS file lock (`fcntl.flock`) that the kernel releases when its holder dies.

    from sftpack.locks import hold
    with hold(out_dir, "sftpack run"):                  # a second `run` on out_dir fails at once, naming us
        ...
    with hold(info_dir, "sftpack prepare", wait=True):  # a second `prepare` waits its turn (read-modify-write)
        ...

The lock file is `<folder>/.sftpack.lock`; it holds the holder's pid, command and start time so that the
one who waits or fails can be told who holds it. The file stays after release (deleting it would race a
waiter that already opened it); a crash leaves it unlocked, so there is never a stale lock to remove by hand.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sftpack.errors import SftpackError

LOCK_NAME = ".sftpack.lock"
WAIT_NOTE_S = 2.0     # say that we wait once the lock has been busy this long


def lock_path(folder: Path) -> Path:
    return Path(folder) / LOCK_NAME


def _holder(handle) -> str:
    try:
        handle.seek(0)
        info = json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        return "another process"
    if not info:
        return "another process"
    return (f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')}, "
            f"since {info.get('started')})")


@contextmanager
def hold(folder: Path, command: str, wait: bool = False, timeout_s: float | None = None) -> Iterator[Path]:
    """Hold the lock on `folder` (created if needed) for the block.

    `wait=False`: fail at once with a SftpackError naming the holder. `wait=True`: block until it is free
    (printing once who holds it), up to `timeout_s` when given.
    """
    from sftpack.provenance import utc_now

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder)
    handle = open(path, "a+", encoding="utf-8")
    try:
        started = time.monotonic()
        noted = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(handle)
                if not wait:
                    raise SftpackError(
                        f"{folder}: in use by {holder}; wait for it to finish or choose another output folder "
                        f"(the lock {path} is released when that process ends)") from None
                waited = time.monotonic() - started
                if timeout_s is not None and waited > timeout_s:
                    raise SftpackError(f"{folder}: still in use by {holder} after {waited:.0f} s") from None
                if not noted and waited >= WAIT_NOTE_S:
                    print(f"sftpack: {folder} is in use by {holder}; waiting", file=sys.stderr)
                    noted = True
                time.sleep(0.05)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                 "started": utc_now()}))
        handle.flush()
        try:
            yield path
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()
