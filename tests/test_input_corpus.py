"""Every kind of file a user has, through every entry point that reads it.

One corpus (built here with numpy, soundfile, PyAV and the ffmpeg CLI; short clips) goes through
``clipsep separate`` (all files in one run, then the no-query cases), the Python API
(``Separator.separate_file``) and the demo's handlers. A file the library accepts must come back
with the rate, channel count and length the file holds, finite, and with ``target + residual``
equal to the input as an independent decoder (the ffmpeg CLI) reads it; a file it refuses must be
refused everywhere with a one-line reason that names it. Kinds from issue 10: a header promising
more audio than the data holds (mp3 inside a wav, an mp3 / flac cut short), cover art, display
rotation, the shortest input at 8 kHz, and the array layouts of the Python API.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import media_factory as media
from clipsep.errors import BadInputError
from conftest import REPO
from test_app_handlers import write_tiny_model

QUERY = "cello"
UNICODE_NAME = "çafé 音楽 ñandú.wav"


@dataclass(frozen=True)
class Case:
    """One file and what every entry point must make of it.

    ``frames``: the exact length the output must have (None: whatever the reference decoder, the
    ffmpeg CLI, decodes). ``refused``: regex of the one-line reason (None: it is separated).
    ``warning``: regex of the warning line that must accompany its separation.
    """

    name: str
    rate: int = 0
    channels: int = 0
    frames: int | None = None
    refused: str | None = None
    warning: str | None = None


def tones(rate: int, seconds: float, channels: int) -> np.ndarray:
    """``[C, L]`` float32: a different sine per channel plus a little noise."""
    t = np.arange(int(round(rate * seconds))) / rate
    rng = np.random.default_rng(channels)
    waves = [
        0.3 * np.sin(2 * np.pi * 220.0 * (c + 1) * t) + 0.02 * rng.standard_normal(t.size)
        for c in range(channels)
    ]
    return np.stack(waves).astype(np.float32)


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def reference_decode(path: Path, channels: int) -> np.ndarray:
    """``[C, L]`` float32 as the ffmpeg CLI decodes the file's first audio stream."""
    raw = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(path),
            "-map",
            "0:a:0",
            "-f",
            "f32le",
            "-c:a",
            "pcm_f32le",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.float32).reshape(-1, channels).T


def write_cover_art(path: Path, audio_codec: str, picture_codec: str = "mjpeg") -> Path:
    """A 1-s 44.1 kHz stereo file whose second stream is an attached picture (cover art)."""
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "sine=f=330:d=1:sample_rate=44100",
        "-f",
        "lavfi",
        "-i",
        "testsrc=s=64x48:d=1",
        "-map",
        "0:a",
        "-map",
        "1:v",
        "-frames:v",
        "1",
        "-ac",
        "2",
        "-c:a",
        audio_codec,
        "-c:v",
        picture_codec,
        "-disposition:v:0",
        "attached_pic",
        str(path),
    )
    return path


def write_portrait(path: Path, seconds: float = 2.0, size: tuple[int, int] = (320, 180)) -> Path:
    """A phone's portrait video: coded ``size`` (landscape) with a 90-degree display rotation."""
    coded = media.write_video(
        path.with_name("coded-" + path.name), media.VideoSpec(seconds=seconds, size=size)
    )
    ffmpeg("-i", str(coded), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(path))
    coded.unlink()
    return path


