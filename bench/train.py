"""Seconds per training step (batch 8, 256 STFT frames) per preset, fp32 vs bf16 + channels_last.

Runs the real training step (:class:`clipsep.training.loop.Trainer`: STFT + warp + masks, forward,
NIT loss, backward, clipping, Adam, LR schedule) on random audio and queries, so no data or CLIP is
needed. Prints a table and the speed-up of each variant over fp32 measured in the same run.

    .venv/bin/python bench/train.py                       # paper + small presets, 3 timed steps
    .venv/bin/python bench/train.py --presets small --steps 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from clipsep.config import load_params
from clipsep.data.mixing import MixBatch
from clipsep.training.loop import Dist, build_trainer

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> (train.precision, train.channels_last)
    "fp32": ("fp32", False),
    "channels_last": ("fp32", True),
    "bf16": ("bf16", False),
    "bf16+channels_last": ("bf16", True),
}


def time_variant(preset: str, variant: str, batch_size: int, steps: int, device: str) -> float:
    """Median seconds per training step after one warm-up step."""
    precision, channels_last = VARIANTS[variant]
    params = load_params(REPO / "params.yaml", overrides={
        "model.preset": preset, "train.precision": precision, "train.channels_last": channels_last,
        "train.batch_size": batch_size})
    query_dim = 512  # CLIP ViT-B/32, the paper's encoder
    trainer = build_trainer(params, query_dim, device, Dist())
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, params.train.n_mix, params.audio.segment_samples)
    batch = MixBatch(sources=0.1 * torch.randn(shape, generator=generator),
                     queries=torch.randn(batch_size, params.train.n_mix, query_dim,
                                         generator=generator), clip_ids=[])
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        trainer.step(batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["paper", "small"])
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16+channels_last"],
                        choices=list(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}, "
          f"batch {args.batch_size}, 256 frames, median of {args.steps} steps")
    header = f"| preset | {' | '.join(f'{v} s/step' for v in args.variants)} | speed-up vs fp32 |"
    print(header)
    print("|" + "---|" * (len(args.variants) + 2))
    for preset in args.presets:
        seconds = {v: time_variant(preset, v, args.batch_size, args.steps, args.device)
                   for v in args.variants}
        base = seconds.get("fp32")
        ratios = ", ".join(f"{v} {base / s:.2f}x" for v, s in seconds.items()
                           if base and v != "fp32")
        cells = " | ".join(f"{seconds[v]:.3f}" for v in args.variants)
        print(f"| {preset} | {cells} | {ratios or 'n/a'} |", flush=True)


if __name__ == "__main__":
    main()
