"""`clipsep separate` skips a file only when its outputs answer the same request (separation.json);
the stale-stem warning reaches the terminal; usage errors before the model loads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import soundfile as sf

from clipsep import batch, outputs
from conftest import REPO
from test_inference import tones
from test_separate_cli import model, run_cli  # noqa: F401 - module fixture

AGAIN = "separated again"
FORMAT = outputs.DEFAULT_FORMAT


def never_load(monkeypatch) -> None:
    """Make loading a model fail the test (a run that must decide everything without it)."""
    from clipsep.inference import Separator

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Separator, "from_pretrained", refuse)


def rows(table: str) -> list[str]:
    return table.strip().splitlines()[1:-1]


def test_another_query_separates_again_and_says_why(model, tmp_path, capsys):  # noqa: F811
    """flute, then trumpet into the same folder: trumpet is separated (it was skipped, leaving the
    flute stem as target.wav), the table says why; trumpet again is skipped."""
    sf.write(tmp_path / "x.wav", tones(16000, 1.5, 1)[0], 16000, subtype="FLOAT")
    out, folder = tmp_path / "out", tmp_path / "out" / "x"
    assert run_cli(model, out, tmp_path / "x.wav", extra=["--query", "flute"]) == 0
    flute = (folder / "target.wav").read_bytes()
    assert json.loads((folder / "separation.json").read_text())["queries"] == ["flute"]
    capsys.readouterr()

    assert run_cli(model, out, tmp_path / "x.wav", extra=["--query", "trumpet"]) == 0
    [row] = rows(capsys.readouterr().out)
    assert "separated" in row and f"outputs were made with other queries: {AGAIN}" in row
    assert (folder / "target.wav").read_bytes() != flute
    assert json.loads((folder / "separation.json").read_text())["queries"] == ["trumpet"]

    assert run_cli(model, out, tmp_path / "x.wav", extra=["--query", "trumpet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["skipped"]) == [str(tmp_path / "x.wav")] and report["separated"] == {}


@pytest.mark.parametrize(
    "change, extra, reason",
    [
        ("bits", ["--bits", "16"], "outputs were made with another bit depth"),
        (
            "settings",
            ["--set", "separate.overlap=0.5"],
            "outputs were made with other separate settings",
        ),
        ("model", [], "outputs were made with another model"),
        ("input", [], "outputs were made with another version of the input file"),
        ("input path", [], "outputs were made with another input file"),
        ("no record", [], "outputs have no separation.json (an older version made them)"),
    ],
)
def test_outputs_of_another_request_are_made_again(model, tmp_path, capsys, change, extra, reason):  # noqa: F811
    audio = tmp_path / "x.wav"
    sf.write(audio, tones(16000, 1.5, 1)[0], 16000, subtype="FLOAT")
    out, folder = tmp_path / "out", tmp_path / "out" / "x"
    assert run_cli(model, out, audio, extra=["--query", "flute"]) == 0
    capsys.readouterr()
    used = model
    if change == "model":  # another checkpoint file (the same weights, saved elsewhere)
        from test_inference import make_tiny_model

        (tmp_path / "retrained").mkdir()
        used = make_tiny_model(tmp_path / "retrained")
    elif change == "input":
        sf.write(audio, tones(16000, 1.5, 1)[0] * 0.5, 16000, subtype="FLOAT")
    elif change == "input path":  # the same name (so the same output folder) elsewhere
        (tmp_path / "elsewhere").mkdir()
        audio = tmp_path / "elsewhere" / "x.wav"
        sf.write(audio, tones(16000, 1.5, 1)[0], 16000, subtype="FLOAT")
    elif change == "no record":
        (folder / "separation.json").unlink()
    assert run_cli(used, out, audio, extra=["--query", "flute", "--json", *extra]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["skipped"] == {}
    assert report["separated"][str(audio)]["note"] == f"{reason}: {AGAIN}"
    assert (folder / "separation.json").is_file()
    assert run_cli(used, out, audio, extra=["--query", "flute", "--json", *extra]) == 0
    assert list(json.loads(capsys.readouterr().out)["skipped"]) == [str(audio)]


def test_the_python_api_writes_the_record_the_cli_skips_on(model, tmp_path, monkeypatch, capsys):  # noqa: F811
    from clipsep.inference import Separator

    checkpoint, clip = model
    audio = tmp_path / "x.wav"
    sf.write(audio, tones(16000, 1.5, 1)[0], 16000)
    separator = Separator.from_pretrained(checkpoint, device="cpu", clip_weights=clip)
    separator.separate_file(audio, tmp_path / "out", queries=["violin", "cello"])
    record = json.loads((tmp_path / "out" / "x" / outputs.SIDECAR).read_text())
    assert record["queries"] == ["violin", "cello"] and record["model"]["version"] is None
    never_load(monkeypatch)
    again = ["--query", "violin", "--query", "cello"]
    assert run_cli(model, tmp_path / "out", audio, extra=again) == 0
    assert "1 skipped" in capsys.readouterr().out


def test_a_run_that_skips_every_file_loads_no_model(model, tmp_path, monkeypatch, capsys):  # noqa: F811
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        sf.write(tmp_path / "in" / f"{name}.wav", tones(16000, 1.2, 1)[0], 16000)
    assert run_cli(model, tmp_path / "out", tmp_path / "in", extra=["--query", "cello"]) == 0
    capsys.readouterr()
    never_load(monkeypatch)
    assert run_cli(model, tmp_path / "out", tmp_path / "in", extra=["--query", "cello"]) == 0
    assert "0 separated, 2 skipped, 0 failed" in capsys.readouterr().out


def test_summary_counts_files_in_words():
    assert [batch.count_files(n, "separated") for n in (0, 1, 3)] == [
        "0 files were separated",
        "1 file was separated",
        "3 files were separated",
    ]


def test_the_cli_prints_the_stale_stem_warning_on_a_line_of_its_own(model, tmp_path):  # noqa: F811
    """violin + cello, then flute into the same folder: one WARNING line in the terminal names
    the earlier stems (not glued behind the progress bar, not missing)."""
    checkpoint, clip = model
    audio = tmp_path / "x.wav"
    sf.write(audio, tones(16000, 1.5, 1)[0], 16000)

    def separate(*queries: str) -> list[str]:
        args = [a for q in queries for a in ("--query", q)]
        done = subprocess.run(
            [sys.executable, "-m", "clipsep", "separate", str(audio), "--out", str(tmp_path / "o")]
            + ["--model", str(checkpoint), "--clip-weights", str(clip), *args]
            + ["--params", str(REPO / "params.yaml"), "--profile", "tiny"]
            + ["--set", "separate.device=cpu"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        # what a terminal shows of each line: the text after its last carriage return
        return [line.rsplit("\r", 1)[-1] for line in done.stderr.split("\n")]

    assert not [line for line in separate("violin", "cello") if "WARNING" in line]
    warnings = [line for line in separate("flute") if "WARNING" in line]
    assert len(warnings) == 1
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d WARNING clipsep\.outputs: .*x\.wav: .* also holds cello\.wav, "
        r"violin\.wav from an earlier run .*",
        warnings[0],
    ), warnings


EMPTY = "the text query is empty ({!r}); say what to extract, e.g. 'acoustic guitar' (--query TEXT)"


@pytest.mark.parametrize(
    "queries, message",
    [
        ([""], EMPTY.format("")),
        (["violin", "   "], EMPTY.format("   ")),
        (["violin", "violin"], "the query 'violin' is given twice: give each once"),
        (
            ["violin", "Violin"],
            "the queries 'violin', 'Violin' would write files whose names differ only in case "
            "(Violin.wav, violin.wav), one file on case-insensitive file systems (macOS, "
            "Windows): rename one",
        ),
        (["a/b", "a_b"], "the queries 'a/b', 'a_b' would write the same file a_b.wav: rename one"),
        (
            ["residual", "cello"],
            "the query 'residual' would write residual.wav, the residual's file: rename it",
        ),
    ],
)
def test_a_bad_query_list_is_one_usage_error_before_loading(
    model,  # noqa: F811
    tmp_path,
    monkeypatch,
    caplog,
    capsys,
    queries,
    message,
):
    sf.write(tmp_path / "x.wav", tones(16000, 1.0, 1)[0], 16000)
    never_load(monkeypatch)
    extra = [a for q in queries for a in ("--query", q)]
    assert run_cli(model, tmp_path / "out", tmp_path / "x.wav", extra=extra) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [message]
    assert capsys.readouterr().out == "" and not (tmp_path / "out").exists()


def test_a_text_query_named_like_the_image_stem_is_one_usage_error(
    model,  # noqa: F811
    tmp_path,
    monkeypatch,
    caplog,
    capsys,
):
    """New-user trial: `--query image --image violin.jpg` said "the query 'image' is given
    twice", given once: its file would be the image query's."""
    from PIL import Image

    sf.write(tmp_path / "x.wav", tones(16000, 1.0, 1)[0], 16000)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "pic.png")
    never_load(monkeypatch)
    extra = ["--query", "Image", "--query", "violin", "--image", str(tmp_path / "pic.png")]
    assert run_cli(model, tmp_path / "out", tmp_path / "x.wav", extra=extra) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "the query 'Image' would write the image query's stem (image): rename it (--query TEXT)"
    ]
    assert capsys.readouterr().out == "" and not (tmp_path / "out").exists()


