"""MLflow tracking of one pipeline run: real sqlite store, real artifacts, real registry."""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import torch
from conftest import REPO, tiny_params_at
from platform_inputs import save_random_clip, write_manifest, write_pipeline_outputs

from clipsep import registry_reader, tracking
from clipsep.errors import BadInputError, MissingWeightsError

torch.set_num_threads(1)
FLOORLESS = {"registry.champion_floor_db": -100.0}  # any model becomes the champion


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    return save_random_clip(tiny_params_at(folder), folder / "clip.pt")


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, clip_weights: Path):
    """One tiny pipeline's outputs registered once; cwd is a clean folder to catch stray files."""
    tmp_path = tmp_path_factory.mktemp("tracking")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        p = tiny_params_at(tmp_path / "project", **FLOORLESS)
        write_pipeline_outputs(p, text_sdr=4.5, clip_weights=clip_weights)
        yield p, tracking.register(p), workdir


def test_register_logs_params_history_metrics_and_lineage(registered):
    p, summary, workdir = registered
    client = tracking.client_for(p)
    run = client.get_run(summary["run_id"])
    assert run.data.params["train.steps"] == "4"
    assert run.data.params["model.preset"] == "tiny"
    assert run.data.metrics["eval/text/sdr/mean"] == pytest.approx(4.5)
    history = client.get_metric_history(summary["run_id"], "train_loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(summary["run_id"], "val_sdr")] == [2, 4]
    manifest_md5 = hashlib.md5((p.path("clips") / "manifest.csv").read_bytes()).hexdigest()
    assert run.data.tags["data_version"] == manifest_md5 == summary["data_version"]
    assert run.data.tags["gate_decision"] == "champion"
    assert run.data.tags["sys.torch"] == torch.__version__
    assert {"git_commit", "git_dirty", "eval_protocol", "dvc_lock_clips_md5"} <= set(run.data.tags)
    assert list(workdir.iterdir()) == [], "MLflow wrote outside the configured store"


def test_register_logs_pictures_audio_and_reports(registered):
    p, summary, _ = registered
    client = tracking.client_for(p)
    logged = {
        f.path
        for folder in ("training", "examples/00", "evaluation")
        for f in client.list_artifacts(summary["run_id"], folder)
    }
    assert {
        "training/history.csv",
        "training/curves.png",
        "examples/00/mixture.wav",
        "examples/00/spectrogram.png",
        "evaluation/metrics.json",
    } <= logged
    artifacts_root = p.path("mlflow") / "artifacts"
    assert any(artifacts_root.rglob("00/mixture.wav")), "artifacts are not in paths.mlflow"


def test_register_logs_spectrograms_as_images_and_the_per_class_table(registered, tmp_path):
    p, summary, _ = registered
    client = tracking.client_for(p)
    run = client.get_run(summary["run_id"])
    # the training example's spectrogram, also an MLflow image: the chart view's image grid
    assert tracking.spectrogram_pictures(p) == {
        "examples/00/spectrogram": p.path("checkpoints") / "examples" / "00" / "spectrogram.png"
    }
    assert summary["logged"]["images"] == 1
    assert run.data.tags["mlflow.loggedImages"] == "True"
    images = sorted(f.path for f in client.list_artifacts(summary["run_id"], "images"))
    assert sorted(Path(path).suffix for path in images) == [".png", ".webp"]  # full, thumbnail
    assert all(Path(path).name.startswith("examples~00~spectrogram+step+0+") for path in images)
    # per-class results: one table artifact, not a metric per class
    assert not [name for name in run.data.metrics if name.startswith("eval/per_class")]
    table = client.download_artifacts(summary["run_id"], "evaluation/per_class.csv", str(tmp_path))
    rows = list(csv.DictReader(open(table)))
    assert [row["class"] for row in rows] == ["cello"]
    assert float(rows[0]["sdr/mean"]) == pytest.approx(4.5)


def test_per_class_table_has_one_row_per_class_and_a_header_without_classes():
    metrics = {
        "text": {"sdr": {"mean": 1.0}},
        "per_class": {
            "flute": {"n": 2, "text": {"sdri": {"mean": 3.5}}},
            "cello": {"n": 1, "text": {"sdri": {"mean": -1.25}}, "image": {"sdri": {"mean": 2.0}}},
        },
    }
    lines = tracking.per_class_csv(metrics).splitlines()
    assert lines == [
        "class,image/sdri/mean,n,text/sdri/mean",
        "cello,2.0,1.0,-1.25",
        "flute,,2.0,3.5",
    ]
    assert tracking.per_class_csv({"text": {}}) == "class\n"
    assert tracking.without_per_class(metrics) == {"text": {"sdr": {"mean": 1.0}}}


def test_registered_version_carries_tags_signature_and_files(registered, tmp_path):
    import mlflow

    p, summary, _ = registered
    uri = tracking.tracking_uri(p)
    version = tracking.client_for(p).get_model_version_by_alias("clipsep", "champion")
    assert str(version.version) == summary["version"] == "1"
    assert version.tags["run_id"] == summary["run_id"]
    assert version.tags["data_version"] == summary["data_version"]
    assert float(version.tags["text_sdr"]) == pytest.approx(4.5)
    assert version.tags["eval_precision"] == "fp32"  # metrics.json's inference record
    assert version.tags["eval_precision_reason"] == "fp32 as requested"
    assert version.tags["eval_cpu"] == "Test"
    assert "floor" in version.tags["gate_reason"]
    mlflow.set_tracking_uri(uri)
    info = mlflow.models.get_model_info("models:/clipsep@champion")
    assert info.signature.inputs.input_names() == ["audio", "query"]
    assert info.signature.outputs.input_names() == ["target", "residual"]
    resolved = registry_reader.resolve_model(
        "models:/clipsep@champion", tracking_uri=uri, cache_dir=tmp_path / "cache"
    )
    assert resolved.version == "1"
    assert resolved.checkpoint.read_bytes() == (p.path("checkpoints") / "best.pt").read_bytes()
    assert resolved.clip_weights is not None
    assert resolved.clip_weights.read_bytes() == (p.path("clip_model") / "clip.pt").read_bytes()
    again = registry_reader.resolve_model(
        "models:/clipsep/1", tracking_uri=uri, cache_dir=tmp_path / "cache"
    )
    assert again == resolved, "a second resolve must reuse the cached download"


def test_registered_pyfunc_separates_a_file(registered, tmp_path):
    import mlflow
    import pandas as pd
    import soundfile as sf

    p, _, _ = registered
    mlflow.set_tracking_uri(tracking.tracking_uri(p))
    model = mlflow.pyfunc.load_model("models:/clipsep@champion")
    mixture = p.path("checkpoints") / "examples" / "00" / "mixture.wav"
    out = model.predict(
        pd.DataFrame({"audio": [str(mixture)], "query": ["cello"]}),
        params={"out_dir": str(tmp_path / "out"), "device": "cpu"},
    )
    assert list(out.columns) == ["target", "residual"]
    target, rate = sf.read(out["target"][0])
    assert rate == sf.info(str(mixture)).samplerate and len(target) == sf.info(str(mixture)).frames
    assert Path(out["residual"][0]).parent == tmp_path / "out" / "000-mixture"
    # models from code: the version holds the code file MLflow runs, no pickled model object
    folder = Path(mlflow.artifacts.download_artifacts("models:/clipsep@champion"))
    flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert (folder / "registry_model_code.py").is_file()
    assert not list(folder.rglob("*.pkl"))


def test_export_takes_a_registry_reference(registered, tmp_path, capsys):
    """New-user trial: `clipsep export models:/clipsep@challenger ...` said "separator checkpoint
    not found"; export resolves a registry version as separate does, and says which it was."""
    from clipsep.cli import main
    from clipsep.fileio import file_digest
    from clipsep.model.export import read_export

    p, _, _ = registered
    out = tmp_path / "onnx"
    registry = f"registry.tracking_uri={tracking.tracking_uri(p)}"
    assert main(["export", "models:/clipsep@champion", str(out), "--set", registry]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["model"], summary["version"], summary["exported"]) == (
        "models:/clipsep@champion",
        "1",
        str(out),
    )
    exported = read_export(out).manifest["source_checkpoint"]["sha256"]
    assert exported == file_digest(p.path("checkpoints") / "best.pt")


def test_resolve_reports_unknown_alias_and_bad_references(registered, tmp_path):
    p, _, _ = registered
    uri = tracking.tracking_uri(p)
    with pytest.raises(registry_reader.ModelNotFoundError, match="no model version"):
        registry_reader.resolve_model(
            "models:/clipsep@nonexistent", tracking_uri=uri, cache_dir=tmp_path / "cache"
        )
    with pytest.raises(registry_reader.ModelNotFoundError, match="no model version"):
        registry_reader.resolve_model(
            "models:/clipsep/99", tracking_uri=uri, cache_dir=tmp_path / "cache"
        )
    with pytest.raises(registry_reader.RegistryError, match="expected models:/NAME@ALIAS"):
        registry_reader.parse_model_reference("models:/clipsep/latest")
    with pytest.raises(MissingWeightsError):
        registry_reader.resolve_model(str(tmp_path / "missing.pt"))
    local = p.path("checkpoints") / "best.pt"
    assert registry_reader.resolve_model(str(local)) == registry_reader.ResolvedModel(local)
    relative = registry_reader.resolve_model("best.pt", root=local.parent)
    assert relative.checkpoint == local and relative.version is None


def _resolve_code(uri: str, cache: Path, ref: str) -> str:
    """Python code that resolves ``ref`` (logging at INFO on stderr) and prints the version and
    whether mlflow was imported."""
    return (
        "import logging, sys; from clipsep.registry_reader import resolve_model; "
        "logging.basicConfig(level=logging.INFO); "
        f"r = resolve_model({ref!r}, tracking_uri={uri!r}, "
        f"cache_dir={str(cache)!r}); print(r.version, 'mlflow' in sys.modules, flush=True)"
    )


def _resolve_in_fresh_process(uri: str, cache: Path) -> tuple[str, bool]:
    """(version, whether mlflow was imported) of resolving the champion in a new interpreter."""
    code = _resolve_code(uri, cache, "models:/clipsep@champion")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cache.parent
    )
    assert done.returncode == 0, done.stderr[-2000:]
    version, imported = done.stdout.split()
    return version, imported == "True"


