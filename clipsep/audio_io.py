"""Reading audio from any file a user has (wav/flac/ogg/mp3 or a video's audio track) and writing wav.

Audio arrays here are float32 numpy ``[C, L]`` (channels first) at the file's native rate.
soundfile reads wav/flac/ogg/mp3 (random access, so long files stream in blocks); other containers
(mp4, mkv, webm, ...) go through PyAV. Every failure a user can cause raises
:class:`clipsep.errors.BadInputError` naming the file and the problem. Writes are atomic
(tmp file + ``os.replace``), so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from clipsep.errors import BadInputError

SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".m4a", ".aac", ".opus"}


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds: native rate, channel count and length in samples (per channel)."""

    sample_rate: int
    channels: int
    frames: int


def check_exists(path: str | Path) -> Path:
    """``path`` as a Path; BadInputError if it is missing or a directory."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: no such file")
    if not path.is_file():
        raise BadInputError(f"{path}: not a regular file")
    return path


def is_soundfile_readable(path: Path) -> bool:
    return path.suffix.lower() in SOUNDFILE_SUFFIXES


def has_video_stream(path: str | Path) -> bool:
    """True when the container holds a video stream (so a middle frame can serve as image query)."""
    import av

    try:
        with av.open(str(path)) as container:
            return len(container.streams.video) > 0
    except (av.error.FFmpegError, OSError):
        return False


def audio_info(path: str | Path) -> AudioInfo:
    """Rate, channels and length of a soundfile-readable file."""
    import soundfile as sf

    path = check_exists(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise BadInputError(f"{path}: unreadable audio file ({err})") from err
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames))


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """The whole file as float32 ``[C, L]`` at its native rate (audio track of a video too)."""
    path = check_exists(path)
    if is_soundfile_readable(path):
        import soundfile as sf

        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise BadInputError(f"{path}: unreadable audio file ({err})") from err
        return np.ascontiguousarray(data.T), int(rate)
    blocks = list(iter_container_audio(path))
    if not blocks:
        raise BadInputError(f"{path}: the audio track holds no samples")
    rate = blocks[0][1]
    return np.concatenate([b for b, _ in blocks], axis=1), rate


def iter_container_audio(path: Path) -> Iterator[tuple[np.ndarray, int]]:
    """Decode a container's first audio stream with PyAV: yields (float32 [C, n], rate) blocks."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise BadInputError(f"{path}: unreadable media file ({err})") from err
    with container:
        if not container.streams.audio:
            raise BadInputError(f"{path}: no audio stream in this file")
        stream = container.streams.audio[0]
        channels = stream.codec_context.channels or len(stream.layout.channels)
        # Planar float keeps channels apart at the native rate: no mixing, no resampling here.
        resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(channels, -1).astype(np.float32), stream.rate
            for out in resampler.resample(None):
                yield out.to_ndarray().reshape(channels, -1).astype(np.float32), stream.rate
        except av.error.FFmpegError as err:
            raise BadInputError(f"{path}: corrupt audio stream ({err})") from err


def decode_to_wav(path: Path, out_path: Path) -> AudioInfo:
    """Stream a container's audio track into a float wav (constant memory); returns its info."""
    import soundfile as sf

    writer = None
    frames = 0
    try:
        for block, rate in iter_container_audio(path):
            if writer is None:
                writer = sf.SoundFile(str(out_path), "w", samplerate=rate, channels=block.shape[0],
                                      subtype="FLOAT", format="WAV")
            writer.write(block.T)
            frames += block.shape[1]
    finally:
        if writer is not None:
            writer.close()
    if writer is None or frames == 0:
        raise BadInputError(f"{path}: the audio track holds no samples")
    return audio_info(out_path)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write float audio ``[C, L]`` or ``[L]`` as a 32-bit float wav, atomically."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = audio if audio.ndim == 1 else audio.T
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".wav.part", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, data, int(sample_rate), subtype="FLOAT", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def middle_frame(video_path: str | Path):
    """The picture shown at the middle of a video, as an RGB PIL.Image."""
    import av

    path = check_exists(video_path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BadInputError(f"{path}: no video stream, so no frame to use as image query")
            stream = container.streams.video[0]
            duration = _duration_s(container, stream)
            target = duration / 2
            if target > 0 and stream.time_base:
                container.seek(int(target / stream.time_base), stream=stream)
            chosen = None
            for frame in container.decode(stream):
                chosen = frame
                if frame.time is None or frame.time >= target:
                    break
    except av.error.FFmpegError as err:
        raise BadInputError(f"{path}: unreadable video ({err})") from err
    if chosen is None:
        raise BadInputError(f"{path}: the video stream holds no frames")
    return chosen.to_image().convert("RGB")


def _duration_s(container, stream) -> float:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base is microseconds
    return 0.0
