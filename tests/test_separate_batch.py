"""`clipsep separate`: several queries, output formats and bit depths, folders, --json, activity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clipsep.errors import BadInputError
from test_inference import separator, tones  # noqa: F401 - module fixture
from test_separate_cli import model, run_cli, write_video  # noqa: F401 - module fixture


def test_several_queries_write_one_stem_each_and_sum_to_the_input(model, tmp_path, capsys):  # noqa: F811
    audio = tones(44100, 2.0, 2)
    sf.write(tmp_path / "duet.wav", audio.T, 44100, subtype="FLOAT")
    out = tmp_path / "out"
    assert (
        run_cli(
            model,
            out,
            tmp_path / "duet.wav",
            extra=["--query", "violin", "--query", "acoustic guitar", "--query", "cello/bass?"],
        )
        == 0
    )
    files = sorted(p.name for p in (out / "duet").iterdir())
    assert files == [
        "acoustic_guitar.activity.csv",
        "acoustic_guitar.wav",
        "cello_bass.activity.csv",
        "cello_bass.wav",
        "residual.wav",
        "separation.json",
        "violin.activity.csv",
        "violin.wav",
    ]
    total = sum(
        sf.read(out / "duet" / f, dtype="float32", always_2d=True)[0].T
        for f in ("violin.wav", "acoustic_guitar.wav", "cello_bass.wav", "residual.wav")
    )
    assert np.abs(total - audio).max() <= 4 * np.finfo(np.float32).eps


@pytest.mark.parametrize(
    "fmt,bits,subtype",
    [
        ("wav", None, "FLOAT"),
        ("wav", "16", "PCM_16"),
        ("wav", "24", "PCM_24"),
        ("flac", None, "PCM_24"),
        ("flac", "16", "PCM_16"),
        ("mp3", None, "MPEG_LAYER_III"),
    ],
)
def test_output_format_and_bit_depth(model, tmp_path, fmt, bits, subtype):  # noqa: F811
    sf.write(tmp_path / "take.wav", tones(22050, 1.5, 2).T, 22050, subtype="FLOAT")
    extra = ["--query", "cello", "--format", fmt] + (["--bits", bits] if bits else [])
    assert run_cli(model, tmp_path / "out", tmp_path / "take.wav", extra=extra) == 0
    for name in ("target", "residual"):
        info = sf.info(tmp_path / "out" / "take" / f"{name}.{fmt}")
        assert (info.subtype, info.samplerate, info.channels) == (subtype, 22050, 2)
        if fmt != "mp3":  # mp3 pads the start and end with encoder delay
            assert info.frames == int(22050 * 1.5)


def test_integer_output_clips_and_says_how_many_samples(model, tmp_path, caplog):  # noqa: F811
    loud = tones(16000, 1.5, 1) * 6.0  # peaks near 1.9: a float input beyond full scale
    sf.write(tmp_path / "loud.wav", loud.T, 16000, subtype="FLOAT")
    assert (
        run_cli(
            model,
            tmp_path / "o32",
            tmp_path / "loud.wav",
            extra=["--query", "cello", "--bits", "32f"],
        )
        == 0
    )
    assert "clipped" not in caplog.text  # float keeps what is beyond full scale
    over = sum(
        int((np.abs(sf.read(tmp_path / "o32" / "loud" / f"{n}.wav")[0]) > 1.0).sum())
        for n in ("target", "residual")
    )
    assert over > 0
    assert (
        run_cli(
            model,
            tmp_path / "o16",
            tmp_path / "loud.wav",
            extra=["--query", "cello", "--bits", "16"],
        )
        == 0
    )
    assert f"loud.wav: {over} sample(s) beyond full scale were clipped" in caplog.text
    target = sf.read(tmp_path / "o16" / "loud" / "target.wav")[0]
    assert np.abs(target).max() <= 1.0


@pytest.mark.parametrize(
    "extra",
    [
        ["--format", "flac", "--bits", "32f"],
        ["--format", "mp3", "--bits", "16"],
        ["--query", "residual", "--query", "cello"],
        ["--query", "a b", "--query", "a_b"],
    ],
)
def test_usage_errors_exit_2_before_any_work(model, tmp_path, extra):  # noqa: F811
    sf.write(tmp_path / "x.wav", tones(16000, 1.0, 1)[0], 16000)
    extra = extra if "--query" in extra else ["--query", "cello", *extra]
    assert run_cli(model, tmp_path / "out", tmp_path / "x.wav", extra=extra) == 2
    assert not (tmp_path / "out").exists()


def test_an_unreadable_input_fails_before_the_model_loads(model, tmp_path, caplog, monkeypatch):  # noqa: F811
    import clipsep.cli

    def no_load(*args):
        raise AssertionError("the model was loaded for a file that cannot be opened")

    monkeypatch.setattr(clipsep.cli, "_load_separator", no_load)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00garbage" * 10)
    assert run_cli(model, tmp_path / "out", broken, extra=["--query", "cello"]) == 2
    assert f"{broken}: unreadable audio or video file (" in caplog.text
    assert not (tmp_path / "out").exists()


def test_every_input_is_checked_before_the_model_loads(model, tmp_path, caplog, monkeypatch):  # noqa: F811
    """An unreadable file named after a good one used to fail only after the model loaded for
    the good one (new-user trial): every input is checked first."""
    import clipsep.cli

    load, logged_at_load = clipsep.cli._load_separator, []

    def recording_load(*args):
        logged_at_load.append(list(caplog.messages))
        return load(*args)

    monkeypatch.setattr(clipsep.cli, "_load_separator", recording_load)
    good, broken = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(good, tones(16000, 1.0, 1)[0], 16000)
    broken.write_bytes(b"RIFF\x00\x00garbage" * 10)
    assert run_cli(model, tmp_path / "out", good, broken, extra=["--query", "cello"]) == 2
    assert len(logged_at_load) == 1  # loaded once, for the good file
    assert any(
        m.startswith(f"{broken}: unreadable audio or video file (") for m in logged_at_load[0]
    )
    assert (tmp_path / "out" / "a" / "target.wav").is_file()


def forbid(monkeypatch, name: str, why: str) -> None:
    """Make calling ``clipsep.cli.<name>`` fail the test with ``why``."""
    import clipsep.cli

    def refuse(*args):
        raise AssertionError(why)

    monkeypatch.setattr(clipsep.cli, name, refuse)


def _no_load(*args):
    raise AssertionError("the model was loaded for a file too short to separate")


@pytest.mark.parametrize("suffix", [".wav", ".flac"])  # read in place / decoded first
def test_a_too_short_input_is_refused_before_the_model_loads_as_the_separator_refuses_it(
    model,  # noqa: F811
    separator,  # noqa: F811
    tmp_path,
    caplog,
    monkeypatch,
    suffix,
):
    import clipsep.cli

    short = tmp_path / f"short{suffix}"
    sf.write(short, tones(22050, 0.02, 1)[0], 22050)  # 441 samples; n_fft 1024 at 16 kHz: 1412
    with pytest.raises(BadInputError) as err:
        separator.separate_file(short, tmp_path / "api", query="cello")
    assert str(err.value) == (
        f"{short}: 441 samples (0.020 s) at 22050 Hz is too short to separate "
        "(need at least 1412 samples, 0.064 s)"
    )
    monkeypatch.setattr(clipsep.cli, "_load_separator", _no_load)
    assert run_cli(model, tmp_path / "out", short, extra=["--query", "cello"]) == 2
    assert str(err.value) in caplog.messages
    assert not (tmp_path / "out").exists()


def test_a_too_short_file_in_a_folder_fails_and_the_others_are_separated(model, tmp_path, capsys):  # noqa: F811
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a.wav", tones(16000, 0.05, 1)[0], 16000)  # 800 of 1024 samples
    sf.write(tmp_path / "in" / "b.wav", tones(16000, 1.0, 1)[0], 16000)
    assert run_cli(model, tmp_path / "out", tmp_path / "in", extra=["--query", "cello"]) == 1
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].split(None, 4)[1:] == [
        "failed",
        "-",
        "0.00",
        "800 samples (0.050 s) at 16000 Hz is too short to separate "
        "(need at least 1024 samples, 0.064 s)",
    ]
    assert rows[2].split()[1] == "separated" and rows[-1] == "1 separated, 0 skipped, 1 failed"
    assert (tmp_path / "out" / "b" / "target.wav").is_file()


@pytest.mark.parametrize(
    "out,message",
    [
        ("taken", "cannot use {out} as the output folder: it is not a folder"),
        ("taken/sub", "cannot create the output folder {out} (Not a directory)"),
        # a folder that exists but takes no new entries (procfs; root ignores permission bits)
        ("/proc/self", "cannot create anything in the output folder {out} ("),
    ],
)
def test_an_output_folder_that_cannot_be_written_is_a_usage_error(
    model,  # noqa: F811
    tmp_path,
    caplog,
    monkeypatch,
    out,
    message,
):
    forbid(monkeypatch, "_load_separator", "the model was loaded for an unwritable output folder")
    sf.write(tmp_path / "x.wav", tones(16000, 1.0, 1)[0], 16000)
    (tmp_path / "taken").write_text("a file where the output folder would go")
    assert run_cli(model, tmp_path / out, tmp_path / "x.wav", extra=["--query", "cello"]) == 2
    assert message.format(out=tmp_path / out) in caplog.text
    assert (tmp_path / "taken").read_text() == "a file where the output folder would go"


def test_no_progress_bar_where_stderr_is_not_a_terminal(model, tmp_path, capsys):  # noqa: F811
    sf.write(tmp_path / "x.wav", tones(16000, 1.0, 1)[0], 16000)
    assert run_cli(model, tmp_path / "out", tmp_path / "x.wav", extra=["--query", "cello"]) == 0
    assert "segment" not in capsys.readouterr().err


def make_tree(root: Path) -> None:
    (root / "live" / "day1").mkdir(parents=True)
    sf.write(root / "a.wav", tones(16000, 1.2, 1)[0], 16000)
    sf.write(root / "live" / "b.flac", tones(22050, 1.2, 2).T, 22050)
    write_video(root / "live" / "day1" / "c.mp4", tones(44100, 2.0, 2), 44100)
    (root / "notes.txt").write_text("not audio")


def test_folder_keeps_layout_skips_existing_and_reports_json(model, tmp_path, capsys):  # noqa: F811
    make_tree(tmp_path / "in")
    out = tmp_path / "out"
    assert run_cli(model, out, tmp_path / "in", extra=["--query", "cello", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    inputs = [str(tmp_path / "in" / n) for n in ("a.wav", "live/b.flac", "live/day1/c.mp4")]
    assert list(report["separated"]) == inputs and report["failed"] == {}
    notes = str(tmp_path / "in" / "notes.txt")
    assert report["skipped"] == {} and report["ignored"] == {
        notes: "not an audio or video file (by its suffix; name it as an input to try it anyway)"
    }
    for stem in ("a", "live/b", "live/day1/c"):
        assert (out / stem / "target.wav").is_file() and (out / stem / "residual.wav").is_file()
    entry = report["separated"][inputs[1]]
    assert entry["duration_s"] == pytest.approx(1.2) and entry["channels"] == 2
    assert entry["stems"]["target"] == str(out / "live" / "b" / "target.wav")
    assert isinstance(entry["activity"]["target"], list)
    assert report["model"].endswith("tiny.pt") and report["seconds"] > 0
    before = (out / "a" / "target.wav").stat().st_mtime_ns
    assert run_cli(model, out, tmp_path / "in", extra=["--query", "cello", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert list(again["skipped"]) == inputs and list(again["ignored"]) == [notes]
    assert (out / "a" / "target.wav").stat().st_mtime_ns == before
    assert run_cli(model, out, tmp_path / "in", extra=["--query", "cello", "--overwrite"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[-2:] == [
        "3 separated, 0 skipped, 0 failed",
        f"ignored 1 file that is not audio or video: {notes}",
    ]
    assert (out / "a" / "target.wav").stat().st_mtime_ns != before


def test_a_failing_file_in_a_folder_is_counted_and_exits_1(model, tmp_path, capsys, caplog):  # noqa: F811
    make_tree(tmp_path / "in")
    (tmp_path / "in" / "live" / "broken.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    out = tmp_path / "out"
    assert run_cli(model, out, tmp_path / "in", extra=["--query", "cello"]) == 1
    table = capsys.readouterr().out
    assert table.splitlines()[-2:] == [
        "3 separated, 0 skipped, 1 failed",
        f"ignored 1 file that is not audio or video: {tmp_path / 'in' / 'notes.txt'}",
    ]
    row = next(line for line in table.splitlines() if "broken.wav" in line)
    assert row.split()[0] == str(tmp_path / "in" / "live" / "broken.wav")
    assert row.count("broken.wav") == 1  # the reason does not name the file again
    assert "1 of 4 inputs could not be separated (see above); 3 files were separated" in (
        caplog.text
    )
    assert not (out / "live" / "broken").exists()


def test_a_folders_files_that_are_not_audio_or_video_are_named(model, tmp_path, capsys):  # noqa: F811
    """New-user trial: a folder's notes.txt and cover.jpg were passed over without a word. They are
    named in one line after the table (not failures: exit 0); hidden files (.DS_Store, macOS's
    ._take.wav, a .git folder) and the output folder inside the input folder are not."""
    folder = tmp_path / "in"
    (folder / "live" / ".git").mkdir(parents=True)
    sf.write(folder / "take.wav", tones(16000, 1.0, 1)[0], 16000)
    for name in ("notes.txt", "cover.jpg", "live/setlist.pdf", ".DS_Store", "live/.git/HEAD"):
        (folder / name).write_bytes(b"not audio")
    sf.write(folder / "._take.wav", tones(16000, 1.0, 1)[0], 16000)  # hidden: not a job either
    out = folder / "separated"
    assert run_cli(model, out, folder, extra=["--query", "cello"]) == 0
    assert run_cli(model, out, folder, extra=["--query", "cello"]) == 0  # out/ now holds wavs
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [
        "0 separated, 1 skipped, 0 failed",
        f"ignored 3 files that are not audio or video: {folder / 'cover.jpg'}, "
        f"{folder / 'live' / 'setlist.pdf'}, {folder / 'notes.txt'}",
    ]
    assert [p.name for p in out.iterdir()] == ["take"]


def test_the_not_media_line_names_three_files_then_counts_the_rest():
    from clipsep.batch import not_media_line

    paths = [Path(f"in/{n}.txt") for n in "abcde"]
    assert not_media_line(paths[:1]) == "ignored 1 file that is not audio or video: in/a.txt"
    assert not_media_line(paths[:3]) == (
        "ignored 3 files that are not audio or video: in/a.txt, in/b.txt, in/c.txt"
    )
    assert not_media_line(paths) == (
        "ignored 5 files that are not audio or video: in/a.txt, in/b.txt, in/c.txt and 2 more"
    )


def test_a_folder_without_audio_or_video_names_what_it_holds(tmp_path):
    from clipsep.audio_io import MEDIA_SUFFIXES
    from clipsep.batch import find_jobs

    folder = tmp_path / "in"
    (folder / "docs").mkdir(parents=True)
    for name in ("notes.txt", "cover.jpg", "docs/a.pdf", "docs/b.pdf", ".DS_Store"):
        (folder / name).write_bytes(b"not audio")
    [job] = find_jobs([folder], tmp_path / "out").jobs  # fails when run, as a missing file
    assert job.problem == (
        f"{folder}: no audio or video files in this folder "
        f"(looked for {', '.join(sorted(MEDIA_SUFFIXES))}); "
        "it holds only cover.jpg, docs/a.pdf, docs/b.pdf and 1 more"
    )
    (folder / "docs" / "take.FLAC").write_bytes(b"any bytes: the walk goes by the suffix")
    found = find_jobs([folder, folder / "notes.txt"], tmp_path / "out")
    assert [(j.path, j.out_dir, j.named) for j in found.jobs] == [
        (folder / "docs" / "take.FLAC", tmp_path / "out" / "docs", False),
        (folder / "notes.txt", tmp_path / "out", True),  # named: tried whatever its suffix
    ]
    not_media = [folder / n for n in ("cover.jpg", "docs/a.pdf", "docs/b.pdf", "notes.txt")]
    assert found.not_media == not_media and found.earlier == []


def test_earlier_outputs_inside_the_input_folder_are_left_out(model, tmp_path, capsys):  # noqa: F811
    """New-user trial: a run that wrote into recordings/separated/, then one with --out elsewhere,
    separated the first run's target.wav and residual.wav again ("3 separated") and listed its
    separation.json and activity csv as ignored. A folder holding a separation.json is clipsep's
    own output: left out of the walk, with all it holds, and named once."""
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    sf.write(recordings / "duet.wav", tones(16000, 1.0, 1)[0], 16000)
    (recordings / "notes.txt").write_text("not audio")
    inside = recordings / "separated"
    assert run_cli(model, inside, recordings, extra=["--query", "cello"]) == 0
    assert sorted(p.name for p in (inside / "duet").iterdir()) == [
        "residual.wav",
        "separation.json",
        "target.activity.csv",
        "target.wav",
    ]
    capsys.readouterr()
    elsewhere = tmp_path / "elsewhere"
    assert run_cli(model, elsewhere, recordings, extra=["--query", "cello"]) == 0
    assert capsys.readouterr().out.splitlines()[-3:] == [
        "1 separated, 0 skipped, 0 failed",
        f"ignored 1 file that is not audio or video: {recordings / 'notes.txt'}",
        "left out 1 folder of earlier clipsep outputs (holding separation.json): "
        f"{inside / 'duet'}",
    ]
    assert [p.name for p in elsewhere.iterdir()] == ["duet"]
    extra = ["--query", "cello", "--json", "--overwrite"]
    assert run_cli(model, elsewhere, recordings, extra=extra) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["separated"]) == [str(recordings / "duet.wav")]
    assert list(report["ignored"]) == [str(recordings / "notes.txt")]
    assert report["left_out"] == {
        str(inside / "duet"): "earlier clipsep outputs (it holds separation.json; "
        "name its files to separate them)"
    }


def test_the_walk_leaves_out_marked_folders_below_the_input_folder_only(tmp_path):
    """walk_media's marker: each folder below the walked one holding it is left out whole (the
    outermost named); the walked folder itself is the user's choice; no marker (ingest's walk):
    nothing left out."""
    from clipsep.audio_io import walk_media
    from clipsep.batch import find_jobs

    folder = tmp_path / "in"
    for name in ("a.wav", "separation.json", "old/x/target.wav", "old/x/separation.json"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"any bytes: the walk goes by the name")
    for name in ("old/x/inner/separation.json", "old/x/inner/t.wav", "old/keep.wav"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    walk = walk_media(folder, marker="separation.json")
    assert walk.media == [folder / "a.wav", folder / "old" / "keep.wav"]
    assert walk.others == [folder / "separation.json"]
    assert walk.marked == [folder / "old" / "x"]
    plain = walk_media(folder)
    assert len(plain.media) == 4 and len(plain.others) == 3 and plain.marked == []
    (folder / "a.wav").unlink()
    (folder / "old" / "keep.wav").unlink()
    [job] = find_jobs([folder / "old"], tmp_path / "out").jobs
    assert job.problem.endswith(
        "(looked for .aac, .aif, .aiff, .avi, .flac, .m4a, .m4v, .mkv, .mov, .mp3, .mp4, .oga, "
        ".ogg, .opus, .wav, .wave, .webm, .wma); left out 1 folder of earlier clipsep outputs "
        f"(holding separation.json): {folder / 'old' / 'x'}"
    )


def test_a_file_given_directly_and_through_its_folder_is_separated_once(
    model,  # noqa: F811
    tmp_path,
    capsys,
    caplog,
):
    """New-user trial: `separate DIR/ DIR/duet.wav` said the two "would write the same output
    folder (same name stem); rename one", though they are one file. It is separated once (as
    cp and rsync do), kept where first given, named if named either way, and one line says so."""
    import logging

    from clipsep.batch import find_jobs

    folder = tmp_path / "x"
    folder.mkdir()
    sf.write(folder / "duet.wav", tones(16000, 1.0, 1)[0], 16000)
    (folder / "sub").mkdir()
    (folder / "sub" / "solo.wav").symlink_to(folder / "duet.wav")  # a link resolves to it too
    with caplog.at_level(logging.INFO, logger="clipsep.batch"):
        found = find_jobs([folder, folder / "duet.wav", folder / "duet.wav"], tmp_path / "out")
    assert [(j.path, j.out_dir, j.named) for j in found.jobs] == [
        (folder / "duet.wav", tmp_path / "out", True)
    ]
    assert [r.getMessage() for r in caplog.records if r.name == "clipsep.batch"] == [
        "the same file given twice, separated once: "
        f"{folder / 'duet.wav'} (in {folder}) and {folder / 'sub' / 'solo.wav'} (in {folder}), "
        f"{folder / 'duet.wav'} (in {folder}) and {folder / 'duet.wav'}, "
        f"{folder / 'duet.wav'} (in {folder}) and {folder / 'duet.wav'}"
    ]
    (folder / "sub" / "solo.wav").unlink()
    (folder / "sub").rmdir()
    out = tmp_path / "out"
    assert run_cli(model, out, folder, folder / "duet.wav", extra=["--query", "cello"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 separated, 0 skipped, 0 failed"
    assert sorted(p.name for p in (out / "duet").glob("*.wav")) == ["residual.wav", "target.wav"]


def test_a_file_named_twice_is_reported_as_typed(tmp_path, caplog):
    """New-user trial: `separate mono16.wav ./mono16.wav` said "the same file given twice,
    separated once: mono16.wav and mono16.wav": the second as typed is ./mono16.wav."""
    import logging

    from clipsep.batch import find_jobs

    sf.write(tmp_path / "duet.wav", tones(16000, 1.0, 1)[0], 16000)
    typed = [str(tmp_path / "duet.wav"), f"{tmp_path}/./duet.wav"]
    with caplog.at_level(logging.INFO, logger="clipsep.batch"):
        found = find_jobs(typed, tmp_path / "out")
    assert len(found.jobs) == 1
    assert [r.getMessage() for r in caplog.records if r.name == "clipsep.batch"] == [
        f"the same file given twice, separated once: {typed[0]} and {typed[1]}"
    ]


