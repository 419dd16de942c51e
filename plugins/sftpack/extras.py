"""Optional packages and the pip extra that installs each: a missing one is one line naming the extra.

    from sftpack.extras import require
    require("lm_eval", what="sftpack eval")   # SftpackError: sftpack eval needs lm-eval (not installed): pip ...

The core (`prepare`, `recipe`, `init`, `cp`, `ls`, `--version`) needs only the dependencies in pyproject.toml's
`dependencies`; everything else is an extra (`pip install 'sftpack[frameworks,eval]' -c constraints.txt`, the
tested pins; `sftpack cp constraints.txt .` writes that file). The commands call `require` before any work, and
`sftpack.cli.main` turns any other ModuleNotFoundError of a package listed here into the same one line.
"""

from __future__ import annotations

import importlib.util

from sftpack.errors import SftpackError

# import name -> (distribution, extra). The extras are declared in pyproject.toml.
OPTIONAL: dict[str, tuple[str, str]] = {
    "torch": ("torch", "frameworks"),
    "transformers": ("transformers", "frameworks"),
    "datasets": ("datasets", "frameworks"),
    "llamafactory": ("llamafactory", "frameworks"),
    "swift": ("ms-swift", "frameworks"),
    "peft": ("peft", "frameworks"),
    "accelerate": ("accelerate", "frameworks"),
    "modelscope": ("modelscope", "frameworks"),
    "huggingface_hub": ("huggingface_hub", "frameworks"),
    "psutil": ("psutil", "frameworks"),
    "matplotlib": ("matplotlib", "frameworks"),
    "tiktoken": ("tiktoken", "frameworks"),
    "lm_eval": ("lm-eval", "eval"),
    "scipy": ("scipy", "eval"),
    "pynvml": ("nvidia-ml-py", "gpu"),
    "deepspeed": ("deepspeed", "deepspeed"),
    "pytest": ("pytest", "test"),
}
# console scripts the commands start -> the import that provides them
EXECUTABLES = {"llamafactory-cli": "llamafactory", "swift": "swift", "lm_eval": "lm_eval", "accelerate": "accelerate"}
TRAINING = ("torch", "transformers", "llamafactory", "swift", "psutil")   # what `run` and `bench` start


def install_hint(extra: str) -> str:
    return f"pip install 'sftpack[{extra}]' -c constraints.txt (the tested pins; `sftpack cp constraints.txt .`)"


def missing_line(module: str, what: str) -> str:
    """`WHAT needs DIST (not installed): pip install 'sftpack[EXTRA]' ...` for the import name `module`."""
    top = module.split(".")[0]
    dist, extra = OPTIONAL.get(top, (top, None))
    how = install_hint(extra) if extra else f"pip install {dist}"
    return f"{what} needs {dist} (not installed): {how}"


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):   # a parent package missing, or a half-imported module
        return False


def require(*modules: str, what: str) -> None:
    """Raise SftpackError (one line, naming the extra) for the first of `modules` that is not installed. Nothing
    is imported: find_spec only looks."""
    for module in modules:
        if not installed(module):
            raise SftpackError(missing_line(module, what))


def from_import_error(err: ImportError, what: str = "this command") -> str | None:
    """The one line for a ModuleNotFoundError of an optional package, else None (a real bug stays a traceback)."""
    name = getattr(err, "name", None) or ""
    if not isinstance(err, ModuleNotFoundError) or name.split(".")[0] not in OPTIONAL:
        return None
    return missing_line(name, what)


def executable_hint(name: str) -> str:
    """What installs the console script `name` (for "'lm_eval' not found")."""
    module = EXECUTABLES.get(name)
    if module is None or module not in OPTIONAL:
        return "install the package that provides it"
    return install_hint(OPTIONAL[module][1]) + "; in a checkout: make setup"
