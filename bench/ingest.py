"""Benchmark: clipsep's ingest vs the paper's recipe (two ffmpeg runs per video + a resize pass).

    .venv/bin/python bench/ingest.py --n 16 --seconds 10

Makes N test videos (tests/media_factory.py; or pass --videos DIR, e.g. data/world/videos), then
times on the same machine, in the same run:
  (a) ``ingest_folder`` with ingest.workers processes (hash, decode, 16 kHz mono wav, 1-fps 224 px
      JPEGs, clip cutting, loudness, manifest) into a fresh folder;
  (b) the CLIPSep recipe, sequential like its scripts: per video
      ``ffmpeg -i v -ac 1 -ar 16000 out.wav`` and ``ffmpeg -i v -r 1 frames/%06d.jpg``, then
      preprocess.py's pass (shorter side to 224, bicubic, centre crop, save JPEG);
  (c) ``ingest_folder`` with one process (what the decoding design gains without parallelism).
Each is run --repeats times (fresh output folders) and the fastest run counts, which keeps the
ratios meaningful on a shared, loaded machine. Prints videos/s for each and the ratios a/b and c/b.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # media_factory
sys.path.insert(0, str(REPO))

from clipsep.env import apply_offline_defaults  # noqa: E402

FFMPEG = "/usr/bin/ffmpeg"


def make_videos(folder: Path, count: int, seconds: float, size: int, fps: int) -> list[Path]:
    import media_factory

    specs = [
        media_factory.VideoSpec(
            seconds=seconds, size=(size, size), fps=fps, seed=i, tone_hz=220 + 20 * i
        )
        for i in range(count)
    ]
    return [media_factory.write_video(folder / f"v{i:03d}.mp4", s) for i, s in enumerate(specs)]


def run_project(videos_dir: Path, out_dir: Path, workers: int, profile: str | None) -> float:
    """Seconds for one fresh ``ingest_folder`` run."""
    from clipsep.config import load_params
    from clipsep.data.ingest import ingest_folder

    params = load_params(REPO / "params.yaml", profile=profile)
    cfg = dataclasses.replace(params.ingest, workers=workers)
    started = time.perf_counter()
    summary = ingest_folder(videos_dir, out_dir, cfg)
    elapsed = time.perf_counter() - started
    print(
        f"    ({summary['clips']} clips, {summary['quarantined']} quarantined, "
        f"frame_size {cfg.frame_size})"
    )
    return elapsed


def run_recipe(videos: list[Path], out_dir: Path, frame_size: int) -> float:
    """Seconds for the paper's recipe over ``videos``, one after another."""
    started = time.perf_counter()
    for video in videos:
        frames = out_dir / video.stem / "frames"
        frames.mkdir(parents=True)
        quiet = [FFMPEG, "-nostdin", "-loglevel", "error", "-i", str(video)]
        audio = out_dir / video.stem / "audio.wav"
        subprocess.run(quiet + ["-ac", "1", "-ar", "16000", "-y", str(audio)], check=True)
        subprocess.run(quiet + ["-r", "1", "-y", str(frames / "%06d.jpg")], check=True)
        for picture in sorted(frames.glob("*.jpg")):
            resize_center_crop(picture, frame_size)
    return time.perf_counter() - started


def resize_center_crop(path: Path, size: int) -> None:
    """CLIPSep preprocess.py: shorter side to ``size`` (bicubic), centre crop, RGB, save back."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    image.crop((left, top, left + size, top + size)).save(path)


def main() -> None:
    apply_offline_defaults()  # before open_clip, mlflow, gradio are imported
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=16, help="number of videos to make")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each made video")
    parser.add_argument("--size", type=int, default=128, help="made videos are SIZE x SIZE pixels")
    parser.add_argument("--fps", type=int, default=8, help="frame rate of the made videos")
    parser.add_argument("--videos", type=Path, help="use this folder's *.mp4 (first N)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--profile", default=None, help="params profile for (a) and (c)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; fastest counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clipsep-bench-") as tmp:
        work = Path(tmp)
        videos_dir = work / "videos"
        if args.videos:  # a copy of the first N, so (a) and (b) read exactly the same files
            videos_dir.mkdir()
            for index, video in enumerate(sorted(args.videos.rglob("*.mp4"))[: args.n]):
                shutil.copy(video, videos_dir / f"v{index:03d}.mp4")
            videos = sorted(videos_dir.glob("*.mp4"))
        else:
            videos = make_videos(videos_dir, args.n, args.seconds, args.size, args.fps)
        report(videos_dir, videos, work, args)


def report(videos_dir: Path, videos: list[Path], work: Path, args: argparse.Namespace) -> None:
    from clipsep.config import load_params

    frame_size = load_params(REPO / "params.yaml", profile=args.profile).ingest.frame_size
    count = len(videos)
    print(f"{count} videos from {videos_dir}; {sys.platform}, workers={args.workers}")
    project, recipe, single = [], [], []
    for repeat in range(args.repeats):  # interleaved: a loaded machine's slow spells hit all three
        print(f"repeat {repeat + 1}/{args.repeats}")
        print("(a) clipsep ingest_folder, worker processes:")
        project.append(
            run_project(videos_dir, work / f"clips_a{repeat}", args.workers, args.profile)
        )
        print("(b) paper recipe: ffmpeg wav + ffmpeg -r 1 jpg + PIL resize/centre-crop, sequential")
        recipe.append(run_recipe(videos, work / f"recipe{repeat}", frame_size))
        print("(c) clipsep ingest_folder, one process:")
        single.append(run_project(videos_dir, work / f"clips_c{repeat}", 1, args.profile))
    project, recipe, single = min(project), min(recipe), min(single)
    rows = [
        ("(a) clipsep, %d workers" % args.workers, project),
        ("(b) two-ffmpeg recipe", recipe),
        ("(c) clipsep, 1 process", single),
    ]
    for name, seconds in rows:
        print(f"{name:28s} {seconds:7.2f} s  {count / seconds:7.2f} videos/s")
    print(
        f"ratio a/b: {recipe / project:.2f}x   ratio c/b: {recipe / single:.2f}x   (goal a/b >= 3x)"
    )


if __name__ == "__main__":
    main()
