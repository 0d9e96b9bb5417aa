"""Evaluation: metrics.json with every key and finite numbers on a tiny protocol; oracle >> mix."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from clipsep.errors import BadInputError
from conftest import tiny_params_at
from test_inference import make_tiny_model

RATE = 16000


def harmonic_tone(f0: float, seconds: float, seed: int) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    wave = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
    wave = wave * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t))  # some dynamics
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.25 * wave + 0.003 * noise).astype(np.float32)


def write_protocol(root: Path) -> tuple[Path, Path]:
    """Two labelled targets and two interference clips (wav + 3 frames each) indexed by CSVs."""
    rows = {
        "targets": [("cello", 110.0), ("flute", 880.0)],
        "interference": [("trumpet", 370.0), ("xylophone", 1500.0)],
    }
    paths = {}
    for kind, clips in rows.items():
        with (root / f"{kind}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["audio_path", "frames_dir", "label"])
            for number, (label, f0) in enumerate(clips):
                name = f"{kind}-{number}"
                sf.write(root / f"{name}.wav", harmonic_tone(f0, 1.6, number), RATE)
                (root / name).mkdir()
                for frame in range(1, 4):
                    colour = np.full((32, 32, 3), 40 * frame + int(f0) % 100, np.uint8)
                    Image.fromarray(colour).save(root / name / f"{frame:06d}.jpg")
                writer.writerow([f"{name}.wav", name, label])
        paths[kind] = root / f"{kind}.csv"
    return paths["targets"], paths["interference"]


def model_and_protocol(root: Path, mixtures_per_target: int):
    """A tiny random-init checkpoint in ``root`` and params scoring it on :func:`write_protocol`."""
    checkpoint, _ = make_tiny_model(root)
    targets, interference = write_protocol(root)
    params = tiny_params_at(
        root,
        **{
            "eval.targets_csv": str(targets),
            "eval.interference_csv": str(interference),
            "eval.device": "cpu",
            "eval.mixtures_per_target": mixtures_per_target,
        },
    )
    return checkpoint, params


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from clipsep.evaluation.evaluate import evaluate

    root = tmp_path_factory.mktemp("eval")
    checkpoint, params = model_and_protocol(root, mixtures_per_target=2)
    summary = evaluate(params, checkpoint, root / "evaluation")
    return summary, root / "evaluation"


def test_metrics_json_has_every_key_with_finite_numbers(evaluated):
    summary, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_mixtures"] == summary["n_mixtures"] == 4
    assert metrics["backend"] == "museval v4"
    from clipsep.precision import cpu_description, resolve_precision

    auto = resolve_precision("auto", "cpu")  # the fixture's eval.precision, resolved here too
    inference = dict(metrics["inference"])
    # where a CPU's bf16 verdict is measured, the evaluation measured it ("here, now") and this
    # second resolution reads it back ("before (cached in ...)"): the verdict is the same
    reason = inference.pop("precision_reason")
    assert reason.split("; bf16 measured")[0] == auto.reason.split("; bf16 measured")[0]
    assert inference == {
        "precision": auto.mode,
        "engine": "torch",
        "device": "cpu",
        "cpu": cpu_description(),
    }
    for method in ("text", "image", "oracle_ibm", "oracle_irm", "mixture"):
        for score in ("sdr", "sir", "sar", "si_sdr", "sdri"):
            for stat in ("mean", "sem", "median"):
                assert math.isfinite(metrics[method][score][stat]), (method, score, stat)
    energy = metrics["absent_query"]["energy_db"]
    assert math.isfinite(energy["mean"]) and energy["mean"] < 0.0
    assert set(metrics["per_class"]) == {"cello", "flute"}
    assert metrics["per_class"]["cello"]["n"] == 2
    for name in ("per_item.csv", "sdr_by_method.png", "sdr_per_class.png", "example.png"):
        assert (out / name).stat().st_size > 0


def test_example_audio_is_the_first_mixture_its_true_target_and_its_query(evaluated):
    """example/mixture.wav = target + interference of per_item.csv's first row (each a centred
    segment at half level, as the protocol mixes them), target.wav the first alone, and the
    query the protocol asked: what a run's closing ``Separate:`` command separates."""
    from clipsep.evaluation.evaluate import ProtocolClip, load_segment

    summary, out = evaluated
    with open(out / "per_item.csv", newline="") as handle:
        first = next(csv.DictReader(handle))
    example = summary["example"]
    assert example == {
        "mixture": str(out / "example" / "mixture.wav"),
        "target": str(out / "example" / "target.wav"),
        "query": first["label"],
    }
    mixture, rate = sf.read(example["mixture"], dtype="float32")
    target, _ = sf.read(example["target"], dtype="float32")
    assert rate == 16000 and mixture.shape == target.shape == (16383,)  # the tiny segment
    halves = [
        load_segment(ProtocolClip(Path(first[k]), None, None), rate, 16383) / 2
        for k in ("target", "interference")
    ]
    np.testing.assert_allclose(target, halves[0], atol=1e-7)
    np.testing.assert_allclose(mixture, halves[0] + halves[1], atol=1e-6)


