"""The embedded world: decodable videos, hidden labels, determinism, disjoint melodies, noise."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torchaudio
from conftest import tiny_params_at

from clipsep import stages
from clipsep.data import world_sound as ws
from clipsep.data.world import (
    GROUND_TRUTH_COLUMNS,
    SPLITS,
    config_hash,
    plan_world,
    plot_world_overview,
    read_ground_truth,
    render_sources,
    render_video,
    render_world,
)
from clipsep.errors import BadInputError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny world, rendered once through the stage function: (params, world_dir, summary)."""
    params = tiny_params_at(tmp_path_factory.mktemp("world"))
    summary = stages.world(params)
    return params, params.path("world"), summary


def _decode_audio(path: Path, rate: int = 16000) -> np.ndarray:
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [
            r.to_ndarray().ravel() for f in container.decode(audio=0) for r in resampler.resample(f)
        ]
        chunks += [r.to_ndarray().ravel() for r in resampler.resample(None)]
    return np.concatenate(chunks)


def test_videos_decode_with_both_streams(world):
    params, world_dir, summary = world
    cfg, rows = params.world, read_ground_truth(world_dir)
    assert summary["skipped"] is False and len(rows) == sum(summary["videos"].values())
    for row in rows:
        with av.open(str(world_dir / "videos" / row["video"])) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
            assert (video.width, video.height) == (cfg.image_size, cfg.image_size)
            assert audio.sample_rate == 44100 and audio.channels == 1
            duration = container.duration / 1e6
            assert cfg.duration_s[0] - 0.05 <= duration <= cfg.duration_s[1] + 0.1, row
    first = world_dir / "videos" / rows[0]["video"]
    with av.open(str(first)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == round(float(rows[0]["duration_s"]) * cfg.video_fps)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 0.5  # things move
    wave = _decode_audio(first)
    assert (
        abs(len(wave) / 16000 - float(rows[0]["duration_s"])) < 0.1
        and np.sqrt(np.mean(wave**2)) > 1e-3
    )


def test_no_label_in_names_or_metadata(world):
    params, world_dir, _ = world
    classes = [c.lower() for c in params.world.classes]
    for path in (world_dir / "videos").rglob("*"):
        assert not any(c in str(path.relative_to(world_dir)).lower() for c in classes), path
        if path.suffix != ".mp4":
            continue
        with av.open(str(path)) as container:
            tags = [dict(container.metadata)] + [dict(s.metadata) for s in container.streams]
        text = " ".join(f"{k} {v}" for tag in tags for k, v in tag.items()).lower()
        assert not any(c in text for c in classes), (path, text)
        data = path.read_bytes().lower()
        assert not any(c.encode() in data for c in classes), path


def test_ground_truth_matches_config_and_files(world):
    params, world_dir, _ = world
    cfg = params.world
    with (world_dir / "ground_truth.csv").open(newline="") as f:
        assert tuple(csv.DictReader(f).fieldnames) == GROUND_TRUTH_COLUMNS
    rows = read_ground_truth(world_dir)
    on_disk = {
        str(p.relative_to(world_dir / "videos")) for p in (world_dir / "videos").rglob("*.mp4")
    }
    assert on_disk == {r["video"] for r in rows}
    assert len({r["video_id"] for r in rows}) == len(rows)
    for split in ("train", "val", "test"):
        for label in cfg.classes:
            firsts = [r for r in rows if r["split"] == split and r["labels"].split(";")[0] == label]
            assert len(firsts) == cfg.videos_per_class[split]
    test_rows = [r for r in rows if r["split"] == "test"]
    assert all(r["offscreen"] == "" and ";" not in r["labels"] for r in test_rows)
    pool = [r for r in rows if r["split"] == "interference"]
    assert len(pool) == cfg.interference_videos and all(r["offscreen"] for r in pool)
    train = [r for r in rows if r["split"] == "train"]
    assert sum(bool(r["offscreen"]) for r in train) == round(cfg.noisy_share * len(train))
    for r in rows:
        assert r["offscreen"] not in r["labels"].split(";")
        assert r["offscreen"] in ("", "drums", "noise") or r["offscreen"] in cfg.classes


def test_world_is_deterministic(world, tmp_path):
    """Same config -> same plan and byte-identical files, even rendered in another process."""
    params, world_dir, _ = world
    specs = plan_world(params.world)
    assert specs == plan_world(params.world)
    for spec in [s for s in specs if s.offscreen][:2] + [s for s in specs if not s.offscreen][:2]:
        (tmp_path / spec.split).mkdir(exist_ok=True)
        render_video(spec, params.world, tmp_path)
        again, original = tmp_path / spec.relpath, world_dir / "videos" / spec.relpath
        np.testing.assert_array_equal(_decode_audio(again), _decode_audio(original))
        assert (
            hashlib.sha256(again.read_bytes()).digest()
            == hashlib.sha256(original.read_bytes()).digest()
        ), spec.video_id
    other = plan_world(tiny_params_at(tmp_path, **{"world.seed": 99}).world)
    assert [s.labels for s in other] != [s.labels for s in specs]


def test_melodies_are_disjoint_across_splits(world):
    params, world_dir, _ = world
    rows = read_ground_truth(world_dir)
    ids = {
        split: {m for r in rows if r["split"] == split for m in r["melody_id"].split(";")}
        for split in SPLITS
    }
    tunes = {}
    for split, melody_ids in ids.items():
        assert melody_ids and all(m.startswith(split + "-") for m in melody_ids)
        tunes[split] = {
            tuple(
                (n.semitone, round(n.length_s, 3))
                for n in ws.make_melody(params.world.seed, split, int(m.split("-")[1]), 4.0).notes
            )
            for m in melody_ids
        }
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not ids[a] & ids[b] and not tunes[a] & tunes[b], (a, b)


def test_noisy_videos_carry_offscreen_energy(world):
    params, _, _ = world
    cfg = params.world
    specs = plan_world(cfg)
    for spec in [s for s in specs if s.offscreen][:4]:
        parts = render_sources(spec, cfg)
        on, extra = np.sum(parts.onscreen**2), np.sum((parts.offscreen + parts.background) ** 2)
        level_db = 10 * np.log10(extra / on)
        assert cfg.offscreen_db[0] - 1.5 <= level_db <= cfg.offscreen_db[1] + 1.5, (spec, level_db)
        assert np.sum(parts.background**2) > 0
    clean = render_sources(next(s for s in specs if not s.offscreen), cfg)
    assert not clean.offscreen.any() and not clean.background.any()
    np.testing.assert_allclose(
        np.sqrt(np.mean(clean.onscreen**2)), 10 ** (ws.TARGET_RMS_DB / 20), rtol=1e-3
    )


def test_captions_cover_every_class_and_both_splits(world):
    params, world_dir, summary = world
    cfg = params.world
    with (world_dir / "captions" / "captions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["captions"] == len(cfg.classes) * cfg.caption_images_per_class
    assert {r["label"] for r in rows} == set(cfg.classes) and {r["split"] for r in rows} == {
        "train",
        "test",
    }
    from PIL import Image

    for r in rows:
        assert r["label"] in r["caption"]
        with Image.open(world_dir / "captions" / r["image"]) as image:
            assert image.size == (cfg.image_size, cfg.image_size) and image.mode == "RGB"


def test_rerun_with_same_config_is_skipped(world):
    params, world_dir, summary = world
    again = render_world(params.world, world_dir)
    assert again["skipped"] is True and again["videos"] == summary["videos"]


def _timbre(wave: np.ndarray, mfcc) -> torch.Tensor:
    """Mean/std of MFCC 1..19 over the frames within 30 dB of the loudest, plus attack/decay."""
    coeffs = mfcc(torch.from_numpy(wave))
    level_db = coeffs[0] / 40**0.5  # c0 of the orthonormal DCT over 40 mel bands, in mean dB
    active = coeffs[:, level_db > level_db.max() - 30]
    change = coeffs[0, 1:] - coeffs[0, :-1]
    envelope = torch.stack([change.clamp(min=0).mean(), -change.clamp(max=0).mean()])
    return torch.cat([active[1:].mean(1), active[1:].std(1), envelope])


def instrument_accuracy(
    classes: tuple[str, ...], seed: int, refs: int = 3, queries: int = 4
) -> float:
    """Nearest class centroid (``refs`` train melodies) for ``queries`` test melodies per class."""
    mfcc = torchaudio.transforms.MFCC(
        16000, n_mfcc=20, melkwargs={"n_fft": 1024, "hop_length": 256, "n_mels": 40}
    )

    def feature(split: str, index: int, label: str) -> torch.Tensor:
        return _timbre(
            ws.render_melody(ws.make_melody(seed, split, index, 4.0), label, 4.0, 16000), mfcc
        )

    centroids = torch.stack(
        [
            torch.stack([feature("train", 10 * k + i, c) for k in range(refs)]).mean(0)
            for i, c in enumerate(classes)
        ]
    )
    hits = [
        torch.cdist(feature("test", 10 * k + i, c)[None], centroids).argmin().item() == i
        for k in range(queries)
        for i, c in enumerate(classes)
    ]
    return sum(hits) / len(hits)


def test_instrument_sounds_are_distinct(tiny_params):
    """Different melodies of one instrument sound more alike than melodies of other instruments."""
    torch.set_num_threads(1)
    accuracy = instrument_accuracy(tiny_params.world.classes, tiny_params.world.seed)
    assert accuracy >= 0.8, accuracy


def test_unknown_class_is_a_clear_error(tmp_path):
    params = tiny_params_at(tmp_path, **{"world.classes": ["cello", "kazoo"]})
    with pytest.raises(BadInputError, match="kazoo"):
        render_world(params.world, tmp_path / "w")
    typo = tiny_params_at(tmp_path, **{"world.videos_per_class": {"train": 1, "tset": 1}})
    with pytest.raises(BadInputError, match="tset"):
        plan_world(typo.world)


def test_overview_picture(world, tmp_path):
    _, world_dir, _ = world
    out = plot_world_overview(world_dir, tmp_path / "world.png")
    assert out.is_file() and out.stat().st_size > 10_000


def _micro_world(root: Path, **overrides):
    """A world of a few one-second videos, rendered in-process (fast enough to render twice)."""
    values = {
        "world.classes": ["cello", "flute"],
        "world.videos_per_class": {"train": 1, "val": 0, "test": 1},
        "world.interference_videos": 1,
        "world.duration_s": [1.0, 1.5],
        "world.caption_images_per_class": 2,
        "world.workers": 1,
        **{f"world.{k}": v for k, v in overrides.items()},
    }
    return tiny_params_at(root, **values).world


def test_changed_config_rerenders_and_interrupted_render_resumes(tmp_path):
    out = tmp_path / "world"
    assert render_world(_micro_world(tmp_path, seed=1), out)["skipped"] is False
    cfg = _micro_world(tmp_path, seed=2)
    assert render_world(cfg, out)["skipped"] is False
    on_disk = {str(p.relative_to(out / "videos")) for p in (out / "videos").rglob("*.mp4")}
    assert on_disk == {r["video"] for r in read_ground_truth(out)}  # nothing left of seed 1
    rows, captions = read_ground_truth(out), (out / "captions" / "captions.csv").read_text()
    lost, kept = out / "videos" / rows[0]["video"], out / "videos" / rows[1]["video"]
    kept_mtime = kept.stat().st_mtime_ns
    lost.unlink()
    (out / "world.json").unlink()
    (out / ".rendering.json").write_text(json.dumps({"config_hash": config_hash(cfg)}))
    assert render_world(cfg, out)["skipped"] is False
    assert lost.is_file() and kept.stat().st_mtime_ns == kept_mtime
    assert (out / "captions" / "captions.csv").read_text() == captions


def test_duets_show_and_sound_two_instruments(tmp_path):
    cfg = _micro_world(tmp_path, duet_share=1.0, classes=["cello", "flute", "trumpet"])
    specs = plan_world(cfg)
    for spec in specs:
        duet = spec.split in ("train", "val")
        assert len(spec.labels) == (2 if duet else 1) and len(set(spec.labels)) == len(spec.labels)
        assert len(spec.melody_id.split(";")) == len(spec.labels)
    spec = next(s for s in specs if len(s.labels) == 2)
    parts = [
        ws.render_melody(
            ws.make_melody(cfg.seed, spec.split, m, spec.duration_s),
            label,
            spec.duration_s,
            cfg.audio_sample_rate,
        )
        for label, m in zip(spec.labels, spec.melody_indices)
    ]
    np.testing.assert_allclose(render_sources(spec, cfg).onscreen, parts[0] + parts[1], atol=1e-6)
