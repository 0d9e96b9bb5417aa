"""Which ONNX Runtime int8 configuration runs the separator fastest, and how far its masks move.

For one preset (default: paper, random-init weights, as speed does not depend on them; see
``bench/separate.py``), the network is exported once, prepared once (``quant_pre_process``),
then quantised with each variant of ``quantize_static``'s settings below (each a change to the
shipped :func:`clipsep.model.quantize.static_options`, always with the shipped fp32 nodes) and
timed against the eager torch forward and ONNX Runtime fp32 on one 4.1-s segment
(``[1, 1, 256, 256]`` + one query): all sessions in one process, one round runs every variant
once in a shuffled order, median and interquartile range per variant over the rounds, ratios
against eager and against ONNX Runtime fp32 of the same run. Every ONNX Runtime session uses
``--threads`` intra-op threads (torch too) and ``ORT_ENABLE_ALL`` unless the variant says
otherwise; pin the process (``taskset``) on a shared machine.

With ``--checkpoint`` (a trained checkpoint) and ``--clips`` (its world's ingested clips), each
variant is also quantised from that checkpoint, calibrated as ``separate.engine: onnx-int8``
does (:func:`clipsep.model.quantize.calibration_feeds`), and its masks (after the sigmoid) are
compared with ONNX Runtime fp32's on ``--mask-inputs`` other mixtures of the train clips (a
different seed from the calibration's): mean, 99th percentile and max |difference|.

    taskset -c 1 .venv/bin/python bench/int8_variants.py --threads 1 --rounds 15 \\
        --checkpoint models/clipsep/best.pt --clips data/clips
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

# name -> (changes to static_options, extra_options, ONNX Runtime graph optimisation level)
VARIANTS = {
    "shipped": ({}, {}, "all"),
    "shipped-again": ({}, {}, "all"),  # a second session of the same file: the noise floor
    "8bit-weights": ({"reduce_range": False}, {}, "all"),
    "per-tensor-weights": ({"per_channel": False}, {}, "all"),
    "int8-activations": ({"activation_type": "QInt8"}, {"ActivationSymmetric": True}, "all"),
    "uint8-weights": ({"weight_type": "QUInt8"}, {}, "all"),
    "asymmetric-weights": ({}, {"WeightSymmetric": False}, "all"),
    "qoperator": ({"quant_format": "QOperator"}, {}, "all"),  # Resize runs on uint8 there
    "qoperator-resize-fp32": ({"quant_format": "QOperator", "no_resize": True}, {}, "all"),
    "keep-removable-activations": ({}, {"QDQKeepRemovableActivations": True}, "all"),
    "ort-extended": ({}, {}, "extended"),  # no NHWC layout transformation
}
MASK_SEED = 7  # mask-error inputs: mixtures drawn with another seed than the calibration's


def quantise(prepared: Path, out: Path, feeds: list, name: str) -> Path:
    """``out``: ``prepared`` quantised with variant ``name`` (the shipped fp32 nodes kept)."""
    import onnx
    from onnxruntime import quantization

    from clipsep.model.quantize import CalibrationReader, fp32_nodes, static_options

    changes, extra, _ = VARIANTS[name]
    options = static_options(quantization)
    for key, value in changes.items():
        if key == "quant_format":
            options[key] = getattr(quantization.QuantFormat, value)
        elif key.endswith("_type"):
            options[key] = getattr(quantization.QuantType, value)
        elif key != "no_resize":
            options[key] = value
    if changes.get("no_resize"):
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        options["op_types_to_quantize"] = sorted(
            (set(QLinearOpsRegistry) | set(QDQRegistry)) - {"Resize"}
        )
    quantization.quantize_static(
        str(prepared),
        str(out),
        CalibrationReader(feeds),
        nodes_to_exclude=fp32_nodes(onnx.load(str(prepared))),
        extra_options=extra,
        **options,
    )
    return out


def export_and_prepare(checkpoint: Path, work: Path) -> tuple[Path, Path]:
    """(fp32 export folder, its prepared ONNX file)."""
    from clipsep.model.export import ONNX_FILE, export_onnx
    from clipsep.model.quantize import prepare

    fp32 = export_onnx(checkpoint, work / "fp32")
    return fp32, prepare(fp32 / ONNX_FILE, work / "prepared.onnx")


def speed(preset: str, names: list[str], work: Path, args) -> None:
    import torch

    from clipsep.model.export import cpu_session, read_export
    from clipsep.model.factory import load_checkpoint
    from separate import bench_inputs, make_checkpoint

    checkpoint = make_checkpoint(preset, work)
    fp32, prepared = export_and_prepare(checkpoint, work)
    dim = read_export(fp32).net_cfg.query_dim
    calibration = [
        {k: t.numpy() for k, t in zip(("mix_mag", "queries"), bench_inputs(dim, seed))}
        for seed in range(1, 9)
    ]
    network, _ = load_checkpoint(checkpoint, "cpu")
    mag, queries = bench_inputs(dim)
    feeds = {"mix_mag": mag.numpy(), "queries": queries.numpy()}
    runs = {"eager torch fp32": lambda: network(mag, queries, with_noise=False).mask_logits}
    sessions = {"ONNX Runtime fp32": cpu_session(fp32 / "separator.onnx", args.threads)}
    for index, name in enumerate(names):
        started = time.perf_counter()
        path = quantise(prepared, work / f"variant-{index}.onnx", calibration, name)
        print(f"  quantised {name!r} in {time.perf_counter() - started:.1f} s", flush=True)
        sessions[name] = cpu_session(path, args.threads, VARIANTS[name][2])
    for name, sess in sessions.items():
        runs[name] = lambda sess=sess: sess.run(None, feeds)
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    shuffler = random.Random(0)
    with torch.no_grad():
        for run in runs.values():  # warm-up
            run()
        for _ in range(args.rounds):
            shuffler.shuffle(order)
            for name in order:
                started = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in times.items()}
    eager, ort_fp32 = median["eager torch fp32"], median["ONNX Runtime fp32"]
    print(
        f"\n{preset} preset, forward of one 4.1-s segment, {args.threads} thread(s), median of "
        f"{args.rounds} rounds (order shuffled per round)"
    )
    print("| variant | ms | IQR ms | vs eager | vs ONNX Runtime fp32 |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        q1, q3 = np.quantile(values, [0.25, 0.75])
        print(
            f"| {name} | {1000 * median[name]:.1f} | {1000 * (q3 - q1):.1f} | "
            f"{eager / median[name]:.2f}x | {ort_fp32 / median[name]:.2f}x |"
        )


def mask_error(names: list[str], work: Path, args) -> None:
    from clipsep.model.export import cpu_session, read_export
    from clipsep.model.query import QueryEncoder
    from clipsep.model.quantize import calibration_feeds

    fp32, prepared = export_and_prepare(Path(args.checkpoint), work)
    info = read_export(fp32)
    encode = QueryEncoder.from_reference(info.query, "cpu").encode_images
    calibration = calibration_feeds(args.clips, info.audio_cfg, encode)
    inputs = calibration_feeds(
        args.clips, info.audio_cfg, encode, count=args.mask_inputs, seed=MASK_SEED
    )

    def masks(sess) -> np.ndarray:
        return np.stack([1 / (1 + np.exp(-sess.run(None, feed)[0])) for feed in inputs])

    reference = masks(cpu_session(fp32 / "separator.onnx", args.threads))
    print(
        f"\nmasks of {args.checkpoint} vs ONNX Runtime fp32 on {args.mask_inputs} mixtures of "
        f"the train clips (seed {MASK_SEED}), |difference| after the sigmoid"
    )
    print("| variant | mean | p99 | max |")
    print("|---|---|---|---|")
    for index, name in enumerate(names):
        path = quantise(prepared, work / f"trained-{index}.onnx", calibration, name)
        diff = np.abs(masks(cpu_session(path, args.threads, VARIANTS[name][2])) - reference)
        print(
            f"| {name} | {diff.mean():.4f} | {np.quantile(diff, 0.99):.4f} | {diff.max():.3f} |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    from clipsep.env import apply_offline_defaults

    apply_offline_defaults()  # before open_clip, mlflow, gradio are imported
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", default=None, help="trained checkpoint: mask error too")
    parser.add_argument("--clips", default=None, help="its clips folder (calibration)")
    parser.add_argument("--mask-inputs", type=int, default=8)
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    if args.checkpoint and not args.clips:
        parser.error("--checkpoint needs --clips (the calibration clips)")
    import torch

    from separate import machine_line

    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))
    with tempfile.TemporaryDirectory(prefix="clipsep-int8-") as tmp:
        if not args.skip_speed:
            speed(args.preset, names, Path(tmp), args)
        if args.checkpoint:
            mask_error(names, Path(tmp), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