def test_no_query_for_an_audio_file_is_one_usage_error_before_loading(
    model,  # noqa: F811
    tmp_path,
    monkeypatch,
    caplog,
    capsys,
):
    """Only a video can be its own query: audio without --query/--image is refused up front."""
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", tones(16000, 1.0, 1)[0], 16000)
    never_load(monkeypatch)
    assert run_cli(model, tmp_path / "out", tmp_path / "a.wav", tmp_path / "b.wav") == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"no query: {tmp_path / 'a.wav'} (and 1 more) has no video picture to serve as the "
        "query; give a text query or an image (--query TEXT / --image PATH)"
    ]
    assert capsys.readouterr().out == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("as_json", [False, True])
def test_one_unreadable_named_file_is_one_error_line(model, tmp_path, caplog, capsys, as_json):  # noqa: F811
    """A single input that fails: its error line alone (no table, no count of failures; with
    --json, the report names it)."""
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio at all\n" * 20)
    extra = ["--query", "cello", *(["--json"] if as_json else [])]
    assert run_cli(model, tmp_path / "out", bad, extra=extra) == 2
    records = [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]
    assert [r.levelname for r in records] == ["ERROR"] and str(bad) in records[0].getMessage()
    out = capsys.readouterr().out
    if as_json:
        assert list(json.loads(out)["failed"]) == [str(bad)]
    else:
        assert out == ""


