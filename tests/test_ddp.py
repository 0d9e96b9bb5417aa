"""DDP scale-out: the library's training steps under torchrun, 2 CPU processes with gloo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipsep import run_owner, stage_record, tracking
from conftest import REPO, tiny_params_at
from test_mixing import make_clips_dir
from test_training import write_random_clip

TORCHRUN = Path(sys.executable).with_name("torchrun")
STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.mark.skipif(
    not TORCHRUN.exists() and shutil.which("torchrun") is None,
    reason="torchrun is not installed next to this Python",
)
def test_two_gloo_ranks_train_in_lockstep(tmp_path):
    params = tiny_params_at(tmp_path)
    write_random_clip(params)
    make_clips_dir(tmp_path / "data", per_class={"train": 1, "val": 1})  # -> data/clips
    steps = 3
    command = [
        str(TORCHRUN if TORCHRUN.exists() else shutil.which("torchrun")),
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / "tests" / "ddp_worker.py"),
        str(tmp_path),
        str(steps),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["step"] for r in ranks] == [steps, steps]
    assert ranks[0]["model"].keys() == ranks[1]["model"].keys()
    for name, weights in ranks[0]["model"].items():
        if not name.endswith(STATISTICS):  # batch-norm statistics are per rank
            assert torch.equal(weights, ranks[1]["model"][name]), name  # gradients all-reduced
    saved = torch.load(params.path("checkpoints") / "last.pt", weights_only=True)
    assert saved["run"]["step"] == steps
    for name, weights in saved["model"].items():  # rank 0 wrote what it trained
        assert torch.equal(weights, ranks[0]["model"][name]), name


@pytest.mark.skipif(
    not TORCHRUN.exists() and shutil.which("torchrun") is None,
    reason="torchrun is not installed next to this Python",
)
def test_clipsep_train_under_torchrun_reports_and_records_rank_0_alone(tmp_path):
    """The documented `torchrun ... -m clipsep train`: one summary printed, the stage record and
    the MLflow run's stage tag are rank 0's (rank 1 trains, and says nothing of the pass)."""
    params = tiny_params_at(tmp_path)
    write_random_clip(params)
    make_clips_dir(tmp_path / "data", per_class={"train": 1, "val": 1})  # -> data/clips
    command = [
        str(TORCHRUN if TORCHRUN.exists() else shutil.which("torchrun")),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "clipsep",
        "train",
        "--profile",
        "tiny",
        "--set",
        f"paths.root={tmp_path}",
        "--set",
        "train.steps=2",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    summary = json.loads(done.stdout)  # one JSON document: rank 1 prints nothing
    assert summary["steps"] == 2 and "rank" not in summary
    record = stage_record.read_record(params.path("checkpoints"), "train")
    assert record["summary"]["mlflow_run_id"] == summary["mlflow_run_id"]
    run = tracking.client_for(params).get_run(summary["mlflow_run_id"])
    assert run.data.tags[run_owner.STAGE_TAG + "train"] == "done"