def build_corpus(folder: Path) -> list[Case]:
    """Write every file of the corpus into ``folder``; returns what each must give."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = []

    def wav(name, rate, seconds, channels, subtype, edit=None, **expect):
        audio = tones(rate, seconds, channels)
        if edit is not None:
            edit(audio)
        sf.write(folder / name, audio.T, rate, subtype=subtype)
        expect = {"rate": rate, "channels": channels, "frames": audio.shape[1], **expect}
        cases.append(Case(name, **expect))

    wav("mono.wav", 16000, 1.0, 1, "PCM_16")
    wav("surround51.wav", 48000, 0.5, 6, "PCM_16")
    wav("u8_8k.wav", 8000, 0.5, 1, "PCM_U8")
    wav("f64_96k.wav", 96000, 0.4, 2, "DOUBLE")
    wav(UNICODE_NAME, 22050, 0.5, 2, "PCM_16")
    wav("shortest_8k.wav", 8000, 512 / 8000, 1, "PCM_16")  # the shortest input at 8 kHz
    wav("too_short_8k.wav", 8000, 511 / 8000, 1, "PCM_16", refused="too short to separate")
    wav(
        "nan.wav",
        16000,
        0.5,
        1,
        "FLOAT",
        edit=lambda a: a.__setitem__((0, 300), np.nan),
        refused="NaN or infinite sample at index 300",
    )
    wav("silence.wav", 16000, 0.5, 2, "FLOAT", edit=lambda a: a.fill(0.0), refused="silent")
    sf.write(folder / "deep24.flac", tones(44100, 0.6, 2).T, 44100, subtype="PCM_24")
    cases.append(Case("deep24.flac", 44100, 2, 26460))

    source = folder / "source.wav.tmp"
    sf.write(source, tones(44100, 1.0, 2).T, 44100, subtype="FLOAT", format="WAV")
    for name, codec, rate in [
        ("song.mp3", "libmp3lame", 44100),
        ("hymn.ogg", "libvorbis", 44100),
        ("voice.opus", "libopus", 48000),
        ("tune.m4a", "aac", 44100),
    ]:
        ffmpeg("-f", "wav", "-i", str(source), "-c:a", codec, "-ar", str(rate), str(folder / name))
        cases.append(Case(name, rate, 2))
    # kind 1: the header promises more than the data holds
    ffmpeg(
        "-f",
        "wav",
        "-i",
        str(source),
        "-c:a",
        "libmp3lame",
        "-f",
        "wav",
        str(folder / "mp3_in.wav"),
    )
    cases.append(Case("mp3_in.wav", 44100, 2))
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "sine=f=440:d=5:sample_rate=44100",
        "-ac",
        "2",
        "-b:a",
        "128k",
        "-f",
        "mp3",
        str(folder / "whole.mp3.tmp"),
    )
    (folder / "cut.mp3").write_bytes((folder / "whole.mp3.tmp").read_bytes()[:40_000])
    cases.append(Case("cut.mp3", 44100, 2, warning="of the 5.00 s its header declares"))
    sf.write(folder / "whole.flac.tmp", tones(44100, 1.0, 2).T, 44100, format="FLAC")
    data = (folder / "whole.flac.tmp").read_bytes()
    (folder / "cut_short.flac").write_bytes(data[: len(data) * 6 // 10])
    cases.append(Case("cut_short.flac", 44100, 2, warning="of the 1.00 s its header declares"))
    # kind 2: cover art (separated with a query; see test_cover_art_is_not_a_video without)
    write_cover_art(folder / "cover_art.mp3", "libmp3lame")
    cases.append(Case("cover_art.mp3", 44100, 2))
    # kind 3: a portrait phone video (its sound is separated; its frame is checked below)
    write_portrait(folder / "portrait.mp4")
    cases.append(Case("portrait.mp4", 44100, 2))
    # refused everywhere
    media.write_video(folder / "mute.mp4", media.VideoSpec(seconds=1.0, audio_codec=None))
    cases.append(Case("mute.mp4", refused="no audio track"))
    (folder / "garbage.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    cases.append(Case("garbage.wav", refused="unreadable"))
    (folder / "empty.mp3").write_bytes(b"")
    cases.append(Case("empty.mp3", refused="unreadable"))
    for leftover in folder.glob("*.tmp"):
        leftover.unlink()
    return cases


CASE_NAMES = [
    "mono.wav",
    "surround51.wav",
    "u8_8k.wav",
    "f64_96k.wav",
    UNICODE_NAME,
    "shortest_8k.wav",
    "too_short_8k.wav",
    "nan.wav",
    "silence.wav",
    "deep24.flac",
    "song.mp3",
    "hymn.ogg",
    "voice.opus",
    "tune.m4a",
    "mp3_in.wav",
    "cut.mp3",
    "cut_short.flac",
    "cover_art.mp3",
    "portrait.mp4",
    "mute.mp4",
    "garbage.wav",
    "empty.mp3",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, Case]]:
    folder = tmp_path_factory.mktemp("corpus") / "uploads"
    cases = {case.name: case for case in build_corpus(folder)}
    assert sorted(cases) == sorted(CASE_NAMES)
    return folder, cases


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(params, checkpoint, separator): the tests' random tiny model on the CPU."""
    from app import handlers

    torch.set_num_threads(1)
    params, checkpoint = write_tiny_model(tmp_path_factory.mktemp("model"))
    separator, _ = handlers.load_model(params, str(checkpoint))
    return params, checkpoint, separator


