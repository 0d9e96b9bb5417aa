"""The spectral side of training: network inputs, mask targets, forward pass, reconstruction.

Shared by the training step and validation (:mod:`clipsep.training.loop`) and the example
separations of the reports (:mod:`clipsep.training.report`): both import this room, neither
imports the other for it. Only ``params.audio`` is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipsep import audio
from clipsep.config import Params


@dataclass
class SpectralBatch:
    """Network input and targets of one batch (float32, warped log-frequency domain).

    ``mix_warped [B, 1, W, T]`` linear magnitude, ``targets [B, N, W, T]`` masks in [0, 1]
    (binary or ratio, ``train.mask_target``),
    ``weight [B, 1, W, T]``; ``mix_spec [B, F, T]`` complex for reconstruction.
    """

    mix_warped: torch.Tensor
    targets: torch.Tensor
    weight: torch.Tensor
    mix_spec: torch.Tensor


def spectral_batch(sources: torch.Tensor, params: Params) -> SpectralBatch:
    """STFT, warp, target masks and loss weights of sources ``[B, N, L]`` (mixture = their sum)."""
    batch, n_mix, length = sources.shape
    mix_spec = audio.stft(sources.sum(dim=1), params.audio)
    mix_warped = audio.warp(mix_spec.abs().unsqueeze(1), params.audio.warp_bins)
    source_mag = audio.stft(sources.reshape(batch * n_mix, length), params.audio).abs()
    source_warped = audio.warp(
        source_mag.view(batch, n_mix, *source_mag.shape[1:]), params.audio.warp_bins
    )
    return SpectralBatch(
        mix_warped=mix_warped,
        targets=(
            audio.ratio_masks(source_warped)
            if params.train.mask_target == "ratio"
            else audio.binary_masks(source_warped, mix_warped)
        ),
        weight=audio.loss_weight(mix_warped),
        mix_spec=mix_spec,
    )


def run_model(
    model: torch.nn.Module,
    mix_warped: torch.Tensor,
    queries: torch.Tensor,
    depth: int,
    channels_last: bool,
    with_noise: bool = True,
    noise_queries: int | None = None,
):
    """Forward with T zero-padded to a multiple of 2**depth; logits cropped back to T.

    ``noise_queries``: how many leading queries are the mixture's sources (for the NIT heads).
    """
    frames = mix_warped.shape[-1]
    padded = audio.pad_frames(frames, depth)
    if padded != frames:
        mix_warped = torch.nn.functional.pad(mix_warped, (0, padded - frames))
    if channels_last:
        mix_warped = mix_warped.contiguous(memory_format=torch.channels_last)
    masks, noise = model(mix_warped, queries, with_noise=with_noise, noise_queries=noise_queries)
    return masks[..., :frames], (noise[..., :frames] if noise is not None else None)


def reconstruct(
    mask_prob: torch.Tensor, mix_spec: torch.Tensor, params: Params, length: int | None = None
) -> torch.Tensor:
    """Waveforms ``[B, N, L]`` from warped masks ``[B, N, W, T]`` and mixture STFT ``[B, F, T]``.

    Soft masks, un-warped to linear frequency, applied to the mixture with its phase. ``length``
    defaults to ``audio.segment_samples``. Differentiable (the SDR term of training uses it).
    """
    batch, n_mix = mask_prob.shape[:2]
    linear = audio.unwarp(mask_prob, mix_spec.shape[1]).clamp(0.0, 1.0)
    spec = linear * mix_spec.unsqueeze(1)
    length = length or params.audio.segment_samples
    waves = audio.istft(spec.reshape(batch * n_mix, *spec.shape[2:]), length, params.audio)
    return waves.view(batch, n_mix, length)
