"""The test protocol (CLIPSep §6, MUSIC+-like): clean targets mixed with noisy interference.

Each target clip gets ``eval.mixtures_per_target`` interference clips drawn with a seeded generator
(``eval.seed + mixture index``). Both sources are a ``audio.segment_samples`` window centred on the
clip's middle, divided by 2, summed into the mixture. The model is queried with the target's label
(text, prompt-ensembled) and with the mean CLIP embedding of the target's three middle frames
(image). Scores: BSS-Eval target SDR/SIR/SAR, SI-SDR and SDRi (= SDR - mixture SDR), also for the
oracle ideal binary / ratio masks in the linear STFT domain (upper bounds) and the mixture itself.
An absent-query control asks for a class present in neither source and reports how much energy
the model still returns, and for how many seconds ``clipsep separate``'s activity segments would
call it present (with the ``separate.activity_*`` settings), beside the right query's.

Sources of the protocol: ``eval.targets_csv`` / ``eval.interference_csv`` (columns ``audio_path,
frames_dir, label``; paths relative to the CSV) for MUSIC / VGGSound users; otherwise the clip
manifest's ``test`` and ``interference`` splits, labelled from the world's ``ground_truth.csv`` --
evaluation is the only code allowed to read it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipsep.activity import stem_meter
from clipsep.config import Params
from clipsep.env import apply_offline_defaults
from clipsep.errors import BadInputError
from clipsep.evaluation import metrics as M
from clipsep.fileio import write_csv, write_json
from clipsep.outputs import file_identity
from clipsep.progress import bar as progress_bar
from clipsep.data.mixing import read_manifest
from clipsep.data.world import read_ground_truth

log = logging.getLogger(__name__)

# constant_mask = 0.5 x mixture: what a model that learned nothing scores (about mixture SDR + 3 dB
# at equal levels; BSS-Eval v4 "images" SDR is not scale-invariant), the floor a model must clear
METHODS = ("text", "image", "oracle_ibm", "oracle_irm", "mixture", "constant_mask")
SCORES = ("sdr", "sir", "sar", "si_sdr", "sdri")
SUMMARY_SCORES = ("sdr", "sdri", "sir", "sar")  # what `clipsep evaluate` prints per method
QUERY_FRAMES = 3  # the paper's image query: mean embedding of the 3 middle frames
# activity thresholds (dB re mixture) over which the absent/right detection trade-off is reported
DETECTION_THRESHOLDS_DB = tuple(range(-30, 1))


@dataclass(frozen=True)
class ProtocolClip:
    """One clip of the protocol: 16 kHz-or-any-rate audio, its frames folder and label."""

    audio_path: Path
    frames_dir: Path | None
    label: str | None


@dataclass(frozen=True)
class Protocol:
    targets: list[ProtocolClip]
    interference: list[ProtocolClip]
    classes: list[str]  # every class name the absent-query control may choose from


# --- the protocol's clips -------------------------------------------------------------------


def load_protocol(p: Params) -> Protocol:
    """Target and interference clips from eval.*_csv or from the manifest + ground truth."""
    if p.eval.targets_csv:  # with eval.interference_csv: load_params checks they go together
        targets = read_clip_csv(_rooted(p, p.eval.targets_csv), need_label=True)
        interference = read_clip_csv(_rooted(p, p.eval.interference_csv), need_label=False)
        classes = sorted(set().union(*map(heard_classes, targets + interference)))
    else:
        targets, interference = manifest_clips(p)
        classes = sorted(set().union(*map(heard_classes, targets + interference)))
    if not targets or not interference:
        raise BadInputError(
            f"the evaluation protocol needs targets and interference clips, got "
            f"{len(targets)} and {len(interference)}"
        )
    return Protocol(targets, interference, classes)


def _rooted(p: Params, path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else p.path("root") / candidate


def read_clip_csv(path: Path, need_label: bool) -> list[ProtocolClip]:
    """A MUSIC/VGGSound-style index: ``audio_path, frames_dir, label`` relative to the CSV."""
    if not path.is_file():
        raise BadInputError(f"protocol CSV not found: {path}")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    clips = []
    for number, row in enumerate(rows, start=2):
        if not row.get("audio_path"):
            raise BadInputError(f"{path}, line {number}: empty audio_path")
        label = (row.get("label") or "").strip() or None
        if need_label and label is None:
            raise BadInputError(f"{path}, line {number}: targets need a label (the text query)")
        frames = (row.get("frames_dir") or "").strip()
        clips.append(
            ProtocolClip(
                path.parent / row["audio_path"], path.parent / frames if frames else None, label
            )
        )
    return clips


def manifest_clips(p: Params) -> tuple[list[ProtocolClip], list[ProtocolClip]]:
    """The manifest's test / interference clips, labelled from the world's ground truth."""
    clips_dir, world_dir = p.path("clips"), p.path("world")
    manifest, truth = clips_dir / "manifest.csv", world_dir / "ground_truth.csv"
    for needed in (manifest, truth):
        if not needed.is_file():
            raise BadInputError(
                f"{needed} not found: run the world and ingest stages first "
                f"(or set eval.targets_csv / eval.interference_csv)"
            )
    # Everything audible: on-screen labels plus the off-screen class, if any.
    labels = {
        row["video"]: ";".join(filter(None, (row["labels"], row.get("offscreen"))))
        for row in read_ground_truth(world_dir)
    }
    chosen: dict[str, list[ProtocolClip]] = {"test": [], "interference": []}
    for record in read_manifest(clips_dir):
        if record.split in chosen:
            label = labels.get(record.source) or record.label
            chosen[record.split].append(ProtocolClip(record.audio_path, record.frames_dir, label))
    return chosen["test"], chosen["interference"]


def heard_classes(clip: ProtocolClip) -> set[str]:
    return {c.strip() for c in (clip.label or "").split(";") if c.strip()}


# --- one mixture ----------------------------------------------------------------------------


def load_segment(clip: ProtocolClip, sample_rate: int, length: int) -> np.ndarray:
    """``length`` mono samples at ``sample_rate`` centred on the clip's middle (tiled if short)."""
    from clipsep import audio_io
    from clipsep.inference import resample

    wave, rate = audio_io.read_audio(clip.audio_path)
    mono = resample(wave.mean(axis=0, keepdims=True), rate, sample_rate)[0]
    if mono.size == 0 or not np.isfinite(mono).all():
        raise BadInputError(f"{clip.audio_path}: empty audio or non-finite samples")
    if mono.size < length:
        mono = np.tile(mono, math.ceil(length / mono.size))
    start = (mono.size - length) // 2
    return mono[start : start + length].astype(np.float32)