def test_json_failure_reason_does_not_repeat_the_path_that_keys_it(model, tmp_path, capsys):  # noqa: F811
    (tmp_path / "in").mkdir()
    broken = tmp_path / "in" / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00garbage" * 10)
    assert run_cli(model, tmp_path / "out", tmp_path / "in", extra=["--query", "x", "--json"]) == 1
    failed = json.loads(capsys.readouterr().out)["failed"]
    assert list(failed) == [str(broken)]
    assert failed[str(broken)].startswith("unreadable audio or video file (")
    assert "broken.wav" not in failed[str(broken)]


def test_activity_csv_matches_the_library_segments(model, tmp_path):  # noqa: F811
    from clipsep.activity import activity
    from clipsep.inference import DEFAULT_SETTINGS

    sf.write(tmp_path / "m.wav", tones(16000, 3.0, 1)[0], 16000, subtype="FLOAT")
    assert run_cli(model, tmp_path / "out", tmp_path / "m.wav", extra=["--query", "cello"]) == 0
    target, _ = sf.read(tmp_path / "out" / "m" / "target.wav", dtype="float32")
    mixture, _ = sf.read(tmp_path / "m.wav", dtype="float32")
    raw = (tmp_path / "out" / "m" / "target.activity.csv").read_bytes()
    assert b"\r" not in raw  # new-user trial: CRLF line ends (the csv module's default)
    rows = raw.decode().splitlines()
    assert rows[0] == "start_s,end_s,mean_db"
    expected = activity(target, mixture, 16000, DEFAULT_SETTINGS)
    assert [tuple(map(float, r.split(","))) for r in rows[1:]] == [tuple(s) for s in expected]


