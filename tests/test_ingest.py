"""Video ingestion: clips, manifest, quarantine of broken files, incremental and killed runs."""

from __future__ import annotations

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

import media_factory as media
from conftest import REPO, tiny_params_at
from clipsep import stages
from clipsep.config import IngestConfig
from clipsep.data.ingest import MANIFEST_COLUMNS, ingest_folder, plan_clips, split_of
from clipsep.errors import BadInputError

SMALL_MAX_PIXELS = 30000  # the fault corpus's 256x128 "huge" video exceeds this; 64x48 does not


def tiny_ingest(root: Path, **changes) -> IngestConfig:
    return dataclasses.replace(tiny_params_at(root).ingest, **{"workers": 1, **changes})


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    """One ingest (2 worker processes): faults, every container, nested folders, a long video."""
    root = tmp_path_factory.mktemp("corpus")
    source = root / "videos"
    expected = media.write_fault_corpus(source / "train" / "cello")
    media.write_container_zoo(source / "flute" / "more")
    media.write_video(source / "val" / "long.mp4", media.VideoSpec(seconds=20.0))
    media.write_video(source / "test" / "good.mp4", media.VideoSpec(seconds=6.5, tone_hz=330))
    cfg = tiny_ingest(root, workers=2, max_pixels=SMALL_MAX_PIXELS)
    summary = ingest_folder(source, root / "clips", cfg)
    return root / "clips", cfg, summary, expected


def test_each_broken_file_is_quarantined_with_its_reason(corpus_run):
    clips, _, summary, expected = corpus_run
    quarantine = read_csv(clips / "quarantine.csv")
    reasons = {Path(row["source"]).name: row["reason"] for row in quarantine}
    assert reasons == expected
    assert summary["quarantined"] == len(expected)
    assert summary["quarantined_by_reason"] == {reason: 1 for reason in expected.values()}
    manifest_sources = {row["source"] for row in read_csv(clips / "manifest.csv")}
    assert not any(source.startswith("train/cello/") for source in manifest_sources)


def test_every_container_and_nested_folder_is_ingested(corpus_run):
    clips, _, summary, _ = corpus_run
    rows = read_csv(clips / "manifest.csv")
    assert {Path(r["source"]).suffix for r in rows} == {".mkv", ".webm", ".avi", ".mov", ".mp4"}
    zoo = [r for r in rows if r["source"].startswith("flute/more/")]
    assert len(zoo) == 4 and {r["label"] for r in zoo} == {"more"}
    assert summary["videos"] == 16 and summary["processed"] == 16 and summary["clips"] == len(rows)


def test_clip_files_match_the_manifest(corpus_run):
    clips, cfg, _, _ = corpus_run
    rows = read_csv(clips / "manifest.csv")
    assert list(rows[0]) == list(MANIFEST_COLUMNS)
    for row in rows:
        info = soundfile.info(clips / row["audio_path"])
        assert (info.samplerate, info.channels) == (16000, 1)
        assert info.frames == round(float(row["duration_s"]) * 16000)
        pictures = sorted((clips / row["frames_dir"]).glob("*.jpg"))
        expected_names = [f"{i:06d}.jpg" for i in range(1, int(row["n_frames"]) + 1)]
        assert [p.name for p in pictures] == expected_names
        assert Image.open(pictures[0]).size == (cfg.frame_size, cfg.frame_size)
        assert float(row["rms_db"]) > cfg.silence_db
    presplit = {r["split"] for r in rows if r["source"].startswith(("val/", "test/"))}
    assert presplit == {"val", "test"}
    assert not (clips / ".tmp").exists()