def image_embedding(separator, clip: ProtocolClip) -> torch.Tensor | None:
    """Mean CLIP embedding ``[D]`` of the clip's middle frames (upright by their EXIF
    orientation); None without frames."""
    from clipsep.inference import load_image

    frames = sorted(clip.frames_dir.glob("*.jpg")) if clip.frames_dir else []
    if not frames:
        return None
    middle = len(frames) // 2
    chosen = frames[max(0, middle - QUERY_FRAMES // 2) : middle - QUERY_FRAMES // 2 + QUERY_FRAMES]
    pictures = [load_image(f) for f in chosen]
    return separator.encoder.encode_images(pictures).mean(dim=0).to(separator.device)


def oracle_estimates(target: np.ndarray, interference: np.ndarray, cfg) -> dict[str, np.ndarray]:
    """Ideal binary / ratio mask estimates of ``target`` from the mixture (linear STFT, [L])."""
    from clipsep import audio

    waves = torch.from_numpy(np.stack([target, interference, target + interference]))
    specs = audio.stft(waves, cfg)  # [3, F, T]
    source, other = specs[0].abs(), specs[1].abs()
    masks = {
        "oracle_ibm": (source >= other).to(source.dtype),
        "oracle_irm": audio.ratio_masks(torch.stack([source, other])[None])[0, 0],
    }
    return {
        name: audio.istft(specs[2:3] * mask, target.size, cfg)[0].numpy()
        for name, mask in masks.items()
    }


def score(
    target: np.ndarray,
    interference: np.ndarray,
    estimate: np.ndarray,
    backend: str,
    is_mixture: bool = False,
) -> dict[str, float]:
    """SDR/SIR/SAR/SI-SDR of one target estimate (the interference estimate = mixture - it)."""
    mixture = target + interference
    other = mixture if is_mixture else mixture - estimate
    scores = M.bss_eval_target(
        np.stack([target, interference]), np.stack([estimate, other]), backend
    )
    return {
        "sdr": scores.sdr,
        "sir": scores.sir,
        "sar": scores.sar,
        "si_sdr": M.si_sdr(target, estimate),
    }


class MixtureScorer:
    """Scores every method on one mixture; caches query embeddings and loaded clips."""

    def __init__(self, p: Params, separator, protocol: Protocol):
        self.p, self.separator, self.protocol = p, separator, protocol
        self.cfg = separator.audio_cfg
        self._text: dict[str, torch.Tensor] = {}
        self._segments: dict[Path, np.ndarray] = {}

    def text_embedding(self, label: str) -> torch.Tensor:
        if label not in self._text:
            self._text[label] = self.separator.embed_query(label)
        return self._text[label]

    def segment(self, clip: ProtocolClip) -> np.ndarray:
        if clip.audio_path not in self._segments:
            self._segments[clip.audio_path] = (
                load_segment(clip, self.cfg.sample_rate, self.cfg.segment_samples) / 2
            )  # as the paper
        return self._segments[clip.audio_path]

    def estimate(self, mixture: np.ndarray, embedding: torch.Tensor) -> np.ndarray:
        binary = not self.p.eval.soft_masks
        return self.separator.target_segment(mixture[None], embedding, binary=binary)[0]

    def __call__(
        self, index: int, target: ProtocolClip, interference: ProtocolClip, rng: np.random.Generator
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        source, other = self.segment(target), self.segment(interference)
        mixture = source + other
        estimates = {
            "text": self.estimate(mixture, self.text_embedding(target.label)),
            "mixture": mixture,
            "constant_mask": 0.5 * mixture,
            **oracle_estimates(source, other, self.cfg),
        }
        picture = image_embedding(self.separator, target)
        if picture is not None:
            estimates["image"] = self.estimate(mixture, picture)
        row: dict[str, Any] = {
            "index": index,
            "target": str(target.audio_path),
            "interference": str(interference.audio_path),
            "label": target.label,
        }
        backend = self.p.eval.metrics_backend
        for method in METHODS:
            values = (
                score(source, other, estimates[method], backend, method == "mixture")
                if method in estimates
                else dict.fromkeys(SCORES[:-1], math.nan)
            )
            row.update({f"{method}_{k}": v for k, v in values.items()})
        for method in METHODS:
            row[f"{method}_sdri"] = row[f"{method}_sdr"] - row["mixture_sdr"]
        row.update(self.absent_query(mixture, target, interference, estimates["text"], rng))
        row["target_energy_db"] = M.energy_db(source, mixture)  # what the right query should return
        return row, {"mixture": mixture, "target": source, **estimates}

    def absent_query(self, mixture, target, interference, text_estimate, rng) -> dict[str, Any]:
        """Energy returned for a class heard in neither source (vs the right query's)."""
        absent = sorted(
            set(self.protocol.classes) - heard_classes(target) - heard_classes(interference)
        )
        result = {
            "absent_label": None,
            "absent_energy_db": math.nan,
            "absent_active_s": math.nan,
            "absent_presence_db": math.nan,
            "text_energy_db": M.energy_db(text_estimate, mixture),
        }
        result["text_active_s"], result["text_presence_db"] = self.activity_of(
            text_estimate, mixture
        )
        if absent:
            label = absent[int(rng.integers(len(absent)))]
            estimate = self.estimate(mixture, self.text_embedding(label))
            active_s, presence = self.activity_of(estimate, mixture)
            result.update(
                absent_label=label,
                absent_energy_db=M.energy_db(estimate, mixture),
                absent_active_s=active_s,
                absent_presence_db=presence,
            )
        return result

    def activity_of(self, estimate: np.ndarray, mixture: np.ndarray) -> tuple[float, float]:
        """(seconds of the mixture where ``clipsep separate`` would report the estimate active:
        its ``.activity.csv`` segments with the ``separate.activity_*`` settings; the highest
        ``activity_threshold_db`` at which it would still report it somewhere, dB, -inf: at
        none), from one activity meter."""
        meter = stem_meter(estimate, mixture, self.cfg.sample_rate, self.p.separate)
        segments = meter.segments(self.p.separate)["stem"]
        presence = float(meter.presence_db(self.p.separate)[0])
        return float(sum(end - start for start, end, _ in segments)), presence


# --- the whole protocol -----------------------------------------------------------------------


def mixture_plan(p: Params, protocol: Protocol) -> list[tuple[int, int, int]]:
    """(mixture index, target index, interference index): interference drawn with seed + index."""
    plan = []
    for t, _ in enumerate(protocol.targets):
        for j in range(p.eval.mixtures_per_target):
            index = t * p.eval.mixtures_per_target + j
            rng = np.random.default_rng(p.eval.seed + index)
            plan.append((index, t, int(rng.integers(len(protocol.interference)))))
    return plan


EXAMPLE_FOLDER = "example"  # the first mixture's audio (mixture.wav, target.wav)


def evaluate(p: Params, checkpoint: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Score ``checkpoint`` on the protocol; writes metrics.json, per_item.csv, plots and the
    first mixture's audio (:func:`write_example`)."""
    from clipsep.evaluation import plots
    from clipsep.inference import Separator

    out_dir = Path(out_dir)
    protocol = load_protocol(p)
    settings = dataclasses.replace(p.separate, precision=p.eval.precision)
    separator = Separator.from_pretrained(
        checkpoint, device=p.eval.device, settings=settings, calibration=p.path("clips")
    )
    scorer = MixtureScorer(p, separator, protocol)
    rows, example = [], None
    plan = mixture_plan(p, protocol)
    bar = progress_bar(plan, desc="evaluate", unit="mixture")
    every = max(1, len(plan) // 10)  # where there is no bar (a log file, CI): a line per tenth
    for index, t, i in bar:
        # A second generator per mixture (offset) picks the absent class, independent of the draw.
        rng = np.random.default_rng([p.eval.seed + index, 1])
        row, waves = scorer(index, protocol.targets[t], protocol.interference[i], rng)
        rows.append(row)
        example = example or waves
        if bar.disable and (len(rows) % every == 0 or len(rows) == len(plan)):
            log.info("evaluate: %d/%d mixtures", len(rows), len(plan))
    metrics = aggregate(rows, p.eval.metrics_backend)
    metrics["checkpoint"] = checkpoint_identity(checkpoint)
    metrics["inference"] = inference_record(separator)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(out_dir / "metrics.json", metrics)
    write_csv(out_dir / "per_item.csv", list(rows[0]), rows)
    plots.plot_sdr_distribution(rows, METHODS, out_dir / "sdr_by_method.png")
    plots.plot_per_class(metrics["per_class"], out_dir / "sdr_per_class.png")
    plots.plot_example(example, separator.audio_cfg, out_dir / "example.png")
    tried = write_example(out_dir / EXAMPLE_FOLDER, rows[0], example, separator.audio_cfg)
    plots.plot_detection(
        metrics["absent_query"]["detection"],
        p.separate.activity_threshold_db,
        out_dir / "activity_detection.png",
    )
    text_sdr = metrics["text"]["sdr"]["mean"]
    log.info(
        "evaluated %d mixtures: text SDR %s dB (%s)",
        len(rows),
        "n/a" if text_sdr is None else f"{text_sdr:.2f}",
        metrics["backend"],
    )
    return {
        "n_mixtures": len(rows),
        "text_sdr": text_sdr,
        "image_sdr": metrics["image"]["sdr"]["mean"],
        "oracle_ibm_sdr": metrics["oracle_ibm"]["sdr"]["mean"],
        "scores_db": scores_db(metrics),
        "activity_detection": detection_summary(metrics["absent_query"]["detection"]),
        "out_dir": str(out_dir),
        "example": tried,
    }


def write_example(folder: Path, row: dict[str, Any], waves: dict, audio_cfg) -> dict[str, str]:
    """The mixture of ``example.png`` as audio to try: ``mixture.wav`` and the true
    ``target.wav`` (mono, the model's rate, one segment) in ``folder``; returns their paths and
    the text query the protocol asked for (``mixture``, ``target``, ``query``)."""
    from clipsep.audio_io import write_wav

    written = {
        name: str(write_wav(folder / f"{name}.wav", waves[name], audio_cfg.sample_rate))
        for name in ("mixture", "target")
    }
    return {**written, "query": row["label"]}


def inference_record(separator) -> dict[str, str]:
    """How the scored estimates were computed: the network's arithmetic as ``eval.precision``
    resolved (``precision``, ``precision_reason``), its engine, device and CPU
    (:func:`clipsep.precision.cpu_description`). bf16 and fp32 estimates of one checkpoint
    differ by ~1e-3 relative RMS, so runs compared to the last 0.01 dB should match here."""
    from clipsep.precision import cpu_description

    return {
        "precision": separator.precision.mode,
        "precision_reason": separator.precision.reason,
        "engine": separator.settings.engine,
        "device": separator.device,
        "cpu": cpu_description(),
    }


def detection_summary(detection: dict[str, Any] | None) -> dict[str, float] | None:
    """metrics.json's ``absent_query.detection`` less its curve, rounded for the printed summary
    (None when no absent query was asked)."""
    if detection is None:
        return None
    keys = ("auc", "balanced_threshold_db", "balanced_accuracy")
    return {key: round(detection[key], 3) for key in keys}


def stat_text(stat: dict[str, float | None]) -> str:
    """A ``{"mean", "sem", "median"}`` of metrics.json as ``3.34 ± 0.41 (3.10)``; "n/a" when it
    has no finite value."""
    if stat.get("mean") is None:
        return "n/a"
    return f"{stat['mean']:.2f} ± {stat['sem']:.2f} ({stat['median']:.2f})"


def scores_db(metrics: dict[str, Any]) -> dict[str, dict[str, str]]:
    """SDR, SDRi, SIR and SAR (dB) of every method in metrics.json (the queries, the oracle masks,
    the trivial baselines) as mean ± s.e.m. (median), :func:`stat_text`: the README's form; and
    the wrong-query control (``absent_query``: the energy an absent and the right query return,
    dB of the mixture's)."""
    scores = {
        method: {score: stat_text(metrics[method][score]) for score in SUMMARY_SCORES}
        for method in METHODS
        if method in metrics
    }
    control = metrics.get("absent_query", {})
    scores["absent_query"] = {
        key: stat_text(control[key])
        for key in ("energy_db", "right_query_energy_db")
        if key in control
    }
    return scores


def checkpoint_identity(checkpoint: str | Path) -> dict[str, str]:
    """What metrics.json scored: a local file's absolute path and SHA-256 (register checks it
    against the checkpoint it registers), else the reference as given (``models:/...``). The
    identity is :func:`clipsep.outputs.file_identity`'s, less its size and modification time
    (numbers in metrics.json become metrics)."""
    if Path(checkpoint).is_file():
        identity = file_identity(checkpoint, digest=True)
        return {"path": identity["path"], "sha256": identity["sha256"]}
    return {"ref": str(checkpoint)}


def aggregate(rows: list[dict[str, Any]], backend: str) -> dict[str, Any]:
    """metrics.json (docs/CONTRACTS.md): mean/sem/median per method and score, class, control."""
    metrics: dict[str, Any] = {
        method: {s: M.summarize(r[f"{method}_{s}"] for r in rows) for s in SCORES}
        for method in METHODS
    }
    asked = [r for r in rows if r["absent_label"] is not None]
    metrics["absent_query"] = {
        "energy_db": M.summarize(r["absent_energy_db"] for r in rows),
        "right_query_energy_db": M.summarize(r["text_energy_db"] for r in rows),
        "target_energy_db": M.summarize(r["target_energy_db"] for r in rows),
        "active_s": M.summarize(r["absent_active_s"] for r in rows),
        "right_query_active_s": M.summarize(r["text_active_s"] for r in rows),
        # what a user of the activity CSVs sees: an absent query reported nowhere
        "no_activity_share": (
            sum(r["absent_active_s"] == 0.0 for r in asked) / len(asked) if asked else None
        ),
        # the same over every threshold: could another activity_threshold_db tell them apart?
        "detection": M.detection_tradeoff(
            [r["text_presence_db"] for r in asked],
            [r["absent_presence_db"] for r in asked],
            DETECTION_THRESHOLDS_DB,
        ),
    }
    per_class: dict[str, Any] = {}
    for label in sorted({r["label"] for r in rows}):
        mine = [r for r in rows if r["label"] == label]
        per_class[label] = {
            "n": len(mine),
            **{
                method: {s: M.summarize(r[f"{method}_{s}"] for r in mine) for s in ("sdr", "sdri")}
                for method in ("text", "image", "oracle_ibm")
            },
        }
    metrics["per_class"] = per_class
    metrics["n_mixtures"] = len(rows)
    metrics["backend"] = M.BACKENDS[backend]
    return metrics


def write_metrics(path: Path, data: Any) -> None:
    """metrics.json: strict JSON (a NaN would break DVC and MLflow readers; null marks none)."""
    write_json(path, data, allow_nan=False)


def compare_metrics(
    paths: list[str | Path], names: list[str], out_dir: str | Path
) -> dict[str, Any]:
    """Put several metrics.json side by side (e.g. with / without NIT): comparison.json + .png.

    ``paths``: metrics.json files or the evaluation folders holding them. A warning is logged
    when the runs were scored on different numbers of mixtures (not the same protocol)."""
    from clipsep.evaluation import plots

    if len(paths) != len(names):
        raise BadInputError(f"{len(paths)} metrics files but {len(names)} names")
    runs = {}
    for name, path in zip(names, map(metrics_file, paths)):
        if not path.is_file():
            raise BadInputError(f"metrics file not found: {path}")
        runs[name] = json.loads(path.read_text())
    sizes = {name: m.get("n_mixtures") for name, m in runs.items()}
    if len(set(sizes.values())) > 1:
        log.warning("the runs were scored on different protocols (mixtures: %s)", sizes)
    table = {
        name: {
            method: {s: m[method][s] for s in ("sdr", "sir", "sar", "sdri")}
            for method in METHODS
            if method in m
        }
        | {
            "absent_query_energy_db": m["absent_query"]["energy_db"],
            "n_mixtures": m["n_mixtures"],
            "backend": m["backend"],
        }
        for name, m in runs.items()
    }
    if len({t["backend"] for t in table.values()}) > 1:
        raise BadInputError("the metrics files use different BSS-Eval backends; never compare them")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(out_dir / "comparison.json", table)
    plots.plot_comparison(table, METHODS, out_dir / "comparison.png")
    return table


def comparison_table(table: dict[str, Any]) -> str:
    """:func:`compare_metrics`' table as text: a row per method and run, SDR and SDRi as
    mean ± s.e.m. (median) in dB, SIR and SAR means."""
    header = ("method", "run", "SDR (dB)", "SDRi (dB)", "SIR", "SAR")
    rows = [header]
    for method in METHODS:
        for name, run in table.items():
            if method in run:
                m = run[method]
                sir, sar = (m[s]["mean"] for s in ("sir", "sar"))
                rows.append(
                    (method, name, stat_text(m["sdr"]), stat_text(m["sdri"]))
                    + tuple("n/a" if v is None else f"{v:.2f}" for v in (sir, sar))
                )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    n = ", ".join(f"{name} {run['n_mixtures']}" for name, run in table.items())
    backend = next(iter(table.values()))["backend"]
    return "\n".join([*lines, f"mean ± s.e.m. (median); mixtures: {n}; {backend}"])


def metrics_file(path: str | Path) -> Path:
    """``path`` itself, or ``path/metrics.json`` for an evaluation folder."""
    path = Path(path)
    return path / "metrics.json" if path.is_dir() else path


def default_names(paths: list[str]) -> list[str]:
    """Run names for ``paths`` (metrics files or folders): each one's folder name, or, where two
    share a name, the folders as given."""
    folders = [metrics_file(p).parent for p in paths]
    names = [f.name for f in folders]
    return names if len(set(names)) == len(names) else [str(f) for f in folders]


def main(argv: list[str] | None = None) -> int:
    """python -m clipsep.evaluation.evaluate compare A/metrics.json B/metrics.json --names a,b

    Prints the side-by-side table of two or more evaluations (SDR and SDRi per method and run as
    mean ± s.e.m. (median), SIR, SAR; --json: the whole comparison as JSON) and writes
    comparison.json and comparison.png to --out.
    """
    apply_offline_defaults()  # before open_clip, mlflow, gradio are imported
    import argparse

    import inspect

    parser = argparse.ArgumentParser(
        prog="python -m clipsep.evaluation.evaluate",
        description=inspect.cleandoc(main.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["compare"])
    parser.add_argument("metrics", nargs="+", help="metrics.json files or evaluation folders")
    parser.add_argument(
        "--names", default=None, help="comma-separated run names (default: the folders' names)"
    )
    parser.add_argument(
        "--out",
        default="reports/comparison",
        help="output folder (default: reports/comparison under the current folder)",
    )
    parser.add_argument("--json", action="store_true", help="print comparison.json, not the table")
    args = parser.parse_args(argv)
    try:
        names = args.names.split(",") if args.names else default_names(args.metrics)
        table = compare_metrics(args.metrics, names, args.out)
    except BadInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(table, indent=2) if args.json else comparison_table(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
