"""Mix-and-separate examples: sums, gains, query frames, determinism, and the manifest reader."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from clipsep.data.mixing import (
    ClipRecord,
    LoadedClip,
    MixDataset,
    centre_frame_range,
    query_embedding,
    read_manifest,
    segment_at,
    validation_batch,
)
from clipsep.errors import BadInputError
from conftest import tiny_params_at

CLASS_TONES = {"cello": 110.0, "flute": 880.0, "trumpet": 440.0, "xylophone": 1760.0}
CLASS_COLOURS = {
    "cello": (150, 60, 20),
    "flute": (200, 200, 210),
    "trumpet": (230, 180, 30),
    "xylophone": (40, 90, 200),
}


def make_clips_dir(
    root: Path,
    per_class: dict[str, int] | None = None,
    seconds: float = 6.0,
    sample_rate: int = 16000,
    frame_size: int = 32,
) -> Path:
    """A tiny ingested-clips folder (manifest + wav + 1-fps jpg frames) made of per-class tones."""
    per_class = per_class or {"train": 2, "val": 1}
    clips = root / "clips"
    rows, rng = [], np.random.default_rng(0)
    for label, tone in CLASS_TONES.items():
        for split, count in per_class.items():
            for k in range(count):
                clip_id = f"{label[:3]}-{split}-{k}"
                t = np.arange(int(seconds * sample_rate)) / sample_rate
                wave = 0.3 * np.sin(2 * np.pi * tone * (1 + 0.01 * k) * t)
                wave += 0.01 * rng.standard_normal(t.size)
                audio = clips / "audio" / f"{clip_id}.wav"
                audio.parent.mkdir(parents=True, exist_ok=True)
                sf.write(audio, wave.astype(np.float32), sample_rate, subtype="FLOAT")
                frames = clips / "frames" / clip_id
                frames.mkdir(parents=True, exist_ok=True)
                n_frames = int(seconds)
                for i in range(1, n_frames + 1):
                    Image.new("RGB", (frame_size, frame_size), CLASS_COLOURS[label]).save(
                        frames / f"{i:06d}.jpg"
                    )
                rows.append(
                    {
                        "clip_id": clip_id,
                        "source": f"{split}/{clip_id}.mp4",
                        "source_hash": "0" * 64,
                        "split": split,
                        "start_s": 0.0,
                        "duration_s": seconds,
                        "audio_path": f"audio/{clip_id}.wav",
                        "frames_dir": f"frames/{clip_id}",
                        "n_frames": n_frames,
                        "sample_rate": sample_rate,
                        "rms_db": -13.5,
                        "label": label,
                    }
                )
    with (clips / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return clips


def _loaded_clips(n: int, seconds: float, dim: int = 8) -> list[LoadedClip]:
    """Clips whose samples encode (clip, time) and whose frame embeddings encode (clip, frame)."""
    clips = []
    for c in range(n):
        wave = torch.full((int(seconds * 16000),), 0.1 * (c + 1))
        frames = int(seconds)
        embeddings = torch.arange(frames, dtype=torch.float32)[:, None].repeat(1, dim) + 100 * c
        clips.append(LoadedClip(record=_record(f"c{c}"), wave=wave, frame_embeddings=embeddings))
    return clips


def _record(clip_id: str) -> ClipRecord:
    return ClipRecord(
        clip_id=clip_id,
        split="train",
        audio_path=Path("x.wav"),
        frames_dir=Path("x"),
        n_frames=6,
        label=None,
    )


def test_mixture_is_sum_of_gained_sources_and_gains_in_range(tiny_params):
    clips = _loaded_clips(4, 6.0)
    batch = MixDataset(clips, tiny_params, batch_size=8)[3]
    n_mix = tiny_params.train.n_mix
    low, high = tiny_params.train.gain_range
    assert batch.sources.shape == (8, n_mix, tiny_params.audio.segment_samples)
    assert torch.allclose(batch.mixture, batch.sources.sum(dim=1))
    for b, ids in enumerate(batch.clip_ids):
        assert len(set(ids)) == n_mix  # the partner is another clip
        for n, clip_id in enumerate(ids):
            level = 0.1 * (int(clip_id[1:]) + 1)  # constant clip, fully inside the clip
            gain = batch.sources[b, n, 0].item() * n_mix / level
            assert low - 1e-5 <= gain <= high + 1e-5
            assert torch.allclose(batch.sources[b, n], batch.sources[b, n, :1].expand(-1))


def test_query_is_mean_of_three_frames_around_centre(tiny_params):
    embeddings = torch.arange(6, dtype=torch.float32)[:, None].repeat(1, 4)
    assert torch.equal(query_embedding(embeddings, centre=3, n_frames=3), torch.full((4,), 2.0))
    # clamped at the clip's edge: frames 1, 1, 2 -> mean of rows 0, 0, 1
    assert torch.allclose(
        query_embedding(embeddings, centre=1, n_frames=3), torch.full((4,), 1 / 3)
    )
    clips = _loaded_clips(3, 6.0)
    batch = MixDataset(clips, tiny_params, batch_size=4)[0]
    for b, ids in enumerate(batch.clip_ids):
        for n, clip_id in enumerate(ids):
            value = batch.queries[b, n, 0].item() - 100 * int(clip_id[1:])
            # mean of frames c-1, c, c+1 (0-based rows c-2..c) is c - 1, an integer in range
            assert value == pytest.approx(round(value)) and 0 <= value <= 5


def test_batches_are_a_pure_function_of_seed_step_and_rank(tiny_params):
    clips = _loaded_clips(4, 6.0)
    first, again = MixDataset(clips, tiny_params, 4)[5], MixDataset(clips, tiny_params, 4)[5]
    assert torch.equal(first.sources, again.sources) and first.clip_ids == again.clip_ids
    other_step = MixDataset(clips, tiny_params, 4)[6]
    other_rank = MixDataset(clips, tiny_params, 4, rank=1)[5]
    assert not torch.equal(first.sources, other_step.sources)
    assert not torch.equal(first.sources, other_rank.sources)


def test_segment_tiles_short_clips_and_zero_fills_outside():
    wave = torch.arange(1, 5, dtype=torch.float32)  # 4 samples at "4 Hz"
    tiled = segment_at(wave, centre_s=1.0, length=8, sample_rate=4)  # start = 0
    assert torch.equal(tiled, torch.tensor([1, 2, 3, 4, 1, 2, 3, 4], dtype=torch.float32))
    edge = segment_at(torch.ones(40), centre_s=0.0, length=8, sample_rate=4)  # start = -4
    assert torch.equal(edge, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.float32))


def test_centre_frames_keep_the_window_inside_the_clip():
    # 10-s clip, 4.1-s window at 1 fps: centres 3..8 put (c - 0.5) +- 2.05 s inside [0, 10]
    assert centre_frame_range(10, 160000, 65535, 16000, 1.0) == (3, 8)
    assert centre_frame_range(3, 48000, 65535, 16000, 1.0) == (1, 3)  # too short: all frames


def test_validation_batch_is_fixed_and_has_no_gain(tiny_params):
    clips = _loaded_clips(3, 6.0)
    batch, again = validation_batch(clips, tiny_params), validation_batch(clips, tiny_params)
    assert torch.equal(batch.sources, again.sources)
    assert batch.sources.shape[0] == tiny_params.train.val_mixtures
    for b, ids in enumerate(batch.clip_ids):
        assert ids[0] == f"c{b % 3}"
        for n, clip_id in enumerate(ids):
            level = 0.1 * (int(clip_id[1:]) + 1) / tiny_params.train.n_mix
            assert batch.sources[b, n, 100].item() == pytest.approx(level)


def test_too_few_clips_is_a_clear_error(tiny_params):
    with pytest.raises(BadInputError, match="at least 2 train clips"):
        MixDataset(_loaded_clips(1, 6.0), tiny_params, 2)


def test_manifest_reader_makes_paths_absolute(tmp_path):
    clips = make_clips_dir(tmp_path, per_class={"train": 1})
    records = read_manifest(clips)
    assert len(records) == 4 and all(r.audio_path.is_file() for r in records)
    assert {r.label for r in records} == set(CLASS_TONES)
    with pytest.raises(BadInputError, match="clipsep ingest"):
        read_manifest(tmp_path / "nowhere")


def test_loader_workers_draw_the_same_batches_as_direct_indexing(tiny_params):
    clips = _loaded_clips(4, 6.0)
    dataset = MixDataset(clips, tiny_params, batch_size=2)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=1, sampler=range(2, 5)
    )
    for step, batch in zip(range(2, 5), loader):
        assert torch.equal(batch.sources, dataset[step].sources)
        assert batch.clip_ids == dataset[step].clip_ids


def _two_kinds(n: int, dim: int = 8) -> list[LoadedClip]:
    """Clips of two kinds whose frame embeddings point one of two ways (kind = index % 2)."""
    clips = []
    for c in range(n):
        direction = torch.zeros(dim)
        direction[c % 2] = 1.0
        embeddings = direction.repeat(6, 1) + 0.01 * torch.randn(6, dim)
        clips.append(
            LoadedClip(
                record=_record(f"c{c}"), wave=torch.full((96000,), 0.1), frame_embeddings=embeddings
            )
        )
    return clips


def test_partner_is_the_least_similar_candidate(tmp_path):
    """With 2 candidates, pairs of one kind fall from ~1/2 to ~1/4 (both candidates alike)."""
    clips = _two_kinds(20)

    def same_kind_share(candidates: int) -> float:
        params = tiny_params_at(
            tmp_path, **{"train.pair_candidates": candidates, "train.absent_candidates": 0}
        )
        dataset = MixDataset(clips, params, batch_size=16)
        pairs = [ids for step in range(20) for ids in dataset[step].clip_ids]
        return sum(int(a[1:]) % 2 == int(b[1:]) % 2 for a, b in pairs) / len(pairs)

    uniform, chosen = same_kind_share(1), same_kind_share(2)
    assert 0.35 < uniform < 0.6  # 9 of the 19 others share the first clip's kind
    assert chosen < 0.35 and chosen < uniform - 0.15


def test_absent_query_comes_from_a_clip_unlike_every_source(tmp_path):
    clips = _two_kinds(20)
    params = tiny_params_at(tmp_path, **{"train.pair_candidates": 1, "train.absent_candidates": 4})
    batch = MixDataset(clips, params, batch_size=32)[0]
    assert batch.absent_queries.shape == (32, 1, 8)
    for ids, absent in zip(batch.clip_ids, batch.absent_queries[:, 0]):
        kinds = {int(i[1:]) % 2 for i in ids}
        if len(kinds) == 1:  # the least similar of 4 is of the other kind (or equally far)
            assert int(absent.argmax()) != kinds.pop()
    no_absent = tiny_params_at(tmp_path, **{"train.absent_candidates": 0})
    assert MixDataset(clips, no_absent, batch_size=4)[0].absent_queries is None


def _ramp_clip(seconds: float = 10.0, rate: int = 16000) -> LoadedClip:
    """A clip whose samples are their own times (s / 20), so a window shows where its centre is."""
    wave = torch.arange(int(seconds * rate), dtype=torch.float32) / rate / 20  # gains stay < 1
    return LoadedClip(record=_record("ramp"), wave=wave, frame_embeddings=torch.randn(10, 8))


def test_window_jitter_moves_windows_off_the_frame_grid_and_keeps_them_inside(tmp_path):
    clips = [_ramp_clip(), _ramp_clip()]
    aligned = tiny_params_at(tmp_path, **{"train.window_jitter_s": 0.0})
    jittered = tiny_params_at(tmp_path, **{"train.window_jitter_s": 0.5})

    def centres(params) -> torch.Tensor:
        sources = torch.cat([MixDataset(clips, params, 8)[s].sources for s in range(8)])
        length = sources.shape[-1]
        gains = sources[..., -1] - sources[..., 0]  # the ramp's slope carries the random gain
        return (sources[..., length // 2] / gains * (length - 1) / 16000).flatten()

    fps = aligned.ingest.fps
    grid = centres(aligned) * fps + 0.5  # frame k's time is (k - 0.5) / fps
    assert torch.allclose(grid, grid.round(), atol=1e-3)
    moved = centres(jittered)
    off_grid = (moved * fps + 0.5 - (moved * fps + 0.5).round()).abs()
    assert (off_grid > 0.05).float().mean() > 0.5  # most windows sit between frame times
    half = aligned.audio.segment_samples / 2 / 16000
    assert moved.min() >= half - 1e-3 and moved.max() <= 10.0 - half + 1e-3


def test_training_window_length_is_its_own_setting(tmp_path):
    params = tiny_params_at(tmp_path, **{"train.segment_samples": 4095})
    batch = MixDataset([_ramp_clip(), _ramp_clip()], params, 2)[0]
    assert batch.sources.shape[-1] == 4095
