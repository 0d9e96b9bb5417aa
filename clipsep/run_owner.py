"""Who is writing an MLflow run, and ending the runs whose writer died without saying so.

A process that writes into a RUNNING run (a pipeline stage, above all training) tags it with its
owner: ``clipsep.owner.host`` (hostname), ``clipsep.owner.pid`` and ``clipsep.owner.started``
(the process's start time, seconds since the epoch, so a reused pid is not mistaken for it), and
deletes the tags when it stops writing. A SIGKILL, an out-of-memory kill or a power cut leaves the
tags behind: :func:`end_orphans` (called whenever tracking opens a store) finds the RUNNING runs of
an experiment whose owner is on this host and no longer exists, and ends them KILLED with the tags
``clipsep.end_reason`` (what happened) and ``clipsep.reached_step`` (the last training step
logged, when there is one). A run owned on another host is left alone: its process cannot be seen
from here.
"""

from __future__ import annotations

import logging
import os
import socket

import psutil

log = logging.getLogger(__name__)

HOST, PID, STARTED = "clipsep.owner.host", "clipsep.owner.pid", "clipsep.owner.started"
END_REASON, REACHED_STEP = "clipsep.end_reason", "clipsep.reached_step"
STAGE_TAG = "clipsep.stage."  # + stage name: running, done, failed, killed or skipped
STEP_METRIC = "loss"  # logged at every training step: its last step is how far training got


def owner_tags(pid: int | None = None) -> dict[str, str]:
    """The owner tags for process ``pid`` (default: this process) on this host."""
    process = psutil.Process(pid or os.getpid())
    return {
        HOST: socket.gethostname(),
        PID: str(process.pid),
        STARTED: f"{process.create_time():.3f}",
    }


def claim(client, run_id: str) -> None:
    """Mark this process as the run's writer."""
    for key, value in owner_tags().items():
        client.set_tag(run_id, key, value)


def release(client, run_id: str) -> None:
    """This process stops writing the run (it may stay RUNNING for the next stage)."""
    for key in (HOST, PID, STARTED):
        client.delete_tag(run_id, key)


def owner_alive(tags: dict[str, str]) -> bool | None:
    """True/False when the owner is a process of this host; None when it cannot be judged
    (no owner, or another host)."""
    if PID not in tags or tags.get(HOST) != socket.gethostname():
        return None
    try:
        process = psutil.Process(int(tags[PID]))
        started = process.create_time()
        zombie = process.status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, ValueError):
        return False
    except psutil.AccessDenied:  # someone else's process with that pid: it exists
        return True
    return not zombie and abs(started - float(tags.get(STARTED, "nan"))) < 1.0


def reached_step(run) -> int | None:
    """The largest step of the training loss logged to ``run`` (None if it logged none)."""
    steps = [m.step for m in run.data._metric_objs if m.key == STEP_METRIC]
    return max(steps) if steps else None


def end_orphans(client, experiment_id: str) -> list[str]:
    """End KILLED every RUNNING run of the experiment whose owner process on this host is gone;
    returns their ids."""
    ended = []
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
    for run in running:
        tags = run.data.tags
        if owner_alive(tags) is not False:
            continue
        step = reached_step(run)
        stages = sorted(
            k.removeprefix(STAGE_TAG)
            for k, v in tags.items()
            if k.startswith(STAGE_TAG) and v == "running"
        )
        reason = (
            f"owner process {tags[PID]} on {tags[HOST]} is gone (killed without a chance to "
            f"close the run) while running {', '.join(stages) or 'a stage'}"
            + ("" if step is None else f"; training had reached step {step}")
        )
        client.set_tag(run.info.run_id, END_REASON, reason)
        if step is not None:
            client.set_tag(run.info.run_id, REACHED_STEP, str(step))
        for stage in stages:
            client.set_tag(run.info.run_id, STAGE_TAG + stage, "killed")
        client.set_terminated(run.info.run_id, "KILLED")
        log.warning("MLflow run %s ended KILLED: %s", run.info.run_id, reason)
        ended.append(run.info.run_id)
    return ended