def check_separated(
    case: Case, path: Path, target: np.ndarray, residual: np.ndarray, rate: int, atol: float = 1e-5
) -> None:
    """``target``/``residual`` ``[C, L]`` at ``rate`` are a valid split of the file (to ``atol``:
    the outputs' quantisation, see :func:`output_atol`)."""
    reference = reference_decode(path, case.channels)
    assert rate == case.rate, case.name
    assert target.shape == residual.shape == (case.channels, reference.shape[1]), case.name
    if case.frames is not None:
        assert reference.shape[1] == case.frames, case.name
    assert np.isfinite(target).all() and np.isfinite(residual).all(), case.name
    np.testing.assert_allclose(target + residual, reference, atol=atol, err_msg=case.name)
    assert 0.0 < np.abs(target).max(), case.name  # a mask, not nothing


def output_atol(folder: Path) -> float:
    """How far target + residual may be from the input: float outputs 1e-5; PCM outputs (the
    default for 16/24-bit PCM inputs keeps their depth) two roundings of one step."""
    bits = {"PCM_16": 16, "PCM_24": 24}.get(sf.info(folder / "target.wav").subtype)
    return 1e-5 if bits is None else 1e-5 + 2.0 ** (1 - bits)


def read_outputs(folder: Path) -> tuple[np.ndarray, np.ndarray, int]:
    target, rate = sf.read(folder / "target.wav", dtype="float32", always_2d=True)
    residual, residual_rate = sf.read(folder / "residual.wav", dtype="float32", always_2d=True)
    assert residual_rate == rate
    return target.T, residual.T, rate


# --- the CLI -----------------------------------------------------------------------------------


def run_cli(tiny, out: Path, *inputs: Path, query: str | None = QUERY) -> int:
    from clipsep.cli import main

    params, checkpoint, _ = tiny
    extra = ["--query", query] if query else []
    return main(
        [
            "separate",
            *map(str, inputs),
            "--model",
            str(checkpoint),
            "--out",
            str(out),
            "--json",
            *extra,
            "--params",
            str(REPO / "params.yaml"),
            "--profile",
            "tiny",
            "--set",
            f"paths.root={params.path('root')}",
            "--set",
            "separate.device=cpu",
        ]
    )


def test_cli_separates_the_good_files_and_reports_each_bad_one(
    tiny, corpus, tmp_path, capsys, caplog
):
    folder, cases = corpus
    out = tmp_path / "out"
    paths = [folder / name for name in CASE_NAMES]
    assert run_cli(tiny, out, *paths) == 2  # some inputs are bad: the status says so
    summary = json.loads(capsys.readouterr().out)
    for name, case in cases.items():
        path = folder / name
        if case.refused:
            assert str(path) in summary["failed"], name
            assert len(summary["failed"][str(path)].splitlines()) == 1
            assert re.search(case.refused, summary["failed"][str(path)]), name
            assert name not in summary["failed"][str(path)]  # its key names the file
            assert not (out / path.stem).exists(), name
        else:
            target = summary["separated"][str(path)]["stems"]["target"]
            assert target == str(out / path.stem / "target.wav")
            check_separated(
                case, path, *read_outputs(out / path.stem), atol=output_atol(out / path.stem)
            )
        if case.warning:
            assert any(
                r.levelname == "WARNING"
                and name in r.getMessage()
                and re.search(case.warning, r.getMessage())
                for r in caplog.records
            ), name
    assert "inputs could not be separated" in caplog.text
    assert "Traceback" not in caplog.text
    assert sorted(p.name for p in out.iterdir()) == sorted(
        Path(n).stem for n, c in cases.items() if not c.refused
    )  # no temporary leftovers


