"""What the demo does, as plain functions (no gradio here, so tests call them directly).

Every problem a visitor can cause raises :class:`clipsep.errors.BadInputError` with a sentence
that names it (file too big or too long, unreadable, silent, no query); :mod:`app.demo` shows
that sentence in the page. Paths come only from Gradio's upload area (or the examples cache):
:func:`check_upload` refuses anything else before a file is opened.

Audio arrays are float32 numpy ``[C, L]`` (channels first) at the file's own rate. What the page
plays and the API hands out is 16-bit PCM made by the CLI's writer arithmetic
(:func:`clipsep.outputs.pcm_blocks`): stems rounded to the nearest step, the residual the input's
steps minus theirs, so the files sum to the input (a 16-bit upload: sample for sample). Their
files are named as ``clipsep separate`` names its stems (:func:`write_players`).
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from clipsep import audio_io, outputs
from clipsep.activity import activity
from clipsep.config import ROOT_NAME, Params, ServeConfig
from clipsep.env import headless_pyplot
from clipsep.errors import BadInputError
from clipsep.data.world import read_ground_truth

log = logging.getLogger(__name__)

MB = 1 << 20  # Gradio's "50mb" is 50 * 2**20 bytes
SPECTROGRAM_FFT = 1024
SPECTROGRAM_COLUMNS = 1200  # at most this many STFT frames per panel: long files stay cheap
DYNAMIC_RANGE_DB = 80.0
EXAMPLE_SECONDS = 8.0  # examples are short so a click answers in a second or two

Progress = Callable[[float, str], None]  # (share done in [0, 1], what is happening)


# --- input checks ------------------------------------------------------------------------------


def check_upload(path: str | Path | None, cfg: ServeConfig, allowed_roots: Sequence[Path]) -> Path:
    """The uploaded file as a Path, after the checks that need no decoding.

    Refuses: no file, a path outside ``allowed_roots`` (Gradio's upload area, the examples cache),
    a missing file, and a file over ``serve.max_file_mb``.
    """
    if path is None or not str(path).strip():
        raise BadInputError(
            "No input: upload an audio or video file, or record from the microphone."
        )
    resolved = Path(path).resolve()
    if not any(resolved.is_relative_to(Path(root).resolve()) for root in allowed_roots):
        raise BadInputError("That file is not an upload of this page; upload it instead.")
    if not resolved.is_file():
        raise BadInputError(f"The upload {resolved.name!r} is gone; please upload it again.")
    size = resolved.stat().st_size
    if size > cfg.max_file_mb * MB:
        raise BadInputError(
            f"{resolved.name} is {size / MB:.1f} MB; this demo accepts files up to "
            f"{cfg.max_file_mb} MB (serve.max_file_mb)."
        )
    return resolved


def media_duration_s(path: Path) -> float:
    """Length of the file's audio in seconds, read from its header (nothing is decoded)."""
    return audio_io.declared_seconds(path)


def read_input(
    path: Path, cfg: ServeConfig, notes: list[str] | None = None
) -> tuple[np.ndarray, int]:
    """An accepted upload as ``([C, L] float32, rate)``; refuses those over serve.max_seconds.

    Decoding the library's way: a file holding less audio than its header says gives the part
    decoded, and a sentence saying so in ``notes``.
    """
    duration = media_duration_s(path)
    if duration > cfg.max_seconds:
        raise BadInputError(
            f"{path.name} lasts {_clock(duration)}; this demo separates up to "
            f"{_clock(cfg.max_seconds)} (serve.max_seconds)."
        )
    audio, rate = audio_io.read_audio(path, notes)
    if audio.shape[1] / rate > cfg.max_seconds:  # headers can under-report
        raise BadInputError(
            f"{path.name} lasts {_clock(audio.shape[1] / rate)}; this demo "
            f"separates up to {_clock(cfg.max_seconds)} (serve.max_seconds)."
        )
    return audio, rate


def offered_image(path: str | Path | None):
    """A video's middle frame (PIL.Image, upright) to offer as image query; None for audio (cover
    art included) or no file."""
    if path is None or not audio_io.has_video_stream(path):
        return None
    return audio_io.middle_frame(path)


def split_queries(text: str | None) -> list[str]:
    """Comma-separated text queries, stripped, empty ones dropped (``"violin, cello"``)."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def choose_query(text: str | None, image) -> tuple[str | None, Any, str]:
    """(text query, image query, description): a typed text wins; else the image; else an error.
    Several comma-separated queries come back joined as typed (see :func:`split_queries`)."""
    if text is not None and text.strip():
        return text.strip(), None, f"text {text.strip()!r}"
    if image is not None:
        return None, image, "the image query"
    raise BadInputError(
        "No query: type what to extract (e.g. 'violin'), click a suggestion, "
        "or give an image query."
    )


def _name_only(message: str, path: Path) -> str:
    """The message with the server's folders cut from the upload's path (and the library's
    name for an in-memory array, "audio", replaced by the file's name)."""
    message = message.replace(str(path), path.name)
    return path.name + message[len("audio") :] if message.startswith("audio: ") else message


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)} min {rest:04.1f} s" if minutes else f"{rest:.1f} s"