def test_stems_of_an_earlier_run_are_named_not_deleted(model, tmp_path, caplog):  # noqa: F811
    """A reused output folder keeps the old stems, but says they are not this run's."""
    sf.write(tmp_path / "duet.wav", tones(16000, 1.5, 1).T, 16000)
    first = ["--query", "cello", "--query", "flute"]
    assert run_cli(model, tmp_path / "out", tmp_path / "duet.wav", extra=first) == 0
    assert "earlier run" not in caplog.text
    again = ["--query", "violin", "--overwrite"]
    assert run_cli(model, tmp_path / "out", tmp_path / "duet.wav", extra=again) == 0
    folder = tmp_path / "out" / "duet"
    assert {p.name for p in folder.glob("*.wav")} == {
        "cello.wav",
        "flute.wav",
        "target.wav",
        "residual.wav",
    }
    assert "also holds cello.wav, flute.wav from an earlier run" in caplog.text


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_stem_files_written_on_several_threads_equal_one_threads(tmp_path, subtype):
    """StemWriter's threads (one file each per block) write the same samples (PCM: the same bytes)
    and count the same clipped samples as one thread."""
    from clipsep import outputs

    rng = np.random.default_rng(2)
    blocks = [(0.6 * rng.standard_normal((3, 2, 4000))).astype(np.float32) for _ in range(5)]
    files = {"a": "a.wav", "b": "b.wav", outputs.RESIDUAL: "residual.wav"}
    counts = {}
    for workers in (1, 3):
        folder = tmp_path / str(workers)
        folder.mkdir()
        with outputs.StemWriter(
            folder, files, outputs.DEFAULT_FORMAT, subtype, 44100, 2, workers=workers
        ) as writer:
            for block in blocks:
                writer.write(block[:2], block[2])  # two stems and their mixture
        counts[workers] = writer.clipped
    import soundfile as sf

    for name in files.values():
        one, three = tmp_path / "1" / name, tmp_path / "3" / name
        if subtype == "FLOAT":  # its PEAK chunk stamps the second it was written: not the bytes
            assert sf.info(str(one)).subtype == sf.info(str(three)).subtype == subtype
            np.testing.assert_array_equal(sf.read(one)[0], sf.read(three)[0])
        else:
            assert one.read_bytes() == three.read_bytes()

    def clipped_steps(block):  # stems rounded to 16-bit steps, the residual what they leave
        stems = np.round(block[:2].astype(np.float64) * 32768)
        residual = np.round(block[2].astype(np.float64) * 32768) - stems.sum(axis=0)
        return sum(int(((x < -32768) | (x > 32768)).sum()) for x in [*stems, residual])

    expected = sum(clipped_steps(b) for b in blocks) if subtype == "PCM_16" else 0
    assert counts[1] == counts[3] == expected
    assert expected > 0 or subtype == "FLOAT"


