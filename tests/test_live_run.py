"""Training you can watch: the MLflow run opens at training, fills live, and register closes it."""

from __future__ import annotations

import pytest
import torch

from clipsep import live_run, tracking
from clipsep.training import loop
from platform_inputs import write_metrics
from test_training import _params, shared_inputs  # noqa: F401 - module fixture


@pytest.fixture(autouse=True)
def own_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.set_num_threads(1)


def live(params):
    return lambda resuming: live_run.open_run(params, resuming)


def steps_of(client, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def fail_at(monkeypatch, step: int, error: BaseException) -> None:
    original = loop.Trainer.step
    calls = []

    def step_or_fail(self, batch):
        calls.append(1)
        if len(calls) == step:
            raise error
        return original(self, batch)

    monkeypatch.setattr(loop.Trainer, "step", step_or_fail)


def test_training_logs_live_and_register_closes_the_same_run(tmp_path, shared_inputs):  # noqa: F811
    params = _params(tmp_path, shared_inputs, "labelled")
    summary = loop.train(params, params.path("clips"), params.path("checkpoints"), live(params))
    client = tracking.client_for(params)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "RUNNING"  # training done, evaluation and register to come
    assert steps_of(client, run.info.run_id, "loss") == [1, 2, 3, 4]
    assert steps_of(client, run.info.run_id, "val_loss_image") == [2, 4]
    assert run.data.params["train.steps"] == "4"
    names = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert names == {"checkpoints/last.pt", "checkpoints/best.pt"}
    write_metrics(params, text_sdr=3.0)
    registered = tracking.register(params)
    assert registered["run_id"] == run.info.run_id
    closed = client.get_run(run.info.run_id)
    assert closed.info.status == "FINISHED"
    assert closed.data.metrics["eval/text/sdr/mean"] == pytest.approx(3.0)
    assert steps_of(client, run.info.run_id, "loss") == [1, 2, 3, 4]  # not copied twice
    version = client.get_model_version(params.registry.model_name, registered["version"])
    assert version.run_id == run.info.run_id  # the version carries the run's evaluation metrics


@pytest.mark.parametrize(
    "error,status", [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")]
)
def test_a_broken_run_shows_its_status_and_resuming_continues_it(
    tmp_path,
    shared_inputs,  # noqa: F811
    monkeypatch,
    error,
    status,
):
    params = _params(tmp_path, shared_inputs, "labelled")
    fail_at(monkeypatch, 4, error)  # after the step-2 checkpoint, at step 4
    with pytest.raises(type(error)):
        loop.train(params, params.path("clips"), params.path("checkpoints"), live(params))
    client = tracking.client_for(params)
    run = tracking.recorded_run(params, client)
    assert run.info.status == status
    assert steps_of(client, run.info.run_id, "loss") == [1, 2, 3]
    monkeypatch.undo()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    summary = loop.train(params, params.path("clips"), params.path("checkpoints"), live(params))
    assert summary["mlflow_run_id"] == run.info.run_id  # resumed from last.pt: the same run
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    # steps 3 and 4 ran again after the resume from the step-2 checkpoint: MLflow keeps both
    # values of step 3 (history), so the curve shows where the run was interrupted
    assert set(steps_of(client, run.info.run_id, "loss")) == {1, 2, 3, 4}
