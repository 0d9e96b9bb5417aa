"""End to end with real parts: a Prefect server on a free loopback port, the served deployment,
``prefect deployment run ... --watch`` on the tiny profile, then the MLflow registry and the run's
Prefect artifacts are checked. Everything lives in tmp (own PREFECT_HOME, HOME, MLflow store)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import servers
from conftest import REPO

from clipsep.config import dump_params, load_params
from clipsep.env import OFFLINE_DEFAULTS


DEPLOYMENT = "itest"
BIN = Path(sys.executable).parent


def make_project(root: Path) -> Path:
    """A git-committed copy of the working tree whose params.yaml is the tiny profile."""
    # tracked + not-ignored untracked files: the working tree as it is, without data or venv
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        source, target = REPO / name, root / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    tiny = load_params(  # a tiny project: its data, models and store at its root
        REPO / "params.yaml",
        profile="tiny",
        overrides={"registry.champion_floor_db": -100.0, "paths.root": "."},
    )
    dump_params(tiny, root / "params.yaml")
    git = ["git", "-c", "user.name=itest", "-c", "user.email=itest@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "tiny project"]):
        subprocess.run(git + args, cwd=root, check=True, capture_output=True)
    return root


def platform_env(tmp: Path, port: int) -> dict[str, str]:
    env = {
        **os.environ,
        **OFFLINE_DEFAULTS,
        "HOME": str(tmp / "home"),
        "PREFECT_HOME": str(tmp / "prefect_home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "COLUMNS": "200",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    (tmp / "home").mkdir(exist_ok=True)
    return env


def api(port: int, path: str, body: dict | None = None):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api{path}",
        method="POST" if body is not None else "GET",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def deployment_exists(port: int):
    def check() -> bool:
        try:
            return bool(api(port, f"/deployments/name/train-clipsep/{DEPLOYMENT}").get("id"))
        except OSError:
            return False

    return check


@pytest.fixture
def platform(tmp_path: Path):
    """(project dir, env, port) with a Prefect server and the deployment runner up; then stopped."""
    project = make_project(tmp_path / "project")
    port = servers.free_port()
    env = platform_env(tmp_path, port)
    logs = tmp_path / "logs"
    server = servers.start(
        "prefect-server",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        project,
        logs,
    )
    runner = None
    try:
        servers.wait_until(
            servers.http_ok(f"http://127.0.0.1:{port}/api/health"), server, 180, "healthy API"
        )
        runner = servers.start(
            "runner",
            [sys.executable, "-m", "flows.serve", "--name", DEPLOYMENT, "--params", "params.yaml"],
            env,
            project,
            logs,
        )
        servers.wait_until(deployment_exists(port), runner, 180, "deployment")
        yield project, env, port, runner
    finally:  # runner first (it talks to the server), then the server
        if runner is not None:
            servers.stop(runner)
        servers.stop(server)


def trigger(project: Path, env: dict, *params: str) -> subprocess.CompletedProcess:
    """`prefect deployment run ... --watch`, the documented way to start a run by hand."""
    command = [str(BIN / "prefect"), "deployment", "run", f"train-clipsep/{DEPLOYMENT}"]
    for param in params:
        command += ["-p", param]
    return subprocess.run(
        command + ["--watch", "--watch-interval", "2", "--watch-timeout", "1200"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=1300,
    )


def artifacts(port: int, *keys: str) -> dict[str, dict]:
    found = api(port, "/artifacts/filter", {"artifacts": {"key": {"any_": list(keys)}}})
    return {a["key"]: a for a in found}


def test_planned_stages_skip_the_world_only_when_nothing_needs_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect_home"))  # importing prefect makes it
    from flows.train_clipsep import flow_params, planned_stages

    default = flow_params(str(REPO / "params.yaml"), "tiny", [], None)
    assert planned_stages(default) == [
        "world",
        "ingest",
        "validate",
        "pretrain-clip",
        "train",
        "evaluate",
        "register",
    ]
    own = flow_params(
        str(REPO / "params.yaml"),
        "tiny",
        ["clip.pretrained=/x/clip.pt", "eval.targets_csv=t.csv", "eval.interference_csv=i.csv"],
        str(tmp_path),
    )
    assert own.ingest.source == str(tmp_path.resolve())
    assert planned_stages(own) == ["ingest", "validate", "train", "evaluate", "register"]


def test_stage_times_table_names_each_stage_the_total_and_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect_home"))
    from clipsep.stages import StageRun
    from flows.train_clipsep import timing_markdown

    runs = [
        StageRun("world", {}, True, "ab12", "unchanged", 0.01),
        StageRun("train", {}, False, "cd34", "params changed since the last run", 61.0),
    ]
    table = timing_markdown(runs, {"world": 0.21, "train": 61.04}, 63.5, "Some CPU @ 2.0GHz")
    assert "| world | 0.2 | skipped (unchanged) |" in table
    assert "| train | 61.0 | ran |" in table
    complete = StageRun("train", {"already_complete": True}, False, "ef56", "code changed", 3.0)
    again = timing_markdown([complete], {"train": 3.04}, 3.1, "Some CPU @ 2.0GHz")
    assert "| train | 3.0 | nothing to do (training already complete) |" in again
    assert "| **total** | **63.5** | |" in table and table.endswith("CPU: Some CPU @ 2.0GHz")


def test_stage_times_log_line_is_one_line_with_each_stage_and_the_total(tmp_path, monkeypatch):
    # the table is printed once, in the closing message; the flow's log gets this line
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect_home"))
    from clipsep.stages import StageRun
    from flows.train_clipsep import timing_line

    runs = [
        StageRun("world", {}, True, "ab12", "unchanged", 0.01),
        StageRun("train", {}, False, "cd34", "params changed since the last run", 61.0),
    ]
    line = timing_line(runs, {"world": 0.21, "train": 61.04}, 63.5)
    assert line == "world 0.2 s (skipped), train 61.0 s, total 63.5 s"


@pytest.mark.parametrize(
    "alias,model", [("champion", "models:/clipsep@champion"), ("", "models:/clipsep/1")]
)
def test_closing_lines_name_the_model_by_alias_else_by_version(tmp_path, monkeypatch, alias, model):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect_home"))
    from flows.train_clipsep import where_to_look

    registered = {
        "alias": alias,
        "model_name": "clipsep",
        "model_uri": "models:/clipsep/1",
        "text_sdr": 3.34,
        "reason": "already registered as models:/clipsep/1; nothing registered",
        "already_registered": True,
        "run_url": "http://127.0.0.1:5000/#/experiments/1/runs/r",
        "ui_command": "mlflow ui",
    }
    lines = where_to_look(registered).splitlines()
    arrow = f" -> @{alias}" if alias else ""
    assert lines[2].startswith(f"Already registered (unchanged) models:/clipsep/1{arrow} (text")
    assert lines[5].endswith(f"--query violin --model {model}")
    assert lines[6].startswith(f"App:         .venv/bin/python -m app --model {model}   ")
    # a run on a profile (or with its registry elsewhere): the commands look where it registered
    registered["example_query"] = "cello"
    overrides = ["train.steps=8", "paths.mlflow=/tmp/store"]
    lines = where_to_look(registered, "tiny", overrides).splitlines()
    where = "--profile tiny --set paths.mlflow=/tmp/store"
    assert lines[5].endswith(f"--query cello --model {model} {where}")
    assert lines[6].startswith(f"App:         .venv/bin/python -m app --model {model} {where}   ")
    # after training wrote its examples: one of them, and its first source's label, quoted
    registered.update(example_mixture="reports/evaluation/example/mixture.wav")
    registered.update(example_query="acoustic guitar")
    assert where_to_look(registered).splitlines()[5] == (
        "Separate:    .venv/bin/clipsep separate reports/evaluation/example/mixture.wav "
        f"--query 'acoustic guitar' --model {model}"
    )
    # a run under another root (a profile's) separates into that root, not the quick start's
    registered.update(separate_out="runs/tiny/separated")
    assert where_to_look(registered, "tiny").splitlines()[5] == (
        "Separate:    .venv/bin/clipsep separate reports/evaluation/example/mixture.wav "
        f"--query 'acoustic guitar' --out runs/tiny/separated --model {model} --profile tiny"
    )


def test_closing_command_separates_the_evaluations_example_with_its_query(tmp_path, monkeypatch):
    """The printed ``Separate:`` command names a file that exists (the evaluation's example
    mixture, relative to where the run was started) and the query the protocol asked of it;
    MIX.wav and a class of the world only without one."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect_home"))
    from clipsep.stages import StageRun
    from flows.train_clipsep import example_command_parts

    def runs(summary: dict) -> list[StageRun]:
        return [StageRun("evaluate", summary, True, "0" * 12, "unchanged", 0.1)]

    classes = ["cello", "flute", "violin"]
    mixture = tmp_path / "reports" / "evaluation" / "example" / "mixture.wav"
    example = {"mixture": str(mixture), "target": "t.wav", "query": "acoustic guitar"}
    # an older evaluation's record (no example), or its file gone: MIX.wav
    assert example_command_parts(runs({"text_sdr": 3.0}), classes) == {"example_query": "violin"}
    assert example_command_parts(runs({"example": example}), ["cello"]) == {
        "example_query": "cello"
    }
    mixture.parent.mkdir(parents=True)
    mixture.write_bytes(b"RIFF")
    monkeypatch.chdir(tmp_path)
    assert example_command_parts(runs({"example": example}), classes) == {
        "example_mixture": "reports/evaluation/example/mixture.wav",
        "example_query": "acoustic guitar",
    }
    monkeypatch.chdir(REPO)  # started elsewhere: the absolute path
    parts = example_command_parts(runs({"example": example}), classes)
    assert parts["example_mixture"] == str(mixture)


