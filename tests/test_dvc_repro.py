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


def run(args: list, cwd: Path, env: dict, ok: bool = True) -> str:
    """Run a command, expecting success (ok) or failure; on surprise show its output."""
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert (done.returncode == 0) == ok, (
        f"{args} exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout + done.stderr


@pytest.fixture
def clean_copy(tmp_path):
    """The tracked files in a fresh git repo, the tiny profile as params.yaml, a tmp remote."""
    if not DVC.exists():
        pytest.skip("dvc is not installed in .venv (pip install -e '.[platform]')")
    repo = tmp_path / "repo"
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    (repo / ".venv").symlink_to(REPO / ".venv")  # what scripts/setup.sh would create
    env = {
        **os.environ,
        "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site-cache"),
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }
    run(["git", "init", "-q"], repo, env)
    # root "." as dvc.yaml's ${paths.*} are relative to the repository (the profile has its own)
    params = [
        "params",
        "--profile",
        "tiny",
        "--set",
        "paths.root=.",
        "-o",
        "params.yaml",
        "--force",
    ]
    run([repo / ".venv/bin/clipsep", *params], repo, env)
    run([DVC, "remote", "modify", "--local", "local", "url", tmp_path / "remote"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "clean copy"], repo, env)
    return repo, env


def test_repro_push_pull_gate_and_experiments(clean_copy):
    """One scenario (rendering the world is the slow part, so it happens once)."""
    repo, env = clean_copy
    check_repro_then_noop(repo, env)
    run(["git", "commit", "-q", "-m", "pipeline ran"], repo, env)  # autostage staged dvc.lock
    check_push_then_pull(repo, env)
    check_failing_gate_stops_repro(repo, env)
    run(["git", "checkout", "--", "params.yaml"], repo, env)
    run([DVC, "exp", "run", "-S", "validate.min_clips=5", "-n", "five", "validate"], repo, env)
    assert "five" in run([DVC, "exp", "show", "--no-pager", "--md"], repo, env)


def check_repro_then_noop(repo: Path, env: dict) -> None:
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


def check_push_then_pull(repo: Path, env: dict) -> None:
    run([DVC, "push"], repo, env)
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    run([DVC, "pull", "--with-deps", "validate"], repo, env)  # later stages never ran
    for path in (
        "data/clips/manifest.csv",
        "data/validation/result.json",
        "data/validation/report.html",
        "data/world/ground_truth.csv",
    ):
        assert (repo / path).is_file(), f"{path} not restored by dvc pull"
    status = run([DVC, "status", "validate"], repo, env)
    assert "up to date" in status, status


def check_failing_gate_stops_repro(repo: Path, env: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["validate"]["min_clips"] = 1000
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = run([DVC, "repro", "validate"], repo, env, ok=False)
    assert "expect_table_row_count_to_be_between" in failed and "at least 1000 clips" in failed
    assert "Running stage 'ingest'" not in failed  # only the stage whose params changed reran
    assert "FAILED" in (repo / "data/validation/report.html").read_text()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert lock["validate"]["params"]["params.yaml"]["validate"]["min_clips"] == 4
