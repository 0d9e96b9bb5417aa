"""MLflow tracking, the model registry and the promotion gate.

One pipeline run -> one MLflow run (params, per-step history, evaluation metrics, pictures, audio
examples, lineage tags) -> one pyfunc model version of the registered model ``registry.model_name``
whose artifacts are the self-describing separation checkpoint (plus the CLIP weights file it
refers to). The gate then gives the version the alias ``champion`` (it beats the current champion's
text-query SDR by ``registry.promotion_margin_db`` on the same evaluation protocol, or it is the
first model and clears ``registry.champion_floor_db``) or ``challenger``, with a reason.

Default backend: ``sqlite:///<paths.mlflow>/mlflow.db`` with artifacts in
``<paths.mlflow>/artifacts``;
``registry.tracking_uri`` (or ``MLFLOW_TRACKING_URI`` when resolving references) points elsewhere.
mlflow is imported lazily: importing this module is cheap and has no side effects.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import platform
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from clipsep import run_owner
from clipsep.config import BEST_CHECKPOINT, Params, RegistryConfig, folder_digest
from clipsep.errors import BadInputError
from clipsep.fileio import file_digest, write_json
from clipsep.registry_reader import (
    RegistryError,
    RegistryUnavailableError,
    lookup_version,
    quiet_artifact_transfers,
    sqlite_path,
    tracking_uri,
)
from clipsep.stage_record import check_ready

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
CHECKPOINT_TAG = "checkpoint_sha256"  # a version's (and its run's) checkpoint identity
# MLflow's INFO lines about its own housekeeping, not the user's run: creating a new store's
# tables, the system-metrics thread ("Skip logging GPU metrics. Set logger level to DEBUG for
# more details.", started, stopped), validating a registered model's input example
MLFLOW_CHATTER = ("mlflow.store.db.utils", "mlflow.system_metrics", "mlflow.pyfunc")
MAX_AUDIO_EXAMPLES = 12  # "a few playable examples": enough to listen, not a dataset copy
MAX_IMAGE_EXAMPLES = 3  # training examples' spectrograms logged as MLflow images (chart view)
PYFUNC_REQUIREMENTS = [
    "mlflow>=3.17,<3.18",
    "torch",
    "open_clip_torch",
    "soundfile",
    "pandas",
    "clipsep",
]


# --- where things go ---------------------------------------------------------------------------


def artifact_location(p: Params) -> str | None:
    """Local artifact folder for the default sqlite store; None lets a tracking server decide."""
    if p.registry.tracking_uri:
        return None
    return (p.path("mlflow") / "artifacts").as_uri()


def client_for(p: Params):
    """An MlflowClient on the params' store (tracking + registry), whatever mlflow's globals say."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(p), registry_uri=tracking_uri(p))


def connect(p: Params):
    """Point mlflow at the params' store (experiment created if needed) -> (client, exp id).

    Runs of the experiment whose owner process died on this host are ended KILLED first
    (:func:`clipsep.run_owner.end_orphans`). RegistryUnavailableError when the store cannot be
    read; RegistryError when the experiment is deleted (MLflow keeps its name until it is
    restored or purged), naming both ways out."""
    import mlflow
    from mlflow import MlflowClient

    quiet_mlflow_chatter()
    uri = tracking_uri(p)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with _first_use_lock(uri):
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            experiment = client.get_experiment_by_name(p.registry.experiment)
        except Exception as err:  # a dead server, a corrupt database: stop before logging
            raise RegistryUnavailableError.of(uri, err) from err
        if experiment is None:
            return client, client.create_experiment(
                p.registry.experiment, artifact_location=artifact_location(p)
            )
    if experiment.lifecycle_stage == "deleted":
        raise RegistryError(
            f"MLflow experiment {p.registry.experiment!r} (id {experiment.experiment_id}) is "
            f"deleted in {uri}: restore it (MLFLOW_TRACKING_URI={uri} mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}) or set registry.experiment to a new name"
        )
    run_owner.end_orphans(client, experiment.experiment_id)
    return client, experiment.experiment_id


def quiet_mlflow_chatter() -> None:
    """MLflow's :data:`MLFLOW_CHATTER` loggers at WARNING, unless the user set their level."""
    for name in MLFLOW_CHATTER:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def _first_use_lock(uri: str):
    """For the local sqlite store, an inter-process lock around opening it: MLflow creates the
    tables (and we the experiment) on first use, and two processes doing that at once fail
    ("table ... already exists", seen with two evaluations started together). A tracking server
    serialises this itself: no lock. The lock file sits beside the database."""
    database = sqlite_path(uri)
    if database is None:
        return contextlib.nullcontext()
    from filelock import FileLock

    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{database}.lock")


