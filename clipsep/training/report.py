"""What a person looks at after training: curves, example separations, a summary.

Writes into the training output folder (rank 0 only):
``history.csv`` (one row per step: lr, losses, grad norm; validation columns on validation steps),
``curves.png`` (training and validation loss, validation SDR), ``examples/<i>/`` with
``mixture.wav``, ``estimate.wav``, ``reference.wav`` and ``spectrogram.png`` (mixture | estimate |
reference) for the first ``train.examples`` validation mixtures separated by ``best.pt`` with the
image query of their first source, and ``summary.json``. Every file is written atomically.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipsep import audio
from clipsep.audio_io import write_wav
from clipsep.config import BEST_CHECKPOINT
from clipsep.env import headless_pyplot
from clipsep.fileio import write_bytes, write_csv
from clipsep.training.spectral import reconstruct, run_model, spectral_batch

HISTORY_FIELDS = [
    "step",
    "lr",
    "loss",
    "separation",
    "absent",
    "absent_rank",
    "neg_sdr",
    "noise_activation",
    "grad_norm",
    "val_loss_image",
    "val_loss_text",
    "val_sdr",
]


def write_reports(
    trainer, data, state, out_dir: Path, *, session_steps: int, session_seconds: float
) -> dict[str, Any]:
    """Write history, curves, examples and summary; return the summary."""
    out_dir = Path(out_dir)
    write_history(state.history, out_dir / "history.csv")
    plot_curves(state.history, out_dir / "curves.png")
    examples = write_examples(trainer, data, out_dir / BEST_CHECKPOINT, out_dir / "examples")
    summary = _summary(trainer, data, state, session_steps, session_seconds, examples)
    write_bytes(out_dir / "summary.json", json.dumps(summary, indent=2).encode())
    return summary


def write_history(history: list[dict], path: Path) -> None:
    """``history.csv``: one row per step; empty cells where a value was not measured (the csv
    module writes None and a missing key as an empty cell)."""
    write_csv(path, HISTORY_FIELDS, history, extrasaction="ignore")


def plot_curves(history: list[dict], path: Path) -> None:
    """``curves.png``: loss per step (+ validation losses) and validation SDR."""
    plt = headless_pyplot()

    fig, (ax_loss, ax_sdr) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    steps = [r["step"] for r in history]
    ax_loss.plot(steps, [r["loss"] for r in history], color="0.6", lw=1, label="train loss")
    for key, colour, label in (
        ("val_loss_image", "tab:blue", "val loss (image query)"),
        ("val_loss_text", "tab:orange", "val loss (text query)"),
    ):
        points = [(r["step"], r[key]) for r in history if r.get(key) is not None]
        if points:
            ax_loss.plot(*zip(*points), "o-", color=colour, label=label)
    ax_loss.set(xlabel="step", ylabel="weighted BCE", title="Loss")
    ax_loss.legend(frameon=False)
    sdr = [(r["step"], r["val_sdr"]) for r in history if r.get("val_sdr") is not None]
    if sdr:
        ax_sdr.plot(*zip(*sdr), "o-", color="tab:green")
    ax_sdr.set(xlabel="step", ylabel="dB", title="Validation SDR (soft mask, image query)")
    for ax in (ax_loss, ax_sdr):
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


@torch.no_grad()
def write_examples(trainer, data, checkpoint: Path, folder: Path) -> list[str]:
    """Separate the first validation mixtures with ``checkpoint``; write wavs and spectrograms."""
    from clipsep.model.factory import load_checkpoint

    params, device = trainer.params, trainer.device
    count = min(params.train.examples, data.val_batch.sources.shape[0])
    if count == 0 or not checkpoint.is_file():
        return []
    model, _ = load_checkpoint(checkpoint, device)
    shutil.rmtree(folder, ignore_errors=True)  # no stale examples from an earlier run
    sources = data.val_batch.sources[:count].to(device)
    spec = spectral_batch(sources, params)
    queries = data.val_batch.queries[:count, :1].to(device)  # query: the first source only
    masks, _ = run_model(model, spec.mix_warped, queries, model.cfg.depth, False, with_noise=False)
    estimates = reconstruct(torch.sigmoid(masks.float()), spec.mix_spec, params)[:, 0]
    written = []
    for i in range(count):
        target = folder / f"{i:02d}"
        waves = {"mixture": sources[i].sum(0), "estimate": estimates[i], "reference": sources[i, 0]}
        for name, wave in waves.items():
            write_wav(target / f"{name}.wav", wave.float().cpu().numpy(), params.audio.sample_rate)
        plot_spectrograms(
            waves, params, target / "spectrogram.png", title=" + ".join(data.val_batch.clip_ids[i])
        )
        written.append(str(target))
    return written


def plot_spectrograms(waves: dict[str, torch.Tensor], params, path: Path, title: str) -> None:
    """Side-by-side log spectrograms (dB, shared colour scale) of the given waveforms."""
    plt = headless_pyplot()

    mags = {k: audio.stft(w.float().cpu()[None], params.audio).abs()[0] for k, w in waves.items()}
    peak = max(float(m.max()) for m in mags.values()) + 1e-10
    seconds = params.audio.segment_samples / params.audio.sample_rate
    fig, axes = plt.subplots(
        1, len(mags), figsize=(4 * len(mags), 3.4), sharey=True, constrained_layout=True
    )
    for ax, (name, mag) in zip(np.atleast_1d(axes), mags.items()):
        db = 20 * torch.log10(mag / peak + 1e-6).numpy()
        image = ax.imshow(
            db,
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=-80,
            vmax=0,
            extent=(0, seconds, 0, params.audio.sample_rate / 2000),
        )
        ax.set(title=name, xlabel="time (s)")
    np.atleast_1d(axes)[0].set_ylabel("frequency (kHz)")
    fig.colorbar(image, ax=axes, label="dB")
    fig.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def _summary(
    trainer, data, state, session_steps: int, session_seconds: float, examples: list[str]
) -> dict[str, Any]:
    validations = [r for r in state.history if r.get("val_loss_image") is not None]
    last_val = validations[-1] if validations else {}
    return {
        "steps": state.step,
        "final_loss": state.history[-1]["loss"] if state.history else None,
        "best_step": state.best_step,
        "best_val_loss_image": state.best_loss if validations else None,
        "final_val_loss_image": last_val.get("val_loss_image"),
        "final_val_loss_text": last_val.get("val_loss_text"),  # None: val clips have no labels
        "final_val_sdr": last_val.get("val_sdr"),
        "seconds_per_step": state.seconds / state.step if state.step else None,
        "train_seconds": state.seconds,
        "session_steps": session_steps,
        "session_seconds": session_seconds,
        "train_clips": len(data.train_clips),
        "val_mixtures": int(data.val_batch.sources.shape[0]),
        "device": trainer.device,
        "precision": trainer.precision,
        "precision_reason": trainer.precision_choice.reason,
        "channels_last": trainer.channels_last,  # resolved (train.channels_last null: auto)
        "preset": trainer.params.model.preset,
        "nit": trainer.params.model.nit,
        "mask_target": trainer.params.train.mask_target,
        "examples": examples,
    }
