"""CLIPSep separator: U-Net audio features + query fusion (+ NIT noise heads).

Imports torch, clipsep.audio (the input transform) and clipsep.errors only.

``CLIPSepNet.forward(mix_mag [B, 1, W, T], queries [B, N, D])`` runs the U-Net once per mixture and
turns each of the N queries into a mask logit map ``[B, N, W, T]``. With noise invariant training
(``nit=True``) it also returns two noise-head logit maps ``[B, 2, W, T]``, computed from the mean of
the N pre-sigmoid query projections; they are for training only (inference uses ``mask_logits``).
Fusion variants are chosen by name through :data:`FUSIONS`. With ``gate_stride > 0`` a
:class:`QueryGate` adds, per query, a coarse logit map computed from the decoder's activations
(the preset ``cpu-gated``; docs/model.md).

With ``output_stride=2`` the U-Net's features are ``[B, k, W/2, T/2]`` and the logit maps are
upsampled x2 (bilinear, align_corners=True) after the fusion. Fusion is linear per pixel, so this
equals fusing upsampled features, at a quarter of the cost of the outermost conv.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from clipsep.audio import log_magnitude
from clipsep.errors import BadInputError
from clipsep.model.unet import UPSAMPLE_MODE, UNet

N_NOISE_HEADS = 2


@dataclass(frozen=True)
class NetConfig:
    """Architecture of one separator; stored in checkpoints (plain data)."""

    depth: int  # U-Net levels; W and T must be divisible by 2**depth
    base_channels: int  # width of the first U-Net level (paper: 64)
    k: int  # audio feature maps / query projection size (paper: 32)
    fusion: str  # a key of FUSIONS ("late" = the paper's channel-weighted sum)
    nit: bool  # noise invariant training heads
    query_dim: int  # query embedding size (CLIP ViT-B/32: 512)
    warp_bins: int = 256  # log-frequency rows of the input
    max_multiplier: int = 8  # U-Net widths grow as base * 2**level up to base * max_multiplier
    output_stride: int = 1  # 2: features at half resolution, logits upsampled (CPU presets)
    decoder_order: str = "upsample-conv"  # "conv-upsample": decoder convs at the lower resolution
    gate_stride: int = 0  # > 0: + a query gate on the decoder at 1/gate_stride of the input size
    gate_channels: int = 64  # hidden width of the query gate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class SeparationOutput(NamedTuple):
    """``mask_logits [B, N, W, T]`` (pre-sigmoid); ``noise_logits [B, 2, W, T]`` or None."""

    mask_logits: torch.Tensor
    noise_logits: torch.Tensor | None


class LateFusion(nn.Module):
    """The paper's late fusion: q = sigmoid(W e + b); logit = sum_c alpha_c q_c S_c + beta."""

    def __init__(self, k: int, query_dim: int):
        super().__init__()
        self.projection = nn.Linear(query_dim, k)
        self.alpha = nn.Parameter(torch.ones(k))
        self.beta = nn.Parameter(torch.zeros(1))

    def project(self, queries: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid query projection ``[B, N, D] -> [B, N, k]``."""
        return self.projection(queries)

    def combine(self, weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Mask logits from channel weights ``[B, N, k]`` in (0, 1) and ``S [B, k, W, T]``."""
        scaled = weights * self.alpha.to(weights.dtype)
        logits = torch.einsum("bnk,bkwt->bnwt", scaled.to(features.dtype), features)
        return logits + self.beta.to(logits.dtype)


FUSIONS: dict[str, type[LateFusion]] = {"late": LateFusion}


class Features(NamedTuple):
    """What the U-Net gives the queries: ``maps [B, k, W', T']`` and, with a query gate, the
    decoder's activations ``tap [B, C, W / gate_stride, T / gate_stride]`` (else None)."""

    maps: torch.Tensor
    tap: torch.Tensor | None


class QueryGate(nn.Module):
    """A coarse, query-conditioned logit map added to the fused logits.

    Late fusion weights k feature maps with positive per-query weights, a linear read-out that
    leaves "is this sound here at all" to the U-Net's last k channels. The gate reads deeper
    decoder activations at low resolution: a shared 3x3 conv, then per query a FiLM (feature-wise
    scale and shift from the query embedding, Perez et al. 2018), ReLU and a 1x1 conv to one
    logit. ``forward(tap [B, C, w, t], queries [B, N, D]) -> [B, N, w, t]``. The FiLM and the
    read-out start at zero, so an untrained gate adds nothing.
    """

    def __init__(self, in_channels: int, channels: int, query_dim: int):
        super().__init__()
        self.hidden = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        self.film = nn.Linear(query_dim, 2 * channels)
        self.readout = nn.Linear(channels, 1)

    def forward(self, tap: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden(tap)  # [B, C, w, t]
        scale, shift = self.film(queries).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=2)
        modulated = torch.relu(hidden.unsqueeze(1) * (1 + scale) + shift)  # [B, N, C, w, t]
        return self.readout(modulated.movedim(2, -1)).squeeze(-1)  # the 1x1 conv, per query


class CLIPSepNet(nn.Module):
    """Text/image-queried separator: ``forward(mix_mag, queries) -> SeparationOutput``."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        if cfg.fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {cfg.fusion!r}; known: {sorted(FUSIONS)}")
        self.cfg = cfg
        self.unet = UNet(
            cfg.depth,
            cfg.base_channels,
            cfg.k,
            cfg.max_multiplier,
            cfg.output_stride,
            cfg.decoder_order,
        )
        self.fusion = FUSIONS[cfg.fusion](cfg.k, cfg.query_dim)
        self.gate = (
            QueryGate(self.unet.tap_channels(cfg.gate_stride), cfg.gate_channels, cfg.query_dim)
            if cfg.gate_stride
            else None
        )
        self.noise_heads = (
            nn.ModuleList(nn.Linear(cfg.k, cfg.k) for _ in range(N_NOISE_HEADS))
            if cfg.nit
            else None
        )
        self.apply(_init_weights)
        if self.gate is not None:  # start as plain late fusion
            for parameter in (*self.gate.film.parameters(), *self.gate.readout.parameters()):
                nn.init.zeros_(parameter)

    def features(self, mix_mag: torch.Tensor) -> Features:
        """U-Net features (``maps [B, k, W', T']``, gate tap) of a warped linear magnitude
        ``[B, 1, W, T]``."""
        self._check_input(mix_mag)
        tap_stride = self.cfg.gate_stride or None
        return Features(*self.unet.forward_with_tap(log_magnitude(mix_mag.detach()), tap_stride))

    def masks_from_features(
        self,
        features: Features,
        queries: torch.Tensor,
        with_noise: bool = True,
        noise_queries: int | None = None,
    ) -> SeparationOutput:
        """Apply N queries ``[B, N, D]`` to :meth:`features` (no U-Net pass).

        Returns logits at the input resolution ``[B, N, W, T]`` (``W = W' * output_stride``).
        The noise heads read the first ``noise_queries`` queries (default: all): the sources of
        the mixture, not the extra absent-sound queries of training.
        """
        maps = features.maps
        if (
            queries.dim() != 3
            or queries.shape[0] != maps.shape[0]
            or queries.shape[-1] != self.cfg.query_dim
        ):
            raise BadInputError(
                f"queries must be [B={maps.shape[0]}, N, "
                f"D={self.cfg.query_dim}], got {tuple(queries.shape)}"
            )
        projected = self.fusion.project(queries)  # [B, N, k], pre-sigmoid
        mask_logits = self._full_resolution(self.fusion.combine(torch.sigmoid(projected), maps))
        if self.gate is not None:
            gate_logits = self.gate(features.tap, queries)  # [B, N, w, t]
            mask_logits = mask_logits + _upsample_to(gate_logits, mask_logits.shape[-2:])
        noise_logits = None
        if with_noise and self.noise_heads is not None:
            mean_projection = projected[:, :noise_queries].mean(dim=1)  # [B, k]
            noise_weights = torch.stack(
                [torch.sigmoid(head(mean_projection)) for head in self.noise_heads], dim=1
            )  # [B, 2, k]
            noise_logits = self._full_resolution(self.fusion.combine(noise_weights, maps))
        return SeparationOutput(mask_logits, noise_logits)

    def _full_resolution(self, logits: torch.Tensor) -> torch.Tensor:
        """Fused logits ``[B, N, W', T']`` at the input resolution ``[B, N, W, T]``."""
        stride = self.cfg.output_stride
        if stride == 1:
            return logits
        return _upsample_to(logits, (logits.shape[-2] * stride, logits.shape[-1] * stride))

    def forward(
        self,
        mix_mag: torch.Tensor,
        queries: torch.Tensor,
        with_noise: bool = True,
        noise_queries: int | None = None,
    ) -> SeparationOutput:
        """``mix_mag [B, 1, W, T]`` warped linear magnitude, ``queries [B, N, D]`` -> masks."""
        return self.masks_from_features(self.features(mix_mag), queries, with_noise, noise_queries)

    def _check_input(self, mix_mag: torch.Tensor) -> None:
        step = 2**self.cfg.depth
        if mix_mag.dim() != 4 or mix_mag.shape[1] != 1:
            raise BadInputError(f"mix_mag must be [B, 1, W, T], got {tuple(mix_mag.shape)}")
        if mix_mag.shape[2] % step or mix_mag.shape[3] % step:
            raise BadInputError(
                f"mix_mag {tuple(mix_mag.shape)}: W and T must be divisible by "
                f"2**depth = {step}; pad the frames (clipsep.audio.pad_frames)"
            )


def _upsample_to(logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``logits [B, N, w, t]`` bilinearly resized (align_corners=True) to ``[B, N, *size]``.

    The one upsampling of logit maps: the fused logits (``output_stride``) and the query gate's.
    With align_corners=True the sampling grid depends on the sizes only, so a size equals the
    matching ``scale_factor``.
    """
    return nn.functional.interpolate(logits, size=size, mode=UPSAMPLE_MODE, align_corners=True)


def _init_weights(module: nn.Module) -> None:
    """The paper's tiny init: masks start near 0.5 everywhere (biases keep PyTorch defaults)."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 1e-3)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 1e-4)
