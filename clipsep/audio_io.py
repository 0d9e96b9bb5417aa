"""Reading audio from any file a user has (wav/aiff, flac, compressed audio, a video's sound) and
writing wav.

Audio arrays here are float32 numpy ``[C, L]`` (channels first) at the file's native rate.
Uncompressed wav/aiff go through soundfile (sample-exact seeking, so long files stream in
blocks); everything else (flac, mp3, ogg, opus, m4a, mp3 inside a wav, video containers) is
decoded in order by PyAV. Every failure a user can cause raises
:class:`clipsep.errors.BadInputError` naming the file and the problem, the decoders' own errors
included.

A file that decodes to less audio than its header declares (an interrupted download, a header
written before the encoder finished) is not refused: the decoded part is used and one warning line
says so (logged, and appended to the caller's ``notes`` list when one is given). Only a file from
which nothing can be decoded is refused.

Pictures: cover art (an attached picture) is not a video stream, and frames are turned upright by
their display matrix (a phone's portrait video is coded landscape with a 90-degree rotation tag).
Writes are atomic (tmp file + ``os.replace``), so a crash never leaves a half-written file under
the final name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from clipsep.errors import BadInputError
from clipsep.fileio import atomic_path
from clipsep.layout import check_sample_rate

log = logging.getLogger(__name__)

# what a folder walk takes for audio or video, by suffix (``clipsep separate`` walks input folders
# for MEDIA_SUFFIXES, ingest for VIDEO_SUFFIXES); a file named explicitly is tried whatever its name
AUDIO_SUFFIXES = frozenset(
    ".wav .wave .aiff .aif .flac .mp3 .ogg .oga .opus .m4a .aac .wma".split()
)
VIDEO_SUFFIXES = frozenset(".mp4 .m4v .mkv .webm .mov .avi".split())
MEDIA_SUFFIXES = AUDIO_SUFFIXES | VIDEO_SUFFIXES
# FLAC goes through PyAV too: libsndfile loses whole blocks (or everything) of a truncated FLAC
EXACT_SUFFIXES = {".wav", ".wave", ".aiff", ".aif"}
# soundfile subtypes decoded and seeked sample-exactly; compressed ones go through PyAV in order
EXACT_SUBTYPE_PREFIXES = ("PCM_", "FLOAT", "DOUBLE", "ULAW", "ALAW")
BLOCK_FRAMES = 1 << 16  # samples per channel per decoded block
# a header's duration (PyAV, estimated for compressed streams) may exceed the decoded audio by this
# much before the shortfall is reported: max(seconds, share of the declared length)
HEADER_SLACK_S, HEADER_SLACK_SHARE = 0.05, 0.01


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


def note(notes: list[str] | None, message: str) -> None:
    """Log ``message`` as a warning and append it to ``notes`` (when the caller keeps a list)."""
    log.warning("%s", message)
    if notes is not None:
        notes.append(message)


# --- folders -------------------------------------------------------------------------------------

NAMED = 3  # file names a one-line message lists before "and N more"


class Walk(NamedTuple):
    """What :func:`walk_media` found: ``media`` and ``others`` (files), ``marked`` (folders left
    out because they hold the marker file)."""

    media: list[Path]
    others: list[Path]
    marked: list[Path]


def walk_media(
    folder: Path,
    suffixes: frozenset[str] = MEDIA_SUFFIXES,
    exclude: Path | None = None,
    marker: str | None = None,
) -> Walk:
    """(files whose suffix is in ``suffixes``, other files, marked folders) under ``folder``,
    nested, each sorted. Hidden files and folders (a name starting with ".": .DS_Store, the
    ._take.wav companions macOS writes, .git/), the folder ``exclude`` (an output folder inside
    ``folder``) and every folder below ``folder`` that holds a file named ``marker`` (an earlier
    run's outputs: its record ``separation.json``), with all it holds, are in neither list: they
    are not the user's recordings. The outermost marked folders are listed in ``marked``."""
    exclude = exclude.resolve() if exclude is not None else None
    found = []
    for path in sorted(Path(folder).rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if hidden or not path.is_file():
            continue
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        found.append(path)
    below = {p.parent for p in found if p.name == marker and p.parent != Path(folder)}
    marked = sorted(p for p in below if not any(p.is_relative_to(m) and p != m for m in below))
    media, others = [], []
    for path in found:
        if not any(path.is_relative_to(m) for m in marked):
            (media if path.suffix.lower() in suffixes else others).append(path)
    return Walk(media, others, marked)


def listed(paths: list[Path]) -> str:
    """``a.txt, b.jpg``; ``a, b, c and 2 more`` past NAMED names."""
    more = f" and {len(paths) - NAMED} more" if len(paths) > NAMED else ""
    return ", ".join(map(str, paths[:NAMED])) + more


# --- headers --------------------------------------------------------------------------------------


def exact_audio_info(path: str | Path) -> AudioInfo | None:
    """Header of an uncompressed wav/aiff (read and seeked sample-exactly by soundfile), or
    None for anything else (compressed codecs, mp3 inside a wav, other containers)."""
    path = Path(path)
    if path.suffix.lower() not in EXACT_SUFFIXES:
        return None
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):  # perhaps a codec libsndfile lacks: PyAV tries it
        return None
    if not info.subtype.startswith(EXACT_SUBTYPE_PREFIXES):
        return None
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames))


