"""The pipeline's MLflow run: opened by the first stage that runs, filled as stages go, closed
by ``register``.

With ``registry.live_tracking`` every stage (through :func:`clipsep.stages.run_stage`, so for
``dvc repro``, the CLI and the Prefect flow alike) calls :func:`open_run`: it continues the
pipeline run recorded for the params' output folder or opens a new one with all params,
tags the run ``clipsep.stage.<stage>=running``, claims it for this process and records the
pipeline's driver (:mod:`clipsep.run_owner`), which holds the run between stages. When the stage
is done its summary's numbers become metrics ``<stage>/...`` and the summary an artifact
``stages/<stage>.json``; the stage tag turns ``done`` and the run stays RUNNING for the next
stage. ``register`` logs the evaluation into it and closes
it (FINISHED). A ``register`` that finds ``best.pt`` registered already, as version N, closes it
too (:func:`close_registered`): deleted when it repeats N's evaluation and trained nothing (a
re-run with nothing new adds no run), else FINISHED as ``NAME-vN-rerun``, tagged
``clipsep.already_registered_as``.

A pipeline run belongs to the output folder it describes, the resolved ``paths.checkpoints``
(tag ``clipsep.checkpoints``): each folder's run is recorded in its own file,
``<paths.mlflow>/pipeline_runs/<digest of the folder>.json`` (:func:`clipsep.tracking.run_file`),
so a side-by-side experiment (``--set paths.checkpoints=models/other``) has its own run, and
passes into different folders never continue, supersede or log into each other's runs. The
choice below is made under the folder's file lock (:func:`clipsep.tracking.run_file_lock`): two
stages of one folder started together share one run; stages of other folders do not wait. The
single ``<paths.mlflow>/pipeline_run.json`` of older versions is taken over by the folder its run
was opened for, the first time that folder looks for its run.

Which run a stage continues: its folder's recorded one, unless it is FINISHED (registered: the
pipeline pass is over), this stage already completed in it (``done``: a stage running again
starts a new pass; the unfinished old run ends KILLED, superseded) or it was opened with other
params in a section or a ``paths.*`` key the stage reads or writes
(:func:`clipsep.stages.stage_reads`; MLflow keeps a param's first value, so continuing would
show values the stage did not run with: a new pass, the old run ends KILLED naming the changed
params; sections the stage does not read may differ, as when ``evaluate`` runs without the
training's ``--set`` flags). A resumed training
(``last.pt`` present) continues its run even so, and names the changed params in the tag
``clipsep.params_changed.train``. A failed or killed run is continued by the
stage that failed (the retry of the same pass). A stage that raises ends the run FAILED (Ctrl-C
or SIGTERM: KILLED), with ``clipsep.end_reason``; a SIGKILLed one, or one whose driver (the
flow's process, ``dvc``) was SIGKILLed between stages, is ended KILLED by the next process that
opens the store (:mod:`clipsep.run_owner`). A continued run that had ended is RUNNING again
and its earlier ``STATUS: reason`` moves to ``clipsep.earlier_end``.

Training logs every step's history record as metrics (buffered: one ``log_batch`` per
FLUSH_EVERY steps, at each validation and at the end; names are the history.csv columns), the
periodic ``last.pt`` and each new ``best.pt`` as artifacts under ``checkpoints/``, and MLflow's
system metrics (``system/...``, every ``registry.system_metrics_s`` seconds).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

from clipsep import run_owner
from clipsep.config import Params
from clipsep.errors import INTERRUPTS

log = logging.getLogger(__name__)

FLUSH_EVERY = 50  # steps of metrics buffered per log_batch call
MAX_BATCH = 1000  # MLflow's log_batch limit on metrics per call
MAX_PARAM = 6000  # MLflow's limit on a param value's length
MAX_TAG = 5000  # MLflow's limit on a tag value's length (older stores)
EARLIER_END = "clipsep.earlier_end"  # why a run that is running again had ended

CHECKPOINTS_TAG = "clipsep.checkpoints"  # the output folder a pipeline run belongs to
REGISTERED_AS_TAG = "clipsep.already_registered_as"  # a pass whose checkpoint was registered


def open_run(
    p: Params,
    stage: str,
    resuming: bool = False,
    in_process: bool = True,
    reads: Sequence[str] | None = None,
) -> "LiveRun":
    """The pipeline run of ``p``'s output folder for ``stage`` (continued or new, see the module
    doc), claimed by this process, held by the pipeline's driver
    (:func:`clipsep.run_owner.pipeline_driver`; False ``in_process`` for the ``clipsep <stage>``
    command) and tagged ``clipsep.stage.<stage>=running``. ``reads``: the params sections the
    stage reads (``clipsep.stages.stage_reads``; None: all); only a change there makes a new run
    (an evaluate run without the training's ``--set model.preset=...`` continues its pass).

    Raises RegistryUnavailableError when the store cannot be read.
    """
    from clipsep.tracking import (
        connect,
        flatten_params,
        recorded_run,
        run_file_lock,
        write_run_file,
    )

    client, experiment_id = connect(p)  # also ends runs whose owner died (run_owner)
    flat = flatten_params(p)  # compared with the run's params, then logged
    with run_file_lock(p):  # this folder's stages started together pick one run
        previous = recorded_run(p, client)
        changed = [] if previous is None else changed_params(previous, flat, reads)
        if _continues(previous, stage, resuming) and (resuming or not changed):
            run_id = previous.info.run_id
            if previous.info.status != "RUNNING":
                _reopen(client, previous)
            _log_params(client, previous, flat, stage, changed)
            log.info("%s continues MLflow run %s", stage, run_id)
        else:
            if previous is not None and previous.info.status == "RUNNING":
                _supersede(client, previous.info.run_id, stage, changed)
            run_id = _create(client, experiment_id, p, flat, stage)
            write_run_file(p, run_id, experiment_id)
            folder = p.path("checkpoints")
            log.info("%s opened MLflow run %s, %s's run until register", stage, run_id, folder)
        client.set_tag(run_id, run_owner.STAGE_TAG + stage, "running")
        run_owner.claim(client, run_id, run_owner.pipeline_driver(in_process))
    return LiveRun(client, run_id, stage)


def note_skipped(p: Params, stage: str) -> None:
    """Tag an open pipeline run ``clipsep.stage.<stage>=skipped`` (no run open: nothing; a stage
    ``done`` in it stays ``done``: the run holds its session); a skipped ``register`` closes it
    instead (:func:`close_registered`)."""
    client, run = _running_pass(p)
    if run is None:
        return
    if run.data.tags.get(run_owner.STAGE_TAG + stage) != "done":
        client.set_tag(run.info.run_id, run_owner.STAGE_TAG + stage, "skipped")


def close_registered(p: Params, registered: dict[str, Any], reason: str, repeats: bool) -> None:
    """``register`` registers nothing: ``p``'s ``best.pt`` is version N already (``registered``:
    a register summary naming ``model_name``, ``version`` and that version's ``run_id``). The
    pass's open run, which no version will point to, is closed (no run open: nothing).

    It is tagged ``clipsep.stage.register=skipped``, ``clipsep.already_registered_as`` =
    ``models:/NAME/N`` and ``clipsep.end_reason`` = ``register skipped: <reason>`` and ends
    FINISHED. A run that adds nothing to version N (``repeats``: its evaluation is the one N was
    registered with; and it trained nothing) is then deleted (MLflow's soft delete: out of the
    UI's run list and of searches; ``mlflow runs restore`` brings it back, ``mlflow gc`` purges
    it): a re-run with nothing new leaves no run. Any other (a re-evaluation under another
    protocol or with another result, a training that made the same checkpoint) stays, renamed
    ``NAME-vN-rerun`` beside the version's own ``NAME-vN``.
    """
    client, run = _running_pass(p)
    if run is None:
        return
    run_id, name, version = run.info.run_id, registered["model_name"], registered["version"]
    client.set_tag(run_id, run_owner.STAGE_TAG + "register", "skipped")
    client.set_tag(run_id, REGISTERED_AS_TAG, f"models:/{name}/{version}")
    client.set_tag(run_id, run_owner.END_REASON, f"register skipped: {reason}"[:MAX_TAG])
    client.set_terminated(run_id, "FINISHED")
    trained = run.data.tags.get(run_owner.STAGE_TAG + "train", "skipped") != "skipped"
    if repeats and not trained and run_id != registered.get("run_id"):
        client.delete_run(run_id)
        log.info(
            "MLflow run %s deleted: it repeats %s/%s (run %s)",
            run_id,
            name,
            version,
            registered.get("run_id"),
        )
    else:
        client.update_run(run_id, name=f"{name}-v{version}-rerun")
        log.info("MLflow run %s ended FINISHED as %s-v%s-rerun", run_id, name, version)


def _running_pass(p: Params):
    """(client, the pipeline run of ``p``'s folder) when that run is RUNNING, else (client,
    None)."""
    from clipsep.tracking import client_for, recorded_run

    client = client_for(p)
    run = recorded_run(p, client)
    return client, run if run is not None and run.info.status == "RUNNING" else None


def _continues(previous, stage: str, resuming: bool) -> bool:
    if previous is None or previous.info.status == "FINISHED":
        return False
    done = previous.data.tags.get(run_owner.STAGE_TAG + stage) == "done"
    return not done or (stage == "train" and resuming)


def end_status(err: BaseException) -> str:
    """The MLflow status of a run whose stage raised ``err``: KILLED for one of
    :data:`clipsep.errors.INTERRUPTS`, else FAILED."""
    return "KILLED" if isinstance(err, INTERRUPTS) else "FAILED"


def _reopen(client, run) -> None:
    """RUNNING again; the reason it had ended moves to ``clipsep.earlier_end`` (``STATUS: reason``,
    with the step training had reached) so that ``clipsep.end_reason`` and
    ``clipsep.reached_step`` only ever explain the run's present end."""
    tags = run.data.tags
    if run_owner.END_REASON in tags:
        earlier = f"{run.info.status}: {tags[run_owner.END_REASON]}"
        step = tags.get(run_owner.REACHED_STEP)
        if step is not None and f"reached step {step}" not in earlier:
            earlier += f"; training had reached step {step}"
        client.set_tag(run.info.run_id, EARLIER_END, earlier[:MAX_TAG])
        client.delete_tag(run.info.run_id, run_owner.END_REASON)
    run_owner.delete_tag_if_present(client, run.info.run_id, run_owner.REACHED_STEP)
    client.update_run(run.info.run_id, status="RUNNING")


def _supersede(client, run_id: str, stage: str, changed: list[str]) -> None:
    if changed:
        reason = f"superseded: {stage} ran with other params ({_describe(changed)})"
    else:
        reason = f"superseded: {stage} ran again before register closed this pipeline run"
    client.set_tag(run_id, run_owner.END_REASON, reason)
    client.set_terminated(run_id, "KILLED")
    log.warning("MLflow run %s ended KILLED (%s)", run_id, reason)


def _create(client, experiment_id: str, p: Params, flat: dict[str, str], stage: str) -> str:
    """A new pipeline run of ``p``'s folder holding the params ``flat``
    (:func:`clipsep.tracking.flatten_params`)."""
    from mlflow.entities import Param

    from clipsep.tracking import system_info

    tags = {
        "clipsep.opened_by": stage,
        CHECKPOINTS_TAG: str(p.path("checkpoints")),
        **{f"sys.{k}": v for k, v in system_info().items()},
    }
    run = client.create_run(experiment_id, run_name=f"{p.model.preset}-pipeline", tags=tags)
    params = [Param(k, v[:MAX_PARAM]) for k, v in flat.items()]
    for start in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[start : start + 100])
    return run.info.run_id


