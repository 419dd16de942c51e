"""Shared fixtures: the offline environment, the tiny model, prepared GSM8K, the reference data.

Every test runs offline with its caches in a temp folder. `tiny_model` is built once per session (~6 s).
Run: `make test` (all), `make test PYTEST_ARGS="-m 'not integration'"` (no framework CLIs, ~1 min).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _offline(tmp_path_factory):
    """Hubs off and caches inside a session temp folder, for in-process code and every subprocess."""
    from sftpack.frameworks import offline_env

    cache = tmp_path_factory.mktemp("cache")
    env = offline_env(cache, base={})
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield cache
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (CI and every checkout have ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from sftpack import tiny_model as builder

    return builder.build(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory, shared_data) -> Path:
    """A folder holding dataset_info/ with the full GSM8K train/test prepared: the frameworks' cwd."""
    from sftpack.convert import prepare
    from sftpack.converters import CONVERTERS

    root = tmp_path_factory.mktemp("work")
    prepare(CONVERTERS["gsm8k"], str(shared_data / "gsm8k"), root / "dataset_info", progress=False)
    return root


@pytest.fixture(scope="session")
def env(_offline) -> dict[str, str]:
    """The environment for framework subprocesses."""
    return dict(os.environ)
