"""Separation metrics: BSS-Eval v4 (museval) or v3-style (fast_bss_eval), SI-SDR, energy, stats.

BSS-Eval comes from a maintained library, never re-implemented here. museval's ``bss_eval`` with
``window=inf`` is what CLIPSep reports (v4, 512-tap time-invariant distortion filters, whole clip
as one window); fast_bss_eval (if installed) gives the v3 numbers, which read 0.1-2 dB higher —
never mix the two in one table (``metrics.json`` names its backend).

Waves are float numpy ``[L]`` at the model rate; ``references [2, L]`` = (target, interference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from clipsep.errors import BadInputError

SILENT_SUM = 1e-5  # sum |x| at or below this: BSS-Eval is undefined (museval returns NaN)
BACKENDS = {"museval": "museval v4", "fast_bss_eval": "fast_bss_eval v3 (512 taps)"}


@dataclass(frozen=True)
class TargetScores:
    """BSS-Eval scores of the target estimate (dB); NaN where undefined (silent estimate)."""

    sdr: float
    sir: float
    sar: float


def is_silent(wave: np.ndarray) -> bool:
    return float(np.abs(wave).sum()) <= SILENT_SUM


def bss_eval_target(
    references: np.ndarray, estimates: np.ndarray, backend: str = "museval"
) -> TargetScores:
    """SDR/SIR/SAR of ``estimates[0]`` against ``references[0]`` (both ``[2, L]``).

    The second row of each is the interference and its estimate (mixture minus target estimate).
    A (near-)silent reference or estimate gives NaN scores instead of a library warning.
    """
    if references.shape != estimates.shape or references.ndim != 2 or references.shape[0] != 2:
        raise BadInputError(
            f"bss_eval_target needs references and estimates [2, L], got "
            f"{references.shape} and {estimates.shape}"
        )
    if any(is_silent(x) for x in (*references, *estimates)):
        return TargetScores(math.nan, math.nan, math.nan)
    if backend == "museval":
        import museval.metrics  # needs an ffmpeg binary at import (musdb -> stempeg)

        sdr, _isr, sir, sar, _perm = museval.metrics.bss_eval(
            references[..., None], estimates[..., None], window=np.inf
        )
        return TargetScores(float(sdr[0, 0]), float(sir[0, 0]), float(sar[0, 0]))
    if backend == "fast_bss_eval":
        try:
            import fast_bss_eval
        except ImportError as err:
            raise BadInputError(
                "eval.metrics_backend=fast_bss_eval but the package is not "
                "installed (pip install fast_bss_eval)"
            ) from err
        sdr, sir, sar = fast_bss_eval.bss_eval_sources(
            references, estimates, compute_permutation=False
        )
        return TargetScores(float(sdr[0]), float(sir[0]), float(sar[0]))
    raise BadInputError(f"unknown metrics backend {backend!r}; known: {sorted(BACKENDS)}")


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SDR (dB): 10 log10(|a s|^2 / |a s - s_hat|^2), a = <s_hat, s> / |s|^2."""
    reference = reference.astype(np.float64)
    estimate = estimate.astype(np.float64)
    energy = float(reference @ reference)
    if energy <= 0.0 or is_silent(estimate):
        return math.nan
    scaled = (float(estimate @ reference) / energy) * reference
    error = float(((scaled - estimate) ** 2).sum())
    return 10.0 * math.log10(float(scaled @ scaled) / max(error, 1e-20))


def energy_db(estimate: np.ndarray, mixture: np.ndarray) -> float:
    """Energy of ``estimate`` relative to the mixture (dB): 0 = everything kept, -inf = silence."""
    mix_energy = float((mixture.astype(np.float64) ** 2).sum())
    est_energy = float((estimate.astype(np.float64) ** 2).sum())
    return 10.0 * math.log10(max(est_energy, 1e-20) / max(mix_energy, 1e-20))


def summarize(values) -> dict[str, float | None]:
    """``{"mean", "sem", "median"}`` over the finite values (None when there are none)."""
    from scipy.stats import sem

    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {"mean": None, "sem": None, "median": None}
    spread = float(sem(finite)) if finite.size > 1 else 0.0
    return {"mean": float(finite.mean()), "sem": spread, "median": float(np.median(finite))}


def detection_tradeoff(present, absent, thresholds) -> dict | None:
    """How well a presence level tells queries that are there from queries that are not.

    ``present`` / ``absent``: presence levels in dB (-inf allowed, NaN left out;
    :func:`clipsep.activity.presence_db`) of right queries and of absent ones. A query is
    reported at threshold ``t`` when its level is above ``t``.

    Returns None when either group is empty, else a dict:

    * ``auc``: the probability that a right query's level is above an absent one's, ties
      counting half (Mann-Whitney U / (len(present) * len(absent))): 0.5 is chance, 1 means
      some threshold separates them all;
    * ``curve``: for each of ``thresholds``, ``{"threshold_db", "absent_no_segment_share",
      "right_query_segment_share"}``;
    * ``balanced_threshold_db`` / ``balanced_accuracy``: the threshold of ``thresholds`` with
      the highest mean of the two shares (the lowest such), and that mean.
    """
    from scipy.stats import mannwhitneyu

    present = np.asarray([v for v in present if v is not None and not math.isnan(v)], np.float64)
    absent = np.asarray([v for v in absent if v is not None and not math.isnan(v)], np.float64)
    if present.size == 0 or absent.size == 0:
        return None
    u = mannwhitneyu(present, absent, alternative="greater").statistic
    curve = [
        {
            "threshold_db": float(t),
            "absent_no_segment_share": float((absent <= t).mean()),
            "right_query_segment_share": float((present > t).mean()),
        }
        for t in thresholds
    ]
    balanced = [(c["absent_no_segment_share"] + c["right_query_segment_share"]) / 2 for c in curve]
    best = int(np.argmax(balanced))
    return {
        "auc": float(u) / (present.size * absent.size),
        "balanced_threshold_db": curve[best]["threshold_db"],
        "balanced_accuracy": balanced[best],
        "curve": curve,
    }
