"""How a caller's audio array holds its channels: ``[L]``, ``[C, L]`` or ``[L, C]``.

One rule for every entry point that takes arrays (``Separator.separate``, :func:`clipsep.activity.
activity`): the channel axis of a 2-D array is the one axis with at most :data:`MAX_CHANNELS`
entries. Imports numpy only (torch lazily, for torch tensors).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipsep.errors import BadInputError

MAX_CHANNELS = 64  # a 2-D array's channel axis is the one axis with at most this many entries


@dataclass(frozen=True)
class Layout:
    """How a caller's array holds its channels, so results go back the same way."""

    flat: bool = False  # [L]
    channels_last: bool = False  # [L, C]
    device: Any = None  # a torch tensor's device; None for numpy

    def restore(self, wave: np.ndarray):
        """``wave [C, L]`` in this layout and type (numpy, or a torch tensor on ``device``)."""
        out = wave[0] if self.flat else (wave.T if self.channels_last else wave)
        out = np.ascontiguousarray(out)
        if self.device is None:
            return out
        import torch

        return torch.from_numpy(out).to(self.device)


def channels_first(audio, min_frames: int = 0) -> tuple[np.ndarray, Layout]:
    """``audio`` as float32 ``[C, L]`` plus its :class:`Layout`.

    ``audio`` is a real numpy array or torch tensor shaped ``[L]`` (mono), ``[C, L]`` or ``[L, C]``
    (what soundfile.read returns). The channel axis of a 2-D array is the one axis with at most
    MAX_CHANNELS (64) entries; when both or neither have, BadInputError names both readings
    (or, when both are shorter than ``min_frames``, says it is too short either way).
    """
    device = None
    if _is_tensor(audio):
        device = audio.device
        audio = audio.detach().cpu()
        audio = (audio.float() if audio.is_floating_point() else audio).numpy()  # bf16: no numpy
    wave = np.asarray(audio)
    real = np.issubdtype(wave.dtype, np.floating) or np.issubdtype(wave.dtype, np.integer)
    if wave.ndim not in (1, 2) or not real:
        raise BadInputError(
            f"audio must be a real [L], [C, L] or [L, C] array, got shape "
            f"{tuple(wave.shape)} of {wave.dtype}"
        )
    wave = wave.astype(np.float32, copy=False)
    if wave.ndim == 1:
        return wave[None], Layout(flat=True, device=device)
    rows, cols = wave.shape
    clear = (rows <= MAX_CHANNELS) != (cols <= MAX_CHANNELS)
    if not clear and max(rows, cols) < min_frames:
        raise BadInputError(
            f"audio of shape ({rows}, {cols}) is too short to separate whichever axis holds the "
            f"channels: at most {max(rows, cols)} samples, need at least {min_frames}"
        )
    if not clear:
        raise BadInputError(
            f"audio of shape ({rows}, {cols}) is ambiguous: {rows} channel(s) of {cols} samples "
            f"([C, L]) or {rows} samples of {cols} channel(s) ([L, C]); exactly one axis, the "
            f"channel axis, must have at most {MAX_CHANNELS} entries"
        )
    if rows > cols:
        return np.ascontiguousarray(wave.T), Layout(channels_last=True, device=device)
    return wave, Layout(device=device)


def _is_tensor(audio) -> bool:
    """A torch tensor, without importing torch for numpy callers."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(audio, torch.Tensor)