def test_cached_resolution_skips_mlflow_until_the_alias_moves(registered, tmp_path):
    p, _, _ = registered
    uri, cache = tracking.tracking_uri(p), tmp_path / "cache"
    assert _resolve_in_fresh_process(uri, cache) == ("1", True)  # cold: MLflow downloads v1
    assert _resolve_in_fresh_process(uri, cache) == ("1", False)  # warm: no MLflow at all
    client = tracking.client_for(p)
    first = client.get_model_version("clipsep", "1")
    moved = client.create_model_version("clipsep", first.source, run_id=first.run_id)
    client.set_registered_model_alias("clipsep", "champion", moved.version)
    try:
        assert _resolve_in_fresh_process(uri, cache) == (str(moved.version), True)
        assert _resolve_in_fresh_process(uri, cache) == (str(moved.version), False)
    finally:
        client.set_registered_model_alias("clipsep", "champion", "1")
        client.delete_model_version("clipsep", moved.version)
    assert (
        registry_reader.resolve_model(
            "models:/clipsep@champion", tracking_uri=uri, cache_dir=cache
        ).version
        == "1"
    )


def _register_anew(root: Path, clip_weights: Path, seed: int) -> bytes:
    """Delete the MLflow store of the tiny project at ``root`` (as ``git clean -xdf`` or a fresh
    clone at the same path does) and register a model of ``seed`` as version 1 of a new store, in
    another process (as `make quickstart` does: this one's MLflow keeps its engine on the old
    file); the checkpoint's bytes."""
    p = tiny_params_at(root, **FLOORLESS)
    shutil.rmtree(p.path("mlflow"), ignore_errors=True)
    code = (
        f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); "
        "from pathlib import Path; from conftest import tiny_params_at; "
        "from platform_inputs import write_pipeline_outputs; from clipsep import tracking; "
        f"p = tiny_params_at(Path({str(root)!r}), **{FLOORLESS!r}); "
        f"write_pipeline_outputs(p, text_sdr=4.5, clip_weights=Path({str(clip_weights)!r}), "
        f"seed={seed}); tracking.register(p)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root.parent
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return (p.path("checkpoints") / "best.pt").read_bytes()


