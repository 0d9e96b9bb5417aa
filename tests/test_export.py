"""`clipsep export MODEL --format onnx OUT`: the ONNX network agrees with eager, and a Separator
running it (an export folder, or engine onnx on a checkpoint) gives the eager target."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clipsep.errors import BadInputError
from conftest import REPO
from test_inference import make_tiny_model, tones

TOLERANCE = 1e-4


def spread_weights(checkpoint: Path) -> None:
    """Give the random-init network weights of a trained size: the paper's tiny init makes every
    mask 0.5, so an exporter that dropped a layer would still agree to 1e-4."""
    payload = torch.load(checkpoint, weights_only=True)
    generator = torch.Generator().manual_seed(1)
    for name, value in payload["state_dict"].items():
        if value.is_floating_point() and "running" not in name:
            fan_in = value[0].numel() if value.dim() > 1 else 1
            value.copy_(torch.randn(value.shape, generator=generator) / math.sqrt(fan_in))
    torch.save(payload, checkpoint)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint, clip weights, export folder, CLI summary): one export through the CLI."""
    folder = tmp_path_factory.mktemp("model")
    checkpoint, clip = make_tiny_model(folder)
    spread_weights(checkpoint)
    out = folder / "onnx"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipsep.cli",
            "export",
            str(checkpoint),
            "--format",
            "onnx",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return checkpoint, clip, out, json.loads(done.stdout)


def eager_settings():
    from clipsep.inference import DEFAULT_SETTINGS

    return dataclasses.replace(DEFAULT_SETTINGS, precision="fp32", device="cpu")


def test_export_folder_holds_network_and_front_end_settings(exported):
    from clipsep.model.factory import load_checkpoint

    checkpoint, _, out, summary = exported
    _, info = load_checkpoint(checkpoint)
    manifest = json.loads((out / "clipsep-export.json").read_text())
    assert (out / "separator.onnx").stat().st_size > 10_000
    assert summary["exported"] == str(out) and summary["opset"] >= 18
    assert list(summary["shapes"]) == ["mix_mag", "queries", "mask_logits"]
    assert manifest["audio_cfg"] == dataclasses.asdict(info.audio_cfg)
    assert manifest["net_cfg"] == info.net_cfg.to_dict()
    assert manifest["query"] == info.query
    assert manifest["inputs"] == ["mix_mag", "queries"]
    assert manifest["outputs"] == ["mask_logits"]
    assert manifest["source_checkpoint"]["path"] == str(checkpoint.resolve())


def test_audio_settings_are_read_without_loading_from_a_checkpoint_and_an_export(exported):
    """What clipsep separate reads before the model loads, to refuse an input too short."""
    from clipsep.inference import audio_config, min_input_frames
    from clipsep.model.factory import load_checkpoint

    checkpoint, _, out, _ = exported
    stored = load_checkpoint(checkpoint)[1].audio_cfg
    assert audio_config(checkpoint) == audio_config(out) == stored
    assert min_input_frames(audio_config(out), 22050) == math.ceil(stored.n_fft * 22050 / 16000)


@pytest.mark.parametrize("batch,queries,frames", [(1, 1, 64), (2, 3, 48)])
def test_onnx_network_agrees_with_eager(exported, batch, queries, frames):
    """Fixed inputs, dynamic batch, query count and frame count (multiples of 2**depth = 16)."""
    from clipsep.model.export import load_onnx_network
    from clipsep.model.factory import load_checkpoint

    checkpoint, _, out, _ = exported
    eager, _ = load_checkpoint(checkpoint)
    onnx, info = load_onnx_network(out)
    generator = torch.Generator().manual_seed(batch * 100 + frames)
    mag = torch.rand(batch, 1, info.net_cfg.warp_bins, frames, generator=generator) ** 4
    mag[..., :3] = 0.0  # silent frames: log(|X| + 1e-10) must keep its epsilon
    query = torch.randn(batch, queries, info.net_cfg.query_dim, generator=generator)
    with torch.no_grad():
        reference = eager(mag, query, with_noise=False).mask_logits
    logits = onnx(mag, query).mask_logits
    assert logits.shape == reference.shape == (batch, queries, info.net_cfg.warp_bins, frames)
    assert reference.std() > 0.1  # masks that vary, so agreement means something
    assert (logits - reference).abs().max() < TOLERANCE


def test_separator_runs_the_export_folder_like_eager(exported):
    from clipsep.inference import Separator
    from clipsep.model.export import OnnxNetwork

    checkpoint, clip, out, _ = exported
    eager = Separator.from_pretrained(
        checkpoint, clip_weights=clip, settings=eager_settings(), engine="torch"
    )
    onnx = Separator.from_pretrained(out, clip_weights=clip, settings=eager_settings())
    assert isinstance(onnx.network, OnnxNetwork) and onnx.device == "cpu"
    audio = tones(44100, 2.5, 2)
    reference = eager.separate(audio, 44100, query="cello")
    result = onnx.separate(audio, 44100, query="cello")
    assert 0.05 < np.std(reference.target) / np.std(audio) < 0.95
    assert np.abs(result.target - reference.target).max() < TOLERANCE
    assert np.abs(result.target + result.residual - audio).max() < 1e-5


def test_engine_onnx_exports_a_checkpoint_once_and_reuses_it(exported, tmp_path, monkeypatch):
    from clipsep.inference import Separator

    checkpoint, clip, out, _ = exported
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    settings = dataclasses.replace(eager_settings(), engine="onnx")
    first = Separator.from_pretrained(checkpoint, clip_weights=clip, settings=settings)
    cached = first.network.path
    assert cached.is_relative_to(tmp_path / "clipsep" / "onnx")
    stamp = cached.stat().st_mtime_ns
    again = Separator.from_pretrained(checkpoint, clip_weights=clip, settings=settings)
    assert again.network.path == cached and cached.stat().st_mtime_ns == stamp
    from_folder = Separator.from_pretrained(out, clip_weights=clip, settings=eager_settings())
    audio = tones(16000, 2.0, 1)
    assert (
        np.abs(
            again.separate(audio, 16000, query="flute").target
            - from_folder.separate(audio, 16000, query="flute").target
        ).max()
        < 1e-6
    )


