"""The MLflow UI comparing two registered versions, checked in headless Chromium.

Builds a real MLflow sqlite store under ROOT by running the tiny-profile pipeline twice (two
training seeds: two registered versions, each run carrying its evaluation metrics, spectrogram
pictures as artifacts and as MLflow images, and playable examples), starts the real
``mlflow server`` on 127.0.0.1 (telemetry off), opens the UI in Debian's Chromium through
Playwright and writes three screenshots:

- ``OUT`` (docs/mlflow-compare.png): the experiment's chart view filtered to the text and image
  SDR/SDRi means, one bar per version with its value;
- ``OUT``-images: an image grid of the spectrogram images, one column per version;
- ``OUT``-audio: a run's artifact viewer playing a logged wav.

Each is checked against the store (the bars' values, the pictures' run ids and keys, the wav's
duration, the player's clock). The server is stopped by its PID. The compare-runs page
(``#/compare-runs``) is not used: its metrics table is a fixed 300 px window (the SDR rows sit
far below the first rows), and in MLflow 3.17.2 scrolling it moves the values but not the names.

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
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from clipsep.config import Params, load_params
from clipsep.env import OFFLINE_DEFAULTS, apply_offline_defaults
from clipsep.stages import run_stage

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
PIPELINE = ["world", "ingest", "validate", "pretrain-clip", "train", "evaluate", "register"]
SEEDS = (1, 2)  # train.seed of the two versions
# the evaluation rows the metrics picture shows, in the compare table's (alphabetical) order
COMPARED = (
    "eval/image/sdr/mean",
    "eval/image/sdri/mean",
    "eval/text/sdr/mean",
    "eval/text/sdri/mean",
)
METRICS_PAGE_HEIGHT = 2100  # px: the chart view draws only the charts in view: all of COMPARED
IMAGES_PAGE_SIZE = (820, 900)  # px: the image grid's cells about as wide as its thumbnails
AUDIO = "examples/00/estimate.wav"  # the artifact the audio picture plays


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
    env = {**OFFLINE_DEFAULTS, **os.environ}  # telemetry off unless you chose otherwise
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


def chart_url(url: str, experiment_id: str) -> str:
    """The experiment page's chart view (runs side by side in charts and image grids)."""
    return f"{url}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART"


def artifact_url(url: str, experiment_id: str, run_id: str, path: str) -> str:
    """A run's artifact viewer opened on ``path``."""
    return f"{url}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}"


@contextlib.contextmanager
def browser(profile: Path) -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright: the context (one profile)."""
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
            yield context
        finally:
            context.close()


def open_page(context, page_url: str, texts: list[str], height: int = 1000, width: int = 1280):
    """A new page at ``page_url`` (viewport ``width`` x ``height``), loaded once all ``texts``
    are on it, the assistant panel closed."""
    page = context.new_page()
    page.set_viewport_size({"width": width, "height": height})
    page.set_default_timeout(120_000)  # clicks wait for the element: slow on a busy box
    # not "networkidle" (the UI keeps polling) nor the default 30 s (a loaded machine)
    page.goto(page_url, wait_until="domcontentloaded", timeout=180_000)
    check = "texts => texts.every(t => document.body.innerText.includes(t))"
    page.wait_for_function(check, arg=texts, timeout=180_000)
    page.get_by_role("button", name="Close", exact=True).click()
    return page


def capture_metrics(context, page_url: str, names: list[str], shot: Path) -> dict[str, Any]:
    """The chart view filtered (its search takes a regular expression) to the COMPARED metrics:
    one bar chart each, a bar per run with its value and the runs' names in the legend. The
    screenshot of the charts; each chart's (text, bar value labels)."""
    page = open_page(context, page_url, names, height=METRICS_PAGE_HEIGHT)
    search = "^(" + "|".join(COMPARED) + ")$"
    page.get_by_placeholder("Search metric charts").fill(search)
    titles = [page.locator(f"h4[title='{name}']") for name in COMPARED]
    for title in titles:
        title.wait_for()
    page.wait_for_timeout(1500)  # the bars draw after their card
    plot = page.locator("svg.main-svg")  # plotly's drawing (the card's icons are svg too)
    cards = [page.locator("div", has=title).filter(has=plot).last for title in titles]
    bars = "text.bartext"  # plotly's value label on each bar
    texts = {
        name: (card.inner_text(), card.locator(bars).all_text_contents())
        for name, card in zip(COMPARED, cards)
    }
    top = page.get_by_placeholder("Search metric charts").bounding_box()
    boxes = [card.bounding_box() for card in cards]
    left = min(box["x"] for box in [top, *boxes]) - 16
    clip = {"x": left, "y": top["y"] - 8, "width": page.viewport_size["width"] - left - 16}
    clip["height"] = boxes[-1]["y"] + boxes[-1]["height"] + 8 - clip["y"]
    page.screenshot(path=str(shot), clip=clip)
    return texts