def test_a_run_under_another_root_separates_into_it(tmp_path, monkeypatch):
    """New-user trial: the tiny profile's printed command wrote separated/mixture/, replacing
    what the quick start's printed command had written there."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect_home"))
    from flows.train_clipsep import separate_out

    monkeypatch.chdir(tmp_path)
    assert separate_out(tmp_path) == {}
    assert separate_out(tmp_path / "runs" / "tiny") == {"separate_out": "runs/tiny/separated"}


def test_bad_params_are_one_line_before_prefect_starts(tmp_path, monkeypatch, capsys):
    """New-user trial: `python -m flows --set train.stpes=1` started Prefect's temporary server,
    recorded a failed flow run and printed a traceback before the line that says what to fix."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect_home"))
    import flows.train_clipsep as flow_module

    def never(**_):
        raise AssertionError("the flow started on bad params")

    monkeypatch.setattr(flow_module, "train_clipsep", never)
    params = ["--params", str(REPO / "params.yaml")]
    assert flow_module.main([*params, "--set", "train.stpes=1"]) == 2
    assert flow_module.main([*params, "--profile", "tyni"]) == 2
    # a file the params name, missing (new-user trial: ingest retried twice, 33 s; a missing
    # eval CSV failed after world..train had run, leaving the MLflow run RUNNING)
    missing = tmp_path / "missing.csv"
    assert flow_module.main([*params, "--set", f"ingest.labels_csv={missing}"]) == 2
    both = ["--set", f"eval.targets_csv={missing}", "--set", f"eval.interference_csv={tmp_path}"]
    assert flow_module.main([*params, *both]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    failed = [line for line in lines if line.startswith("train-clipsep failed: ")]
    assert len(failed) == 4, lines
    assert "unknown key 'stpes'" in failed[0] and "unknown profile 'tyni'" in failed[1]
    assert failed[2] == f"train-clipsep failed: ingest.labels_csv {missing} not found " + (
        "(relative paths are under paths.root)"
    )
    assert failed[3].startswith(f"train-clipsep failed: eval.targets_csv {missing} not found")


def test_metrics_table_gives_mean_sem_and_median(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect_home"))
    from flows.train_clipsep import metrics_markdown

    stat = {"mean": 0.994, "sem": 1.091, "median": 0.5}
    metrics = {"text": {"sdr": stat, "sdri": stat}, "n_mixtures": 4, "backend": "museval v4"}
    registered = {"version": "1", "alias": "challenger", "reason": "r", "data_version": "d"}
    table = metrics_markdown(metrics, {**registered, "git_commit": "0123456789abc"})
    assert "| text | 0.99 ± 1.09 (0.50) | – | – | – | 0.99 ± 1.09 (0.50) |" in table
    assert table.endswith(
        "mean ± s.e.m. (median) over 4 test mixtures, museval v4; data version "
        "`d`, git `0123456789`"
    )


def test_the_environment_is_set_by_the_entry_point_not_by_imports(tmp_path):
    """Importing the flow changes no environment variable; `python -m flows` sets them first."""
    from flows.entry import PREFECT_DEFAULTS

    ours = {**OFFLINE_DEFAULTS, **PREFECT_DEFAULTS}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(PREFECT_HOME=str(tmp_path / "prefect_home"), PYTHONPATH=str(REPO))
    probe = (
        "import os; before = dict(os.environ); import flows.train_clipsep; "
        f"print(sorted(k for k in {sorted(ours)!r} if os.environ.get(k) != before.get(k)))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip().splitlines()[-1] == "[]"
    launched = subprocess.run(
        [sys.executable, "-m", "flows", "--help"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0 and "usage: python -m flows" in launched.stdout, launched.stderr
    refused = subprocess.run(
        [sys.executable, "-m", "flows.train_clipsep"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode != 0 and "python -m flows" in refused.stderr


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_deployment_run_registers_a_model_with_lineage(platform):
    from mlflow import MlflowClient

    project, env, port, runner = platform
    done = trigger(project, env, 'overrides=["train.steps=4"]')
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{runner.log_tail()}"
    assert "Completed" in done.stdout, done.stdout

    store = f"sqlite:///{project}/mlruns/mlflow.db"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    version = client.get_model_version_by_alias("clipsep", "champion")
    assert str(version.version) == "1"
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True
    ).stdout.strip()
    manifest = project / "data" / "clips" / "manifest.csv"
    assert version.tags["git_commit"] == head
    assert version.tags["data_version"] == hashlib.md5(manifest.read_bytes()).hexdigest()
    assert version.tags["gate_decision"] == "champion"
    run = client.get_run(version.tags["run_id"])
    assert run.data.params["train.steps"] == "4"
    assert "eval/text/sdr/mean" in run.data.metrics

    by_key = artifacts(port, "clipsep-metrics", "clipsep-mlflow-run", "clipsep-train-progress")
    assert "| text |" in by_key["clipsep-metrics"]["data"]
    assert float(by_key["clipsep-train-progress"]["data"]) == 100.0  # training's live progress
    assert version.tags["run_id"] in by_key["clipsep-mlflow-run"]["data"]

    # a failing data gate stops the flow before training and publishes its report
    rejected = trigger(project, env, 'overrides=["validate.min_clips=100000"]')
    assert rejected.returncode != 0 and "Failed" in rejected.stdout, rejected.stdout
    report = artifacts(port, "clipsep-validation-failed")["clipsep-validation-failed"]["data"]
    assert "100000" in report or "min_clips" in report, report
    assert len(client.search_model_versions("name='clipsep'")) == 1


def test_a_prefect_home_that_does_not_exist_is_made(tmp_path, monkeypatch):
    """New-user trial: PREFECT_HOME=$PWD/.platform/prefect before .platform existed: Prefect
    warned it could not create it, and its temporary server timed out 90 s later."""
    from flows.entry import prepare_environment

    home = tmp_path / ".platform" / "prefect"
    monkeypatch.setenv("PREFECT_HOME", str(home))
    before = dict(os.environ)
    try:
        prepare_environment()
    finally:  # the defaults it sets are not this test process's to keep
        os.environ.clear()
        os.environ.update(before)
    assert home.is_dir()
