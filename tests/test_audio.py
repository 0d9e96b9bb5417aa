"""The time-frequency front end: STFT round trip, the paper's warp grid and its inverse, targets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipsep import audio
from clipsep.errors import BadInputError

torch.set_num_threads(1)


def _paper_grid(n_frames: int, bins: int) -> torch.Tensor:
    """The official grid_sample grid [1, bins, T, 2]: x identity, y = (21^((y+1)/2) - 11) / 10."""
    y = torch.linspace(-1, 1, bins, dtype=torch.float64)
    y = (21 ** ((y + 1) / 2) - 11) / 10
    x = torch.linspace(-1, 1, n_frames, dtype=torch.float64)
    grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0)


def test_stft_istft_round_trip_and_shapes(tiny_params):
    wave = torch.randn(2, tiny_params.audio.segment_samples, dtype=torch.float64)
    spec = audio.stft(wave, tiny_params.audio)
    assert spec.shape == (2, 513, 64) and spec.is_complex()
    assert audio.n_frames(tiny_params.audio.segment_samples, tiny_params.audio) == 64
    back = audio.istft(spec, wave.shape[-1], tiny_params.audio)
    assert torch.allclose(back, wave, atol=1e-9)


def test_paper_clip_length_gives_256_frames():
    assert audio.n_frames(65535) == 256
    assert audio.pad_frames(626, 7) == 640 and audio.pad_frames(256, 7) == 256


@pytest.mark.parametrize("n_frames", [1, 7, 64, 101])
def test_warp_equals_grid_sample_with_the_paper_grid(n_frames):
    mag = torch.rand(2, 3, 513, n_frames, dtype=torch.float64)
    grid = _paper_grid(n_frames, 256).expand(6, -1, -1, -1)
    expected = F.grid_sample(
        mag.flatten(0, 1).unsqueeze(1), grid, mode="bilinear", align_corners=True
    ).view(2, 3, 256, n_frames)
    got = audio.warp(mag, 256)
    assert got.shape == (2, 3, 256, n_frames)
    assert torch.allclose(got, expected, atol=1e-10)


def test_warp_positions_follow_the_paper_formula():
    rows = torch.arange(256, dtype=torch.float64)
    expected = 25.6 * (21 ** (rows / 255) - 1)
    assert torch.allclose(audio.warp_positions(513, 256), expected)
    # low frequencies are oversampled (~0.3 bins per row), high ones subsampled (~6 per row)
    steps = audio.warp_positions(513, 256).diff()
    assert 0.25 < steps[0] < 0.35 and 5.5 < steps[-1] < 6.5


def test_unwarp_grid_is_the_exact_inverse_of_the_warp_grid():
    freqs_of_rows = audio.warp_positions(513, 256)
    rows = audio.unwarp_positions(513, 256)
    # i(f(i)) == i: evaluate the inverse map at the warp's sample positions
    inverse_at = 255 * torch.log1p(freqs_of_rows / 25.6) / math.log(21)
    assert torch.allclose(inverse_at, torch.arange(256, dtype=torch.float64), atol=1e-9)
    assert rows[0] == 0 and abs(rows[-1] - 255) < 1e-9


def test_unwarp_of_warp_recovers_smooth_low_frequency_content():
    freqs = torch.arange(513, dtype=torch.float64)
    smooth = (1 + torch.cos(2 * math.pi * freqs / 400)).view(1, 1, 513, 1).repeat(1, 1, 1, 5)
    back = audio.unwarp(audio.warp(smooth, 256), 513)
    assert back.shape == smooth.shape
    assert (back - smooth)[:, :, :256].abs().max() < 1e-3  # oversampled region: near exact
    assert (back - smooth).abs().max() < 2e-2  # subsampled top octave: small error on smooth input


def test_warp_of_unwarp_recovers_smooth_warped_content():
    rows = torch.arange(256, dtype=torch.float64)
    mask = torch.sigmoid(torch.sin(rows / 20)).view(1, 1, 256, 1)
    assert (audio.warp(audio.unwarp(mask, 513), 256) - mask).abs().max() < 1e-3


def test_binary_masks_mark_the_dominant_source():
    sources = torch.rand(3, 2, 256, 16) ** 3
    mix = sources.sum(dim=1, keepdim=True)  # additive magnitudes
    masks = audio.binary_masks(sources, mix)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert (masks.sum(dim=1) <= 1).all()
    assert torch.equal(masks[:, 0].bool(), sources[:, 0] > sources[:, 1])


def test_binary_masks_reject_mismatched_shapes():
    with pytest.raises(BadInputError, match=r"\[B, 1, W, T\]"):
        audio.binary_masks(torch.rand(1, 2, 8, 4), torch.rand(1, 2, 8, 4))
    with pytest.raises(BadInputError, match="disagree"):
        audio.binary_masks(torch.rand(1, 2, 8, 4), torch.rand(1, 1, 8, 5))


def test_ratio_masks_sum_to_one_over_sources():
    sources = torch.rand(2, 3, 8, 4) + 0.1
    assert torch.allclose(audio.ratio_masks(sources).sum(dim=1), torch.ones(2, 8, 4))


def test_loss_weight_is_clamped_log1p():
    mix = torch.tensor([0.0, 1e-6, 1.0, 1e6]).view(1, 1, 4, 1)
    weight = audio.loss_weight(mix).flatten()
    assert weight[0] == pytest.approx(1e-3) and weight[1] == pytest.approx(1e-3)
    assert weight[2] == pytest.approx(math.log(2)) and weight[3] == pytest.approx(10.0)


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(BadInputError, match=r"\[B, L\]"):
        audio.stft(torch.randn(100))
    with pytest.raises(BadInputError, match=r"\[B, C, F, T\]"):
        audio.warp(torch.rand(513, 10), 256)


def test_warp_keeps_float32_under_autocast():
    mag = torch.rand(1, 1, 513, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        warped = audio.warp(mag, 256)
        back = audio.unwarp(warped, 513)
    assert warped.dtype == torch.float32 and back.dtype == torch.float32
    assert torch.equal(warped, audio.warp(mag, 256))
