"""The MLflow UI's compare view of two registered versions, checked in headless Chromium.

Builds a real MLflow sqlite store under ROOT by running the tiny-profile pipeline twice (two
training seeds: two registered versions, each run carrying its evaluation metrics, spectrogram
pictures and playable examples), starts the real ``mlflow server`` on 127.0.0.1 (telemetry off),
opens the compare-runs view of the two runs in Debian's Chromium through Playwright, checks that
both runs and their absent-query energy are on the page, writes the screenshot, and stops the server
by its PID.

    PYTHONPATH=. .venv/bin/python scripts/mlflow_compare_screenshot.py --root /tmp/compare \\
        --out docs/mlflow-compare.png

tests/test_mlflow_compare.py runs the same check.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from clipsep.config import Params, load_params
from clipsep.stages import run_stage

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
PIPELINE = ["world", "ingest", "validate", "pretrain-clip", "train", "evaluate", "register"]
SEEDS = (1, 2)  # train.seed of the two versions
# the first eval metric in the compare table (alphabetical): in view without scrolling
SHOWN = "eval/absent_query/energy_db/mean"


def pipeline_params(root: Path, seed: int) -> Params:
    """The tiny profile with every path under ``root`` and training seed ``seed``."""
    overrides = {"paths.root": str(root), "train.seed": seed}
    return load_params(REPO / "params.yaml", profile="tiny", overrides=overrides)


def build_store(root: Path) -> list[dict[str, Any]]:
    """Run the tiny pipeline once per seed (unchanged stages skipped); the register summaries."""
    registered = []
    for seed in SEEDS:
        p = pipeline_params(root, seed)
        runs = [run_stage(stage, p, skip_unchanged=True) for stage in PIPELINE]
        registered.append(runs[-1].summary)
    return registered


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(tracking_uri: str, log_path: Path) -> Iterator[str]:
    """The real ``mlflow server`` on a free loopback port (telemetry off); its URL. Stopped by
    its PID (SIGTERM to its own process group, SIGKILL after 10 s)."""
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow), "server", "--backend-store-uri", tracking_uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server, log_path)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


def wait_ready(url: str, server: subprocess.Popen, log_path: Path, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"mlflow server not ready after {seconds} s: {log_path}")


def compare_url(url: str, experiment_id: str, run_ids: list[str]) -> str:
    """The UI's compare-runs page of ``run_ids`` (MLflow 3's route)."""
    runs, experiments = json.dumps(run_ids), json.dumps([experiment_id])
    return f"{url}/#/compare-runs?runs={runs}&experiments={experiments}"


def capture(page_url: str, names: list[str], shot: Path, profile: Path) -> str:
    """Open the compare view ``page_url`` in headless Chromium, wait for the run ``names``, show
    only the params that differ, screenshot the run details, params and the first metric rows
    (the table is virtualized: only the rows in view exist) to ``shot``; the page's text."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            viewport={"width": 1280, "height": 1000},
            args=CHROMIUM_FLAGS,
        )
        try:
            page = context.new_page()
            page.set_default_timeout(120_000)  # clicks wait for the element: slow on a busy box
            # not "networkidle" (the UI keeps polling) nor the default 30 s (a loaded machine):
            # the page counts as loaded once both run names are on it (below)
            page.goto(page_url, wait_until="domcontentloaded", timeout=180_000)
            check = "texts => texts.every(t => document.body.innerText.includes(t))"
            page.wait_for_function(check, arg=names, timeout=180_000)
            page.get_by_role("button", name="Close", exact=True).click()  # the assistant panel
            page.get_by_text("Visualizations", exact=True).click()  # folded: the tables move up
            page.get_by_role("switch", name="Parameters - Show diff only").click()
            page.get_by_text("Run details", exact=True).scroll_into_view_if_needed()
            page.evaluate("() => window.scrollBy(0, -20)")
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shot))
            return page.inner_text("body")
        finally:
            context.close()


def metric_text(value: float) -> str:
    """How the compare table writes a metric value: at most 3 decimals, trailing zeros dropped."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def check_compare_view(root: Path, shot: Path) -> dict[str, Any]:
    """Build the store, open the compare view of its two versions, screenshot it; what was
    expected on the page and the page's text."""
    registered = build_store(root)
    from mlflow import MlflowClient

    uri = registered[0]["tracking_uri"]
    client = MlflowClient(uri)
    runs = [client.get_run(r["run_id"]) for r in registered]
    names = [run.info.run_name for run in runs]
    shown = [metric_text(run.data.metrics[SHOWN]) for run in runs]
    with mlflow_server(uri, root / "mlflow-server.log") as url:
        page_url = compare_url(url, registered[0]["experiment_id"], [r.info.run_id for r in runs])
        text = capture(page_url, names, shot, root / "chromium-profile")
    missing = [t for t in names + shown + [SHOWN] if t not in text]
    if missing:
        raise RuntimeError(f"the compare view lacks {missing}")
    return {"names": names, "shown": shown, "page_text": text, "registered": registered}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="work folder (the pipeline's paths.root)")
    parser.add_argument("--out", default=str(REPO / "docs" / "mlflow-compare.png"))
    args = parser.parse_args()
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    seen = check_compare_view(root, Path(args.out))
    print(f"compare view shows {seen['names']} with {SHOWN} {seen['shown']}: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
