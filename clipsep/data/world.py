"""The embedded world: synthetic instrument videos that look, to the pipeline, like real ones.

``render_world(cfg, out_dir)`` writes (layout in docs/CONTRACTS.md, "World"):
    videos/{train,val,test,interference}/<video_id>.mp4   H.264 + AAC 44.1 kHz mono
    ground_truth.csv                                        labels, off-screen sound, melody ids
    captions/images/<id>.png + captions/captions.csv       captioned pictures for the tiny CLIP
    world.json                                              config hash + summary (the stamp)
Video ids (``w00042``) are assigned after a seeded shuffle, so neither the name, the order nor the
file's metadata reveals a label; only ``ground_truth.csv`` does, and only evaluation reads it.
Everything is a pure function of the config: video ``i`` draws from the stream ``seed + i``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from clipsep.config import WorldConfig
from clipsep.data import world_sound as ws
from clipsep.data.world_pictures import Scene
from clipsep.env import headless_pyplot
from clipsep.errors import BadInputError
from clipsep.fileio import atomic_path, write_csv, write_text

log = logging.getLogger(__name__)

GENERATOR_VERSION = 5  # bump when the rendering changes, so stamped worlds are re-rendered
SPLITS = ("train", "val", "test", "interference")
STAMP = "world.json"
GROUND_TRUTH_COLUMNS = (
    "video_id",
    "video",
    "split",
    "labels",
    "offscreen",
    "melody_id",
    "duration_s",
)
CAPTION_TEMPLATES = (
    "a photo of {a} {label}.",
    "a drawing of the {label}.",
    "{a} {label} on a cluttered background.",
    "a picture of someone playing the {label}.",
    "a close-up of {a} {label}.",
    "the {label}, a musical instrument.",
    "a blurry photo of {a} {label}.",
)
CAPTION_TRAIN_SHARE = 0.8
OFFSCREEN_PROBS = (0.5, 0.25, 0.25)  # another instrument, drums, noise (ws.OFFSCREEN_KINDS)
PEAK_LIMIT = 0.9


@dataclass(frozen=True)
class VideoSpec:
    """Everything that decides one video; ``index`` is its position in the shuffled plan."""

    index: int
    video_id: str
    split: str
    labels: tuple[str, ...]  # on-screen (and sounding) classes
    melody_indices: tuple[int, ...]  # per on-screen class, in the split's melody stream
    offscreen: str  # '' (clean), a class name, 'drums' or 'noise'
    offscreen_melody: int  # melody index of an off-screen instrument, else -1
    duration_s: float

    @property
    def relpath(self) -> str:
        return f"{self.split}/{self.video_id}.mp4"

    @property
    def melody_id(self) -> str:
        return ";".join(f"{self.split}-{i:04d}" for i in self.melody_indices)


# --- planning --------------------------------------------------------------------------------


def _split_rows(cfg: WorldConfig, split: str, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Unshuffled rows of one split: labels, noisy flag, duration (test: clean solos only)."""
    classes = list(cfg.classes)
    if split == "interference":
        firsts = [classes[i % len(classes)] for i in range(cfg.interference_videos)]
    else:
        firsts = [c for c in classes for _ in range(cfg.videos_per_class.get(split, 0))]
    n = len(firsts)
    mixed = split in ("train", "val")
    noisy = np.full(n, split == "interference")  # test targets are clean, the pool is noisy
    if mixed:
        noisy[rng.permutation(n)[: round(cfg.noisy_share * n)]] = True
    duet = np.zeros(n, bool)
    if mixed and len(classes) > 1:
        duet[rng.permutation(n)[: round(cfg.duet_share * n)]] = True
    rows = []
    for first, is_noisy, is_duet in zip(firsts, noisy, duet):
        labels = [first] + (
            [str(rng.choice([c for c in classes if c != first]))] if is_duet else []
        )
        rows.append(
            {
                "split": split,
                "labels": tuple(labels),
                "noisy": bool(is_noisy),
                "duration_s": round(float(rng.uniform(*cfg.duration_s)), 2),
            }
        )
    return rows