def test_a_store_made_anew_at_the_same_uri_is_not_served_the_old_stores_model(
    tmp_path, clip_weights
):
    """Bug (a new user's trial, 2026-12-02): a clone made again at the same path registered
    version 1 anew, and `clipsep separate` served the old clone's version 1 from the model cache,
    which was keyed by model name, version number and store URI alone."""
    root = tmp_path / "project"
    p = tiny_params_at(root, **FLOORLESS)
    uri, cache = tracking.tracking_uri(p), tmp_path / "cache"
    first = _register_anew(root, clip_weights, seed=0)
    assert _resolve_in_fresh_process(uri, cache) == ("1", True)
    second = _register_anew(root, clip_weights, seed=1)
    assert second != first
    # the sqlite fast path sees the cached folder's identity differ and defers to MLflow
    assert _resolve_in_fresh_process(uri, cache) == ("1", True)
    assert _resolve_in_fresh_process(uri, cache) == ("1", False)  # then the new one is cached
    ref = "models:/clipsep@champion"
    held = registry_reader.resolve_model(ref, tracking_uri=uri, cache_dir=cache)
    assert held.checkpoint.read_bytes() == second
    # a long-lived process (the app) holding version 1 lets go of it when the store is made anew
    third = _register_anew(root, clip_weights, seed=2)
    assert third not in (first, second)
    again = registry_reader.resolve_model(ref, tracking_uri=uri, cache_dir=cache)
    assert again.checkpoint == held.checkpoint and again.checkpoint.read_bytes() == third
    identity = json.loads((held.checkpoint.parents[1] / registry_reader.IDENTITY_FILE).read_text())
    assert identity["run_id"] == tracking.client_for(p).get_model_version("clipsep", "1").run_id


