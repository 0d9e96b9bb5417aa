"""torchrun worker of tests/test_ddp.py: train with the library's own steps, save this rank's model.

``torchrun --nproc_per_node=2 tests/ddp_worker.py ROOT STEPS`` runs what ``clipsep train`` runs
(join the process group, prepare the data, build the trainer, run the steps; rank 0 writes
``last.pt``), then every rank saves its own weights as ``ROOT/ranks/rank<R>.pt`` so the test can
compare the ranks' models without any test hook in the library.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from clipsep.config import load_params
from clipsep.env import apply_offline_defaults, resolve_device
from clipsep.fileio import torch_save
from clipsep.training import loop

REPO = Path(__file__).resolve().parents[1]


def main(root: str, steps_text: str) -> None:
    apply_offline_defaults()
    steps = int(steps_text)
    params = load_params(
        REPO / "params.yaml",
        profile="tiny",
        overrides={
            "paths.root": root,
            "train.steps": steps,
            "train.validate_every": steps,
            "train.checkpoint_every": steps,
            "train.decay_steps": steps,
        },
    )
    dist, device = loop.init_distributed(resolve_device(params.train.device))
    out_dir = params.path("checkpoints")
    out_dir.mkdir(parents=True, exist_ok=True)
    data = loop.prepare_data(params, params.path("clips"), out_dir, device, dist)
    trainer = loop.build_trainer(params, data.val_batch.queries.shape[-1], device, dist)
    state = loop.RunState()
    key = loop.resume_key(params, dist.world_size, loop.data_identity(params, params.path("clips")))
    loop.run_steps(trainer, data, state, out_dir, dist, key)
    torch_save(
        {"step": state.step, "world_size": dist.world_size, "model": trainer.net.state_dict()},
        Path(root) / "ranks" / f"rank{dist.rank}.pt",
    )
    dist.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