def changed_params(run, flat: dict[str, str], sections: Sequence[str] | None = None) -> list[str]:
    """``key: old -> new`` for each param of ``sections`` (params sections such as ``train``, or
    single keys such as ``paths.clips``; None: all) that ``run`` logged with another value than
    ``flat`` (:func:`clipsep.tracking.flatten_params` of the params) has."""
    logged = run.data.params
    return [
        f"{key}: {logged[key]} -> {value}"
        for key, value in sorted(flat.items())
        if key in logged
        and logged[key] != value[:MAX_PARAM]
        and (sections is None or key in sections or key.split(".", 1)[0] in sections)
    ]


def _describe(changed: list[str], limit: int = 3) -> str:
    more = f", and {len(changed) - limit} more" if len(changed) > limit else ""
    return "; ".join(changed[:limit]) + more


def _log_params(client, run, flat: dict[str, str], stage: str, changed: list[str]) -> None:
    """Log the params of ``flat`` the run lacks; params that changed since it opened (a resumed
    training only) are named in the tag ``clipsep.params_changed.<stage>``."""
    from mlflow.entities import Param

    logged = run.data.params
    missing = [Param(k, v[:MAX_PARAM]) for k, v in flat.items() if k not in logged]
    for start in range(0, len(missing), 100):
        client.log_batch(run.info.run_id, params=missing[start : start + 100])
    if changed:
        tag = f"clipsep.params_changed.{stage}"
        client.set_tag(run.info.run_id, tag, "; ".join(changed)[:MAX_TAG])
        log.warning("params changed since MLflow run %s opened: %s", run.info.run_id, changed)


