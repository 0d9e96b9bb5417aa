"""Where each separated stem sounds: segments ``[start_s, end_s, mean_db]`` over time.

The activity of a stem is its energy relative to the mixture's, frame by frame
(``separate.activity_frame_s``): both energies are summed over every channel, then over a centred
window of ``separate.activity_smoothing_s`` (smoothing the energies, not their dB, so one loud
frame does not punch through), and compared in dB. A frame is active when the stem holds more than
``separate.activity_threshold_db`` of the mixture's energy and the mixture itself is above
``separate.activity_floor_db`` dBFS (in silence the ratio says nothing). Runs of active frames
shorter than ``separate.activity_min_s`` are dropped. ``mean_db`` is the mean stem-to-mixture ratio
over the segment's frames (0 dB: the stem is the whole mixture there).

:class:`ActivityMeter` accumulates frame energies block by block while a file streams, so memory
is one float per frame and stem (72 000 per hour at 50 ms frames). Imports numpy only (and
clipsep.layout's channel-axis rule).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from clipsep.errors import BadInputError
from clipsep.layout import channels_first, check_sample_rate

TINY = 1e-20  # energy floor that keeps log10 finite


class Segment(NamedTuple):
    """A stretch where a stem sounds: seconds from the start, and its mean level (dB re mixture)."""

    start_s: float
    end_s: float
    mean_db: float


class ActivityMeter:
    """Frame energies of N stems and their mixture, fed in order by :meth:`update`."""

    def __init__(self, names: Sequence[str], sample_rate: int, frame_s: float):
        self.names = list(names)
        self.sample_rate = sample_rate
        self.frame = max(1, round(frame_s * sample_rate))  # samples per frame
        self.stem_energy = np.zeros((len(self.names), 0))
        self.mix_energy = np.zeros(0)
        self.mix_channels = 1
        self.frames = 0  # samples seen

    def update(self, start: int, stems: np.ndarray, mixture: np.ndarray) -> None:
        """Add ``stems [N, C, n]`` and ``mixture [C, n]`` covering ``[start, start + n)``."""
        n = mixture.shape[-1]
        index = (start + np.arange(n)) // self.frame
        size = int(index[-1]) + 1 if n else 0
        if size > self.mix_energy.size:
            grow = size - self.mix_energy.size
            self.mix_energy = np.pad(self.mix_energy, (0, grow))
            self.stem_energy = np.pad(self.stem_energy, ((0, 0), (0, grow)))
        self.mix_channels = mixture.shape[0]
        if n == 0:
            return
        # the block's frames are consecutive: sum each frame's samples at once for every stem
        first = int(index[0])
        bounds = np.flatnonzero(np.diff(index)) + 1
        edges = np.concatenate([[0], bounds])
        mix_power = np.einsum("cn,cn->n", mixture, mixture, dtype=np.float64)  # [n]
        stem_power = np.einsum("qcn,qcn->qn", stems, stems, dtype=np.float64)  # [N, n]
        self.mix_energy[first:size] += np.add.reduceat(mix_power, edges)
        self.stem_energy[:, first:size] += np.add.reduceat(stem_power, edges, axis=-1)
        self.frames = max(self.frames, start + n)

    def ratio_db(self, smoothing_s: float) -> np.ndarray:
        """Smoothed stem-to-mixture energy ratio ``[N, frames]`` in dB."""
        width = max(1, round(smoothing_s * self.sample_rate / self.frame))
        stems = (
            np.stack([_moving_sum(e, width) for e in self.stem_energy])
            if len(self.names)
            else self.stem_energy
        )
        return 10.0 * np.log10((stems + TINY) / (_moving_sum(self.mix_energy, width) + TINY))

    def segments(self, settings) -> dict[str, list[Segment]]:
        """Each stem's segments, from the ``activity_*`` keys of ``settings`` (SeparateConfig)."""
        ratio = self.ratio_db(settings.activity_smoothing_s)
        loud, min_frames = self._loud(settings), self._min_frames(settings)
        return {
            name: self._runs(
                (ratio[q] > settings.activity_threshold_db) & loud, ratio[q], min_frames
            )
            for q, name in enumerate(self.names)
        }

    def presence_db(self, settings) -> np.ndarray:
        """Each stem's presence level ``[N]`` in dB: the highest ``activity_threshold_db`` at which
        :meth:`segments` still finds a segment (it finds one exactly when the threshold is below
        this level; -inf: none at any threshold, e.g. a file shorter than ``activity_min_s`` or
        a silent mixture). The other ``activity_*`` keys of ``settings`` apply as there.

        It is the largest, over every run of ``activity_min_s`` of loud frames, of the run's
        quietest smoothed stem-to-mixture ratio: one number per stem that ranks how present the
        stem is, so that a detection trade-off over thresholds needs no re-run.
        """
        ratio = self.ratio_db(settings.activity_smoothing_s)
        loud, min_frames = self._loud(settings), max(1, self._min_frames(settings))
        if ratio.shape[-1] < min_frames:
            return np.full(len(self.names), -np.inf)
        gated = np.where(loud, ratio, -np.inf)  # [N, frames]
        windows = np.lib.stride_tricks.sliding_window_view(gated, min_frames, axis=-1)
        return windows.min(axis=-1).max(axis=-1)

    def _loud(self, settings) -> np.ndarray:
        """Frames ``[frames]`` whose smoothed mixture level is above ``activity_floor_db`` dBFS."""
        width = max(1, round(settings.activity_smoothing_s * self.sample_rate / self.frame))
        samples = np.minimum(self.frame, self.frames - np.arange(self.mix_energy.size) * self.frame)
        level = _moving_sum(self.mix_energy, width) / np.maximum(
            _moving_sum(samples.astype(np.float64), width) * self.mix_channels, 1.0
        )
        return 10.0 * np.log10(level + TINY) > settings.activity_floor_db

    def _min_frames(self, settings) -> int:
        return math.ceil(settings.activity_min_s * self.sample_rate / self.frame)

    def _runs(self, active: np.ndarray, ratio: np.ndarray, min_frames: int) -> list[Segment]:
        edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
        found = []
        for first, stop in zip(edges[::2], edges[1::2]):
            if stop - first >= min_frames:
                end = min(stop * self.frame, self.frames)
                found.append(
                    Segment(
                        round(float(first * self.frame / self.sample_rate), 3),
                        round(float(end / self.sample_rate), 3),
                        round(float(ratio[first:stop].mean()), 2),
                    )
                )
        return found


