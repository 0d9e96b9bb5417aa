"""Small but real pipeline outputs for the tracking/registry tests (no training run needed).

``write_pipeline_outputs`` writes what the register stage reads: a real tiny separator checkpoint
(clipsep.model.factory) whose CLIP reference points at a local weights file, metrics.json in the
evaluation contract's shape, a clip manifest, history.csv, curves.png and an example wav + png.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from clipsep.config import Params
from clipsep.data.ingest import MANIFEST_COLUMNS
from clipsep.env import headless_pyplot


def write_manifest(p: Params, n_clips: int = 4, salt: str = "") -> Path:
    """A manifest.csv + the wavs it names; ``salt`` changes the data version."""
    clips = p.path("clips")
    (clips / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for index in range(n_clips):
        clip_id = f"c{index:04d}"
        sf.write(
            clips / "audio" / f"{clip_id}.wav",
            (0.1 * rng.standard_normal(p.audio.sample_rate)).astype("float32"),
            p.audio.sample_rate,
        )
        rows.append(
            [
                clip_id,
                f"train/v{index}.mp4",
                f"sha{index}{salt}",
                "train",
                0.0,
                1.0,
                f"audio/{clip_id}.wav",
                f"frames/{clip_id}",
                1,
                p.audio.sample_rate,
                -20.0,
                p.world.classes[index % len(p.world.classes)],
            ]
        )
    with open(clips / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    return clips / "manifest.csv"


def save_random_clip(p: Params, path: Path) -> Path:
    """An open_clip-loadable weights file of the (randomly initialised) tiny CLIP; ~25 MB, once."""
    from clipsep.model.query import QueryEncoder

    encoder = QueryEncoder.from_config(p.clip, None, "cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": encoder.model.state_dict()}, path)
    return path


def write_checkpoint(p: Params, clip_weights: Path, seed: int = 0) -> Path:
    """A real tiny separator checkpoint + a (hard-linked) CLIP weights file it references."""
    from clipsep.model.factory import build_model, save_checkpoint
    from clipsep.model.query import bundled_config

    config = bundled_config(p.clip.architecture)
    clip_file = p.path("clip_model") / "clip.pt"
    clip_file.parent.mkdir(parents=True, exist_ok=True)
    clip_file.unlink(missing_ok=True)
    os.link(clip_weights, clip_file)
    query = {
        "architecture": p.clip.architecture,
        "model_config": config,
        "pretrained": str(clip_file),
        "prompt_templates": list(p.clip.prompt_templates),
        "embed_dim": config["embed_dim"],
    }
    torch.manual_seed(seed)
    model = build_model(p.model, config["embed_dim"])
    return save_checkpoint(
        p.path("checkpoints") / "best.pt",
        model,
        model_cfg=p.model,
        audio_cfg=p.audio,
        query=query,
        extra={"step": 4},
    )


def write_metrics(p: Params, text_sdr: float) -> Path:
    """metrics.json in the shape of CONTRACTS.md "Evaluation"."""

    def stats(mean: float) -> dict:
        return {"mean": mean, "sem": 0.1, "median": mean}

    metrics = {
        "text": {
            "sdr": stats(text_sdr),
            "sir": stats(text_sdr + 3),
            "sar": stats(9.0),
            "si_sdr": stats(text_sdr - 1),
            "sdri": stats(text_sdr + 2),
        },
        "image": {"sdr": stats(text_sdr - 0.5)},
        "oracle_ibm": {"sdr": stats(12.0)},
        "mixture": {"sdr": stats(-2.0)},
        "absent_query": {"energy_db": stats(-9.0)},
        "per_class": {"cello": {"sdr": stats(text_sdr)}},
        "n_mixtures": 4,
        "backend": "museval v4",
        "inference": {"precision": "fp32", "precision_reason": "fp32 as requested", "cpu": "Test"},
    }
    checkpoint = p.path("checkpoints") / "best.pt"
    if checkpoint.is_file():  # what the evaluate stage records: register checks it
        from clipsep.evaluation.evaluate import checkpoint_identity

        metrics["checkpoint"] = checkpoint_identity(checkpoint)
    out = p.path("evaluation") / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics))
    return out


def write_training_outputs(p: Params) -> None:
    """history.csv (validation every 2 steps), curves.png, one example mixture wav + png."""
    plt = headless_pyplot()

    out = p.path("checkpoints")
    (out / "examples").mkdir(parents=True, exist_ok=True)
    with open(out / "history.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "train_loss", "lr", "val_loss", "val_sdr"])
        for step in range(1, 5):
            val = [0.5 / step, 1.0 * step] if step % 2 == 0 else ["", ""]
            writer.writerow([step, 1.0 / step, 0.001, *val])
    figure, axis = plt.subplots(figsize=(3, 2))
    axis.plot([1, 2, 3, 4], [1.0, 0.5, 0.33, 0.25])
    figure.savefig(out / "curves.png")
    (out / "examples" / "00").mkdir(exist_ok=True)
    figure.savefig(out / "examples" / "00" / "spectrogram.png")
    plt.close(figure)
    sf.write(
        out / "examples" / "00" / "mixture.wav",
        0.1 * np.random.default_rng(1).standard_normal(p.audio.sample_rate).astype("float32"),
        p.audio.sample_rate,
    )


def write_pipeline_outputs(p: Params, text_sdr: float, clip_weights: Path, seed: int = 0) -> None:
    """Everything ``clipsep register`` reads, under the params' paths."""
    write_manifest(p)
    write_checkpoint(p, clip_weights, seed)
    write_metrics(p, text_sdr)
    write_training_outputs(p)
