"""The pipeline's stages: one function each, ``(params) -> summary dict``.

This is the only module that knows the on-disk layout (through ``params.path(...)``). ``dvc.yaml``
calls these through the CLI (``clipsep <stage>``) and the Prefect flow ``train-clipsep`` calls the
same functions, so a stage's logic lives once. Each stage imports its library lazily: the CLI starts
fast and ``import clipsep.stages`` has no side effects.

Layout (``paths`` section of params.yaml):
    world/       videos/{train,val,test,interference}/*.mp4, captions/{images/,captions.csv},
                 ground_truth.csv (labels; only evaluation reads it)
    clips/       audio/<clip_id>.wav, frames/<clip_id>/000001.jpg..., manifest.csv,
                 quarantine.csv, summary.json
    validation/  result.json, report.md, report.html
    clip_model/  open_clip checkpoint (clip.pt) + config JSON + zero-shot report
    checkpoints/ last.pt, best.pt, history.csv, curves.png, examples/, summary.json
    evaluation/  metrics.json, per_item.csv, plots (*.png)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from clipsep.config import Params

# Which params sections each stage reads: dvc.yaml declares exactly these (a test checks it).
STAGE_PARAMS: dict[str, list[str]] = {
    "world": ["world"],
    "ingest": ["ingest"],
    "validate": ["validate"],
    "pretrain-clip": ["clip"],
    "train": ["clip", "audio", "model", "train"],
    "evaluate": ["clip", "audio", "eval"],
    "register": ["registry"],
}


def world(p: Params) -> dict[str, Any]:
    """Render the embedded world (videos + captioned pictures + ground truth) into paths.world."""
    from clipsep.data.world import render_world

    return render_world(p.world, p.path("world"))


def ingest_source(p: Params) -> Path:
    """The video folder that ``ingest`` reads: ingest.source, or the embedded world's videos."""
    if p.ingest.source is None:
        return p.path("world") / "videos"
    source = Path(p.ingest.source)
    return source if source.is_absolute() else Path(p.path("root")) / source


def ingest(p: Params) -> dict[str, Any]:
    """Turn the source video folder into clips + manifest + quarantine list under paths.clips."""
    from clipsep.data.ingest import ingest_folder

    labels = None
    if p.ingest.labels_csv:  # like ingest.source: relative to paths.root
        labels = Path(p.ingest.labels_csv)
        labels = labels if labels.is_absolute() else Path(p.path("root")) / labels
    return ingest_folder(ingest_source(p), p.path("clips"), p.ingest, labels_csv=labels)


def validate(p: Params) -> dict[str, Any]:
    """Run the Great Expectations gate over the manifest; raises ValidationFailed on bad data."""
    from clipsep.data.validation import validate_clips

    return validate_clips(p.path("clips"), p.path("validation"), p.validate)


def pretrain_clip(p: Params) -> dict[str, Any]:
    """Train the world's tiny open_clip on its captioned pictures (embedded world only)."""
    from clipsep.model.pretrain_clip import pretrain_clip as run

    return run(p.clip, p.path("world"), p.path("clip_model"))


def train(p: Params) -> dict[str, Any]:
    """Mix-and-separate training (with NIT when model.nit) from the ingested clips."""
    from clipsep.training.loop import train as run

    live = None
    if p.registry.live_tracking:  # the MLflow run opens now and fills as training goes
        from clipsep.live_run import open_run

        def live(resuming: bool):
            return open_run(p, resuming)
    return run(p, p.path("clips"), p.path("checkpoints"), live)


def evaluate(p: Params) -> dict[str, Any]:
    """Evaluate the best checkpoint on the test protocol; writes metrics.json and plots."""
    from clipsep.evaluation.evaluate import evaluate as run

    return run(p, p.path("checkpoints") / "best.pt", p.path("evaluation"))


def register(p: Params) -> dict[str, Any]:
    """Log the run to MLflow, register the evaluated model, gate it to champion or challenger."""
    from clipsep.tracking import register as run

    return run(p)


STAGES: dict[str, Callable[[Params], dict[str, Any]]] = {
    "world": world,
    "ingest": ingest,
    "validate": validate,
    "pretrain-clip": pretrain_clip,
    "train": train,
    "evaluate": evaluate,
    "register": register,
}
