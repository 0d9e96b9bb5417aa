"""Turn a folder of videos into clips: 16 kHz mono audio, 1-fps frames and a manifest.

Layout under ``out_dir`` (see docs/CONTRACTS.md, "Clips"):
    audio/<clip_id>.wav|flac, frames/<clip_id>/000001.jpg ..., manifest.csv, quarantine.csv,
    summary.json, state.json (per source hash: its clips, so a re-run skips unchanged files).

Each source is decoded once by a worker process (:mod:`clipsep.data.media`), written into a private
tmp folder and renamed into place; the parent records it in the state only after that, and rewrites
manifest/quarantine/state atomically every few seconds, so a killed run keeps its finished work and
leaves nothing half-written that a later run would trust. Unusable files go to the quarantine list
with a reason; they never crash the stage and never become zero-filled examples.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from clipsep.audio_io import VIDEO_SUFFIXES, listed, walk_media
from clipsep.config import IngestConfig
from clipsep.errors import BadInputError
from clipsep.fileio import file_digest, write_csv, write_json, write_text

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test", "interference")
MANIFEST_COLUMNS = (
    "clip_id",
    "source",
    "source_hash",
    "split",
    "start_s",
    "duration_s",
    "audio_path",
    "frames_dir",
    "n_frames",
    "sample_rate",
    "rms_db",
    "label",
)
QUARANTINE_COLUMNS = ("source", "source_hash", "reason", "detail")
# The ingest settings that change a clip's content; split/label/workers only change the manifest.
CONTENT_KEYS = (
    "sample_rate",
    "audio_format",
    "fps",
    "frame_size",
    "clip_seconds",
    "hop_seconds",
    "min_seconds",
    "max_pixels",
    "silence_db",
)
STATE_VERSION = 1
FLUSH_SECONDS = 5.0
TMP_DIR = ".tmp"
UNKNOWN_DURATION_S = 6 * 3600.0  # plan pictures this far when a header gives no duration


@dataclass(frozen=True)
class SourceFile:
    """One input video: its path relative to the source folder and its content hash."""

    relative: str
    path: Path
    sha256: str


@dataclass
class SourceResult:
    """What one source produced: clip rows (without source/split/label) and quarantine entries."""

    clips: list[dict[str, Any]]
    quarantine: list[dict[str, str]]  # {reason, detail}


# --- public entry point --------------------------------------------------------------------------


def ingest_folder(
    source: Path, out_dir: Path, cfg: IngestConfig, labels_csv: Path | None = None
) -> dict:
    """Ingest every video under ``source`` into ``out_dir``; returns the summary.json dict."""
    started = time.perf_counter()
    source, out_dir = Path(source).resolve(), Path(out_dir).resolve()
    paths = find_videos(source, exclude=out_dir, known=[labels_csv] if labels_csv else [])
    labels = read_labels(labels_csv, source) if labels_csv else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / TMP_DIR, ignore_errors=True)  # leftovers of a killed run: never trusted
    state = load_state(out_dir, cfg)
    with _worker_pool(cfg.workers) as pool:
        files = hash_files(paths, source, pool)
        todo, duplicates = _plan_work(files, state, out_dir, cfg)
        book = _Bookkeeper(out_dir, cfg, files, labels, state, duplicates)
        for result_hash, result in _run_sources(todo, out_dir, cfg, pool):
            book.record(result_hash, result)
    book.flush()
    removed = remove_orphans(out_dir, book.manifest_rows())
    summary = book.summary(len(todo), removed, time.perf_counter() - started)
    write_json(out_dir / "summary.json", summary)
    log.info(
        "ingest: %d videos (%d new/changed, %d unchanged) -> %d clips, %d quarantined in %.1f s",
        summary["videos"],
        summary["processed"],
        summary["skipped_unchanged"],
        summary["clips"],
        summary["quarantined"],
        summary["seconds"],
    )
    return summary


# --- finding, hashing, labelling ---------------------------------------------------------------


def find_videos(
    source: Path, exclude: Path | None = None, known: Sequence[Path] = ()
) -> list[Path]:
    """Every video file under ``source``, sorted (:func:`clipsep.audio_io.walk_media`: nested,
    by suffix, hidden entries and the folder ``exclude`` left out); its other files, but the
    ``known`` ones (a labels CSV kept there), are named in one log line."""
    if not source.is_dir():
        raise BadInputError(f"ingest source {source} is not a folder of videos")
    found, others, _ = walk_media(source, VIDEO_SUFFIXES, exclude)
    if not found:
        raise BadInputError(f"no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) found under {source}")
    known = {Path(p).resolve() for p in known}
    others = [p.relative_to(source) for p in others if p.resolve() not in known]
    if others:
        files = (
            "1 file that is not a video"
            if len(others) == 1
            else f"{len(others)} files that are not videos"
        )
        log.info("ingest: ignored %s under %s: %s", files, source, listed(others))
    return found


def hash_files(paths: list[Path], source: Path, pool) -> list[SourceFile]:
    """Hash every file (in the worker pool when there is one)."""
    hashes = pool.map(file_digest, paths, chunksize=8) if pool else map(file_digest, paths)
    return [SourceFile(p.relative_to(source).as_posix(), p, h) for p, h in zip(paths, hashes)]


def read_labels(labels_csv: Path, source: Path) -> dict[str, str]:
    """{path relative to source: label} from a CSV with columns ``path,label``."""
    labels_csv = Path(labels_csv)
    if not labels_csv.is_file():
        raise BadInputError(f"labels CSV {labels_csv} does not exist")
    with labels_csv.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise BadInputError(
                f"labels CSV {labels_csv} needs the columns path,label (found {reader.fieldnames})"
            )
        return {Path(row["path"]).as_posix(): row["label"].strip() for row in reader}


def split_of(relative: str, sha256: str, fractions: dict[str, float]) -> str:
    """The first folder when it names a split, else a deterministic draw from the content hash."""
    first = relative.split("/")[0]
    if "/" in relative and first in SPLIT_NAMES:
        return first
    draw = int(sha256[:8], 16) / 2**32
    total = 0.0
    for name, share in fractions.items():
        total += share
        if draw < total:
            return name
    return list(fractions)[-1]


def label_of(relative: str, labels: dict[str, str]) -> str:
    """The CSV label, else the parent folder name when that is not a split name, else ''."""
    if relative in labels:
        return labels[relative]
    parts = relative.split("/")
    parent = parts[-2] if len(parts) >= 2 else ""
    return "" if parent in SPLIT_NAMES else parent


# --- clip planning and the per-source work (runs in worker processes) --------------------------


def plan_clips(duration: float, cfg: IngestConfig) -> list[tuple[float, float]]:
    """(start_s, length_s) of each clip: full clips every hop, plus one tail >= min_seconds."""
    clips, start, eps = [], 0.0, 1e-6
    while start + cfg.clip_seconds <= duration + eps:
        clips.append((start, cfg.clip_seconds))
        start = round(start + cfg.hop_seconds, 6)
    if start < duration and duration - start >= cfg.min_seconds - eps:
        clips.append((start, round(duration - start, 6)))
    return clips


def picture_times(start: float, length: float, fps: float) -> list[float]:
    """Times of the clip's pictures: frame i (1-based) shows t = start + (i - 0.5) / fps."""
    count = int(length * fps + 1e-6)
    return [round(start + (i - 0.5) / fps, 6) for i in range(1, count + 1)]


