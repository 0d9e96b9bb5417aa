"""Separator: shapes/rates/channels of the input, lossless split, chunking, bad inputs."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clipsep.errors import BadInputError, MissingWeightsError
from conftest import REPO, tiny_params_at

torch.set_num_threads(1)


def make_tiny_model(folder: Path) -> tuple[Path, Path]:
    """A random-init tiny separator checkpoint + the tiny CLIP's weights saved next to it."""
    from clipsep.model.factory import build_model, save_checkpoint
    from clipsep.model.query import QueryEncoder

    params = tiny_params_at(folder)
    torch.manual_seed(0)
    encoder = QueryEncoder.from_config(params.clip, None, "cpu")
    clip_path = folder / "clip.pt"
    torch.save({"state_dict": encoder.model.state_dict()}, clip_path)
    network = build_model(params.model, encoder.embed_dim)
    reference = {**encoder.reference(), "pretrained": str(clip_path)}  # reloads these weights
    checkpoint = save_checkpoint(
        folder / "tiny.pt", network, model_cfg=params.model, audio_cfg=params.audio, query=reference
    )
    return checkpoint, clip_path


@pytest.fixture(scope="module")
def separator(tmp_path_factory):
    from clipsep.inference import Separator

    checkpoint, clip = make_tiny_model(tmp_path_factory.mktemp("model"))
    return Separator.from_pretrained(checkpoint, device="cpu", clip_weights=clip)


def tones(rate: int, seconds: float, channels: int) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(rate)
    waves = [
        0.3 * np.sin(2 * np.pi * (220 * (c + 1)) * t) + 0.02 * rng.standard_normal(t.size)
        for c in range(channels)
    ]
    return np.stack(waves).astype(np.float32)


@pytest.mark.parametrize(
    "rate,channels,flat", [(16000, 1, True), (44100, 2, False), (8000, 1, False)]
)
def test_outputs_shaped_like_input_and_sum_to_it(separator, rate, channels, flat):
    audio = tones(rate, 2.5, channels)
    audio = audio[0] if flat else audio
    result = separator.separate(audio, rate, query="cello")
    assert result.sample_rate == rate
    assert result.target.shape == audio.shape == result.residual.shape
    assert np.abs(result.target + result.residual - audio).max() < 1e-5
    assert 0.05 < np.std(result.target) / np.std(audio) < 0.95  # a mask, neither 0 nor 1


def test_chunked_equals_one_pass(separator):
    from clipsep.inference import Separator

    audio = tones(44100, 6.0, 2)  # 6 s = 8 segments of the tiny profile's 1 s
    assert separator.plan(44100, audio.shape[1]).n_chunks >= 5
    whole_cfg = dataclasses.replace(separator.audio_cfg, segment_samples=8 * 16384 - 1)
    one_pass = Separator(separator.network, separator.encoder, whole_cfg, separator.settings)
    assert one_pass.plan(44100, audio.shape[1]).n_chunks == 1
    chunked = separator.separate(audio, 44100, query="flute").target
    reference = one_pass.separate(audio, 44100, query="flute").target
    error = np.sqrt(np.mean((chunked - reference) ** 2)) / np.sqrt(np.mean(reference**2))
    assert error < 1e-3


@pytest.mark.parametrize(
    "rate,frames", [(44100, 300000), (16000, 16383), (8000, 5000), (44101, 100000), (96000, 500000)]
)
def test_chunk_plan_covers_input_in_order(separator, rate, frames):
    plan = separator.plan(rate, frames)
    emitted = 0
    for k in range(plan.n_chunks):
        start, stop = plan.input_span(k)
        assert start == emitted and stop > start
        emitted = plan.emit_until(k)
        assert start < emitted <= stop
    assert emitted == frames


def test_image_query_from_picture_and_path(separator, tmp_path):
    from PIL import Image

    picture = Image.fromarray(np.full((64, 64, 3), 120, np.uint8))
    picture.save(tmp_path / "q.png")
    audio = tones(16000, 1.5, 1)
    by_object = separator.separate(audio, 16000, image=picture).target
    by_path = separator.separate(audio, 16000, image=tmp_path / "q.png").target
    np.testing.assert_allclose(by_object, by_path, atol=1e-6)