def _offscreen_for(
    labels: tuple[str, ...], classes: tuple[str, ...], rng: np.random.Generator
) -> str:
    kind = ws.OFFSCREEN_KINDS[rng.choice(len(ws.OFFSCREEN_KINDS), p=OFFSCREEN_PROBS)]
    others = [c for c in classes if c not in labels]
    if kind == "instrument":
        return str(rng.choice(others)) if others else "drums"
    return kind


def plan_world(cfg: WorldConfig) -> list[VideoSpec]:
    """The world's videos in id order, a pure function of ``cfg`` (workers aside)."""
    ws.check_classes(cfg.classes)
    if cfg.image_size % 2 or cfg.image_size < 16:
        raise BadInputError(
            f"world.image_size must be even and >= 16 (H.264 4:2:0), got {cfg.image_size}"
        )
    unknown = set(cfg.videos_per_class) - {"train", "val", "test"}
    if unknown or min(cfg.videos_per_class.values(), default=0) < 0:
        raise BadInputError(
            "world.videos_per_class must map train/val/test to counts >= 0, "
            f"got {cfg.videos_per_class}"
        )
    rng = np.random.default_rng([cfg.seed, 0])
    rows = [row for split in SPLITS for row in _split_rows(cfg, split, rng)]
    next_melody = dict.fromkeys(SPLITS, 0)
    specs = []
    for index, pos in enumerate(rng.permutation(len(rows))):
        row = rows[pos]
        split, labels = row["split"], row["labels"]
        melodies = tuple(range(next_melody[split], next_melody[split] + len(labels)))
        next_melody[split] += len(labels)
        offscreen, off_melody = (
            (_offscreen_for(labels, cfg.classes, rng) if row["noisy"] else ""),
            -1,
        )
        if offscreen in cfg.classes:
            off_melody, next_melody[split] = next_melody[split], next_melody[split] + 1
        specs.append(
            VideoSpec(
                index,
                f"w{index:05d}",
                split,
                labels,
                melodies,
                offscreen,
                off_melody,
                row["duration_s"],
            )
        )
    return specs


# --- one video -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    """The parts of a video's sound, already at their mixing levels: float32 [L] each."""

    onscreen: np.ndarray
    offscreen: np.ndarray
    background: np.ndarray

    def mixture(self) -> np.ndarray:
        """Their sum, scaled down as a whole if it would clip: float32 [L]."""
        mix = self.onscreen + self.offscreen + self.background
        peak = float(np.max(np.abs(mix))) if mix.size else 0.0
        return (mix * (PEAK_LIMIT / peak) if peak > PEAK_LIMIT else mix).astype(np.float32)


def render_sources(spec: VideoSpec, cfg: WorldConfig) -> Sources:
    """One video's on-screen, off-screen and background sound at ``cfg.audio_sample_rate``."""
    sr, length = cfg.audio_sample_rate, spec.duration_s
    rng = np.random.default_rng([cfg.seed + spec.index, 1])
    onscreen = sum(
        ws.render_melody(ws.make_melody(cfg.seed, spec.split, m, length), label, length, sr)
        for label, m in zip(spec.labels, spec.melody_indices)
    )
    silence = np.zeros_like(onscreen)
    if not spec.offscreen:
        return Sources(onscreen, silence, silence)
    if spec.offscreen == "drums":
        off = ws.render_drums(rng, length, sr)
    elif spec.offscreen == "noise":
        off = ws.noise_bursts(rng, length, sr)
    else:
        melody = ws.make_melody(cfg.seed, spec.split, spec.offscreen_melody, length)
        off = ws.render_melody(melody, spec.offscreen, length, sr)
    background = ws.coloured_noise(rng, onscreen.size, exponent=float(rng.choice((1.0, 2.0))))
    return Sources(
        onscreen,
        off * ws.db_to_gain(rng.uniform(*cfg.offscreen_db)),
        background * ws.db_to_gain(rng.uniform(*cfg.background_noise_db)),
    )