def test_a_missing_input_among_several_fails_and_the_others_are_separated(
    model,  # noqa: F811
    tmp_path,
    capsys,
    caplog,
):
    """New-user trial: ``clipsep separate nope.wav duet.wav`` stopped at the missing file and
    separated nothing, though a bad input among several is to be reported and skipped (as an
    unreadable one was). A folder without audio or video among them is the same kind."""
    from clipsep.audio_io import MEDIA_SUFFIXES

    good, missing, empty = tmp_path / "duet.wav", tmp_path / "nope.wav", tmp_path / "empty"
    sf.write(good, tones(16000, 1.2, 1)[0], 16000)
    empty.mkdir()
    (empty / "notes.txt").write_text("not audio")
    out = tmp_path / "out"
    status = run_cli(model, out, missing, good, empty, extra=["--query", "cello", "--json"])
    assert status == 2  # inputs named on the command line failed: a usage error
    report = json.loads(capsys.readouterr().out)
    assert list(report["separated"]) == [str(good)] and (out / "duet" / "target.wav").is_file()
    assert report["failed"] == {
        str(missing): "no such file or folder",
        str(empty): (
            "no audio or video files in this folder (looked for "
            f"{', '.join(sorted(MEDIA_SUFFIXES))}); "
            "it holds only notes.txt"
        ),
    }
    # one logger for every error line, whether one input or all of them failed (new-user trial)
    failures = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [(r.name, r.getMessage()) for r in failures][0] == (
        "clipsep",
        f"{missing}: no such file or folder",
    )
    assert "2 of 3 inputs could not be separated (see above); 1 file was separated" in (
        caplog.messages
    )