# --- separation --------------------------------------------------------------------------------


MAX_STEMS = 4  # the page has this many stem players (more queries are refused)
PLAYER_SUBTYPE = "PCM_16"  # what the players get: 16-bit PCM, as browsers play every wav


@dataclass
class SeparationOutputs:
    """What the page shows: mixture/stems/residual ``[C, L]`` at ``rate``, each stem's activity
    segments, a picture and a summary. ``target`` is the first stem (the only one for one query)."""

    mixture: np.ndarray
    target: np.ndarray
    residual: np.ndarray
    rate: int
    picture: Any  # PIL.Image of the spectrograms
    summary: str
    stems: dict[str, np.ndarray] = field(default_factory=dict)  # query -> stem, in query order
    activity: dict[str, list] = field(default_factory=dict)  # query -> [(start_s, end_s, mean_db)]
    # what the players get: (rate, int16 [L] or [L, C]) per stem, in query order, then residual
    players: list[tuple[int, np.ndarray]] = field(default_factory=list)
    # their file names, as clipsep separate names them (outputs.stem_files): stem -> "violin.wav"
    files: dict[str, str] = field(default_factory=dict)


def separate_upload(
    separator,
    path: Path,
    text: str | None,
    image,
    cfg: ServeConfig,
    progress: Progress | None = None,
) -> SeparationOutputs:
    """Separate an accepted upload with the queried sound as target (chunked, with progress).

    Several comma-separated text queries (up to MAX_STEMS) give one stem each, in one pass.
    A video with neither a text nor an image query is queried by its middle frame, as by
    ``clipsep separate``."""
    from_frame = not split_queries(text) and image is None and audio_io.has_video_stream(path)
    query, image_query, described = choose_query(text, offered_image(path) if from_frame else image)
    if from_frame:
        described = "the video's middle frame (image query)"
    queries = split_queries(query)
    if len(queries) > MAX_STEMS:
        raise BadInputError(
            f"{len(queries)} queries; this demo separates up to {MAX_STEMS} at once."
        )
    names = queries or ["image"]  # the stems' names, in query order
    files = outputs.stem_files(names, ".wav")  # names that clash: refused before any work
    started = time.perf_counter()

    def on_segment(done: int, total: int) -> None:
        if progress is not None:
            progress(done / total, f"separating: segment {done}/{total}")

    notes: list[str] = []
    try:
        mixture, rate = read_input(path, cfg, notes)
        if len(queries) > 1:
            result = separator.separate(mixture, rate, queries=queries, progress=on_segment)
            stems, residual = dict(result), result.residual
        else:
            result = separator.separate(
                mixture,
                rate,
                query=queries[0] if queries else None,
                image=image_query,
                progress=on_segment,
            )
            stems, residual = {names[0]: result.target}, result.residual
    except BadInputError as err:
        raise BadInputError(_name_only(str(err), path)) from err
    seconds = time.perf_counter() - started
    found = {
        name: activity(stem, mixture, rate, separator.settings) for name, stem in stems.items()
    }
    summary = (
        f"query: {described} | input: {path.name}, {_clock(mixture.shape[1] / rate)} at "
        f"{rate} Hz, {mixture.shape[0]} channel(s) | separated in {seconds:.1f} s\n"
        + "\n".join(f"{name!r} sounds at: {_segments_text(segs)}" for name, segs in found.items())
    )
    players, clipped = playable_outputs(list(stems.values()), mixture, rate)
    if clipped:
        notes.append(f"{clipped} sample(s) beyond full scale were clipped in the 16-bit outputs")
    summary += "".join(f"\nnote: {_name_only(text, path)}" for text in notes)
    picture = spectrogram_picture(mixture, stems, residual, rate, found)
    return SeparationOutputs(
        mixture,
        next(iter(stems.values())),
        residual,
        rate,
        picture,
        summary,
        stems,
        found,
        players,
        files,
    )


