"""Shared fixtures. Offline/telemetry defaults are applied before any heavy import."""

from __future__ import annotations

import os
from pathlib import Path

from clipsep.env import apply_offline_defaults

apply_offline_defaults()

import pytest  # noqa: E402

from clipsep.config import Params, load_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def tiny_params_at(root: Path, **overrides) -> Params:
    """The tiny profile with every path under ``root`` (plus optional section.key overrides)."""
    values = {"paths.root": str(root), **overrides}
    return load_params(REPO / "params.yaml", profile="tiny", overrides=values)


@pytest.fixture
def tiny_params(tmp_path: Path) -> Params:
    """Tiny-profile params whose outputs all land in this test's tmp dir."""
    return tiny_params_at(tmp_path)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave things a person may want to look at (screenshots, reports)."""
    path = Path(os.environ.get("CLIPSEP_TEST_ARTIFACTS", REPO / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session", autouse=True)
def private_cache_home(tmp_path_factory):
    """Caches (the precision probe's verdict, ONNX exports) go to a tmp dir, not the user's home;
    subprocesses inherit it."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache-home"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous
