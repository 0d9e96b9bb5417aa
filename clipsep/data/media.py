"""Decoding one video file with PyAV: mono audio at the target rate plus pictures at given times.

One demux pass reads both streams: audio frames go through an ``av.AudioResampler`` (float, mono,
16 kHz) and video frames (cover art is not video) are decoded sequentially; for each requested
time only the nearest frame is turned upright (display matrix), resized, centre-cropped and
JPEG-encoded (seeking per second was slower on short clips because each seek re-decodes from the
previous keyframe). Anything that makes a file unusable raises
:class:`UnusableMedia` with a short machine-readable ``reason`` and a human ``detail``.
"""

from __future__ import annotations

import io
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import av
import numpy as np
from PIL import Image

from clipsep.audio_io import picture_streams, quarter_turns

# First bytes of containers we accept: a file starting like this that will not open is corrupt
# (e.g. an interrupted download), anything else that will not open is not media at all.
_CONTAINER_MAGIC = (b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"\x00\x00\x01\xba")
_MP4_BOX_TYPES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
JPEG_QUALITY = 90


class UnusableMedia(Exception):
    """A file that cannot become a training clip; ``reason`` is one word for the quarantine list."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class DecodedMedia:
    """What training needs from one file.

    ``audio``: float32 [L] mono at ``sample_rate``, sample 0 at t = 0 s.
    ``pictures``: {requested time (s): JPEG bytes of a ``frame_size`` square centre crop}.
    ``duration_s``: the time covered by both streams; ``declared_s``: what the header claims.
    """

    audio: np.ndarray
    sample_rate: int
    pictures: dict[float, bytes]
    duration_s: float
    declared_s: float | None
    n_video_frames: int
    size: tuple[int, int]  # width, height of the source pictures
    notes: list[str] = field(default_factory=list)


def open_container(path: Path):
    """``av.open`` with the failure turned into ``empty`` / ``not_media`` / ``corrupt``."""
    if path.stat().st_size == 0:
        raise UnusableMedia("empty", "zero-byte file")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as err:
        head = path.open("rb").read(12)
        looks_like_media = head.startswith(_CONTAINER_MAGIC) or head[4:8] in _MP4_BOX_TYPES
        reason = "corrupt" if looks_like_media else "not_media"
        raise UnusableMedia(reason, f"cannot open: {err.strerror or err}") from None


def decode_media(
    path: Path,
    sample_rate: int,
    frame_size: int,
    max_pixels: int,
    picture_times: Callable[[float | None], list[float]],
    threads: int = 0,
) -> DecodedMedia:
    """Decode ``path``: its audio resampled to mono ``sample_rate`` and a picture at each time.

    ``picture_times(declared duration in s, or None without one)`` lists the wanted times.
    ``threads``: video decoder threads (0 = FFmpeg's choice; 1 when processes share the cores).
    """
    with open_container(path) as container:
        video, audio = _pick_streams(container)
        width, height = video.codec_context.width, video.codec_context.height
        _check_size(width, height, max_pixels)
        video.thread_count = threads
        declared = container.duration / av.time_base if container.duration else None
        picker = _PicturePicker(sorted(picture_times(declared)), frame_size, max_pixels)
        sound = _SoundCollector(sample_rate)
        try:
            for packet in container.demux(video, audio):
                for frame in packet.decode():
                    if packet.stream.type == "video":
                        picker.offer(frame)
                    else:
                        sound.offer(frame)
        except av.error.FFmpegError as err:
            raise _decode_failure(err, picker, declared) from None
        return _finish(picker, sound, declared, (width, height))


def _decode_failure(
    err: Exception, picker: "_PicturePicker", declared: float | None
) -> UnusableMedia:
    """A read error after some pictures, short of the declared end, means a cut-off file."""
    reached = picker.frame_times[-1] if picker.frame_times else 0.0
    message = f"decoding stopped at {reached:.2f} s: {getattr(err, 'strerror', None) or err}"
    if picker.frame_times and declared and reached < declared - 0.5:
        return UnusableMedia("truncated", f"{message} (header declares {declared:.2f} s)")
    return UnusableMedia("corrupt", message)


def _pick_streams(container):
    videos = [s for s in picture_streams(container) if s.codec_context.width]
    audios = list(container.streams.audio)
    if not videos:
        cover = " (only cover art)" if container.streams.video else ""
        raise UnusableMedia("no_video", f"the file has no video stream{cover}")
    if not audios:
        raise UnusableMedia("no_audio", "the file has no audio stream")
    return videos[0], audios[0]


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise UnusableMedia(
            "too_large", f"{width}x{height} frames exceed ingest.max_pixels={max_pixels}"
        )


def _finish(
    picker: "_PicturePicker",
    sound: "_SoundCollector",
    declared: float | None,
    size: tuple[int, int],
) -> DecodedMedia:
    if picker.n_frames == 0:
        raise UnusableMedia("corrupt", "no video frame could be decoded")
    if picker.n_frames == 1:
        raise UnusableMedia("one_frame", "the video stream holds a single picture")
    wave = sound.finish()
    if wave.size == 0:
        raise UnusableMedia("corrupt", "no audio could be decoded")
    video_end = picker.end_time()
    duration = min(video_end, wave.size / sound.rate)
    if declared and duration < declared - max(0.5, 0.1 * declared):
        raise UnusableMedia(
            "truncated", f"decoded {duration:.2f} s of the {declared:.2f} s the header declares"
        )
    pictures = picker.finish(duration)
    return DecodedMedia(wave, sound.rate, pictures, duration, declared, picker.n_frames, size)


class _SoundCollector:
    """Resamples every audio frame to mono float ``rate`` and aligns sample 0 with t = 0 s."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        self.chunks: list[np.ndarray] = []
        self.first_time: float | None = None

    def offer(self, frame) -> None:
        if self.first_time is None and frame.time is not None:
            self.first_time = frame.time
        for out in self.resampler.resample(frame):
            self.chunks.append(out.to_ndarray().reshape(-1))

    def finish(self) -> np.ndarray:
        for out in self.resampler.resample(None):
            self.chunks.append(out.to_ndarray().reshape(-1))
        wave = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        offset = int(round((self.first_time or 0.0) * self.rate))
        if offset > 0:  # audio starting late: keep it in sync with the pictures
            wave = np.concatenate([np.zeros(offset, np.float32), wave])
        elif offset < 0:  # priming samples before t = 0
            wave = wave[-offset:]
        return wave.astype(np.float32, copy=False)


class _PicturePicker:
    """Keeps, for each requested time, the decoded frame nearest to it (as JPEG bytes)."""

    def __init__(self, times: list[float], frame_size: int, max_pixels: int) -> None:
        self.times = times
        self.frame_size = frame_size
        self.max_pixels = max_pixels
        self.next_index = 0
        self.previous = None  # (time, frame number, frame)
        self.chosen: dict[float, bytes] = {}
        self.last_encoded: tuple[int, bytes] | None = None  # a frame for several times: encode once
        self.n_frames = 0
        self.frame_times: list[float] = []

    def offer(self, frame) -> None:
        if self.n_frames == 0:
            _check_size(frame.width, frame.height, self.max_pixels)
        time = float(frame.time) if frame.time is not None else self.n_frames * 1e-3
        self.frame_times.append(time)
        while self.next_index < len(self.times) and time >= self.times[self.next_index]:
            target = self.times[self.next_index]
            nearest = (time, self.n_frames, frame)
            if self.previous is not None and target - self.previous[0] < time - target:
                nearest = self.previous
            self.chosen[target] = self._encode(nearest)
            self.next_index += 1
        self.previous = (time, self.n_frames, frame)
        self.n_frames += 1

    def end_time(self) -> float:
        """When the last picture stops showing (its time plus the typical frame interval)."""
        gaps = np.diff(self.frame_times)
        step = float(np.median(gaps)) if gaps.size else 0.0
        return max(self.frame_times) + step

    def finish(self, duration: float) -> dict[float, bytes]:
        """Times after the last frame (but inside ``duration``) get the last frame."""
        last = bisect_left(self.times, duration)
        for target in self.times[self.next_index : last]:
            self.chosen[target] = self._encode(self.previous)
        return self.chosen

    def _encode(self, timed_frame) -> bytes:
        _, number, frame = timed_frame
        if self.last_encoded is not None and self.last_encoded[0] == number:
            return self.last_encoded[1]
        data = encode_picture(frame, self.frame_size)
        self.last_encoded = (number, data)
        return data


def encode_picture(frame, size: int) -> bytes:
    """Turned upright (display matrix), shorter side to ``size`` (bicubic, by swscale), centre
    crop ``size`` square, JPEG bytes."""
    turns = quarter_turns(frame)
    shown_w, shown_h = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
    scale = size / min(shown_w, shown_h)
    width = max(size, int(round(shown_w * scale)))  # as shown, after turning
    height = max(size, int(round(shown_h * scale)))
    coded_w, coded_h = (height, width) if turns % 2 else (width, height)
    resized = frame.reformat(width=coded_w, height=coded_h, format="rgb24", interpolation="BICUBIC")
    rgb = np.rot90(resized.to_ndarray(), turns)
    top, left = (height - size) // 2, (width - size) // 2
    buffer = io.BytesIO()
    crop = Image.fromarray(rgb[top : top + size, left : left + size])
    crop.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
