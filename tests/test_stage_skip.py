"""A stage whose inputs are unchanged since its last successful run is skipped (and says so); a
changed param, input file or output runs it again, and the stages that depend on it."""

from __future__ import annotations

import json
import logging
import os

import pytest
from conftest import tiny_params_at
from platform_inputs import save_random_clip, write_pipeline_outputs

from clipsep import stage_record
from clipsep.stages import run_stage

DATA_STAGES = ("world", "ingest", "validate", "pretrain-clip")


def run_all(p, names=DATA_STAGES) -> dict:
    return {name: run_stage(name, p, skip_unchanged=True) for name in names}


def ran(runs: dict) -> list[str]:
    return [name for name, run in runs.items() if not run.skipped]


# --- the record itself, on plain files ------------------------------------------------------------


def test_tree_identity_follows_files_but_not_hidden_ones(tmp_path):
    folder = tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.txt").write_text("a")
    before = stage_record.tree_identity(folder)
    (folder / ".stage-x.json").write_text("{}")
    (folder / ".a.tmp-1.txt").write_text("half")
    assert stage_record.tree_identity(folder) == before
    (folder / "sub" / "a.txt").write_text("ab")
    assert stage_record.tree_identity(folder) != before
    assert stage_record.tree_identity(tmp_path / "missing") == "absent"
    code = tmp_path / "code.py"
    code.write_text("x = 1\n")
    by_content = stage_record.tree_identity(code, content=True)
    os.utime(code, ns=(1, 1))  # touched, same bytes: code counts by content
    assert stage_record.tree_identity(code, content=True) == by_content


def test_compare_names_what_changed(tmp_path):
    data, out = tmp_path / "data.csv", tmp_path / "out"
    data.write_text("1\n")
    out.mkdir()
    (out / "result.json").write_text("{}")

    def fp(params):
        return stage_record.fingerprint(params, {}, {"data": data})

    assert stage_record.compare(out, "s", fp({"k": 1}), out) == (
        None,
        "no record of a successful run",
    )
    stage_record.write_record(out, "s", fp({"k": 1}), out, {"rows": 1}, 0.5)
    assert stage_record.compare(out, "s", fp({"k": 1}), out) == ({"rows": 1}, "unchanged")
    assert stage_record.compare(out, "s", fp({"k": 2}), out)[1] == (
        "params changed since the last run"
    )
    data.write_text("1\n")  # an input file rewritten with the same bytes: unchanged
    assert stage_record.compare(out, "s", fp({"k": 1}), out)[1] == "unchanged"
    data.write_text("2\n")
    assert stage_record.compare(out, "s", fp({"k": 1}), out)[1] == (
        "inputs changed since the last run"
    )
    data.write_text("1\n")
    (out / "result.json").unlink()
    summary, reason = stage_record.compare(out, "s", fp({"k": 1}), out)
    assert summary is None and reason.startswith(f"outputs in {out} changed or missing")


# --- real stages on the tiny profile --------------------------------------------------------------


@pytest.mark.slow
def test_unchanged_stages_are_skipped_and_a_change_reruns_what_depends_on_it(tmp_path, caplog):
    p = tiny_params_at(tmp_path)
    first = run_all(p)
    assert ran(first) == list(DATA_STAGES)

    with caplog.at_level(logging.INFO, logger="clipsep"):
        second = run_all(p)
    assert ran(second) == []
    for stage, run in second.items():
        assert (
            f"{stage}: inputs unchanged since the last run (fingerprint {run.fingerprint}), skipped"
        ) in caplog.text
        assert run.summary == json.loads(json.dumps(first[stage].summary, default=str))

    # a param only the gate reads: the gate runs, nothing before it, nor pretrain-clip
    gate = tiny_params_at(tmp_path, **{"validate.min_clips": 5})
    assert ran(run_all(gate)) == ["validate"]
    # an ingest param: ingest rewrites the clips, so the gate (which reads them) runs too
    frames = tiny_params_at(tmp_path, **{"validate.min_clips": 5, "ingest.frame_size": 48})
    assert ran(run_all(frames)) == ["ingest", "validate"]
    # an output removed since the record: that stage runs again
    (p.path("validation") / "report.html").unlink()
    assert ran(run_all(frames)) == ["validate"]
    # the CLI's path (skip_unchanged=False) always runs, and records
    assert not run_stage("validate", frames).skipped
    assert ran(run_all(frames)) == []


@pytest.mark.slow
def test_register_skips_only_while_its_version_is_in_the_store(tmp_path, monkeypatch):
    """Registering twice with nothing changed must not add a duplicate model version."""
    from mlflow import MlflowClient

    from clipsep.registry_reader import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    p = tiny_params_at(tmp_path / "project", **{"registry.champion_floor_db": -100.0})
    clip = save_random_clip(p, tmp_path / "clip.pt")
    write_pipeline_outputs(p, text_sdr=4.5, clip_weights=clip)

    first = run_stage("register", p, skip_unchanged=True)
    again = run_stage("register", p, skip_unchanged=True)
    assert not first.skipped and again.skipped
    assert again.summary["version"] == first.summary["version"] == "1"
    client = MlflowClient(tracking_uri=tracking_uri(p), registry_uri=tracking_uri(p))
    assert len(client.search_model_versions("name='clipsep'")) == 1

    client.delete_model_version("clipsep", "1")  # the version is gone: the record alone won't skip
    fresh = run_stage("register", p, skip_unchanged=True)
    assert not fresh.skipped and "is not in the store" in fresh.reason
    assert fresh.summary["version"] == "2"
