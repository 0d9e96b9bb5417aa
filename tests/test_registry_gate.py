"""The promotion gate: champion only when a model beats the champion by the margin (real MLflow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_params_at
from platform_inputs import (
    save_random_clip,
    write_checkpoint,
    write_metrics,
    write_pipeline_outputs,
)

from clipsep import tracking
from clipsep.config import RegistryConfig

torch.set_num_threads(1)

GATE = RegistryConfig(
    tracking_uri=None,
    experiment="clipsep",
    model_name="clipsep",
    promotion_margin_db=0.2,
    champion_floor_db=3.0,
    absent_margin_db=3.0,
    live_tracking=False,
    system_metrics_s=None,
)


def test_first_model_must_clear_the_floor():
    assert tracking.decide_alias(3.5, None, "p1", GATE).alias == "champion"
    below = tracking.decide_alias(2.0, None, "p1", GATE)
    assert below.alias == "challenger"
    assert "below the floor 3.00 dB" in below.reason


def test_a_model_that_leaks_stays_challenger():
    """An absent query returning nearly what the right query returns is a leak, whatever the SDR."""
    metrics = {
        "absent_query": {"energy_db": {"mean": -8.1}, "right_query_energy_db": {"mean": -7.0}}
    }
    gap = tracking.absent_gap_db(metrics)
    assert gap == pytest.approx(-1.1)
    leaky = tracking.decide_alias(9.0, None, "p1", GATE, gap)
    assert leaky.alias == "challenger" and "leaks" in leaky.reason
    assert tracking.decide_alias(9.0, None, "p1", GATE, -12.0).alias == "champion"
    assert tracking.absent_gap_db({"absent_query": {"energy_db": {"mean": None}}}) is None


def test_margin_and_protocol_decide_against_a_champion():
    champion = {"text_sdr": "5.0", "eval_protocol": "p1", "version": "1"}
    assert tracking.decide_alias(5.3, champion, "p1", GATE).alias == "champion"
    within_margin = tracking.decide_alias(5.1, champion, "p1", GATE)
    assert within_margin.alias == "challenger"
    assert "gain +0.10 dB, margin 0.20 dB" in within_margin.reason
    other_protocol = tracking.decide_alias(9.0, champion, "p2", GATE)
    assert other_protocol.alias == "challenger"
    assert "not comparable" in other_protocol.reason


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    """A tiny project whose registry is reused by the gate sequence below (one sqlite store)."""
    root = tmp_path_factory.mktemp("gate")
    p = tiny_params_at(
        root, **{"registry.champion_floor_db": 3.0, "registry.promotion_margin_db": 0.2}
    )
    clip = save_random_clip(p, root / "clip-source.pt")
    write_pipeline_outputs(p, text_sdr=5.0, clip_weights=clip)
    return p, clip


def test_worse_model_becomes_challenger_and_better_one_takes_over(project):
    p, clip = project
    client = tracking.client_for(p)
    first = tracking.register(p)
    assert (first["version"], first["alias"]) == ("1", "champion")

    write_checkpoint(p, clip, seed=1)  # a deliberately worse model
    write_metrics(p, text_sdr=4.0)
    worse = tracking.register(p)
    assert (worse["version"], worse["alias"]) == ("2", "challenger")
    assert "does not beat the champion" in worse["reason"] and "v1" in worse["reason"]
    assert str(client.get_model_version_by_alias("clipsep", "champion").version) == "1"
    tags = client.get_model_version("clipsep", "2").tags
    assert (tags["gate_decision"], tags["gate_reason"]) == ("challenger", worse["reason"])
    assert client.get_run(worse["run_id"]).data.tags["gate_reason"] == worse["reason"]

    write_checkpoint(p, clip, seed=2)
    write_metrics(p, text_sdr=5.5)
    better = tracking.register(p)
    assert (better["version"], better["alias"]) == ("3", "champion")
    assert str(client.get_model_version_by_alias("clipsep", "champion").version) == "3"
    assert "champion" not in client.get_model_version("clipsep", "1").aliases


def test_first_model_under_the_floor_is_only_a_challenger(project):
    """A fresh registered model name in the same store: no champion, SDR below the floor."""
    p, _ = project
    client, _ = tracking.connect(p)
    client.create_registered_model("clipsep-floor")
    version = client.create_model_version("clipsep-floor", source=str(Path(p.path("checkpoints"))))
    decision = tracking.apply_gate(client, "clipsep-floor", version.version, 1.0, "p1", p.registry)
    assert decision.alias == "challenger"
    stored = tracking.client_for(p).get_model_version_by_alias("clipsep-floor", "challenger")
    assert stored.tags["gate_decision"] == "challenger"
    assert "below the floor" in stored.tags["gate_reason"]


def test_an_unreadable_store_is_not_no_champion(tmp_path):
    """A store that cannot be read stops `register` with a clear error: it never promotes."""
    from clipsep.cli import main
    from clipsep.registry_reader import ModelNotFoundError, RegistryUnavailableError, resolve_model

    p = tiny_params_at(tmp_path)
    write_pipeline_outputs(
        p, text_sdr=9.0, clip_weights=save_random_clip(p, tmp_path / "clip-source.pt")
    )
    client, _ = tracking.connect(p)  # a store that was fine when the run started ...
    assert tracking.champion_tags(client, "clipsep") is None  # ... and has no champion yet
    store = p.path("mlflow") / "mlflow.db"
    garbage = b"this is not an sqlite database\n" * 64
    store.write_bytes(garbage)  # ... and then cannot be read
    with pytest.raises(RegistryUnavailableError, match="cannot read the MLflow store"):
        tracking.champion_tags(client, "clipsep")
    uri = tracking.tracking_uri(p)
    with pytest.raises(RegistryUnavailableError, match="cannot read the MLflow store"):
        tracking.register(p)
    with pytest.raises(RegistryUnavailableError):
        resolve_model("models:/clipsep@champion", tracking_uri=uri, cache_dir=tmp_path / "c")
    assert not issubclass(RegistryUnavailableError, ModelNotFoundError)
    flags = ["--params", str(p.source_file), "--profile", "tiny", "--set", f"paths.root={tmp_path}"]
    assert main(["register", *flags]) == 2
    assert store.read_bytes() == garbage  # nothing stored is lost or overwritten


def test_a_missing_alias_names_the_aliases_and_versions_there_are(tmp_path, monkeypatch, caplog):
    """After a tiny run the only model is below the floor: `@champion` names nothing, and the
    one-line error says that @challenger exists and which --model to give instead."""
    import soundfile as sf

    from clipsep.cli import main
    from clipsep.registry_reader import ModelNotFoundError, resolve_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    p = tiny_params_at(tmp_path, **{"registry.champion_floor_db": 3.0})
    client, _ = tracking.connect(p)
    uri = tracking.tracking_uri(p)
    client.create_registered_model("clipsep")  # a name with no version yet: nothing to offer
    with pytest.raises(ModelNotFoundError, match="train and register one first"):
        resolve_model("models:/clipsep@champion", tracking_uri=uri, cache_dir=tmp_path / "c")
    version = client.create_model_version("clipsep", source=str(p.path("checkpoints")))
    decision = tracking.apply_gate(client, "clipsep", version.version, 1.0, "p1", p.registry)
    assert decision.alias == "challenger"

    with pytest.raises(ModelNotFoundError) as missing:
        resolve_model("models:/clipsep@champion", tracking_uri=uri, cache_dir=tmp_path / "c")
    assert str(missing.value) == (
        f"no model version models:/clipsep@champion in {uri}: clipsep has @challenger (v1), "
        "version 1; use models:/clipsep@challenger (or models:/clipsep/1)"
    )
    with pytest.raises(ModelNotFoundError, match=r"use models:/clipsep@challenger \("):
        resolve_model("models:/clipsep/7", tracking_uri=uri, cache_dir=tmp_path / "c")
    with pytest.raises(ModelNotFoundError, match="no registered model 'clipsepp', only clipsep"):
        resolve_model("models:/clipsepp@champion", tracking_uri=uri, cache_dir=tmp_path / "c")

    mix = tmp_path / "song.wav"
    sf.write(mix, [0.1, -0.1] * 8000, 16000)
    flags = ["--params", str(p.source_file), "--profile", "tiny", "--set", f"paths.root={tmp_path}"]
    caplog.clear()
    assert main(["separate", str(mix), "--query", "violin", *flags]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "@challenger (v1)" in errors[0]
    assert "use models:/clipsep@challenger (or models:/clipsep/1)" in errors[0]
    assert not (tmp_path / "separated").exists()


def test_a_mistyped_alias_suggests_the_closest_alias(tmp_path, monkeypatch, caplog):
    """`@champoin` is offered `@champion` (the closest name), not the newest version's alias; an
    alias close to none lists them all; a mistyped model name is offered the closest name. Every
    reader (resolve_model, describe_model, the CLI's separate) gives the same line."""
    from clipsep.cli import main
    from clipsep.registry_reader import ModelNotFoundError, describe_model, resolve_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    p = tiny_params_at(tmp_path)
    client, _ = tracking.connect(p)
    uri = tracking.tracking_uri(p)
    client.create_registered_model("clipsep")
    for _ in range(3):
        client.create_model_version("clipsep", source=str(p.path("checkpoints")))
    client.set_registered_model_alias("clipsep", "champion", "1")
    client.set_registered_model_alias("clipsep", "challenger", "3")
    cache = tmp_path / "cache"

    expected = (
        f"no model version models:/clipsep@champoin in {uri}: no alias 'champoin' on clipsep: "
        "did you mean @champion? (aliases: @challenger (v3), @champion (v1); versions 1-3); "
        "use models:/clipsep@champion"
    )
    with pytest.raises(ModelNotFoundError) as mistyped:
        resolve_model("models:/clipsep@champoin", tracking_uri=uri, cache_dir=cache)
    assert str(mistyped.value) == expected
    with pytest.raises(ModelNotFoundError) as described:  # the app's model card reads this way
        describe_model("models:/clipsep@champoin", uri)
    assert str(described.value) == expected

    with pytest.raises(ModelNotFoundError) as far:
        resolve_model("models:/clipsep@production", tracking_uri=uri, cache_dir=cache)
    assert str(far.value).endswith(
        "clipsep has @challenger (v3), @champion (v1), versions 1-3; "
        "use models:/clipsep@ALIAS with one of them (or models:/clipsep/3)"
    )
    client.create_registered_model("alpha")
    with pytest.raises(ModelNotFoundError) as name:
        resolve_model("models:/clipsp@champion", tracking_uri=uri, cache_dir=cache)
    assert str(name.value).endswith(
        "the store has no registered model 'clipsp', only alpha, clipsep; did you mean clipsep? "
        "use models:/clipsep@ALIAS or models:/clipsep/VERSION"
    )

    mix = tmp_path / "song.wav"
    import soundfile as sf

    sf.write(mix, [0.1, -0.1] * 8000, 16000)
    flags = ["--params", str(p.source_file), "--profile", "tiny", "--set", f"paths.root={tmp_path}"]
    caplog.clear()
    model = ["--model", "models:/clipsep@champoin"]
    assert main(["separate", str(mix), "--query", "violin", *model, *flags]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [expected]


def test_a_registered_checkpoint_is_not_registered_again(tmp_path, caplog, monkeypatch):
    """`clipsep evaluate` then `clipsep register` on the unchanged champion made v2, a copy of v1,
    and moved @challenger to it. The same checkpoint (by SHA-256: the version's tag, or for a
    version registered before the tag, its run's metrics.json) is now reported and left alone:
    no version, no alias moved, the pass's open run closed FINISHED with the reason."""
    from clipsep.cli import main
    from clipsep.live_run import open_run

    p = tiny_params_at(tmp_path, **{"registry.live_tracking": True})
    clip = save_random_clip(p, tmp_path / "clip-source.pt")
    write_pipeline_outputs(p, text_sdr=5.0, clip_weights=clip)
    first = tracking.register(p)
    assert (first["version"], first["alias"]) == ("1", "champion")
    client = tracking.client_for(p)
    digest = tracking.file_digest(p.path("checkpoints") / "best.pt")
    assert client.get_model_version("clipsep", "1").tags[tracking.CHECKPOINT_TAG] == digest
    client.set_registered_model_alias("clipsep", "challenger", "1")
    expected = (
        "already registered as models:/clipsep/1 (@champion, @challenger); nothing registered"
    )

    again = tracking.register(p)  # the Python API
    assert again["reason"] == expected and again["already_registered"] is True
    assert (again["version"], again["alias"], again["run_id"]) == ("1", "champion", first["run_id"])

    client.delete_model_version_tag("clipsep", "1", tracking.CHECKPOINT_TAG)  # an older version
    run = open_run(p, "evaluate", in_process=False)  # the pass an evaluation opened
    run.finish_stage({"n_mixtures": 4})
    flags = ["--params", str(p.source_file), "--profile", "tiny", "--set", f"paths.root={tmp_path}"]
    caplog.clear()
    assert main(["register", *flags]) == 0
    said = [r.getMessage() for r in caplog.records if "already registered" in r.getMessage()]
    assert said == [f"{p.path('checkpoints') / 'best.pt'}: {expected}"]
    assert [str(v.version) for v in client.search_model_versions("name='clipsep'")] == ["1"]
    aliases = client.get_registered_model("clipsep").aliases
    assert {a: str(v) for a, v in aliases.items()} == {"champion": "1", "challenger": "1"}
    ended = client.get_run(run.run_id)
    assert (ended.info.status, ended.info.lifecycle_stage) == ("FINISHED", "deleted")
    assert ended.data.tags["clipsep.end_reason"] == f"register skipped: {expected}"
    assert "model_version" not in ended.data.tags  # nothing was logged as a registration

    write_checkpoint(p, clip, seed=1)  # a new checkpoint is registered as before
    write_metrics(p, text_sdr=4.0)
    hashed, looked_up = [], []  # the live register stage asked twice: before its run, in it
    digest_of, lookup = tracking.file_digest, tracking.registered_version
    monkeypatch.setattr(
        tracking,
        "file_digest",
        lambda path, *a: hashed.append(Path(path).name) or digest_of(path, *a),
    )
    monkeypatch.setattr(
        tracking, "registered_version", lambda *a: looked_up.append(a[2]) or lookup(*a)
    )
    assert main(["register", *flags]) == 0
    versions = client.search_model_versions("name='clipsep'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    assert hashed.count("best.pt") == 1 and len(looked_up) == 1


def test_evaluating_a_registered_checkpoint_again_adds_no_run(tmp_path):
    """`clipsep evaluate` then the register stage on the unchanged champion, or a flow re-run with
    nothing changed, left one more FINISHED `tiny-pipeline` run each time, which no version points
    to. A pass that repeats version N's evaluation is now deleted; one that adds something (the
    same checkpoint scored with another result) stays FINISHED, named and tagged after N."""
    from clipsep.live_run import note_skipped, open_run
    from clipsep.stages import run_stage

    p = tiny_params_at(tmp_path, **{"registry.live_tracking": True})
    clip = save_random_clip(p, tmp_path / "clip-source.pt")
    write_pipeline_outputs(p, text_sdr=5.0, clip_weights=clip)
    assert run_stage("register", p, in_process=False).summary["version"] == "1"
    client = tracking.client_for(p)
    experiment = client.get_experiment_by_name("clipsep").experiment_id

    def runs() -> dict:  # what the UI lists: the experiment's active runs, by name
        found = client.search_runs([experiment])
        assert len({r.info.run_name for r in found}) == len(found)
        return {r.info.run_name: r for r in found}

    def evaluate_again() -> str:  # the pass `clipsep evaluate` opens and fills
        run = open_run(p, "evaluate", in_process=False)
        run.finish_stage({"n_mixtures": 4})
        return run.run_id

    repeated = evaluate_again()
    assert run_stage("register", p, in_process=False).summary["already_registered"] is True
    assert list(runs()) == ["clipsep-v1"]
    gone = client.get_run(repeated)
    assert (gone.info.status, gone.info.lifecycle_stage) == ("FINISHED", "deleted")
    assert gone.data.tags["clipsep.already_registered_as"] == "models:/clipsep/1"

    flow_pass = evaluate_again()  # the flow: register skipped on its record
    assert run_stage("register", p, skip_unchanged=True).skipped
    assert list(runs()) == ["clipsep-v1"]
    assert client.get_run(flow_pass).info.lifecycle_stage == "deleted"

    complete = evaluate_again()  # with `clipsep train` on the complete training: trained nothing
    note_skipped(p, "train")
    assert run_stage("register", p, in_process=False).summary["already_registered"] is True
    assert list(runs()) == ["clipsep-v1"]
    assert client.get_run(complete).info.lifecycle_stage == "deleted"

    write_metrics(p, text_sdr=5.5)  # best.pt scored again, with another result
    rescored = evaluate_again()
    assert run_stage("register", p, in_process=False).summary["version"] == "1"
    listed = runs()
    assert sorted(listed) == ["clipsep-v1", "clipsep-v1-rerun"]
    kept = listed["clipsep-v1-rerun"]
    assert (kept.info.run_id, kept.info.status) == (rescored, "FINISHED")
    assert kept.data.tags["clipsep.already_registered_as"] == "models:/clipsep/1"
    reason = kept.data.tags["clipsep.end_reason"]
    assert reason.startswith("register skipped: already registered as models:/clipsep/1 ")
    assert [str(v.version) for v in client.search_model_versions("name='clipsep'")] == ["1"]


def test_register_warms_the_caches_the_first_separate_reads(tmp_path, monkeypatch):
    """The first `clipsep separate ... --query <a class>` after a run (the command the run ends
    by printing) took 6.7-6.9 s: mlflow resolved the champion, open_clip built the text tower.
    The register stage now leaves both in the caches, so it needs neither (2.1 s)."""
    from clipsep import registry_reader
    from clipsep.inference import Separator
    from clipsep.model.text_cache import CachedQueryEncoder
    from clipsep.registry_reader import cached_versions, default_cache_dir, registry_uri
    from clipsep.stages import run_stage

    p = tiny_params_at(tmp_path)
    clip = save_random_clip(p, tmp_path / "clip-source.pt")
    write_pipeline_outputs(p, text_sdr=5.0, clip_weights=clip)
    assert run_stage("register", p, in_process=False).summary["alias"] == "champion"
    assert list(cached_versions(default_cache_dir(), "clipsep", registry_uri(p))) == [1]

    def no_encoder(self):
        raise AssertionError("the CLIP text tower was built for a query register embedded")

    monkeypatch.setattr(CachedQueryEncoder, "encoder", property(no_encoder))
    monkeypatch.setattr(registry_reader, "_client", lambda *a: pytest.fail("MLflow was asked"))
    separator = Separator.from_pretrained(
        p.separate.model, device="cpu", tracking_uri=registry_uri(p), root=p.path("root")
    )
    assert p.world.classes
    for query in p.world.classes:
        assert separator.embed_query(query).shape == (separator.network.cfg.query_dim,)
