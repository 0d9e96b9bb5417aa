"""The pipeline's stages: one function each, ``(params) -> summary dict``.

This is the only module that knows the on-disk layout (through ``params.path(...)``). ``dvc.yaml``
calls these through the CLI (``clipsep <stage>``) and the Prefect flow ``train-clipsep`` calls the
same functions, so a stage's logic lives once. Each stage imports its library lazily: the CLI starts
fast and ``import clipsep.stages`` has no side effects.

:func:`run_stage` runs one stage and leaves a record of it next to its outputs
(:mod:`clipsep.stage_record`); with ``skip_unchanged`` it skips a stage whose params sections,
library code and input files are unchanged since its last successful run (the flow does this; DVC
keeps its own skip logic over the same declarations: ``STAGE_PARAMS``, ``STAGE_CODE`` and
:func:`stage_inputs`, which ``dvc.yaml`` mirrors and tests/test_pipeline_contract.py checks).

Layout (``paths`` section of params.yaml):
    world/       videos/{train,val,test,interference}/*.mp4, captions/{images/,captions.csv},
                 ground_truth.csv (labels; only evaluation reads it)
    clips/       audio/<clip_id>.wav, frames/<clip_id>/000001.jpg..., manifest.csv,
                 quarantine.csv, summary.json
    validation/  result.json, report.md, report.html
    clip_model/  open_clip checkpoint (clip.pt) + config JSON + zero-shot report
    checkpoints/ last.pt, best.pt, history.csv, curves.png, examples/, summary.json
    evaluation/  metrics.json, per_item.csv, plots (*.png); a pass into another checkpoints
                 folder than params.yaml's gets its own (clipsep.config.load_params)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from clipsep import stage_record
from clipsep.config import BEST_CHECKPOINT, Params
from clipsep.env import process_rank
from clipsep.errors import BadInputError

log = logging.getLogger("clipsep")

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
# The paths.* each stage reads or writes besides its checkpoints folder (whose run it is: another
# folder has its own run): a pass continued with another of them would show the first value in
# MLflow, so a change opens a new run (clipsep.live_run.open_run's ``reads``)
STAGE_PATHS: dict[str, list[str]] = {
    "world": ["world"],
    "ingest": ["world", "clips"],
    "validate": ["clips", "validation"],
    "pretrain-clip": ["world", "clip_model"],
    "train": ["clips", "validation", "clip_model"],
    "evaluate": ["world", "clips", "clip_model", "evaluation"],
    "register": ["evaluation"],
}
# The library code each stage runs (relative to the clipsep package): dvc.yaml's code deps.
STAGE_CODE: dict[str, list[str]] = {
    "world": ["data/world.py", "data/world_pictures.py", "data/world_sound.py"],
    "ingest": ["data/ingest.py", "data/media.py"],
    "validate": ["data/validation.py"],
    "pretrain-clip": ["model/pretrain_clip.py", "model/query.py"],
    "train": ["training", "model", "audio.py", "data/mixing.py"],
    "evaluate": ["evaluation", "inference.py"],
    "register": [
        "tracking.py",
        "registry_reader.py",
        "registry_model.py",
        "live_run.py",
        "run_owner.py",
    ],
}
# The `paths` folder each stage writes (its record lives there); register writes to the MLflow
# store, so its record lives beside the evaluation it registered.
STAGE_OUTPUTS: dict[str, str | None] = {
    "world": "world",
    "ingest": "clips",
    "validate": "validation",
    "pretrain-clip": "clip_model",
    "train": "checkpoints",
    "evaluate": "evaluation",
    "register": None,
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

    labels = _under_root(p, p.ingest.labels_csv)  # like ingest.source: relative to paths.root
    return ingest_folder(ingest_source(p), p.path("clips"), p.ingest, labels_csv=labels)


def _under_root(p: Params, value: str | None) -> Path | None:
    """A params file path (relative to paths.root), or None when unset."""
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else Path(p.path("root")) / path


def validate(p: Params) -> dict[str, Any]:
    """Run the Great Expectations gate over the manifest; stops the pipeline on bad data.

    Raises ValidationFailed (the failing expectations listed) when the data fails the gate."""
    from clipsep.data.validation import validate_clips

    return validate_clips(p.path("clips"), p.path("validation"), p.validate)


def pretrain_clip(p: Params) -> dict[str, Any]:
    """Train the world's tiny open_clip on its captioned pictures (embedded world only)."""
    from clipsep.model.pretrain_clip import pretrain_clip as run

    return run(p.clip, p.path("world"), p.path("clip_model"))