def test_the_record_compares_equal_after_a_round_trip_through_json(tmp_path):
    """What is written compares equal to what a later run wants (tuples, None, floats)."""
    from clipsep.config import SeparateConfig

    audio = tmp_path / "x.wav"
    sf.write(audio, tones(16000, 0.5, 1)[0], 16000)
    (tmp_path / "ckpt.pt").write_bytes(b"weights")
    model_record = outputs.model_record(tmp_path / "ckpt.pt", "3", None, SeparateConfig())
    wanted = outputs.request_record(
        audio, model_record, outputs.OutputFormat("flac", "16"), queries=("a", "b")
    )
    outputs.write_record(tmp_path, wanted)
    assert outputs.why_separate_again(tmp_path, wanted) is None
    other = outputs.request_record(audio, model_record, outputs.OutputFormat("flac", "16"), "a")
    assert outputs.why_separate_again(tmp_path, other) == (
        f"outputs were made with other queries: {AGAIN}"
    )


def test_outputs_made_on_another_device_are_made_again(model, tmp_path, capsys):  # noqa: F811
    """separation.json records the device the model ran on, as resolved: outputs a GPU made are
    not what this CPU run writes, so they are made again; ``auto`` is the device it resolves to."""
    from clipsep.env import resolve_device

    audio = tmp_path / "x.wav"
    sf.write(audio, tones(16000, 1.5, 1)[0], 16000, subtype="FLOAT")
    out, sidecar = tmp_path / "out", tmp_path / "out" / "x" / outputs.SIDECAR
    assert run_cli(model, out, audio, extra=["--query", "flute"]) == 0
    record = json.loads(sidecar.read_text())
    assert record["model"]["device"] == "cpu" and record["model"]["calibration"] is None
    record["model"]["device"] = "cuda"  # as a run on a GPU machine records it
    sidecar.write_text(json.dumps(record))
    capsys.readouterr()
    assert run_cli(model, out, audio, extra=["--query", "flute", "--json"]) == 0
    note = json.loads(capsys.readouterr().out)["separated"][str(audio)]["note"]
    assert note == f"outputs were made with another device: {AGAIN}"
    assert json.loads(sidecar.read_text())["model"]["device"] == "cpu"
    auto = ["--query", "flute", "--json", "--set", "separate.device=auto"]
    assert run_cli(model, out, audio, extra=auto) == 0
    skipped = list(json.loads(capsys.readouterr().out)["skipped"])
    assert skipped == ([str(audio)] if resolve_device("auto") == "cpu" else [])