def clip_id_of(sha256: str, index: int) -> str:
    return f"{sha256[:12]}_{index:03d}"


def process_source(path: Path, sha256: str, out_dir: Path, cfg: IngestConfig) -> SourceResult:
    """Decode one file and write its clips; unusable input comes back as quarantine entries."""
    from clipsep.data.media import UnusableMedia, decode_media

    def wanted_times(declared: float | None) -> list[float]:
        plan = plan_clips(declared or UNKNOWN_DURATION_S, cfg)
        return sorted({t for start, length in plan for t in picture_times(start, length, cfg.fps)})

    try:
        threads = 1 if cfg.workers > 1 else 0  # processes already share the cores
        media = decode_media(
            path, cfg.sample_rate, cfg.frame_size, cfg.max_pixels, wanted_times, threads
        )
        plan = plan_clips(min(media.duration_s, media.declared_s or UNKNOWN_DURATION_S), cfg)
        if not plan:
            raise UnusableMedia(
                "too_short", f"{media.duration_s:.2f} s < ingest.min_seconds={cfg.min_seconds}"
            )
        return _write_clips(media, plan, sha256, out_dir, cfg)
    except UnusableMedia as bad:
        return SourceResult([], [{"reason": bad.reason, "detail": bad.detail}])
    except Exception as err:  # a bug or an exotic file: quarantine it visibly, never kill the stage
        log.exception("ingest: unexpected failure on %s", path)
        return SourceResult([], [{"reason": "error", "detail": f"{type(err).__name__}: {err}"}])


