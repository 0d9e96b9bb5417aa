"""Training you can watch: the pipeline's MLflow run opens at its first stage, fills live
(stage results, per-step training metrics, system metrics), and register closes it; a run whose
process was SIGKILLed, or whose driver (the flow's process, dvc) was SIGKILLed between two stages,
is ended KILLED by the next process that opens the store; each output folder (paths.checkpoints)
has its own pipeline run, so passes into two folders neither end nor log into each other's."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from clipsep import live_run, run_owner, stage_record, stages, tracking
from clipsep.errors import BadInputError, ValidationFailed
from clipsep.stages import run_stage
from clipsep.training import loop
from conftest import tiny_params_at
from platform_inputs import write_checkpoint, write_metrics, write_training_outputs
from test_evaluation import write_protocol
from test_training import _params, file_states, shared_inputs  # noqa: F401 - module fixture

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.set_num_threads(1)


def live(params):
    return lambda resuming: live_run.open_run(params, "train", resuming)


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
    registered = run_stage("register", params).summary
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
    assert run.data.tags[run_owner.REACHED_STEP] == "3"
    assert run.data.tags["clipsep.stage.train"] == status.lower()
    assert run_owner.PID not in run.data.tags  # ended by its stage: no process holds it
    assert steps_of(client, run.info.run_id, "loss") == [1, 2, 3]
    monkeypatch.undo()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    summary = loop.train(params, params.path("clips"), params.path("checkpoints"), live(params))
    assert summary["mlflow_run_id"] == run.info.run_id  # resumed from last.pt: the same run
    resumed = client.get_run(run.info.run_id)
    assert resumed.info.status == "RUNNING"
    assert run_owner.END_REASON not in resumed.data.tags  # it has not ended (again)
    earlier = f"{status}: {run.data.tags[run_owner.END_REASON]}; training had reached step 3"
    assert resumed.data.tags[live_run.EARLIER_END] == earlier
    assert run_owner.REACHED_STEP not in resumed.data.tags  # of the earlier end, said there
    # steps 3 and 4 ran again after the resume from the step-2 checkpoint: MLflow keeps both
    # values of step 3 (history), so the curve shows where the run was interrupted
    assert set(steps_of(client, run.info.run_id, "loss")) == {1, 2, 3, 4}


def valid_clips(tmp_path: Path, inputs: dict[str, Path]) -> str:
    """The shared labelled clips with one source video per clip (validation wants no
    duplicate videos): the manifest rewritten, the media linked."""
    source, clips = inputs["labelled"], tmp_path / "valid_clips"
    clips.mkdir()
    for name in ("audio", "frames"):
        (clips / name).symlink_to(source / name)
    lines = (source / "manifest.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    for index, row in enumerate(rows):
        row[header.index("source_hash")] = f"{index + 1:064x}"
    (clips / "manifest.csv").write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return str(clips)


def test_the_first_stage_opens_the_run_later_stages_fill_it_register_closes_it(
    tmp_path,
    shared_inputs,  # noqa: F811
):
    params = _params(
        tmp_path, shared_inputs, "labelled", **{"paths.clips": valid_clips(tmp_path, shared_inputs)}
    )
    client = tracking.client_for(params)
    validated = run_stage("validate", params).summary
    run = tracking.recorded_run(params, client)
    assert run.info.status == "RUNNING"  # open from the first stage on, before any training
    assert run.data.tags["clipsep.stage.validate"] == "done"
    assert run.data.params["train.steps"] == "4"  # every stage's params from the start
    assert run.data.metrics["validate/n_clips"] == validated["n_clips"]
    assert run_owner.PID not in run.data.tags  # the stage ended: no process claims the run
    assert run.data.tags[run_owner.DRIVER + "pid"] == str(os.getpid())  # held by its driver
    trained = run_stage("train", params).summary
    assert trained["mlflow_run_id"] == run.info.run_id
    write_metrics(params, text_sdr=3.0)
    registered = run_stage("register", params).summary
    assert registered["run_id"] == run.info.run_id
    closed = client.get_run(run.info.run_id)
    assert closed.info.status == "FINISHED"
    assert closed.data.tags["clipsep.stage.train"] == "done"
    assert closed.data.tags["clipsep.stage.register"] == "done"
    assert closed.info.run_name == f"clipsep-v{registered['version']}"
    assert live_run.EARLIER_END not in closed.data.tags  # never ended on the way
    assert steps_of(client, run.info.run_id, "loss") == [1, 2, 3, 4]
    run_stage("validate", params)  # a new pipeline pass: a new run
    assert tracking.recorded_run(params, client).info.run_id != run.info.run_id


def validated_pass(tmp_path, shared_inputs):  # noqa: F811
    """(clips, params, client, run id): a labelled project whose validate stage opened a run."""
    clips = valid_clips(tmp_path, shared_inputs)
    params = _params(tmp_path, shared_inputs, "labelled", **{"paths.clips": clips})
    client = tracking.client_for(params)
    run_stage("validate", params)
    return clips, params, client, tracking.recorded_run(params, client).info.run_id


def test_a_stage_that_ran_already_starts_a_new_run_and_a_failure_ends_it_failed(
    tmp_path,
    shared_inputs,  # noqa: F811
):
    clips, params, client, first = validated_pass(tmp_path, shared_inputs)
    strict = _params(
        tmp_path, shared_inputs, "labelled", **{"paths.clips": clips, "validate.min_clips": 10_000}
    )
    with pytest.raises(ValidationFailed):
        run_stage("validate", strict)  # validate ran in `first` already: a new pass
    superseded = client.get_run(first)
    assert superseded.info.status == "KILLED"
    assert "superseded" in superseded.data.tags[run_owner.END_REASON]
    failed = tracking.recorded_run(params, client)
    assert failed.info.run_id != first and failed.info.status == "FAILED"
    assert failed.data.tags["clipsep.stage.validate"] == "failed"
    assert "ValidationFailed" in failed.data.tags[run_owner.END_REASON]


def test_a_complete_training_run_again_logs_no_session(tmp_path, shared_inputs):  # noqa: F811
    """`clipsep train` (dvc's command) or the flow's stage run again on a finished training
    continued the pipeline run with a 0-step session; now the run and the files stay as they
    were: a run where training is done keeps it done, a new pass's run marks it skipped. The
    stage record was rewritten with the rerun's seconds and without the MLflow run id: it stays."""
    clips, params, client, first = validated_pass(tmp_path, shared_inputs)
    run_stage("train", params)
    out = params.path("checkpoints")
    trained = stage_record.read_record(out, "train")
    assert trained["summary"]["mlflow_run_id"] == first and trained["seconds"] > 0
    before = {k: v for k, v in file_states(out).items() if not k.startswith(".stage-")}
    again = run_stage("train", params).summary  # the flow's call (record fingerprint unchanged)
    assert again["already_complete"] is True and again["session_steps"] == 4
    run = client.get_run(first)
    assert run.info.status == "RUNNING" and run.data.tags["clipsep.stage.train"] == "done"
    assert steps_of(client, first, "loss") == [1, 2, 3, 4]
    assert [m.value for m in client.get_metric_history(first, "train/session_steps")] == [4]

    run_stage("validate", params)  # a new pass, then dvc's `clipsep train`
    overrides = {"paths.root": tmp_path, "paths.clip_model": shared_inputs["clip_model"]}
    command = [sys.executable, "-m", "clipsep.cli", "train", "--profile", "tiny"]
    command += [f"--set={k}={v}" for k, v in {**overrides, "paths.clips": clips}.items()]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        f"training already complete: step 4 of 4 in {out / 'last.pt'}; "
        "nothing to do (raise train.steps to continue)"
    ) in done.stderr
    assert json.loads(done.stdout)["already_complete"] is True
    second = tracking.recorded_run(params, client)
    assert second.info.run_id != first and second.data.tags["clipsep.stage.train"] == "skipped"
    assert steps_of(client, second.info.run_id, "loss") == []
    after = {k: v for k, v in file_states(out).items() if not k.startswith(".stage-")}
    assert after == before
    assert stage_record.read_record(out, "train") == trained  # seconds, run id: all kept

    shorter = _params(
        tmp_path, shared_inputs, "labelled", **{"paths.clips": clips, "train.steps": 2}
    )
    assert run_stage("train", shorter).summary["already_complete"] is True  # params changed
    kept = stage_record.read_record(out, "train")
    assert kept["parts"] == stages.stage_fingerprint("train", shorter).parts  # the skip reads it
    assert {**kept, "parts": trained["parts"], "fingerprint": trained["fingerprint"]} == trained
    assert run_stage("train", shorter, skip_unchanged=True).skipped