@pytest.mark.parametrize("name", ["cut.mp3", "garbage.wav", "cover_art.mp3"])
def test_cli_single_file_outcome(tiny, corpus, tmp_path, caplog, name):
    """One input: a cut-short mp3 is separated (exit 0, warning); garbage or cover art without a
    query exits 2 with one line and leaves no output folder behind."""
    folder, cases = corpus
    out = tmp_path / "nested" / "out"
    query = None if name == "cover_art.mp3" else QUERY
    status = run_cli(tiny, out, folder / name, query=query)
    if name == "cut.mp3":
        assert status == 0
        check_separated(
            cases[name], folder / name, *read_outputs(out / "cut"), atol=output_atol(out / "cut")
        )
        assert "its header declares" in caplog.text
    else:
        assert status == 2
        assert not (tmp_path / "nested").exists()  # nothing created, nothing left behind
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and len(errors[0].splitlines()) == 1
        assert ("query" in errors[0]) if name == "cover_art.mp3" else (name in errors[0])


# --- the Python API ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASE_NAMES)
def test_api_separate_file(tiny, corpus, tmp_path, caplog, name):
    folder, cases = corpus
    case, path = cases[name], folder / name
    separator = tiny[2]
    out = tmp_path / "out"
    if case.refused:
        with pytest.raises(BadInputError, match=case.refused) as caught:
            separator.separate_file(path, out, query=QUERY)
        assert name in str(caught.value) and len(str(caught.value).splitlines()) == 1
        assert not out.exists()
        return
    result = separator.separate_file(path, out, query=QUERY)
    target = result.stems["target"]
    assert target.parent == result.residual.parent == out / path.stem
    check_separated(case, path, *read_outputs(target.parent), atol=output_atol(target.parent))
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING" and "random weights" not in r.getMessage()
    ]
    if case.warning:
        assert len(warnings) == 1 and re.search(case.warning, warnings[0]) and name in warnings[0]
    else:
        assert warnings == []


@pytest.mark.parametrize("layout", ["[L]", "[C, L]", "[L, C]", "torch [L, C]", "torch [C, L]"])
def test_api_separate_accepts_every_layout_and_answers_in_it(tiny, corpus, layout):
    """``soundfile.read`` gives ``[L, C]``: that is no longer read as L channels of C samples."""
    folder, _ = corpus
    separator = tiny[2]
    data, rate = sf.read(folder / "f64_96k.wav", dtype="float32")  # [L, C] = [38400, 2]
    data = data[:, :1] if layout == "[L]" else data
    audio = {"[L]": data[:, 0], "[C, L]": data.T}.get(layout.removeprefix("torch "), data)
    if layout.startswith("torch"):
        audio = torch.from_numpy(np.ascontiguousarray(audio))
    result = separator.separate(audio, rate, query=QUERY)
    assert type(result.target) is type(audio) and type(result.residual) is type(audio)
    assert tuple(result.target.shape) == tuple(audio.shape) == tuple(result.residual.shape)
    total = np.asarray(result.target) + np.asarray(result.residual)
    np.testing.assert_allclose(total, np.asarray(audio), atol=1e-5)
    # the same separation as the channels-first call: the layout only changes the axes
    reference = separator.separate(np.ascontiguousarray(data.T), rate, query=QUERY).target
    given = np.asarray(result.target)
    given = given[None] if given.ndim == 1 else (given.T if layout.endswith("[L, C]") else given)
    np.testing.assert_allclose(given, reference, atol=1e-6)


@pytest.mark.parametrize("shape", [(200, 1500), (1500, 200), (2000, 2000), (2, 60)])
def test_api_ambiguous_layout_names_both_readings(tiny, shape):
    """Neither axis (or both) could be the channels: the error names both readings, unless the
    array is too short to separate either way (then that is the reason given)."""
    rows, cols = shape
    audio = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 0.1
    reason = "too short" if max(shape) < 1024 else "ambiguous"  # 1024 samples at 16 kHz
    with pytest.raises(BadInputError, match=reason) as caught:
        tiny[2].separate(audio, 16000, query=QUERY)
    message = str(caught.value)
    if reason == "too short":  # either reading: the shape and the longer axis are named
        assert message.startswith(f"audio of shape ({rows}, {cols}) is too short")
        assert f"at most {max(shape)} samples, need at least 1024" in message
        return
    assert f"{rows} channel(s) of {cols} samples ([C, L])" in message
    assert f"{rows} samples of {cols} channel(s) ([L, C])" in message


# --- the demo's handlers -----------------------------------------------------------------------