def _write_clips(
    media, plan: list[tuple[float, float]], sha256: str, out_dir: Path, cfg: IngestConfig
) -> SourceResult:
    """Write every non-silent clip into a private tmp folder, then rename each into place."""
    staging = out_dir / TMP_DIR / f"{sha256[:12]}-{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=True)
    clips, quarantine = [], []
    for index, (start, length) in enumerate(plan):
        clip_id = clip_id_of(sha256, index)
        first = int(round(start * cfg.sample_rate))
        wave = _exact_length(media.audio[first:], int(round(length * cfg.sample_rate)))
        rms_db = float(20 * np.log10(np.sqrt(np.mean(np.square(wave, dtype=np.float64))) + 1e-12))
        if rms_db < cfg.silence_db:
            quarantine.append(
                {
                    "reason": "silent",
                    "detail": f"clip {clip_id} at {start:.1f} s: "
                    f"{rms_db:.1f} dBFS < ingest.silence_db={cfg.silence_db}",
                }
            )
            continue
        times = picture_times(start, length, cfg.fps)
        _stage_clip(staging, clip_id, wave, [media.pictures[t] for t in times], cfg)
        clips.append(
            {
                "clip_id": clip_id,
                "source_hash": sha256,
                "start_s": round(start, 4),
                "duration_s": round(length, 4),
                "audio_path": f"audio/{clip_id}.{cfg.audio_format}",
                "frames_dir": f"frames/{clip_id}",
                "n_frames": len(times),
                "sample_rate": cfg.sample_rate,
                "rms_db": round(rms_db, 2),
            }
        )
    for clip in clips:
        _move_into_place(staging, clip, out_dir)
    shutil.rmtree(staging, ignore_errors=True)
    return SourceResult(clips, quarantine)


def _exact_length(wave: np.ndarray, length: int) -> np.ndarray:
    """Crop to ``length``; pad only the few samples lost to codec rounding (the caller checked)."""
    if wave.size >= length:
        return wave[:length]
    if length - wave.size > 0.05 * length:
        raise RuntimeError(f"audio ends {length - wave.size} samples early")  # a planning bug
    return np.pad(wave, (0, length - wave.size))


def _stage_clip(
    staging: Path, clip_id: str, wave: np.ndarray, jpegs: list[bytes], cfg: IngestConfig
) -> None:
    import soundfile

    subtype = "FLOAT" if cfg.audio_format == "wav" else "PCM_24"  # FLAC has no float samples
    soundfile.write(
        staging / f"{clip_id}.{cfg.audio_format}", wave, cfg.sample_rate, subtype=subtype
    )
    frames = staging / clip_id
    frames.mkdir()
    for number, data in enumerate(jpegs, start=1):
        (frames / f"{number:06d}.jpg").write_bytes(data)


def _move_into_place(staging: Path, clip: dict[str, Any], out_dir: Path) -> None:
    """Rename the staged audio file and frames folder to their final names (replacing old ones)."""
    audio_target = out_dir / clip["audio_path"]
    frames_target = out_dir / clip["frames_dir"]
    audio_target.parent.mkdir(parents=True, exist_ok=True)
    frames_target.parent.mkdir(parents=True, exist_ok=True)
    if frames_target.exists():  # from a run killed before it was recorded
        shutil.rmtree(frames_target)
    os.replace(staging / frames_target.name, frames_target)
    os.replace(staging / audio_target.name, audio_target)


# --- orchestration ------------------------------------------------------------------------------


class _worker_pool:
    """A process pool for ``workers`` > 1, else None (everything runs in this process)."""

    def __init__(self, workers: int) -> None:
        import clipsep.data.media  # noqa: F401  (imported once here, inherited by forked workers)

        self.pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None

    def __enter__(self):
        return self.pool

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _plan_work(
    files: list[SourceFile], state: dict, out_dir: Path, cfg: IngestConfig
) -> tuple[list[SourceFile], dict[str, str]]:
    """Sources to (re)process, and {relative path: first path with the same content}."""
    todo, first_with_hash, duplicates = [], {}, {}
    for item in files:
        if item.sha256 in first_with_hash:
            duplicates[item.relative] = first_with_hash[item.sha256]
            continue
        first_with_hash[item.sha256] = item.relative
        if not _state_entry_intact(state["sources"].get(item.sha256), out_dir):
            todo.append(item)
    return todo, duplicates


def _state_entry_intact(entry: dict | None, out_dir: Path) -> bool:
    if entry is None:
        return False
    return all(
        (out_dir / c["audio_path"]).is_file() and (out_dir / c["frames_dir"]).is_dir()
        for c in entry["clips"]
    )


def _run_sources(
    todo: list[SourceFile], out_dir: Path, cfg: IngestConfig, pool
) -> Iterator[tuple[str, SourceResult]]:
    """Process sources (in parallel when there is a pool), yielding as each finishes, with a bar."""
    from clipsep.progress import bar as progress_bar

    with progress_bar(total=len(todo), desc="ingest", unit="video", hidden=not todo) as bar:
        if pool is None:
            results: Iterable = (
                (f.sha256, process_source(f.path, f.sha256, out_dir, cfg)) for f in todo
            )
        else:
            futures = {
                pool.submit(process_source, f.path, f.sha256, out_dir, cfg): f.sha256 for f in todo
            }
            results = ((futures[done], done.result()) for done in as_completed(futures))
        for item in results:
            bar.update(1)
            yield item