def test_versions_to_prune_keeps_the_newest_and_never_a_newer_one():
    assert registry_reader.KEEP_VERSIONS == 3
    assert registry_reader.versions_to_prune([1, 2, 3, 4, 5, 6], 6) == [1, 2, 3]
    assert registry_reader.versions_to_prune([6, 1, 5, 2], 6) == [1]
    assert registry_reader.versions_to_prune([3, 7, 8, 9], 3) == []  # a rollback keeps 7-9
    assert registry_reader.versions_to_prune([2, 4, 7, 8, 9], 4) == [2]
    assert registry_reader.versions_to_prune([1, 2, 3], 3) == []
    assert registry_reader.versions_to_prune([1, 2, 3, 4], 4, keep=1) == [1, 2, 3]


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "clipsep.registry_reader"]


def _cached_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "MLmodel").write_text("flavors: {}\n")
    (path / "artifacts").mkdir()
    (path / "artifacts" / "best.pt").write_bytes(b"weights")
    return path


def test_prune_cache_removes_only_old_versions_of_its_model_and_store(tmp_path, caplog):
    uri, cache = "sqlite:////some/mlflow.db", tmp_path / "clipsep-models"
    store = registry_reader._version_dir(cache, "clipsep", "1", uri).name.rsplit("-", 1)[1]
    ours = {v: _cached_folder(cache / f"clipsep-v{v}-{store}") for v in (1, 2, 3, 4, 5)}
    outside = _cached_folder(tmp_path / "elsewhere")
    (cache / f"clipsep-v0-{store}").symlink_to(outside)  # a link: never followed, never removed
    others = [
        _cached_folder(cache / "clipsep-v1-0123abcd"),  # another store
        _cached_folder(cache / f"clipsep-gated-v1-{store}"),  # another model
        _cached_folder(cache / f"clipsep-v1-{store}-copy"),
        _cached_folder(cache / "text-embeddings"),
        cache / f"clipsep-v7-{store}",  # no MLmodel: not a cached version
    ]
    others[-1].mkdir()
    (cache / f"clipsep-v8-{store}").write_text("a file")
    held = registry_reader._lease(ours[2])  # this process reads version 2: it stays
    assert held
    # a download killed mid-way left its staging folder; another download is still running
    killed = _cached_folder(cache / f".clipsep-v6-{store}-k1ll3d00")
    running = cache / f".clipsep-v6-{store}-runn1ng0"
    running.mkdir()
    downloading = os.open(running, os.O_RDONLY)
    fcntl.flock(downloading, fcntl.LOCK_SH)  # as _locked_staging holds it while it downloads
    others.append(_cached_folder(cache / ".clipsep-v6-0123abcd-k1ll3d00"))  # another store's
    assert registry_reader.stale_downloads(cache, "clipsep", uri) == [killed, running]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clipsep.registry_reader"):
        removed = registry_reader.prune_cache(cache, "clipsep", "5", uri)
    assert removed == [f"clipsep-v1-{store}", killed.name]
    assert _messages(caplog) == [
        f"model cache {cache}: removed clipsep-v1-{store}, {killed.name} "
        "(keeps the newest 3 versions of clipsep)"
    ]
    assert [v for v, path in ours.items() if path.is_dir()] == [2, 3, 4, 5]
    assert running.is_dir() and not killed.exists()
    assert all(path.exists() for path in others) and (outside / "MLmodel").is_file()
    assert (cache / f"clipsep-v8-{store}").read_text() == "a file"
    assert not (cache / registry_reader.TRASH_FOLDER).exists()  # emptied, then removed
    assert registry_reader.prune_cache(cache, "clipsep", "2", uri) == []  # older: removes no newer
    os.close(downloading)  # that download is killed too
    assert registry_reader.prune_cache(cache, "clipsep", "2", uri) == [running.name]


