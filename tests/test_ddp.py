"""DDP scale-out: the same `clipsep train` entry point under torchrun, 2 CPU processes with gloo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_params_at
from test_mixing import make_clips_dir
from test_training import write_random_clip

from clipsep.training.loop import DDP_CHECK_ENV

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not TORCHRUN.exists() and shutil.which("torchrun") is None,
                    reason="torchrun is not installed next to this Python")
def test_two_gloo_ranks_train_in_lockstep(tmp_path):
    params = tiny_params_at(tmp_path)
    write_random_clip(params)
    make_clips_dir(tmp_path / "data", per_class={"train": 1, "val": 1})  # -> data/clips
    checks = tmp_path / "ddp-checks"
    checks.mkdir()
    steps = 3
    command = [str(TORCHRUN if TORCHRUN.exists() else shutil.which("torchrun")), "--standalone",
               "--nproc_per_node=2", "-m", "clipsep", "train", "--params",
               str(REPO / "params.yaml"), "--profile", "tiny", "--set", f"paths.root={tmp_path}",
               "--set", f"train.steps={steps}", "--set", "train.validate_every=3",
               "--set", "train.checkpoint_every=3", "--set", "train.decay_steps=3"]
    env = {**os.environ, DDP_CHECK_ENV: str(checks), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    reports = [json.loads((checks / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert [r["step"] for r in reports] == [steps, steps]
    assert reports[0]["checksum"] == reports[1]["checksum"]  # gradients were all-reduced
    state = torch.load(params.path("checkpoints") / "last.pt", weights_only=True)
    saved = float(sum(t.double().sum() for k, t in state["model"].items()
                      if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))))
    assert saved == pytest.approx(reports[0]["checksum"], rel=1e-9)
    assert state["run"]["step"] == steps