class _Bookkeeper:
    """Holds the state, turns it into manifest/quarantine rows and writes them atomically."""

    def __init__(
        self,
        out_dir: Path,
        cfg: IngestConfig,
        files: list[SourceFile],
        labels: dict[str, str],
        state: dict,
        duplicates: dict[str, str],
    ) -> None:
        self.out_dir, self.cfg, self.files, self.labels = out_dir, cfg, files, labels
        self.duplicates = duplicates
        current = {f.sha256 for f in files}
        self.removed_sources = sorted(h for h in state["sources"] if h not in current)
        kept = {h: entry for h, entry in state["sources"].items() if h in current}
        self.state = {**state, "sources": kept}
        self.last_flush = time.monotonic()

    def record(self, sha256: str, result: SourceResult) -> None:
        self.state["sources"][sha256] = asdict(result)
        if time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write manifest.csv, quarantine.csv and state.json (each atomically)."""
        write_csv(
            self.out_dir / "manifest.csv",
            MANIFEST_COLUMNS,
            self.manifest_rows(),
            extrasaction="ignore",
        )
        write_csv(
            self.out_dir / "quarantine.csv",
            QUARANTINE_COLUMNS,
            self.quarantine_rows(),
            extrasaction="ignore",
        )
        write_text(self.out_dir / "state.json", json.dumps(self.state) + "\n")
        self.last_flush = time.monotonic()

    def manifest_rows(self) -> list[dict[str, Any]]:
        rows = []
        for item in self._recorded():
            split = split_of(item.relative, item.sha256, self.cfg.split_fractions)
            label = label_of(item.relative, self.labels)
            for clip in self.state["sources"][item.sha256]["clips"]:
                rows.append({**clip, "source": item.relative, "split": split, "label": label})
        return rows

    def quarantine_rows(self) -> list[dict[str, str]]:
        rows = []
        for item in self._recorded():
            for entry in self.state["sources"][item.sha256]["quarantine"]:
                rows.append({"source": item.relative, "source_hash": item.sha256, **entry})
        for relative, original in self.duplicates.items():
            sha256 = next(f.sha256 for f in self.files if f.relative == relative)
            rows.append(
                {
                    "source": relative,
                    "source_hash": sha256,
                    "reason": "duplicate",
                    "detail": f"same content as {original}",
                }
            )
        return rows

    def _recorded(self) -> list[SourceFile]:
        done = self.state["sources"]
        return [f for f in self.files if f.relative not in self.duplicates and f.sha256 in done]

    def summary(self, processed: int, removed_files: int, seconds: float) -> dict[str, Any]:
        quarantine = self.quarantine_rows()
        clips = self.manifest_rows()
        return {
            "videos": len(self.files),
            "processed": processed,
            "skipped_unchanged": len(self.files) - len(self.duplicates) - processed,
            "removed_sources": len(self.removed_sources),
            "removed_files": removed_files,
            "clips": len(clips),
            "clip_seconds_total": round(sum(c["duration_s"] for c in clips), 2),
            "splits": dict(Counter(c["split"] for c in clips)),
            "quarantined": len(quarantine),
            "quarantined_by_reason": dict(Counter(q["reason"] for q in quarantine)),
            "seconds": round(seconds, 3),
            "videos_per_s": round(processed / seconds, 3) if seconds else 0.0,
            "workers": self.cfg.workers,
        }


# --- state, cleanup and atomic files ------------------------------------------------------------


def content_config(cfg: IngestConfig) -> dict[str, Any]:
    """The ingest settings a clip's content depends on (a change invalidates every clip)."""
    return {key: getattr(cfg, key) for key in CONTENT_KEYS}


def load_state(out_dir: Path, cfg: IngestConfig) -> dict:
    """The previous run's state if it was made with the same content settings, else an empty one."""
    fresh = {"version": STATE_VERSION, "config": content_config(cfg), "sources": {}}
    path = out_dir / "state.json"
    if not path.is_file():
        return fresh
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("ingest: %s is unreadable; re-ingesting everything", path)
        return fresh
    if state.get("version") != STATE_VERSION or state.get("config") != fresh["config"]:
        log.info("ingest: settings changed since the last run; re-ingesting everything")
        return fresh
    return state


def remove_orphans(out_dir: Path, rows: list[dict[str, Any]]) -> int:
    """Delete audio files and frame folders no manifest row points to (old settings, gone files)."""
    keep = {r["audio_path"] for r in rows} | {r["frames_dir"] for r in rows}
    removed = 0
    for folder in ("audio", "frames"):
        for entry in sorted((out_dir / folder).glob("*")) if (out_dir / folder).is_dir() else []:
            if entry.relative_to(out_dir).as_posix() not in keep:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                removed += 1
    shutil.rmtree(out_dir / TMP_DIR, ignore_errors=True)
    return removed