def run_url(p: Params, experiment_id: str, run_id: str) -> str:
    """Browser URL of a run: the tracking server's, or the documented local `mlflow ui` address."""
    base = tracking_uri(p) if tracking_uri(p).startswith("http") else "http://127.0.0.1:5000"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def ui_command(p: Params) -> str:
    """The command that opens the MLflow UI on this store (127.0.0.1 only)."""
    if tracking_uri(p).startswith("http"):
        return f"open {tracking_uri(p)}"
    return (
        f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false .venv/bin/mlflow ui --backend-store-uri "
        f"{tracking_uri(p)} --host 127.0.0.1 --port 5000 --workers 1"
    )


# --- lineage -----------------------------------------------------------------------------------


def project_root(p: Params) -> Path:
    """The folder of the params file: where git, dvc.yaml and dvc.lock live."""
    return Path(p.source_file).parent if p.source_file else Path.cwd()


def git_commit(root: Path) -> tuple[str, bool]:
    """(HEAD commit or 'unknown', whether the work tree has uncommitted changes)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    dirty = bool(commit and git("status", "--porcelain", "--untracked-files=no"))
    return (commit or "unknown"), dirty


def dvc_lock_entry(root: Path, out_path: Path) -> str | None:
    """The md5 that dvc.lock records for the stage output at ``out_path`` (None if absent)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []):
            if (root / out.get("path", "")).resolve() == out_path.resolve():
                return out.get("md5")
    return None


def data_version(p: Params) -> dict[str, str]:
    """Exact data identity: md5 of clips/manifest.csv (which holds a sha256 of every source video)
    plus the dvc.lock md5 of the clips folder when DVC produced it."""
    from clipsep.data.mixing import manifest_path  # imports torch: only where it is needed

    version = {"data_version": file_digest(manifest_path(p.path("clips")), "md5")}
    lock_md5 = dvc_lock_entry(project_root(p), p.path("clips"))
    version["dvc_lock_clips_md5"] = lock_md5 or "absent"
    return version


