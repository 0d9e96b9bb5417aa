"""Text/image SDRi against training minutes, from a run's snapshots (issue 9's curve).

Train with ``--set train.keep_snapshots=true`` (a separation checkpoint per validation step under
``<checkpoints>/snapshots/``), then::

    .venv/bin/python scripts/quality_curve.py models/clipsep --name quick-start \\
        models/long --name long --out docs/sdri_vs_minutes.png

Each snapshot is scored on the evaluation protocol of the params given (``--profile``/``--set``
as for any clipsep command) into ``<run>/snapshots/eval-step-NNNNNN/`` (kept, so a rerun only
scores new snapshots). Writes the PNG and a CSV beside it (run, step, minutes, text/image SDRi
mean, s.e.m., median). Minutes are the training loop's own time (validation excluded), as
recorded in each snapshot, or ``step x --seconds-per-step`` for runs timed on a shared machine
(e.g. the quiet rate ``bench/train.py`` measured), so that curves from differently loaded runs
share one time axis.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

from clipsep.config import add_params_arguments, params_from_args
from clipsep.env import headless_pyplot
from clipsep.evaluation.evaluate import evaluate


def score_run(params, run_dir: Path, seconds_per_step: float | None = None) -> list[dict]:
    """One row per snapshot of ``run_dir``: step, minutes, text/image SDRi statistics.

    ``seconds_per_step``: minutes = step x this / 60 instead of the snapshot's recorded time.
    """
    rows = []
    for snapshot in sorted((run_dir / "snapshots").glob("step-*.pt")):
        out = snapshot.parent / f"eval-{snapshot.stem}"
        metrics_path = out / "metrics.json"
        if not metrics_path.is_file():
            evaluate(params, snapshot, out)
        metrics = json.loads(metrics_path.read_text())
        extra = torch.load(snapshot, map_location="cpu", weights_only=False).get("extra", {})
        seconds = (
            extra.get("train_seconds", 0.0)
            if seconds_per_step is None
            else extra["step"] * seconds_per_step
        )
        row = {"step": extra.get("step"), "minutes": seconds / 60}
        for query in ("text", "image"):
            for stat in ("mean", "sem", "median"):
                row[f"{query}_sdri_{stat}"] = metrics[query]["sdri"][stat]
        rows.append(row)
    return rows


def plot(curves: dict[str, list[dict]], out_png: Path, xlabel: str) -> None:
    plt = headless_pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, rows in curves.items():
        minutes = [r["minutes"] for r in rows]
        for query, style in (("text", "-o"), ("image", "--s")):
            mean = [r[f"{query}_sdri_mean"] for r in rows]
            sem = [r[f"{query}_sdri_sem"] for r in rows]
            axis.errorbar(minutes, mean, yerr=sem, fmt=style, capsize=2, label=f"{name}, {query}")
    axis.set_xlabel(xlabel)
    axis.set_ylabel("SDRi (dB), mean ± s.e.m.")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out_png, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="checkpoint folders with snapshots/")
    parser.add_argument("--name", action="append", default=[], help="label per run, in order")
    parser.add_argument("--out", type=Path, default=Path("reports/sdri_vs_minutes.png"))
    parser.add_argument(
        "--seconds-per-step",
        type=float,
        default=None,
        help="minutes from steps at this rate (one time axis for runs timed under other loads)",
    )
    parser.add_argument("--rate-note", default="", help="what the rate is, for the x label")
    add_params_arguments(parser)
    args = parser.parse_args(argv)
    params = params_from_args(args)
    names = args.name + [run.name for run in args.runs[len(args.name) :]]
    curves = {
        name: score_run(params, run, args.seconds_per_step) for name, run in zip(names, args.runs)
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    xlabel = (
        "training minutes (loop time)"
        if args.seconds_per_step is None
        else f"training minutes at {args.seconds_per_step:g} s/step {args.rate_note}".strip()
    )
    plot(curves, args.out, xlabel)
    with open(args.out.with_suffix(".csv"), "w", newline="") as handle:
        rows = [{"run": name, **row} for name, rows in curves.items() for row in rows]
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out} and {args.out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
