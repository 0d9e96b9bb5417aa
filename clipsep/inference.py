"""Separating user audio with a trained CLIPSep model: any length, rate and channel count.

``Separator.from_pretrained(ref)`` loads a separation checkpoint (a path, or ``models:/name@alias``
resolved by the registry) plus its frozen CLIP query encoder. ``separate(audio, rate, query=...)``
returns the queried ``target`` and the ``residual``, both shaped like the input.

How a signal of any length is processed with bounded memory (demucs ``apply`` style):

* The model sees 16 kHz mono (``audio.sample_rate``) in segments of ``audio.segment_samples``
  overlapping by ``separate.overlap``. Each segment is resampled from the input on its own, with a
  margin of context, so the whole 16 kHz signal never exists at once.
* The soft mask (sigmoid, un-warped to linear bins) is computed from the mono downmix and applied
  to every channel's STFT with that channel's phase: one network pass per segment whatever the
  channel count, and the stereo image is kept (``separate.channel_masks: shared``; ``independent``
  runs the network on each channel instead).
* Each segment's per-channel target is resampled back to the input rate and overlap-added with
  triangular weights (normalised by their sum); a stretch of output is emitted as soon as no later
  segment touches it. Memory is therefore a few segments, independent of the input's length.
* Above the model's band (input rates over 16 kHz: everything above 8 kHz), the model says
  nothing. ``separate.high_band: extend`` gives the target its share there: the input's part
  that the model-rate round trip drops (``input - up(down(input))``, exactly complementary to
  what the model sees) is scaled, frame by frame, by the least-squares gain of the target's top
  band (the top quarter of the model's band, 6-8 kHz) on the mixture's (:func:`top_band_gains`).
  ``residual`` leaves all of it to the residual (band-limited target, as before).
* ``residual = input - target`` at the input rate, so ``target + residual == input`` exactly
  (a lossless decomposition in either ``high_band`` mode).

Several queries share one pass (``separate(audio, rate, queries=[...])``): the U-Net features of
each segment are computed once and every query adds only its late-fusion weighted sum. The masks
are independent sigmoids, so two queries can both claim a time-frequency bin. Where the masks of a
bin sum to more than 1 they are divided by that sum (:func:`normalise_masks`); elsewhere they are
kept. So every stem is a masked copy of the input, the residual ``input - sum(stems)`` is the
input under the mask ``1 - sum(masks) >= 0``, and ``sum(stems) + residual == input`` to float
precision. With one query nothing changes (a single sigmoid never exceeds 1).

``separate_file`` streams a file (uncompressed wav/aiff in soundfile blocks; flac, compressed
audio and video containers are first decoded in order to a temporary wav) into
``DIR/<stem>/target.wav`` (one query) or ``DIR/<stem>/<query>.wav`` (several) and
``residual.wav`` (and each stem's ``.activity.csv``), written to temporary names and renamed only
when everything succeeded. A file holding less audio than its header declares is separated for
the length actually decoded, with a warning.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch

from clipsep import audio_io, fileio, outputs
from clipsep.activity import ActivityMeter, Segment
from clipsep.config import CHANNEL_MASKS, HIGH_BANDS, AudioConfig, SeparateConfig
from clipsep.errors import BadInputError
from clipsep.layout import channels_first, check_sample_rate
from clipsep.precision import (
    PrecisionChoice,
    autocast,
    fixed_precision,
    network_pass_mode,
    resolve_precision,
)
from clipsep.registry_reader import ResolvedModel

# What Python users who pass no settings separate with: SeparateConfig's defaults, which
# params.yaml's ``separate`` section repeats (tests/test_inference.py checks the two agree).
DEFAULT_SETTINGS = SeparateConfig()
TOP_BAND = 0.25  # share of the model's band below its Nyquist that sets the high band's gain
SILENT_PEAK = 1e-6  # -120 dBFS: below this everywhere the file carries no sound to separate
SCAN_BLOCK = 1 << 18  # samples per channel read at a time when checking a file
RESAMPLE_CONTEXT = 128  # model-rate samples of context per resampled segment: covers soxr's filter

Progress = Callable[[int, int], None]  # (segments done, segments in total)


@dataclass
class SeparationResult:
    """``target`` and ``residual`` in the input's layout (``[L]``, ``[C, L]`` or ``[L, C]``) and
    type (numpy, or a torch tensor on the input's device): float64 for float64 input, else
    float32, full scale 1.0 (integer PCM input scaled, see :meth:`Separator.separate`)."""

    target: np.ndarray | torch.Tensor
    residual: np.ndarray | torch.Tensor
    sample_rate: int


class Stems(Mapping[str, np.ndarray]):
    """Several queries' stems: ``stems[query]`` shaped like the input (``[L]`` or ``[C, L]``), in
    query order, plus ``residual = input - sum(stems)`` and the ``sample_rate``."""

    def __init__(self, stems: dict[str, np.ndarray], residual: np.ndarray, sample_rate: int):
        self._stems = stems
        self.residual = residual
        self.sample_rate = sample_rate

    def __getitem__(self, query: str) -> np.ndarray:
        return self._stems[query]

    def __iter__(self) -> Iterator[str]:
        return iter(self._stems)

    def __len__(self) -> int:
        return len(self._stems)


@dataclass
class FileResult:
    """What :meth:`Separator.separate_file` wrote for one input file."""

    input: Path
    stems: dict[str, Path]  # stem name (query, or "target") -> audio file
    residual: Path
    activity: dict[str, list[Segment]]  # stem name -> segments where it sounds
    activity_files: dict[str, Path]  # stem name -> its .activity.csv
    sample_rate: int
    channels: int
    frames: int
    clipped: int  # samples clipped to full scale by an integer output format

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


class AudioSource(Protocol):
    """Random-access float32 audio: ``read(start, stop) -> [C, stop - start]`` (clamped)."""

    sample_rate: int
    channels: int
    frames: int
    name: str

    def read(self, start: int, stop: int) -> np.ndarray: ...


@dataclass
class ArraySource:
    """An in-memory ``[C, L]`` array as an :class:`AudioSource` (read as float32)."""

    data: np.ndarray
    sample_rate: int
    name: str = "audio"

    @property
    def channels(self) -> int:
        return self.data.shape[0]

    @property
    def frames(self) -> int:
        return self.data.shape[1]

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.data[:, max(start, 0) : min(stop, self.frames)].astype(np.float32, copy=False)


class SoundFileSource:
    """An uncompressed wav/aiff read block by block (seeks, never loads the whole file).

    ``frames`` starts as the header's count; :func:`check_source` lowers it to what the file
    really holds when the data ends early. A decoder error raises BadInputError naming the file.
    """

    def __init__(self, path: Path, name: str | None = None):
        import soundfile as sf

        info = audio_io.audio_info(path)
        self.sample_rate, self.channels, self.frames = info.sample_rate, info.channels, info.frames
        self.name = name or str(path)
        self._errors = (sf.LibsndfileError, RuntimeError)
        try:
            self._file = sf.SoundFile(str(path))
        except self._errors as err:
            raise BadInputError(f"{self.name}: unreadable audio file ({err})") from err
        self._held = (0, np.zeros((self.channels, 0), np.float32))  # the last block read

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` (clamped to the file) as ``[C, n]`` float32; treat it as
        read-only: a span inside the last block read is a view of that block."""
        start, stop = max(start, 0), min(stop, self.frames)
        held_start, held = self._held
        if held_start <= start and stop <= held_start + held.shape[1]:
            # a segment's high band reads again part of what its model-rate cut just read
            return held[:, start - held_start : stop - held_start]
        try:
            self._file.seek(start)
            block = self._file.read(max(stop - start, 0), dtype="float32", always_2d=True)
        except self._errors as err:
            raise BadInputError(
                f"{self.name}: the decoder failed at sample {start} ({err})"
            ) from err
        self._held = (start, np.ascontiguousarray(block.T))
        return self._held[1]

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class ChunkPlan:
    """Where each model segment lies at the model rate and at the input rate.

    Segment k covers model samples ``[k * stride, k * stride + segment)`` (cut at the end) and the
    input samples ``[ceil(start * in_rate / model_rate), ...)`` of the same time span.
    """

    in_rate: int
    model_rate: int
    in_frames: int
    segment: int
    stride: int

    @property
    def model_frames(self) -> int:
        return -(-self.in_frames * self.model_rate // self.in_rate)

    @property
    def n_chunks(self) -> int:
        extra = self.model_frames - self.segment
        return 1 if extra <= 0 else 1 + -(-extra // self.stride)

    def model_span(self, k: int) -> tuple[int, int]:
        start = k * self.stride
        return start, min(start + self.segment, self.model_frames)

    def to_input(self, model_index: int) -> int:
        return min(-(-model_index * self.in_rate // self.model_rate), self.in_frames)

    def input_span(self, k: int) -> tuple[int, int]:
        start, stop = self.model_span(k)
        last = k == self.n_chunks - 1
        return self.to_input(start), self.in_frames if last else self.to_input(stop)

    def emit_until(self, k: int) -> int:
        """Input samples final once segment k is added: where segment k + 1 begins."""
        return self.in_frames if k == self.n_chunks - 1 else self.input_span(k + 1)[0]


def resample(wave: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited resampling of ``[C, n]`` (float32 out); identity if orig == new.

    libsoxr through ``soxr`` (its default "HQ" quality), for any pair of rates: 3-4x faster
    than scipy's ``resample_poly`` and closer to the ideal resampler (max error on a 1-kHz sine
    44.1 -> 16 kHz: 7e-7 against 1e-3), measured on 4-s stereo segments. Output sample
    j sits at input position j * orig / new, zeros beyond the ends, so that cuts of a longer
    signal line up (the chunked separation relies on it).
    """
    if orig == new:
        return wave
    import soxr

    def one(row: np.ndarray) -> np.ndarray:
        return soxr.resample(np.ascontiguousarray(row), orig, new)

    # one channel at a time: soxr wants [n] or [n, C]; rows need no transposed copies (1.4x).
    # libsoxr releases the GIL, so rows run side by side on the threads torch may use.
    rows = np.asarray(wave, np.float32)
    workers = min(len(rows), torch.get_num_threads())
    if workers <= 1:
        return np.stack([one(row) for row in rows])
    return np.stack(list(_thread_pool(workers).map(one, rows)))


@functools.lru_cache(maxsize=4)
def _thread_pool(workers: int):
    """A process-wide pool of ``workers`` threads for GIL-releasing per-row work (made lazily)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(workers, thread_name_prefix="clipsep-rows")


def resolve_reference(
    ref: str | Path,
    clip_weights: str | Path | None = None,
    tracking_uri: str | None = None,
    root: str | Path | None = None,
    elsewhere: tuple[str, Path] | None = None,
) -> ResolvedModel:
    """The local files a model reference names, as :meth:`Separator.from_pretrained` loads them:
    a ``clipsep export`` folder as it is, else :func:`clipsep.registry_reader.resolve_model`
    (its errors, ``root`` and ``elsewhere``); ``clip_weights``, when given, replaces the CLIP
    weights the model records."""
    from clipsep.model.export import is_export_folder
    from clipsep.registry_reader import resolve_model

    if is_export_folder(ref):
        resolved = ResolvedModel(Path(ref))
    else:
        resolved = resolve_model(ref, tracking_uri=tracking_uri, root=root, elsewhere=elsewhere)
    if clip_weights:
        resolved = dataclasses.replace(resolved, clip_weights=Path(clip_weights))
    return resolved


def audio_config(checkpoint: str | Path) -> AudioConfig:
    """The audio settings (sample rate, STFT and segment sizes) of a checkpoint or a ``clipsep
    export`` folder (a :attr:`ResolvedModel.checkpoint`), read without loading the model."""
    from clipsep.model.export import is_export_folder, read_export
    from clipsep.model.factory import checkpoint_audio_config

    if is_export_folder(checkpoint):
        return read_export(checkpoint).audio_cfg
    return checkpoint_audio_config(checkpoint)


def min_input_frames(audio_cfg: AudioConfig, sample_rate: int) -> int:
    """Shortest input (samples at ``sample_rate``) filling one STFT window at the model rate of
    ``audio_cfg``; BadInputError for a rate that is not a positive whole number of Hz."""
    sample_rate = check_sample_rate(sample_rate)
    return math.ceil(audio_cfg.n_fft * sample_rate / audio_cfg.sample_rate)


def check_length(path: str | Path, audio_cfg: AudioConfig) -> None:
    """BadInputError, as :meth:`Separator.separate_file` gives it, for a file too short to separate
    with a model of ``audio_cfg``, found before any model is loaded: a file whose header declares
    too few samples is opened and checked (:func:`check_source`: cheap, it is short); one that
    declares enough, or no length, is left to the separation. BadInputError also for a file that
    cannot be opened."""
    frames, rate = audio_io.declared_length(path)
    need = min_input_frames(audio_cfg, rate)
    if frames is None or frames >= need:
        return
    with tempfile.TemporaryDirectory(prefix="clipsep-check.") as work:
        source = open_source(Path(path), Path(work))
        try:
            check_source(source, need)
        finally:
            source.close()


def check_text_query(query) -> str:
    """``query`` stripped; BadInputError (argument ``query``) when it is not a non-empty string."""
    if not isinstance(query, str) or not query.strip():
        raise BadInputError(
            f"the text query is empty ({query!r}); say what to extract, e.g. 'acoustic guitar'",
            arguments=("query",),
        )
    return query.strip()


def triangular_weights(n: int) -> np.ndarray:
    """Overlap-add weights ``[n]`` (float32, exact integers): positive everywhere, peaking
    mid-segment (demucs' ramp)."""
    ramp = np.arange(1, n + 1, dtype=np.float32)
    return np.minimum(ramp, ramp[::-1])


class Separator:
    """A loaded separator: network + frozen CLIP query encoder + the checkpoint's audio config."""

    def __init__(
        self,
        network,
        encoder,
        audio_cfg: AudioConfig,
        settings: SeparateConfig = DEFAULT_SETTINGS,
        device: str = "cpu",
        source: ResolvedModel | None = None,
        extra: dict | None = None,
        model_record: dict | None = None,
    ):
        if not 0.0 <= settings.overlap < 1.0:
            raise BadInputError(f"separate.overlap must lie in [0, 1), got {settings.overlap}")
        if settings.channel_masks not in CHANNEL_MASKS:
            raise BadInputError(
                f"separate.channel_masks must be one of {CHANNEL_MASKS}, got "
                f"{settings.channel_masks!r}"
            )
        if settings.high_band not in HIGH_BANDS:
            raise BadInputError(
                f"separate.high_band must be one of {HIGH_BANDS}, got {settings.high_band!r}"
            )
        self.precision = network_precision(network, settings.precision, device)
        self.memory_format = forward_memory_format(network, device)
        self.network = network.eval()
        if self.memory_format is not None:  # weights reordered once here, not at every call
            self.network = self.network.to(memory_format=self.memory_format)
        self.encoder = encoder
        self.audio_cfg = audio_cfg
        self.settings = settings
        self.device = device
        self.depth = network.cfg.depth
        self.warp_bins = audio_cfg.warp_bins  # what training warped with
        self.source = source  # the files it was loaded from (None when built in memory)
        self.extra = extra or {}  # what the checkpoint records (step, metrics, data version)
        # the model and settings part of each output folder's separation.json (None: in memory)
        self.model_record = model_record

    @classmethod
    def from_pretrained(
        cls,
        ref: str | Path,
        device: str = "auto",
        clip_weights: str | Path | None = None,
        settings: SeparateConfig | None = None,
        tracking_uri: str | None = None,
        root: str | Path | None = None,
        engine: str | None = None,
        calibration: str | Path | None = None,
        elsewhere: tuple[str, Path] | None = None,
    ) -> "Separator":
        """Load a checkpoint path, a registry reference ``models:/name@alias`` (or ``/N``) or a
        folder written by ``clipsep export`` (run by ONNX Runtime).

        ``tracking_uri`` names the registry (default: MLFLOW_TRACKING_URI, else ./params.yaml's);
        relative checkpoint paths are taken from ``root`` (default: the working folder).
        See :func:`clipsep.registry_reader.resolve_model` for the errors (and ``elsewhere``: a
        folder (with its name) where the not-found error looks for a relative path too).
        ``engine`` (default ``settings.engine``) runs the network: ``torch`` (eager) or ``onnx``
        (the checkpoint exported once, cached, run by ONNX Runtime on the CPU in fp32; see
        :mod:`clipsep.model.export`) or ``onnx-int8`` (that export quantised to int8 once,
        calibrated on the train clips of the clip folder ``calibration``, e.g. the params'
        ``paths.clips``; see :mod:`clipsep.model.quantize`). BadInputError for an unknown
        engine, an ONNX engine on CUDA, or onnx-int8 without a clip manifest.
        """
        from clipsep.model.text_cache import CachedQueryEncoder
        from clipsep.registry_reader import default_cache_dir

        settings = settings or DEFAULT_SETTINGS
        engine, device, settings = choose_engine(ref, engine, device, settings)
        resolved = resolve_reference(ref, clip_weights, tracking_uri, root, elsewhere)
        clip_weights = resolved.clip_weights
        network, info = load_network(resolved.checkpoint, device, engine)
        # the CLIP model is built only for a text query not met before (or an image query)
        encoder = CachedQueryEncoder(
            info.query,
            device,
            default_cache_dir(),
            weights=Path(clip_weights) if clip_weights else None,
        )
        if engine == "onnx-int8":
            network, info = load_int8_network(resolved.checkpoint, calibration, encoder)
        return cls(
            network,
            encoder,
            info.audio_cfg,
            settings,
            device,
            source=resolved,
            extra=dict(info.extra),
            model_record=outputs.model_record(
                resolved.checkpoint,
                resolved.version,
                clip_weights,
                settings,
                engine,
                device,
                calibration,
            ),
        )

    # --- queries -----------------------------------------------------------------------------

    def embed_query(self, query: str | None = None, image=None) -> torch.Tensor:
        """One query embedding ``[D]``: text (prompt-ensembled) or an image (PIL.Image or path)."""
        if query is not None and image is not None:
            raise BadInputError(
                "give a text query or an image query, not both", arguments=("query", "image")
            )
        if query is not None:
            return self.encoder.encode_text([check_text_query(query)])[0].to(self.device)
        if image is not None:
            return self.encoder.encode_images([load_image(image)])[0].to(self.device)
        raise BadInputError("no query: give a text query or an image", arguments=("query", "image"))

    def embed_queries(self, queries: Sequence[str], image=None) -> tuple[list[str], torch.Tensor]:
        """Stem names and embeddings ``[N, D]`` of several text queries (+ an optional image,
        named ``"image"``). BadInputError for none, an empty one, or two with the same name."""
        if isinstance(queries, str):
            queries = [queries]
        names = outputs.stem_names(queries, image is not None)
        if not names:
            raise BadInputError(
                "no query: give text queries or an image", arguments=("queries", "image")
            )
        embeddings = [self.embed_query(query) for query in names[: len(queries)]]
        if image is not None:
            embeddings.append(self.embed_query(image=image))
        if len(set(names)) < len(names):
            raise BadInputError(f"the same query is given twice ({names}); give each once")
        return names, torch.stack(embeddings)

    def _queries(self, query, image, queries) -> tuple[list[str], torch.Tensor]:
        """(stem names, embeddings [N, D]) for ``query``/``image`` (one stem, "target") or
        ``queries`` (+ ``image``: one stem per query)."""
        if queries is None:
            return outputs.stem_names(None, image is not None), self.embed_query(query, image)[None]
        if query is not None:
            raise BadInputError("give query= or queries=, not both")
        return self.embed_queries(queries, image)

    # --- the model step ----------------------------------------------------------------------

    @torch.no_grad()
    def soft_masks(self, mono: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Linear-frequency soft masks ``[N, F, T]`` of N queries ``[N, D]`` for a model-rate mono
        wave ``[n]``: one U-Net pass, then :func:`normalise_masks` (sum <= 1 in every bin)."""
        from clipsep import audio

        spec = audio.stft(mono[None], self.audio_cfg)  # [1, F, T]
        warped = audio.warp(spec.abs()[:, None], self.warp_bins)  # [1, 1, W, T]
        if self.memory_format is not None:
            warped = warped.contiguous(memory_format=self.memory_format)
        with autocast(self.pass_precision(warped.shape[-1]), self.device):
            logits = self.network(warped, embeddings[None], with_noise=False).mask_logits
        masks = audio.unwarp(torch.sigmoid(logits.float()), spec.shape[1])[0].clamp(0.0, 1.0)
        return normalise_masks(masks)

    def pass_precision(self, frames: int) -> str:
        """The precision of one network pass over ``frames`` STFT frames
        (:func:`clipsep.precision.network_pass_mode`: fp32 for a short bf16 pass on a CPU)."""
        return network_pass_mode(self.precision.mode, self.device, frames, self.depth)

    def soft_mask(self, mono: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """One query's soft mask ``[F, T]`` (embedding ``[D]``) for a model-rate wave ``[n]``."""
        return self.soft_masks(mono, embedding.reshape(1, -1))[0]

    @torch.no_grad()
    def stems_segment(
        self, segment: np.ndarray, embeddings: torch.Tensor, binary: bool = False
    ) -> np.ndarray:
        """Each query's part of a model-rate segment ``[C, n]`` -> ``[N, C, n]`` (masked STFT,
        own phase) for embeddings ``[N, D]``.

        ``binary`` thresholds the masks at 0.5 (the official infer.py); soft is the default.
        """
        spec, masks = self.segment_masks(segment, embeddings, binary)
        return self._masked_waves(spec, masks, segment.shape[1])

    @torch.no_grad()
    def segment_masks(
        self, segment: np.ndarray, embeddings: torch.Tensor, binary: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(spec [C, F, T], masks [N, C or 1, F, T])`` of a model-rate segment ``[C, n]``:
        its per-channel STFT, zero-padded to the U-Net's frame multiple (frame t centred on
        sample ``t * hop``), and each query's mask (one per channel with ``channel_masks:
        independent``, else one shared)."""
        from clipsep import audio

        n = segment.shape[1]
        frames = audio.pad_frames(audio.n_frames(n, self.audio_cfg), self.depth)
        padded = frames * self.audio_cfg.hop_length - 1  # exactly `frames` centred STFT frames
        waves = torch.from_numpy(np.ascontiguousarray(segment, dtype=np.float32)).to(self.device)
        waves = torch.nn.functional.pad(waves, (0, padded - n))
        if self.settings.channel_masks == "independent":
            masks = torch.stack([self.soft_masks(w, embeddings) for w in waves], 1)  # [N, C, F, T]
        else:
            masks = self.soft_masks(waves.mean(dim=0), embeddings)[:, None]  # [N, 1, F, T]
        if binary:
            masks = (masks > 0.5).to(masks.dtype)
        return audio.stft(waves, self.audio_cfg), masks

    def _masked_waves(self, spec: torch.Tensor, masks: torch.Tensor, n: int) -> np.ndarray:
        """The masked STFTs ``spec [C, F, T] * masks [N, C or 1, F, T]`` back to waves
        ``[N, C, n]`` (the first ``n`` samples)."""
        from clipsep import audio

        padded = spec.shape[-1] * self.audio_cfg.hop_length - 1  # the length it was made from
        stems = audio.istft((spec[None] * masks).flatten(0, 1), padded, self.audio_cfg)[:, :n]
        return stems.reshape(len(masks), -1, n).cpu().numpy()

    def target_segment(
        self, segment: np.ndarray, embedding: torch.Tensor, binary: bool = False
    ) -> np.ndarray:
        """One query's (embedding ``[D]``) part of a model-rate segment ``[C, n]`` -> ``[C, n]``."""
        return self.stems_segment(segment, embedding.reshape(1, -1), binary)[0]

    # --- whole signals -----------------------------------------------------------------------

    def min_input_frames(self, sample_rate: int) -> int:
        """:func:`min_input_frames` of this separator's audio settings."""
        return min_input_frames(self.audio_cfg, sample_rate)

    def plan(self, sample_rate: int, frames: int) -> ChunkPlan:
        sample_rate = check_sample_rate(sample_rate)
        segment = self.audio_cfg.segment_samples
        stride = max(1, round(segment * (1.0 - self.settings.overlap)))
        return ChunkPlan(sample_rate, self.audio_cfg.sample_rate, frames, segment, stride)

    def separate(
        self,
        audio,
        sample_rate: int,
        query: str | None = None,
        image=None,
        progress: Progress | None = None,
        queries: Sequence[str] | None = None,
    ) -> SeparationResult | Stems:
        """Split ``audio`` into the queried target and the residual (``target + residual ==
        audio``), both in the layout (``[L]``, ``[C, L]`` or ``[L, C]``) and container (numpy, or
        a torch tensor on the input's device) given.

        ``audio``: numpy array or torch tensor, ``[L]``, ``[C, L]`` or ``[L, C]`` (as
        soundfile.read returns it). The channel axis of a 2-D array is the one axis with at
        most 64 entries; when both or neither have (``[5000, 5000]``), BadInputError names both
        readings. Sample values and what comes back:

        * float32 (and float16 / bfloat16 tensors): float32, same scale;
        * float64: float64, same scale (the residual is taken in float64, so the sum is exact);
        * integer PCM (int16, int32, uint8, ...): float32 at full scale 1.0, as soundfile.read
          and torchaudio.load give it: int16 is divided by 32768, int32 by 2**31, uint8 is
          ``(x - 128) / 128``; ``target + residual == audio / full scale``.

        ``sample_rate``: a positive whole number of Hz, any such rate (BadInputError otherwise).
        With ``queries=[...]`` (text; plus ``image`` if given, named ``"image"``) all queries share
        one network pass per segment and the result is a :class:`Stems` mapping query -> stem
        (``sum(stems) + residual == audio``), the stems in the same dtype as above.
        Raises BadInputError for audio too short, silent or with NaN/inf samples, a bad sample
        rate, or no query.
        """
        sample_rate = check_sample_rate(sample_rate)
        min_frames = self.min_input_frames(sample_rate)
        data, layout = channels_first(audio, min_frames)
        source = ArraySource(data, sample_rate)
        check_source(source, min_frames)
        names, embeddings = self._queries(query, image, queries)
        stems = np.empty((len(names), *source.data.shape), np.float32)

        def store(start: int, block: np.ndarray) -> None:
            stems[:, :, start : start + block.shape[-1]] = block

        self.stream(source, embeddings, store, progress)
        residual = layout.restore(source.data - stems.sum(axis=0, dtype=source.data.dtype))
        if queries is None:
            return SeparationResult(layout.restore(stems[0]), residual, sample_rate)
        return Stems(
            {name: layout.restore(stem) for name, stem in zip(names, stems)},
            residual,
            sample_rate,
        )

    def separate_file(
        self,
        path: str | Path,
        out_dir: str | Path,
        query: str | None = None,
        image=None,
        progress: Progress | None = None,
        queries: Sequence[str] | None = None,
        output: outputs.OutputFormat = outputs.DEFAULT_FORMAT,
    ) -> FileResult:
        """Stream one file into ``out_dir/<stem>/``: ``target`` (one query) or one file per query
        (``queries``), ``residual``, and each stem's ``.activity.csv``; same rate, channels and
        length as the input, in ``output``'s format (default: wav at the input's bit depth).

        Without a query, a video's middle frame serves as the image query (cover art is not one).
        A file holding less audio than its header declares gives outputs of the length decoded,
        with a warning. Outputs are written under temporary names in ``out_dir`` and renamed only
        when the whole file succeeded; on failure, folders this call created are removed again.
        Audio files already in ``out_dir/<stem>/`` that this call does not write (an earlier run's
        stems) are kept and named in a logged warning (:func:`clipsep.outputs.warn_stale_stems`).
        Last, ``separation.json`` records the request (:func:`clipsep.outputs.request_record`).
        BadInputError for an unusable input or an output folder that cannot be written.
        """
        path = audio_io.check_exists(path)
        record = outputs.request_record(path, self.model_record, output, query, image, queries)
        out_dir = fileio.check_writable_folder(out_dir)
        first_new = fileio.first_missing(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            # the sample format the record names is the one written
            subtype = record["subtype"]
            result = self._separate_into(
                path, out_dir, query, image, progress, queries, output, subtype
            )
            outputs.write_record(out_dir / path.stem, record)
            return result
        except BaseException:
            fileio.remove_empty_folders(out_dir, first_new)
            raise

    def _separate_into(
        self,
        path: Path,
        out_dir: Path,
        query: str | None,
        image,
        progress: Progress | None,
        queries: Sequence[str] | None,
        output: outputs.OutputFormat,
        subtype: str,
    ) -> FileResult:
        with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=out_dir) as work_dir:
            work = Path(work_dir)
            source = open_source(path, work)
            try:
                check_source(source, self.min_input_frames(source.sample_rate))
                if (
                    query is None
                    and image is None
                    and not queries
                    and audio_io.has_video_stream(path)
                ):
                    image = audio_io.middle_frame(path)
                names, embeddings = self._queries(query, image, queries)
                files = outputs.stem_files(names, output.suffix)
                clipped, meter = self._write_outputs(
                    source, embeddings, work, files, output, subtype, progress
                )
            finally:
                source.close()
            final = out_dir / path.stem
            final.mkdir(parents=True, exist_ok=True)
            activity = meter.segments(self.settings)
            written = {}
            (final / outputs.SIDECAR).unlink(missing_ok=True)  # the outputs change from here
            for name, file in files.items():
                (work / file).replace(final / file)
                written[name] = final / file
            outputs.warn_stale_stems(path, final, written.values())
            activity_files = {
                name: outputs.write_activity_csv(
                    final / outputs.activity_file(files[name]), activity[name]
                )
                for name in names
            }
        return FileResult(
            path,
            {n: written[n] for n in names},
            written[outputs.RESIDUAL],
            activity,
            activity_files,
            source.sample_rate,
            source.channels,
            source.frames,
            clipped,
        )

    def _write_outputs(
        self,
        source: SoundFileSource,
        embeddings: torch.Tensor,
        work: Path,
        files: dict[str, str],
        output: outputs.OutputFormat,
        subtype: str | None,
        progress: Progress | None,
    ) -> tuple[int, ActivityMeter]:
        """Stream stems + residual into ``work``; (samples clipped, the stems' activity meter)."""
        names = list(files)[:-1]  # the residual comes last
        meter = ActivityMeter(names, source.sample_rate, self.settings.activity_frame_s)
        with outputs.StemWriter(
            work,
            files,
            output,
            subtype,
            source.sample_rate,
            source.channels,
            workers=torch.get_num_threads(),
        ) as writer:

            def write(start: int, block: np.ndarray) -> None:
                mixture = source.read(start, start + block.shape[-1])
                writer.write(block, mixture)
                meter.update(start, block, mixture)

            self.stream(source, embeddings, write, progress)
        return writer.clipped, meter

    # --- streaming overlap-add ---------------------------------------------------------------

    def stream(
        self,
        source: AudioSource,
        embeddings: torch.Tensor,
        sink: Callable[[int, np.ndarray], None],
        progress: Progress | None = None,
    ) -> None:
        """Overlap-add every segment's stems for embeddings ``[N, D]`` (or one ``[D]``);
        ``sink(start, stems [N, C, n])`` gets the input-rate output in order, each stretch as soon
        as it is final (memory: a few segments)."""
        embeddings = embeddings.reshape(-1, embeddings.shape[-1])
        plan = self.plan(source.sample_rate, source.frames)
        capacity = -(-plan.segment * plan.in_rate // plan.model_rate) + 2
        # float32, as the stems: weighted sums of a few segments need no more
        summed = np.zeros((len(embeddings), source.channels, capacity), np.float32)
        weights = np.zeros(capacity, np.float32)
        base = 0  # input index of summed[..., 0]
        for k in range(plan.n_chunks):
            start, stop = plan.input_span(k)
            stems = self._segment_at_input_rate(source, plan, k, embeddings)  # [N, C, n]
            window = triangular_weights(stop - start)
            offset = start - base
            summed[..., offset : offset + stop - start] += stems * window
            weights[offset : offset + stop - start] += window
            done = plan.emit_until(k) - base
            if done > 0:
                sink(base, summed[..., :done] / weights[:done])
                summed[..., : capacity - done] = summed[..., done:].copy()
                weights[: capacity - done] = weights[done:].copy()
                summed[..., capacity - done :] = 0.0
                weights[capacity - done :] = 0.0
                base += done
            if progress is not None:
                progress(k + 1, plan.n_chunks)

    def _segment_at_input_rate(
        self, source: AudioSource, plan: ChunkPlan, k: int, embeddings: torch.Tensor
    ) -> np.ndarray:
        """Stems of segment k ``[N, C, n_in]`` at the input rate from a resampled model-rate cut."""
        model_start, model_stop = plan.model_span(k)
        start, stop = plan.input_span(k)
        segment = _model_rate_cut(source, plan, model_start, model_stop)
        spec, masks = self.segment_masks(segment, embeddings)
        stems = self._masked_waves(spec, masks, segment.shape[1])  # [N, C, n]
        cut = _input_rate_cut(stems.reshape(-1, stems.shape[-1]), plan, model_start, start, stop)
        low = cut.reshape(*stems.shape[:2], -1)
        if self.settings.high_band == "residual" or plan.in_rate <= plan.model_rate:
            return low
        from clipsep import audio

        frames = audio.n_frames(segment.shape[1], self.audio_cfg)  # the segment's own frames
        gains = top_band_gains(spec, masks)[..., :frames]  # [N, C or 1, T]
        return low + self._high_band_stems(source, plan, k, segment, gains)

    def _high_band_stems(
        self, source: AudioSource, plan: ChunkPlan, k: int, segment: np.ndarray, gains: np.ndarray
    ) -> np.ndarray:
        """Each stem's share ``[N, C, n_in]`` of segment k's input above the model's band.

        ``segment`` is the model-rate cut ``[C, n]``, ``gains [N, C or 1, T]`` each stem's
        :func:`top_band_gains` on the segment's STFT frames. The high band is what the model-rate
        round trip drops, ``input - up(segment)``, so that a target mask of 1 everywhere would
        give back the input; each stem gets it scaled by its gains, interpolated linearly from
        the STFT frame centres to every sample.
        """
        model_start, _ = plan.model_span(k)
        start, stop = plan.input_span(k)
        above = _fit(source.read(start, stop), stop - start) - _input_rate_cut(
            segment, plan, model_start, start, stop
        )
        hop, ratio = self.audio_cfg.hop_length, plan.in_rate / plan.model_rate
        centres = (model_start + hop * np.arange(gains.shape[-1])) * ratio
        return above * _interp_rows(np.arange(start, stop), centres, gains)


def forward_memory_format(network, device: str) -> torch.memory_format | None:
    """The memory format a torch ``network``'s forward runs in on ``device``: channels_last on a
    CPU, None (as built) on CUDA and for an ONNX Runtime network.

    oneDNN's inference convolutions are faster on NHWC activations, with bf16 most of all. One
    4.1-s forward, 2 threads, over NCHW of the same precision (docs/separation.md): AVX2 fp32
    1.21-1.39x across the presets; AVX-512 with native bf16 (AMD EPYC, Zen 5) fp32 1.39-1.49x,
    bf16 1.49-1.56x. End to end (10 min of 44.1 kHz stereo, trained cpu preset) that machine's
    ``separate`` took 4.05 s against 4.53 s in bf16 and 4.08 against 5.22 s in fp32. Outputs
    differ from NCHW's by rounding (fp32: ~1e-7).
    """
    if not isinstance(network, torch.nn.Module) or not str(device).startswith("cpu"):
        return None
    return torch.channels_last


def network_precision(network, requested: str, device: str) -> PrecisionChoice:
    """The precision a network runs in: a torch network's as :func:`resolve_precision` chooses
    for ``requested`` on ``device``; an ONNX Runtime network runs as exported: fp32 around it,
    int8 inside when it was quantised."""
    if isinstance(network, torch.nn.Module):
        return resolve_precision(requested, device)
    if getattr(network, "int8", False):
        return fixed_precision(
            "fp32", "ONNX Runtime runs the int8 network, fp32 around it", requested
        )
    return fixed_precision("fp32", "the ONNX Runtime engine runs fp32", requested)


def _interp_rows(x: np.ndarray, xp: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``np.interp(x, xp, row)`` for every row of ``rows [..., len(xp)]`` -> ``[..., len(x)]``
    float32 (constant beyond the ends, as np.interp)."""
    flat = rows.reshape(-1, rows.shape[-1])
    out = np.stack([np.interp(x, xp, row).astype(np.float32) for row in flat])
    return out.reshape(*rows.shape[:-1], len(x))


def normalise_masks(masks: torch.Tensor) -> torch.Tensor:
    """Masks ``[N, ...]`` divided by their sum where it exceeds 1 (unchanged elsewhere), so no
    time-frequency bin is given out more than once: ``sum(stems) + residual == input`` with a
    residual mask ``1 - sum >= 0``."""
    return masks / masks.sum(dim=0, keepdim=True).clamp(min=1.0)


def load_network(path: Path, device: str, engine: str):
    """``(network, info)`` for a checkpoint or an export folder: a CLIPSepNet (engine torch) or
    an :class:`~clipsep.model.export.OnnxNetwork` with the same call signature (engine onnx; a
    checkpoint is exported once and cached). ``info`` has ``audio_cfg`` and ``query``."""
    from clipsep.model import export
    from clipsep.model.factory import load_checkpoint

    if export.is_export_folder(path):
        return export.load_onnx_network(path)
    if engine == "onnx":
        return export.load_onnx_network(export.cached_export(path))
    if engine == "onnx-int8":  # the fp32 export's settings; the network comes from
        folder = export.cached_export(path)  # load_int8_network once the encoder is loaded
        return None, export.read_export(folder)
    return load_checkpoint(path, device)


def load_int8_network(path: Path, calibration: str | Path | None, encoder):
    """``(OnnxNetwork, info)`` of checkpoint ``path`` quantised to int8 (once, cached), its
    activations calibrated on the train clips of the clip folder ``calibration`` with queries
    from ``encoder``. BadInputError when ``calibration`` is None or holds no clip manifest."""
    from clipsep.model import export, quantize

    if calibration is None:
        raise BadInputError(
            "separate.engine onnx-int8 calibrates on the train clips: give the clip folder "
            "(paths.clips) as calibration=, or use separate.engine onnx"
        )
    folder = quantize.cached_int8_export(path, calibration, encoder.encode_images)
    return export.load_onnx_network(folder)


def choose_engine(
    ref: str | Path,
    engine: str | None = None,
    device: str = "auto",
    settings: SeparateConfig | None = None,
) -> tuple[str, str, SeparateConfig]:
    """``(engine, device, settings)`` that :meth:`Separator.from_pretrained` runs ``ref`` with
    for these arguments, found without loading it: an export folder runs with engine onnx only;
    else ``engine`` or ``settings.engine``; the ONNX engines run on the CPU in fp32 (device auto
    -> cpu, precision auto -> fp32); the device is resolved (``auto``: cuda when available, else
    cpu). What separation.json records. BadInputError for an unknown engine, a non-onnx engine
    on an export folder, an ONNX engine on CUDA or in reduced precision."""
    from clipsep.env import resolve_device
    from clipsep.model.export import check_engine, is_export_folder

    settings = settings or DEFAULT_SETTINGS
    exported = is_export_folder(ref)
    engine = check_engine(engine or ("onnx" if exported else settings.engine))
    if exported and engine != "onnx":
        raise BadInputError(
            f"{ref} is an ONNX export folder: it runs with engine onnx only (int8 or fp32, "
            "as exported)"
        )
    if engine in ("onnx", "onnx-int8"):
        device, settings = _onnx_device_and_settings(engine, device, settings)
    return engine, resolve_device(device), settings


def _onnx_device_and_settings(
    engine: str, device: str, settings: SeparateConfig
) -> tuple[str, SeparateConfig]:
    """The ONNX engines run on the CPU with fp32 around the network (int8 inside for onnx-int8):
    device auto -> cpu, precision auto -> fp32; BadInputError for an explicit CUDA device or
    reduced precision."""
    if device not in ("auto", "cpu"):
        raise BadInputError(
            f"separate.engine {engine} runs on the CPU, not on {device!r}; use engine torch there"
        )
    if settings.precision not in ("auto", "fp32"):
        raise BadInputError(
            f"separate.engine {engine} runs fp32, not {settings.precision}; use "
            "precision auto or fp32, or engine torch"
        )
    return "cpu", dataclasses.replace(settings, precision="fp32")


def _model_rate_cut(
    source: AudioSource, plan: ChunkPlan, model_start: int, model_stop: int
) -> np.ndarray:
    """Input resampled to the model rate over ``[model_start, model_stop)`` -> ``[C, n]``."""
    n = model_stop - model_start
    if plan.in_rate == plan.model_rate:
        return _fit(source.read(model_start, model_stop), n)
    gcd = math.gcd(plan.in_rate, plan.model_rate)
    in_step, model_step = plan.in_rate // gcd, plan.model_rate // gcd
    context = math.ceil(RESAMPLE_CONTEXT * plan.in_rate / plan.model_rate)
    # Start on a multiple of in_step so the resampled grid falls on whole model-rate samples.
    low = max(0, plan.to_input(model_start) - context) // in_step * in_step
    high = min(plan.in_frames, plan.to_input(model_stop) + context)
    resampled = resample(source.read(low, high), plan.in_rate, plan.model_rate)
    offset = model_start - low // in_step * model_step
    return _fit(resampled[:, offset:], n)


def _input_rate_cut(
    target: np.ndarray, plan: ChunkPlan, model_start: int, start: int, stop: int
) -> np.ndarray:
    """Model-rate ``target [C, n]`` (from ``model_start``) resampled to input ``[start, stop)``."""
    if plan.in_rate == plan.model_rate:
        return _fit(target, stop - start)
    gcd = math.gcd(plan.in_rate, plan.model_rate)
    in_step, model_step = plan.in_rate // gcd, plan.model_rate // gcd
    aligned = model_start // model_step * model_step  # zeros before: lands on whole input samples
    padded = np.pad(target, ((0, 0), (model_start - aligned, 0)))
    resampled = resample(padded, plan.model_rate, plan.in_rate)
    offset = start - aligned // model_step * in_step
    return _fit(resampled[:, offset:], stop - start)


def top_band_gains(spec: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Per STFT frame, each mask's mean over the top :data:`TOP_BAND` of the model's band (6-8 kHz
    at 16 kHz), weighted by the mixture's energy there: ``g = sum M |X|^2 / sum |X|^2``.

    ``spec`` is the mixture's STFT ``[C, F, T]``, ``masks`` ``[N, C or 1, F, T]`` (a shared mask
    sums over the channels too) -> ``[N, C or 1, T]`` in [0, 1]; a frame whose top band is silent
    gets 0. For a target ``S = M X`` this is the least-squares gain of the mixture's top band onto
    the target's, ``sum Re(S conj(X)) / sum |X|^2``.
    """
    low = math.floor((1.0 - TOP_BAND) * (spec.shape[-2] - 1))
    power = spec[:, low:].abs().square().double()  # [C, F', T]
    num = (masks[..., low:, :].double() * power).sum(dim=-2)  # [N, C, T]
    den = power.sum(dim=-2)[None]  # [1, C, T]
    if masks.shape[1] == 1:
        num, den = num.sum(dim=1, keepdim=True), den.sum(dim=1, keepdim=True)
    return (num / den.clamp(min=1e-20)).clamp(0.0, 1.0).cpu().numpy()


def _fit(wave: np.ndarray, n: int) -> np.ndarray:
    """``wave [C, m]`` cut or zero-padded to ``[C, n]``."""
    if wave.shape[1] >= n:
        return wave[:, :n]
    return np.pad(wave, ((0, 0), (0, n - wave.shape[1])))


def check_source(source: AudioSource, min_frames: int) -> None:
    """BadInputError for audio too short to separate, with NaN/inf samples, or silent throughout.

    A file source whose data ends before its header's length (or whose decoder fails part-way)
    is cut to the samples that were read, with a warning: its outputs have that length.
    """
    peak, readable, error = _scan(source)
    if readable < source.frames:
        audio_io.check_decoded(
            source.name, readable, source.frames, source.sample_rate, None, error
        )
        source.frames = readable
    if source.channels < 1 or source.frames < min_frames:
        rate = source.sample_rate
        raise BadInputError(
            f"{source.name}: {_samples(source.frames)} ({source.frames / rate:.3f} s) at {rate} "
            f"Hz is too short to separate (need at least {_samples(min_frames)}, "
            f"{min_frames / rate:.3f} s)"
        )
    if peak < SILENT_PEAK:
        raise BadInputError(
            f"{source.name}: the audio is silent (peak {peak:.1e}); nothing to separate"
        )


def _samples(count: int) -> str:
    return f"{count} sample{'' if count == 1 else 's'}"


def _scan(source: AudioSource) -> tuple[float, int, Exception | None]:
    """(peak, samples readable from the start, the decoder error that stopped the reading) of a
    source; BadInputError at a NaN/inf sample."""
    peak, readable = 0.0, 0
    for start in range(0, source.frames, SCAN_BLOCK):
        try:
            block = source.read(start, start + SCAN_BLOCK)
        except BadInputError as err:
            if readable == 0:
                raise
            return peak, readable, err
        finite = np.isfinite(block)
        if not finite.all():
            where = start + int(np.argwhere(~finite)[0][1])
            raise BadInputError(
                f"{source.name}: NaN or infinite sample at index {where} "
                f"({where / source.sample_rate:.3f} s)"
            )
        peak = max(peak, float(np.abs(block).max(initial=0.0)))
        readable += block.shape[1]
        if block.shape[1] < min(SCAN_BLOCK, source.frames - start):
            break  # the data ends before the header says it does
    return peak, readable, None


def open_source(path: Path, work_dir: Path) -> SoundFileSource:
    """A block-readable source for any input: uncompressed wav/aiff directly, anything else
    (compressed audio, video containers) decoded in order to a temporary float wav in ``work_dir``
    first (PyAV, streamed): compressed formats do not seek sample-exactly."""
    if audio_io.exact_audio_info(path) is not None:
        return SoundFileSource(path)
    decoded = work_dir / "decoded-input.wav"
    audio_io.decode_to_wav(path, decoded)
    return SoundFileSource(decoded, name=str(path))


def load_image(image):
    """A PIL.Image (RGB) from a PIL.Image or an image file path, turned upright by its EXIF
    orientation (as a phone's photo is shown)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return ImageOps.exif_transpose(image).convert("RGB")
    path = audio_io.check_exists(image)
    try:
        with Image.open(path) as picture:
            return ImageOps.exif_transpose(picture).convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise BadInputError(f"{path}: not a readable image ({err})") from err