def test_a_stage_run_with_other_params_starts_a_new_run(tmp_path, shared_inputs):  # noqa: F811
    """A pass continued with other params (here train.steps 4 -> 6) showed the first values in
    MLflow (train.steps=4 for a training of 6 steps): it now opens a new run with the params the
    stage ran with, and the old one ends KILLED naming the change."""
    clips, _, client, first = validated_pass(tmp_path, shared_inputs)
    longer = _params(  # eval.* is not train's to compare: the reason names train.steps only
        tmp_path,
        shared_inputs,
        "labelled",
        **{"paths.clips": clips, "train.steps": 6, "eval.mixtures_per_target": 3},
    )
    run_stage("train", longer)
    run = tracking.recorded_run(longer, client)
    assert run.info.run_id != first
    assert run.data.params["train.steps"] == "6"
    assert steps_of(client, run.info.run_id, "loss") == [1, 2, 3, 4, 5, 6]
    assert not [k for k in run.data.tags if k.startswith("clipsep.params_changed.")]
    old = client.get_run(first)
    assert old.info.status == "KILLED"
    assert old.data.tags[run_owner.END_REASON] == (
        "superseded: train ran with other params (train.steps: 4 -> 6)"
    )


def test_a_change_in_a_section_the_stage_does_not_read_continues_the_pass(tmp_path):
    """`clipsep evaluate` without the training's `--set model.preset=...` superseded the training's
    run (evaluate reads clip, audio and eval, not model or train): it continues it."""
    from clipsep.stages import STAGE_PARAMS

    params = tiny_params_at(tmp_path)
    first = live_run.open_run(params, "train", reads=STAGE_PARAMS["train"])
    other = tiny_params_at(tmp_path, **{"model.preset": "cpu", "train.steps": 9})
    continued = live_run.open_run(other, "evaluate", reads=STAGE_PARAMS["evaluate"])
    assert continued.run_id == first.run_id
    run = tracking.client_for(params).get_run(first.run_id)
    assert run.data.params["model.preset"] == "tiny"  # what the training ran with
    assert not [k for k in run.data.tags if k.startswith("clipsep.params_changed.")]
    assert run.info.status == "RUNNING" and run_owner.END_REASON not in run.data.tags


