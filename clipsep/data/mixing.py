"""Mix-and-separate examples built from ingested clips (CLIPSep §1.2, ``MixDataset``).

A training example mixes N clips: each source is a ``segment_samples`` window of a clip's audio
centred on a random query frame c (time (c - 0.5) / fps), scaled by a random gain, clipped to
[-1, 1] and divided by N; the mixture is their sum. The query of each source is the mean of the
precomputed CLIP image embeddings of frames c-1, c, c+1 (``train.query_frames``).

Pairing and absent queries, label-free (they read only the CLIP frame embeddings):

* ``train.pair_candidates``: each partner is the one, of that many random clips, whose mean
  frame embedding is least similar (cosine) to the sources already drawn; 1 = uniform random
  pairs (the paper's default). With 2, a violin is far less often asked to be split from a
  violin (the idea of the official code's ``drop_closest``, without its threshold).
* ``train.absent_candidates``: each example also gets the query of a clip that is *not* in the
  mixture, the least similar of that many random clips to every source; its target is silence
  (``MixBatch.absent_queries``). 0 = none.

Sampling is a pure function of (seed, rank, step): a resumed or re-run training draws the very
same batches, whatever the number of loader workers.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch

from clipsep.config import Params
from clipsep.errors import BadInputError

MANIFEST = "manifest.csv"
_STEP_SEED_STRIDE = 1_000_003  # a prime: per-step seeds never collide for steps below it
_RANK_SEED_STRIDE = 7_919


@dataclass(frozen=True)
class ClipRecord:
    """One row of ``clips/manifest.csv`` with absolute paths."""

    clip_id: str
    split: str
    audio_path: Path
    frames_dir: Path
    n_frames: int
    label: str | None
    source: str = ""  # the video path relative to the ingested folder


@dataclass(frozen=True)
class LoadedClip:
    """A clip in memory: audio ``wave`` [S] float32 and frame embeddings [n_frames, D]."""

    record: ClipRecord
    wave: torch.Tensor
    frame_embeddings: torch.Tensor


@dataclass
class MixBatch:
    """Sources ``[B, N, L]`` (already gained and divided by N), queries ``[B, N, D]``.

    ``mixture`` ([B, L]) is the sum over sources; ``clip_ids`` names the sources ([B][N]).
    ``absent_queries [B, M, D]`` query sounds that are not in the mixture (target: silence).
    """

    sources: torch.Tensor
    queries: torch.Tensor
    clip_ids: list[list[str]]
    absent_queries: torch.Tensor | None = None

    @property
    def mixture(self) -> torch.Tensor:
        return self.sources.sum(dim=1)


def manifest_path(clips_dir: Path) -> Path:
    """``clips_dir/manifest.csv``; BadInputError when there is none (ingest has not run)."""
    path = Path(clips_dir) / MANIFEST
    if not path.is_file():
        raise BadInputError(f"no clip manifest at {path}: run `clipsep ingest` first")
    return path


def read_manifest(clips_dir: Path) -> list[ClipRecord]:
    """Rows of ``clips_dir/manifest.csv`` (the ingest contract), paths made absolute."""
    path = manifest_path(clips_dir)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    try:
        return [
            ClipRecord(
                clip_id=r["clip_id"],
                split=r["split"],
                audio_path=Path(clips_dir) / r["audio_path"],
                frames_dir=Path(clips_dir) / r["frames_dir"],
                n_frames=int(r["n_frames"]),
                label=(r.get("label") or "").strip() or None,
                source=r["source"],
            )
            for r in rows
        ]
    except (KeyError, ValueError) as err:
        raise BadInputError(f"{path}: malformed manifest row ({err})") from err


def load_wave(path: Path, sample_rate: int) -> torch.Tensor:
    """Mono float32 audio [S] of an ingested clip; refuses other rates, empty or NaN audio."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as err:
        raise BadInputError(f"cannot read clip audio {path}: {err}") from err
    if rate != sample_rate:
        raise BadInputError(f"{path}: sample rate {rate} Hz, training expects {sample_rate} Hz")
    if data.shape[0] == 0 or not np.isfinite(data).all():
        raise BadInputError(f"{path}: empty audio or non-finite samples")
    return torch.from_numpy(data.mean(axis=1).copy())