def train(p: Params) -> dict[str, Any]:
    """Mix-and-separate training (with NIT when model.nit) from the ingested clips."""
    from clipsep.training.loop import train as run

    return run(p, p.path("clips"), p.path("checkpoints"))


def evaluate(p: Params) -> dict[str, Any]:
    """Evaluate the best checkpoint on the test protocol; writes metrics.json and plots."""
    from clipsep.evaluation.evaluate import evaluate as run

    return run(p, p.path("checkpoints") / BEST_CHECKPOINT, p.path("evaluation"))


def register(p: Params) -> dict[str, Any]:
    """Log the run to MLflow, register the evaluated model, gate it to champion or challenger."""
    from clipsep.tracking import register as run

    return run(p)


def _train_live(p: Params, opened: list, in_process: bool) -> dict[str, Any]:
    """``train`` logging into the pipeline's MLflow run as it goes (continued when resuming);
    ``opened`` receives the run's handle."""
    from clipsep.live_run import open_run
    from clipsep.training.loop import train as run

    def live(resuming: bool):
        opened.append(open_run(p, "train", resuming, in_process, stage_reads("train")))
        opened[-1].watch_system(p.registry.system_metrics_s)
        return opened[-1]

    return run(p, p.path("clips"), p.path("checkpoints"), live)


def _run_tracked(stage: str, p: Params, in_process: bool) -> dict[str, Any]:
    """Run ``stage`` inside the pipeline's MLflow run (:mod:`clipsep.live_run`): opened or
    continued before it, its summary logged after it; a stage that raises ends the run FAILED
    (an interruption, :data:`clipsep.errors.INTERRUPTS`: KILLED) with the error as the
    reason. ``in_process``: see :func:`run_stage`."""
    from clipsep.live_run import close_registered, end_status, note_skipped, open_run
    from clipsep.tracking import check_registration
    from clipsep.tracking import register as register_run

    opened: list = []
    try:
        if stage == "train":  # training opens the run itself, once it knows if it resumes
            summary = _train_live(p, opened, in_process)
            if not opened:  # already complete: no session to log (clipsep.training.loop)
                note_skipped(p, stage)
                return summary
        else:
            if stage == "register":  # asked once: a checkpoint registered already opens no run
                checked = check_registration(p)
                if checked.existing is not None:  # the pass's open run is closed (or deleted)
                    existing = checked.existing
                    close_registered(p, existing, existing["reason"], checked.repeats)
                    return existing
            opened.append(open_run(p, stage, in_process=in_process, reads=stage_reads(stage)))
            if stage == "register":  # logs the evaluation and closes the run FINISHED
                summary = register_run(p, opened[0].run_id, checked)
            else:
                summary = STAGES[stage](p)
    except BaseException as err:
        if opened and stage != "train":  # training ends its run itself (clipsep.training.loop)
            opened[0].end(end_status(err), f"{stage}: {type(err).__name__}: {err}")
        raise
    opened[-1].finish_stage(summary)
    return summary


STAGES: dict[str, Callable[[Params], dict[str, Any]]] = {
    "world": world,
    "ingest": ingest,
    "validate": validate,
    "pretrain-clip": pretrain_clip,
    "train": train,
    "evaluate": evaluate,
    "register": register,
}


def stage_reads(stage: str) -> list[str]:
    """What ``stage`` reads, as params sections and ``paths.*`` keys (STAGE_PARAMS, STAGE_PATHS):
    a pass continued with another value of one of them opens a new MLflow run."""
    return STAGE_PARAMS[stage] + [f"paths.{name}" for name in STAGE_PATHS[stage]]


def stage_inputs(stage: str, p: Params) -> list[Path]:
    """The data files and folders ``stage`` reads (dvc.yaml's data deps for the default params)."""
    clips, world, evaluation = p.path("clips"), p.path("world"), p.path("evaluation")
    clip_model = [p.path("clip_model")] if p.clip.pretrained is None else _clip_file(p)
    listed = {
        "world": [],
        "ingest": [ingest_source(p)],
        "validate": [clips],
        "pretrain-clip": [world / "captions"],
        "train": [clips, p.path("validation") / "result.json", *clip_model],
        "evaluate": [world, clips, *clip_model, p.path("checkpoints")],
        "register": [p.path("checkpoints"), evaluation / "metrics.json"],
    }[stage]
    return listed + list(named_inputs(stage, p).values())


