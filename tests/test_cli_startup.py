"""The CLI's cold start: the garbage collector is paused while `clipsep separate` loads (torch,
open_clip, the checkpoints), and the program (``main()`` with no arguments, a process that ends
afterwards) freezes what it loaded and skips the collector's passes at exit. A caller in Python
(``main([...])``) keeps its collector as it was. The outputs do not change."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from conftest import REPO
from test_inference import make_tiny_model, tones

from clipsep.env import paused_gc

# runs clipsep.cli.main as the program (argv None) or as a caller (a list), then reports the
# collector's state and whether the new query built the CLIP model
PROBE = """
import gc, json, sys
from clipsep.cli import main
program = sys.argv[1] == "program"
args = sys.argv[2:]
sys.argv = ["clipsep", *args]
try:
    status = main() if program else main(args)
except SystemExit as done:
    status = done.code
print(json.dumps({"status": status, "frozen": gc.get_freeze_count(), "enabled": gc.isenabled(),
                  "open_clip": "open_clip" in sys.modules}))
"""

# a reference cycle whose finalizer writes a file, left for the collector at interpreter exit
EXIT_PROBE = """
import sys
from pathlib import Path
from clipsep.env import skip_exit_collection
if sys.argv[2] == "skip":
    skip_exit_collection()
class Node:
    def __del__(self, write=Path(sys.argv[1]).write_text):  # bound now: globals go at exit
        write("collected")
node = Node()
node.self = node
del node
import gc
gc.disable()  # only the passes at exit may collect it
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model"))


def test_paused_gc_pauses_and_restores_the_collector():
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        raise RuntimeError("load failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()


def test_paused_gc_freezes_only_when_asked(tmp_path):
    code = (
        "import gc, json; from clipsep.env import paused_gc\n"
        "with paused_gc(): a = [[] for _ in range(100)]\n"
        "plain = gc.get_freeze_count()\n"
        "with paused_gc(freeze=True): b = [[] for _ in range(100)]\n"
        "print(json.dumps([plain, gc.get_freeze_count(), gc.isenabled()]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    plain, frozen, enabled = json.loads(done.stdout)
    assert plain == 0 and frozen > 100 and enabled


@pytest.mark.parametrize("mode", ["skip", "keep"])
def test_skip_exit_collection_leaves_cycles_to_the_os(mode, tmp_path):
    marker = tmp_path / "marker"
    subprocess.run(
        [sys.executable, "-c", EXIT_PROBE, str(marker), mode], cwd=REPO, check=True, timeout=120
    )
    assert marker.is_file() == (mode == "keep")


def probe(mode: str, args: list[str], tmp_path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # empty caches: a new query
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_program_freezes_what_separate_loaded_and_separates_alike(model, tmp_path):
    checkpoint, clip = model
    mix = tmp_path / "mix.wav"
    sf.write(mix, tones(44100, 2.0, channels=2).T, 44100)
    targets = {}
    for mode in ("caller", "program"):
        out = tmp_path / mode
        args = ["separate", str(mix), "--query", "cello", "--model", str(checkpoint)]
        args += ["--clip-weights", str(clip), "--out", str(out)]
        args += ["--params", str(REPO / "params.yaml"), "--profile", "tiny"]
        args += ["--set", "separate.device=cpu"]
        cache = tmp_path / f"tmp-{mode}"
        cache.mkdir()
        report = probe(mode, args, cache)
        assert report["status"] == 0 and report["open_clip"] and report["enabled"]
        assert (report["frozen"] > 100_000) == (mode == "program")
        targets[mode] = sf.read(out / "mix" / "target.wav")[0]
    assert (targets["program"] == targets["caller"]).all()


@pytest.mark.parametrize(
    "error,status,line",
    [
        (
            KeyboardInterrupt(),
            130,
            "interrupted (Ctrl-C); the same `clipsep train` command resumes from the last "
            "checkpoint (last.pt)",
        ),
        (
            SystemExit(143),
            143,
            "stopped by signal 15; the same `clipsep train` command resumes from the last "
            "checkpoint (last.pt)",
        ),
    ],
)
def test_an_interrupted_command_says_so_in_one_line(monkeypatch, caplog, error, status, line):
    """New-user trial: Ctrl-C of `clipsep train` printed a 54-line traceback; SIGTERM exited 143
    without a word."""
    from clipsep import cli

    def interrupted(name, args):
        raise error

    monkeypatch.setattr(cli, "run_stage", interrupted)
    if isinstance(error, SystemExit):
        with pytest.raises(SystemExit) as raised:
            cli.main(["train", "--profile", "tiny"])
        assert raised.value.code == status
    else:
        assert cli.main(["train", "--profile", "tiny"]) == status
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [line]
