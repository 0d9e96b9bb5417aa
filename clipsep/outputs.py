"""How separated stems are written: file names, formats, bit depths and clipping.

* Names: one query -> ``target``; several -> one file per query named from the query made
  filesystem-safe (:func:`safe_name`); always ``residual`` last.
* Formats (``--format``): ``wav``, ``flac``, ``mp3`` (all through soundfile's libsndfile, which
  encodes MP3 with LAME; no external program).
* Bit depth (``--bits``): ``16``, ``24`` (integer PCM) or ``32f`` (32-bit float). The default keeps
  the input's depth when it is 16- or 24-bit PCM, else 32-bit float (FLAC holds no float: 24).
* Clipping: a stem or residual may exceed full scale (a mask keeps the input's phase, and
  overlap-add sums segments). Float wav keeps such samples as they are. Integer PCM and MP3 cannot
  hold them: they are clipped to [-1, 1] and the number of clipped samples is reported (demucs'
  ``--clip-mode clamp``); choose ``--bits 32f`` to keep them.
* The request record (``<stem>/separation.json``, :data:`SIDECAR`): what a folder's outputs answer
  (the input file's identity, the queries, the model, the settings, the format), written last when
  a file succeeded. A run skips a file only when its record matches (:func:`why_separate_again`).

Imports numpy and soundfile only (and the standard library).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from clipsep.activity import Segment
from clipsep.errors import BadInputError
from clipsep.fileio import file_digest, write_csv, write_json

log = logging.getLogger(__name__)

RESIDUAL = "residual"
SINGLE_STEM = "target"  # the stem's name when one query is given (query=/image=)
IMAGE_STEM = "image"  # the stem's name of an image query among several queries
FORMATS = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3"}  # --format -> libsndfile major format
BITS = {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"}  # --bits -> libsndfile subtype
KEPT_PCM = {"PCM_16", "PCM_24"}  # input subtypes whose depth the default keeps
# integer PCM subtype -> (full scale in steps, the array type soundfile writes it from, the
# left shift that puts a 24-bit value in libsndfile's 32-bit int)
PCM_STEPS = {"PCM_16": (1 << 15, np.int16, 0), "PCM_24": (1 << 23, np.int32, 8)}
MP3_SUBTYPE = "MPEG_LAYER_III"
MAX_NAME = 80  # characters of a query kept in its file name
ACTIVITY_COLUMNS = ("start_s", "end_s", "mean_db")
SIDECAR = "separation.json"  # what the outputs of <stem>/ answer (request_record)
RECORD_VERSION = 3  # 2: the device and the int8 calibration clip folder; 3: the subtype written
# separate settings recorded otherwise: the model as its files, the device as the one it ran on
NOT_OUTPUT_SETTINGS = ("model", "device")
INT8_ENGINE = "onnx-int8"  # the engine whose network depends on its calibration clips


@dataclass(frozen=True)
class OutputFormat:
    """``format`` (wav | flac | mp3) and ``bits`` (16 | 24 | 32f | None = from the input)."""

    format: str = "wav"
    bits: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise BadInputError(f"--format must be one of {sorted(FORMATS)}, got {self.format!r}")
        if self.bits is not None and self.bits not in BITS:
            raise BadInputError(f"--bits must be one of {list(BITS)}, got {self.bits!r}")
        if self.format == "flac" and self.bits == "32f":
            raise BadInputError(
                "FLAC holds integer samples only: use --bits 16 or 24, or "
                "--format wav for 32-bit float"
            )
        if self.format == "mp3" and self.bits is not None:
            raise BadInputError("MP3 has no bit depth: drop --bits with --format mp3")

    @property
    def suffix(self) -> str:
        return f".{self.format}"

    def subtype_for(self, input_subtype: str | None) -> str:
        """The libsndfile subtype written for an input of ``input_subtype`` (None: not PCM)."""
        if self.format == "mp3":
            return MP3_SUBTYPE
        if self.bits is not None:
            return BITS[self.bits]
        if input_subtype in KEPT_PCM:
            return input_subtype
        return "PCM_24" if self.format == "flac" else "FLOAT"


DEFAULT_FORMAT = OutputFormat()


def clips(subtype: str) -> bool:
    """True when ``subtype`` cannot hold samples beyond full scale (integer PCM, MP3)."""
    return subtype != "FLOAT"


def input_subtype(path: Path) -> str | None:
    """libsndfile subtype of a soundfile-readable input (``PCM_16``, ``FLOAT``, ...), else None."""
    import soundfile as sf

    try:
        return sf.info(str(path)).subtype
    except (sf.LibsndfileError, RuntimeError):
        return None


def safe_name(query: str) -> str:
    """A file-name stem for a query: letters, digits, ``-``, ``_`` and ``.`` kept, other runs
    become ``_`` (``"acoustic guitar"`` -> ``acoustic_guitar``), no leading dot, <= MAX_NAME."""
    name = re.sub(r"[^\w.-]+", "_", query.strip(), flags=re.ASCII).strip("._")[:MAX_NAME]
    if not name:
        raise BadInputError(
            f"the query {query!r} leaves no usable file name; use letters or digits"
        )
    return name


def stem_names(queries: Sequence[str] | None, image: bool) -> list[str]:
    """The stems of a request: ``[SINGLE_STEM]`` for one query (``queries`` None), else the text
    queries (stripped) and, with an image, :data:`IMAGE_STEM` last. BadInputError for a text
    query whose file would be the image's (``--query image --image pic.jpg``)."""
    if queries is None:
        return [SINGLE_STEM]
    names = [q.strip() if isinstance(q, str) else q for q in queries]
    if image:
        for name in names:
            if isinstance(name, str) and safe_name(name).lower() == IMAGE_STEM:
                raise BadInputError(
                    f"the query {name!r} would write the image query's stem ({IMAGE_STEM}): "
                    "rename it",
                    arguments=("queries",),
                )
    return names + [IMAGE_STEM] * bool(image)