def _segments_text(segments) -> str:
    if not segments:
        return "nowhere"
    return ", ".join(f"{s.start_s:.1f}-{s.end_s:.1f} s ({s.mean_db:+.0f} dB)" for s in segments)


def playable_outputs(
    stems: Sequence[np.ndarray], mixture: np.ndarray, rate: int
) -> tuple[list[tuple[int, np.ndarray]], int]:
    """``([(rate, int16 [L] or [L, C]) per stem, then the residual's], samples clipped)`` for
    gr.Audio, which writes int16 unchanged: the CLI's 16-bit writing
    (:func:`clipsep.outputs.pcm_blocks`), so stems + residual == the mixture's nearest steps."""
    blocks, clipped = outputs.pcm_blocks(np.stack(stems), mixture, PLAYER_SUBTYPE)
    return [(rate, pcm[0] if pcm.shape[0] == 1 else pcm.T.copy()) for pcm in blocks], clipped


def write_players(result: SeparationOutputs, folder: Path) -> list[Path]:
    """The players' 16-bit PCM as wav files in ``folder``, in the order of ``result.players``,
    named as ``clipsep separate`` names its stems (``violin.wav``, ``cello_bass.wav``, ...,
    ``residual.wav``; an image query's stem ``image.wav``): what a visitor downloads."""
    import soundfile as sf

    paths = [folder / name for name in result.files.values()]
    for path, (rate, pcm) in zip(paths, result.players, strict=True):
        sf.write(path, pcm, rate, subtype=PLAYER_SUBTYPE)
    return paths


# --- pictures ----------------------------------------------------------------------------------


