"""Evaluation pictures (matplotlib, Agg): SDR per method, per class, an example, run comparison.

Every figure is written atomically (tmp file + os.replace) so a crashed run leaves no half PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clipsep.env import headless_pyplot
from clipsep.fileio import atomic_path

METHOD_TITLES = {
    "text": "text query",
    "image": "image query",
    "oracle_ibm": "oracle IBM",
    "oracle_irm": "oracle IRM",
    "mixture": "mixture",
    "constant_mask": "0.5 x mixture",
}


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    headless_pyplot().close(fig)


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def plot_sdr_distribution(rows: list[dict[str, Any]], methods: Sequence[str], path: Path) -> None:
    """Box plot (+ points) of target SDR for each method over all mixtures."""
    plt = headless_pyplot()
    data = [_finite(r[f"{m}_sdr"] for r in rows) for m in methods]
    fig, ax = plt.subplots(figsize=(7, 4))
    shown = [i for i, d in enumerate(data) if d]
    ax.boxplot([data[i] for i in shown], showmeans=True)
    names = [METHOD_TITLES.get(methods[i], methods[i]) for i in shown]
    ax.set_xticks(range(1, len(shown) + 1), names)
    for position, i in enumerate(shown, start=1):
        jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(data[i]))
        ax.scatter(position + jitter, data[i], s=8, alpha=0.5, color="tab:gray")
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_ylabel("target SDR (dB)")
    ax.set_title(f"Separation quality over {len(rows)} mixtures (triangle = mean)")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_per_class(per_class: dict[str, Any], path: Path) -> None:
    """Mean SDR ± s.e.m. per target class: text query, image query and the oracle IBM."""
    plt = headless_pyplot()
    labels = sorted(per_class)
    methods = ("text", "image", "oracle_ibm")
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels) + 2), 4))
    x = np.arange(len(labels))
    for k, method in enumerate(methods):
        stats = [per_class[label][method]["sdr"] for label in labels]
        means = [s["mean"] if s["mean"] is not None else np.nan for s in stats]
        errors = [s["sem"] if s["sem"] is not None else 0.0 for s in stats]
        ax.bar(
            x + (k - 1) * width, means, width, yerr=errors, capsize=2, label=METHOD_TITLES[method]
        )
    ax.set_xticks(x, [f"{label}\n(n={per_class[label]['n']})" for label in labels], fontsize=8)
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_ylabel("target SDR (dB), mean ± s.e.m.")
    ax.set_title("Per-class separation")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_detection(detection: dict[str, Any] | None, threshold_db: float, path: Path) -> None:
    """The absent/right-query trade-off of the activity segments over their threshold: the share
    of absent queries given no segment and of right queries given one, with the configured
    ``separate.activity_threshold_db`` marked
    (:func:`clipsep.evaluation.metrics.detection_tradeoff`). Nothing is drawn when no absent
    query was asked."""
    if detection is None:
        return
    plt = headless_pyplot()
    curve = detection["curve"]
    x = [c["threshold_db"] for c in curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [c["absent_no_segment_share"] for c in curve], label="absent query: no segment")
    ax.plot(x, [c["right_query_segment_share"] for c in curve], label="right query: a segment")
    ax.axvline(
        threshold_db, color="black", lw=0.8, ls="--", label=f"configured ({threshold_db:g} dB)"
    )
    ax.set_xlabel("separate.activity_threshold_db (dB re mixture)")
    ax.set_ylabel("share of mixtures")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(
        f"Activity segments: absent vs right query (AUC {detection['auc']:.2f}; mean of the "
        f"two shares highest at {detection['balanced_threshold_db']:g} dB)"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_example(waves: dict[str, np.ndarray], audio_cfg, path: Path) -> None:
    """Spectrograms of one mixture: mixture, true target, text-query estimate, oracle IBM."""
    import torch

    from clipsep import audio

    plt = headless_pyplot()
    panels = [
        ("mixture", "mixture"),
        ("target", "true target"),
        ("text", "text-query estimate"),
        ("oracle_ibm", "oracle IBM estimate"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), sharey=True)
    seconds = len(waves["mixture"]) / audio_cfg.sample_rate
    nyquist_khz = audio_cfg.sample_rate / 2000
    decibels = {
        key: 20
        * torch.log10(
            audio.stft(torch.from_numpy(waves[key][None].astype(np.float32)), audio_cfg)[0].abs()
            + 1e-6
        ).numpy()
        for key, _ in panels
    }
    top = decibels["mixture"].max()  # one colour scale for all panels: levels stay comparable
    for ax, (key, title) in zip(axes, panels):
        image = ax.imshow(
            decibels[key],
            origin="lower",
            aspect="auto",
            vmin=top - 80,
            vmax=top,
            extent=(0, seconds, 0, nyquist_khz),
            cmap="magma",
        )
        ax.set_title(title)
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("frequency (kHz)")
    fig.colorbar(image, ax=axes, label="dB", shrink=0.8)
    _save(fig, path)


def plot_comparison(table: dict[str, Any], methods: Sequence[str], path: Path) -> None:
    """Mean SDR ± s.e.m. per method for each run side by side (e.g. with vs without NIT)."""
    plt = headless_pyplot()
    runs = list(table)
    width = 0.8 / max(len(runs), 1)
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(8, 4))
    for k, run in enumerate(runs):
        stats = [table[run].get(m, {}).get("sdr", {}) for m in methods]
        means = [s.get("mean") if s.get("mean") is not None else np.nan for s in stats]
        errors = [s.get("sem") or 0.0 for s in stats]
        bars = ax.bar(
            x + (k - (len(runs) - 1) / 2) * width,
            means,
            width,
            yerr=errors,
            capsize=2,
            label=f"{run} (n={table[run]['n_mixtures']})",
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(x, [METHOD_TITLES.get(m, m) for m in methods])
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_ylabel("target SDR (dB), mean ± s.e.m.")
    ax.set_title(f"Run comparison ({next(iter(table.values()))['backend'] if table else ''})")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