def test_a_stage_writing_to_another_path_starts_a_new_run(tmp_path):
    """New-user trial: `clipsep pretrain-clip --set paths.clip_model=/tmp/x` continued the open
    run, whose params kept the first paths.clip_model. A path the stage reads or writes counts
    as its params do; a path it does not use does not."""
    from clipsep.stages import stage_reads

    params = tiny_params_at(tmp_path)
    first = live_run.open_run(params, "validate", reads=stage_reads("validate"))
    moved = tiny_params_at(tmp_path, **{"paths.clip_model": str(tmp_path / "x")})
    continued = live_run.open_run(moved, "ingest", reads=stage_reads("ingest"))  # no CLIP there
    assert continued.run_id == first.run_id
    other = live_run.open_run(moved, "pretrain-clip", reads=stage_reads("pretrain-clip"))
    assert other.run_id != first.run_id
    client = tracking.client_for(params)
    assert client.get_run(other.run_id).data.params["paths.clip_model"] == str(tmp_path / "x")
    old = client.get_run(first.run_id)
    assert old.info.status == "KILLED"
    assert old.data.tags[run_owner.END_REASON] == (
        f"superseded: pretrain-clip ran with other params (paths.clip_model: models/clip -> "
        f"{tmp_path / 'x'})"
    )


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"waited {seconds} s for {what}")


def test_a_sigkilled_training_is_ended_killed_by_the_next_call(tmp_path, shared_inputs):  # noqa: F811
    overrides = {
        "paths.root": str(tmp_path),
        "paths.clip_model": str(shared_inputs["clip_model"]),
        "paths.clips": str(shared_inputs["labelled"]),
        "train.steps": 100_000,
        "train.decay_steps": 100_000,
        "train.validate_every": 100_000,
        "registry.system_metrics_s": 1,
    }
    params = _params(tmp_path, shared_inputs, "labelled", **overrides)
    command = [sys.executable, "-m", "clipsep.cli", "train", "--profile", "tiny"]
    command += [f"--set={k}={v}" for k, v in overrides.items()]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    training = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        client = tracking.client_for(params)

        def logged_steps():
            run = (
                tracking.recorded_run(params, client)
                if tracking.run_file(params).is_file()
                else None
            )
            if run is None or training.poll() is not None:
                return None
            system = [k for k in run.data.metrics if k.startswith("system/")]
            return run if run_owner.reached_step(run) and system else None

        wait_for(logged_steps, 240, "training steps and a system metrics sample")
        tracking.connect(params)  # the owner is alive: its run is left RUNNING
        run = tracking.recorded_run(params, client)
        assert run.info.status == "RUNNING"
        assert run.data.tags[run_owner.PID] == str(training.pid)
        assert "system/cpu_utilization_percentage" in run.data.metrics
    finally:
        training.send_signal(signal.SIGKILL)
        training.wait(30)
    assert tracking.recorded_run(params, client).info.status == "RUNNING"  # nobody closed it
    tracking.connect(params)  # the next train/register/flow opens the store
    killed = tracking.recorded_run(params, client)
    assert killed.info.status == "KILLED"
    step = run_owner.reached_step(killed)
    assert step >= 1 and killed.data.tags[run_owner.REACHED_STEP] == str(step)
    reason = killed.data.tags[run_owner.END_REASON]
    assert f"owner process {training.pid}" in reason and f"reached step {step}" in reason
    assert killed.data.tags["clipsep.stage.train"] == "killed"