def segment_at(wave: torch.Tensor, centre_s: float, length: int, sample_rate: int) -> torch.Tensor:
    """``length`` samples of ``wave`` [S] centred at ``centre_s``: [length].

    Clips shorter than ``length`` are tiled first (as in the paper); parts of the window outside
    the clip are zeros.
    """
    if wave.numel() < length:
        wave = wave.repeat(math.ceil(length / wave.numel()))
    start = int(math.floor(centre_s * sample_rate)) - length // 2
    out = torch.zeros(length, dtype=wave.dtype)
    lo, hi = max(start, 0), min(start + length, wave.numel())
    if hi > lo:
        out[lo - start : hi - start] = wave[lo:hi]
    return out


def centre_frame_range(
    n_frames: int, n_samples: int, length: int, sample_rate: int, fps: float
) -> tuple[int, int]:
    """Inclusive range of 1-based centre frames whose window fits inside the clip.

    Falls back to all frames when the clip is too short for any window to fit.
    """
    half_s = length / 2 / sample_rate
    first = math.ceil(half_s * fps + 0.5)
    last = math.floor((n_samples / sample_rate - half_s) * fps + 0.5)
    first, last = max(first, 1), min(last, n_frames)
    return (first, last) if first <= last else (1, n_frames)


def query_embedding(frame_embeddings: torch.Tensor, centre: int, n_frames: int) -> torch.Tensor:
    """Mean embedding [D] of ``n_frames`` frames around 1-based ``centre`` (clamped to the clip)."""
    offsets = torch.arange(n_frames) - (n_frames - 1) // 2
    index = (centre - 1 + offsets).clamp(0, frame_embeddings.shape[0] - 1)
    return frame_embeddings[index].mean(dim=0)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """Seed of the generator that draws step ``step`` on DDP rank ``rank``."""
    return seed * _STEP_SEED_STRIDE + step + rank * _RANK_SEED_STRIDE * _STEP_SEED_STRIDE


