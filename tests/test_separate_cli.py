"""`clipsep separate`: two files per input (audio or video), layout kept, nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from clipsep.cli import main
from clipsep.errors import BadInputError
from conftest import REPO
from test_inference import make_tiny_model, tones


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model"))


def run_cli(model, out: Path, *inputs, extra=()) -> int:
    checkpoint, clip = model
    return main(
        [
            "separate",
            *map(str, inputs),
            "--model",
            str(checkpoint),
            "--clip-weights",
            str(clip),
            "--out",
            str(out),
            "--params",
            str(REPO / "params.yaml"),
            "--profile",
            "tiny",
            "--set",
            "separate.device=cpu",
            *extra,
        ]
    )


def write_video(path: Path, audio: np.ndarray | None, rate: int = 44100) -> None:
    """A 2-s H.264 (+ AAC stereo unless ``audio`` is None) clip whose frames are a flat colour."""
    import av

    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=8)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        if audio is not None:
            sound = out.add_stream("aac", rate=rate)
            sound.layout = "stereo"
        for _ in range(16):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 90, np.uint8), format="rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if audio is None:
            return
        for start in range(0, audio.shape[1], 1024):
            block = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio[:, start : start + 1024]), format="fltp", layout="stereo"
            )
            block.sample_rate, block.pts = rate, start
            out.mux(sound.encode(block))
        out.mux(sound.encode())


def test_writes_target_and_residual_per_input(model, tmp_path):
    stereo = tones(44100, 2.0, 2)
    sf.write(tmp_path / "duet.wav", stereo.T, 44100)
    sf.write(tmp_path / "solo.flac", tones(22050, 1.5, 1)[0], 22050)
    write_video(tmp_path / "clip.mp4", stereo, 44100)
    out = tmp_path / "out"
    assert (
        run_cli(
            model,
            out,
            tmp_path / "duet.wav",
            tmp_path / "solo.flac",
            tmp_path / "clip.mp4",
            extra=["--query", "cello"],
        )
        == 0
    )
    for stem, rate, channels in [("duet", 44100, 2), ("solo", 22050, 1), ("clip", 44100, 2)]:
        mixture = None
        for name in ("target.wav", "residual.wav"):
            info = sf.info(out / stem / name)
            assert (info.samplerate, info.channels) == (rate, channels)
            data, _ = sf.read(out / stem / name, dtype="int16", always_2d=True)
            mixture = data.astype(np.int32) if mixture is None else mixture + data
        if stem != "clip":  # a video has no file-level sample count to compare with
            source, _ = sf.read(next(tmp_path.glob(f"{stem}.*")), dtype="int16", always_2d=True)
            assert mixture.shape == source.shape
            # target + residual = input exactly, in the 16-bit PCM the outputs keep from it
            assert (
                sf.info(out / stem / "target.wav").subtype
                == sf.info(next(tmp_path.glob(f"{stem}.*"))).subtype
                == "PCM_16"
            )
            np.testing.assert_array_equal(mixture, source)
    assert sorted(p.name for p in out.iterdir()) == ["clip", "duet", "solo"]  # no temp leftovers


def test_video_without_query_uses_its_middle_frame(model, tmp_path):
    write_video(tmp_path / "v.mp4", tones(44100, 2.0, 2), 44100)
    assert run_cli(model, tmp_path / "out", tmp_path / "v.mp4") == 0
    assert (tmp_path / "out" / "v" / "target.wav").is_file()


@pytest.mark.parametrize(
    "problem", ["missing", "corrupt", "nan", "silent", "no query", "no audio stream"]
)
def test_bad_input_exits_2_and_writes_nothing(model, tmp_path, problem, caplog):
    bad = tmp_path / ("bad.mp4" if problem == "no audio stream" else "bad.wav")
    audio = tones(16000, 1.0, 1)[0]
    if problem == "no audio stream":
        write_video(bad, None)
    elif problem == "corrupt":
        bad.write_bytes(b"RIFF\x00\x00garbage" * 10)
    elif problem == "nan":
        audio[300] = np.nan
    elif problem == "silent":
        audio[:] = 0.0
    if problem in ("nan", "silent", "no query"):
        sf.write(bad, audio, 16000, subtype="FLOAT")
    out = tmp_path / "out"
    extra = [] if problem == "no query" else ["--query", "flute"]
    assert run_cli(model, out, bad, extra=extra) == 2
    assert "bad." in caplog.text or "query" in caplog.text
    assert not out.exists() or list(out.iterdir()) == []


def test_inputs_sharing_a_stem_are_refused(model, tmp_path):
    for name in ("take.wav", "take.flac"):
        sf.write(tmp_path / name, tones(16000, 1.0, 1)[0], 16000)
    out = tmp_path / "out"
    assert (
        run_cli(
            model, out, tmp_path / "take.wav", tmp_path / "take.flac", extra=["--query", "cello"]
        )
        == 2
    )
    assert not out.exists()


@pytest.mark.slow  # `register` logs a real pyfunc model into a fresh sqlite registry (~10-30 s)
def test_default_model_is_the_registry_champion_of_the_params(tmp_path, monkeypatch):
    """No --model: separate.model = models:/clipsep@champion in the store params.yaml names."""
    from platform_inputs import save_random_clip, write_pipeline_outputs

    from clipsep import tracking
    from conftest import tiny_params_at

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tiny_params_at(tmp_path)
    assert params.separate.model == "models:/clipsep@champion"
    write_pipeline_outputs(
        params, text_sdr=5.0, clip_weights=save_random_clip(params, tmp_path / "clip-source.pt")
    )
    assert tracking.register(params)["alias"] == "champion"
    mix = tmp_path / "mix.wav"
    sf.write(mix, tones(22050, 2.0, channels=2).T, 22050)
    # a fresh process (no MLflow globals left by `register`), run outside the project folder:
    # the registry must come from --params, and nothing may appear in the working folder
    work = tmp_path / "elsewhere"
    work.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipsep",
            "separate",
            str(mix),
            "--query",
            "cello",
            "--out",
            str(tmp_path / "out"),
            "--params",
            str(REPO / "params.yaml"),
            "--profile",
            "tiny",
            "--set",
            f"paths.root={tmp_path}",
            "--set",
            "separate.device=cpu",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(work.iterdir()) == []
    assert "Downloading artifacts" not in done.stderr  # MLflow's progress bar: off by default
    target, rate = sf.read(tmp_path / "out" / "mix" / "target.wav")
    assert rate == 22050 and target.shape == (44100, 2)


@pytest.mark.parametrize(
    "query, flags", [(None, "(--query TEXT / --image PATH)"), ("  ", "(--query TEXT)")]
)
def test_the_cli_names_its_flags_the_library_its_arguments(model, tmp_path, caplog, query, flags):
    from clipsep.inference import Separator

    mix = tmp_path / "mix.wav"
    sf.write(mix, tones(16000, 1.0, 1)[0], 16000)
    extra = [] if query is None else ["--query", query]
    assert run_cli(model, tmp_path / "out", mix, extra=extra) == 2
    assert flags in caplog.text
    checkpoint, clip = model
    separator = Separator.from_pretrained(checkpoint, device="cpu", clip_weights=clip)
    with pytest.raises(BadInputError) as caught:
        separator.separate(tones(16000, 1.0, 1)[0], 16000, query=query)
    assert "--" not in str(caught.value) and "query" in caught.value.arguments


def test_a_second_image_is_a_usage_error_not_silently_dropped(model, tmp_path, caplog):
    """New-user trial: `--image cello.jpg --image violin.png` separated with violin.png alone
    (argparse keeps the last); now one line says so, before any work."""
    from PIL import Image

    mix = tmp_path / "mix.wav"
    sf.write(mix, tones(16000, 1.0, 1)[0], 16000)
    pictures = [tmp_path / "a.png", tmp_path / "b.png"]
    for picture in pictures:
        Image.new("RGB", (32, 32)).save(picture)
    extra = ["--image", str(pictures[0]), "--image", str(pictures[1])]
    assert run_cli(model, tmp_path / "out", mix, extra=extra) == 2
    assert "--image is given 2 times: one image query per run" in caplog.text
    assert not (tmp_path / "out").exists()


def test_an_unreadable_image_is_a_usage_error_before_the_model_loads(model, tmp_path, caplog):
    """A file that is no image (here text named .png) was found only when the first input was
    separated, after the model had loaded: now exit 2 at once, naming the file, nothing written."""
    mix, picture = tmp_path / "mix.wav", tmp_path / "cello.png"
    sf.write(mix, tones(16000, 1.0, 1)[0], 16000)
    picture.write_text("not a picture")
    assert run_cli(model, tmp_path / "out", mix, extra=["--image", str(picture)]) == 2
    assert f"{picture}: not a readable image" in caplog.text
    loading = ("clipsep.model", "clipsep.precision")  # CLIP built, precision chosen: none of it
    assert [r.name for r in caplog.records if r.name.startswith(loading)] == []
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_without_one_is_named_not_blamed_on_the_checkpoint(model, tmp_path, caplog):
    """New-user trial: --set separate.device=cuda on a CPU machine said "cannot read checkpoint
    ...: corrupt, truncated or not a weights-only torch file"."""
    from clipsep.env import resolve_device

    mix = tmp_path / "mix.wav"
    sf.write(mix, tones(16000, 1.0, 1)[0], 16000)
    cuda = ["--query", "flute", "--set", "separate.device=cuda"]
    assert run_cli(model, tmp_path / "out", mix, extra=cuda) == 2
    assert "device 'cuda': this machine has no CUDA device; use auto or cpu" in caplog.text
    assert "cannot read checkpoint" not in caplog.text
    with pytest.raises(BadInputError, match="'gpu' is not a torch device"):
        resolve_device("gpu")