def test_only_runs_of_dead_owners_on_this_host_are_ended(tiny_params):
    client, experiment = tracking.connect(tiny_params)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    runs = {name: client.create_run(experiment).info.run_id for name in ("alive", "dead", "away")}
    try:
        for key, value in run_owner.owner_tags(sleeper.pid).items():
            client.set_tag(runs["alive"], key, value)
            client.set_tag(runs["dead"], key, value)
        client.set_tag(runs["away"], run_owner.HOST, "another-host")
        client.set_tag(runs["away"], run_owner.PID, "1")
        client.set_tag(runs["dead"], run_owner.STARTED, "1.0")  # the pid was reused since
        assert run_owner.end_orphans(client, experiment) == [runs["dead"]]
        assert client.get_run(runs["alive"]).info.status == "RUNNING"
    finally:
        sleeper.kill()
        sleeper.wait(30)
    assert run_owner.end_orphans(client, experiment) == [runs["alive"]]
    assert client.get_run(runs["away"]).info.status == "RUNNING"  # cannot be judged from here


def test_a_second_release_of_the_same_run_is_harmless(tiny_params):
    """Two evaluations on one store share the pipeline run: the second release found the owner
    tags gone and crashed ("No tag with name: clipsep.owner.host")."""
    client, experiment = tracking.connect(tiny_params)
    run_id = client.create_run(experiment).info.run_id
    run_owner.claim(client, run_id, driver=None)
    run_owner.release(client, run_id)
    run_owner.release(client, run_id)
    tags = client.get_run(run_id).data.tags
    assert not {run_owner.HOST, run_owner.PID, run_owner.STARTED} & set(tags)


def test_a_run_without_a_stage_is_ended_when_its_driver_is_gone(tiny_params):
    client, experiment = tracking.connect(tiny_params)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    names = ("driven", "abandoned", "writing", "away")
    runs = {name: client.create_run(experiment).info.run_id for name in names}
    try:
        alive = run_owner.owner_tags(sleeper.pid)
        tags = {
            "driven": run_owner.owner_tags(sleeper.pid, run_owner.DRIVER),
            "abandoned": {
                **run_owner.owner_tags(sleeper.pid, run_owner.DRIVER),
                run_owner.DRIVER + "started": "1.0",  # that pid's process is gone
                run_owner.DRIVER_COMMAND: "dvc repro",
                run_owner.STAGE_TAG + "validate": "done",
            },
            "writing": {  # a stage still writes: its own process decides, not its late driver
                **alive,
                **run_owner.owner_tags(sleeper.pid, run_owner.DRIVER),
                run_owner.DRIVER + "started": "1.0",
            },
            "away": {run_owner.DRIVER + "host": "another-host", run_owner.DRIVER + "pid": "1"},
        }
        for name, values in tags.items():
            for key, value in values.items():
                client.set_tag(runs[name], key, value)
        assert run_owner.end_orphans(client, experiment) == [runs["abandoned"]]
    finally:
        sleeper.kill()
        sleeper.wait(30)
    abandoned = client.get_run(runs["abandoned"])
    assert abandoned.info.status == "KILLED"
    assert abandoned.data.tags[run_owner.END_REASON] == (
        f"the pipeline's driver, process {sleeper.pid} (dvc repro) on {socket.gethostname()}, "
        "is gone between stages (stages done: validate) before register closed the run: it was "
        "killed, or ran only part of the pipeline (e.g. `dvc repro train`); the pass's next "
        "stage continues this run"
    )
    assert sorted(run_owner.end_orphans(client, experiment)) == sorted(
        [runs["driven"], runs["writing"]]
    )
    assert client.get_run(runs["away"]).info.status == "RUNNING"  # cannot be judged from here


def cli_stage(stage: str, params_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "clipsep.cli", stage, *params_args]


def stage_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def between_stages(params, driver: subprocess.Popen, marker: Path):
    """Wait until ``driver`` is between two stages (``marker`` exists): the run's first stage is
    done, no process writes the run, and it is held by the driver; -> that run."""
    wait_for(lambda: marker.exists() or driver.poll() is not None, 300, "the first stage")
    assert driver.poll() is None, "the driver ended early"
    client = tracking.client_for(params)
    tracking.connect(params)  # the driver is alive: its run stays open
    run = tracking.recorded_run(params, client)
    assert run.info.status == "RUNNING"
    assert run.data.tags[run_owner.STAGE_TAG + "validate"] == "done"
    assert run_owner.PID not in run.data.tags
    assert run.data.tags[run_owner.DRIVER + "pid"] == str(driver.pid)
    return run