def test_engine_errors_are_clear(exported):
    from clipsep.config import ConfigError, load_params
    from clipsep.inference import Separator

    checkpoint, clip, out, _ = exported
    with pytest.raises(BadInputError, match="engine must be one of torch, onnx"):
        Separator.from_pretrained(checkpoint, clip_weights=clip, engine="tensorrt")
    with pytest.raises(BadInputError, match="runs on the CPU"):
        Separator.from_pretrained(out, clip_weights=clip, device="cuda")
    with pytest.raises(BadInputError, match="runs fp32"):
        Separator.from_pretrained(
            out, clip_weights=clip, settings=dataclasses.replace(eager_settings(), precision="bf16")
        )
    with pytest.raises(BadInputError, match="export folder"):
        Separator.from_pretrained(out, clip_weights=clip, engine="torch")
    with pytest.raises(ConfigError, match="engine"):
        load_params(REPO / "params.yaml", overrides=["separate.engine=tensorrt"])


def test_cli_export_bad_inputs_exit_2(exported, tmp_path, capsys):
    from clipsep.cli import main

    checkpoint, _, _, _ = exported
    assert (
        main(["export", str(tmp_path / "absent.pt"), "--format", "onnx", str(tmp_path / "out")])
        == 2
    )
    assert not (tmp_path / "out").exists()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    assert main(["export", str(checkpoint), "--format", "onnx", str(occupied)]) == 2
    assert (occupied / "notes.txt").read_text() == "keep me"
    not_a_checkpoint = tmp_path / "model.pt"
    not_a_checkpoint.write_text("hello")
    assert main(["export", str(not_a_checkpoint), str(tmp_path / "out2")]) == 2
    assert not (tmp_path / "out2").exists()


def test_a_text_file_named_pt_is_a_clear_error(tmp_path):
    """torch.load of text raises KeyError (the first byte read as a pickle opcode)."""
    from clipsep.inference import Separator

    fake = tmp_path / "model.pt"
    fake.write_text("hello")
    with pytest.raises(BadInputError, match="cannot read checkpoint"):
        Separator.from_pretrained(fake, device="cpu")


def test_a_gated_network_exports_and_agrees_with_eager(tmp_path):
    """The query gate (FiLM per query on decoder activations) survives the export: its 5-D
    per-query tensors and the resize to the logits' size."""
    from clipsep.model.export import load_onnx_network
    from clipsep.model.factory import load_checkpoint, save_checkpoint
    from clipsep.model.network import CLIPSepNet

    checkpoint, _ = make_tiny_model(tmp_path)
    eager, info = load_checkpoint(checkpoint)
    gated = CLIPSepNet(dataclasses.replace(info.net_cfg, gate_stride=4, gate_channels=8))
    path = save_checkpoint(
        tmp_path / "gated.pt",
        gated,
        model_cfg=info.model_cfg,
        audio_cfg=info.audio_cfg,
        query=info.query,
    )
    spread_weights(path)
    out = tmp_path / "onnx"
    done = subprocess.run(
        [sys.executable, "-m", "clipsep.cli", "export", str(path), "--format", "onnx", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    eager, _ = load_checkpoint(path)
    onnx, info = load_onnx_network(out)
    generator = torch.Generator().manual_seed(3)
    mag = torch.rand(2, 1, info.net_cfg.warp_bins, 64, generator=generator) ** 4
    query = torch.randn(2, 3, info.net_cfg.query_dim, generator=generator)
    with torch.no_grad():
        reference = eager(mag, query, with_noise=False).mask_logits
        gate = eager.gate(eager.features(mag).tap, query)
    assert gate.std() > 0.1  # the gate is live, so agreement covers it
    assert (onnx(mag, query).mask_logits - reference).abs().max() < TOLERANCE


def test_an_export_folder_run_records_and_logs_the_onnx_engine(exported, tmp_path, caplog, capsys):
    """separation.json names the engine and precision that ran: an export folder runs ONNX
    Runtime in fp32 (not ``torch``, the default setting), the log says why fp32, and the CLI's
    record made without loading equals the loaded separator's, so a second run skips the file."""
    import logging

    import soundfile as sf

    from clipsep.inference import Separator
    from clipsep.outputs import SIDECAR
    from test_separate_cli import run_cli

    _, clip, out, _ = exported
    with caplog.at_level(logging.INFO, logger="clipsep.precision"):
        separator = Separator.from_pretrained(out, clip_weights=clip)
    assert separator.model_record["settings"]["engine"] == "onnx"
    assert separator.model_record["settings"]["precision"] == "fp32"
    assert "precision: fp32 (the ONNX Runtime engine runs fp32)" in caplog.text
    assert "as requested" not in caplog.text
    audio, outputs = tmp_path / "x.wav", tmp_path / "out"
    sf.write(audio, tones(16000, 1.5, 1)[0], 16000, subtype="FLOAT")
    assert run_cli((out, clip), outputs, audio, extra=["--query", "flute"]) == 0
    record = json.loads((outputs / "x" / SIDECAR).read_text())["model"]
    assert record["settings"]["engine"] == "onnx" and record["device"] == "cpu"
    assert record == json.loads(json.dumps(separator.model_record))
    capsys.readouterr()
    assert run_cli((out, clip), outputs, audio, extra=["--query", "flute", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["skipped"]) == [str(audio)]
