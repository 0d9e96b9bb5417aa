"""Training: LR schedule, a tiny end-to-end run with its reports, and SIGKILL-resume determinism."""

from __future__ import annotations

import csv
import math
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch

from conftest import REPO, tiny_params_at
from test_mixing import make_clips_dir

from clipsep import progress
from clipsep.config import Params
from clipsep.model.factory import load_checkpoint
from clipsep.model.query import QueryEncoder
from clipsep.errors import BadInputError
from clipsep.training.loop import resume_key, train
from clipsep.training.schedule import lr_multiplier


def write_random_clip(params: Params) -> Path:
    """A randomly initialised tiny CLIP saved where ``clip.pretrained=null`` looks for it."""
    path = params.path("clip_model") / "clip.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    encoder = QueryEncoder.from_config(params.clip, None, "cpu")
    torch.save({"state_dict": encoder.model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def shared_inputs(tmp_path_factory) -> dict[str, Path]:
    """Clips (labelled + unlabelled) and a CLIP checkpoint, shared by this module's runs."""
    root = tmp_path_factory.mktemp("inputs")
    clip = write_random_clip(tiny_params_at(root))
    labelled = make_clips_dir(root / "labelled")
    unlabelled = make_clips_dir(root / "unlabelled")
    rows = list(csv.DictReader((unlabelled / "manifest.csv").open()))
    with (unlabelled / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "label": ""} for r in rows)
    return {"clip_model": clip.parent, "labelled": labelled, "unlabelled": unlabelled}


def _params(root: Path, inputs: dict[str, Path], clips: str, **overrides) -> Params:
    return tiny_params_at(
        root,
        **{
            "paths.clip_model": str(inputs["clip_model"]),
            "paths.clips": str(inputs[clips]),
            **overrides,
        },
    )


def test_lr_schedule_warms_up_decays_and_stays(tiny_params):
    cfg = tiny_params.train.__class__(
        **{
            **tiny_params.train.__dict__,
            "warmup_steps": 5000,
            "decay_steps": 100000,
            "final_lr_scale": 0.1,
        }
    )
    assert lr_multiplier(0, cfg) == pytest.approx(1 / 5000)
    assert lr_multiplier(4999, cfg) == pytest.approx(1.0)
    assert lr_multiplier(5000, cfg) == pytest.approx(1.0)
    assert lr_multiplier(52500, cfg) == pytest.approx(0.55)
    assert lr_multiplier(100000, cfg) == pytest.approx(0.1)
    assert lr_multiplier(200000, cfg) == pytest.approx(0.1)
    values = [lr_multiplier(s, cfg) for s in range(5000, 100001, 500)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_tiny_training_writes_checkpoints_and_reports(tmp_path, shared_inputs):
    torch.set_num_threads(1)
    params = _params(tmp_path, shared_inputs, "labelled", **{"train.examples": 2})
    out = params.path("checkpoints")
    summary = train(params, params.path("clips"), out)
    steps = params.train.steps
    assert summary["steps"] == steps and summary["seconds_per_step"] > 0
    assert summary["final_val_loss_text"] is not None  # manifest labels -> text validation
    with (out / "history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in history] == list(range(1, steps + 1))
    assert all(float(r["loss"]) > 0 for r in history)
    validated = [r for r in history if r["val_loss_image"]]
    assert len(validated) == steps // params.train.validate_every
    model, info = load_checkpoint(out / "best.pt")
    assert info.extra["step"] == summary["best_step"]
    assert info.extra["params"]["model"]["preset"] == "tiny"
    assert info.query["embed_dim"] == model.cfg.query_dim
    for example in ("00", "01"):
        for name in ("mixture", "estimate", "reference"):
            wave, rate = sf.read(out / "examples" / example / f"{name}.wav")
            assert rate == params.audio.sample_rate and len(wave) == params.audio.segment_samples
        assert (out / "examples" / example / "spectrogram.png").stat().st_size > 10_000
    assert b"\r" not in (out / "history.csv").read_bytes()  # lines end in \n, as every CSV here
    assert (out / "curves.png").stat().st_size > 10_000
    assert json.loads((out / "summary.json").read_text())["best_step"] == summary["best_step"]
    assert len(list((out / "cache").glob("frame-embeddings-*.pt"))) == 1


def test_snapshots_and_progress_reports_of_a_training(tmp_path, shared_inputs, caplog):
    """(With ratio-mask targets, not the default: the recipe is told in summary.json, the log's
    start line and each snapshot.)"""
    from clipsep.training.loop import auto_channels_last

    torch.set_num_threads(1)
    params = _params(
        tmp_path,
        shared_inputs,
        "labelled",
        **{"train.keep_snapshots": True, "train.mask_target": "ratio"},
    )
    out = params.path("checkpoints")
    reports = []
    with progress.listening(lambda *args: reports.append(args)):
        with caplog.at_level(logging.INFO, logger="clipsep.training.loop"):
            train(params, params.path("clips"), out)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["mask_target"], summary["precision"]) == ("ratio", "fp32")
    layout = auto_channels_last("fp32", "cpu")  # tiny: fp32, channels_last null -> by the ISA
    assert summary["channels_last"] is layout
    starts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training ")]
    assert len(starts) == 1, caplog.text
    assert f"steps 0..{params.train.steps} " in starts[0]
    on_off = "on" if layout else "off"
    for part in ("mask_target ratio", "precision fp32", f"channels_last {on_off}", "nit "):
        assert part in starts[0]
    assert reports[-1] == ("train", params.train.steps, params.train.steps)  # progress reported
    assert [r[1] for r in reports] == sorted({r[1] for r in reports})
    every, steps = params.train.validate_every, params.train.steps
    snapshots = sorted((out / "snapshots").glob("step-*.pt"))
    assert [p.name for p in snapshots] == [
        f"step-{s:06d}.pt" for s in range(every, steps + 1, every)
    ]
    extras = [load_checkpoint(p)[1].extra for p in snapshots]
    assert [e["step"] for e in extras] == list(range(every, steps + 1, every))
    assert {e["params"]["train"]["mask_target"] for e in extras} == {"ratio"}
    seconds = [e["train_seconds"] for e in extras]
    assert all(0 < a < b for a, b in zip(seconds, seconds[1:]))


def file_states(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time (ns)."""
    return {
        str(f.relative_to(folder)): (f.read_bytes(), f.stat().st_mtime_ns)
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def loop_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "clipsep.training.loop"]


def test_rerunning_a_complete_training_does_nothing(tmp_path, shared_inputs, caplog):
    """A rerun of a finished training resumed, trained 0 steps and logged a 0-step session: it
    rewrote summary.json's session figures (and the reports, and continued the MLflow run)."""
    torch.set_num_threads(1)
    params = _params(tmp_path, shared_inputs, "labelled")
    out, steps = params.path("checkpoints"), params.train.steps
    first = train(params, params.path("clips"), out)
    before = file_states(out)
    opened, reports = [], []
    caplog.clear()
    with progress.listening(lambda *args: reports.append(args)):
        with caplog.at_level(logging.INFO, logger="clipsep.training.loop"):
            again = train(params, params.path("clips"), out, opened.append)
    assert loop_messages(caplog) == [
        f"training already complete: step {steps} of {steps} in {out / 'last.pt'}; "
        "nothing to do (raise train.steps to continue)"
    ]
    assert opened == [] and reports == [("train", steps, steps)]  # no MLflow session
    assert file_states(out) == before  # summary, history, best.pt, last.pt: same bytes, mtimes
    stored = json.loads((out / "summary.json").read_text())
    assert again == {**stored, "already_complete": True}
    for name in ("session_steps", "session_seconds", "seconds_per_step", "train_seconds"):
        assert again[name] == first[name], name
    assert again["session_steps"] == steps

    caplog.clear()
    shorter = _params(tmp_path, shared_inputs, "labelled", **{"train.steps": 2})
    with caplog.at_level(logging.INFO, logger="clipsep.training.loop"):
        assert train(shorter, shorter.path("clips"), out)["already_complete"] is True
    assert loop_messages(caplog) == [
        f"training already complete: step {steps} (train.steps is 2) in {out / 'last.pt'}; "
        f"nothing to do (raise train.steps above {steps} to continue)"
    ]
    assert file_states(out) == before

    (out / "summary.json").unlink()  # killed after the last last.pt, before the reports
    rewritten = train(params, params.path("clips"), out)
    assert "already_complete" not in rewritten and rewritten["session_steps"] == 0
    assert rewritten["train_seconds"] == first["train_seconds"] and rewritten["steps"] == steps
    assert (out / "best.pt").read_bytes() == before["best.pt"][0]


def test_a_finished_training_trains_again_on_other_clips_or_another_clip(
    tmp_path, shared_inputs, caplog
):
    """New-user trial: a flow run with another world (``--set world.seed=99``) re-ingested and
    re-pretrained, then train said "training already complete" (its last.pt had the same params)
    and the old model was evaluated on the new data. The clip manifest and the CLIP weights are
    part of what a finished or resumable training must match."""
    torch.set_num_threads(1)
    params = _params(tmp_path, shared_inputs, "labelled")
    out, steps = params.path("checkpoints"), params.train.steps
    train(params, params.path("clips"), out)
    caplog.clear()
    other = _params(tmp_path, shared_inputs, "unlabelled")  # other manifest, same params
    with caplog.at_level(logging.INFO, logger="clipsep.training.loop"):
        again = train(other, other.path("clips"), out)
    assert "already_complete" not in again and again["session_steps"] == steps
    assert (
        f"{out / 'last.pt'} was written with other training params, data or process count; "
        "starting from step 0" in loop_messages(caplog)
    )
    assert train(other, other.path("clips"), out)["already_complete"] is True

    clip = Path(shared_inputs["clip_model"]) / "clip.pt"
    weights = torch.load(clip, weights_only=True)
    moved = tmp_path / "clip-model"  # another CLIP: the same architecture, other weights
    moved.mkdir()
    first = next(iter(weights["state_dict"]))
    weights["state_dict"][first] = weights["state_dict"][first] + 1.0
    torch.save(weights, moved / "clip.pt")
    retrained = _params(tmp_path, {**shared_inputs, "clip_model": moved}, "unlabelled")
    assert "already_complete" not in train(retrained, retrained.path("clips"), out)


def test_training_without_a_clip_manifest_says_to_ingest(tmp_path, shared_inputs):
    params = _params(tmp_path, shared_inputs, "labelled")
    with pytest.raises(BadInputError, match=r"no clip manifest at .*: run `clipsep ingest` first"):
        train(params, tmp_path / "no-clips", params.path("checkpoints"))


def test_resume_key_ignores_run_length_but_not_learning_params(tiny_params):
    longer = tiny_params_at(Path(tiny_params.paths.root), **{"train.steps": 99})
    other_lr = tiny_params_at(Path(tiny_params.paths.root), **{"train.lr": 0.5})
    assert resume_key(tiny_params, 1, "d") == resume_key(longer, 1, "d")
    assert resume_key(tiny_params, 1, "d") != resume_key(other_lr, 1, "d")
    assert resume_key(tiny_params, 1, "d") != resume_key(tiny_params, 2, "d")
    assert resume_key(tiny_params, 1, "d") != resume_key(tiny_params, 1, "other data")


RESUME_SETTINGS = {
    "train.steps": 12,
    "train.checkpoint_every": 2,
    "train.validate_every": 6,
    "train.decay_steps": 12,
}


def _train_in_subprocess(params_root: Path, inputs: dict[str, Path]) -> subprocess.Popen:
    settings = {
        "paths.root": str(params_root),
        "paths.clip_model": str(inputs["clip_model"]),
        "paths.clips": str(inputs["unlabelled"]),
        **RESUME_SETTINGS,
    }
    command = [
        sys.executable,
        "-m",
        "clipsep",
        "train",
        "--params",
        str(REPO / "params.yaml"),
        "--profile",
        "tiny",
    ]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _kill_after_first_checkpoint(process: subprocess.Popen, last: Path, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not last.exists():
        if process.poll() is not None:
            pytest.fail(f"training exited early: {process.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("no checkpoint appeared")
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def test_sigkilled_training_resumes_to_identical_weights(tmp_path, shared_inputs):
    torch.set_num_threads(1)
    straight = _params(tmp_path / "straight", shared_inputs, "unlabelled", **RESUME_SETTINGS)
    summary = train(straight, straight.path("clips"), straight.path("checkpoints"))
    assert summary["final_val_loss_text"] is None  # no labels in the manifest: no text validation

    killed_root = tmp_path / "killed"
    last = killed_root / "models" / "clipsep" / "last.pt"
    _kill_after_first_checkpoint(_train_in_subprocess(killed_root, shared_inputs), last)
    step_at_kill = torch.load(last, weights_only=True)["run"]["step"]
    assert 0 < step_at_kill < RESUME_SETTINGS["train.steps"], "kill came too late to test resume"

    resumed = _params(killed_root, shared_inputs, "unlabelled", **RESUME_SETTINGS)
    summary = train(resumed, resumed.path("clips"), resumed.path("checkpoints"))
    assert summary["session_steps"] == RESUME_SETTINGS["train.steps"] - step_at_kill
    reference = torch.load(straight.path("checkpoints") / "last.pt", weights_only=True)
    final = torch.load(last, weights_only=True)
    assert reference["model"].keys() == final["model"].keys()
    for name, tensor in reference["model"].items():
        assert torch.equal(tensor, final["model"][name]), name
    assert [r["loss"] for r in reference["run"]["history"]] == [
        r["loss"] for r in final["run"]["history"]
    ]


def test_channels_last_step_gives_the_eager_loss_and_gradients(tmp_path):
    """The memory-format switch that ``auto`` turns on with bf16 changes speed, not the maths."""
    from clipsep.data.mixing import MixBatch
    from clipsep.training.loop import Dist, build_trainer

    generator = torch.Generator().manual_seed(0)
    grads, losses = [], []
    for channels_last in (False, True):
        params = tiny_params_at(
            tmp_path,
            **{
                "model.preset": "cpu",
                "train.precision": "fp32",
                "train.channels_last": channels_last,
                "train.batch_size": 2,
            },
        )
        trainer = build_trainer(params, 16, "cpu", Dist())
        assert trainer.channels_last is channels_last
        generator.manual_seed(0)
        batch = MixBatch(
            sources=0.1 * torch.randn(2, 2, params.audio.segment_samples, generator=generator),
            queries=torch.randn(2, 2, 16, generator=generator),
            clip_ids=[],
        )
        lr = trainer.optimizer.param_groups[0]["lr"]
        trainer.optimizer.param_groups[0]["lr"] = 0.0  # keep the weights: compare one gradient
        losses.append(trainer.step(batch)["loss"])
        trainer.optimizer.param_groups[0]["lr"] = lr
        grads.append(torch.cat([p.grad.flatten() for p in trainer.net.parameters()]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    # fp32 convolutions sum in another order per layout (and per thread count): equal up to
    # rounding, which BatchNorm over a batch of 2 amplifies to ~1 %; a wrong layout gives O(1)
    assert float((grads[1] - grads[0]).norm() / grads[0].norm()) < 3e-2


def test_auto_memory_format_follows_the_precision_and_the_isa(tmp_path, monkeypatch):
    """channels_last: null is NCHW for fp32 without AVX-512, channels_last with it or bf16."""
    from clipsep.training import loop
    from clipsep.training.loop import Dist, build_trainer

    params = tiny_params_at(tmp_path, **{"train.precision": "fp32", "train.channels_last": None})
    monkeypatch.setattr(loop, "onednn_uses_avx512", lambda: False)
    assert build_trainer(params, 16, "cpu", Dist()).channels_last is False
    monkeypatch.setattr(loop, "onednn_uses_avx512", lambda: True)
    assert build_trainer(params, 16, "cpu", Dist()).channels_last is True
    assert loop.auto_channels_last("fp32", "cuda") is False
    assert loop.auto_channels_last("bf16", "cpu") is True


def test_sdr_term_adds_minus_the_sdr_of_the_query_masks_waveforms(tmp_path):
    """``train.sdr_weight`` adds weight x (-SDR) of the reconstructed sources to the loss."""
    from clipsep.data.mixing import MixBatch
    from clipsep.training.loop import Dist, build_trainer

    results = []
    for weight in (0.0, 0.5):
        params = tiny_params_at(
            tmp_path,
            **{"train.precision": "fp32", "train.batch_size": 2, "train.sdr_weight": weight},
        )
        torch.manual_seed(0)
        trainer = build_trainer(params, 16, "cpu", Dist())
        generator = torch.Generator().manual_seed(0)
        batch = MixBatch(
            sources=0.1 * torch.randn(2, 2, params.audio.segment_samples, generator=generator),
            queries=torch.randn(2, 2, 16, generator=generator),
            clip_ids=[],
        )
        trainer.optimizer.param_groups[0]["lr"] = 0.0
        results.append(trainer.step(batch))
    off, on = results
    assert off["neg_sdr"] == 0.0 and math.isfinite(on["neg_sdr"]) and on["neg_sdr"] != 0.0
    assert on["loss"] == pytest.approx(off["loss"] + 0.5 * on["neg_sdr"], rel=1e-4, abs=1e-5)


def test_mask_target_ratio_gives_each_sources_share_of_the_magnitude(tmp_path):
    """``train.mask_target: ratio`` targets |S_n| / sum_m |S_m| (sums to 1); binary thresholds."""
    from clipsep import audio
    from clipsep.training.spectral import spectral_batch

    generator = torch.Generator().manual_seed(0)
    sources = torch.randn(2, 2, 4096, generator=generator)
    sources[:, 1] *= 0.3  # source 0 dominates most bins
    binary = spectral_batch(sources, tiny_params_at(tmp_path, **{"train.mask_target": "binary"}))
    ratio = spectral_batch(sources, tiny_params_at(tmp_path, **{"train.mask_target": "ratio"}))
    params = tiny_params_at(tmp_path)
    magnitudes = torch.stack([audio.stft(s, params.audio).abs() for s in sources.unbind(1)], 1)
    warped = audio.warp(magnitudes, params.audio.warp_bins)
    expected = warped / warped.sum(dim=1, keepdim=True)
    assert torch.allclose(ratio.targets, expected, atol=1e-5)
    assert torch.allclose(ratio.targets.sum(dim=1), torch.ones(()), atol=1e-5)
    assert set(binary.targets.unique().tolist()) == {0.0, 1.0}
    assert 0.6 < ratio.targets[:, 0].mean() < 0.9  # the louder source's share, not 0/1
    assert torch.equal(binary.mix_warped, ratio.mix_warped)


def test_a_gated_preset_without_absent_queries_gets_a_warning():
    from clipsep.config import load_params
    from clipsep.model.factory import preset_config
    from clipsep.training.loop import gate_advice

    def advice(preset: str, **overrides):
        params = load_params(REPO / "params.yaml", overrides={"model.preset": preset, **overrides})
        return gate_advice(params, preset_config(preset, nit=True, query_dim=512))

    assert advice("cpu-gated", **{"train.absent_candidates": 0}) == (
        "model preset cpu-gated has a query gate, but train.absent_candidates is 0: the gate paid "
        "only when trained with absent queries (docs/evaluation.md, round 5); --profile gated "
        "has the measured recipe"
    )
    assert advice("cpu-gated", **{"train.absent_candidates": 4}) is None
    assert advice("cpu", **{"train.absent_candidates": 0}) is None
    gated = load_params(REPO / "params.yaml", profile="gated")
    assert gate_advice(gated, preset_config("cpu-gated", nit=True, query_dim=512)) is None