def test_the_calibration_folder_is_recorded_for_the_int8_engine_only(tmp_path):
    """A changed int8 calibration clip folder is another request; for the other engines the clip
    folder plays no part (re-ingesting does not redo their outputs)."""
    from clipsep.config import SeparateConfig

    (tmp_path / "ckpt.pt").write_bytes(b"weights")
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "manifest.csv").write_text("clip_id\n")

    def record(engine: str, folder) -> dict:
        settings = SeparateConfig(engine=engine)
        return outputs.model_record(tmp_path / "ckpt.pt", None, None, settings, None, "cpu", folder)

    int8 = record("onnx-int8", clips)["calibration"]
    assert int8["path"] == str(clips.resolve())
    assert [f["path"] for f in int8["files"]] == [str(clips.resolve() / "manifest.csv")]
    assert record("torch", clips)["calibration"] is None
    assert record("onnx", clips)["calibration"] is None
    missing = record("onnx-int8", tmp_path / "nowhere")["calibration"]
    assert missing == {"path": str((tmp_path / "nowhere").resolve())}
    wanted = outputs.request_record(
        tmp_path / "ckpt.pt", record("onnx-int8", clips), FORMAT, "flute"
    )
    outputs.write_record(tmp_path, wanted)
    (clips / "manifest.csv").write_text("clip_id\nnew\n")  # ingested again
    again = outputs.request_record(
        tmp_path / "ckpt.pt", record("onnx-int8", clips), FORMAT, "flute"
    )
    assert outputs.why_separate_again(tmp_path, again) == (
        f"outputs were made with another int8 calibration clip folder: {AGAIN}"
    )


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_the_default_depth_and_the_same_depth_named_are_the_same_request(
    model,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
    fmt,
):
    """New-user trial: ``--format flac`` wrote 16-bit files from a 16-bit input, and the same
    with ``--bits 16`` separated again, "made with another bit depth". The record holds the
    sample format written, so the second run is skipped; 24 bits is another request."""
    audio = tmp_path / "x.wav"
    sf.write(audio, tones(16000, 1.5, 1)[0], 16000, subtype="PCM_16")
    out, folder = tmp_path / "out", tmp_path / "out" / "x"
    base = ["--query", "flute", "--format", fmt, "--json"]
    assert run_cli(model, out, audio, extra=base) == 0
    capsys.readouterr()
    assert sf.info(str(folder / f"target.{fmt}")).subtype == "PCM_16"
    assert json.loads((folder / outputs.SIDECAR).read_text())["subtype"] == "PCM_16"
    with monkeypatch.context() as m:
        never_load(m)
        assert run_cli(model, out, audio, extra=[*base, "--bits", "16"]) == 0
        assert list(json.loads(capsys.readouterr().out)["skipped"]) == [str(audio)]
    assert run_cli(model, out, audio, extra=[*base, "--bits", "24"]) == 0
    note = json.loads(capsys.readouterr().out)["separated"][str(audio)]["note"]
    assert note == f"outputs were made with another bit depth: {AGAIN}"
    assert sf.info(str(folder / f"target.{fmt}")).subtype == "PCM_24"