def audio_info(path: str | Path) -> AudioInfo:
    """Rate, channels and length of a file soundfile reads (BadInputError otherwise)."""
    import soundfile as sf

    path = check_exists(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise BadInputError(f"{path}: unreadable audio file ({err})") from err
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames))


def declared_seconds(path: str | Path) -> float:
    """Length of the file's audio in seconds as its header declares it (nothing is decoded)."""
    frames, rate = declared_length(path)
    return (frames or 0) / rate


def declared_length(path: str | Path) -> tuple[int | None, int]:
    """(samples per channel, sample rate) of the file's audio as its header declares it, nothing
    decoded; samples None when a compressed file's header states no length. BadInputError for a
    file that cannot be opened or has no audio."""
    path = check_exists(path)
    info = exact_audio_info(path)
    if info is not None:
        return info.frames, info.sample_rate
    with _open_container(path) as container:
        stream = _audio_stream(container, path)
        return _declared_frames(container, stream) or None, stream.rate


# --- decoding -------------------------------------------------------------------------------------


def read_audio(path: str | Path, notes: list[str] | None = None) -> tuple[np.ndarray, int]:
    """The whole file as float32 ``[C, L]`` at its native rate (audio track of a video too).

    ``L`` is what could be decoded; a shortfall against the header is reported through ``notes``.
    """
    blocks = list(iter_audio_blocks(path, notes))
    rate = blocks[0][1]
    return np.concatenate([b for b, _ in blocks], axis=1), rate


def iter_audio_blocks(
    path: str | Path, notes: list[str] | None = None
) -> Iterator[tuple[np.ndarray, int]]:
    """Decode any file in order: yields (float32 ``[C, n]``, rate) blocks; at least one sample or
    BadInputError. Decoding that stops early (error or end of data before the header's length)
    keeps what was decoded and reports it through :func:`note`."""
    path = check_exists(path)
    info = exact_audio_info(path)
    if info is not None:
        return _soundfile_blocks(path, info, notes)
    return _container_blocks(path, notes)


def decode_to_wav(path: Path, out_path: Path, notes: list[str] | None = None) -> AudioInfo:
    """Stream a file's decoded audio into a float wav (constant memory); returns its info."""
    import soundfile as sf

    writer = None
    try:
        for block, rate in iter_audio_blocks(path, notes):
            if writer is None:
                writer = sf.SoundFile(
                    str(out_path),
                    "w",
                    samplerate=rate,
                    channels=block.shape[0],
                    subtype="FLOAT",
                    format="WAV",
                )
            writer.write(block.T)
    finally:
        if writer is not None:
            writer.close()
    return audio_info(out_path)


def _soundfile_blocks(
    path: Path, info: AudioInfo, notes: list[str] | None
) -> Iterator[tuple[np.ndarray, int]]:
    import soundfile as sf

    decoded, error = 0, None
    try:
        with sf.SoundFile(str(path)) as handle:
            while len(block := handle.read(BLOCK_FRAMES, dtype="float32", always_2d=True)):
                decoded += len(block)
                yield np.ascontiguousarray(block.T), info.sample_rate
    except (sf.LibsndfileError, RuntimeError) as err:
        error = err
    check_decoded(str(path), decoded, info.frames, info.sample_rate, notes, error, slack=0)


def _container_blocks(path: Path, notes: list[str] | None) -> Iterator[tuple[np.ndarray, int]]:
    """Decode a container's first audio stream with PyAV (planar float, native rate/layout)."""
    import av

    with _open_container(path) as container:
        stream = _audio_stream(container, path)
        declared = _declared_frames(container, stream, stream_only=True)
        channels = stream.codec_context.channels or len(stream.layout.channels)
        decoded, error = 0, None
        try:  # planar float keeps channels apart at the native rate: no mixing, no resampling
            resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)
            for frame in _frames_then_flush(container, stream):
                for out in resampler.resample(frame):
                    block = out.to_ndarray().reshape(channels, -1).astype(np.float32)
                    decoded += block.shape[1]
                    yield block, stream.rate
        except (av.error.FFmpegError, ValueError) as err:
            error = err
        slack = max(HEADER_SLACK_S * stream.rate, HEADER_SLACK_SHARE * declared)
        check_decoded(str(path), decoded, declared, stream.rate, notes, error, slack=slack)


