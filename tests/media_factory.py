"""Small test videos written with PyAV, including a corpus of broken files for the quarantine.

Pictures are flat colours whose brightness encodes time (grey level = 16 + 200 * t / seconds), so a
test can check which frame the ingest kept. Sound is a sine tone plus a little noise (or zeros).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


@dataclass(frozen=True)
class VideoSpec:
    """What to encode; the defaults match the embedded world (H.264 + AAC 44.1 kHz stereo)."""

    seconds: float = 6.5
    size: tuple[int, int] = (64, 48)  # width, height
    fps: int = 8
    sample_rate: int = 44100
    video_codec: str | None = "libx264"  # None = no video stream
    audio_codec: str | None = "aac"  # None = no audio stream
    pix_fmt: str = "yuv420p"
    tone_hz: float = 440.0
    amplitude: float = 0.3  # 0 = digital silence
    n_frames: int | None = None  # override the frame count (e.g. 1 for a one-frame video)
    faststart: bool = False  # mp4 index at the front (a truncated copy still opens)
    seed: int = 0


def grey_level(t: float, seconds: float) -> int:
    """Brightness of the picture shown at time t (what :func:`write_video` draws)."""
    return int(16 + 200 * min(max(t / seconds, 0.0), 1.0))


def write_video(path: Path, spec: VideoSpec = VideoSpec()) -> Path:
    """Encode one video file; the container format follows the file extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "+faststart"} if spec.faststart else {}
    with av.open(str(path), "w", options=options) as out:
        video = _add_video_stream(out, spec) if spec.video_codec else None
        audio = _add_audio_stream(out, spec) if spec.audio_codec else None
        if video is not None:
            _encode_pictures(out, video, spec)
        if audio is not None:
            _encode_sound(out, audio, spec)
    return path


def _add_video_stream(out, spec: VideoSpec):
    stream = out.add_stream(spec.video_codec, rate=spec.fps)
    stream.width, stream.height = spec.size
    stream.pix_fmt = spec.pix_fmt
    if spec.video_codec.startswith("libvpx"):
        stream.options = {"deadline": "realtime", "cpu-used": "8"}
    return stream


def _add_audio_stream(out, spec: VideoSpec):
    stream = out.add_stream(spec.audio_codec, rate=spec.sample_rate)
    stream.layout = "stereo"
    return stream


def _encode_pictures(out, stream, spec: VideoSpec) -> None:
    width, height = spec.size
    count = spec.n_frames if spec.n_frames is not None else int(round(spec.seconds * spec.fps))
    for index in range(count):
        level = grey_level(index / spec.fps, spec.seconds)
        picture = np.full((height, width, 3), level, dtype=np.uint8)
        picture[: max(1, height // 8), :, 0] = 255  # a red band: not a flat grey image
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        frame.pts = index
        frame.time_base = Fraction(1, spec.fps)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def _encode_sound(out, stream, spec: VideoSpec) -> None:
    rate = spec.sample_rate
    total = int(round(spec.seconds * rate))
    t = np.arange(total) / rate
    rng = np.random.default_rng(spec.seed)
    noise = 0.05 * rng.standard_normal(total)
    wave = spec.amplitude * (np.sin(2 * np.pi * spec.tone_hz * t) + noise)
    stereo = np.ascontiguousarray(np.stack([wave, wave]).astype(np.float32))
    chunk = stream.codec_context.frame_size or 1024
    fmt = stream.codec_context.format.name
    for start in range(0, total, chunk):
        block = stereo[:, start : start + chunk]
        if fmt == "flt":  # packed float codecs want [1, samples*channels]
            data = block.T.reshape(1, -1).copy()
        else:
            fmt, data = "fltp", np.ascontiguousarray(block)
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="stereo")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


# --- the other containers the ingest must pick up ----------------------------------------------

CONTAINER_SPECS: dict[str, VideoSpec] = {
    "mkv": VideoSpec(video_codec="libx264", audio_codec="aac"),
    "webm": VideoSpec(video_codec="libvpx-vp9", audio_codec="libopus", sample_rate=48000),
    "avi": VideoSpec(video_codec="mpeg4", audio_codec="libmp3lame"),
    "mov": VideoSpec(video_codec="libx264", audio_codec="aac"),
}


def write_container_zoo(folder: Path) -> dict[str, Path]:
    """One good video per extension (mkv h264+aac, webm vp9+opus 48 kHz, avi mpeg4+mp3, mov)."""
    return {
        ext: write_video(folder / f"zoo_{ext}.{ext}", spec) for ext, spec in CONTAINER_SPECS.items()
    }


# --- the fault corpus ---------------------------------------------------------------------------


def write_fault_corpus(folder: Path) -> dict[str, str]:
    """Broken or unusable files; returns {file name: the quarantine reason the ingest must give}.

    ``huge.mp4`` is 256x128 and counts as absurd only when the test sets ``max_pixels`` below
    32768 (encoding a real 8K frame would be slow).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    _truncate(write_video(folder / "cut_plain.mp4", VideoSpec(seconds=8.0)))
    _truncate(write_video(folder / "cut_faststart.mp4", VideoSpec(seconds=8.0, faststart=True)))
    write_video(folder / "mute.mp4", VideoSpec(audio_codec=None))
    write_video(folder / "sound_only.mp4", VideoSpec(video_codec=None))
    write_video(folder / "still.mp4", VideoSpec(n_frames=1))
    write_video(folder / "huge.mp4", VideoSpec(size=(256, 128), seconds=5.5, fps=2))
    write_video(folder / "silent.mp4", VideoSpec(amplitude=0.0))
    write_video(folder / "short.mp4", VideoSpec(seconds=2.0))
    return {
        "empty.mp4": "empty",
        "notes.mp4": "not_media",
        "cut_plain.mp4": "corrupt",
        "cut_faststart.mp4": "truncated",
        "mute.mp4": "no_audio",
        "sound_only.mp4": "no_video",
        "still.mp4": "one_frame",
        "huge.mp4": "too_large",
        "silent.mp4": "silent",
        "short.mp4": "too_short",
    }


def _truncate(path: Path) -> None:
    """Keep the first half of the file's bytes, as an interrupted download would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