def test_out_has_the_short_flag_o():
    from clipsep.cli import build_parser

    assert build_parser().parse_args(["separate", "a.wav", "-o", "stems"]).out == "stems"


def test_version_names_the_installed_distribution(capsys):
    from importlib import metadata

    from clipsep.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"clipsep {metadata.version('clipsep')}\n"


def test_a_missing_model_path_is_named_under_the_profile_root(model, tmp_path, monkeypatch, caplog):  # noqa: F811
    """New-user trial: `--profile tiny --model models/clipsep/best.pt` looked in the working
    folder (as every path on the command line does, and still does), while the tiny run had
    written the file under the profile's own root runs/tiny/: the error now says where it is."""
    import shutil

    checkpoint, clip = model
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs" / "tiny"
    (root / "models" / "clipsep").mkdir(parents=True)
    shutil.copy(checkpoint, root / "models" / "clipsep" / "best.pt")
    sf.write(tmp_path / "x.wav", tones(16000, 1.0, 1)[0], 16000)

    def separate(model_path, root, *profile):
        caplog.clear()
        flags = ["--params", str(REPO / "params.yaml"), *profile, "--set", f"paths.root={root}"]
        status = main(
            ["separate", "x.wav", "--query", "cello", "--model", model_path, "--out", "out"]
            + ["--clip-weights", str(clip), "--set", "separate.device=cpu", *flags]
        )
        return status, [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]

    hint = (
        "checkpoint models/clipsep/best.pt not found (paths on the command line are relative to "
        f"the working folder {tmp_path}); under {{}} it is runs/tiny/models/clipsep/best.pt"
    )
    tiny = ("--profile", "tiny")
    assert separate("models/clipsep/best.pt", root, *tiny) == (
        2,
        [hint.format("--profile tiny's root")],
    )
    assert separate("models/clipsep/best.pt", root) == (
        2,
        [hint.format("the params' root (paths.root)")],
    )
    # the root is the working folder, or the file is under neither: the message as before
    for missing, where in (("models/clipsep/best.pt", tmp_path), ("models/other.pt", root)):
        assert separate(missing, where, *tiny) == (
            2,
            [f"checkpoint {missing} not found (give a file or models:/NAME@ALIAS)"],
        )
    assert not (tmp_path / "out").exists()
    assert separate("runs/tiny/models/clipsep/best.pt", root, *tiny) == (0, [])
    assert (tmp_path / "out" / "x" / "target.wav").is_file()
    # the tiny profile's own relative root (runs/tiny, from the params file's folder): the same
    # hint (it never fired while path("root") joined a relative root onto itself)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    caplog.clear()
    status = main(
        ["separate", "x.wav", "--query", "cello", "--model", "models/clipsep/best.pt"]
        + ["--out", "out2", "--clip-weights", str(clip), "--set", "separate.device=cpu"]
        + ["--params", str(tmp_path / "params.yaml"), "--profile", "tiny"]
    )
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert (status, errors) == (2, [hint.format("--profile tiny's root")])