def sigkill_and_check(params, driver: subprocess.Popen, run) -> str:
    """SIGKILL ``driver``; the run stays RUNNING until the store is opened, then is KILLED;
    -> its end reason."""
    client = tracking.client_for(params)
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # nobody closed it
    tracking.connect(params)  # the next stage, flow or register opens the store
    killed = client.get_run(run.info.run_id)
    assert killed.info.status == "KILLED"
    reason = killed.data.tags[run_owner.END_REASON]
    assert f"the pipeline's driver, process {driver.pid} (" in reason
    assert "is gone between stages (stages done: validate)" in reason
    return reason


def test_a_flow_process_sigkilled_between_stages_leaves_no_running_run(
    tmp_path,
    shared_inputs,  # noqa: F811
):
    """The flow runs stages in-process: its own process drives the pipeline."""
    clips = valid_clips(tmp_path, shared_inputs)
    params = tiny_params_at(tmp_path, **{"paths.clips": clips})
    marker = tmp_path / "between"
    script = (
        "import pathlib, sys, time\n"
        "from clipsep.config import load_params\n"
        "from clipsep.stages import run_stage\n"
        "overrides = {'paths.root': sys.argv[2], 'paths.clips': sys.argv[3]}\n"
        "run_stage('validate', load_params(sys.argv[1], profile='tiny', overrides=overrides))\n"
        "pathlib.Path(sys.argv[4]).touch()\n"
        "time.sleep(600)  # the next stage would start here\n"
    )
    args = [REPO / "params.yaml", tmp_path, clips, marker]
    command = [sys.executable, "-c", script, *map(str, args)]
    tracking.connect(params)  # the store exists before two processes open it
    flow = subprocess.Popen(command, cwd=REPO, env=stage_env())
    try:
        run = between_stages(params, flow, marker)
        assert run.data.tags[run_owner.DRIVER_COMMAND].startswith(sys.executable + " -c ")
        reason = sigkill_and_check(params, flow, run)
    finally:
        flow.kill()
        flow.wait(30)
    assert "(" + sys.executable + " -c import pathlib" in reason


WAIT_FOR_GO = """import pathlib, time
pathlib.Path("waiting").touch()
while not pathlib.Path("go").exists():
    time.sleep(0.2)
pathlib.Path("waited").touch()
"""