class LiveRun:
    """One stage's handle on the pipeline run: metrics, checkpoints, the stage's end."""

    def __init__(self, client, run_id: str, stage: str):
        self.client, self.run_id, self.stage = client, run_id, stage
        self.pending: list = []
        self.monitor = None
        self.step: int | None = None  # the last training step recorded

    def watch_system(self, interval_s: float | None) -> None:
        """Log MLflow's system metrics (``system/cpu_utilization_percentage``, memory, disk,
        network, GPU) every ``interval_s`` seconds until the stage ends (None or 0: off)."""
        if not interval_s:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.monitor = SystemMetricsMonitor(
            self.run_id,
            sampling_interval=interval_s,
            resume_logging=True,
            tracking_uri=self.client.tracking_uri,
        )
        self.monitor.start()

    def record(self, record: dict[str, Any]) -> None:
        """Queue a history record (``step`` + numeric values); flush every FLUSH_EVERY steps and
        on validation steps."""
        from mlflow.entities import Metric

        step, now = int(record["step"]), int(time.time() * 1000)
        self.step = step
        self.pending += [
            Metric(k, float(v), now, step)
            for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)
        ]
        if step % FLUSH_EVERY == 0 or any(k.startswith("val_") for k in record):
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self.pending), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=self.pending[start : start + MAX_BATCH])
        self.pending = []

    def checkpoint(self, path: Path) -> None:
        """Metrics so far, then ``path`` as artifact ``checkpoints/<name>`` (replacing it)."""
        self.flush()
        self.client.log_artifact(self.run_id, str(path), artifact_path="checkpoints")

    def finish_stage(self, summary: dict[str, Any]) -> None:
        """The stage succeeded: its summary as metrics and ``stages/<stage>.json``; the run
        stays RUNNING for the next stage, no longer claimed by this process."""
        from mlflow.entities import Metric

        from clipsep.tracking import flatten_metrics

        self.flush()
        self._stop_monitor()
        now = int(time.time() * 1000)
        numbers = flatten_metrics(summary, self.stage)
        metrics = [Metric(k, v, now, 0) for k, v in list(numbers.items())[:MAX_BATCH]]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
        summary_json = json.loads(json.dumps(summary, default=str))
        self.client.log_dict(self.run_id, summary_json, f"stages/{self.stage}.json")
        self.client.set_tag(self.run_id, run_owner.STAGE_TAG + self.stage, "done")
        run_owner.release(self.client, self.run_id)

    def end(self, status: str, reason: str = "") -> None:
        """Flush and close the run as ``status`` (FAILED, KILLED) with the reason as a tag."""
        try:
            self.flush()
            self._stop_monitor()
            word = "killed" if status == "KILLED" else "failed"
            self.client.set_tag(self.run_id, run_owner.STAGE_TAG + self.stage, word)
            if reason:
                self.client.set_tag(self.run_id, run_owner.END_REASON, reason[:MAX_TAG])
            if self.step is not None:
                self.client.set_tag(self.run_id, run_owner.REACHED_STEP, str(self.step))
            run_owner.release(self.client, self.run_id)  # no process writes it any more
        finally:
            self.client.set_terminated(self.run_id, status)

    def _stop_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None
