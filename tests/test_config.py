"""Code tier: the typed params object and its error messages."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml

from clipsep.config import ConfigError, build_params, dump_params, load_params
from conftest import REPO


def test_default_and_profiles_load():
    params = load_params(REPO / "params.yaml")
    assert params.audio.segment_samples == 65535
    for profile in sorted(p.stem for p in (REPO / "profiles").glob("*.yaml")):
        assert load_params(REPO / "params.yaml", profile=profile).model.preset


def test_gated_profile_is_round_5s_recipe_beside_the_quick_start():
    default = load_params(REPO / "params.yaml")
    gated = load_params(REPO / "params.yaml", profile="gated")
    assert gated.model.preset == "cpu-gated"
    assert (gated.train.absent_candidates, gated.train.absent_weight) == (4, 0.1)
    assert gated.path("clips") == default.path("clips")  # the quick start's data
    for folder in ("checkpoints", "evaluation"):  # never the quick start's model or reports
        assert gated.path(folder) != default.path(folder)


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
        ("trian.steps=1", ["unknown section(s) ['trian'] (did you mean 'train'?); known"]),
        ("train.mask_target=irm", ["'train'", "'mask_target'", "binary, ratio"]),
        ("world.duet_share=2", ["--set world.duet_share=2", "must lie in [0, 1]; got 2"]),
        # new-user trial: these printed as params and failed only when training started
        ("train.steps=-5", ["--set train.steps=-5", "key 'steps': must be >= 1; got -5"]),
        ("train.lr=-1", ["--set train.lr=-1", "key 'lr': must be > 0; got -1"]),
        ("train.batch_size=0", ["key 'batch_size': must be >= 1; got 0"]),
    ],
)
def test_bad_values_name_file_section_and_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_params(REPO / "params.yaml", overrides=[override])
    for word in words:
        assert word in str(err.value)


PARAMS = REPO / "params.yaml"
OVER = f"(over {PARAMS})"


@pytest.mark.parametrize(
    "override, message",
    [
        (  # a bad choice: the --set as typed, the value, the choices
            "train.mask_target=irm",
            f"--set train.mask_target=irm {OVER}: section 'train', key 'mask_target': "
            "must be one of binary, ratio; got 'irm'",
        ),
        (  # an empty value still lists the choices (not "expected str, got NoneType")
            "train.mask_target=",
            f"--set train.mask_target= {OVER}: section 'train', key 'mask_target': "
            "must be one of binary, ratio; got an empty value (null)",
        ),
        (  # a choice of the wrong type lists the choices too
            "eval.precision=16",
            f"--set eval.precision=16 {OVER}: section 'eval', key 'precision': "
            "must be one of auto, fp32, bf16, fp16; got 16 (did you mean 'fp16'?)",
        ),
        (  # separation-time choices are checked when the params load, not at separation
            "separate.high_band=full",
            f"--set separate.high_band=full {OVER}: section 'separate', key 'high_band': "
            "must be one of extend, residual; got 'full'",
        ),
        (
            "separate.channel_masks=mono",
            f"--set separate.channel_masks=mono {OVER}: section 'separate', key "
            "'channel_masks': must be one of shared, independent; got 'mono'",
        ),
        (  # the architecture presets are the JSON files in clipsep/model/presets
            "model.preset=bogus",
            f"--set model.preset=bogus {OVER}: section 'model', key 'preset': must be one of "
            "cpu, cpu-conv-upsample, cpu-gated, cpu-narrow, paper, small, tiny; got 'bogus'",
        ),
        (  # a near miss is named
            "model.preset=cpu-narow",
            f"--set model.preset=cpu-narow {OVER}: section 'model', key 'preset': must be one "
            "of cpu, cpu-conv-upsample, cpu-gated, cpu-narrow, paper, small, tiny; got "
            "'cpu-narow' (did you mean 'cpu-narrow'?)",
        ),
        (  # a wrong type
            "train.steps=many",
            f"--set train.steps=many {OVER}: section 'train', key 'steps': "
            "expected int, got str 'many'",
        ),
        (
            "train.steps=",
            f"--set train.steps= {OVER}: section 'train', key 'steps': "
            "expected int, got an empty value (null)",
        ),
        (  # an invariant across keys echoes the value too
            "audio.hop_length=4096",
            f"--set audio.hop_length=4096 {OVER}: section 'audio', key 'hop_length': "
            "must be <= n_fft (1024); got 4096",
        ),
        (  # the protocol CSVs go together (new-user trial: one alone left a FAILED run)
            "eval.targets_csv=t.csv",
            f"--set eval.targets_csv=t.csv {OVER}: section 'eval', key 'targets_csv': needs "
            "eval.interference_csv too (set both, or neither); got 't.csv'",
        ),
        (  # not YAML: one line, no traceback
            "train.gain_range=[1",
            "--set train.gain_range=[1: the value is not valid YAML: expected ',' or ']', "
            "but got '<stream end>' (line 1, column 3)",
        ),
    ],
)
def test_override_errors_say_which_override_and_value(override, message):
    with pytest.raises(ConfigError) as err:
        load_params(PARAMS, overrides=[override])
    assert str(err.value) == message


def test_long_values_are_cut_in_messages():
    with pytest.raises(ConfigError) as err:
        load_params(PARAMS, overrides=["train.mask_target=" + "x" * 500])
    message = str(err.value)
    assert "got 'xxxxx" in message and message.endswith("...") and len(message) < 400


def test_mapping_overrides_are_named_with_their_value():
    with pytest.raises(ConfigError) as err:
        load_params(PARAMS, overrides={"serve.port": "http"})
    assert str(err.value) == (
        f"override serve.port='http' {OVER}: section 'serve', key 'port': "
        "expected int, got str 'http'"
    )


def test_a_bad_value_in_a_file_names_the_file_and_line(tmp_path):
    lines = PARAMS.read_text().splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith("  mask_target:"))
    lines[number] = "  mask_target: 3"
    bad = tmp_path / "params.yaml"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as err:
        load_params(bad)
    assert str(err.value) == (
        f"{bad} line {number + 1}: section 'train', key 'mask_target': "
        "must be one of binary, ratio; got 3"
    )
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "odd.yaml").write_text("# odd\ntrain:\n  steps: 1.5\n")
    with pytest.raises(ConfigError) as err:  # a profile's value: the profile's file and line
        load_params(bad, profile="odd", overrides=["train.mask_target=ratio"])
    assert str(err.value) == (
        f"{tmp_path / 'profiles' / 'odd.yaml'} line 3: section 'train', key 'steps': "
        "expected int, got float 1.5"
    )


def test_cli_prints_the_same_one_line_and_exits_2(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_params(PARAMS, overrides=["train.mask_target="])
    done = subprocess.run(
        [sys.executable, "-m", "clipsep.cli", "params", "--set", "train.mask_target="],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.strip().endswith(f"ERROR clipsep: {err.value}")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "{path}: the file is empty (a params file maps sections, e.g. train:, to their keys)"),
        (
            "# only a comment\n",
            "{path}: the file is empty (a params file maps sections, e.g. train:, to their keys)",
        ),
        (None, "params file {path} is a folder, not a file (give --params FILE)"),
        ("- a list\n", "{path}: top level must be a mapping of sections"),
    ],
)
def test_an_empty_file_or_a_folder_is_one_line_not_a_traceback(tmp_path, text, message):
    """New-user trial: an empty or comment-only params file ended in AttributeError; a folder
    was "params file not found"."""
    path = tmp_path / "params.yaml"
    if text is None:
        path.mkdir()
    else:
        path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == message.format(path=path)


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


def test_a_relative_root_is_taken_once_from_the_params_file(tmp_path):
    """path("root") of the tiny profile (root: runs/tiny) was runs/tiny/runs/tiny: the root
    joined onto itself, so the --model hint never fired and ingest.source / separate.model
    under that profile pointed into a folder that does not exist (new-user trial)."""
    tiny = load_params(REPO / "params.yaml", profile="tiny")
    assert tiny.paths.root == "runs/tiny"
    assert tiny.path("root") == (REPO / "runs" / "tiny").resolve()
    assert tiny.path("checkpoints") == tiny.path("root") / tiny.paths.checkpoints
    default = load_params(REPO / "params.yaml")
    assert default.path("root") == REPO.resolve()
    absolute = load_params(REPO / "params.yaml", overrides={"paths.root": str(tmp_path)})
    assert absolute.path("root") == tmp_path.resolve()


def test_a_pass_into_another_output_folder_evaluates_into_its_own(tmp_path):
    """``--set paths.checkpoints=models/other`` with params.yaml's paths.evaluation: its reports
    go beside the file's (named by the folder and the digest its MLflow run record has), not over
    them; the file's own pipeline (dvc.yaml's outs) and a named paths.evaluation are unchanged."""
    import hashlib

    from clipsep.config import folder_digest

    at = {"paths.root": str(tmp_path)}
    file = load_params(REPO / "params.yaml", overrides=at)
    moved = load_params(REPO / "params.yaml", overrides={**at, "paths.checkpoints": "models/other"})
    digest = hashlib.sha256(str(tmp_path.resolve() / "models" / "other").encode()).hexdigest()
    assert folder_digest(moved) == digest[:16]
    assert file.paths.evaluation == "reports/evaluation"
    assert moved.paths.evaluation == f"reports/evaluation-other-{digest[:16]}"
    assert moved.path("evaluation") == tmp_path.resolve() / moved.paths.evaluation
    for same in ("./models/clipsep/", str(tmp_path / "models" / "clipsep")):
        again = load_params(REPO / "params.yaml", overrides={**at, "paths.checkpoints": same})
        assert again.paths.evaluation == "reports/evaluation"
    named = {**at, "paths.checkpoints": "models/other", "paths.evaluation": "reports/other"}
    assert load_params(REPO / "params.yaml", overrides=named).paths.evaluation == "reports/other"


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
    assert params.path("mlflow") == tmp_path / "runs" / "tiny" / "mlruns"  # the profile's root
    with pytest.raises(ConfigError, match="give --params FILE"):
        params_from_args(parser.parse_args(["--params", "missing.yaml"]))


def test_params_output_keeps_an_existing_file_unless_forced(tmp_path, caplog):
    from clipsep.cli import main

    out = tmp_path / "params.yaml"
    out.write_text("# my commented params\n")
    args = ["params", "--params", str(REPO / "params.yaml"), "--profile", "tiny", "-o", str(out)]
    assert main(args) == 2
    assert f"{out} exists; --force replaces it" in caplog.text
    assert out.read_text() == "# my commented params\n"
    assert main([*args, "--force"]) == 0
    assert (
        load_params(out).train.steps
        == load_params(REPO / "params.yaml", profile="tiny").train.steps
    )


@pytest.mark.parametrize("profile", ["tyni", "../params", "../profiles/tiny", "/tmp/x", ".tiny"])
def test_a_profile_is_a_name_among_the_profiles(profile):
    """New-user trial: `clipsep train --profile ../params` read params.yaml as its own profile and
    trained the default preset into models/clipsep."""
    with pytest.raises(ConfigError) as err:
        load_params(PARAMS, profile=profile)
    assert str(err.value).startswith(f"unknown profile {profile!r}")
    assert "(known: " in str(err.value) and "tiny" in str(err.value)
