"""The demo launched in-process on a free loopback port, queried with gradio_client."""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_params_at
from servers import free_port
from test_app_handlers import tone, write_mini_world, write_tiny_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*"),
]


@contextlib.contextmanager
def launched_app(root: Path, **serve):
    """Yield (url, params, demo) of the demo serving a tiny random model, closed afterwards.

    Uploads and outputs go to ``root/gradio`` (GRADIO_TEMP_DIR), examples come from a mini world.
    """
    torch.set_num_threads(1)
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    from app.__main__ import load_served
    from app.demo import build_demo, launch

    _, checkpoint = write_tiny_model(root)
    overrides = {
        "separate.device": "cpu",
        "serve.model": str(checkpoint),
        "serve.port": free_port(),
        **{f"serve.{k}": v for k, v in serve.items()},
    }
    params = tiny_params_at(root, **overrides)
    write_mini_world(params)
    served = load_served(params)
    demo = build_demo(params, served)
    try:
        launch(demo, params.serve, served, prevent_thread_lock=True, quiet=True)
        yield f"http://127.0.0.1:{params.serve.port}/", params, demo
    finally:
        demo.close()
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    with launched_app(root, max_file_mb=1) as (url, params, demo):
        yield url, params, root, demo


def test_serves_on_loopback_with_limits_and_no_analytics(app_url):
    url, params, _, demo = app_url
    assert params.serve.host == demo.server_name == "127.0.0.1"
    assert demo.max_file_size == params.serve.max_file_mb << 20
    config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
    assert config["analytics_enabled"] is False
    assert config["max_file_size"] == 1 << 20
    assert "best.pt" in json.dumps(config)


def test_client_separates_an_upload(app_url):
    from gradio_client import Client, handle_file

    url, _, root, _ = app_url
    mixture = tone(2.0)
    sf.write(root / "mix.wav", mixture.T, 22050)
    client = Client(url, verbose=False)
    target, residual, picture, info, *more = client.predict(
        handle_file(str(root / "mix.wav")), None, "flute", None, api_name="/separate"
    )
    assert more == [None, None, None]  # the extra stem players stay empty for one query
    target_wave, rate = sf.read(target, always_2d=True)
    residual_wave, _ = sf.read(residual, always_2d=True)
    assert rate == 22050 and target_wave.shape == residual_wave.shape == mixture.T.shape
    # int16 outputs: target + residual gives the mixture back up to rounding
    assert np.abs(target_wave + residual_wave - mixture.T).max() < 5e-4
    assert Path(picture).suffix == ".png" and "text 'flute'" in info
    # comma-separated queries: one player per stem; stems + residual = mixture
    first, residual, _, info, second, third, fourth = client.predict(
        handle_file(str(root / "mix.wav")), None, "flute, cello", None, api_name="/separate"
    )
    assert third is None and fourth is None and "'cello' sounds at" in info
    total = sum(sf.read(f, always_2d=True)[0] for f in (first, second, residual))
    assert np.abs(total - mixture.T).max() < 1e-3


def test_api_inputs_are_optional_and_every_stem_is_a_downloaded_file(app_url):
    """The new-user trial: view_api marked all four inputs required, stems 2-4 came back as
    update dicts with server paths, and the files missed the input by one step."""
    from gradio_client import Client, handle_file

    url, _, root, _ = app_url
    client = Client(url, verbose=False, download_files=root / "client")
    parameters = client.view_api(print_info=False, return_format="dict")["named_endpoints"][
        "/separate"
    ]["parameters"]
    assert [p["parameter_name"] for p in parameters] == [
        "audio_path",
        "video_path",
        "text",
        "picture",
    ]
    assert all(p["parameter_has_default"] for p in parameters)
    assert [p["parameter_default"] for p in parameters] == [None, None, None, None]
    sf.write(root / "mix16.wav", tone(2.0, level=0.6).T, 22050, subtype="PCM_16")
    steps, _ = sf.read(root / "mix16.wav", dtype="int16", always_2d=True)
    first, residual, _, info, second, third, fourth = client.predict(
        audio_path=handle_file(str(root / "mix16.wav")),
        text="violin, cello, flute",
        api_name="/separate",
    )
    assert fourth is None and "'flute' sounds at" in info
    files = [first, second, third, residual]
    # each a file the client downloaded (not an update dict holding a server path)
    assert all(isinstance(f, str) and Path(f).is_relative_to(root / "client") for f in files)
    # named as clipsep separate names stems, not all "audio.wav" (a new-user trial)
    assert [Path(f).name for f in files] == ["violin.wav", "cello.wav", "flute.wav", "residual.wav"]
    total = sum(sf.read(f, dtype="int16", always_2d=True)[0].astype(np.int32) for f in files)
    np.testing.assert_array_equal(total, steps)  # exactly: stems + residual == the upload


def test_api_video_without_a_query_uses_its_middle_frame(app_url):
    from gradio_client import Client, handle_file
    from media_factory import VideoSpec, write_video

    url, _, root, _ = app_url
    video = write_video(root / "clip.mp4", VideoSpec(seconds=2.0))
    client = Client(url, verbose=False)
    target, residual, _, info, *more = client.predict(
        video_path=handle_file(str(video)), api_name="/separate"
    )
    assert info.startswith("query: the video's middle frame (image query) | input: clip.mp4")
    assert sf.read(target)[1] == 44100 and more == [None, None, None]


def test_bad_input_is_a_message_not_a_traceback(app_url):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, _, root, _ = app_url
    sf.write(root / "silent.wav", np.zeros(22050, np.float32), 22050)
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match="silent"):
        client.predict(
            handle_file(str(root / "silent.wav")), None, "flute", None, api_name="/separate"
        )
    with pytest.raises(AppError, match="No query"):
        client.predict(handle_file(str(root / "mix.wav")), None, "   ", None, api_name="/separate")


def test_upload_over_the_size_limit_is_refused(app_url):
    url, _, root, _ = app_url
    big = root / "big.wav"
    sf.write(
        big,
        np.random.default_rng(0).uniform(-0.5, 0.5, 400_000).astype(np.float32),
        16000,
        subtype="FLOAT",
    )
    boundary = "clipsepboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
        f'filename="big.wav"\r\nContent-Type: audio/wav\r\n\r\n'
    )
    body = head.encode() + big.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url + "gradio_api/upload",
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413


def test_app_command_serves_the_page(tmp_path):
    """The documented command `python -m app` serves until stopped; a bad model exits with 2."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    _, checkpoint = write_tiny_model(tmp_path)
    port = free_port()
    env = {
        **os.environ,
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        "-m",
        "app",
        "--params",
        str(REPO / "params.yaml"),
        "--profile",
        "tiny",
        "--model",
        str(checkpoint),
        "--port",
        str(port),
    ]
    server = subprocess.Popen(
        command,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, config = time.monotonic() + 180, None  # 10 s when quiet
        while config is None and time.monotonic() < deadline and server.poll() is None:
            try:
                config = json.loads(
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5).read()
                )
            except OSError:
                time.sleep(0.5)
        log = server.stdout.read1().decode() if server.poll() is not None else "still starting"
        assert config is not None, log
        assert config["analytics_enabled"] is False and str(checkpoint) in json.dumps(config)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # still importing (a loaded machine): stop it anyway
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    missing = subprocess.run(
        [*command[:-4], "--model", str(tmp_path / "missing.pt")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "missing.pt" in missing.stderr
    assert "Traceback" not in missing.stderr