def test_long_video_is_cut_into_clips_with_the_right_pictures(corpus_run):
    clips, cfg, _, _ = corpus_run
    rows = [r for r in read_csv(clips / "manifest.csv") if r["source"] == "val/long.mp4"]
    assert [float(r["start_s"]) for r in rows] == [0.0, 6.0, 12.0]  # the 2-s tail is < min_seconds
    spec = media.VideoSpec(seconds=20.0)
    for row in rows:
        pictures = sorted((clips / row["frames_dir"]).glob("*.jpg"))
        for number, picture in enumerate(pictures, start=1):
            t = float(row["start_s"]) + number - 0.5  # contract: frame i shows start + (i - 0.5) s
            grey = np.asarray(Image.open(picture).convert("L"))[cfg.frame_size // 2 :, :].mean()
            assert abs(grey - media.grey_level(t, spec.seconds)) < 4, (row["clip_id"], number)


def test_plan_keeps_tails_only_when_long_enough(tmp_path):
    cfg = tiny_ingest(tmp_path, clip_seconds=10.0, hop_seconds=5.0, min_seconds=4.0)
    assert plan_clips(22.0, cfg) == [(0.0, 10.0), (5.0, 10.0), (10.0, 10.0), (15.0, 7.0)]
    assert plan_clips(13.0, cfg) == [(0.0, 10.0), (5.0, 8.0)]
    assert plan_clips(3.0, cfg) == []
    assert len(plan_clips(180.0, tiny_ingest(tmp_path, clip_seconds=10.0, hop_seconds=10.0))) == 18


def test_split_is_deterministic_from_the_hash():
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    assert split_of("val/x.mp4", "f" * 64, fractions) == "val"
    hashes = [f"{i * 2654435761 % 2**32:08x}" + "0" * 56 for i in range(400)]
    draws = [split_of(f"a/{i}.mp4", h, fractions) for i, h in enumerate(hashes)]
    assert draws == [split_of(f"b/{i}.mp4", h, fractions) for i, h in enumerate(hashes)]
    assert 0.7 < draws.count("train") / 400 < 0.9


def test_rerun_skips_unchanged_picks_up_new_and_drops_removed(tmp_path):
    source, out = tmp_path / "videos", tmp_path / "clips"
    first = media.write_video(source / "a.mp4", media.VideoSpec(seconds=6.5, seed=1))
    media.write_video(source / "b.mp4", media.VideoSpec(seconds=6.5, seed=2))
    cfg = tiny_ingest(tmp_path)
    assert ingest_folder(source, out, cfg)["processed"] == 2
    again = ingest_folder(source, out, cfg)
    assert (again["processed"], again["skipped_unchanged"], again["clips"]) == (0, 2, 2)
    media.write_video(source / "c.mkv", media.VideoSpec(seconds=6.5, seed=3))
    old_clip = read_csv(out / "manifest.csv")[0]
    media.write_video(first, media.VideoSpec(seconds=6.5, seed=4))  # same name, new content
    (source / "b.mp4").unlink()
    third = ingest_folder(source, out, cfg)
    # removed: b's content and a's old content
    assert (third["processed"], third["skipped_unchanged"], third["removed_sources"]) == (2, 0, 2)
    rows = read_csv(out / "manifest.csv")
    assert sorted(r["source"] for r in rows) == ["a.mp4", "c.mkv"]
    assert old_clip["clip_id"] not in {r["clip_id"] for r in rows}
    assert not (out / old_clip["audio_path"]).exists() and len(list((out / "audio").iterdir())) == 2


def test_changed_settings_invalidate_every_clip(tmp_path):
    source, out = tmp_path / "videos", tmp_path / "clips"
    media.write_video(source / "a.mp4", media.VideoSpec(seconds=6.5))
    ingest_folder(source, out, tiny_ingest(tmp_path))
    summary = ingest_folder(source, out, tiny_ingest(tmp_path, audio_format="flac", frame_size=32))
    assert summary["processed"] == 1 and summary["removed_files"] == 1  # the old .wav
    row = read_csv(out / "manifest.csv")[0]
    assert row["audio_path"].endswith(".flac")
    assert soundfile.info(out / row["audio_path"]).samplerate == 16000
    assert Image.open(out / row["frames_dir"] / "000001.jpg").size == (32, 32)


def test_labels_csv_and_duplicates(tmp_path):
    source = tmp_path / "videos"
    media.write_video(source / "x" / "one.mp4", media.VideoSpec(seconds=6.5))
    (source / "z_copy.mp4").write_bytes((source / "x" / "one.mp4").read_bytes())
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nx/one.mp4,violin\n")
    summary = ingest_folder(source, tmp_path / "clips", tiny_ingest(tmp_path), labels_csv=labels)
    assert [r["label"] for r in read_csv(tmp_path / "clips" / "manifest.csv")] == ["violin"]
    quarantine = read_csv(tmp_path / "clips" / "quarantine.csv")
    assert [(q["source"], q["reason"]) for q in quarantine] == [("z_copy.mp4", "duplicate")]
    assert summary["quarantined_by_reason"] == {"duplicate": 1}
    labels.write_text("file,name\n")
    with pytest.raises(BadInputError, match="path,label"):
        ingest_folder(source, tmp_path / "clips", tiny_ingest(tmp_path), labels_csv=labels)


def test_bad_source_folders_raise_clear_errors(tmp_path):
    with pytest.raises(BadInputError, match="not a folder"):
        ingest_folder(tmp_path / "missing", tmp_path / "clips", tiny_ingest(tmp_path))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no videos here")
    with pytest.raises(BadInputError, match="no videos"):
        ingest_folder(tmp_path / "empty", tmp_path / "clips", tiny_ingest(tmp_path))


def test_a_sources_files_that_are_not_videos_are_named_in_one_line(tmp_path, caplog):
    """As `clipsep separate` does for a folder (one walk, clipsep.audio_io.walk_media): stray files
    are named, hidden ones, the output folder inside the source and the labels CSV are not."""
    import logging

    from clipsep.data.ingest import find_videos

    source = tmp_path / "videos"
    (source / "train" / "clips").mkdir(parents=True)
    for name in ("a.mp4", "train/B.MKV", "notes.txt", "train/cover.jpg", "train/x.wav"):
        (source / name).write_bytes(b"the walk goes by the suffix")
    for name in (".DS_Store", "labels.csv", "train/clips/manifest.csv", "train/._a.mp4"):
        (source / name).write_bytes(b"not named")
    caplog.set_level(logging.INFO, logger="clipsep")
    found = find_videos(source, source / "train" / "clips", known=[source / "labels.csv"])
    assert found == [source / "a.mp4", source / "train" / "B.MKV"]
    assert [r.getMessage() for r in caplog.records] == [
        f"ingest: ignored 3 files that are not videos under {source}: "
        "notes.txt, train/cover.jpg, train/x.wav"
    ]


KILLABLE_RUN = """
import dataclasses, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import tiny_params_at
from clipsep.data.ingest import ingest_folder
cfg = dataclasses.replace(tiny_params_at(Path({root!r})).ingest, workers=2)
ingest_folder(Path({source!r}), Path({out!r}), cfg)
"""


def test_killed_run_leaves_nothing_a_rerun_would_trust(tmp_path):
    source = tmp_path / "videos"
    for index in range(6):
        media.write_video(source / f"v{index}.mp4", media.VideoSpec(seconds=30.0, seed=index))
    reference = ingest_folder(source, tmp_path / "reference", tiny_ingest(tmp_path))
    out = tmp_path / "killed"
    code = KILLABLE_RUN.format(
        tests=str(REPO / "tests"), root=str(tmp_path), source=str(source), out=str(out)
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], start_new_session=True, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while not (out / "audio").is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # the run and its worker processes, mid-write
    assert process.wait() == -signal.SIGKILL  # killed mid-run, not after it finished
    (out / "audio" / "bogus_000.wav").parent.mkdir(parents=True, exist_ok=True)
    (out / "audio" / "bogus_000.wav").write_bytes(b"half")  # a file no run recorded
    summary = ingest_folder(source, out, tiny_ingest(tmp_path))
    reference_manifest = (tmp_path / "reference" / "manifest.csv").read_text()
    assert (out / "manifest.csv").read_text() == reference_manifest
    assert summary["clips"] == reference["clips"] == 6 * 5
    rows = read_csv(out / "manifest.csv")
    audio_files = sorted(p.name for p in (out / "audio").iterdir())
    assert audio_files == sorted(Path(r["audio_path"]).name for r in rows)
    assert not (out / ".tmp").exists()


def test_ingest_stage_reads_params(tmp_path):
    media.write_video(tmp_path / "in" / "violin" / "a.mov", media.VideoSpec(seconds=6.5))
    params = tiny_params_at(tmp_path, **{"ingest.source": "in", "ingest.workers": 1})
    assert stages.ingest(params)["clips"] == 1
    assert read_csv(params.path("clips") / "manifest.csv")[0]["label"] == "violin"
    (tmp_path / "labels.csv").write_text("path,label\nviolin/a.mov,viola\n")
    relabelled = tiny_params_at(
        tmp_path, **{"ingest.source": "in", "ingest.labels_csv": "labels.csv"}
    )
    assert stages.ingest(relabelled)["skipped_unchanged"] == 1  # labels do not touch the clips
    assert read_csv(params.path("clips") / "manifest.csv")[0]["label"] == "viola"