def _frames_then_flush(container, stream):
    yield from container.decode(stream)
    yield None  # flushes the resampler


def check_decoded(
    name: str,
    decoded: int,
    declared: int,
    rate: int,
    notes: list[str] | None,
    error: Exception | None = None,
    slack: float = 0.0,
) -> None:
    """After decoding ``name``: BadInputError when nothing came out; a note when the decoder
    stopped on an error, or the audio ended more than ``slack`` samples before the header's
    ``declared`` length (the decoded part is what gets used)."""
    if decoded == 0:
        why = f" ({_reason(error)})" if error is not None else ""
        raise BadInputError(f"{name}: no audio could be decoded{why}")
    if error is None and decoded >= declared - slack:
        return
    why = f"the decoder stopped: {_reason(error)}" if error is not None else "the data ends early"
    declared_text = f" of the {declared / rate:.2f} s its header declares" if declared else ""
    note(
        notes,
        f"{name}: only {decoded / rate:.2f} s ({decoded} samples){declared_text} could "
        f"be decoded ({why}); using the decoded part",
    )


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error)


def _open_container(path: Path):
    import av

    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise BadInputError(f"{path}: unreadable audio or video file ({_reason(err)})") from err


def _audio_stream(container, path: Path):
    if not container.streams.audio:
        raise BadInputError(f"{path}: no audio track in this file")
    stream = container.streams.audio[0]
    if not stream.rate:
        raise BadInputError(f"{path}: the audio track states no sample rate")
    return stream


def _declared_frames(container, stream, stream_only: bool = False) -> int:
    """The stream's length in samples as the header states it, else (unless ``stream_only``) the
    container's, which may include a longer video; 0 when neither is stated."""
    if stream.duration is not None and stream.time_base:
        return int(round(stream.duration * stream.time_base * stream.rate))
    if container.duration is not None and not stream_only:
        return int(round(container.duration / 1_000_000 * stream.rate))  # av.time_base is µs
    return 0


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write float audio ``[C, L]`` or ``[L]`` as a 32-bit float wav, atomically; BadInputError
    for a sample rate that is not a positive whole number of Hz."""
    import soundfile as sf

    sample_rate = check_sample_rate(sample_rate)

    data = audio if audio.ndim == 1 else audio.T
    # atomic_path, not mkstemp: mkstemp's files are 0600, and the rename kept that mode
    with atomic_path(path) as tmp:
        sf.write(tmp, data, sample_rate, subtype="FLOAT", format="WAV")
    return Path(path)


# --- pictures ---------------------------------------------------------------------------------


def picture_streams(container) -> list:
    """The container's video streams that move: cover art (an attached picture, as in an mp3's ID3
    APIC or an m4a's covr) is not video."""
    import av

    attached = av.stream.Disposition.attached_pic
    return [s for s in container.streams.video if not s.disposition & attached]


def has_video_stream(path: str | Path) -> bool:
    """True when the container holds a video stream (so a middle frame can serve as image query);
    cover art does not count."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            return len(picture_streams(container)) > 0
    except (av.error.FFmpegError, OSError, ValueError):
        return False


def quarter_turns(frame) -> int:
    """Counterclockwise quarter turns (0-3) that show ``frame`` upright, from its display matrix."""
    return int(round((frame.rotation or 0) / 90.0)) % 4


def upright_rgb(frame) -> np.ndarray:
    """A decoded video frame as RGB ``[H, W, 3]`` uint8, turned as players show it."""
    return np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), quarter_turns(frame)))


def middle_frame(video_path: str | Path):
    """The picture shown at the middle of a video, upright, as an RGB PIL.Image."""
    import av
    from PIL import Image

    path = check_exists(video_path)
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            streams = picture_streams(container)
            if not streams:
                raise BadInputError(f"{path}: no video stream, so no frame to use as image query")
            chosen = _frame_at_middle(container, streams[0])
            picture = upright_rgb(chosen) if chosen is not None else None
    except (av.error.FFmpegError, OSError) as err:
        raise BadInputError(f"{path}: unreadable video ({_reason(err)})") from err
    if picture is None:
        raise BadInputError(f"{path}: the video stream holds no frames")
    return Image.fromarray(picture)


def _frame_at_middle(container, stream):
    target = _duration_s(container, stream) / 2
    if target > 0 and stream.time_base:
        container.seek(int(target / stream.time_base), stream=stream)
    chosen = None
    for frame in container.decode(stream):
        chosen = frame
        if frame.time is None or frame.time >= target:
            break
    return chosen


def _duration_s(container, stream) -> float:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base is microseconds
    return 0.0
