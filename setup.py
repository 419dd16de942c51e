"""Build hook: the wheel (and the sdist) carry the shipped files that live outside the package in the checkout.

Everything else is in pyproject.toml. `sftpack.assets.SHIPPED` lists the files and folders (configs, lm-eval tasks,
pipelines, suites, example recipes, the Swift plugin, constraints.txt); this hook copies them into the built package
as `sftpack/_assets/<same path>`, where sftpack.assets finds them through importlib.resources when sftpack is not
run from its checkout. The checkout itself is not changed: its folders stay where the README's commands expect them.

    pip install .            # non-editable: the wheel with sftpack/_assets/
    pip wheel --no-deps .    # the wheel alone (tests/test_wheel.py builds and installs one)
    pip install -e .         # editable: no copy, sftpack reads the checkout's own folders
"""

import ast
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
ASSETS_MODULE = ROOT / "plugins" / "sftpack" / "assets.py"


def _module_constant(name: str):
    """A literal assigned at the top of sftpack/assets.py, read without importing sftpack."""
    tree = ast.parse(ASSETS_MODULE.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"{ASSETS_MODULE} defines no {name}")


SHIPPED = _module_constant("SHIPPED")
PACKAGED = _module_constant("PACKAGED")
IGNORED = _module_constant("IGNORED")


def _copy(source: Path, target: Path) -> None:
    if not source.exists():
        raise RuntimeError(f"{source}: listed in sftpack.assets.SHIPPED but missing; cannot build")
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*IGNORED))
    else:
        shutil.copy2(source, target)


class BuildPyWithAssets(build_py):
    """build_py, then SHIPPED copied into <build_lib>/sftpack/_assets/ (not for an editable install)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return   # an editable install reads the checkout's own folders (sftpack.assets.checkout_root)
        target = Path(self.build_lib) / "sftpack" / PACKAGED
        if target.exists():
            shutil.rmtree(target)   # no file of an earlier build survives into this one
        for name in SHIPPED:
            _copy(ROOT / name, target / name)


class SdistWithAssets(sdist):
    """sdist, with SHIPPED at their checkout paths (so a wheel built from the sdist has them too)."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        for name in SHIPPED:
            _copy(ROOT / name, Path(base_dir) / name)


setup(cmdclass={"build_py": BuildPyWithAssets, "sdist": SdistWithAssets})
