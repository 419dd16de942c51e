"""The package imports and its CLI starts without any framework, torch or CUDA."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "datasets", "llamafactory", "swift", "lm_eval", "pyarrow")


def test_import_and_parser_load_no_framework():
    code = ("import sys, sftpack, sftpack.cli; sftpack.cli.build_parser(); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_console_script_help():
    from sftpack.frameworks import executable

    result = subprocess.run([executable("sftpack"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("tiny-model", "prepare", "eval", "recipe", "run"):
        assert command in result.stdout