def stem_files(names: Sequence[str], suffix: str) -> dict[str, str]:
    """File name per stem name, ``residual`` last. BadInputError naming the queries whose files
    would collide (the same name twice, names that differ only in case or in characters a file
    name cannot hold, or a query named like the residual)."""
    files = {name: safe_name(name) + suffix for name in names}
    files[RESIDUAL] = RESIDUAL + suffix
    claims: dict[str, list[str]] = {}  # lower-case file name -> who writes it
    for name in [*names, RESIDUAL]:
        claims.setdefault(files[name].lower(), []).append(name)  # case-insensitive file systems
    clashes = [who for who in claims.values() if len(who) > 1]
    if clashes:
        raise BadInputError("; ".join(_clash(who, files[who[-1]]) for who in clashes))
    return files


def _clash(names: Sequence[str], file: str) -> str:
    """Why the stems ``names`` cannot share ``file`` (the residual, when among them, is last)."""
    residual = names[-1] == RESIDUAL  # stem_files claims the residual's file after every query
    queries = ", ".join(repr(name) for name in dict.fromkeys(names[:-1] if residual else names))
    if residual:
        return f"the query {queries} would write {file}, the residual's file: rename it"
    if len(set(names)) == 1:
        return f"the query {queries} is given twice: give each once"
    files = {safe_name(name) for name in names}
    if len(files) > 1:  # only the case differs
        return (
            f"the queries {queries} would write files whose names differ only in case "
            f"({', '.join(sorted(f + Path(file).suffix for f in files))}), one file on "
            "case-insensitive file systems (macOS, Windows): rename one"
        )
    return f"the queries {queries} would write the same file {file}: rename one"


def activity_file(audio_file: str) -> str:
    """``violin.wav`` -> ``violin.activity.csv``."""
    return Path(audio_file).stem + ".activity.csv"


