"""Full band for full-band input: the target's SDR on 44.1 kHz mixtures, band-limited vs extended.

The model works at 16 kHz, so above 8 kHz the target used to get nothing
(``separate.high_band: residual``); ``extend`` gives it a per-frame share there (see
clipsep/inference.py, :func:`top_band_gains`). This bench measures both on two-source mixtures
made from the world's test videos at their own rate (44.1 kHz): for each pair of test videos of
different classes, a random window of ``--seconds`` of each (downmixed to mono), scaled to equal
RMS (0 dB) and summed; each source is then queried by its label's text, so a pair gives two cases.

Rows: the mixture itself as the estimate; ``residual`` (band-limited, the old behaviour);
``extend`` with the gain read from the top quarter of the model's band (6-8 kHz, the default),
from 4-8 kHz and from the whole band (ablation of ``TOP_BAND``); and a bound that adds the *true*
source's high band (``s - up(down(s))``) to the band-limited estimate. Columns: plain SDR
``10 log10 |s|^2 / |s - s_hat|^2`` over the full band and over the band above 8 kHz alone (an
empty high band scores 0 dB there), museval v4 SDR (whole clip, ``--museval``), and the share of
the estimate's energy above 8 kHz in dB (the truth's share is printed beside it). The mixture
row has no museval score: its interference estimate is silent, where BSS-Eval is undefined.

    .venv/bin/python bench/fullband.py --checkpoint models/exp/e2_cpu_pair1_absent0/best.pt \\
        --clip-weights models/clip/clip.pt --world data/world --pairs 20 --seconds 6 --museval
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # row -> (high_band, TOP_BAND)
    "residual (band-limited, before)": ("residual", 0.25),
    "extend, gain from 6-8 kHz (default)": ("extend", 0.25),
    "extend, gain from 4-8 kHz": ("extend", 0.5),
    "extend, gain from 0-8 kHz": ("extend", 1.0),
}
MIXTURE_ROW = "mixture as the estimate"
BOUND_ROW = "bound: band-limited + true high band"


def test_videos(world: Path) -> list[tuple[Path, str]]:
    """(video path, label) of the world's single-label test videos."""
    with open(world / "ground_truth.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        (world / "videos" / r["video"], r["labels"])
        for r in rows
        if r["split"] == "test" and ";" not in r["labels"] and "|" not in r["labels"]
    ]