@pytest.mark.parametrize(
    "case,message",
    [
        ("empty query", "query is empty"),
        ("blank query", "query is empty"),
        ("no query", "no query"),
        ("nan", "NaN or infinite"),
        ("inf", "NaN or infinite"),
        ("one sample", "too short"),
        ("one stereo frame", r"shape \(1, 2\) is too short .*at most 2 samples"),
        ("silence", "silent"),
        ("3-d", "array"),
        ("both queries", "not both"),
        ("missing image", "no such file"),
    ],
)
def test_bad_inputs_raise_clear_errors(separator, case, message):
    from PIL import Image

    audio, kwargs = tones(16000, 1.0, 1), {"query": "cello"}
    if case == "empty query":
        kwargs = {"query": ""}
    elif case == "blank query":
        kwargs = {"query": "  \t"}
    elif case == "no query":
        kwargs = {}
    elif case == "nan":
        audio[0, 500] = np.nan
    elif case == "inf":
        audio[0, 9] = np.inf
    elif case == "one sample":
        audio = audio[:, :1]
    elif case == "one stereo frame":  # [L, C] or [C, L]: too short either way, both named
        audio = np.array([[0.1, -0.2]], np.float32)
    elif case == "silence":
        audio = np.zeros_like(audio)
    elif case == "3-d":
        audio = audio[None]
    elif case == "both queries":
        kwargs["image"] = Image.new("RGB", (8, 8))
    elif case == "missing image":
        kwargs = {"image": "/nonexistent/picture.png"}
    with pytest.raises(BadInputError, match=message):
        separator.separate(audio, 16000, **kwargs)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    from clipsep.inference import Separator

    with pytest.raises(MissingWeightsError, match="not found"):
        Separator.from_pretrained(tmp_path / "absent.pt", device="cpu")


def test_default_settings_match_params_yaml():
    """SeparateConfig's defaults are the Python API's settings; params.yaml repeats each one."""
    from clipsep.config import SeparateConfig
    from clipsep.inference import DEFAULT_SETTINGS

    section = yaml.safe_load((REPO / "params.yaml").read_text())["separate"]
    assert DEFAULT_SETTINGS == SeparateConfig()
    assert dataclasses.asdict(SeparateConfig()) == section


def test_independent_channel_masks_match_shared_on_identical_channels(separator):
    from clipsep.inference import Separator

    settings = dataclasses.replace(separator.settings, channel_masks="independent")
    independent = Separator(separator.network, separator.encoder, separator.audio_cfg, settings)
    mono = tones(22050, 2.0, 1)
    twin = np.concatenate([mono, mono])
    shared_target = separator.separate(twin, 22050, query="cello").target
    np.testing.assert_allclose(
        independent.separate(twin, 22050, query="cello").target, shared_target, atol=1e-5
    )
    distinct = tones(22050, 2.0, 2)
    result = independent.separate(distinct, 22050, query="cello")
    assert np.abs(result.target + result.residual - distinct).max() < 1e-5
    with pytest.raises(BadInputError, match="channel_masks"):
        Separator(
            separator.network,
            separator.encoder,
            separator.audio_cfg,
            dataclasses.replace(settings, channel_masks="stereo"),
        )


def test_bf16_precision_gives_nearly_the_fp32_target(separator):
    from clipsep.inference import Separator

    settings = dataclasses.replace(separator.settings, precision="bf16")
    fast = Separator(separator.network, separator.encoder, separator.audio_cfg, settings)
    audio = tones(16000, 2.0, 1)
    reference = separator.separate(audio, 16000, query="flute").target
    target = fast.separate(audio, 16000, query="flute").target
    assert np.sqrt(np.mean((target - reference) ** 2)) < 0.01 * np.sqrt(np.mean(reference**2))
    with pytest.raises(BadInputError, match="precision"):
        Separator(
            separator.network,
            separator.encoder,
            separator.audio_cfg,
            dataclasses.replace(settings, precision="fp8"),
        )