def log_spectrogram(wave: np.ndarray, rate: int) -> np.ndarray:
    """dB magnitude ``[F, T]`` of the mono mix of ``wave [C, L]``; T <= SPECTROGRAM_COLUMNS + 1.

    Any length the library separates is drawn: zero padding at the ends (reflection needs more
    samples than half a window, and 512 samples at 8 kHz is a valid input).
    """
    import torch

    mono = torch.from_numpy(np.ascontiguousarray(wave.mean(axis=0), dtype=np.float32))
    hop = max(SPECTROGRAM_FFT // 4, math.ceil(mono.numel() / SPECTROGRAM_COLUMNS))
    spec = torch.stft(
        mono,
        SPECTROGRAM_FFT,
        hop,
        window=torch.hann_window(SPECTROGRAM_FFT),
        pad_mode="constant",
        return_complex=True,
    )
    return (20.0 * torch.log10(spec.abs() + 1e-8)).numpy()


TARGET_LABEL = "Target (the queried sound)"  # one query's stem, in its player and its panel
RESIDUAL_LABEL = "Residual (everything else)"


def stem_label(name: str, count: int) -> str:
    """The label of query ``name``'s stem among ``count`` stems, the same on its player and its
    spectrogram panel: ``Stem: cello`` among several, :data:`TARGET_LABEL` for one query."""
    return f"Stem: {name}" if count > 1 else TARGET_LABEL


def panel_titles(names: Sequence[str]) -> list[str]:
    """Titles of :func:`spectrogram_picture`'s panels for the stems of queries ``names``."""
    return ["Mixture", *(stem_label(name, len(names)) for name in names), RESIDUAL_LABEL]


def spectrogram_picture(
    mixture: np.ndarray,
    target,
    residual: np.ndarray,
    rate: int,
    activity: dict[str, list] | None = None,
):
    """Mixture, stem(s) and residual spectrograms on one dB scale (PIL.Image). ``target`` is one
    stem ``[C, L]`` or a mapping query -> stem; ``activity`` (query -> segments) is drawn as a
    bar along the top of that stem's panel."""
    plt = headless_pyplot()
    from PIL import Image

    stems = target if isinstance(target, dict) else {"query": target}
    waves = [mixture, *stems.values(), residual]
    names = [None, *stems, None]
    panels = list(zip(panel_titles(list(stems)), waves, names))
    specs = [log_spectrogram(w, rate) for _, w, _ in panels]
    top = max(float(s.max()) for s in specs)
    duration = mixture.shape[1] / rate
    fig, axes = plt.subplots(
        1, len(panels), figsize=(13 * len(panels) / 3, 3.4), sharey=True, constrained_layout=True
    )
    for ax, (title, _, name), spec in zip(axes, panels, specs):
        image = ax.imshow(
            spec,
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=top - DYNAMIC_RANGE_DB,
            vmax=top,
            extent=(0.0, duration, 0.0, rate / 2000.0),
        )
        for segment in (activity or {}).get(name, []):  # where the stem sounds
            ax.axvspan(segment.start_s, segment.end_s, ymin=0.96, ymax=1.0, color="#3ec6ff")
        ax.set_title(title)
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("frequency (kHz)")
    fig.colorbar(image, ax=axes, label="dB", shrink=0.9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


# --- model information -------------------------------------------------------------------------


@dataclass
class ModelCard:
    """Which model the page serves: reference, version, data version and evaluation numbers."""

    reference: str
    version: str = "-"
    aliases: str = "-"
    data_version: str = "-"
    git_commit: str = "-"
    metrics: dict[str, float] = field(default_factory=dict)
    notes: str = ""

    def markdown(self) -> str:
        lines = [
            f"**Model** `{self.reference}` · version **{self.version}** · aliases "
            f"{self.aliases} · data version `{self.data_version[:12]}` · code "
            f"`{self.git_commit[:10]}`"
        ]
        if self.metrics:
            cells = " · ".join(
                f"{name} **{_shown(value)}**" for name, value in self.metrics.items()
            )
            lines.append(f"Evaluation: {cells}")
        if self.notes:
            lines.append(self.notes)
        return "\n\n".join(lines)


def _shown(value: float) -> str:
    """A card's number: a count (a whole number, e.g. test mixtures) as such, else 2 decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


SHOWN_METRICS = {  # registry run metric -> label on the page
    "eval/text/sdr/mean": "text SDR (dB)",
    "eval/text/sdri/mean": "text SDRi (dB)",
    "eval/text/sir/mean": "text SIR (dB)",
    "eval/image/sdr/mean": "image SDR (dB)",
    "eval/n_mixtures": "test mixtures",
}


def registry_card(ref: str, tracking: str) -> ModelCard:
    """The card of ``models:/name@alias`` (or ``/version``): registry tags and run metrics."""
    from clipsep.registry_reader import describe_model

    version = describe_model(ref, tracking)
    tags, run_metrics = version.tags, version.run_metrics
    metrics = {
        label: run_metrics[key] for key, label in SHOWN_METRICS.items() if key in run_metrics
    }
    if not metrics and "text_sdr" in tags:
        metrics["text SDR (dB)"] = float(tags["text_sdr"])
    return ModelCard(
        reference=ref,
        version=version.version,
        aliases=", ".join(version.aliases) or "-",
        data_version=tags.get("data_version", "-"),
        git_commit=tags.get("git_commit", "-"),
        metrics=metrics,
        notes=f"gate: {tags['gate_reason']}" if "gate_reason" in tags else "",
    )


def checkpoint_card(path: Path, extra: dict[str, Any]) -> ModelCard:
    """The card of a checkpoint file: what its ``extra`` records (step, metrics, data version)."""
    metrics = {
        str(k): float(v)
        for k, v in (extra.get("metrics") or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    known = ", ".join(
        f"{k}={v}"
        for k, v in extra.items()
        if k not in ("metrics", "data_version") and not isinstance(v, (dict, list))
    )
    return ModelCard(
        reference=str(path),
        version="file (not from the registry)",
        data_version=str(extra.get("data_version", "-")),
        metrics=metrics,
        notes=f"checkpoint extra: {known}" if known else "",
    )


# --- examples ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """A ready-made mixture of two instruments and the query that picks one of them."""

    audio_path: Path
    query: str
    title: str


def build_examples(params: Params, cache_dir: Path, count: int = 3) -> list[Example]:
    """Mix pairs of the embedded world's clean test videos of different classes into ``cache_dir``.

    Reads ``ground_truth.csv`` only to know which instrument each clean test video shows (the
    demo needs a correct query; nothing is trained on it). Returns [] when no world is rendered.
    """
    world = params.path("world")
    table = world / "ground_truth.csv"
    if not table.is_file():
        return []
    solos = [
        row
        for row in read_ground_truth(world)
        if row["split"] == "test" and row["labels"] and ";" not in row["labels"]
    ]
    pairs = [(a, b) for a, b in itertools.combinations(solos, 2) if a["labels"] != b["labels"]]
    chosen, seen = [], set()
    for first, second in pairs:  # each example queries a different instrument
        if first["labels"] not in seen and len(chosen) < count:
            chosen.append((first, second))
            seen.add(first["labels"])
    return [_mix_example(world / "videos", a, b, cache_dir) for a, b in chosen]


def _mix_example(videos: Path, first: dict, second: dict, cache_dir: Path) -> Example:
    """Write (once) the equal-level mix of two videos' first EXAMPLE_SECONDS as a wav."""
    out = cache_dir / f"{first['video_id']}+{second['video_id']}.wav"
    title = f"{first['labels']} + {second['labels']}"
    if not out.is_file():
        waves = []
        for row in (first, second):
            audio, rate = audio_io.read_audio(videos / row["video"])
            audio = audio[:, : int(EXAMPLE_SECONDS * rate)]
            waves.append(audio / max(float(np.abs(audio).max()), 1e-6))
        length = min(w.shape[1] for w in waves)
        channels = min(w.shape[0] for w in waves)
        mix = 0.45 * (waves[0][:channels, :length] + waves[1][:channels, :length])
        audio_io.write_wav(out, mix, rate)
    return Example(out, first["labels"], title)


# --- loading -----------------------------------------------------------------------------------


def load_model(params: Params, ref: str | None = None, root_name: str = ROOT_NAME):
    """(Separator, ModelCard) for ``ref`` (default ``serve.model``): a registry reference
    ``models:/name@alias`` in the params' MLflow store (MLFLOW_TRACKING_URI when set), or a
    checkpoint path. A relative ``serve.model`` is taken from the params' ``paths.root``; a
    relative ``ref`` (``--model``: a path on the command line) from the working folder, and the
    error for a missing one names it under the root (called ``root_name``) when it is there."""
    from clipsep.inference import Separator
    from clipsep.registry_reader import is_registry_reference, registry_uri

    root, elsewhere = (
        (None, (root_name, params.path("root"))) if ref else (params.path("root"), None)
    )
    ref = ref or params.serve.model
    uri = registry_uri(params)
    log.info("loading %s", ref)
    separator = Separator.from_pretrained(
        ref,
        device=params.separate.device,
        settings=params.separate,
        tracking_uri=uri,
        root=root,
        calibration=params.path("clips"),
        elsewhere=elsewhere,
    )
    if is_registry_reference(ref):
        card = registry_card(ref, uri)
    else:
        card = checkpoint_card(separator.source.checkpoint, separator.extra)
    return separator, card
