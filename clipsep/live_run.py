"""Training you can watch: the MLflow run opens when training starts and fills as it goes.

With ``registry.live_tracking`` the ``train`` stage (rank 0) opens an MLflow run in the params'
store, records its id in ``<paths.checkpoints>/mlflow_run.json`` (persisted with the checkpoints,
so DVC and the flow find it), logs every step's history record as metrics (buffered: one
``log_batch`` per FLUSH_EVERY steps, at each validation and at the end) and the periodic
``last.pt`` and each new ``best.pt`` as artifacts under ``checkpoints/``. The run stays RUNNING
until ``register`` logs the evaluation into it and closes it (FINISHED). A training that raises
ends the run FAILED; Ctrl-C or SIGTERM ends it KILLED; a resumed training (``last.pt`` present)
continues the recorded run unless it was FINISHED. SIGKILL cannot be seen: the run stays RUNNING
until the resumed training continues it.

Metric names are the history.csv columns (``loss``, ``lr``, ``val_loss_image``, ...), the same
names ``register`` used to copy from history.csv afterwards.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from clipsep.config import Params
from clipsep.fileio import write_json

log = logging.getLogger(__name__)

FLUSH_EVERY = 50  # steps of metrics buffered per log_batch call
MAX_BATCH = 1000  # MLflow's log_batch limit on metrics per call


def open_run(p: Params, resuming: bool) -> "LiveRun":
    """Continue the recorded run (resuming, not FINISHED) or open a new one with the params."""
    from mlflow.entities import Param

    from clipsep.tracking import connect, flatten_params, recorded_run, run_file, system_info

    client, experiment_id = connect(p)
    previous = recorded_run(p, client)
    if resuming and previous is not None and previous.info.status != "FINISHED":
        client.update_run(previous.info.run_id, status="RUNNING")
        log.info("continuing MLflow run %s", previous.info.run_id)
        return LiveRun(client, previous.info.run_id)
    tags = {"clipsep.opened_by": "train", **{f"sys.{k}": v for k, v in system_info().items()}}
    run = client.create_run(experiment_id, run_name=f"{p.model.preset}-training", tags=tags)
    params = [Param(k, v[:6000]) for k, v in flatten_params(p).items()]
    for start in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[start : start + 100])
    write_json(run_file(p), {"run_id": run.info.run_id, "experiment_id": experiment_id})
    log.info("MLflow run %s opened (live training metrics)", run.info.run_id)
    return LiveRun(client, run.info.run_id)


class LiveRun:
    """Buffers step records into metrics and logs checkpoints to one MLflow run."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id
        self.pending: list = []

    def record(self, record: dict[str, Any]) -> None:
        """Queue a history record (``step`` + numeric values); flush every FLUSH_EVERY steps and
        on validation steps."""
        from mlflow.entities import Metric

        step, now = int(record["step"]), int(time.time() * 1000)
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

    def end(self, status: str) -> None:
        """Flush and close the run as ``status`` (FAILED, KILLED); a failed flush is logged."""
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, status)