def video_frames(spec: VideoSpec, cfg: WorldConfig) -> Iterator[np.ndarray]:
    """The video's pictures, uint8 [S, S, 3] each, at ``cfg.video_fps`` (only on-screen classes)."""
    scene = Scene(spec.labels, cfg.image_size, np.random.default_rng([cfg.seed + spec.index, 2]))
    for k in range(round(spec.duration_s * cfg.video_fps)):
        yield scene.frame(k / cfg.video_fps)


def rgb_to_yuv420(image: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] (H, W even) -> planar YUV 4:2:0, BT.601 limited range: uint8 [3H/2, W].

    Done here, not by swscale, so the encoder's input is fixed by numpy alone.
    """
    rgb = image.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 16 + (65.738 * r + 129.057 * g + 25.064 * b) / 256
    pooled = rgb.reshape(rgb.shape[0] // 2, 2, rgb.shape[1] // 2, 2, 3).mean(axis=(1, 3))
    r, g, b = pooled[..., 0], pooled[..., 1], pooled[..., 2]
    cb = 128 + (-37.945 * r - 74.494 * g + 112.439 * b) / 256
    cr = 128 + (112.439 * r - 94.154 * g - 18.285 * b) / 256
    chroma = np.concatenate([cb.ravel(), cr.ravel()]).reshape(-1, image.shape[1])
    planes = np.concatenate([luma, chroma], axis=0)
    return np.clip(np.round(planes), 0, 255).astype(np.uint8)


def write_mp4(
    path: Path, frames: Iterator[np.ndarray], audio: np.ndarray, fps: int, sample_rate: int
) -> None:
    """Write H.264 (yuv420p) + AAC mono to ``path`` atomically; ``audio`` is mono float32 [L].

    The sound is mono because every source is (a stereo copy only doubled the encoding time), and
    FFmpeg's ``fast`` AAC coder is used: together 4x faster than stereo ``twoloop`` (measured),
    which was over half of the world's render time.
    """
    import av

    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    mono = np.ascontiguousarray(audio.astype(np.float32)[None])
    with av.open(str(tmp), "w") as out:
        # Reproducible bytes: with x264's macroblock-tree rate control the output depended on
        # what the process had encoded before (measured); one thread keeps decisions in order.
        video = out.add_stream("libx264", rate=fps, options={"x264-params": "no-mbtree=1"})
        video.pix_fmt = "yuv420p"
        video.thread_count = 1  # the process pool runs videos in parallel instead
        sound = out.add_stream("aac", rate=sample_rate, options={"aac_coder": "fast"})
        sound.layout = "mono"
        planes = [rgb_to_yuv420(image) for image in frames]
        video.width, video.height = planes[0].shape[1], planes[0].shape[0] * 2 // 3
        for k, plane in enumerate(planes):
            picture = av.VideoFrame.from_ndarray(plane, format="yuv420p")
            picture.pts, picture.time_base = k, Fraction(1, fps)
            out.mux(video.encode(picture))
        out.mux(video.encode())
        for start in range(0, mono.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                mono[:, start : start + 1024], format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = sample_rate, start
            out.mux(sound.encode(frame))
        out.mux(sound.encode())
    os.replace(tmp, path)


def render_video(spec: VideoSpec, cfg: WorldConfig, videos_dir: Path) -> str:
    """Render one video into ``videos_dir/<split>/<id>.mp4`` unless it is already there."""
    path = videos_dir / spec.relpath
    if not path.exists():  # files only appear complete (atomic), so an existing one is finished
        write_mp4(
            path,
            video_frames(spec, cfg),
            render_sources(spec, cfg).mixture(),
            cfg.video_fps,
            cfg.audio_sample_rate,
        )
    return spec.video_id


# --- captioned pictures ----------------------------------------------------------------------


def _article(label: str) -> str:
    return "an" if label[0] in "aeiou" else "a"


def render_captions(cfg: WorldConfig, class_index: int, captions_dir: Path) -> list[dict[str, str]]:
    """Draw ``caption_images_per_class`` pictures of one class; return their captions.csv rows."""
    label, n = cfg.classes[class_index], cfg.caption_images_per_class
    rows = []
    for k in range(n):
        rng = np.random.default_rng([cfg.seed, 3, class_index, k])  # own seeds, not a video's
        template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]  # drawn first:
        moment = float(rng.uniform(0, 4))  # a resumed render skips the drawing but not these
        name = f"images/c{class_index * n + k:05d}.png"
        if not (captions_dir / name).exists():
            _save_png(Scene((label,), cfg.image_size, rng).frame(moment), captions_dir / name)
        rows.append(
            {
                "image": name,
                "caption": template.format(a=_article(label), label=label),
                "label": label,
                "split": "train" if k < CAPTION_TRAIN_SHARE * n else "test",
            }
        )
    return rows


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp)


# --- the whole world -------------------------------------------------------------------------


def config_hash(cfg: WorldConfig) -> str:
    """Hash of everything that changes the output (not ``workers``) and the generator version."""
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "workers"}
    text = json.dumps({"config": data, "version": GENERATOR_VERSION}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _prepare(out_dir: Path, digest: str) -> None:
    """Start (or resume) a render: a half-done render of another config is wiped first."""
    marker = out_dir / ".rendering.json"
    if (_read_json(marker) or {}).get("config_hash") != digest:
        for name in ("videos", "captions"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in ("ground_truth.csv", STAMP):
            (out_dir / name).unlink(missing_ok=True)
    for split in SPLITS:
        (out_dir / "videos" / split).mkdir(parents=True, exist_ok=True)
    (out_dir / "captions" / "images").mkdir(parents=True, exist_ok=True)
    write_text(marker, json.dumps({"config_hash": digest}))


def _run_task(task: tuple) -> Any:
    """One unit of pool work: ('video', spec, cfg, dir) or ('captions', class_index, cfg, dir)."""
    kind, what, cfg, where = task
    return render_video(what, cfg, where) if kind == "video" else render_captions(cfg, what, where)


def _run_all(tasks: list[tuple], workers: int) -> list[Any]:
    """Run the tasks in order (in a spawn process pool when workers > 1) with a progress bar."""
    import multiprocessing

    from clipsep.progress import bar as progress_bar

    results = []
    with progress_bar(total=len(tasks), desc="world", unit="item") as bar:
        if workers <= 1:
            outputs = map(_run_task, tasks)
        else:  # spawn: a forked copy of a parent with torch threads running can deadlock
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            outputs = pool.map(_run_task, tasks)
        try:
            for output in outputs:
                results.append(output)
                bar.update()
        finally:
            if workers > 1:
                pool.shutdown(cancel_futures=True)
    return results


def render_world(cfg: WorldConfig, out_dir: str | Path) -> dict[str, Any]:
    """Render the whole world into ``out_dir``; quick no-op when a stamp of this config exists."""
    out_dir, start = Path(out_dir), time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = config_hash(cfg)
    stamp = _read_json(out_dir / STAMP)
    if stamp and stamp.get("config_hash") == digest and (out_dir / "ground_truth.csv").is_file():
        log.info("world %s is up to date (config %s)", out_dir, digest)
        return {**stamp["summary"], "skipped": True}
    specs = plan_world(cfg)
    _prepare(out_dir, digest)
    tasks = [("captions", i, cfg, out_dir / "captions") for i in range(len(cfg.classes))]
    tasks += [
        ("video", s, cfg, out_dir / "videos") for s in sorted(specs, key=lambda s: -s.duration_s)
    ]
    log.info(
        "rendering %d videos + %d captioned pictures into %s with %d workers",
        len(specs),
        len(cfg.classes) * cfg.caption_images_per_class,
        out_dir,
        cfg.workers,
    )
    results = _run_all(tasks, cfg.workers)
    captions = [row for rows in results[: len(cfg.classes)] for row in rows]
    write_csv(
        out_dir / "captions" / "captions.csv", ("image", "caption", "label", "split"), captions
    )
    write_csv(out_dir / "ground_truth.csv", GROUND_TRUTH_COLUMNS, [_truth_row(s) for s in specs])
    summary = _summary(specs, len(captions), out_dir, time.time() - start)
    write_text(out_dir / STAMP, json.dumps({"config_hash": digest, "summary": summary}, indent=2))
    (out_dir / ".rendering.json").unlink(missing_ok=True)
    return {**summary, "skipped": False}


def _truth_row(spec: VideoSpec) -> dict[str, Any]:
    return {
        "video_id": spec.video_id,
        "video": spec.relpath,
        "split": spec.split,
        "labels": ";".join(spec.labels),
        "offscreen": spec.offscreen,
        "melody_id": spec.melody_id,
        "duration_s": spec.duration_s,
    }


def _summary(
    specs: list[VideoSpec], n_captions: int, out_dir: Path, seconds: float
) -> dict[str, Any]:
    return {
        "out_dir": str(out_dir),
        "videos": {split: sum(s.split == split for s in specs) for split in SPLITS},
        "noisy_videos": sum(bool(s.offscreen) for s in specs),
        "duet_videos": sum(len(s.labels) > 1 for s in specs),
        "video_seconds": round(sum(s.duration_s for s in specs), 1),
        "captions": n_captions,
        "seconds": round(seconds, 1),
    }


# --- the README picture ----------------------------------------------------------------------


def read_ground_truth(world_dir: str | Path) -> list[dict[str, str]]:
    """Rows of ``ground_truth.csv`` (evaluation and documentation only: it holds the labels)."""
    with (Path(world_dir) / "ground_truth.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _decode(path: Path, t: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """The frame shown at ``t`` s (uint8 [H, W, 3]) and the mono audio (float32 [L])."""
    import av

    with av.open(str(path)) as container:
        frame = next(f for f in container.decode(video=0) if f.time >= t).to_ndarray(format="rgb24")
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = [
            r.to_ndarray().ravel() for f in container.decode(audio=0) for r in resampler.resample(f)
        ]
        chunks += [r.to_ndarray().ravel() for r in resampler.resample(None)]
    return frame, np.concatenate(chunks)


def plot_world_overview(world_dir: str | Path, out_png: str | Path, n_classes: int = 10) -> Path:
    """A picture of the world: one frame per class, spectrograms of a clean and a noisy video."""
    plt = headless_pyplot()

    world_dir, rows = Path(world_dir), read_ground_truth(world_dir)
    solos = {}
    for row in sorted(rows, key=lambda r: r["split"] != "test"):  # prefer the clean test videos
        if ";" not in row["labels"]:
            solos.setdefault(row["labels"], row)
    shown = list(solos.values())[:n_classes]
    clean = next(r for r in rows if r["split"] == "test")
    noisy = next((r for r in rows if r["offscreen"] and r["offscreen"] not in ("noise", "")), None)
    noisy = noisy or next(r for r in rows if r["offscreen"])
    cols = (len(shown) + 1) // 2
    fig = plt.figure(figsize=(2.0 * cols, 6.4), dpi=72)
    grid = fig.add_gridspec(3, cols, height_ratios=(1, 1, 1.3))
    for k, row in enumerate(shown):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        ax.imshow(_decode(world_dir / "videos" / row["video"], 1.0, 16000)[0])
        ax.set_title(row["labels"], fontsize=9)
        ax.axis("off")
    bottom = grid[2, :].subgridspec(1, 2)
    for k, (row, what) in enumerate([(clean, "clean solo"), (noisy, "noisy")]):
        ax = fig.add_subplot(bottom[0, k])
        _spectrogram(ax, _decode(world_dir / "videos" / row["video"], 0.0, 16000)[1], 16000)
        extra = (
            f"\n+ off-screen {row['offscreen']} + background noise" if row["offscreen"] else "\n"
        )
        ax.set_title(f"{what}: {row['labels']}{extra}", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return out_png


def _spectrogram(ax, wave: np.ndarray, sample_rate: int) -> None:
    """Log-power spectrogram (dB) of the first 6 s on a log-frequency axis."""
    wave = wave[: 6 * sample_rate]
    ax.specgram(wave, NFFT=1024, Fs=sample_rate, noverlap=768, cmap="magma", vmin=-120)
    ax.set_yscale("symlog", linthresh=500)
    ax.set_ylim(50, sample_rate / 2)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("Hz")