def window(path: Path, seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A random ``seconds`` of the video's audio, mono float64 at its own rate, RMS 1."""
    from clipsep import audio_io

    wave, rate = audio_io.read_audio(path)
    mono = wave.astype(np.float64).mean(axis=0)
    n = int(round(seconds * rate))
    start = int(rng.integers(0, max(1, mono.size - n)))
    cut = mono[start : start + n]
    return cut / max(np.sqrt(np.mean(cut**2)), 1e-9), rate


def make_cases(world: Path, pairs: int, seconds: float, seed: int) -> list[dict]:
    """``2 * pairs`` cases: a 0-dB mixture of two classes, the target, its label."""
    rng = np.random.default_rng(seed)
    videos = test_videos(world)
    cases = []
    while len(cases) < 2 * pairs:
        a, b = rng.choice(len(videos), size=2, replace=False)
        (path_a, label_a), (path_b, label_b) = videos[a], videos[b]
        if label_a == label_b:
            continue
        (s_a, rate), (s_b, rate_b) = window(path_a, seconds, rng), window(path_b, seconds, rng)
        if rate != rate_b:
            raise SystemExit(f"{path_a} and {path_b} differ in rate ({rate}, {rate_b})")
        n = min(s_a.size, s_b.size)
        peak = np.abs(s_a[:n] + s_b[:n]).max() / 0.9
        s_a, s_b = s_a[:n] / peak, s_b[:n] / peak
        for source, label in ((s_a, label_a), (s_b, label_b)):
            cases.append({"mixture": s_a + s_b, "source": source, "label": label, "rate": rate})
    return cases


def high_pass(wave: np.ndarray, rate: int, cutoff: float) -> np.ndarray:
    """``wave`` with the FFT bins below ``cutoff`` Hz zeroed (a brick wall, for measuring)."""
    spectrum = np.fft.rfft(wave)
    spectrum[np.fft.rfftfreq(wave.size, 1.0 / rate) < cutoff] = 0.0
    return np.fft.irfft(spectrum, wave.size)


def plain_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    error = float(np.sum((reference - estimate) ** 2))
    return 10.0 * math.log10(float(np.sum(reference**2)) / max(error, 1e-20))


def share_db(part: np.ndarray, whole: np.ndarray) -> float:
    """Energy of ``part`` re ``whole`` in dB (-200 for silence)."""
    return 10.0 * math.log10(
        max(float(np.sum(part**2)), 1e-20) / max(float(np.sum(whole**2)), 1e-20)
    )


def scores(case: dict, estimate: np.ndarray, cutoff: float, museval: bool) -> dict:
    from clipsep.evaluation import metrics

    s, rate = case["source"], case["rate"]
    high_s, high_e = high_pass(s, rate, cutoff), high_pass(estimate, rate, cutoff)
    row = {
        "sdr": plain_sdr(s, estimate),
        "sdr_high": plain_sdr(high_s, high_e),
        "share_high": share_db(high_e, estimate),
    }
    if museval:
        references = np.stack([s, case["mixture"] - s])
        estimates = np.stack([estimate, case["mixture"] - estimate])
        row["museval_sdr"] = metrics.bss_eval_target(references, estimates).sdr
    return row


def band_limited_truth(source: np.ndarray, rate: int, model_rate: int) -> np.ndarray:
    """What of ``source`` survives the round trip to the model rate and back."""
    from clipsep.inference import resample

    down = resample(source[None].astype(np.float32), rate, model_rate)
    return resample(down, model_rate, rate)[0, : source.size].astype(np.float64)


def cached_segment_masks(separator):
    """Let ``separator`` (and copies sharing its network) compute each segment's masks once: the
    variants differ only above the model's band, so the network pass is shared between them."""
    cache: dict[tuple, tuple] = {}
    compute = separator.segment_masks

    def segment_masks(segment, embeddings, binary=False):
        key = (segment.shape, hash(segment.tobytes()), hash(embeddings.cpu().numpy().tobytes()))
        if key not in cache:
            cache[key] = compute(segment, embeddings, binary)
        return cache[key]

    segment_masks.cache = cache  # cleared for every case: a few segments in memory
    return segment_masks


def evaluate(cases: list[dict], checkpoint: str, clip_weights: str, museval: bool) -> dict:
    import clipsep.inference as inference

    base = inference.Separator.from_pretrained(checkpoint, device="cpu", clip_weights=clip_weights)
    shared_pass = cached_segment_masks(base)
    model_rate = base.audio_cfg.sample_rate
    cutoff = model_rate / 2
    results: dict[str, list[dict]] = {name: [] for name in (MIXTURE_ROW, *VARIANTS, BOUND_ROW)}
    truth_share = []
    for i, case in enumerate(cases):
        started = time.perf_counter()
        shared_pass.cache.clear()
        mixture, rate = case["mixture"].astype(np.float32), case["rate"]
        results[MIXTURE_ROW].append(scores(case, case["mixture"], cutoff, museval))
        estimates = {}
        for name, (high_band, top_band) in VARIANTS.items():
            inference.TOP_BAND = top_band
            settings = dataclasses.replace(base.settings, high_band=high_band)
            sep = inference.Separator(base.network, base.encoder, base.audio_cfg, settings)
            sep.segment_masks = shared_pass
            result = sep.separate(mixture, rate, query=case["label"])
            assert np.abs(result.target + result.residual - mixture).max() < 1e-5
            estimates[name] = result.target.astype(np.float64)
            results[name].append(scores(case, estimates[name], cutoff, museval))
        true_high = case["source"] - band_limited_truth(case["source"], rate, model_rate)
        bound = estimates["residual (band-limited, before)"] + true_high
        results[BOUND_ROW].append(scores(case, bound, cutoff, museval))
        truth_share.append(share_db(high_pass(case["source"], rate, cutoff), case["source"]))
        print(
            f"case {i + 1}/{len(cases)} ({case['label']}): {time.perf_counter() - started:.1f} s",
            flush=True,
        )
    inference.TOP_BAND = 0.25
    return {"rows": results, "truth_share_high": truth_share}


def table(evaluation: dict) -> str:
    from clipsep.evaluation.metrics import summarize

    def cell(values):
        s = summarize(values)
        return (
            "n/a" if s["mean"] is None else f"{s['mean']:.2f} ± {s['sem']:.2f} ({s['median']:.2f})"
        )

    columns = [
        ("SDR full band, dB", "sdr"),
        ("SDR > 8 kHz, dB", "sdr_high"),
        ("museval v4 SDR, dB", "museval_sdr"),
        ("energy > 8 kHz re all, dB", "share_high"),
    ]
    lines = [
        "| estimate | " + " | ".join(c[0] for c in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, rows in evaluation["rows"].items():
        cells = [cell([r[key] for r in rows if key in r]) for _, key in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| truth | | | | " + cell(evaluation["truth_share_high"]) + " |")
    return "\n".join(lines)


def main() -> None:
    from clipsep.env import apply_offline_defaults

    apply_offline_defaults()  # before open_clip, mlflow, gradio are imported
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="models/exp/e2_cpu_pair1_absent0/best.pt")
    parser.add_argument("--clip-weights", default="models/clip/clip.pt")
    parser.add_argument("--world", default=str(REPO / "data" / "world"))
    parser.add_argument("--pairs", type=int, default=20, help="mixtures (2 cases each)")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--museval", action="store_true", help="also museval v4 SDR (slower)")
    parser.add_argument("--json", default=None, help="write the per-case scores here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    cases = make_cases(Path(args.world), args.pairs, args.seconds, args.seed)
    evaluation = evaluate(cases, args.checkpoint, args.clip_weights, args.museval)
    print(
        f"\n{len(cases)} cases ({args.pairs} mixtures of 2 test videos, {args.seconds:g} s, "
        f"0 dB, {cases[0]['rate']} Hz), mean ± s.e.m. (median):\n"
    )
    print(table(evaluation))
    if args.json:
        Path(args.json).write_text(json.dumps(evaluation, indent=1))


if __name__ == "__main__":
    main()
