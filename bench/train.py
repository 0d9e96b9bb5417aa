"""Seconds per training step (batch 8, 256 STFT frames): eager fp32 and each faster path.

Runs the real training step (:class:`clipsep.training.loop.Trainer`: STFT + warp + masks, forward,
NIT loss, backward, clipping, Adam, LR schedule) on random audio and queries, so no data or CLIP is
needed. Every (preset, variant) case is timed interleaved (round-robin), so load and drift on the
machine hit them alike, and each ratio is against an eager fp32 run *in the same run*. Prints the
CPU, its ISA and what ``precision: auto`` resolves to here.

    .venv/bin/python bench/train.py        # small, cpu, cpu-narrow, cpu-conv-upsample; 8 rounds
    .venv/bin/python bench/train.py --presets paper --variants fp32 bf16+channels_last
    .venv/bin/python bench/train.py --variants fp32 compile   # torch.compile (slow first step)

bf16 variants are skipped where the CPU has no native bf16 (emulated: 21x slower; --force-bf16).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from clipsep.config import load_params
from clipsep.env import apply_offline_defaults
from clipsep.data.mixing import MixBatch
from clipsep.precision import cpu_description, resolve_precision
from clipsep.training.loop import Dist, Trainer, build_trainer

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> (train.precision, train.channels_last, torch.compile)
    "fp32": ("fp32", False, False),
    "channels_last": ("fp32", True, False),
    "compile": ("fp32", False, True),
    "bf16": ("bf16", False, False),
    "bf16+channels_last": ("bf16", True, False),
    "fp16": ("fp16", False, False),
    "fp16+channels_last": ("fp16", True, False),
}
QUERY_DIM = 512  # CLIP ViT-B/32, the paper's encoder


def make_trainer(preset: str, variant: str, batch_size: int, device: str) -> Trainer:
    precision, channels_last, compiled = VARIANTS[variant]
    params = load_params(
        REPO / "params.yaml",
        overrides={
            "model.preset": preset,
            "train.precision": precision,
            "train.channels_last": channels_last,
            "train.batch_size": batch_size,
            "train.device": device,
        },
    )
    trainer = build_trainer(params, QUERY_DIM, device, Dist())
    if compiled:
        trainer.model = torch.compile(trainer.model)
    return trainer


def random_batch(trainer: Trainer) -> MixBatch:
    generator = torch.Generator().manual_seed(0)
    p = trainer.params
    shape = (p.train.batch_size, p.train.n_mix, p.audio.segment_samples)
    return MixBatch(
        sources=0.1 * torch.randn(shape, generator=generator),
        queries=torch.randn(p.train.batch_size, p.train.n_mix, QUERY_DIM, generator=generator),
        clip_ids=[],
    )


def timed_step(trainer: Trainer, batch: MixBatch) -> float:
    start = time.perf_counter()
    trainer.step(batch)
    if trainer.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


Case = tuple[str, str]  # (preset, variant)


def bench_all(cases: list[Case], args) -> dict[Case, tuple[float, float, float]]:
    """{(preset, variant): (median s/step, interquartile range s, first-step s)}, every case's
    steps interleaved round-robin: drift on a shared machine then hits every preset alike, which
    matters because the headline ratio is across presets (against the small preset's fp32)."""
    trainers, first = {}, {}
    for preset, variant in cases:
        trainers[preset, variant] = make_trainer(preset, variant, args.batch_size, args.device)
        first[preset, variant] = timed_step(
            trainers[preset, variant], random_batch(trainers[preset, variant])
        )
    batches = {case: random_batch(t) for case, t in trainers.items()}
    times: dict[Case, list[float]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case in cases:
            times[case].append(timed_step(trainers[case], batches[case]))
    summary = {}
    for case in cases:
        q1, _, q3 = statistics.quantiles(times[case], n=4)
        summary[case] = (statistics.median(times[case]), q3 - q1, first[case])
    return summary


def usable(variants: list[str], device: str, force_bf16: bool) -> list[str]:
    from machine import arithmetic_skip_reason

    keep = []
    for variant in variants:
        why = arithmetic_skip_reason(VARIANTS[variant][0], device, force_bf16)
        if why:
            print(f"skipping {variant}: {why}")
        else:
            keep.append(variant)
    return keep


def main() -> None:
    apply_offline_defaults()  # before open_clip, mlflow, gradio are imported
    from machine import separate_capped_cache

    separate_capped_cache()  # a capped run must not load an uncapped run's kernels
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets", nargs="+", default=["small", "cpu", "cpu-narrow", "cpu-conv-upsample"]
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=["fp32", "channels_last", "bf16+channels_last"],
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8, help="timed steps per case")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--force-bf16", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device_name = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else cpu_description()
    )
    auto = resolve_precision("auto", args.device)
    print(
        f"{device_name}; ISA {torch.backends.cpu.get_cpu_capability()}; torch "
        f"{torch.__version__}; {args.threads} threads; precision auto -> {auto.mode} "
        f"({auto.reason})"
    )
    print(
        f"batch {args.batch_size}, 256 frames, median of {args.rounds} steps, every case "
        "interleaved; "
        "ratios against eager fp32 of the first preset and of the same preset"
    )
    variants = usable(args.variants, args.device, args.force_bf16)
    ordered = ["fp32", *[v for v in variants if v != "fp32"]]
    cases = [(preset, variant) for preset in args.presets for variant in ordered]
    results = bench_all(cases, args)
    baseline = results[args.presets[0], "fp32"][0]
    print(
        f"| preset | variant | s/step | IQR s | first step s | vs {args.presets[0]} fp32 | "
        "vs own fp32 |"
    )
    print("|---|---|---|---|---|---|---|")
    for preset, variant in cases:
        seconds, iqr, first = results[preset, variant]
        own = results[preset, "fp32"][0]
        print(
            f"| {preset} | {variant} | {seconds:.3f} | {iqr:.3f} | {first:.1f} | "
            f"{baseline / seconds:.2f}x | {own / seconds:.2f}x |"
        )


if __name__ == "__main__":
    main()