def test_absent_query_activity_is_what_separate_would_report(evaluated):
    """Per mixture, the seconds the activity segments call the absent and the right query
    present (as ``clipsep separate``'s CSVs would); the share of absent queries reported nowhere."""
    _, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())["absent_query"]
    with open(out / "per_item.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    asked = [float(r["absent_active_s"]) for r in rows if r["absent_label"]]
    assert asked, "the protocol has classes heard in neither source"
    assert metrics["no_activity_share"] == sum(a == 0.0 for a in asked) / len(asked)
    length = 16383 / 16000  # the tiny profile's segment (audio.segment_samples), in seconds
    for value in asked + [float(r["text_active_s"]) for r in rows]:
        assert 0.0 <= value <= length + 1e-3  # segment ends are rounded to ms
    assert metrics["active_s"]["mean"] == pytest.approx(np.mean(asked))


def test_detection_tradeoff_counts_each_threshold_and_ranks_pairs():
    """Shares at each threshold counted by hand; AUC = share of (right, absent) pairs ordered
    right above absent, ties half; -inf (never active) ranks lowest; NaN (not asked) is left out."""
    from clipsep.evaluation.metrics import detection_tradeoff

    right, absent = [-2.0, -8.0, -np.inf], [-10.0, -8.0, -np.inf, math.nan]
    found = detection_tradeoff(right, absent, [-9.0, -5.0])
    assert found["curve"] == [
        {
            "threshold_db": -9.0,
            "absent_no_segment_share": 2 / 3,
            "right_query_segment_share": 2 / 3,
        },
        {"threshold_db": -5.0, "absent_no_segment_share": 1.0, "right_query_segment_share": 1 / 3},
    ]
    # pairs (right, absent): -2 beats all 3; -8 beats -10 and -inf, ties -8; -inf ties -inf
    assert found["auc"] == pytest.approx((3 + 2.5 + 0.5) / 9)
    assert found["balanced_threshold_db"] == -9.0 and found["balanced_accuracy"] == 2 / 3
    assert detection_tradeoff([1.0], [], [0.0]) is None
    # swapping the groups mirrors the AUC: the measure is of order, not of level
    assert detection_tradeoff(absent, right, [0.0])["auc"] == pytest.approx(1 - found["auc"])


def test_detection_tradeoff_in_metrics_matches_the_per_item_levels(evaluated):
    """metrics.json's detection curve is the per-mixture presence levels of per_item.csv counted
    at each threshold, and at the configured threshold it agrees with no_activity_share."""
    from clipsep.evaluation.evaluate import DETECTION_THRESHOLDS_DB

    summary, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())["absent_query"]
    with open(out / "per_item.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["absent_label"]]
    shown = ("auc", "balanced_threshold_db", "balanced_accuracy")  # printed, without the curve
    assert summary["activity_detection"] == {k: round(metrics["detection"][k], 3) for k in shown}
    absent = np.array([float(r["absent_presence_db"]) for r in rows])
    right = np.array([float(r["text_presence_db"]) for r in rows])
    curve = metrics["detection"]["curve"]
    assert [c["threshold_db"] for c in curve] == list(DETECTION_THRESHOLDS_DB)
    for point in curve:
        t = point["threshold_db"]
        assert point["absent_no_segment_share"] == pytest.approx(np.mean(absent <= t))
        assert point["right_query_segment_share"] == pytest.approx(np.mean(right > t))
        if t == -12.0:  # params.yaml's separate.activity_threshold_db (the tiny profile keeps it)
            assert point["absent_no_segment_share"] == pytest.approx(metrics["no_activity_share"])
    assert 0.0 <= metrics["detection"]["auc"] <= 1.0
    assert (out / "activity_detection.png").stat().st_size > 0


def test_oracle_masks_far_above_the_mixture(evaluated):
    _, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["oracle_ibm"]["sdr"]["mean"] > metrics["mixture"]["sdr"]["mean"] + 10.0
    assert metrics["oracle_irm"]["sdri"]["mean"] > 10.0
    assert abs(metrics["mixture"]["sdri"]["mean"]) < 1e-9


def test_compare_puts_two_runs_side_by_side(evaluated, tmp_path):
    from clipsep.evaluation.evaluate import compare_metrics

    _, out = evaluated
    table = compare_metrics(
        [out / "metrics.json", out / "metrics.json"], ["nit", "no-nit"], tmp_path
    )
    assert table["nit"]["text"]["sdr"] == table["no-nit"]["text"]["sdr"]
    assert (tmp_path / "comparison.png").stat().st_size > 0
    other = json.loads((out / "metrics.json").read_text()) | {"backend": "fast_bss_eval v3"}
    (tmp_path / "v3.json").write_text(json.dumps(other))
    with pytest.raises(BadInputError, match="backends"):
        compare_metrics([out / "metrics.json", tmp_path / "v3.json"], ["a", "b"], tmp_path)


def test_compare_takes_folders_names_them_and_warns_of_other_protocols(
    evaluated, tmp_path, capsys, caplog
):
    from clipsep.evaluation.evaluate import main

    _, out = evaluated
    other = tmp_path / "evaluation-short"
    other.mkdir()
    smaller = json.loads((out / "metrics.json").read_text()) | {"n_mixtures": 1}
    (other / "metrics.json").write_text(json.dumps(smaller))
    assert main(["compare", str(out), str(other), "--out", str(tmp_path / "cmp"), "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)) == ["evaluation", "evaluation-short"]
    assert "different protocols (mixtures: {'evaluation': 4, 'evaluation-short': 1})" in (
        caplog.text
    )


def test_manifest_protocol_reads_labels_from_ground_truth(tmp_path):
    from clipsep.evaluation.evaluate import load_protocol, mixture_plan

    params = tiny_params_at(tmp_path)
    clips, world = params.path("clips"), params.path("world")
    clips.mkdir(parents=True)
    world.mkdir(parents=True)
    (clips / "manifest.csv").write_text(
        "clip_id,source,split,audio_path,frames_dir,n_frames,label\n"
        "c1,test/w00001.mp4,test,audio/c1.wav,frames/c1,6,\n"
        "c2,interference/w00002.mp4,interference,audio/c2.wav,frames/c2,6,\n"
        "c3,train/w00003.mp4,train,audio/c3.wav,frames/c3,6,\n"
    )
    (world / "ground_truth.csv").write_text(
        "video_id,video,split,labels,offscreen\n"
        "w00001,test/w00001.mp4,test,cello,\n"
        "w00002,interference/w00002.mp4,interference,flute,trumpet\n"
        "w00003,train/w00003.mp4,train,xylophone,\n"
    )
    protocol = load_protocol(params)
    assert [c.label for c in protocol.targets] == ["cello"]
    assert [c.label for c in protocol.interference] == ["flute;trumpet"]
    assert protocol.classes == ["cello", "flute", "trumpet"]
    assert mixture_plan(params, protocol) == [(0, 0, 0)]


def test_protocol_csv_errors_are_clear(tmp_path):
    from clipsep.evaluation.evaluate import load_protocol

    (tmp_path / "t.csv").write_text("audio_path,frames_dir,label\na.wav,,\n")
    params = tiny_params_at(
        tmp_path,
        **{
            "eval.targets_csv": str(tmp_path / "t.csv"),
            "eval.interference_csv": str(tmp_path / "t.csv"),
        },
    )
    with pytest.raises(BadInputError, match="need a label"):
        load_protocol(params)
    with pytest.raises(BadInputError, match="run the world and ingest"):
        load_protocol(tiny_params_at(tmp_path / "empty"))


def test_oracle_masks_are_the_ideal_masks_of_the_linear_stft():
    """IBM: the target's bins where it dominates; IRM: ``|S| / (|S| + |N|)`` (audio.ratio_masks)."""
    import torch

    from clipsep.evaluation.evaluate import oracle_estimates

    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    target = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noise = (0.3 * rng.standard_normal(t.size)).astype(np.float32)
    estimates = oracle_estimates(target, noise, None)  # None: the paper's STFT (1024/256)
    window = torch.hann_window(1024)
    spec = [
        torch.stft(
            torch.from_numpy(x),
            1024,
            256,
            window=window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        for x in (target, noise)
    ]
    s, n = spec[0].abs(), spec[1].abs()
    for name, mask in (("oracle_ibm", (s >= n).float()), ("oracle_irm", s / (s + n))):
        expected = torch.istft(
            (spec[0] + spec[1]) * mask, 1024, 256, window=window, center=True, length=target.size
        ).numpy()
        np.testing.assert_allclose(estimates[name], expected, atol=1e-5)
    assert np.abs(estimates["oracle_irm"] - target).max() < np.abs(noise).max()


def test_quality_curve_rescores_snapshots_only_when_the_protocol_changes(tmp_path):
    """scripts/quality_curve.py reuses a snapshot's scores for the same protocol, scores it again
    for another, puts steps on a stated clock, and names a run without snapshots."""
    import importlib.util

    import torch

    from conftest import REPO

    spec = importlib.util.spec_from_file_location(
        "quality_curve", REPO / "scripts/quality_curve.py"
    )
    quality_curve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality_curve)
    checkpoint, _ = make_tiny_model(tmp_path)
    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    state = torch.load(checkpoint, weights_only=False)
    state["extra"] = {**state.get("extra", {}), "step": 4, "train_seconds": 2.0}
    torch.save(state, run / "snapshots" / "step-000004.pt")
    targets, interference = write_protocol(tmp_path)
    common = [
        "--params",
        str(REPO / "params.yaml"),
        "--profile",
        "tiny",
        "--out",
        str(tmp_path / "c.png"),
    ]
    for setting in (f"paths.root={tmp_path}", "eval.device=cpu", f"eval.targets_csv={targets}"):
        common += ["--set", setting]
    common += ["--set", f"eval.interference_csv={interference}"]
    scores = run / "snapshots" / "eval-step-000004" / "metrics.json"

    def curve(*extra: str) -> list[dict]:
        quality_curve.main([str(run), "--name", "tiny", *common, *extra])
        with open(tmp_path / "c.csv") as handle:
            return list(csv.DictReader(handle))

    rows = curve("--set", "eval.mixtures_per_target=2")
    assert json.loads(scores.read_text())["n_mixtures"] == 4
    assert rows[0]["clock"] == "loop" and float(rows[0]["minutes"]) == pytest.approx(
        2.0 / 60, abs=1e-3
    )
    written = scores.stat().st_mtime_ns
    rows = curve("--set", "eval.mixtures_per_target=2", "--seconds-per-step", "30")
    assert scores.stat().st_mtime_ns == written  # same protocol: the cached scores
    assert rows[0]["clock"] == "30 s/step" and float(rows[0]["minutes"]) == pytest.approx(2.0)
    curve("--set", "eval.mixtures_per_target=1")
    assert json.loads(scores.read_text())["n_mixtures"] == 2  # another protocol: scored again
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no snapshots in .*empty"):
        quality_curve.main([str(tmp_path / "empty"), *common])


def test_metrics_record_the_checkpoint_they_scored(tmp_path, monkeypatch):
    """metrics.json's ``checkpoint``: a file's absolute path and SHA-256 (what register checks),
    no size or time (its numbers would become metrics); a registry reference as given."""
    import hashlib

    from clipsep.evaluation.evaluate import checkpoint_identity

    (tmp_path / "best.pt").write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    assert checkpoint_identity("best.pt") == {
        "path": str(tmp_path.resolve() / "best.pt"),
        "sha256": hashlib.sha256(b"weights").hexdigest(),
    }
    ref = "models:/clipsep@champion"
    assert checkpoint_identity(ref) == {"ref": ref}


def test_a_second_output_folder_keeps_the_first_ones_reports(tmp_path):
    """``clipsep evaluate --set paths.checkpoints=models/other`` (paths.evaluation as params.yaml
    has it) wrote over the default folder's metrics.json and stage record: each folder's
    evaluation now scores its own best.pt, in its own folder."""
    import shutil

    from clipsep.stages import record_folder, run_stage

    checkpoint, _ = make_tiny_model(tmp_path)
    targets, interference = write_protocol(tmp_path)
    common = {
        "eval.targets_csv": str(targets),
        "eval.interference_csv": str(interference),
        "eval.device": "cpu",
        "eval.mixtures_per_target": 1,
        "registry.live_tracking": False,
    }
    default = tiny_params_at(tmp_path, **common)
    other = tiny_params_at(tmp_path, **common, **{"paths.checkpoints": "models/other"})
    for params in (default, other):
        params.path("checkpoints").mkdir(parents=True)
        shutil.copy(checkpoint, params.path("checkpoints") / "best.pt")
        run_stage("evaluate", params)
    assert default.path("evaluation") == tmp_path.resolve() / "reports" / "evaluation"
    assert other.path("evaluation") != default.path("evaluation")
    for params in (default, other):
        metrics = json.loads((params.path("evaluation") / "metrics.json").read_text())
        assert metrics["checkpoint"]["path"] == str(params.path("checkpoints") / "best.pt")
        assert record_folder("evaluate", params) == params.path("evaluation")


def test_no_progress_bar_where_stderr_is_not_a_terminal(tmp_path, capfd, caplog):
    from clipsep.evaluation.evaluate import evaluate

    checkpoint, params = model_and_protocol(tmp_path, mixtures_per_target=1)
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="clipsep"):
        evaluate(params, checkpoint, tmp_path / "evaluation")
    assert "mixture/s" not in capfd.readouterr().err  # tqdm's "evaluate: 2/2 [..., mixture/s]"
    # a line per tenth instead, so that a log shows it working
    assert "evaluate: 2/2 mixtures" in caplog.text


def test_a_missing_checkpoint_fails_before_any_mlflow_run(tmp_path, caplog):
    """``clipsep evaluate --set paths.checkpoints=<missing folder>`` (live tracking on) opened the
    pipeline's MLflow run, then failed on the checkpoint and left a FAILED run in the store: the
    missing file is now one error line, exit 2, with no store made and no record written."""
    from clipsep.cli import main

    missing = tmp_path / "no-such-folder"
    p = tiny_params_at(tmp_path, **{"registry.live_tracking": True})
    flags = ["--params", str(p.source_file), "--profile", "tiny", "--set", f"paths.root={tmp_path}"]
    caplog.clear()
    assert main(["evaluate", *flags, "--set", f"paths.checkpoints={missing}"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        f"checkpoint {missing / 'best.pt'} not found: run `clipsep train` first "
        "(or set paths.checkpoints)"
    ]
    assert not p.path("mlflow").exists()  # no run opened: not even a store made
    assert not (tmp_path / "reports").exists()  # no stage record, no evaluation folder


def test_the_summary_gives_every_method_as_mean_sem_median(evaluated):
    """`clipsep evaluate` printed only the means of three methods: the summary now also has SDR
    and SDRi of the queries, the oracles and the trivial baselines as the README gives them,
    mean ± s.e.m. (median) in dB, read from metrics.json; the old keys stay."""
    from clipsep.evaluation.evaluate import stat_text

    summary, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary["text_sdr"] == metrics["text"]["sdr"]["mean"]
    assert {"n_mixtures", "image_sdr", "oracle_ibm_sdr", "out_dir"} <= set(summary)
    methods = ("text", "image", "oracle_ibm", "oracle_irm", "mixture", "constant_mask")
    assert list(summary["scores_db"]) == [*methods, "absent_query"]
    for method, scores in [(m, ("sdr", "sdri", "sir", "sar")) for m in methods] + [
        ("absent_query", ("energy_db", "right_query_energy_db"))
    ]:
        for score in scores:
            stat = metrics[method][score]
            expected = f"{stat['mean']:.2f} ± {stat['sem']:.2f} ({stat['median']:.2f})"
            assert summary["scores_db"][method][score] == expected, (method, score)
    assert summary["scores_db"]["mixture"]["sdri"] == "0.00 ± 0.00 (0.00)"
    assert stat_text({"mean": None, "sem": None, "median": None}) == "n/a"


def test_compare_prints_the_table_it_promises(evaluated, tmp_path, capsys):
    """The compare command's help says it prints the side-by-side table: it does (--json: the
    comparison as JSON); a bad input is one error line, exit 2."""
    from clipsep.evaluation.evaluate import main, stat_text

    _, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    args = ["compare", str(out / "metrics.json"), str(out / "metrics.json"), "--names", "a,b"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["method", "run", "SDR", "(dB)", "SDRi", "(dB)", "SIR", "SAR"]
    text_a = lines[1].split("  ")
    assert [c.strip() for c in text_a if c.strip()][:4] == [
        "text",
        "a",
        stat_text(metrics["text"]["sdr"]),
        stat_text(metrics["text"]["sdri"]),
    ]
    assert len(lines) == 1 + 6 * 2 + 1
    assert lines[-1] == "mean ± s.e.m. (median); mixtures: a 4, b 4; museval v4"
    assert main([*args, "--out", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["a"]["text"]["sdr"] == metrics["text"]["sdr"]
    assert main(["compare", str(tmp_path / "none.json"), "--names", "a"]) == 2
    assert capsys.readouterr().err == f"error: metrics file not found: {tmp_path / 'none.json'}\n"


def test_help_has_a_line_per_command_and_no_markup(capsys):
    """`clipsep evaluate --help` had no description and `clipsep --help` printed ``markup``."""
    from clipsep.cli import build_parser
    from clipsep.evaluation.evaluate import main

    parser = build_parser()
    assert "``" not in parser.format_help()
    for command in ("world", "ingest", "validate", "pretrain-clip", "train", "evaluate"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = capsys.readouterr().out
        assert "``" not in text and len(text.split("\n\n")) >= 3, command
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--help"])
    assert "Evaluate the best checkpoint on the test protocol" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "``" not in capsys.readouterr().out


def test_clipsep_evaluate_prints_the_scores_as_the_readme_gives_them(tmp_path, capsys):
    """The command prints ``"sdr": "3.34 ± 0.33 (3.50)"``, not ``\\u00b1``."""
    import shutil

    from clipsep.cli import main

    checkpoint, _ = make_tiny_model(tmp_path)
    targets, interference = write_protocol(tmp_path)
    p = tiny_params_at(tmp_path)
    p.path("checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, p.path("checkpoints") / "best.pt")
    sets = {
        "paths.root": tmp_path,
        "eval.targets_csv": targets,
        "eval.interference_csv": interference,
        "eval.device": "cpu",
        "eval.mixtures_per_target": 1,
        "registry.live_tracking": "false",
    }
    flags = ["--params", str(p.source_file), "--profile", "tiny"]
    flags += [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    assert main(["evaluate", *flags]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((p.path("evaluation") / "metrics.json").read_text())
    sdr = metrics["text"]["sdr"]
    line = f'"sdr": "{sdr["mean"]:.2f} ± {sdr["sem"]:.2f} ({sdr["median"]:.2f})"'
    assert line in out.splitlines()[out.splitlines().index('  "scores_db": {') + 2]
    assert json.loads(out)["text_sdr"] == sdr["mean"]