def activity(stem, mixture, sample_rate: int, settings) -> list[Segment]:
    """Segments where ``stem`` sounds in ``mixture``: numpy arrays or torch tensors shaped
    ``[L]``, ``[C, L]`` or ``[L, C]`` (as ``Separator.separate`` takes and returns them; the
    channel axis is read as there, :func:`clipsep.layout.channels_first`), the two alike.
    Integer PCM is scaled by its full scale as there. ``sample_rate`` in Hz; ``settings`` a
    SeparateConfig (its ``activity_*`` keys).

    Raises BadInputError for an array of another rank, an ambiguous shape, two shapes that
    differ, or a sample rate that is not a positive whole number of Hz.
    """
    return stem_meter(stem, mixture, sample_rate, settings).segments(settings)["stem"]


def presence_db(stem, mixture, sample_rate: int, settings) -> float:
    """How present ``stem`` is in ``mixture``, in dB: the highest ``activity_threshold_db`` at
    which :func:`activity` still finds a segment (:meth:`ActivityMeter.presence_db`; -inf if
    none at any). Arguments and errors as :func:`activity`."""
    return float(stem_meter(stem, mixture, sample_rate, settings).presence_db(settings)[0])


def stem_meter(stem, mixture, sample_rate: int, settings) -> ActivityMeter:
    """A one-stem :class:`ActivityMeter` (its stem named ``"stem"``) fed with the whole ``stem``
    and ``mixture``: both :meth:`~ActivityMeter.segments` and :meth:`~ActivityMeter.presence_db`
    from one pass over the samples. Arguments and errors as :func:`activity`."""
    sample_rate = check_sample_rate(sample_rate)
    stem2, _ = channels_first(stem)
    mix2, _ = channels_first(mixture)
    if stem2.shape != mix2.shape:
        raise BadInputError(
            f"activity: stem {tuple(stem2.shape)} and mixture {tuple(mix2.shape)} ([C, L]) differ"
        )
    meter = ActivityMeter(["stem"], sample_rate, settings.activity_frame_s)
    meter.update(0, stem2[None], mix2)
    return meter


def _moving_sum(values: np.ndarray, width: int) -> np.ndarray:
    """Centred moving sum of ``values [T]`` over ``width`` frames (shorter at the ends)."""
    if width <= 1 or values.size == 0:
        return values
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(values.size)
    low = np.clip(index - width // 2, 0, values.size)
    high = np.clip(index + (width - width // 2), 0, values.size)
    return cumulative[high] - cumulative[low]