def test_inputs_none_of_which_can_be_separated_are_refused_before_any_model(
    model,  # noqa: F811
    tmp_path,
    caplog,
    monkeypatch,
):
    forbid(monkeypatch, "_unloaded_model", "a model was resolved though no input can be separated")
    first, second = tmp_path / "a.wav", tmp_path / "b.wav"
    assert run_cli(model, tmp_path / "out", first, second, extra=["--query", "cello"]) == 2
    assert [m for m in caplog.messages if "no such file" in m] == [
        f"{first}: no such file or folder",
        f"{second}: no such file or folder",
    ]
    assert not (tmp_path / "out").exists()


def test_the_table_gives_seconds_taken_in_hundredths(tmp_path):
    """New-user trial: the command a run ends by printing separates a 4-s clip in 0.04 s, which
    the table showed as 0.0, as if nothing had run."""
    from types import SimpleNamespace

    from clipsep.batch import Job, Outcome, table

    job = Job(Path("mix.wav"), Path("separated"), named=True)
    done = Outcome(job, "separated", 0.038, SimpleNamespace(duration_s=4.096))
    lines = table([done, Outcome(Job(Path("b.wav"), Path("separated"), True), "skipped")])
    assert lines.splitlines() == [
        "input    status    audio s  took s  output / reason",
        "mix.wav  separated     4.1    0.04  separated/mix",
        "b.wav    skipped         -    0.00  ",
        "1 separated, 1 skipped, 0 failed",
    ]
