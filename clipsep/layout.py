"""How a caller's audio array holds its channels (``[L]``, ``[C, L]`` or ``[L, C]``), its
sample values, and the rate given with it.

One rule for every entry point that takes arrays (``Separator.separate``, :func:`clipsep.activity.
activity`): the channel axis of a 2-D array is the one axis with at most :data:`MAX_CHANNELS`
entries. Integer PCM is read as soundfile and torchaudio read it: divided by its full scale
(``2 ** (bits - 1)``; unsigned, as 8-bit wav: offset by half its range first) to float in
[-1, 1). A caller's ``sample_rate`` goes through :func:`check_sample_rate`.
Imports numpy only (torch lazily, for torch tensors).
"""

from __future__ import annotations

import math
import numbers
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
    dtype: Any = np.float32  # what results come back as: float64 for float64 input, else float32

    def restore(self, wave: np.ndarray):
        """``wave [C, L]`` in this layout and type (numpy, or a torch tensor on ``device``), as
        :attr:`dtype`."""
        out = wave[0] if self.flat else (wave.T if self.channels_last else wave)
        out = np.ascontiguousarray(out, dtype=self.dtype)
        if self.device is None:
            return out
        import torch

        return torch.from_numpy(out).to(self.device)


def check_sample_rate(sample_rate) -> int:
    """A caller's ``sample_rate`` as an int of Hz: BadInputError (argument ``sample_rate``) for
    anything but a positive whole number (0, negative, NaN, inf, 44100.5, a string, a bool)."""
    valid = isinstance(sample_rate, numbers.Real) and not isinstance(sample_rate, (bool, np.bool_))
    if not valid or not math.isfinite(sample_rate) or sample_rate <= 0:
        raise BadInputError(
            f"sample rate must be a positive number of Hz, got {sample_rate!r}",
            arguments=("sample_rate",),
        )
    if sample_rate != int(sample_rate):
        raise BadInputError(
            f"sample rate must be a whole number of Hz, got {sample_rate!r}",
            arguments=("sample_rate",),
        )
    return int(sample_rate)


def pcm_to_float(wave: np.ndarray) -> np.ndarray:
    """Integer PCM divided by its full scale to float32 in [-1, 1) (int16: / 32768, int32:
    / 2**31, uint8: (x - 128) / 128), as soundfile.read and torchaudio.load do; float arrays
    pass unchanged."""
    if not np.issubdtype(wave.dtype, np.integer):
        return wave
    info = np.iinfo(wave.dtype)
    half = float(1 << (info.bits - 1))
    offset = half if info.min == 0 else 0.0
    # float64 holds every int32/int64 step; the division by a power of two is exact
    return ((wave.astype(np.float64) - offset) / half).astype(np.float32)


def channels_first(audio, min_frames: int = 0) -> tuple[np.ndarray, Layout]:
    """``audio`` as ``[C, L]`` float (float64 for float64 input, else float32) plus its
    :class:`Layout`.

    ``audio`` is a real numpy array or torch tensor shaped ``[L]`` (mono), ``[C, L]`` or ``[L, C]``
    (what soundfile.read returns). Integer PCM is scaled by :func:`pcm_to_float`. The channel axis
    of a 2-D array is the one axis with at most MAX_CHANNELS (64) entries; when both or neither
    have, BadInputError names both readings (or, when both are shorter than ``min_frames``, says
    it is too short either way).
    """
    device = None
    if _is_tensor(audio):
        device = audio.device
        audio = audio.detach().cpu()
        if audio.is_floating_point() and audio.dtype != _torch().float64:
            audio = audio.float()  # bf16 / fp16: numpy has no bf16
        audio = audio.numpy()
    wave = np.asarray(audio)
    real = np.issubdtype(wave.dtype, np.floating) or np.issubdtype(wave.dtype, np.integer)
    if wave.ndim not in (1, 2) or not real:
        raise BadInputError(
            f"audio must be a real [L], [C, L] or [L, C] array, got shape "
            f"{tuple(wave.shape)} of {wave.dtype}"
        )
    dtype = np.float64 if wave.dtype == np.float64 else np.float32
    wave = pcm_to_float(wave).astype(dtype, copy=False)
    if wave.ndim == 1:
        return wave[None], Layout(flat=True, device=device, dtype=dtype)
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
        return np.ascontiguousarray(wave.T), Layout(False, True, device, dtype)
    return wave, Layout(device=device, dtype=dtype)


def _torch():
    return sys.modules["torch"]


def _is_tensor(audio) -> bool:
    """A torch tensor, without importing torch for numpy callers."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(audio, torch.Tensor)