def capture_images(
    context, page_url: str, names: list[str], keys: list[str], shot: Path
) -> list[str]:
    """The chart view: a new image-grid chart of the image ``keys`` (run parameters hidden),
    opened full screen: one row per key, one column per run, each run's picture at the step it
    was logged. The screenshot of that grid; the ``src`` of its pictures once all have loaded."""
    # narrow: the grid's cells are squares as wide as the page allows, the pictures MLflow's
    # thumbnails (256 px wide): wider cells only add empty space
    page = open_page(
        context, page_url, names, height=IMAGES_PAGE_SIZE[1], width=IMAGES_PAGE_SIZE[0]
    )
    page.get_by_text("Add chart").first.click()
    page.get_by_role("menuitem", name="Image grid").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Images", exact=True).last.click()
    for key in keys:
        page.get_by_role("option", name=key, exact=True).click()
    page.keyboard.press("Escape")  # closes the key list, not the dialog
    dialog.get_by_role("switch").click()  # "Show run parameters": off (one long line each)
    dialog.get_by_role("button", name="Add chart").click()
    title = page.locator("h4[title='Image grid']")
    full = page.locator("[data-component-id=fullscreen_button_chartcard]")
    page.locator("div", has=title).filter(has=full).last.locator(full).click()
    pictures = "[role=dialog] img"
    loaded = f"n => [...document.querySelectorAll('{pictures}')]"
    loaded += ".filter(i => i.complete && i.naturalWidth > 0).length >= n"
    page.wait_for_function(loaded, arg=len(keys) * len(names), timeout=120_000)
    page.wait_for_timeout(500)
    page.locator("[role=dialog]").last.screenshot(path=str(shot))
    return [img.get_attribute("src") or "" for img in page.locator(pictures).all()]


def capture_audio(context, page_url: str, name: str, shot: Path) -> dict[str, float]:
    """A run's artifact viewer on a logged wav: the waveform and the browser's audio player.
    Plays it (muted Chromium: the clock must advance); its decoded duration and played time."""
    page = open_page(context, page_url, [name])
    audio = page.locator("audio")  # inside the player's shadow root: Playwright looks there
    audio.wait_for(state="attached")
    page.wait_for_function(
        "() => { const a = document.querySelector('audio') || [...document.querySelectorAll('*')]"
        ".map(e => e.shadowRoot && e.shadowRoot.querySelector('audio')).find(Boolean);"
        " return a && a.readyState >= 2 && a.duration > 0; }",
        timeout=120_000,
    )
    page.wait_for_timeout(1000)
    page.screenshot(path=str(shot))
    duration = audio.evaluate("a => a.duration")
    played = audio.evaluate(
        "a => new Promise(done => { a.muted = true; a.play().then(() =>"
        " setTimeout(() => { const t = a.currentTime; a.pause(); done(t); }, 500),"
        " () => done(-1)); })"
    )
    return {"duration_s": duration, "played_s": played}


def bar_labels(card: tuple[str, list[str]], names: list[str]) -> list[str] | None:
    """A bar chart card's value labels, sorted; None unless its legend (in the card's text)
    names every run of ``names``."""
    text, labels = card
    if not set(names) <= {line.strip() for line in text.splitlines()}:
        return None
    return sorted(label.strip() for label in labels)