NAMED_INPUTS = {  # params that name a file a stage reads (unset: the stage does without)
    "ingest": ("ingest.labels_csv",),
    "evaluate": ("eval.targets_csv", "eval.interference_csv"),
}


def named_inputs(stage: str, p: Params) -> dict[str, Path]:
    """The files ``stage``'s params name and it reads, by params key (set ones only; relative
    paths are under paths.root)."""
    named = {}
    for key in NAMED_INPUTS.get(stage, ()):
        section, name = key.split(".")
        value = getattr(getattr(p, section), name)
        if value:
            named[key] = _under_root(p, value)
    return named


def check_named_inputs(stage: str, p: Params) -> None:
    """BadInputError (one line) naming the params key of the first file ``stage`` reads that is
    missing: ``ingest.source`` (a folder), :func:`named_inputs`; checked before the stage opens an
    MLflow run."""
    if stage == "ingest":
        _check_source(p)
    for key, path in named_inputs(stage, p).items():
        _check_file(key, path)


def check_pipeline_inputs(p: Params) -> None:
    """Before a pipeline's first stage (the flow): every file its params name that no stage
    makes (``ingest.source`` when set, each stage's :func:`named_inputs`), so that a typo fails
    in a second, not after the stages before the one that reads it."""
    if p.ingest.source is not None:
        _check_source(p)
    for stage in STAGES:
        for key, path in named_inputs(stage, p).items():
            _check_file(key, path)


def _check_source(p: Params) -> None:
    source = ingest_source(p)
    if source.is_dir():
        return
    if p.ingest.source is None:
        raise BadInputError(f"no world videos at {source}: run `clipsep world` first")
    raise BadInputError(f"ingest.source {source} is not a folder")


def _check_file(key: str, path: Path) -> None:
    if path.is_dir():
        raise BadInputError(f"{key} {path} is a folder, not a file")
    if not path.is_file():
        raise BadInputError(f"{key} {path} not found (relative paths are under paths.root)")


def _clip_file(p: Params) -> list[Path]:
    """clip.pretrained as a local file or folder ([] for an open_clip tag)."""
    path = Path(str(p.clip.pretrained).removeprefix("local-dir:")).expanduser()
    return [path.resolve()] if path.exists() else []


def stage_fingerprint(stage: str, p: Params) -> stage_record.Fingerprint:
    """What ``stage`` reads: its params sections, its library code, its input files."""
    package = Path(__file__).parent
    sections = p.to_dict()
    return stage_record.fingerprint(
        params={name: sections[name] for name in STAGE_PARAMS[stage]},
        code={name: package / name for name in STAGE_CODE[stage]},
        inputs={str(path): path for path in stage_inputs(stage, p)},
    )


def record_folder(stage: str, p: Params) -> Path:
    """Where ``stage`` leaves its record: its output folder (register: the evaluation's)."""
    return p.path(STAGE_OUTPUTS[stage] or "evaluation")


@dataclass(frozen=True)
class StageRun:
    """One stage of a pipeline run: its summary, whether it was skipped, and why."""

    stage: str
    summary: dict[str, Any]
    skipped: bool
    fingerprint: str  # the first 12 hex digits
    reason: str  # "unchanged", or why it ran
    seconds: float  # wall time of this call (the stage, or the check that skipped it)