def system_info() -> dict[str, str]:
    """Host facts worth comparing runs by (python, torch, cpu/gpu)."""
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": str(os.cpu_count()),
        "torch": torch.__version__,
        "cuda": str(torch.cuda.is_available()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def eval_protocol(p: Params, metrics: dict[str, Any]) -> str:
    """A short hash naming the evaluation protocol: two SDRs compare only if this matches."""
    protocol = {
        "eval": p.to_dict()["eval"],
        "sample_rate": p.audio.sample_rate,
        "n_mixtures": metrics.get("n_mixtures"),
        "backend": metrics.get("backend"),
    }
    if p.eval.targets_csv is None:  # the test set is rendered from the world's params
        protocol["world"] = p.to_dict()["world"]
    protocol["eval"].pop("device", None)
    return hashlib.md5(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:12]


# --- flattening -------------------------------------------------------------------------------


def flatten_params(p: Params) -> dict[str, str]:
    """{'train.lr': '0.001', ...}: every hyperparameter and path as an MLflow param."""
    return {
        f"{section}.{key}": json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        for section, values in p.to_dict().items()
        for key, value in values.items()
    }


def flatten_metrics(tree: Any, prefix: str) -> dict[str, float]:
    """Numeric leaves of a nested dict as {'eval/text/sdr/mean': 4.2}; NaN/inf are dropped."""
    if isinstance(tree, dict):
        flat: dict[str, float] = {}
        for key, value in tree.items():
            flat.update(flatten_metrics(value, f"{prefix}/{key}".replace(" ", "_")))
        return flat
    if isinstance(tree, (int, float)) and not isinstance(tree, bool) and math.isfinite(tree):
        return {prefix: float(tree)}
    return {}


def without_per_class(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json less its ``per_class`` table: the run's metrics stay a fixed, short list
    whatever the number of classes (the table is the artifact ``evaluation/per_class.csv``)."""
    return {key: value for key, value in metrics.items() if key != "per_class"}


def per_class_csv(metrics: dict[str, Any]) -> str:
    """metrics.json's ``per_class`` table as CSV text: one row per class (``class``, ``n``, then
    ``<method>/<measure>/<statistic>`` columns, e.g. ``text/sdri/mean`` in dB); header only when
    the evaluation has no per-class table. The MLflow UI shows a .csv artifact as a table."""
    rows = [
        {
            "class": label,
            **{key.lstrip("/"): value for key, value in flatten_metrics(entry, "").items()},
        }
        for label, entry in sorted((metrics.get("per_class") or {}).items())
    ]
    columns = ["class"] + sorted({key for row in rows for key in row} - {"class"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def text_sdr(metrics: dict[str, Any]) -> float:
    """The gate's number: metrics['text']['sdr']['mean'] (CONTRACTS.md, Evaluation)."""
    try:
        value = float(metrics["text"]["sdr"]["mean"])
    except (KeyError, TypeError, ValueError) as err:
        raise BadInputError(f"metrics.json has no numeric text.sdr.mean ({err!r})") from err
    if not math.isfinite(value):
        raise BadInputError(f"metrics.json text.sdr.mean is {value}: the evaluation is broken")
    return value


def read_history(path: Path) -> list[tuple[str, float, int]]:
    """history.csv rows as (metric, value, step); empty cells (no validation that step) skipped."""
    rows: list[tuple[str, float, int]] = []
    with open(path, newline="") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            step = int(float(row.get("step") or index))
            for name, cell in row.items():
                if name == "step" or cell in (None, ""):
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    continue
                if math.isfinite(value):
                    rows.append((name, value, step))
    return rows


# --- the promotion gate ------------------------------------------------------------------------


@dataclass(frozen=True)
class GateDecision:
    """The alias a new version gets and why (also stored as version tags)."""

    alias: str
    reason: str


def absent_gap_db(metrics: dict[str, Any]) -> float | None:
    """Mean energy an absent query returns minus the right query's (dB; None if not measured).

    Very negative: the model tells absent from present. Near 0: it returns about as much of the
    mixture for a sound that is not there as for the one that is (it leaks).
    """
    try:
        absent = metrics["absent_query"]
        gap = float(absent["energy_db"]["mean"]) - float(absent["right_query_energy_db"]["mean"])
    except (KeyError, TypeError, ValueError):
        return None
    return gap if math.isfinite(gap) else None


def decide_alias(
    new_sdr: float,
    champion: dict[str, str] | None,
    protocol: str,
    cfg: RegistryConfig,
    absent_gap: float | None = None,
) -> GateDecision:
    """Pure gate: champion tags (text_sdr, eval_protocol, version) or None -> decision.

    ``absent_gap`` (:func:`absent_gap_db`) above ``-cfg.absent_margin_db`` keeps a model
    challenger whatever its SDR: it leaks.
    """
    if absent_gap is not None and absent_gap > -cfg.absent_margin_db:
        return GateDecision(
            CHALLENGER,
            f"leaks: an absent query returns {absent_gap:+.2f} dB "
            "relative to the right query's output; the gate wants "
            f"at most {-cfg.absent_margin_db:+.2f} dB",
        )
    if champion is None:
        if new_sdr >= cfg.champion_floor_db:
            return GateDecision(
                CHAMPION,
                f"first model: text SDR {new_sdr:.2f} dB clears the "
                f"floor {cfg.champion_floor_db:.2f} dB",
            )
        return GateDecision(
            CHALLENGER,
            f"no champion yet, but text SDR {new_sdr:.2f} dB is below "
            f"the floor {cfg.champion_floor_db:.2f} dB",
        )
    old_version = champion.get("version", "?")
    if champion.get("eval_protocol") != protocol:
        return GateDecision(
            CHALLENGER,
            f"champion v{old_version} was evaluated with protocol "
            f"{champion.get('eval_protocol')}, this model with "
            f"{protocol}: SDRs are not comparable; promote by hand "
            "after re-evaluating",
        )
    old_sdr = float(champion["text_sdr"])
    gain = new_sdr - old_sdr
    verdict = (
        f"text SDR {new_sdr:.2f} dB vs champion v{old_version} {old_sdr:.2f} dB "
        f"(gain {gain:+.2f} dB, margin {cfg.promotion_margin_db:.2f} dB)"
    )
    if gain > cfg.promotion_margin_db:
        return GateDecision(CHAMPION, f"beats the champion: {verdict}")
    return GateDecision(CHALLENGER, f"does not beat the champion by the margin: {verdict}")


def champion_tags(client, model_name: str) -> dict[str, str] | None:
    """Tags of the current champion version (plus its number), or None when there is none.

    A store that cannot be read raises RegistryUnavailableError: it is never "no champion" (that
    would promote a new model over the existing one).
    """
    version = lookup_version(client, model_name, "alias", CHAMPION)
    if version is None:  # no registered model yet, or no champion alias
        return None
    return {**version.tags, "version": str(version.version)}


def apply_gate(
    client,
    model_name: str,
    version: str,
    new_sdr: float,
    protocol: str,
    cfg: RegistryConfig,
    absent_gap: float | None = None,
) -> GateDecision:
    """Decide against the current champion, set the alias and record the decision as tags."""
    decision = decide_alias(new_sdr, champion_tags(client, model_name), protocol, cfg, absent_gap)
    client.set_registered_model_alias(model_name, decision.alias, version)
    client.set_model_version_tag(model_name, version, "gate_decision", decision.alias)
    client.set_model_version_tag(model_name, version, "gate_reason", decision.reason)
    log.info("model %s v%s -> %s: %s", model_name, version, decision.alias, decision.reason)
    return decision


# --- logging one pipeline run ------------------------------------------------------------------


def log_history(client, run_id: str, history_csv: Path) -> int:
    """Per-step training/validation metrics from history.csv; returns how many were logged."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(name, value, now, step) for name, value, step in read_history(history_csv)]
    for start in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics per call
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    return len(metrics)


def _log_files(client, run_id: str, files: list[Path], base: Path, artifact_path: str) -> int:
    """Log files keeping their folders below ``base`` (examples/00/ stays apart from 01/)."""
    for path in files:
        relative = path.parent.relative_to(base).as_posix()
        target = artifact_path if relative == "." else f"{artifact_path}/{relative}"
        client.log_artifact(run_id, str(path), artifact_path=target)
    return len(files)


def log_training_outputs(
    client, run_id: str, p: Params, with_history: bool = True
) -> dict[str, int]:
    """History as metrics (unless logged live), pictures (curves, spectrograms, evaluation
    plots), a few wav examples, and the spectrograms again as MLflow images
    (:func:`log_spectrogram_images`). Returns how many of each were logged."""
    checkpoints, evaluation = p.path("checkpoints"), p.path("evaluation")
    counts = {"history_values": 0}
    if not with_history:
        pass
    elif (checkpoints / "history.csv").is_file():
        counts["history_values"] = log_history(client, run_id, checkpoints / "history.csv")
    else:
        log.warning("no %s: the run has no per-step metrics", checkpoints / "history.csv")
    wanted = {
        "training": (
            checkpoints,
            [checkpoints / n for n in ("history.csv", "curves.png", "summary.json")],
        ),
        "examples": (
            checkpoints / "examples",
            sorted((checkpoints / "examples").glob("**/*.png"))
            + sorted((checkpoints / "examples").glob("**/*.wav"))[:MAX_AUDIO_EXAMPLES],
        ),
        "evaluation": (
            evaluation,
            sorted(f for f in evaluation.glob("*") if f.suffix in (".json", ".csv", ".png", ".md")),
        ),
        "validation": (
            p.path("validation"),
            [p.path("validation") / n for n in ("report.md", "result.json")],
        ),
        "clip": (
            p.path("clip_model"),
            [p.path("clip_model") / n for n in ("zero_shot.json", "loss.png")],
        ),
    }
    for name, (base, files) in wanted.items():
        counts[name] = _log_files(client, run_id, [f for f in files if f.is_file()], base, name)
    counts["images"] = log_spectrogram_images(client, run_id, p)
    return counts


def spectrogram_pictures(p: Params) -> dict[str, Path]:
    """The spectrogram pictures worth comparing across runs, by MLflow image key: the
    evaluation's example (``evaluation/example``: mixture, true target, text-query and oracle
    estimates) and the first MAX_IMAGE_EXAMPLES training examples (``examples/<i>/spectrogram``:
    mixture, estimate, reference). Only files that exist."""
    examples = sorted((p.path("checkpoints") / "examples").glob("*/spectrogram.png"))
    pictures = {"evaluation/example": p.path("evaluation") / "example.png"}
    for path in examples[:MAX_IMAGE_EXAMPLES]:
        pictures[f"examples/{path.parent.name}/spectrogram"] = path
    return {key: path for key, path in pictures.items() if path.is_file()}


def log_spectrogram_images(client, run_id: str, p: Params) -> int:
    """Log :func:`spectrogram_pictures` as MLflow images (``log_image`` with a key, at the step
    of the checkpoint that drew them, summary.json's ``best_step``): the experiment page's chart
    view puts runs' images side by side in an image grid. The same files stay plain artifacts
    too. Returns how many were logged."""
    from mlflow import Image

    try:
        summary = json.loads((p.path("checkpoints") / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    step = int(summary.get("best_step") or 0)
    pictures = spectrogram_pictures(p)
    for key, path in pictures.items():
        client.log_image(run_id, Image(str(path)), key=key, step=step)
    return len(pictures)


def lineage_tags(p: Params, metrics: dict[str, Any]) -> dict[str, str]:
    """Tags shared by the run and the model version: code, data and evaluation identity."""
    commit, dirty = git_commit(project_root(p))
    return {
        "git_commit": commit,
        "git_dirty": str(dirty),
        **data_version(p),
        **training_precision(p),
        **evaluation_precision(metrics),
        "eval_protocol": eval_protocol(p, metrics),
        "text_sdr": f"{text_sdr(metrics):.4f}",
        "data_source": str(p.ingest.source or "embedded world"),
        "params_file": p.source_file,
    }


def training_precision(p: Params) -> dict[str, str]:
    """What ``train.precision`` resolved to on the training machine, and why (summary.json)."""
    try:
        summary = json.loads((p.path("checkpoints") / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return {
        "train_precision": str(summary.get("precision")),
        "train_precision_reason": str(summary.get("precision_reason")),
    }


def evaluation_precision(metrics: dict[str, Any]) -> dict[str, str]:
    """What ``eval.precision`` resolved to where the scores were computed (metrics.json's
    ``inference``; nothing for a metrics.json written before it was recorded)."""
    inference = metrics.get("inference") or {}
    return {
        f"eval_{key}": str(inference[key])
        for key in ("precision", "precision_reason", "cpu")
        if key in inference
    }


def clip_weights_file(query_ref: dict[str, Any], root: Path) -> Path | None:
    """The local CLIP weights file a checkpoint's query reference points to (None for a tag)."""
    pretrained = query_ref.get("pretrained")
    if not isinstance(pretrained, str) or not pretrained:
        return None
    path = Path(pretrained)
    path = path if path.is_absolute() else root / path
    return path if path.is_file() else None


def _input_example(p: Params) -> Any:
    """One row the pyfunc accepts: a real mixture wav from the training examples when present."""
    import pandas as pd

    wavs = sorted((p.path("checkpoints") / "examples").glob("**/*mix*.wav"))
    wavs = wavs or sorted((p.path("clips") / "audio").glob("*.wav"))
    audio = str(wavs[0]) if wavs else "mixture.wav"
    return pd.DataFrame({"audio": [audio], "query": [p.world.classes[0]]})


def log_pyfunc(p: Params, checkpoint: Path, tags: dict[str, str]) -> str:
    """Log the checkpoint (+ CLIP weights) as a pyfunc, register it; returns the version number."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from clipsep.model.factory import load_checkpoint
    from clipsep.registry_model import MODEL_CODE, SCRATCH_ENV

    _, info = load_checkpoint(checkpoint, "cpu")
    artifacts = {"checkpoint": str(checkpoint)}
    clip_file = clip_weights_file(dict(info.query), project_root(p))
    if clip_file is not None:
        artifacts["clip_weights"] = str(clip_file)
    example = _input_example(p)
    output = pd.DataFrame(
        {"target": ["out/mixture/target.wav"], "residual": ["out/mixture/residual.wav"]}
    )
    signature = infer_signature(example, output, params={"out_dir": "", "device": "auto"})
    # log_model test-runs predict on the input example: its outputs go to a scratch folder
    quiet_artifact_transfers()  # that test run reads the model's artifacts back
    with tempfile.TemporaryDirectory(prefix="clipsep-validate-") as scratch:
        os.environ[SCRATCH_ENV] = scratch
        try:
            model = mlflow.pyfunc.log_model(
                name="model",
                python_model=MODEL_CODE,  # models from code: no pickled object in the version
                artifacts=artifacts,
                signature=signature,
                input_example=example,
                registered_model_name=p.registry.model_name,
                pip_requirements=PYFUNC_REQUIREMENTS,
                tags=tags,
            )
        finally:
            os.environ.pop(SCRATCH_ENV, None)
    return str(model.registered_model_version)


RUNS_FOLDER = "pipeline_runs"  # under paths.mlflow: one record per output folder (live_run)
LEGACY_RUN_FILE = "pipeline_run.json"  # under paths.mlflow: the one record of older versions


def run_file(p: Params) -> Path:
    """Where the pipeline run of ``p``'s output folder (the resolved ``paths.checkpoints``) is
    recorded (:mod:`clipsep.live_run`): ``<paths.mlflow>/pipeline_runs/<digest>.json``, the
    digest being :func:`clipsep.config.folder_digest` (of the folder's absolute path); the file
    holds the run id, the experiment id and the folder."""
    return p.path("mlflow") / RUNS_FOLDER / f"{folder_digest(p)}.json"


def run_file_lock(p: Params):
    """The inter-process lock of ``p``'s folder's record, held while a stage picks, opens and
    claims the folder's run: two stages of one folder started together share one run instead of
    each opening its own; other folders have their own locks and never wait on this one."""
    from filelock import FileLock

    path = run_file(p)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{path}.lock")


def write_run_file(p: Params, run_id: str, experiment_id: str) -> Path:
    """Record ``run_id`` as the pipeline run of ``p``'s output folder."""
    folder = str(p.path("checkpoints"))
    record = {"run_id": run_id, "experiment_id": experiment_id, "checkpoints": folder}
    return write_json(run_file(p), record)


def recorded_run(p: Params, client) -> Any | None:
    """The pipeline run recorded for ``p``'s output folder (:func:`run_file`), if there is a
    record and the store knows its run, not deleted (in the UI's trash: the next stage opens a new
    run; an older version's record is taken over first when it belongs to this folder,
    :func:`_take_over_legacy`)."""
    from mlflow.exceptions import MlflowException

    path = run_file(p)
    if not path.is_file():
        _take_over_legacy(p, client)
    if not path.is_file():
        return None
    try:
        run = client.get_run(json.loads(path.read_text())["run_id"])
    except (MlflowException, KeyError, ValueError) as err:
        log.warning(
            "%s names no run of %s (%s): a new run is opened", path, client.tracking_uri, err
        )
        return None
    if run.info.lifecycle_stage == "deleted":
        log.warning("MLflow run %s was deleted: a new run is opened", run.info.run_id)
        return None
    return run


def _take_over_legacy(p: Params, client) -> None:
    """Older versions kept one record for the whole project, ``<paths.mlflow>/pipeline_run.json``;
    its run becomes the run of the folder it was opened for (its logged ``paths.root`` and
    ``paths.checkpoints``, resolved as ``p``'s own paths are) the first time that folder looks
    for its run: the record moves to that folder's file. A record of another folder is left for
    that folder; one naming no run of the store is removed."""
    from filelock import FileLock
    from mlflow.exceptions import MlflowException

    legacy = p.path("mlflow") / LEGACY_RUN_FILE
    if not legacy.is_file():
        return
    with FileLock(f"{legacy}.lock"):  # two folders' first stages may find it at once
        if run_file(p).is_file() or not legacy.is_file():
            return
        try:
            run = client.get_run(json.loads(legacy.read_text())["run_id"])
        except (KeyError, ValueError, TypeError, MlflowException) as err:
            if getattr(err, "error_code", "RESOURCE_DOES_NOT_EXIST") == "RESOURCE_DOES_NOT_EXIST":
                log.warning("%s names no run of %s (%s): removed", legacy, client.tracking_uri, err)
                legacy.unlink()
            return  # else the store did not answer: the record stays for the next look
        if _folder_of(p, run) != p.path("checkpoints"):
            return
        moved = write_run_file(p, run.info.run_id, run.info.experiment_id)
        legacy.unlink()
        log.info("pipeline run %s: its record %s moved to %s", run.info.run_id, legacy, moved)


def _folder_of(p: Params, run) -> Path:
    """The output folder ``run`` was opened for: its logged ``paths.root`` and
    ``paths.checkpoints`` resolved like ``p``'s paths (``p``'s own folder when it logged none)."""
    logged = run.data.params
    if "paths.checkpoints" not in logged:
        return p.path("checkpoints")
    root = logged.get("paths.root", p.paths.root)
    paths = replace(p.paths, root=root, checkpoints=logged["paths.checkpoints"])
    return replace(p, paths=paths).path("checkpoints")


def check_scores_checkpoint(
    metrics: dict[str, Any], metrics_file: Path, checkpoint: Path, digest: str
) -> None:
    """BadInputError unless ``metrics_file`` scored ``checkpoint`` (SHA-256 ``digest``): an
    evaluation of another output folder (``paths.evaluation`` shared by two experiments) must not
    be registered with this model. metrics.json of older versions records none: warned."""
    scored = metrics.get("checkpoint", {})
    if "sha256" not in scored:
        log.warning("%s does not say which checkpoint it scored: not checked", metrics_file)
        return
    if scored["sha256"] != digest:
        raise BadInputError(
            f"{metrics_file} scores {scored.get('path', 'another checkpoint')}, not {checkpoint} "
            "(or that file changed since): run `clipsep evaluate` for it, and give side-by-side "
            "experiments their own paths.evaluation"
        )


def scored_checkpoint(client, run_id: str) -> str | None:
    """The SHA-256 of the checkpoint run ``run_id``'s evaluation scored (its logged
    ``evaluation/metrics.json``): the checkpoint identity of versions registered before
    CHECKPOINT_TAG existed. None when the run logged none."""
    quiet_artifact_transfers()
    try:
        with tempfile.TemporaryDirectory(prefix="clipsep-scored-") as scratch:
            local = client.download_artifacts(run_id, "evaluation/metrics.json", scratch)
            return json.loads(Path(local).read_text()).get("checkpoint", {}).get("sha256")
    except Exception:  # no such artifact (or run): this version cannot say
        return None


def registered_version(client, model_name: str, sha256: str):
    """The first version of ``model_name`` whose checkpoint has SHA-256 ``sha256`` (its
    CHECKPOINT_TAG, else its run's :func:`scored_checkpoint`), or None. Raises
    RegistryUnavailableError when the store cannot be read."""
    try:
        found = client.search_model_versions(f"name='{model_name}'")
    except Exception as err:  # a dead server, a corrupt database: never "not registered"
        raise RegistryUnavailableError.of(client.tracking_uri, err) from err
    for version in sorted(found, key=lambda v: int(v.version)):  # the original, not a copy
        digest = (version.tags or {}).get(CHECKPOINT_TAG)
        if digest is None and version.run_id:
            digest = scored_checkpoint(client, version.run_id)
        if digest == sha256:
            return version
    return None


def already_registered(p: Params, digest: str | None = None) -> dict[str, Any] | None:
    """The ``register`` summary of the version that already holds ``paths.checkpoints/best.pt``
    (same SHA-256, :func:`registered_version`; ``digest``: that file's, when the caller has it
    already), with ``already_registered`` True and the reason
    ``already registered as models:/NAME/V (@ALIAS); nothing registered``; None when no version
    does (or there is no store yet: none is made). Nothing is created, no alias moves."""
    checkpoint, uri = p.path("checkpoints") / BEST_CHECKPOINT, tracking_uri(p)
    store = sqlite_path(uri)
    if not checkpoint.is_file() or (store is not None and not store.is_file()):
        return None
    try:
        client, name = client_for(p), p.registry.model_name
    except Exception as err:  # a store that cannot even be opened
        raise RegistryUnavailableError.of(uri, err) from err
    version = registered_version(client, name, digest or file_digest(checkpoint))
    if version is None:
        return None
    version = client.get_model_version(name, version.version)  # a search lists no aliases
    aliases = sorted(version.aliases or (), key=lambda a: (a != CHAMPION, a))
    uri_of = f"models:/{name}/{version.version}"
    held = f" ({', '.join(f'@{a}' for a in aliases)})" if aliases else ""
    reason = f"already registered as {uri_of}{held}; nothing registered"
    log.info("%s: %s", checkpoint, reason)
    tags = version.tags or {}
    experiment_id = client.get_run(version.run_id).info.experiment_id if version.run_id else ""
    return {
        "run_id": version.run_id,
        "experiment_id": experiment_id,
        "model_name": name,
        "version": str(version.version),
        "alias": aliases[0] if aliases else "",
        "reason": reason,
        "already_registered": True,
        "text_sdr": float(tags.get("text_sdr", "nan")),
        "eval_protocol": tags.get("eval_protocol", ""),
        "data_version": tags.get("data_version", ""),
        "git_commit": tags.get("git_commit", ""),
        "logged": {},
        "model_uri": uri_of,
        "tracking_uri": uri,
        "run_url": run_url(p, experiment_id, version.run_id or ""),
        "ui_command": ui_command(p),
    }


class Registration(NamedTuple):
    """What ``register`` reads, read once (:func:`check_registration`): ``best.pt``, its
    evaluation (metrics.json as a dict), the checkpoint's SHA-256, the :func:`already_registered`
    summary of the version that holds it already (None: a model to register) and whether this
    evaluation is the one that version was registered with (:func:`repeats_evaluation`)."""

    checkpoint: Path
    metrics: dict[str, Any]
    digest: str
    existing: dict[str, Any] | None
    repeats: bool = False


def check_registration(p: Params) -> Registration:
    """Read what ``register`` needs and ask the registry once whether a version holds the
    checkpoint already. Raises BadInputError when ``best.pt`` or metrics.json is missing or the
    evaluation scored another checkpoint (:func:`check_scores_checkpoint`), before the store is
    touched; RegistryUnavailableError when the store cannot be read."""
    checkpoint, metrics_file = check_ready("register", p)  # the stage's own check
    metrics = json.loads(metrics_file.read_text())
    digest = file_digest(checkpoint)  # hashed once: the check, the lookup and the version's tag
    check_scores_checkpoint(metrics, metrics_file, checkpoint, digest)
    existing = already_registered(p, digest)
    repeats = existing is not None and repeats_evaluation(p, metrics, existing)
    return Registration(checkpoint, metrics, digest, existing, repeats)


def repeats_evaluation(p: Params, metrics: dict[str, Any], registered: dict[str, Any]) -> bool:
    """Whether ``metrics`` (metrics.json) is the evaluation a version was registered with: the
    same protocol (:func:`eval_protocol`) and text SDR (to the 4 decimals of its tag) as
    ``registered`` (:func:`already_registered`'s summary) holds."""
    try:
        sdr = text_sdr(metrics)
    except BadInputError:
        return False
    same_sdr = f"{sdr:.4f}" == f"{registered.get('text_sdr', math.nan):.4f}"
    return same_sdr and registered.get("eval_protocol") == eval_protocol(p, metrics)


def register(
    p: Params, run_id: str | None = None, checked: Registration | None = None
) -> dict[str, Any]:
    """The ``register`` stage: log into the pipeline's run ``run_id`` (:mod:`clipsep.live_run`;
    None: a new run), register the evaluated model, gate it, close the run FINISHED. A checkpoint
    a version already holds is not registered again: :func:`already_registered`'s summary.
    ``checked``: :func:`check_registration`'s answer when the caller has it already (the live
    register stage asks before it opens its run); None: asked here."""
    import mlflow

    checked = checked or check_registration(p)
    if checked.existing is not None:
        return checked.existing
    checkpoint, metrics = checked.checkpoint, checked.metrics
    tags = {**lineage_tags(p, metrics), CHECKPOINT_TAG: checked.digest}
    client, experiment_id = connect(p)
    started = (
        mlflow.start_run(run_id=run_id)
        if run_id
        else mlflow.start_run(
            experiment_id=experiment_id, run_name=f"{p.model.preset}-{tags['data_version'][:8]}"
        )
    )
    with started as run:
        run_id = run.info.run_id
        if not run.data.params:  # the pipeline run logged its params when it opened
            mlflow.log_params(flatten_params(p))
        live_history = "loss" in client.get_run(run_id).data.metrics
        mlflow.set_tags({**tags, **{f"sys.{k}": v for k, v in system_info().items()}})
        mlflow.log_metrics(flatten_metrics(without_per_class(metrics), "eval"))
        client.log_text(run_id, per_class_csv(metrics), "evaluation/per_class.csv")
        mlflow.log_dict(p.to_dict(), "params.yaml")
        counts = log_training_outputs(client, run_id, p, with_history=not live_history)
        version = log_pyfunc(p, checkpoint, tags)
        for key, value in {**tags, "run_id": run_id}.items():
            client.set_model_version_tag(p.registry.model_name, version, key, value)
        # the run's name says which version it became: the UI lists and compares runs by name
        client.update_run(run_id, name=f"{p.registry.model_name}-v{version}")
        decision = apply_gate(
            client,
            p.registry.model_name,
            version,
            float(tags["text_sdr"]),
            tags["eval_protocol"],
            p.registry,
            absent_gap_db(metrics),
        )
        mlflow.set_tags(
            {
                "model_version": version,
                "gate_decision": decision.alias,
                "gate_reason": decision.reason,
            }
        )
    return {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "model_name": p.registry.model_name,
        "version": version,
        "alias": decision.alias,
        "reason": decision.reason,
        "text_sdr": float(tags["text_sdr"]),
        "data_version": tags["data_version"],
        "git_commit": tags["git_commit"],
        "logged": counts,
        "model_uri": f"models:/{p.registry.model_name}/{version}",
        "tracking_uri": tracking_uri(p),
        "run_url": run_url(p, experiment_id, run_id),
        "ui_command": ui_command(p),
    }
