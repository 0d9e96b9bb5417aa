"""Text/image SDRi against training minutes, from the snapshots of one or more training runs.

Train with ``--set train.keep_snapshots=true`` (a separation checkpoint per validation step under
``<checkpoints>/snapshots/``), then::

    .venv/bin/python scripts/quality_curve.py models/clipsep models/long \\
        --name "quick start" --name "long profile" --out docs/sdri_vs_minutes.png

Each snapshot is scored on the evaluation protocol of the params given (``--profile``/``--set``
as for any clipsep command) into ``<run>/snapshots/eval-step-NNNNNN/``, with the protocol's
settings in ``protocol.json`` beside the scores: a rerun with the same protocol only scores new
snapshots; another protocol (other eval settings, world or clips) scores them again. Writes the
PNG and a CSV beside it (run, step, minutes, clock, text/image SDRi mean, s.e.m., median).

Minutes are the training loop's own time (validation excluded) as recorded in each snapshot
(clock ``loop``), or, with ``--seconds-per-step S``, step x S / 60 (clock ``S s/step``): for runs
timed on a shared machine, put on one axis at a stated rate (e.g. the quiet rate ``bench/train.py``
measured).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

from clipsep.config import add_params_arguments, params_from_args
from clipsep.env import apply_offline_defaults, headless_pyplot
from clipsep.evaluation.evaluate import evaluate


def protocol(params) -> dict:
    """What a snapshot's scores depend on besides the snapshot: the params sections the evaluate
    stage reads (:data:`clipsep.stages.STAGE_PARAMS`) and the world and clips it draws from
    (absolute paths)."""
    from clipsep.stages import STAGE_PARAMS

    data = params.to_dict()
    return {
        **{section: data[section] for section in STAGE_PARAMS["evaluate"]},
        "world": str(params.path("world")),
        "clips": str(params.path("clips")),
    }


def scored_metrics(params, snapshot: Path) -> dict:
    """The snapshot's metrics on this protocol: cached in ``eval-<step>/`` when the protocol
    matches the cached one, else scored (again)."""
    out = snapshot.parent / f"eval-{snapshot.stem}"
    wanted = protocol(params)
    stamp = out / "protocol.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == wanted):
        evaluate(params, snapshot, out)
        stamp.write_text(json.dumps(wanted, indent=1))
    return json.loads((out / "metrics.json").read_text())


def score_run(params, run_dir: Path, seconds_per_step: float | None = None) -> list[dict]:
    """One row per snapshot of ``run_dir``: step, minutes, clock, text/image SDRi statistics.

    ``seconds_per_step``: minutes = step x this / 60 instead of the snapshot's recorded time.
    SystemExit when the run has no snapshots.
    """
    snapshots = sorted((run_dir / "snapshots").glob("step-*.pt"))
    if not snapshots:
        raise SystemExit(
            f"quality_curve: no snapshots in {run_dir}/snapshots "
            "(train with --set train.keep_snapshots=true)"
        )
    rows = []
    for snapshot in snapshots:
        metrics = scored_metrics(params, snapshot)
        extra = torch.load(snapshot, map_location="cpu", weights_only=False).get("extra", {})
        if seconds_per_step is None:
            seconds, clock = extra.get("train_seconds", 0.0), "loop"
        else:
            seconds, clock = extra["step"] * seconds_per_step, f"{seconds_per_step:g} s/step"
        row = {"step": extra.get("step"), "minutes": round(seconds / 60, 3), "clock": clock}
        for query in ("text", "image"):
            for stat in ("mean", "sem", "median"):
                value = metrics[query]["sdri"][stat]
                row[f"{query}_sdri_{stat}"] = None if value is None else round(value, 4)
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
    axis.set_xlim(left=0)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("SDRi (dB), mean ± s.e.m.")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out_png, dpi=120)
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="checkpoint folders with snapshots/")
    parser.add_argument(
        "--name", action="append", default=[], help="label per run, in the runs' order"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reports/sdri_vs_minutes.png"),
        help="the PNG (a CSV is written beside it; default %(default)s)",
    )
    parser.add_argument(
        "--seconds-per-step",
        type=float,
        default=None,
        help="minutes = step x this / 60, replacing each run's recorded loop time",
    )
    parser.add_argument("--rate-note", default="", help="where that rate comes from (x label)")
    add_params_arguments(parser)
    args = parser.parse_args(argv)
    if len(args.name) > len(args.runs):
        parser.error(f"{len(args.name)} --name labels for {len(args.runs)} runs")
    if args.seconds_per_step is not None and args.seconds_per_step <= 0:
        parser.error("--seconds-per-step must be > 0")
    return args


def main(argv: list[str] | None = None) -> None:
    apply_offline_defaults()  # before open_clip, mlflow, gradio are imported
    args = parse_args(argv)
    params = params_from_args(args)
    names = args.name + [run.name for run in args.runs[len(args.name) :]]
    curves = {
        name: score_run(params, run, args.seconds_per_step) for name, run in zip(names, args.runs)
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.seconds_per_step is None:
        xlabel = "training minutes (each run's loop time)"
    else:
        note = f" ({args.rate_note})" if args.rate_note else ""
        xlabel = f"training minutes at {args.seconds_per_step:g} s/step{note}"
    plot(curves, args.out, xlabel)
    with open(args.out.with_suffix(".csv"), "w", newline="") as handle:
        rows = [{"run": name, **row} for name, rows in curves.items() for row in rows]
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out} and {args.out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