@pytest.mark.parametrize("name", CASE_NAMES)
def test_app_handlers(tiny, corpus, name):
    from app import handlers

    folder, cases = corpus
    case, path = cases[name], folder / name
    params, _, separator = tiny
    accepted = handlers.check_upload(path, params.serve, [folder])
    if case.refused:
        with pytest.raises(BadInputError, match=case.refused) as caught:
            handlers.separate_upload(separator, accepted, QUERY, None, params.serve)
        message = str(caught.value)
        assert name in message and str(folder) not in message  # the file, not the server's folder
        assert len(message.splitlines()) == 1
        return
    result = handlers.separate_upload(separator, accepted, QUERY, None, params.serve)
    check_separated(case, path, result.target, result.residual, result.rate)
    np.testing.assert_allclose(result.mixture, reference_decode(path, case.channels), atol=1e-6)
    assert result.picture.size[0] > 2 * result.picture.size[1]  # the three spectrograms
    notes = [line for line in result.summary.splitlines() if line.startswith("note:")]
    if case.warning:
        assert len(notes) == 1 and name in notes[0] and str(folder) not in notes[0]
    else:
        assert notes == []


# --- kind 2: cover art; kind 3: display rotation -----------------------------------------------


def test_cover_art_is_not_a_video(tiny, corpus, tmp_path):
    """Without a query, an mp3 with cover art gets the plain mp3's message at every entry point."""
    from app import handlers
    from clipsep import audio_io

    folder, _ = corpus
    params, _, separator = tiny
    cover = folder / "cover_art.mp3"
    m4a = write_cover_art(tmp_path / "cover.m4a", "aac", picture_codec="png")
    for path in (cover, m4a, folder / "song.mp3"):
        assert not audio_io.has_video_stream(path)
        assert handlers.offered_image(path) is None
        with pytest.raises(BadInputError, match="no query: give a text query"):
            separator.separate_file(path, tmp_path / "out")
        with pytest.raises(BadInputError, match="No query"):
            handlers.separate_upload(
                separator, path, "", handlers.offered_image(path), params.serve
            )
        with pytest.raises(BadInputError, match="no video stream"):
            audio_io.middle_frame(path)


def test_portrait_video_frame_is_upright(corpus, tmp_path):
    """The middle frame of a 320x180 video tagged rotate=90 is 180x320, as ffmpeg shows it."""
    from PIL import Image

    from app import handlers
    from clipsep import audio_io

    folder, _ = corpus
    video = folder / "portrait.mp4"
    frame = audio_io.middle_frame(video)
    assert frame.size == (180, 320)
    shown = tmp_path / "shown.png"  # the ffmpeg CLI applies the display matrix itself
    ffmpeg("-ss", "1.0", "-i", str(video), "-frames:v", "1", str(shown))
    reference = np.asarray(Image.open(shown).convert("RGB"), dtype=np.float32)
    assert np.abs(np.asarray(frame, dtype=np.float32) - reference).mean() < 4.0
    assert handlers.offered_image(video).size == (180, 320)


def test_ingest_turns_frames_upright_and_quarantines_cover_art(tmp_path):
    """Ingest: a portrait video's frames are upright crops; an mp4 holding only sound and cover
    art is quarantined as having no video (not as a one-frame video)."""
    import csv
    import dataclasses

    from PIL import Image

    from clipsep.data.ingest import ingest_folder
    from conftest import tiny_params_at

    source = tmp_path / "videos"
    write_portrait(source / "portrait.mp4", seconds=6.5, size=(64, 48))
    write_cover_art(source / "cover.mp4", "aac")
    cfg = dataclasses.replace(tiny_params_at(tmp_path).ingest, workers=1)
    summary = ingest_folder(source, tmp_path / "clips", cfg)
    with (tmp_path / "clips" / "quarantine.csv").open(newline="") as handle:
        quarantine = {row["source"]: row for row in csv.DictReader(handle)}
    assert quarantine["cover.mp4"]["reason"] == "no_video"
    assert "cover art" in quarantine["cover.mp4"]["detail"]
    assert summary["clips"] == 1
    frame = next((tmp_path / "clips" / "frames").glob("*/000001.jpg"))
    rgb = np.asarray(Image.open(frame).convert("RGB"), dtype=np.float32)
    # media_factory draws a red band along the coded picture's top edge: upright, it is the left
    red = rgb[..., 0] - rgb[..., 1]
    width = rgb.shape[1]
    assert red[:, : width // 16].mean() > 100 and red[:, width // 4 :].mean() < 20
