"""Integration tier: `dvc repro` rebuilds the data stages from a clean copy; push/pull round-trips.

Runs the real DVC CLI on a copy of the repo's tracked files with the tiny profile as params.yaml,
reproducing world -> ingest -> validate (the later stages train models; their own tests cover them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DVC = REPO / ".venv" / "bin" / "dvc"
DATA_STAGES = ("world", "ingest", "validate")


def run(args: list, cwd: Path, env: dict) -> str:
    """Run a command; on failure show its output (the reason a stage broke)."""
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def clean_copy(tmp_path):
    """The tracked files in a fresh git repo, the tiny profile as params.yaml, a tmp remote."""
    if not DVC.exists():
        pytest.skip("dvc is not installed in .venv (pip install -e '.[platform]')")
    repo = tmp_path / "repo"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    (repo / ".venv").symlink_to(REPO / ".venv")  # what scripts/setup.sh would create
    env = {**os.environ, "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site-cache"),
           "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}
    run(["git", "init", "-q"], repo, env)
    run([repo / ".venv/bin/clipsep", "params", "--profile", "tiny", "-o", "params.yaml"], repo, env)
    run([DVC, "remote", "modify", "--local", "local", "url", tmp_path / "remote"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "clean copy"], repo, env)
    return repo, env


def test_repro_is_reproducible_and_push_pull_restores(clean_copy):
    repo, env = clean_copy
    log = run([DVC, "repro", "validate"], repo, env)
    for stage in DATA_STAGES:
        assert f"Running stage '{stage}'" in log
    assert (repo / "data/clips/manifest.csv").is_file()
    assert (repo / "data/validation/report.html").is_file()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(DATA_STAGES) <= set(lock)
    assert lock["validate"]["params"]["params.yaml"]["validate"]["min_clips"] == 4

    again = run([DVC, "repro", "validate"], repo, env)
    assert "Running stage" not in again, again

    run([DVC, "push"], repo, env)
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    run([DVC, "pull", "--with-deps", "validate"], repo, env)  # later stages never ran
    for path in ("data/clips/manifest.csv", "data/validation/result.json",
                 "data/validation/report.html", "data/world/ground_truth.csv"):
        assert (repo / path).is_file(), f"{path} not restored by dvc pull"
    status = run([DVC, "status", "validate"], repo, env)
    assert "up to date" in status, status
