"""Text-query SDR of a checkpoint run by ONNX Runtime in fp32 and in int8, paired on the test
protocol's mixtures (clipsep.evaluation.evaluate's mixtures, queries and metrics backend).

    .venv/bin/python bench/int8_sdr.py models/clipsep/best.pt --root . --out /tmp/int8-sdr

Exports the checkpoint, quantises it (calibrated on ``paths.clips``' train clips, as
``separate.engine: onnx-int8``) and prints the running means every 10 mixtures, then a summary
line (means, mean paired difference, largest difference). Only the text estimate is scored (the
full ``clipsep evaluate --set separate.engine=onnx-int8`` also scores image queries and the
oracles, 3x the work).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from clipsep.env import apply_offline_defaults

    apply_offline_defaults()  # before open_clip, mlflow, gradio are imported
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--root", default=str(REPO), help="paths.root (data, models)")
    parser.add_argument("--out", required=True, help="folder for the exports and paired.jsonl")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    from clipsep.config import load_params
    from clipsep.evaluation.evaluate import MixtureScorer, load_protocol, mixture_plan, score
    from clipsep.inference import Separator
    from clipsep.model.export import export_onnx, read_export
    from clipsep.model.query import QueryEncoder
    from clipsep.model.quantize import calibration_feeds, quantize_export

    torch.set_num_threads(args.threads)
    p = load_params(REPO / "params.yaml", overrides=[f"paths.root={args.root}"])
    out = Path(args.out)
    fp32 = export_onnx(args.checkpoint, out / "fp32")
    info = read_export(fp32)
    encoder = QueryEncoder.from_reference(info.query, "cpu")
    feeds = calibration_feeds(p.path("clips"), info.audio_cfg, encoder.encode_images)
    int8 = quantize_export(fp32, out / "int8", feeds)
    protocol = load_protocol(p)
    settings = dataclasses.replace(p.separate, precision="fp32", engine="onnx")
    scorers = {
        name: MixtureScorer(
            p, Separator.from_pretrained(folder, "cpu", settings=settings), protocol
        )
        for name, folder in (("fp32", fp32), ("int8", int8))
    }
    rows = []
    with (out / "paired.jsonl").open("w") as log:
        for index, t, i in mixture_plan(p, protocol):
            target, other = protocol.targets[t], protocol.interference[i]
            source, interference = scorers["fp32"].segment(target), scorers["fp32"].segment(other)
            row = {"index": index, "label": target.label}
            for name, scorer in scorers.items():
                estimate = scorer.estimate(
                    source + interference, scorer.text_embedding(target.label)
                )
                row[name] = score(source, interference, estimate, p.eval.metrics_backend, False)[
                    "sdr"
                ]
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            if len(rows) % 10 == 0:
                print(
                    len(rows),
                    {k: round(float(np.nanmean([r[k] for r in rows])), 3) for k in scorers},
                )
    diff = np.array([r["int8"] - r["fp32"] for r in rows])
    summary = {k: float(np.nanmean([r[k] for r in rows])) for k in scorers}
    summary.update(
        n=len(rows), diff_mean=float(np.nanmean(diff)), diff_abs_max=float(np.nanmax(abs(diff)))
    )
    print("SUMMARY", json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