def dvc_project(tmp_path: Path, params_args: list[str]) -> Path:
    """A dvc project: validate -> a stage that waits for the file ``go`` -> register."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "wait_for_go.py").write_text(WAIT_FOR_GO)
    quoted = " ".join(shlex.quote(a) for a in params_args)
    stages = {
        "validate": {
            "cmd": f"{sys.executable} -m clipsep.cli validate {quoted} && touch validated",
            "outs": [{"validated": {"cache": False}}],
        },
        "wait": {
            "cmd": f"{sys.executable} wait_for_go.py",
            "deps": ["validated"],
            "outs": [{"waited": {"cache": False}}],
        },
        "register": {
            "cmd": f"{sys.executable} -m clipsep.cli register {quoted}",
            "deps": ["waited"],
        },
    }
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return project


def test_dvc_sigkilled_between_stages_leaves_no_running_run_and_a_full_repro_closes_it(
    tmp_path,
    shared_inputs,  # noqa: F811
):
    """dvc runs each stage as its own ``clipsep <stage>``: the dvc process drives the pipeline."""
    dvc = Path(sys.executable).parent / "dvc"
    clips = valid_clips(tmp_path, shared_inputs)
    params = tiny_params_at(tmp_path, **{"paths.clips": clips})
    write_checkpoint(params, shared_inputs["clip_model"] / "clip.pt")  # what register reads
    write_training_outputs(params)
    write_metrics(params, text_sdr=3.0)
    params_args = ["--params", str(REPO / "params.yaml"), "--profile", "tiny"]
    params_args += ["--set", f"paths.root={tmp_path}", "--set", f"paths.clips={clips}"]
    project = dvc_project(tmp_path, params_args)
    env = {**stage_env(), "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "site")}
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=project, env=env, check=True)
    tracking.connect(params)  # the store exists before two processes open it
    repro = subprocess.Popen([dvc, "repro"], cwd=project, env=env, start_new_session=True)
    try:
        run = between_stages(params, repro, project / "waiting")
        assert " repro" in run.data.tags[run_owner.DRIVER_COMMAND]
        sigkill_and_check(params, repro, run)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the waiting stage outlives its dvc
            os.killpg(repro.pid, signal.SIGKILL)
        repro.wait(30)
    (project / "go").touch()
    done = subprocess.run([dvc, "repro", "--force"], cwd=project, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    client = tracking.client_for(params)
    closed = tracking.recorded_run(params, client)
    assert closed.info.run_id != run.info.run_id  # validate ran again: a new pass
    assert closed.info.status == "FINISHED"  # validate and register, one run, closed
    assert closed.data.tags[run_owner.STAGE_TAG + "validate"] == "done"
    assert closed.data.tags[run_owner.STAGE_TAG + "register"] == "done"
    assert live_run.EARLIER_END not in closed.data.tags  # not ended between its stages
    assert client.get_run(run.info.run_id).info.status == "KILLED"


def test_the_driver_is_this_process_dvc_or_nobody(monkeypatch):
    monkeypatch.delenv(run_owner.DVC_STAGE, raising=False)
    assert run_owner.pipeline_driver(in_process=True).pid == os.getpid()  # the flow, a program
    assert run_owner.pipeline_driver(in_process=False) is None  # `clipsep <stage>` by hand
    monkeypatch.setenv(run_owner.DVC_STAGE, "validate")  # as if dvc ran us, but none did
    assert run_owner.pipeline_driver(in_process=True) is None
    assert run_owner.driver_tags(None) == {}


def test_passes_into_two_folders_keep_a_run_each(tmp_path, shared_inputs):  # noqa: F811
    """A side-by-side experiment into another output folder (``--set paths.checkpoints=...``)
    shared the project's one pipeline run: its first stage ended the first folder's open run
    KILLED (superseded), and its evaluate logged into whichever run was open."""
    clips = valid_clips(tmp_path, shared_inputs)
    targets, interference = write_protocol(tmp_path)
    protocol = {"eval.targets_csv": str(targets), "eval.interference_csv": str(interference)}
    first = _params(tmp_path, shared_inputs, "labelled", **{"paths.clips": clips, **protocol})
    other_paths = {"paths.checkpoints": "models/other", "paths.evaluation": "reports/other"}
    other = _params(
        tmp_path, shared_inputs, "labelled", **{"paths.clips": clips, **protocol, **other_paths}
    )
    client = tracking.client_for(first)
    for stage in ("validate", "train"):  # the two passes interleaved
        run_stage(stage, first)
        run_stage(stage, other)
    evaluated = run_stage("evaluate", other).summary
    a, b = tracking.recorded_run(first, client), tracking.recorded_run(other, client)
    assert a.info.run_id != b.info.run_id
    assert tracking.run_file(first) != tracking.run_file(other)
    for run, params in ((a, first), (b, other)):
        assert run.info.status == "RUNNING"
        assert run_owner.END_REASON not in run.data.tags  # neither ended nor superseded
        assert not [k for k in run.data.tags if k.startswith("clipsep.params_changed.")]
        assert run.data.tags[live_run.CHECKPOINTS_TAG] == str(params.path("checkpoints"))
        assert run.data.params["paths.checkpoints"] == params.paths.checkpoints
        assert steps_of(client, run.info.run_id, "loss") == [1, 2, 3, 4]  # its own training
    assert b.data.tags[run_owner.STAGE_TAG + "evaluate"] == "done"
    assert run_owner.STAGE_TAG + "evaluate" not in a.data.tags
    logged = tracking.flatten_metrics(evaluated, "evaluate")  # the evaluation of folder B
    assert logged["evaluate/n_mixtures"] == 2
    assert {k: b.data.metrics[k] for k in logged} == pytest.approx(logged)
    assert not [k for k in a.data.metrics if k.startswith("evaluate/")]
    run_stage("validate", first)  # a new pass into the first folder supersedes its run only
    superseded = client.get_run(a.info.run_id)
    assert superseded.info.status == "KILLED"
    assert "superseded" in superseded.data.tags[run_owner.END_REASON]
    assert tracking.recorded_run(first, client).info.run_id not in (a.info.run_id, b.info.run_id)
    assert client.get_run(b.info.run_id).info.status == "RUNNING"
    assert tracking.recorded_run(other, client).info.run_id == b.info.run_id


def test_claiming_a_run_survives_a_release_between_mlflows_read_and_write(tmp_path):
    """CI (stop 28): a stage claimed the pass's run while another stage of it finished and
    released it; MLflow's sqlite set_tag read the owner tag, the release deleted it, and the
    update raised "expected to update 1 row(s); 0 were matched". The claim writes it again."""
    from mlflow.exceptions import MlflowException

    params = tiny_params_at(tmp_path)
    client, experiment = tracking.connect(params)
    run_id = client.create_run(experiment).info.run_id
    raced = []

    class ReleasedMeanwhile:  # the real client, but the first owner write loses the race
        def __getattr__(self, name):
            return getattr(client, name)

        def set_tag(self, run, key, value):
            if key == run_owner.PID and not raced:
                raced.append(key)
                raise MlflowException(
                    "UPDATE statement on table 'tags' expected to update 1 row(s); 0 were matched."
                )
            client.set_tag(run, key, value)

    run_owner.claim(ReleasedMeanwhile(), run_id, None)
    assert raced == [run_owner.PID]
    tags = client.get_run(run_id).data.tags
    assert tags[run_owner.PID] == str(os.getpid()) and run_owner.HOST in tags


def test_releasing_a_run_survives_another_release_between_read_and_delete(tmp_path):
    """Two stages of one pass (validate and evaluate started together) release the run: each
    reads the owner tags, then deletes them; the one that deletes second found the tag gone
    (MLflow: "No tag with name"). Both releases end with the owner tags gone, no error."""
    params = tiny_params_at(tmp_path)
    client, experiment = tracking.connect(params)
    run_id = client.create_run(experiment).info.run_id
    run_owner.claim(client, run_id, None)
    raced = []

    class ReleasedMeanwhile:  # the real client, but the other stage deletes the pid tag first
        def __getattr__(self, name):
            return getattr(client, name)

        def delete_tag(self, run, key):
            if key == run_owner.PID and not raced:
                raced.append(key)
                client.delete_tag(run, key)
            client.delete_tag(run, key)

    run_owner.release(ReleasedMeanwhile(), run_id)
    assert raced == [run_owner.PID]
    tags = client.get_run(run_id).data.tags
    assert not {run_owner.PID, run_owner.HOST, run_owner.STARTED} & set(tags)


OPEN_AT_ONCE = """import pathlib, sys, time
import mlflow  # imported before the start: the processes race only over the run
from clipsep.config import load_params
from clipsep.live_run import open_run
overrides = {"paths.root": sys.argv[2], "paths.checkpoints": sys.argv[3]}
params = load_params(sys.argv[1], profile="tiny", overrides=overrides)
pathlib.Path(sys.argv[4]).touch()
go = pathlib.Path(sys.argv[5])
while not go.exists():
    time.sleep(0.01)