def warn_stale_stems(source: Path, folder: Path, written: Iterable[Path]) -> list[str]:
    """Name the audio files in ``folder`` (a separation's output folder) that this separation of
    ``source`` did not write: stems of an earlier run with other queries or another format, which
    do not sum with this run's residual. They are kept (a user's files are never deleted) and named
    in one logged warning; returns their names, sorted."""
    audio = {f".{suffix}" for suffix in FORMATS}
    stale = sorted(
        p.name for p in set(folder.iterdir()) - set(written) if p.suffix.lower() in audio
    )
    if stale:
        log.warning(
            "%s: %s also holds %s from an earlier run with other queries or format; this run's "
            "residual goes with its own stems only",
            source,
            folder,
            ", ".join(stale),
        )
    return stale


def write_activity_csv(path: Path, segments: Sequence[Segment]) -> Path:
    """One row per segment: ``start_s,end_s,mean_db`` (header always written)."""
    return write_csv(path, ACTIVITY_COLUMNS, (s._asdict() for s in segments))


def pcm_blocks(
    stems: np.ndarray, mixture: np.ndarray, subtype: str
) -> tuple[list[np.ndarray], int]:
    """Stems ``[N, C, n]`` and the residual of ``mixture [C, n]`` as integer PCM of ``subtype``
    (``PCM_16`` or ``PCM_24``): ``([*stems, residual], samples clipped)``.

    Each stem is rounded to the nearest step on its own, and the residual is the mixture's nearest
    steps minus theirs, so the blocks sum to the mixture's nearest steps exactly (clipping aside:
    to ``[-full scale, full scale - 1]``). The arrays are what soundfile writes unchanged (int16;
    int32 holding a 24-bit value shifted left by 8)."""
    scale, dtype, shift = PCM_STEPS[subtype]
    # exact: scaling by a power of two, and integers below 2**24 in float32
    exact = np.float32 if scale * (len(stems) + 1) < 1 << 24 else np.float64
    parts = [np.round(stem.astype(exact) * scale) for stem in stems]
    residual = np.round(mixture.astype(exact) * scale)
    for part in parts:
        residual -= part
    blocks, clipped = [], 0
    for part in [*parts, residual]:  # full scale (+scale) itself is one step too high
        clipped += int(np.count_nonzero((part < -scale) | (part > scale)))
        part = np.clip(part, -scale, scale - 1)
        blocks.append(part.astype(dtype) << shift if shift else part.astype(dtype))
    return blocks, clipped