def test_a_model_folder_is_named_as_a_folder_with_its_checkpoint(
    model,  # noqa: F811
    tmp_path,
    monkeypatch,
    caplog,
):
    """New-user trial: `--model models/clipsep` (the folder training writes best.pt in) said
    "checkpoint models/clipsep not found". It says it is a folder and names the checkpoint in it
    (best.pt, else its one *.pt), at the CLI and in Separator.from_pretrained alike."""
    import shutil

    from clipsep.errors import MissingWeightsError
    from clipsep.inference import Separator

    checkpoint, clip = model
    monkeypatch.chdir(tmp_path)
    folder = Path("models") / "clipsep"
    folder.mkdir(parents=True)
    sf.write(tmp_path / "x.wav", tones(16000, 1.0, 1)[0], 16000)

    def separate():
        caplog.clear()
        status = main(
            ["separate", "x.wav", "--query", "cello", "--model", str(folder), "--out", "out"]
            + ["--clip-weights", str(clip), "--params", str(REPO / "params.yaml")]
            + ["--profile", "tiny", "--set", "separate.device=cpu"]
        )
        return status, [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]

    plain = "models/clipsep is a folder, not a checkpoint file (give a file or models:/NAME@ALIAS)"
    assert separate() == (2, [plain])
    shutil.copy(checkpoint, folder / "last.pt")
    one = "models/clipsep is a folder, not a checkpoint file: did you mean models/clipsep/last.pt?"
    assert separate() == (2, [one])
    shutil.copy(checkpoint, folder / "other.pt")
    assert separate() == (2, [plain])  # two checkpoints, neither best.pt: no guess
    shutil.copy(checkpoint, folder / "best.pt")
    best = "models/clipsep is a folder, not a checkpoint file: did you mean models/clipsep/best.pt?"
    assert separate() == (2, [best])
    with pytest.raises(MissingWeightsError) as err:
        Separator.from_pretrained(folder, device="cpu", clip_weights=clip)
    assert str(err.value) == best
    assert not (tmp_path / "out").exists()
    folder = folder / "best.pt"  # the suggestion, taken
    assert separate() == (0, [])
    assert (tmp_path / "out" / "x" / "target.wav").is_file()