class MixDataset(torch.utils.data.Dataset):
    """Item ``step`` is the whole training batch of that step (use ``batch_size=None`` loaders)."""

    def __init__(self, clips: Sequence[LoadedClip], params: Params, batch_size: int, rank: int = 0):
        if len(clips) < params.train.n_mix:
            raise BadInputError(
                f"training needs at least {params.train.n_mix} train clips, found {len(clips)}"
            )
        self.clips, self.params, self.batch_size, self.rank = list(clips), params, batch_size, rank
        means = torch.stack([c.frame_embeddings.float().mean(dim=0) for c in self.clips])
        self.clip_embeddings = torch.nn.functional.normalize(means, dim=-1)  # [C, D]
        # an absent sound needs a clip beyond the mixture's own
        self.with_absent = (
            params.train.absent_candidates > 0 and len(self.clips) > params.train.n_mix
        )

    def __len__(self) -> int:
        return self.params.train.steps

    def __getitem__(self, step: int) -> MixBatch:
        seed = step_seed(self.params.train.seed, step, self.rank)
        generator = torch.Generator().manual_seed(seed)
        examples = [self._example(generator) for _ in range(self.batch_size)]
        batch = _stack([e[:3] for e in examples])
        if self.with_absent:
            batch.absent_queries = torch.stack([e[3] for e in examples])  # [B, 1, D]
        return batch

    def _draw_sources(self, generator: torch.Generator) -> list[int]:
        """The first clip uniformly, each partner the least similar of ``pair_candidates``."""
        picks = [int(torch.randint(len(self.clips), (1,), generator=generator))]
        while len(picks) < self.params.train.n_mix:
            picks.append(self._least_similar(picks, self.params.train.pair_candidates, generator))
        return picks

    def _least_similar(self, chosen: list[int], candidates: int, generator: torch.Generator) -> int:
        """Of ``candidates`` random clips not in ``chosen``, the one least similar to all chosen."""
        free = torch.ones(len(self.clips), dtype=torch.bool)
        free[chosen] = False
        pool = free.nonzero().squeeze(1)
        drawn = pool[torch.randperm(len(pool), generator=generator)[: max(candidates, 1)]]
        similarity = self.clip_embeddings[drawn] @ self.clip_embeddings[chosen].T  # [K, chosen]
        return int(drawn[similarity.max(dim=1).values.argmin()])

    def _example(self, generator: torch.Generator):
        """(sources [N, L], queries [N, D], clip ids, absent query [1, D] or None)."""
        n_mix, (low, high) = self.params.train.n_mix, self.params.train.gain_range
        picks = self._draw_sources(generator)
        sources, queries = [], []
        for index in picks:
            clip = self.clips[index]
            first, last = self._frame_range(clip)
            centre = int(torch.randint(first, last + 1, (1,), generator=generator))
            gain = low + (high - low) * float(torch.rand((), generator=generator))
            segment = self._segment(clip, centre, generator)
            sources.append((segment * gain).clamp(-1.0, 1.0) / n_mix)
            queries.append(
                query_embedding(clip.frame_embeddings, centre, self.params.train.query_frames)
            )
        absent = None
        if self.with_absent:
            other = self.clips[
                self._least_similar(picks, self.params.train.absent_candidates, generator)
            ]
            first, last = self._frame_range(other)
            centre = int(torch.randint(first, last + 1, (1,), generator=generator))
            absent = query_embedding(
                other.frame_embeddings, centre, self.params.train.query_frames
            )[None]
        return (
            torch.stack(sources),
            torch.stack(queries),
            [self.clips[i].record.clip_id for i in picks],
            absent,
        )

    @property
    def segment_samples(self) -> int:
        return self.params.train.segment_samples or self.params.audio.segment_samples

    def _frame_range(self, clip: LoadedClip) -> tuple[int, int]:
        return centre_frame_range(
            clip.frame_embeddings.shape[0],
            clip.wave.numel(),
            self.segment_samples,
            self.params.audio.sample_rate,
            self.params.ingest.fps,
        )

    def _segment(self, clip: LoadedClip, centre: int, generator: torch.Generator) -> torch.Tensor:
        """The window around frame ``centre``'s time, moved by up to ``train.window_jitter_s``
        (more distinct windows from the same clips; kept inside the clip when it is long enough)."""
        rate, length = self.params.audio.sample_rate, self.segment_samples
        centre_s = (centre - 0.5) / self.params.ingest.fps
        jitter = self.params.train.window_jitter_s
        if jitter > 0:
            centre_s += jitter * (2 * float(torch.rand((), generator=generator)) - 1)
            half_s, clip_s = length / 2 / rate, clip.wave.numel() / rate
            if clip_s >= 2 * half_s:
                centre_s = min(max(centre_s, half_s), clip_s - half_s)
        return segment_at(clip.wave, centre_s, length, rate)


def validation_batch(clips: Sequence[LoadedClip], params: Params) -> MixBatch:
    """The fixed validation mixtures: example i mixes clip i (cyclic) with partners drawn by
    ``random.Random(i)``, centre frame n_frames // 2, no gain (as the paper's validation split)."""
    n_mix = params.train.n_mix
    if len(clips) < n_mix:
        raise BadInputError(f"validation needs at least {n_mix} val clips, found {len(clips)}")
    audio, fps = params.audio, params.ingest.fps
    examples = []
    for i in range(params.train.val_mixtures):
        target = i % len(clips)
        others = [j for j in range(len(clips)) if j != target]
        picks = [target, *random.Random(i).sample(others, n_mix - 1)]
        sources, queries = [], []
        for index in picks:
            clip = clips[index]
            centre = max(clip.frame_embeddings.shape[0] // 2, 1)
            segment = segment_at(
                clip.wave, (centre - 0.5) / fps, audio.segment_samples, audio.sample_rate
            )
            sources.append(segment / n_mix)
            queries.append(
                query_embedding(clip.frame_embeddings, centre, params.train.query_frames)
            )
        examples.append(
            (torch.stack(sources), torch.stack(queries), [clips[i].record.clip_id for i in picks])
        )
    return _stack(examples)


def _stack(examples: list[tuple[torch.Tensor, torch.Tensor, list[str]]]) -> MixBatch:
    return MixBatch(
        sources=torch.stack([e[0] for e in examples]),
        queries=torch.stack([e[1] for e in examples]),
        clip_ids=[e[2] for e in examples],
    )