run = open_run(params, sys.argv[6], in_process=False)
run.finish_stage({"n": 1})
print(run.run_id)
"""


def test_stages_started_together_share_their_folders_run_and_no_other(tmp_path):
    """Three stages start at once, two of one pass into one folder (validate and evaluate) and one
    into another: each folder gets one run (the folder's lock), none is superseded or ended. (The
    same stage twice in one folder is a new pass once the first finished: that order is a race.)"""
    params = {f: tiny_params_at(tmp_path, **{"paths.checkpoints": f}) for f in ("m/a", "m/b")}
    client, experiment = tracking.connect(params["m/a"])  # the store exists before they start
    go = tmp_path / "go"
    folders = ["m/a", "m/a", "m/b"]
    stages = ["validate", "evaluate", "evaluate"]
    ready = [tmp_path / f"ready-{number}" for number in range(len(folders))]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AT_ONCE, str(REPO / "params.yaml"), str(tmp_path)]
            + [folder, str(flag), str(go), stage],
            cwd=REPO,
            env=stage_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for folder, flag, stage in zip(folders, ready, stages)
    ]
    wait_for(
        lambda: all(flag.exists() or p.poll() is not None for flag, p in zip(ready, processes)),
        240,
        "the processes to be ready",
    )
    go.touch()
    run_ids = [process.communicate(timeout=240)[0].split()[-1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0]
    assert run_ids[0] == run_ids[1] != run_ids[2]
    for folder, run_id in zip(folders, run_ids):
        assert tracking.recorded_run(params[folder], client).info.run_id == run_id
    runs = client.search_runs([experiment])
    assert sorted(r.info.run_id for r in runs) == sorted(set(run_ids))  # no run left behind
    assert {r.info.status for r in runs} == {"RUNNING"}


def legacy_record(params, client, experiment: str, stage: str) -> str:
    """What an older version left: a pipeline run opened for ``params``, recorded in the one
    ``<paths.mlflow>/pipeline_run.json`` of the project; -> the run's id."""
    run_id = live_run._create(client, experiment, params, tracking.flatten_params(params), stage)
    client.set_tag(run_id, run_owner.STAGE_TAG + stage, "done")
    client.delete_tag(run_id, live_run.CHECKPOINTS_TAG)  # older versions did not tag it
    legacy = params.path("mlflow") / tracking.LEGACY_RUN_FILE
    legacy.write_text(json.dumps({"run_id": run_id, "experiment_id": experiment}))
    return run_id