def image_keys(client, run_id: str) -> list[str]:
    """The keys of a run's MLflow images (log_image names its files ``<key>+step+...`` with
    ``/`` written ``~``)."""
    files = client.list_artifacts(run_id, "images")
    return sorted({Path(f.path).name.split("+step+")[0].replace("~", "/") for f in files})


def shown_images(sources: list[str]) -> set[tuple[str, str]]:
    """(run id, image key) of each picture URL the image grid loaded."""
    shown = set()
    for source in sources:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(source).query)
        name = Path(query["path"][0]).name
        shown.add((query["run_uuid"][0], name.split("+step+")[0].replace("~", "/")))
    return shown


def pictures(shot: Path) -> dict[str, Path]:
    """The three screenshots: ``shot`` (metrics) and its -images and -audio siblings."""
    return {
        "metrics": shot,
        "images": shot.with_name(f"{shot.stem}-images.png"),
        "audio": shot.with_name(f"{shot.stem}-audio.png"),
    }


def check_compare_view(root: Path, shot: Path) -> dict[str, Any]:
    """Build the store, open the UI on its two versions, take the three screenshots (see
    :func:`pictures`) and check each against the store: the SDR/SDRi rows hold both runs'
    values, the image grid both runs' pictures of every image key, the artifact viewer plays the
    wav for its whole length. Raises RuntimeError naming what is missing."""
    import soundfile
    from mlflow import MlflowClient

    registered = build_store(root)
    uri, experiment = registered[0]["tracking_uri"], registered[0]["experiment_id"]
    client = MlflowClient(uri)
    runs = [client.get_run(r["run_id"]) for r in registered]
    names, ids = [run.info.run_name for run in runs], [run.info.run_id for run in runs]
    keys = image_keys(client, ids[0])
    if not keys or image_keys(client, ids[1]) != keys:
        raise RuntimeError(f"the runs logged different images: {keys}")
    shots = pictures(shot)
    with mlflow_server(uri, root / "mlflow-server.log") as url:
        # a fresh browser profile each: the UI keeps chart searches and panels in local storage
        with browser(root / "chromium-metrics") as context:
            charts = capture_metrics(context, chart_url(url, experiment), names, shots["metrics"])
        with browser(root / "chromium-images") as context:
            page = chart_url(url, experiment)
            sources = capture_images(context, page, names, keys, shots["images"])
        with browser(root / "chromium-audio") as context:
            page = artifact_url(url, experiment, ids[-1], AUDIO)
            audio = capture_audio(context, page, Path(AUDIO).name, shots["audio"])
    drawn = {name: bar_labels(text, names) for name, text in charts.items()}
    expected = {name: sorted(f"{run.data.metrics[name]:.2f}" for run in runs) for name in COMPARED}
    if drawn != expected:
        raise RuntimeError(f"the charts show {drawn}, the store holds {expected}")
    if shown_images(sources) != {(run_id, key) for run_id in ids for key in keys}:
        raise RuntimeError(f"the image grid shows {sorted(shown_images(sources))}")
    wav = soundfile.info(client.download_artifacts(ids[-1], AUDIO, str(root)))
    if abs(audio["duration_s"] - wav.duration) > 0.05 or audio["played_s"] <= 0:
        raise RuntimeError(f"the artifact viewer's player: {audio}, the file: {wav.duration} s")
    return {
        "names": names,
        "charts": drawn,
        "keys": keys,
        "audio": {**audio, "file_s": wav.duration},
        "shots": shots,
        "registered": registered,
    }


def main() -> int:
    apply_offline_defaults()  # before open_clip, mlflow, gradio are imported
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="work folder (the pipeline's paths.root)")
    parser.add_argument("--out", default=str(REPO / "docs" / "mlflow-compare.png"))
    args = parser.parse_args()
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    seen = check_compare_view(root, Path(args.out))
    print(f"charts of {seen['names']}: {json.dumps(seen['charts'])}")
    print(f"image grid of {seen['keys']}; audio player {json.dumps(seen['audio'])}")
    print("screenshots:", ", ".join(str(path) for path in seen["shots"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
