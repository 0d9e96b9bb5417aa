"""Load check of the demo: N concurrent gradio_client visitors each separate a 10-s clip.

Launches the real page in-process on a free loopback port (queue: ``serve.concurrency`` at once,
``serve.queue_size`` waiting), first times one request alone (the baseline), then fires
``--clients`` requests at once and prints the error count (must be 0), latency percentiles and
each percentile's ratio to the lone request measured in the same run.

    .venv/bin/python bench/app_load.py                          # tiny random model, 20 clients
    .venv/bin/python bench/app_load.py --model models/clipsep/best.pt --profile ''
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `app` lives beside `clipsep`, not inside the installed package

from clipsep.env import apply_offline_defaults  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_random_model(work: Path, params) -> Path:
    """A random tiny separator + random tiny CLIP (timings only: the output is meaningless)."""
    import torch

    from clipsep.model.factory import build_model, save_checkpoint
    from clipsep.model.query import QueryEncoder

    encoder = QueryEncoder.from_config(params.clip, None, "cpu")
    clip_file = work / "clip.pt"
    torch.save({"state_dict": encoder.model.state_dict()}, clip_file)
    model = build_model(params.model, encoder.embed_dim)
    return save_checkpoint(
        work / "best.pt",
        model,
        model_cfg=params.model,
        audio_cfg=params.audio,
        query={**encoder.reference(), "pretrained": str(clip_file)},
    )


def write_clip(path: Path, seconds: float, rate: int = 44100) -> Path:
    """A stereo 44.1-kHz clip: two tones plus noise (what a visitor's upload looks like)."""
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t)
    wave = wave + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    sf.write(path, np.stack([wave, wave[::-1]], axis=1).astype(np.float32), rate)
    return path


def one_request(url: str, clip: Path) -> tuple[float, str | None]:
    """(seconds, error or None) of one visitor's separation, each with its own client."""
    from gradio_client import Client, handle_file

    start = time.perf_counter()
    try:
        client = Client(url, verbose=False)
        client.predict(handle_file(str(clip)), None, "violin", None, api_name="/separate")
        return time.perf_counter() - start, None
    except Exception as err:  # noqa: BLE001 - counted and printed, the bench goes on
        return time.perf_counter() - start, f"{type(err).__name__}: {err}"


def percentile(values: list[float], share: float) -> float:
    return float(np.percentile(np.asarray(values), share))


def report(lone: float, results: list[tuple[float, str | None]], wall: float) -> None:
    latencies = [s for s, e in results if e is None]
    errors = [e for _, e in results if e is not None]
    print(f"errors: {len(errors)} of {len(results)}")
    for error in sorted(set(errors))[:5]:
        print(f"  {error}")
    print(f"lone request (baseline): {lone:.2f} s")
    if latencies:
        for name, share in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
            value = percentile(latencies, share)
            print(f"{name}: {value:6.2f} s  ({value / lone:5.1f} x lone)")
        print(
            f"mean {statistics.mean(latencies):.2f} s; all {len(results)} done in {wall:.1f} s "
            f"-> {len(latencies) / wall:.2f} separations/s"
        )


def main() -> int:
    apply_offline_defaults()  # before open_clip, mlflow, gradio are imported
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--profile", default="tiny", help="params profile ('' for none)")
    parser.add_argument(
        "--model", default=None, help="checkpoint or models:/ (default: a random tiny model)"
    )
    args = parser.parse_args()
    import torch

    from app.demo import Served, build_demo, launch
    from app.handlers import load_model
    from clipsep.config import load_params

    with tempfile.TemporaryDirectory(prefix="clipsep-app-load-") as tmp:
        work = Path(tmp)
        os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio")
        params = load_params(
            REPO / "params.yaml",
            profile=args.profile or None,
            overrides={"serve.port": free_port(), "separate.device": "cpu"},
        )
        model = args.model or str(tiny_random_model(work, params))
        separator, card = load_model(params, model)
        print(
            f"model {model}; serve.concurrency={params.serve.concurrency}, "
            f"torch threads={torch.get_num_threads()}, "
            f"{args.clients} clients x {args.seconds:.0f}-s clip"
        )
        demo = build_demo(params, Served(separator, card))
        launch(demo, params.serve, Served(separator, card), prevent_thread_lock=True, quiet=True)
        try:
            url = f"http://127.0.0.1:{params.serve.port}/"
            clip = write_clip(work / "clip.wav", args.seconds)
            lone, error = one_request(url, clip)
            if error:
                print(f"the lone request failed: {error}")
                return 1
            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(lambda _: one_request(url, clip), range(args.clients)))
            report(lone, results, time.perf_counter() - start)
        finally:
            demo.close()
    return 0 if all(e is None for _, e in results) else 1


if __name__ == "__main__":
    sys.exit(main())