def test_an_older_projects_open_run_is_taken_over_by_its_own_folder(tiny_params):
    other = tiny_params_at(Path(tiny_params.paths.root), **{"paths.checkpoints": "models/other"})
    client, experiment = tracking.connect(tiny_params)
    old = legacy_record(tiny_params, client, experiment, "validate")
    legacy = tiny_params.path("mlflow") / tracking.LEGACY_RUN_FILE
    opened = live_run.open_run(other, "validate")  # another folder: not its run
    assert opened.run_id != old
    assert legacy.is_file()  # still waiting for its folder
    continued = live_run.open_run(tiny_params, "train")  # its folder: the pass goes on
    assert continued.run_id == old
    assert not legacy.exists()
    assert json.loads(tracking.run_file(tiny_params).read_text()) == {
        "run_id": old,
        "experiment_id": experiment,
        "checkpoints": str(tiny_params.path("checkpoints")),
    }
    statuses = {run_id: client.get_run(run_id).info.status for run_id in (old, opened.run_id)}
    assert statuses == {old: "RUNNING", opened.run_id: "RUNNING"}


def test_an_older_record_of_a_run_the_store_lacks_is_dropped(tiny_params):
    client, _ = tracking.connect(tiny_params)
    legacy = tiny_params.path("mlflow") / tracking.LEGACY_RUN_FILE
    legacy.write_text(json.dumps({"run_id": "0" * 32, "experiment_id": "1"}))
    assert tracking.recorded_run(tiny_params, client) is None
    assert not legacy.exists()


def test_a_pass_whose_run_was_deleted_in_the_ui_opens_a_new_run(tiny_params):
    """Deleting the pipeline's run in the MLflow UI (its trash) between two stages: the next
    stage opens a new run instead of failing to reopen a deleted one."""
    first = live_run.open_run(tiny_params, "validate")
    first.finish_stage({"n_clips": 4})
    client = tracking.client_for(tiny_params)
    client.delete_run(first.run_id)
    assert tracking.recorded_run(tiny_params, client) is None
    second = live_run.open_run(tiny_params, "train")
    assert second.run_id != first.run_id
    assert client.get_run(second.run_id).info.status == "RUNNING"
    assert client.get_run(first.run_id).info.lifecycle_stage == "deleted"  # left in the trash


@pytest.mark.parametrize(
    "stage,overrides,message",
    [
        ("ingest", {"ingest.source": "nowhere/videos"}, "ingest.source {root}/nowhere/videos is"),
        ("ingest", {}, "no world videos at {root}/data/world/videos: run `clipsep world` first"),
        (
            "evaluate",
            {"eval.targets_csv": "t.csv", "eval.interference_csv": "i.csv"},
            "eval.targets_csv {root}/t.csv not found",
        ),
    ],
)
def test_a_file_the_params_name_missing_fails_before_any_mlflow_run(
    tmp_path, stage, overrides, message
):
    """New-user finding: an evaluate with a mistyped protocol CSV (or an ingest of a missing
    folder) opened the pipeline's MLflow run and ended it FAILED over a typo in params."""
    params = tiny_params_at(tmp_path, **overrides)
    if stage == "evaluate":  # a checkpoint is there: only the targets CSV is missing
        params.path("checkpoints").mkdir(parents=True)
        (params.path("checkpoints") / "best.pt").write_bytes(b"")
        (tmp_path / "i.csv").write_text("audio_path,frames_dir,label\n")
    with pytest.raises(BadInputError) as raised:
        run_stage(stage, params)
    assert str(raised.value).startswith(message.format(root=tmp_path))
    client, experiment = tracking.connect(params)
    assert client.search_runs([experiment]) == []


@pytest.mark.parametrize(
    "error,status,reason",
    [
        (KeyboardInterrupt(), "KILLED", "train: interrupted (KeyboardInterrupt)"),
        (SystemExit(143), "KILLED", "train: interrupted (SystemExit 143)"),
        (GeneratorExit(), "KILLED", "train: interrupted (GeneratorExit)"),
        (RuntimeError("boom"), "FAILED", "train: RuntimeError: boom"),
    ],
)
def test_how_a_training_ended_is_named(error, status, reason):
    """New-user trial: Ctrl-C under torchrun left the run FAILED with 'train: GeneratorExit: '
    and a single-process Ctrl-C read 'interrupted (KeyboardInterrupt )'."""
    assert loop.run_end(error) == (status, reason)
    assert live_run.end_status(error) == status  # every stage's run ends alike