class StemWriter:
    """Streams stems ``[N, C, n]`` and the residual (the mixture ``[C, n]`` minus their sum) into
    ``files`` under ``folder``, clipping to full scale where the subtype needs it and counting the
    clipped samples.

    Integer PCM (16/24-bit) is rounded here, to the nearest step: libsndfile's own float-to-integer
    conversion rounds down (``-1e-9`` becomes ``-1``), a bias of half a step in every file. Each
    stem is rounded on its own and the residual takes what is left of the mixture on the same
    grid, so the written stems and residual sum to the mixture's nearest steps exactly (a PCM
    input of the output's depth: to the input, sample for sample), clipping aside.

    ``workers`` > 1 encodes the files of a block on that many threads, in the background while
    the next block is computed (libsndfile releases the GIL; a block's files are finished before
    the next block is queued, so the order inside each file is kept).
    """

    def __init__(
        self,
        folder: Path,
        files: dict[str, str],
        output: OutputFormat,
        subtype: str,
        sample_rate: int,
        channels: int,
        workers: int = 1,
    ):
        self.folder, self.files = folder, files
        self.options = dict(
            samplerate=sample_rate,
            channels=channels,
            format=FORMATS[output.format],
            subtype=subtype,
        )
        self.clip = clips(subtype)
        self.clipped = 0
        self.workers = max(1, min(workers, len(files)))
        self._handles = []
        self._pool = None
        self._pending = []

    def __enter__(self) -> "StemWriter":
        import soundfile as sf

        try:
            for file in self.files.values():
                self._handles.append(sf.SoundFile(str(self.folder / file), "w", **self.options))
        except (sf.LibsndfileError, RuntimeError) as err:
            self.close()
            raise BadInputError(
                f"cannot write {self.options['format']} "
                f"{self.options['subtype']} at {self.options['samplerate']} Hz "
                f"with {self.options['channels']} channel(s): {err}"
            ) from err
        if self.workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="stem-writer")
        return self

    def write(self, stems: np.ndarray, mixture: np.ndarray) -> None:
        """Append a block: ``stems [N, C, n]`` and the ``mixture [C, n]`` they came from (the
        residual is what the stems leave of it). With ``workers`` > 1 it is encoded while the
        caller computes the next one (the previous block's files are finished first: order kept,
        errors raised here)."""
        if self.options["subtype"] in PCM_STEPS:
            blocks = self._integer_blocks(stems, mixture)
        else:
            residual = mixture - stems.sum(axis=0)
            blocks = [self._clipped(block) for block in [*stems, residual]]
        if self._pool is None:
            for handle, block in zip(self._handles, blocks):
                _write_block(handle, block)
            return
        self._finish_pending()
        self._pending = [
            self._pool.submit(_write_block, h, b) for h, b in zip(self._handles, blocks)
        ]

    def _finish_pending(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()  # re-raises a writer's error

    def _integer_blocks(self, stems: np.ndarray, mixture: np.ndarray) -> list[np.ndarray]:
        blocks, clipped = pcm_blocks(stems, mixture, self.options["subtype"])
        self.clipped += clipped
        return blocks

    def _clipped(self, block: np.ndarray) -> np.ndarray:
        if not self.clip or (block.max(initial=0.0) <= 1.0 and block.min(initial=0.0) >= -1.0):
            return block
        self.clipped += int(np.count_nonzero(np.abs(block) > 1.0))
        return np.clip(block, -1.0, 1.0)

    def close(self) -> None:
        try:
            self._finish_pending()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            for handle in self._handles:
                handle.close()
            self._handles = []

    def __exit__(self, *exc) -> None:
        self.close()


def _write_block(handle, block: np.ndarray) -> None:
    """Append ``block [C, n]`` to an open soundfile ``handle`` (frames x channels)."""
    handle.write(np.ascontiguousarray(block.T))


# --- the request record: which request a folder's outputs answer ------------------------------


@functools.lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(path)


def file_identity(path: str | Path, digest: bool = False) -> dict[str, Any]:
    """A file's resolved path, size and modification time (and its SHA-256 with ``digest``,
    computed once per process and file version); a folder (an ONNX export): its files'."""
    path = Path(path).resolve()
    if path.is_dir():
        return {
            "path": str(path),
            "files": [file_identity(p, digest) for p in sorted(path.iterdir()) if p.is_file()],
        }
    stat = path.stat()
    identity = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if digest:
        identity["sha256"] = _digest(str(path), stat.st_size, stat.st_mtime_ns)
    return identity


def model_record(
    checkpoint: str | Path | None,
    version: str | None,
    clip_weights: str | Path | None,
    settings,
    engine: str | None = None,
    device: str | None = None,
    calibration: str | Path | None = None,
) -> dict[str, Any]:
    """The model part of a request record: the checkpoint (digest), its registry version, the CLIP
    weights replacing the stored ones, the ``separate`` settings (a SeparateConfig) that change
    the output (all but :data:`NOT_OUTPUT_SETTINGS`), with ``engine`` when one is forced, the
    ``device`` it runs on as resolved (``cpu``, ``cuda``: numerics differ), and with the onnx-int8
    engine the clip folder ``calibration`` its int8 ranges are calibrated on (None otherwise)."""
    chosen = dataclasses.asdict(settings)
    chosen["engine"] = engine or chosen["engine"]
    calibrated = chosen["engine"] == INT8_ENGINE and calibration is not None
    return {
        "checkpoint": None if checkpoint is None else file_identity(checkpoint, digest=True),
        "version": version,
        "clip_weights": None if clip_weights is None else file_identity(clip_weights),
        "device": device,
        "calibration": calibration_identity(calibration) if calibrated else None,
        "settings": {k: v for k, v in chosen.items() if k not in NOT_OUTPUT_SETTINGS},
    }


def calibration_identity(folder: str | Path) -> dict[str, Any]:
    """An int8 calibration clip folder: its resolved path and its top-level files (the clip
    manifest among them, :func:`file_identity`); the path alone when it is no folder (loading the
    int8 separator then says why)."""
    path = Path(folder).resolve()
    return file_identity(path) if path.is_dir() else {"path": str(path)}


def image_digest(image) -> str | None:
    """SHA-256 of an image query: the file's bytes (a path), or the pixels (a PIL.Image)."""
    if image is None:
        return None
    if isinstance(image, (str, Path)):
        return file_digest(image)
    header = f"{image.mode} {image.size}".encode()
    return hashlib.sha256(header + image.tobytes()).hexdigest()


def request_record(
    source: str | Path,
    model: Mapping[str, Any] | None,
    output: OutputFormat,
    query: str | None = None,
    image=None,
    queries: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What separating ``source`` with these arguments writes, as JSON-able values: two equal
    records give the same outputs. ``model`` is :func:`model_record`'s (None: built in memory)."""
    texts = [query] if queries is None else list(queries)
    return {
        "record": RECORD_VERSION,
        "input": file_identity(source),
        "queries": [t.strip() if isinstance(t, str) else t for t in texts],
        "image": image_digest(image),
        "model": None if model is None else dict(model),
        "format": output.format,
        # the sample format written, not the --bits asked: the default (the input's depth) and
        # the same depth named explicitly give the same files
        "subtype": output.subtype_for(input_subtype(Path(source))),
    }


# record keys -> what differs, in the order a reason names it
_OLDER = "an older version of clipsep"
_RECORD_PARTS = (
    ("input", "another version of the input file"),
    ("queries", "other queries"),
    ("image", "another image"),
    ("format", "another format"),
    ("subtype", "another bit depth"),
)
# keys of the model part -> what differs (the rest of it differing: "another model")
_MODEL_PARTS = (
    ("settings", "other separate settings"),
    ("device", "another device"),
    ("calibration", "another int8 calibration clip folder"),
)


def why_separate_again(folder: Path, wanted: Mapping[str, Any]) -> str | None:
    """None when ``folder/separation.json`` records the request ``wanted`` (its outputs answer
    it), else why the outputs there must be made again (one line for the report)."""
    try:
        found = json.loads((folder / SIDECAR).read_text())
    except FileNotFoundError:
        return f"outputs have no {SIDECAR} (an older version made them): separated again"
    except (OSError, ValueError):
        return f"unreadable {SIDECAR}: separated again"
    if found == wanted:
        return None
    if found.get("record") != wanted.get("record"):  # another layout: its parts do not compare
        parts = [_OLDER]
    else:
        found_model, wanted_model = found.get("model") or {}, wanted.get("model") or {}
        parts = _differing(found, wanted, _RECORD_PARTS)
        if _path_of(found.get("input")) != _path_of(wanted.get("input")):  # not a new version
            parts[parts.index(_RECORD_PARTS[0][1])] = "another input file"
        parts += _differing(found_model, wanted_model, _MODEL_PARTS)
        rest = {*found_model, *wanted_model} - {key for key, _ in _MODEL_PARTS}
        if any(found_model.get(key) != wanted_model.get(key) for key in rest):
            parts.append("another model")
    return f"outputs were made with {' and '.join(parts or ['another request'])}: separated again"


def _path_of(identity: Any) -> Any:
    """The ``path`` of a file identity (:func:`file_identity`), None for anything else."""
    return identity.get("path") if isinstance(identity, Mapping) else None


def _differing(found: Mapping[str, Any], wanted: Mapping[str, Any], named) -> list[str]:
    """The texts of the ``named`` (key, text) pairs whose key differs in the two records."""
    return [text for key, text in named if found.get(key) != wanted.get(key)]


def write_record(folder: Path, record: Mapping[str, Any]) -> Path:
    """Write ``folder/separation.json`` atomically (call it last, when every output is there)."""
    return write_json(folder / SIDECAR, dict(record))
