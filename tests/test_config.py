"""Code tier: the typed params object and its error messages."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from clipsep.config import ConfigError, build_params, dump_params, load_params
from conftest import REPO


def test_default_and_profiles_load():
    params = load_params(REPO / "params.yaml")
    assert params.audio.segment_samples == 65535
    for profile in sorted(p.stem for p in (REPO / "profiles").glob("*.yaml")):
        assert load_params(REPO / "params.yaml", profile=profile).model.preset


def test_params_are_frozen():
    params = load_params(REPO / "params.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train.steps = 3  # type: ignore[misc]


def test_tuples_and_floats_are_coerced():
    params = load_params(REPO / "params.yaml", overrides=["train.lr=1", "train.gain_range=[1, 2]"])
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)
    assert params.train.gain_range == (1.0, 2.0)


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.stpes=3", ["params.yaml", "'train'", "'stpes'", "did you mean 'steps'"]),
        ("train.steps=many", ["'train'", "'steps'", "expected int"]),
        ("model.nit=yes please", ["'model'", "'nit'", "expected bool"]),
        ("train.n_mix=3", ["'train'", "'n_mix'", "n_mix == 2"]),
        ("audio.hop_length=4096", ["'audio'", "'hop_length'", "n_fft"]),
        ("nosuch.key=1", ["unknown section", "nosuch"]),
        ("train.mask_target=irm", ["'train'", "'mask_target'", "binary, ratio"]),
    ],
)
def test_bad_values_name_file_section_and_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_params(REPO / "params.yaml", overrides=[override])
    for word in words:
        assert word in str(err.value)


def test_missing_key_is_named(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["train"]["lr"]
    with pytest.raises(ConfigError, match=r"section 'train': missing key\(s\) \['lr'\]"):
        build_params(raw, source="x.yaml")


def test_unknown_profile_lists_known(tmp_path):
    with pytest.raises(ConfigError, match="known: .*tiny"):
        load_params(REPO / "params.yaml", profile="nosuch")


def test_dump_roundtrip(tmp_path):
    params = load_params(REPO / "params.yaml", profile="tiny")
    out = tmp_path / "params.yaml"
    dump_params(params, out)
    again = load_params(out)
    assert again.to_dict() == params.to_dict()


def test_paths_resolve_against_params_file(tmp_path):
    params = load_params(REPO / "params.yaml", overrides={"paths.root": str(tmp_path)})
    assert params.path("clips") == tmp_path / "data" / "clips"


def test_serve_model_null_means_the_separate_model():
    """One default model: serve.model is null in params.yaml and follows separate.model."""
    assert yaml.safe_load((REPO / "params.yaml").read_text())["serve"]["model"] is None
    params = load_params(REPO / "params.yaml", overrides=["separate.model=models/x/best.pt"])
    assert params.serve.model == params.separate.model == "models/x/best.pt"
    both = load_params(
        REPO / "params.yaml",
        overrides={"separate.model": "models/x/best.pt", "serve.model": "models:/clipsep@staging"},
    )
    assert (both.separate.model, both.serve.model) == (
        "models/x/best.pt",
        "models:/clipsep@staging",
    )


def test_params_default_to_the_projects_file_outside_the_project(tmp_path, monkeypatch):
    """`clipsep separate song.wav` from any folder: no ./params.yaml -> the project's file, with
    its paths still under the project; a ./params.yaml, when there is one, wins."""
    import argparse

    from clipsep.config import add_params_arguments, params_from_args

    parser = argparse.ArgumentParser()
    add_params_arguments(parser)
    monkeypatch.chdir(tmp_path)
    params = params_from_args(parser.parse_args([]))
    assert params.path("mlflow") == REPO / "mlruns"
    dump_params(load_params(REPO / "params.yaml", profile="tiny"), tmp_path / "params.yaml")
    params = params_from_args(parser.parse_args([]))
    assert params.train.steps == load_params(REPO / "params.yaml", profile="tiny").train.steps
    assert params.path("mlflow") == tmp_path / "mlruns"
    with pytest.raises(ConfigError, match="give --params FILE"):
        params_from_args(parser.parse_args(["--params", "missing.yaml"]))