def test_a_download_locks_its_staging_folder_against_pruners(tmp_path):
    uri, cache = "sqlite:////some/mlflow.db", tmp_path / "clipsep-models"
    final = registry_reader._version_dir(cache, "clipsep", "3", uri)
    cache.mkdir()
    staging, held = registry_reader._locked_staging(final)
    assert staging.is_dir() and staging.name.startswith(f".{final.name}-") and held is not None
    assert registry_reader.prune_cache(cache, "clipsep", "3", uri) == []  # downloading
    os.close(held)  # the download is killed
    assert registry_reader.prune_cache(cache, "clipsep", "3", uri) == [staging.name]
    assert list(cache.iterdir()) == []


def test_the_suite_caches_resolved_models_under_its_own_basetemp(registered, tmp_path_factory):
    """The suite's resolutions from its own stores each left a clipsep-v1-<store> folder in the
    user's $TMPDIR/clipsep-models (68 folders, 1.9 GB after one run), which no pruning reaches:
    conftest's private_temp_dir points $TMPDIR under pytest's basetemp, here and in
    subprocesses (inherited, or an env dict built from os.environ as the tests do)."""
    p, _, _ = registered
    base = tmp_path_factory.getbasetemp()
    assert registry_reader.default_cache_dir().is_relative_to(base)
    resolved = registry_reader.resolve_model("models:/clipsep/1", tracking.tracking_uri(p))
    assert resolved.checkpoint.is_relative_to(registry_reader.default_cache_dir())
    code = "from clipsep.registry_reader import default_cache_dir; print(default_cache_dir())"
    for env in (None, {**os.environ, "OMP_NUM_THREADS": "1"}):
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert Path(done.stdout.strip()) == registry_reader.default_cache_dir()


def test_the_model_cache_keeps_the_newest_versions_and_those_a_process_holds(
    registered, tmp_path, caplog
):
    """A weekly retrain registering a new champion grew $TMPDIR/clipsep-models forever. (This
    process's resolutions stand for short-lived processes: their locks are dropped after each;
    the one holding version 2 meanwhile is a real other process.)"""
    p, _, _ = registered
    uri, cache = tracking.tracking_uri(p), tmp_path / "cache"
    client = tracking.client_for(p)
    first = client.get_model_version("clipsep", "1")
    made = [
        str(client.create_model_version("clipsep", first.source, run_id=first.run_id).version)
        for _ in range(5)
    ]
    one, two, three, four, five, six = ["1", *made]

    def cached() -> list[str]:
        return sorted(str(v) for v in registry_reader.cached_versions(cache, "clipsep", uri))

    def resolve_and_exit(version: str) -> None:
        ref = f"models:/clipsep/{version}"
        assert registry_reader.resolve_model(ref, uri, cache).version == version
        for fd in registry_reader._LEASES.values():  # what this process's exit does
            os.close(fd)
        registry_reader._LEASES.clear()

    holder = None
    try:
        resolve_and_exit(one)
        code = _resolve_code(uri, cache, f"models:/clipsep/{two}") + "; sys.stdin.read()"
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
        holder = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, **pipes)
        assert holder.stdout.readline().split()[0] == two  # it resolved version 2 and lives on
        for version in (three, four, five):
            resolve_and_exit(version)
        assert cached() == sorted([two, three, four, five])  # 1 removed; 2 is held: it stays
        holder.communicate("", timeout=60)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="clipsep.registry_reader"):
            resolve_and_exit(six)
        assert cached() == sorted([four, five, six])
        folders = [registry_reader._version_dir(cache, "clipsep", v, uri).name for v in made[:2]]
        assert _messages(caplog) == [
            f"model cache {cache}: removed {', '.join(folders)} "
            "(keeps the newest 3 versions of clipsep)"
        ]
        resolve_and_exit(one)  # a rollback: version 1 again, no newer version removed
        assert cached() == sorted([one, four, five, six])
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        for version in made:
            client.delete_model_version("clipsep", version)


def test_register_refuses_missing_inputs_and_broken_metrics(tmp_path):
    """The Python API names a missing input as the stage does (one check, stage_record's)."""
    p = tiny_params_at(tmp_path)
    best, metrics = p.path("checkpoints") / "best.pt", p.path("evaluation") / "metrics.json"
    with pytest.raises(BadInputError) as missing:
        tracking.register(p)
    expected = f"checkpoint {best} not found: run `clipsep train` first (or set paths.checkpoints)"
    assert str(missing.value) == expected
    best.parent.mkdir(parents=True)
    best.write_bytes(b"a checkpoint")
    with pytest.raises(BadInputError) as missing:
        tracking.register(p)
    expected = (
        f"evaluation {metrics} not found: run `clipsep evaluate` first (or set paths.evaluation)"
    )
    assert str(missing.value) == expected
    assert not p.path("mlflow").exists()  # refused before the store is touched
    with pytest.raises(BadInputError, match="text.sdr.mean"):
        tracking.text_sdr({"text": {"sir": {}}})
    with pytest.raises(BadInputError, match="nan"):
        tracking.text_sdr({"text": {"sdr": {"mean": math.nan}}})


def test_register_refuses_an_evaluation_of_another_checkpoint(tmp_path, clip_weights):
    """Two experiments sharing paths.evaluation: the metrics of one must not be registered with
    the other's model. Refused before the store is touched."""
    p = tiny_params_at(tmp_path, **FLOORLESS)
    write_pipeline_outputs(p, text_sdr=4.5, clip_weights=clip_weights)
    metrics_file = p.path("evaluation") / "metrics.json"
    scored = json.loads(metrics_file.read_text())["checkpoint"]
    assert (
        scored["sha256"]
        == hashlib.sha256((p.path("checkpoints") / "best.pt").read_bytes()).hexdigest()
    )
    other = tmp_path / "other" / "best.pt"
    other.parent.mkdir()
    other.write_bytes(b"another model")
    from clipsep.evaluation.evaluate import checkpoint_identity

    metrics = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**metrics, "checkpoint": checkpoint_identity(other)}))
    with pytest.raises(BadInputError, match=f"scores {other}, not .*best.pt"):
        tracking.register(p)
    assert not p.path("mlflow").exists()  # no store was opened, no run created


def test_data_version_follows_manifest_and_dvc_lock(tmp_path):
    p = tiny_params_at(tmp_path)
    write_manifest(p)
    first = tracking.data_version(p)
    assert first["dvc_lock_clips_md5"] == "absent"
    write_manifest(p, salt="changed")
    assert tracking.data_version(p)["data_version"] != first["data_version"]
    clips = p.path("clips").relative_to(tmp_path)
    (tmp_path / "dvc.lock").write_text(
        f"schema: '2.0'\nstages:\n  ingest:\n    outs:\n    - path: {clips}\n"
        "      md5: 0123456789abcdef.dir\n"
    )
    p_with_lock = dataclasses.replace(p, source_file=str(tmp_path / "params.yaml"))
    assert tracking.data_version(p_with_lock)["dvc_lock_clips_md5"] == "0123456789abcdef.dir"


def test_history_reader_skips_empty_and_non_finite_cells(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("step,train_loss,val_sdr,note\n1,0.5,,x\n2,nan,3.0,y\n")
    assert tracking.read_history(history) == [("train_loss", 0.5, 1), ("val_sdr", 3.0, 2)]
    flat = tracking.flatten_metrics(
        {
            "text": {"sdr": {"mean": 1.0, "bad": math.inf}},
            "backend": "museval v4",
            "per class": {"n": 2},
        },
        "eval",
    )
    assert flat == {"eval/text/sdr/mean": 1.0, "eval/per_class/n": 2.0}


def _connect_at_barrier(root: str, barrier) -> str:
    from clipsep.config import load_params
    from clipsep.tracking import connect

    p = load_params(REPO / "params.yaml", profile="tiny", overrides={"paths.root": root})
    barrier.wait()
    return connect(p)[1]


def test_processes_opening_a_fresh_store_together_all_get_one_experiment(tmp_path):
    """Seen: two evaluations started together on a new sqlite store, one failed with "table
    secrets already exists". Four processes open the same fresh store at once: all succeed, on
    one experiment."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(4, mp_context=context) as pool:
        barrier = manager.Barrier(4)
        ids = list(pool.map(_connect_at_barrier, [str(tmp_path)] * 4, [barrier] * 4))
    assert len(set(ids)) == 1


QUIET_CONNECT = """import sys
from clipsep.config import load_params
from clipsep.tracking import connect
p = load_params(sys.argv[1], profile="tiny", overrides={"paths.root": sys.argv[2]})
client, experiment = connect(p)
run = client.create_run(experiment)
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
uri = client.tracking_uri
monitor = SystemMetricsMonitor(run.info.run_id, sampling_interval=1, tracking_uri=uri)
monitor.start()
monitor.finish()
import logging
logging.getLogger("mlflow.system_metrics.system_metrics_monitor").warning("a warning still shows")
"""


def test_mlflows_housekeeping_lines_stay_quiet_and_its_warnings_do_not(tmp_path):
    """New-user trial: a quick start's log held MLflow's INFO lines about itself ("Creating
    initial MLflow database tables...", "Skip logging GPU metrics. Set logger level to DEBUG for
    more details.", the system-metrics thread starting and stopping). After connect they are
    gone; MLflow's warnings still show."""
    done = subprocess.run(
        [sys.executable, "-c", QUIET_CONNECT, str(REPO / "params.yaml"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for line in ("Creating initial MLflow database tables", "Skip logging GPU metrics"):
        assert line not in done.stderr
    assert "monitoring" not in done.stderr and "a warning still shows" in done.stderr


def test_resolving_from_a_missing_store_says_so_and_creates_nothing(tmp_path):
    """Seen: `clipsep separate` where no model was ever registered made an empty mlflow.db
    ("Creating initial MLflow database tables") before saying there is no champion."""
    from clipsep.registry_reader import ModelNotFoundError, resolve_model, version_from_run

    store = tmp_path / "mlruns" / "mlflow.db"
    uri = f"sqlite:///{store}"
    with pytest.raises(ModelNotFoundError, match="no MLflow store at .*mlflow.db"):
        resolve_model("models:/clipsep@champion", tracking_uri=uri, cache_dir=tmp_path / "c")
    assert not version_from_run(uri, "clipsep", "1", "run")
    assert not store.exists() and not store.parent.exists()


def test_an_experiment_deleted_in_the_store_is_named_with_the_way_back(tmp_path, caplog):
    """Deleting the experiment (``mlflow experiments delete``) and running a stage: one line that
    names the experiment and how to restore it, before any run is opened."""
    from clipsep import cli

    params = tiny_params_at(tmp_path)
    client, experiment = tracking.connect(params)
    client.delete_experiment(experiment)
    with pytest.raises(registry_reader.RegistryError) as raised:
        tracking.connect(params)
    message = str(raised.value)
    name = params.registry.experiment
    assert f"MLflow experiment {name!r} (id {experiment}) is deleted" in message
    assert f"mlflow experiments restore --experiment-id {experiment}" in message
    assert "registry.experiment" in message
    assert cli.main(["validate", "--profile", "tiny", "--set", f"paths.root={tmp_path}"]) == 2
    assert "is deleted" in caplog.text
    assert client.search_runs([experiment], run_view_type=3) == []  # 3: all, deleted included
