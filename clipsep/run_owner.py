"""Who is writing an MLflow run and who drives its pipeline, and ending the runs whose writer or
driver died without saying so.

Two processes answer for a RUNNING pipeline run, each recorded as tags ``<prefix>host``
(hostname), ``<prefix>pid`` and ``<prefix>started`` (the process's start time, seconds since the
epoch, so a reused pid is not mistaken for it):

* the **owner** (``clipsep.owner.*``): the process writing into the run now (a stage, above all
  training); it claims the run when its stage starts and deletes these tags when the stage ends;
* the **driver** (``clipsep.driver.*``, plus ``clipsep.driver.command``): the process that runs
  the pipeline's stages one after another, recorded by each stage when it claims the run and left
  in place when it releases it, so the run belongs to its driver between stages. For the Prefect
  flow (or any Python program calling :func:`clipsep.stages.run_stage`) it is the process itself;
  under ``dvc repro`` it is the ``dvc`` process (found among the stage's ancestors: the first one
  without this stage's ``DVC_STAGE``, which dvc sets in the environment of every stage command);
  for a ``clipsep <stage>`` command a person runs by hand there is none (the run waits for the
  next stage, or is superseded by the next pass, see :mod:`clipsep.live_run`).

A SIGKILL, an out-of-memory kill or a power cut leaves the tags behind: :func:`end_orphans`
(called whenever tracking opens a store) finds the RUNNING runs of an experiment whose owner (or,
with no owner, whose driver) is on this host and no longer exists, and ends them KILLED with the
tags ``clipsep.end_reason`` (what happened) and ``clipsep.reached_step`` (the last training step
logged, when there is one). A run held on another host is left alone: its process cannot be seen
from here. A run ended so is continued by the next stage of its pass (:mod:`clipsep.live_run`).

Why the driver's liveness and not a "between stages" timeout: the time between two stages has no
bound (dvc hashes and caches outputs, a flow waits ``retry_delay_seconds`` before a retry), so a
timeout would either end live pipelines or leave dead ones for its whole length, while a
process's existence is exact and needs nothing running between stages (no heartbeat, no daemon).
DVC's own repository lock works the same way: it records the pid holding it and treats a lock
whose process is gone as stale.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

OWNER, DRIVER = "clipsep.owner.", "clipsep.driver."  # tag prefixes: + host, pid, started
HOST, PID, STARTED = OWNER + "host", OWNER + "pid", OWNER + "started"
DRIVER_COMMAND = DRIVER + "command"  # the driver's command line (shortened), for people
DVC_STAGE = "DVC_STAGE"  # dvc sets it in the environment of every stage command it runs
MAX_COMMAND = 200  # characters of the driver's command line kept
END_REASON, REACHED_STEP = "clipsep.end_reason", "clipsep.reached_step"
STAGE_TAG = "clipsep.stage."  # + stage name: running, done, failed, killed or skipped
STEP_METRIC = "loss"  # logged at every training step: its last step is how far training got


def owner_tags(pid: int | None = None, prefix: str = OWNER) -> dict[str, str]:
    """The tags ``<prefix>host/pid/started`` naming process ``pid`` (default: this process) on
    this host."""
    process = psutil.Process(pid or os.getpid())
    return {
        prefix + "host": socket.gethostname(),
        prefix + "pid": str(process.pid),
        prefix + "started": f"{process.create_time():.3f}",
    }


def pipeline_driver(in_process: bool = True) -> psutil.Process | None:
    """The process driving the pipeline whose stage this process runs: the ``dvc`` process when
    run by dvc, else this process when the stage runs ``in_process`` (the flow, a Python program),
    else None (a ``clipsep <stage>`` command run by a person)."""
    if os.environ.get(DVC_STAGE):
        return _dvc_process(os.environ[DVC_STAGE])
    return psutil.Process() if in_process else None


def _dvc_process(stage: str) -> psutil.Process | None:
    """The nearest ancestor that dvc did not start with ``DVC_STAGE=stage``, if it is dvc (None
    when the chain is broken: dvc is gone already, and this process was handed to init)."""
    try:
        for process in psutil.Process().parents():
            try:
                if process.environ().get(DVC_STAGE) == stage:
                    continue  # the shell dvc runs the command in
            except psutil.AccessDenied:
                pass
            return process if _is_dvc(process) else None
    except psutil.NoSuchProcess:
        pass
    return None


def _is_dvc(process: psutil.Process) -> bool:
    """``dvc ...``, ``python /path/bin/dvc ...`` or ``python -m dvc ...``."""
    try:
        name, args = process.name(), process.cmdline()
    except psutil.Error:
        return False
    return name == "dvc" or "dvc" in [Path(a).name for a in args[:2]] or args[1:3] == ["-m", "dvc"]


def driver_tags(driver: psutil.Process | None) -> dict[str, str]:
    """The ``clipsep.driver.*`` tags naming ``driver`` ({} for None or a process gone already)."""
    if driver is None:
        return {}
    try:
        command = " ".join(driver.cmdline())[:MAX_COMMAND]
        return {**owner_tags(driver.pid, DRIVER), DRIVER_COMMAND: command}
    except psutil.Error:
        return {}


def claim(client, run_id: str, driver: psutil.Process | None) -> None:
    """Mark this process as the run's writer and ``driver`` as its pipeline's driver (None:
    nobody drives it, earlier driver tags are removed)."""
    held = driver_tags(driver)
    for key, value in {**owner_tags(), **held}.items():
        set_tag_over_release(client, run_id, key, value)
    if not held:
        held = client.get_run(run_id).data.tags
        for key in [k for k in held if k.startswith(DRIVER)]:
            delete_tag_if_present(client, run_id, key)


def set_tag_over_release(client, run_id: str, key: str, value: str) -> None:
    """``client.set_tag``, written again when another stage of the same pass released
    (:func:`release`) the tag between MLflow's read of the row and its update. The sqlite store
    then raises "UPDATE statement on table 'tags' expected to update 1 row(s); 0 were matched"
    (seen when a stage finished while the next one claimed the run); the row is gone, so the
    second write inserts it."""
    from mlflow.exceptions import MlflowException

    try:
        client.set_tag(run_id, key, value)
    except MlflowException as err:
        if "expected to update" not in str(err):
            raise
        client.set_tag(run_id, key, value)


def release(client, run_id: str) -> None:
    """This process stops writing the run: it stays RUNNING for the next stage, held by its
    driver (if any). Tags already gone are skipped: two stages of one pass (or two evaluations
    on one store) share the pipeline run and may release it at the same time."""
    tags = client.get_run(run_id).data.tags
    for key in (HOST, PID, STARTED):
        if key in tags:
            delete_tag_if_present(client, run_id, key)


def delete_tag_if_present(client, run_id: str, key: str) -> None:
    """``client.delete_tag``, where a tag another process deleted after this one read the run's
    tags is already as wanted (MLflow: "No tag with name ...", RESOURCE_DOES_NOT_EXIST)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        client.delete_tag(run_id, key)
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise


def owner_alive(tags: dict[str, str], prefix: str = OWNER) -> bool | None:
    """Whether the process named by the tags ``<prefix>host/pid/started`` is alive: True/False
    when it is a process of this host; None when it cannot be judged (none named, another host)."""
    pid, host, started = (tags.get(prefix + key) for key in ("pid", "host", "started"))
    if pid is None or host != socket.gethostname():
        return None
    try:
        process = psutil.Process(int(pid))
        create_time = process.create_time()
        zombie = process.status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, ValueError):
        return False
    except psutil.AccessDenied:  # someone else's process with that pid: it exists
        return True
    return not zombie and abs(create_time - float(started or "nan")) < 1.0


def reached_step(run) -> int | None:
    """The largest step of the training loss logged to ``run`` (None if it logged none)."""
    steps = [m.step for m in run.data._metric_objs if m.key == STEP_METRIC]
    return max(steps) if steps else None


def end_orphans(client, experiment_id: str) -> list[str]:
    """End KILLED every RUNNING run of the experiment whose owner process on this host is gone,
    or, while no stage owns it, whose driver process on this host is gone; returns their ids."""
    ended = []
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
    for run in running:
        holder = OWNER if PID in run.data.tags else DRIVER
        if owner_alive(run.data.tags, holder) is not False:
            continue
        _end_killed(client, run, holder)
        ended.append(run.info.run_id)
    return ended


def _stages(tags: dict[str, str], state: str) -> list[str]:
    """The stages tagged ``clipsep.stage.<name>=state``, sorted."""
    return sorted(
        k.removeprefix(STAGE_TAG) for k, v in tags.items() if k.startswith(STAGE_TAG) and v == state
    )


def _end_killed(client, run, holder: str) -> None:
    """End ``run`` KILLED: its ``holder`` (OWNER or DRIVER) process is gone."""
    tags, run_id, step = run.data.tags, run.info.run_id, reached_step(run)
    running = _stages(tags, "running")
    if holder == OWNER:
        reason = (
            f"owner process {tags[PID]} on {tags[HOST]} is gone (killed without a chance to "
            f"close the run) while running {', '.join(running) or 'a stage'}"
        )
    else:
        reason = (
            f"the pipeline's driver, process {tags[DRIVER + 'pid']} "
            f"({tags.get(DRIVER_COMMAND, 'command unknown')}) on {tags[DRIVER + 'host']}, is "
            f"gone between stages (stages done: {', '.join(_stages(tags, 'done')) or 'none'}) "
            "before register closed the run: it was killed, or ran only part of the pipeline "
            "(e.g. `dvc repro train`); the pass's next stage continues this run"
        )
    reason += "" if step is None else f"; training had reached step {step}"
    client.set_tag(run_id, END_REASON, reason)
    if step is not None:
        client.set_tag(run_id, REACHED_STEP, str(step))
    for stage in running:
        client.set_tag(run_id, STAGE_TAG + stage, "killed")
    client.set_terminated(run_id, "KILLED")
    log.warning("MLflow run %s ended KILLED: %s", run_id, reason)
