"""Where sftpack's shipped files are: configs, lm-eval tasks, pipelines, suites, example recipes, the Swift plugin,
the GSM8K sample and the tested version set. The one place that answers "where is asset X".

    from sftpack import assets
    assets.root()                              # the checkout's root, or the wheel's packaged copy (sftpack/_assets)
    assets.path("train_configs/qwen_gsm8k.yaml")
    assets.checkout_root()                     # the checkout sftpack runs from, None when installed from a wheel
    assets.relative("config.yaml", folder)     # a path written in a YAML: against the YAML's folder

In a checkout (editable install or PYTHONPATH=plugins) the files are read where they are in the repository; a wheel
carries a copy of the same tree under `sftpack/_assets/` (setup.py's build hook copies SHIPPED there at build time),
found through importlib.resources. `sftpack init DIR` copies the tree into a working folder with the checkout's
layout, so every command in the READMEs runs there as written; `sftpack cp NAME DEST` copies one; `sftpack ls`
lists them. Outputs never go here: they default to the current folder (`./runs`, `./dataset_info`).
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

# What ships, as paths relative to the checkout's root (and to an init'ed folder). setup.py reads this tuple (by
# parsing this file, without importing it) to copy each into the wheel; keep it a literal.
SHIPPED = (
    "train_configs",
    "eval_tasks",
    "benchmarks/pipelines",
    "benchmarks/suites",
    "benchmarks/sweeps",
    "dataset_info/README.md",
    "dataset_info/recipes",
    "plugins/sftpack_swift_datasets.py",
    "constraints.txt",
)
PACKAGED = "_assets"              # the folder inside the package that holds SHIPPED in a wheel
SAMPLES = "data"                  # package data already (sftpack/data/<family>_sample/): shipped as data/...
IGNORED = ("__pycache__", "*.pyc", ".sftpack.lock")   # never copied


def package_dir() -> Path:
    """The installed `sftpack` package as a folder (importlib.resources; a wheel installs unzipped)."""
    found = importlib.resources.files("sftpack")
    if not isinstance(found, Path):
        from sftpack.errors import SftpackError

        raise SftpackError(f"sftpack is imported from {found}, not a folder: install it with pip (unzipped)")
    return found


@functools.lru_cache(maxsize=1)
def checkout_root() -> Path | None:
    """The root of the sftpack checkout this package runs from (`ROOT/plugins/sftpack`, ROOT/pyproject.toml naming
    sftpack, ROOT/train_configs/); None when sftpack was installed from a wheel."""
    package = package_dir().resolve()
    root = package.parent.parent
    if package.parent.name != "plugins" or not (root / "train_configs").is_dir():
        return None
    try:
        own = 'name = "sftpack"' in (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if own else None


def root() -> Path:
    """The folder that holds SHIPPED: the checkout's root, else the wheel's packaged copy."""
    return checkout_root() or package_dir() / PACKAGED


def source() -> str:
    """Where the assets come from, in words: 'checkout /repo' or 'installed package /site-packages/...'."""
    checkout = checkout_root()
    return f"checkout {checkout}" if checkout else f"installed package {package_dir() / PACKAGED}"


def path(name: str) -> Path:
    """The shipped file or folder `name` (a path relative to the root, e.g. train_configs/qwen_gsm8k.yaml;
    data/gsm8k_sample is the package's sample data)."""
    if name == SAMPLES or name.startswith(SAMPLES + "/"):
        return package_dir() / name
    return root() / name


def sample_names() -> list[str]:
    """data/<family>_sample for each sample the package ships."""
    folder = package_dir() / SAMPLES
    return sorted(f"{SAMPLES}/{p.name}" for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def tops() -> list[str]:
    """Every top-level asset: SHIPPED plus the data samples."""
    return list(SHIPPED) + sample_names()


def files() -> list[str]:
    """Every shipped file, relative to the root (the data samples as data/...), sorted."""
    import fnmatch

    found = []
    for top in tops():
        where = path(top)
        if where.is_file():
            found.append(top)
        elif where.is_dir():
            for item in sorted(where.rglob("*")):
                rel = item.relative_to(where)
                if item.is_file() and not any(fnmatch.fnmatch(part, pattern) for part in rel.parts
                                              for pattern in IGNORED):
                    found.append(f"{top}/{rel.as_posix()}")
    return sorted(found)


def relative(value: str | Path, folder: Path | None) -> tuple[Path, list[Path]]:
    """A relative path written in a YAML file, resolved against that file's `folder`: (the path, every place looked).

    Fallbacks, used only when nothing is at FOLDER/value, for files that still say what they meant before paths
    were relative to their YAML: ROOT/value (older files named paths from the repository root: `config:
    train_configs/qwen_gsm8k.yaml`), and ROOT/value without its leading `../` parts (a shipped pipeline copied
    alone elsewhere: `../../train_configs/x.yaml` is the shipped train_configs/x.yaml). ROOT is the assets root
    (sftpack.assets.root()). `folder` None (a spec built in code) resolves against the root. Absolute paths and
    `~` are kept."""
    given = Path(value).expanduser()
    if given.is_absolute():
        return given, [given]
    parts = given.parts
    while parts and parts[0] == "..":
        parts = parts[1:]
    places = ([Path(folder) / given] if folder is not None else []) + [root().joinpath(*parts)]
    places = list(dict.fromkeys(place.resolve() for place in places))
    found = next((place for place in places if place.exists()), places[0])
    return found, places


def places_text(places: list[Path]) -> str:
    """Every place looked, for an error: 'A' or 'A (nor B)'."""
    return str(places[0]) + "".join(f" (nor {place})" for place in places[1:])