def run_stage(
    stage: str, p: Params, skip_unchanged: bool = False, in_process: bool = True
) -> StageRun:
    """Run ``stage`` and record it; with ``skip_unchanged``, skip it when its fingerprint and
    outputs match the record of its last successful run (its recorded summary is returned).

    ``in_process``: this process drives the pipeline (the flow, a Python program), so the
    pipeline's MLflow run is left to it between stages; the ``clipsep <stage>`` command passes
    False: its caller drives (dvc, or a person; :func:`clipsep.run_owner.pipeline_driver`).

    Raises BadInputError before any work (no MLflow run opened, nothing hashed) when a file the
    stage cannot start without is missing (:func:`clipsep.stage_record.check_ready`,
    :func:`check_named_inputs`), else
    whatever the stage raises (no record is written then). A stage that found its work done
    (``already_complete``: a training at ``train.steps``) keeps the record of the run that did
    it (its seconds, its MLflow run id), updating only the fingerprint and outputs identity
    (:func:`clipsep.stage_record.keep_record`). Under torchrun a rank other than 0 runs the stage
    beside rank 0 (DDP training) and returns its summary untracked and unrecorded: rank 0 logs
    the MLflow run and writes the record.
    """
    start = time.perf_counter()
    stage_record.check_ready(stage, p)
    check_named_inputs(stage, p)
    fp = stage_fingerprint(stage, p)
    folder = record_folder(stage, p)
    outputs = p.path(STAGE_OUTPUTS[stage]) if STAGE_OUTPUTS[stage] else None
    reason = "forced"
    if skip_unchanged:
        summary, reason = stage_record.compare(folder, stage, fp, outputs)
        if summary is not None and stage == "register":
            summary, reason = _registered_still(p, summary)
        if summary is not None:
            log.info(
                "%s: inputs unchanged since the last run (fingerprint %s), skipped", stage, fp.short
            )
            if p.registry.live_tracking:
                _note_skipped(stage, p, summary)
            return StageRun(stage, summary, True, fp.short, reason, time.perf_counter() - start)
        log.info("%s: %s (fingerprint %s), running", stage, reason, fp.short)
    rank = process_rank()
    if rank != 0:  # under torchrun: this rank trains beside rank 0, which tracks and records
        summary = STAGES[stage](p)
        seconds = time.perf_counter() - start
        return StageRun(stage, summary, False, fp.short, f"rank {rank}", seconds)
    tracked = p.registry.live_tracking
    summary = _run_tracked(stage, p, in_process) if tracked else STAGES[stage](p)
    if stage == "register":
        warm_serving_cache(p)
    seconds = time.perf_counter() - start
    if summary.get("already_complete"):  # did nothing: the record of the run that trained stays
        stage_record.keep_record(folder, stage, fp, outputs, summary, seconds)
    else:
        stage_record.write_record(folder, stage, fp, outputs, summary, seconds)
    return StageRun(stage, summary, False, fp.short, reason, seconds)


def warm_serving_cache(p: Params) -> None:
    """After ``register``: resolve the model ``clipsep separate`` serves by default
    (``separate.model``, e.g. ``models:/clipsep@champion``) into the model cache and embed the
    world's class names into its text-embedding cache, as the CLI would. The first ``clipsep
    separate reports/evaluation/example/mixture.wav --query cello`` after a run (the command a
    run ends by printing: the evaluation's example and a class of the world) then
    neither imports mlflow nor builds the CLIP text tower: 2.1 s instead of 6.7-6.9 s for a 10-s
    file (AMD EPYC Zen 2). A checkpoint-path ``separate.model`` is left alone, and a failure (no
    champion yet, a cache that cannot be written) is logged, not raised: the caches only save
    time, and every ``clipsep separate`` fills them itself."""
    import dataclasses

    from clipsep.errors import ClipsepError
    from clipsep.registry_reader import is_registry_reference, registry_uri

    if not is_registry_reference(p.separate.model):
        return
    from clipsep.inference import Separator

    try:
        separator = Separator.from_pretrained(
            p.separate.model,
            device=p.separate.device,
            # the text cache's key has no engine: no ONNX export or quantisation needed here
            settings=dataclasses.replace(p.separate, engine="torch"),
            tracking_uri=registry_uri(p),
            root=p.path("root"),
        )
        for query in p.world.classes:
            separator.embed_query(query)
    except (ClipsepError, OSError) as err:
        log.info("the serving caches were not warmed for %s: %s", p.separate.model, err)
        return
    log.info(
        "%s is cached for clipsep separate, with the text queries %s",
        p.separate.model,
        ", ".join(p.world.classes),
    )


def _note_skipped(stage: str, p: Params, summary: dict[str, Any]) -> None:
    """Tell the pass's open MLflow run that ``stage`` was skipped; a skipped ``register`` (its
    inputs, the evaluation included, are those of the registration it recorded) closes it."""
    from clipsep.live_run import close_registered, note_skipped

    if stage != "register":
        note_skipped(p, stage)
        return
    reason = "its inputs are unchanged since their model was registered"
    close_registered(p, summary, reason, repeats=True)


def _registered_still(p: Params, summary: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """A recorded registration stands only while its model version is in the store."""
    from clipsep.registry_reader import RegistryError, tracking_uri, version_from_run

    name, version = summary.get("model_name"), summary.get("version")
    try:
        if version_from_run(tracking_uri(p), str(name), str(version), str(summary.get("run_id"))):
            return summary, "unchanged"
    except RegistryError as err:
        return None, f"the registry could not confirm version {version} ({err})"
    return None, f"version {version} of {name} (run {summary.get('run_id')}) is not in the store"
