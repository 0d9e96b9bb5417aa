"""Shared fixtures. Offline/telemetry defaults are applied before any heavy import."""

from __future__ import annotations

import os
import tempfile
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


@pytest.fixture(scope="session", autouse=True)
def private_temp_dir(tmp_path_factory) -> Path:
    """The temp folder ($TMPDIR) is one under pytest's basetemp, for this process (tempfile's
    cached answer reset) and the subprocesses (they inherit os.environ): the resolved-model and
    text-query caches ($TMPDIR/clipsep-models) of the tests' own stores stay out of the user's
    (a suite left 68 folders, 1.9 GB, there), and go with pytest's old basetemps."""
    path = tmp_path_factory.mktemp("tmp")
    previous, previous_dir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = str(path)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    assert Path(tempfile.gettempdir()) == path
    yield path
    tempfile.tempdir = previous_dir
    if previous is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = previous