def test_the_cpu_forward_runs_channels_last_and_gives_the_nchw_masks(separator):
    from clipsep.inference import Separator, forward_memory_format

    fp32 = dataclasses.replace(separator.settings, precision="fp32")  # bf16 rounds per layout
    network = copy.deepcopy(separator.network).to(memory_format=torch.contiguous_format)
    fast = Separator(network, separator.encoder, separator.audio_cfg, fp32)
    assert fast.memory_format == torch.channels_last == separator.memory_format
    conv = next(m for m in fast.network.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert forward_memory_format(network, "cuda") is None
    assert forward_memory_format(object(), "cpu") is None  # an ONNX Runtime network
    segment = tones(16000, 1.0, 2)
    query = separator.embed_query("flute")[None]
    masks = fast.segment_masks(segment, query)[1]
    nchw = copy.copy(fast)
    nchw.network = copy.deepcopy(fast.network).to(memory_format=torch.contiguous_format)
    nchw.memory_format = None
    reference = nchw.segment_masks(segment, query)[1]
    assert masks.shape == reference.shape
    assert float((masks - reference).abs().max()) < 1e-6


def band_projection(
    part: np.ndarray, whole: np.ndarray, rate: int, low: float, high: float
) -> float:
    """<part, whole> / <whole, whole> over the FFT bins in [low, high) Hz (all channels)."""
    freqs = np.fft.rfftfreq(whole.shape[-1], 1.0 / rate)
    band = (freqs >= low) & (freqs < high)
    p, w = np.fft.rfft(part)[..., band], np.fft.rfft(whole)[..., band]
    return float(np.sum((p * w.conj()).real) / np.sum(np.abs(w) ** 2))


def bright_tones(rate: int, seconds: float) -> np.ndarray:
    """Stereo: 440 Hz + 7 kHz (inside the model's top band) + 12 kHz and 15 kHz (above 8 kHz)."""
    t = np.arange(int(rate * seconds)) / rate
    mono = sum(
        a * np.sin(2 * np.pi * f * t)
        for a, f in [(0.3, 440.0), (0.1, 7000.0), (0.1, 12000.0), (0.05, 15000.0)]
    )
    return np.stack([mono, 0.7 * mono]).astype(np.float32)


@pytest.mark.parametrize("high_band", ["extend", "residual"])
def test_high_band_extension_gives_the_target_its_share_above_8khz(separator, high_band):
    from clipsep.inference import Separator

    settings = dataclasses.replace(separator.settings, high_band=high_band)
    sep = Separator(separator.network, separator.encoder, separator.audio_cfg, settings)
    audio = bright_tones(44100, 3.0)
    result = sep.separate(audio, 44100, query="violin")
    assert np.abs(result.target + result.residual - audio).max() < 1e-5  # exact either way
    top = band_projection(result.target, audio, 44100, 6500.0, 7500.0)  # the mask at 7 kHz
    above = band_projection(result.target, audio, 44100, 9000.0, 22050.0)
    assert 0.05 < top < 0.95
    if high_band == "extend":  # the 7-kHz share carries over to 12 and 15 kHz
        assert above == pytest.approx(top, abs=0.03)
    else:  # band-limited: nothing above the model's Nyquist
        assert abs(above) < 1e-3


def test_top_band_gain_is_the_targets_share_and_extension_is_complementary(separator):
    from clipsep.inference import ArraySource, _input_rate_cut, _model_rate_cut, top_band_gains

    from clipsep import audio as spectral

    mixture = bright_tones(16000, 1.0)  # 7 kHz in the top band
    spec = spectral.stft(torch.from_numpy(mixture), separator.audio_cfg)  # [2, F, T]
    shared = torch.full((1, 1, *spec.shape[1:]), 0.3)
    np.testing.assert_allclose(top_band_gains(spec, shared)[0], 0.3, atol=1e-6)
    per_channel = torch.tensor([0.2, 0.9]).reshape(1, 2, 1, 1).expand(1, 2, *spec.shape[1:])
    gains = top_band_gains(spec, per_channel)[0]
    np.testing.assert_allclose(gains, [[0.2], [0.9]] * np.ones_like(gains), atol=1e-6)
    # the mask's mean over 6-8 kHz, weighted by the mixture's energy: a mask of 1 on the
    # 7-kHz bins alone (where the energy is, away from the padded ends) gives 1, one below
    # 6 kHz alone gives 0
    hz = np.arange(spec.shape[1]) * 16000 / separator.audio_cfg.n_fft
    only = torch.from_numpy((np.abs(hz - 7000) < 200).astype(np.float32))[None, None, :, None]
    inner = top_band_gains(spec, only.expand(1, 1, *spec.shape[1:]))[..., 2:-2]  # not the ends
    np.testing.assert_allclose(inner, 1, 1e-3)
    below = torch.from_numpy((hz < 6000).astype(np.float32))[None, None, :, None]
    np.testing.assert_allclose(top_band_gains(spec, below.expand(1, 1, *spec.shape[1:])), 0)
    # a target equal to its segment (mask 1) plus the extension gives back the input exactly
    audio = bright_tones(44100, 3.0)
    source = ArraySource(audio, 44100)
    plan = separator.plan(44100, audio.shape[1])
    for k in range(plan.n_chunks):
        (m0, m1), (start, stop) = plan.model_span(k), plan.input_span(k)
        segment = _model_rate_cut(source, plan, m0, m1)
        ones = np.ones((1, 1, spectral.n_frames(segment.shape[1], separator.audio_cfg)))
        whole = (
            _input_rate_cut(segment, plan, m0, start, stop)
            + separator._high_band_stems(source, plan, k, segment, ones)[0]
        )
        np.testing.assert_allclose(whole, audio[:, start:stop], atol=1e-5)


def test_each_segments_resampled_cut_equals_the_whole_signals_resampling(separator):
    """Chunked resampling (a cut with context, both ways) agrees with resampling the whole
    signal: the context covers the resampler's filter."""
    from clipsep.inference import ArraySource, _input_rate_cut, _model_rate_cut, resample

    rate = 44100
    audio = np.random.default_rng(3).standard_normal((2, rate * 12)).astype(np.float32)
    plan = separator.plan(rate, audio.shape[1])
    down = resample(audio, rate, plan.model_rate)
    up = resample(down, plan.model_rate, rate)
    assert plan.n_chunks >= 3
    for k in range(plan.n_chunks - 1):
        (m0, m1), (start, stop) = plan.model_span(k), plan.input_span(k)
        cut = _model_rate_cut(ArraySource(audio, rate), plan, m0, m1)
        np.testing.assert_allclose(cut, down[:, m0:m1], atol=1e-5)
        back = _input_rate_cut(down[:, m0:m1], plan, m0, start, stop)
        inner = slice(2000, -2000)  # the cut's own ends lack the signal beyond them
        np.testing.assert_allclose(back[:, inner], up[:, start:stop][:, inner], atol=1e-5)


def test_separate_file_names_an_earlier_runs_stems_and_keeps_them(separator, tmp_path, caplog):
    """The Python API, like the CLI, warns that a reused folder's old stems are not this run's
    (they do not sum with its residual) and leaves them in place."""
    import soundfile as sf

    sf.write(tmp_path / "duet.wav", tones(16000, 1.5, 1).T, 16000)
    separator.separate_file(tmp_path / "duet.wav", tmp_path / "out", queries=["cello", "flute"])
    assert "earlier run" not in caplog.text
    caplog.clear()
    result = separator.separate_file(tmp_path / "duet.wav", tmp_path / "out", query="violin")
    folder = tmp_path / "out" / "duet"
    assert list(result.stems.values()) == [folder / "target.wav"]
    assert {p.name for p in folder.glob("*.wav")} == {
        "cello.wav",
        "flute.wav",
        "target.wav",
        "residual.wav",
    }
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert [r.getMessage() for r in warnings] == [
        f"{tmp_path / 'duet.wav'}: {folder} also holds cello.wav, flute.wav from an earlier run "
        "with other queries or format; this run's residual goes with its own stems only"
    ]


def test_resampling_rows_on_several_threads_equals_one_thread():
    from clipsep.inference import resample

    audio = np.random.default_rng(4).standard_normal((3, 44100)).astype(np.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = resample(audio, 44100, 16000)
        torch.set_num_threads(3)
        threaded = resample(audio, 44100, 16000)
    finally:
        torch.set_num_threads(threads)
    assert serial.shape == (3, 16000)
    np.testing.assert_array_equal(serial, threaded)


def test_sound_file_source_reads_the_files_samples_for_any_span(tmp_path):
    """Spans inside the last block read come from that block; every span equals the file's own
    samples, clamped at its ends."""
    import soundfile as sf

    from clipsep.inference import SoundFileSource

    wave = np.random.default_rng(3).uniform(-1, 1, (2, 5000)).astype(np.float32)
    sf.write(tmp_path / "x.wav", wave.T, 8000, subtype="FLOAT")
    source = SoundFileSource(tmp_path / "x.wav")
    for start, stop in [(100, 900), (200, 700), (100, 900), (850, 1200), (-5, 30), (4990, 5100)]:
        np.testing.assert_array_equal(source.read(start, stop), wave[:, max(start, 0) : stop])
    source.close()


def test_separate_file_into_a_folder_that_cannot_be_written(separator, tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "x.wav", np.sin(np.arange(16000) / 5.0) * 0.3, 16000)
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(
        BadInputError, match=r"^cannot create the output folder .*taken/new \(Not a directory\)$"
    ):
        separator.separate_file(tmp_path / "x.wav", tmp_path / "taken" / "new", query="cello")


def test_checking_a_new_output_folder_leaves_nothing_behind(tmp_path):
    from clipsep.fileio import check_writable_folder

    assert check_writable_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    check_writable_folder(tmp_path / "kept")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any(
        (tmp_path / "kept").iterdir()
    )


def test_written_files_get_the_permissions_of_any_new_file(tmp_path):
    """New-user trial: the evaluation's example wavs (and training's) were 0600 beside 0644
    reports: write_wav's mkstemp made its temporary file so, and the rename kept it. Every
    atomic writer now gives what a plain new file gets (0666 less the umask)."""
    import os

    from clipsep import fileio
    from clipsep.audio_io import write_wav

    previous = os.umask(0o022)
    try:
        written = [
            write_wav(tmp_path / "a.wav", np.zeros(16, np.float32), 16000),
            fileio.write_bytes(tmp_path / "b.bin", b"x"),
            fileio.write_text(tmp_path / "c.txt", "x"),
            fileio.write_json(tmp_path / "d.json", {}),
            fileio.write_csv(tmp_path / "e.csv", ["x"], [{"x": 1}]),
        ]
    finally:
        os.umask(previous)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {
        p.name: "0o644" for p in written
    }


@pytest.mark.parametrize("rate", [0, -16000, float("nan"), float("inf"), "16000", True])
def test_a_sample_rate_that_is_not_positive_is_named_at_every_entry_point(separator, rate):
    from clipsep.activity import activity
    from clipsep.audio_io import write_wav

    audio = tones(16000, 1.0, 1)
    expected = f"sample rate must be a positive number of Hz, got {rate!r}"
    calls = [
        lambda: separator.separate(audio, rate, query="cello"),
        lambda: separator.separate(audio, rate, queries=["cello", "flute"]),
        lambda: activity(audio, audio, rate, separator.settings),
        lambda: separator.min_input_frames(rate),
    ]
    for call in calls:
        with pytest.raises(BadInputError) as err:
            call()
        assert str(err.value) == expected
        assert err.value.arguments == ("sample_rate",)
    with pytest.raises(BadInputError, match="positive number of Hz"):
        write_wav(Path("/nonexistent/never.wav"), audio, rate)


def test_a_fractional_sample_rate_is_refused_and_a_whole_float_one_taken(separator):
    audio = tones(16000, 1.0, 1)
    with pytest.raises(BadInputError) as err:
        separator.separate(audio, 16000.5, query="cello")
    assert str(err.value) == "sample rate must be a whole number of Hz, got 16000.5"
    whole = separator.separate(audio, np.float64(16000.0), query="cello")
    exact = separator.separate(audio, 16000, query="cello")
    assert whole.sample_rate == 16000 and type(whole.sample_rate) is int
    np.testing.assert_array_equal(whole.target, exact.target)


@pytest.mark.parametrize("dtype,scale", [(np.int16, 32768.0), (np.int32, 2.0**31)])
def test_integer_pcm_is_separated_at_full_scale_one_as_float32(separator, dtype, scale):
    floats = tones(16000, 1.0, 2)  # [C, L]
    pcm = np.round(floats.T * (scale / 2)).astype(dtype)  # [L, C] as soundfile gives it, -6 dBFS
    as_float = (pcm.astype(np.float64) / scale).astype(np.float32)
    result = separator.separate(pcm, 16000, query="cello")
    reference = separator.separate(as_float, 16000, query="cello")
    assert result.target.dtype == result.residual.dtype == np.float32
    assert result.target.shape == pcm.shape
    np.testing.assert_array_equal(result.target, reference.target)
    np.testing.assert_array_equal(result.residual, reference.residual)
    assert 0.1 < np.abs(result.target + result.residual).max() < 0.2  # 0.3 / 2, not 3273
    assert np.abs(result.target + result.residual - pcm / scale).max() < 1e-6


def test_uint8_pcm_is_centred_on_128():
    from clipsep.layout import channels_first

    data, layout = channels_first(np.array([0, 128, 255], np.uint8))
    np.testing.assert_array_equal(data, [[-1.0, 0.0, 127 / 128]])
    assert data.dtype == np.float32 and layout.dtype == np.float32


def test_float64_comes_back_float64_and_sums_exactly(separator):
    audio = tones(44100, 1.0, 2).astype(np.float64) + 1e-9  # below float32's resolution at 0.3
    result = separator.separate(audio, 44100, query="cello")
    single = separator.separate(audio.astype(np.float32), 44100, query="cello")
    assert result.target.dtype == result.residual.dtype == np.float64
    np.testing.assert_array_equal(result.target, single.target.astype(np.float64))
    assert np.abs(result.target + result.residual - audio).max() < 1e-15
    stems = separator.separate(audio, 44100, queries=["cello", "flute"])
    assert {stem.dtype for stem in stems.values()} == {np.dtype(np.float64)}
    assert np.abs(sum(stems.values()) + stems.residual - audio).max() < 1e-15


def test_torch_int16_and_float64_tensors_come_back_as_tensors_of_float(separator):
    floats = torch.from_numpy(tones(16000, 1.0, 1)[0])
    pcm = torch.round(floats * 16384).to(torch.int16)
    result = separator.separate(pcm, 16000, query="cello")
    assert isinstance(result.target, torch.Tensor) and result.target.dtype == torch.float32
    total = (result.target + result.residual).double()
    assert torch.allclose(total, pcm.double() / 32768, atol=1e-6)
    double = separator.separate(floats.double(), 16000, query="cello")
    assert double.target.dtype == double.residual.dtype == torch.float64


def test_no_queries_names_the_python_arguments_and_the_cli_adds_its_flags(separator):
    from clipsep.cli import with_flags

    with pytest.raises(BadInputError) as err:
        separator.separate(tones(16000, 1.0, 1), 16000, queries=[])
    assert str(err.value) == "no query: give text queries or an image"
    assert "--" not in str(err.value)
    assert with_flags(err.value) == (
        "no query: give text queries or an image (--query TEXT / --image PATH)"
    )


def test_too_short_names_samples_and_seconds(separator):
    with pytest.raises(BadInputError) as err:
        separator.separate(tones(44100, 0.05, 1), 44100, query="cello")
    assert str(err.value) == (
        "audio: 2205 samples (0.050 s) at 44100 Hz is too short to separate "
        "(need at least 2823 samples, 0.064 s)"
    )


def test_a_bf16_pass_one_frame_wide_at_the_bottom_runs_fp32_and_repeats_exactly(tmp_path):
    """CI (stop 29): the shortest 8-kHz upload came back NaN now and then on an AMX Xeon. oneDNN's
    AMX bf16 convolution reads past its input where a stride-2 convolution's output is one
    column wide (the deepest level of a pass under 2 ** (depth + 1) frames), so such a pass runs
    fp32; with memory around it full of NaN, the same input gives the same finite output."""
    from clipsep.inference import DEFAULT_SETTINGS, Separator

    checkpoint, clip = make_tiny_model(tmp_path)
    settings = dataclasses.replace(DEFAULT_SETTINGS, precision="bf16", device="cpu")
    separator = Separator.from_pretrained(checkpoint, clip_weights=clip, settings=settings)
    depth = separator.depth  # 4: the tiny preset
    assert separator.pass_precision(2 ** (depth + 1) - 16) == "fp32"
    assert separator.pass_precision(2 ** (depth + 1)) == "bf16"
    audio = np.random.default_rng(0).standard_normal(512).astype(np.float32) * 0.3
    first = separator.separate(audio, 8000, query="flute").target  # 1024 samples at 16 kHz
    junk = []
    for _ in range(30):
        junk = [
            torch.full((int(n),), float("nan"))
            for n in np.random.default_rng().integers(1, 5000, 20)
        ]
        again = separator.separate(audio, 8000, query="flute").target
        assert np.isfinite(again).all() and np.array_equal(again, first)
    del junk
