"""The CLIPSep audio U-Net (pix2pix style, Sound-of-Pixels / CLIPSep layout). Imports torch only.

Encoder level l (0-based) halves both axes with a 4x4 stride-2 conv to ``width(l)`` channels,
``width(l) = base * min(2**l, max_multiplier)``; level 0 has no activation/norm, the innermost
level no norm. Each decoder stage is ReLU -> bilinear x2 upsampling -> 3x3 conv -> BN, then
``cat([skip, up])`` (skip first); the outermost stage is a biased 3x3 conv to k feature maps with no
norm or activation. Input ``[B, 1, W, T]`` log-magnitude (W and T divisible by ``2**depth``),
output ``[B, k, W, T]`` unbounded features.

``decoder_order="conv-upsample"`` runs each decoder stage as ReLU -> 3x3 conv -> BN -> bilinear x2
upsampling instead: the conv sees the lower-resolution map, a quarter of the pixels, with the same
parameters (decoder convs: 1/4 of the FLOPs; the CPU preset ``cpu-conv-upsample``). The paper's
order, ``"upsample-conv"``, is the default.

``output_stride=2`` drops the outermost upsampling: the last conv runs at half resolution and the
output is ``[B, k, W/2, T/2]``. That conv on 256x256 maps is half of the small preset's FLOPs;
the caller upsamples what it computes from the features instead (see CLIPSepNet).
"""

from __future__ import annotations

import torch
from torch import nn


class UNet(nn.Module):
    """``forward(log_mag [B, 1, W, T]) -> features [B, k, W, T]``."""

    def __init__(
        self,
        depth: int,
        base_channels: int,
        out_channels: int,
        max_multiplier: int = 8,
        output_stride: int = 1,
        decoder_order: str = "upsample-conv",
    ):
        super().__init__()
        if depth < 2:
            raise ValueError(f"U-Net depth must be >= 2, got {depth}")
        if output_stride not in (1, 2):
            raise ValueError(f"U-Net output_stride must be 1 or 2, got {output_stride}")
        if decoder_order not in DECODER_ORDERS:
            raise ValueError(
                f"U-Net decoder_order must be one of {', '.join(DECODER_ORDERS)}, "
                f"got {decoder_order!r}"
            )
        self.depth = depth
        widths = [base_channels * min(2**level, max_multiplier) for level in range(depth)]
        self.widths = widths
        self.input_norm = nn.BatchNorm2d(1)
        self.encoders = nn.ModuleList(
            _encoder(
                1 if level == 0 else widths[level - 1],
                widths[level],
                first=level == 0,
                innermost=level == depth - 1,
            )
            for level in range(depth)
        )
        # decoders[j] turns level (depth-1-j) back into level (depth-2-j)'s resolution and width
        self.decoders = nn.ModuleList(
            _decoder(
                widths[level] * (1 if level == depth - 1 else 2), widths[level - 1], decoder_order
            )
            for level in range(depth - 1, 0, -1)
        )
        upsample = [_upsample()] if output_stride == 1 else []
        self.output = nn.Sequential(
            nn.ReLU(), *upsample, nn.Conv2d(2 * widths[0], out_channels, 3, padding=1)
        )

    def forward(self, log_mag: torch.Tensor) -> torch.Tensor:
        return self.forward_with_tap(log_mag, tap_stride=None)[0]

    def forward_with_tap(
        self, log_mag: torch.Tensor, tap_stride: int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features and the decoder's activations at ``1 / tap_stride`` of the input's size
        (``[B, tap_channels(tap_stride), W / tap_stride, T / tap_stride]``; None without a tap)."""
        x = self.input_norm(log_mag)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        x = skips.pop()  # the innermost output feeds the decoder directly, it has no skip
        tap = None
        for j, decoder in enumerate(self.decoders):
            x = torch.cat([skips.pop(), decoder(x)], dim=1)
            if tap_stride is not None and 2 ** (self.depth - 1 - j) == tap_stride:
                tap = x
        return self.output(x), tap

    def tap_channels(self, tap_stride: int) -> int:
        """Channels of the decoder's activations at ``1 / tap_stride`` of the input's size."""
        level = tap_stride.bit_length() - 2  # encoder level l has stride 2**(l+1)
        if tap_stride < 2 or tap_stride & (tap_stride - 1) or level > self.depth - 2:
            raise ValueError(
                f"tap stride must be a power of 2 in [2, {2 ** (self.depth - 1)}], got {tap_stride}"
            )
        return 2 * self.widths[level]  # the skip and the upsampled decoder output, concatenated


def _encoder(in_ch: int, out_ch: int, *, first: bool, innermost: bool) -> nn.Sequential:
    layers: list[nn.Module] = [] if first else [nn.LeakyReLU(0.2)]
    layers.append(nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1, bias=False))
    if not (first or innermost):
        layers.append(nn.BatchNorm2d(out_ch))
    return nn.Sequential(*layers)


def _decoder(in_ch: int, out_ch: int, order: str) -> nn.Sequential:
    conv = [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch)]
    if order == "conv-upsample":
        return nn.Sequential(nn.ReLU(), *conv, _upsample())
    return nn.Sequential(nn.ReLU(), _upsample(), *conv)


def _upsample() -> nn.Upsample:
    return nn.Upsample(scale_factor=2, mode=UPSAMPLE_MODE, align_corners=True)


UPSAMPLE_MODE = "bilinear"
DECODER_ORDERS = ("upsample-conv", "conv-upsample")
