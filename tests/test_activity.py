"""Where a stem sounds: segments on constructed signals whose answer is known."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from clipsep.activity import ActivityMeter, activity, presence_db
from clipsep.inference import DEFAULT_SETTINGS

RATE = 16000


def signals(seconds: float = 4.0):
    rng = np.random.default_rng(0)
    t = np.arange(int(RATE * seconds)) / RATE
    other = 0.1 * rng.standard_normal(t.size)
    target = np.where(t >= seconds / 2, 0.3 * np.sin(2 * np.pi * 440 * t), 0.0)
    return target, other


def test_target_only_in_the_second_half_gives_one_segment_there():
    target, other = signals()
    segments = activity(target, target + other, RATE, DEFAULT_SETTINGS)
    assert len(segments) == 1
    start, end, mean_db = segments[0]
    assert start == pytest.approx(2.0, abs=0.15) and end == pytest.approx(4.0)
    # the tone has 0.045 of mean power against the noise's 0.01: 10 log10(0.045 / 0.055)
    assert mean_db == pytest.approx(10 * np.log10(0.045 / 0.055), abs=0.5)


def test_absent_stem_and_silent_mixture_give_no_segments():
    target, other = signals()
    assert activity(np.zeros_like(other), other, RATE, DEFAULT_SETTINGS) == []
    assert activity(target * 0.01, target * 0.01 + other, RATE, DEFAULT_SETTINGS) == []  # -46 dB
    quiet = np.full_like(other, 1e-5)  # -100 dBFS: below the floor
    assert activity(quiet, quiet, RATE, DEFAULT_SETTINGS) == []


def test_presence_level_is_the_highest_threshold_that_still_gives_a_segment():
    """A segment exists exactly below the presence level: checked on both sides of it, for a
    stem that is there half the time, one that comes and goes, and one never there."""
    target, other = signals()
    rng = np.random.default_rng(2)
    bursts = target * (rng.random(target.size // 1600).repeat(1600) > 0.5)
    for stem in (target, bursts, 0.05 * other):
        mixture = stem + other
        level = presence_db(stem, mixture, RATE, DEFAULT_SETTINGS)
        assert np.isfinite(level)
        for threshold, found in ((level - 0.01, True), (level + 0.01, False)):
            settings = dataclasses.replace(DEFAULT_SETTINGS, activity_threshold_db=threshold)
            assert bool(activity(stem, mixture, RATE, settings)) is found
    # the tone alone over the noise: its segment's level, 10 log10(0.045 / 0.055) on average
    level = presence_db(target, target + other, RATE, DEFAULT_SETTINGS)
    assert level == pytest.approx(10 * np.log10(0.045 / 0.055), abs=0.5)
    assert presence_db(np.zeros_like(other), other, RATE, DEFAULT_SETTINGS) < -150  # silent stem
    quiet = np.full_like(other, 1e-5)  # below the floor: never present, whatever the ratio
    assert presence_db(quiet, quiet, RATE, DEFAULT_SETTINGS) == -np.inf
    short = other[: int(0.1 * RATE)]  # shorter than activity_min_s
    assert presence_db(short, short, RATE, DEFAULT_SETTINGS) == -np.inf


def test_streamed_blocks_give_the_same_segments_as_one_block():
    target, other = signals()
    mixture = (target + other)[None]
    whole = activity(target, mixture[0], RATE, DEFAULT_SETTINGS)
    meter = ActivityMeter(["t"], RATE, DEFAULT_SETTINGS.activity_frame_s)
    for start in range(0, mixture.shape[1], 7777):  # blocks that do not align with frames
        meter.update(
            start, target[None, None, start : start + 7777], mixture[:, start : start + 7777]
        )
    assert meter.segments(DEFAULT_SETTINGS)["t"] == whole


def test_frame_energies_of_every_stem_add_up_across_unaligned_blocks():
    """The meter's per-frame energies equal the sums of squares over each frame and channel,
    whatever the block boundaries (blocks start and end mid-frame)."""
    rng = np.random.default_rng(1)
    stems = rng.standard_normal((3, 2, 5000)).astype(np.float32)
    mixture = rng.standard_normal((2, 5000)).astype(np.float32)
    meter = ActivityMeter(["a", "b", "c"], RATE, 0.05)  # 800-sample frames
    for start in range(0, 5000, 333):
        meter.update(start, stems[..., start : start + 333], mixture[:, start : start + 333])
    frames = -(-5000 // meter.frame)
    pad = frames * meter.frame - 5000
    expected = np.pad(stems.astype(np.float64), ((0, 0), (0, 0), (0, pad))) ** 2
    expected = expected.sum(1).reshape(3, frames, meter.frame).sum(-1)
    np.testing.assert_allclose(meter.stem_energy, expected, rtol=1e-12)
    mix = np.pad(mixture.astype(np.float64), ((0, 0), (0, pad))) ** 2
    np.testing.assert_allclose(
        meter.mix_energy, mix.sum(0).reshape(frames, meter.frame).sum(-1), rtol=1e-12
    )
    assert meter.frames == 5000


def test_every_layout_separate_accepts_gives_the_same_segments():
    """[L, C] (what soundfile.read returns and Separator.separate gives back) reads as [C, L]
    does; it used to give no segments at all."""
    import torch

    from clipsep.errors import BadInputError

    target, other = signals()
    stereo_stem, stereo_mix = np.stack([target, target]), np.stack([target + other] * 2)
    expected = activity(stereo_stem, stereo_mix, RATE, DEFAULT_SETTINGS)
    assert len(expected) == 1
    assert activity(stereo_stem.T, stereo_mix.T, RATE, DEFAULT_SETTINGS) == expected
    tensors = torch.from_numpy(stereo_stem.T), torch.from_numpy(stereo_mix.T)
    assert activity(*tensors, RATE, DEFAULT_SETTINGS) == expected
    with pytest.raises(BadInputError, match="differ"):
        activity(stereo_stem, stereo_mix[:1], RATE, DEFAULT_SETTINGS)
