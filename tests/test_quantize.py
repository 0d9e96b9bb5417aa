"""int8 separator (separate.engine onnx-int8): the quantised export holds integer kernels, agrees
with the fp32 export within a stated tolerance on a fixed input, and is made once per checkpoint
and calibration set."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from clipsep.errors import BadInputError
from test_export import eager_settings, spread_weights
from test_inference import make_tiny_model, tones
from test_mixing import make_clips_dir

# Masks (after the sigmoid) of int8 vs fp32 on a fixed input, on the random-weight test network
# (test_export.spread_weights): measured max 0.020, mean 0.0019, correlation 0.9997. With 8-bit
# weights on an AVX2 CPU (int16 saturation) or the front end quantised (log of a uint8
# magnitude) the masks were off by 0.15 on average. The trained cpu preset's separation SDR is
# the accuracy check that counts (docs/benchmarks.md, the int8 forward row).
MASK_MAX_DIFF = 0.05
MASK_MEAN_DIFF = 0.005
MASK_MIN_CORRELATION = 0.995


@pytest.fixture(scope="module")
def quantised(tmp_path_factory):
    """(checkpoint, clip weights, clips folder, fp32 export, int8 export)."""
    from clipsep.model.export import export_onnx, read_export
    from clipsep.model.query import QueryEncoder
    from clipsep.model.quantize import calibration_feeds, quantize_export

    folder = tmp_path_factory.mktemp("model")
    checkpoint, clip = make_tiny_model(folder)
    spread_weights(checkpoint)
    fp32 = export_onnx(checkpoint, folder / "fp32")
    info = read_export(fp32)
    clips = make_clips_dir(
        folder, {"train": 2}, seconds=3.0, sample_rate=info.audio_cfg.sample_rate
    )
    encoder = QueryEncoder.from_reference(info.query, "cpu", weights=clip)
    feeds = calibration_feeds(clips, info.audio_cfg, encoder.encode_images, count=6)
    int8 = quantize_export(fp32, folder / "int8", feeds)
    return checkpoint, clip, clips, fp32, int8


def test_calibration_feeds_are_real_network_inputs(quantised):
    from clipsep.model.export import read_export
    from clipsep.model.query import QueryEncoder
    from clipsep.model.quantize import calibration_feeds

    _, clip, clips, fp32, _ = quantised
    info = read_export(fp32)
    encoder = QueryEncoder.from_reference(info.query, "cpu", weights=clip)
    feeds = calibration_feeds(clips, info.audio_cfg, encoder.encode_images, count=3)
    again = calibration_feeds(clips, info.audio_cfg, encoder.encode_images, count=3)
    frames = info.audio_cfg.segment_samples // info.audio_cfg.hop_length + 1
    for feed, same in zip(feeds, again):
        assert feed["mix_mag"].shape == (1, 1, info.audio_cfg.warp_bins, frames)
        assert feed["queries"].shape == (1, 2, info.net_cfg.query_dim)
        assert feed["mix_mag"].max() > 1.0  # tones of amplitude 0.15 after halving
        np.testing.assert_array_equal(feed["mix_mag"], same["mix_mag"])  # seeded
    assert not np.array_equal(feeds[0]["queries"], feeds[1]["queries"]) or not np.array_equal(
        feeds[0]["mix_mag"], feeds[1]["mix_mag"]
    )


def test_int8_export_holds_integer_kernels(quantised):
    import onnx

    from clipsep.model.export import read_export
    from clipsep.model.quantize import INT8_FILE

    *_, fp32, int8 = quantised
    manifest = read_export(int8).manifest
    assert manifest["onnx_file"] == INT8_FILE
    assert manifest["quantization"]["calibration_inputs"] == 6
    # the settings it was made with (7-bit weights: see the saturation note in quantize.py)
    options = manifest["quantization"]["options"]
    assert (options["reduce_range"], options["per_channel"]) == ("True", "True")
    assert options["quant_format"].endswith("QDQ")
    assert options["activation_type"].endswith("QUInt8")
    assert options["weight_type"].endswith("QInt8")
    model = onnx.load(str(int8 / INT8_FILE))
    int8_weights = [
        t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.dims
    ]
    assert len(int8_weights) >= 10  # every conv's weight
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert (int8 / INT8_FILE).stat().st_size < 0.5 * (fp32 / "separator.onnx").stat().st_size


@pytest.mark.parametrize("queries", [("flute", "cello"), ("trumpet",)])
def test_int8_masks_agree_with_fp32_on_a_fixed_input(quantised, queries):
    """A fixed mixture of tones (not a calibration input) and text queries."""
    from clipsep.model.export import load_onnx_network
    from clipsep.model.query import QueryEncoder
    from clipsep.model.quantize import network_input

    _, clip, _, fp32, int8 = quantised
    reference_net, info = load_onnx_network(fp32)
    int8_net, _ = load_onnx_network(int8)
    cfg = info.audio_cfg
    wave = tones(cfg.sample_rate, 1.0 + cfg.segment_samples / cfg.sample_rate, 2).mean(axis=0)
    mag = network_input(torch.from_numpy(wave[: cfg.segment_samples]), cfg)
    mag = mag[..., : mag.shape[-1] // 16 * 16]  # frames: a multiple of 2**depth
    embeddings = QueryEncoder.from_reference(info.query, "cpu", weights=clip).encode_text(
        list(queries)
    )[None]
    reference = torch.sigmoid(reference_net(mag, embeddings).mask_logits)
    masks = torch.sigmoid(int8_net(mag, embeddings).mask_logits)
    assert reference.std() > 0.05  # masks that vary, so agreement means something
    diff = (masks - reference).abs()
    assert diff.max() < MASK_MAX_DIFF and diff.mean() < MASK_MEAN_DIFF
    assert torch.corrcoef(torch.stack([masks.flatten(), reference.flatten()]))[0, 1] > (
        MASK_MIN_CORRELATION
    )
    assert diff.max() > 0  # it is the int8 network, not the fp32 one again


def test_engine_onnx_int8_quantises_once_and_separates_like_fp32(quantised, tmp_path, monkeypatch):
    from clipsep.inference import Separator
    from clipsep.model.quantize import INT8_FILE

    checkpoint, clip, clips, _, _ = quantised
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    settings = dataclasses.replace(eager_settings(), engine="onnx-int8")
    first = Separator.from_pretrained(
        checkpoint, clip_weights=clip, settings=settings, calibration=clips
    )
    cached = first.network.path
    assert cached.name == INT8_FILE and cached.is_relative_to(tmp_path / "clipsep" / "onnx")
    stamp = cached.stat().st_mtime_ns
    again = Separator.from_pretrained(
        checkpoint, clip_weights=clip, settings=settings, calibration=clips
    )
    assert again.network.path == cached and cached.stat().st_mtime_ns == stamp
    assert again.precision.reason == "ONNX Runtime runs the int8 network, fp32 around it"
    eager = Separator.from_pretrained(
        checkpoint, clip_weights=clip, settings=eager_settings(), engine="torch"
    )
    audio = tones(16000, 2.0, 1)
    reference = eager.separate(audio, 16000, query="flute")
    result = again.separate(audio, 16000, query="flute")
    assert np.abs(result.target + result.residual - audio).max() < 1e-5
    error = np.std(result.target - reference.target) / np.std(reference.target)
    assert 0 < error < 0.25  # relative error of the target wave (masks as in the test above)


def test_engine_onnx_int8_without_clips_is_a_clear_error(quantised, tmp_path, monkeypatch):
    from clipsep.inference import Separator

    checkpoint, clip, *_ = quantised
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(BadInputError, match="calibrates on the train clips"):
        Separator.from_pretrained(checkpoint, clip_weights=clip, engine="onnx-int8")
    with pytest.raises(BadInputError, match="no clip manifest|there is none"):
        Separator.from_pretrained(
            checkpoint, clip_weights=clip, engine="onnx-int8", calibration=tmp_path / "empty"
        )
    with pytest.raises(BadInputError, match="runs on the CPU"):
        Separator.from_pretrained(
            checkpoint, clip_weights=clip, engine="onnx-int8", device="cuda", calibration=tmp_path
        )


def test_calibration_needs_two_train_clips(tmp_path):
    from clipsep.config import AudioConfig
    from clipsep.model.quantize import calibration_feeds

    clips = make_clips_dir(tmp_path, {"val": 1})  # no train clips
    cfg = AudioConfig(16000, 1024, 256, 256, 65535)
    with pytest.raises(BadInputError, match="two train clips"):
        calibration_feeds(Path(clips), cfg, lambda images: torch.zeros(len(images), 8))


def test_separate_skips_on_the_same_calibration_folder_only(
    quantised, tmp_path, monkeypatch, capsys
):
    """``clipsep separate`` with separate.engine onnx-int8: separation.json names the calibration
    clip folder (paths.clips); the same folder is the same request (skipped, the CLI's record made
    without loading equals the loaded separator's), another folder is separated again."""
    import json
    import shutil

    import soundfile as sf

    from test_separate_cli import run_cli

    checkpoint, clip, clips, _, _ = quantised
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    audio, out = tmp_path / "x.wav", tmp_path / "out"
    sf.write(audio, tones(16000, 1.5, 1)[0], 16000, subtype="FLOAT")
    copy = shutil.copytree(clips, tmp_path / "clips-copy")

    def separate(folder: Path) -> dict:
        int8 = ["--set", "separate.engine=onnx-int8", "--set", f"paths.clips={folder}"]
        code = run_cli((checkpoint, clip), out, audio, extra=["--query", "flute", "--json", *int8])
        assert code == 0
        return json.loads(capsys.readouterr().out)

    assert list(separate(clips)["separated"]) == [str(audio)]
    model = json.loads((out / "x" / "separation.json").read_text())["model"]
    assert model["calibration"]["path"] == str(Path(clips).resolve())
    assert model["device"] == "cpu" and model["settings"]["engine"] == "onnx-int8"
    assert list(separate(clips)["skipped"]) == [str(audio)]
    note = separate(copy)["separated"][str(audio)]["note"]
    assert note == "outputs were made with another int8 calibration clip folder: separated again"
    assert list(separate(copy)["skipped"]) == [str(audio)]
