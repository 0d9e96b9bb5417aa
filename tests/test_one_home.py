"""Every number and every piece of setup has one home (issue #11, section 3): the copies are gone
and stay gone."""

from __future__ import annotations

import io
import sys

from conftest import REPO

CODE_DIRS = ("clipsep", "app", "flows", "tests", "bench", "scripts")


def python_files():
    for folder in CODE_DIRS:
        yield from sorted((REPO / folder).rglob("*.py"))


def files_containing(text: str) -> list[str]:
    here = __file__
    return sorted(
        str(p.relative_to(REPO)) for p in python_files() if str(p) != here and text in p.read_text()
    )


def test_the_matplotlib_backend_is_chosen_in_one_place():
    assert files_containing("matplotlib.use(") == ["clipsep/env.py"]


def test_headless_pyplot_draws_on_agg_without_a_display(tmp_path):
    from clipsep.env import headless_pyplot

    plt = headless_pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "f.png")
    plt.close(fig)
    assert plt.get_backend().lower() == "agg"
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_params_options_are_declared_in_one_place():
    declaring = [
        f for f in files_containing('"--profile"') if f.split("/")[0] in ("clipsep", "app", "flows")
    ]
    assert declaring == ["clipsep/config.py"]


def test_params_from_args_applies_profile_then_set_then_the_commands_own_flags():
    import argparse

    from clipsep.config import add_params_arguments, load_params, params_from_args

    parser = argparse.ArgumentParser()
    add_params_arguments(parser)
    args = parser.parse_args(
        [
            "--params",
            str(REPO / "params.yaml"),
            "--profile",
            "tiny",
            "--set",
            "train.steps=3",
            "--set",
            "serve.port=1",
        ]
    )
    params = params_from_args(args, {"serve.port": 9})
    tiny = load_params(REPO / "params.yaml", profile="tiny")
    assert (params.train.steps, params.serve.port) == (3, 9)
    assert params.model == tiny.model and params.train.batch_size == tiny.train.batch_size


def test_the_app_takes_set_overrides_like_the_cli():
    from app.__main__ import parse_args

    args = parse_args(["--set", "serve.max_seconds=5", "--port", "7000"])
    assert (args.params, args.profile, args.overrides) == (
        None,  # ./params.yaml, else the project's (clipsep.config.default_params_file)
        None,
        ["serve.max_seconds=5"],
    )


def test_flows_default_to_the_same_params_file_as_the_cli(tmp_path, monkeypatch):
    """`python -m flows` and the deployment without --params: ./params.yaml, else the project's
    (a None --params once reached Path(None) in both)."""
    import argparse

    from flows.entry import add_flow_options
    from flows.serve import deployment_parameters

    parser = argparse.ArgumentParser()
    add_flow_options(parser)
    assert deployment_parameters(parser.parse_args([]))["params_file"] == str(
        (REPO / "params.yaml").resolve()
    )
    monkeypatch.chdir(tmp_path)  # outside the project: still the project's file
    assert deployment_parameters(parser.parse_args([]))["params_file"] == str(
        (REPO / "params.yaml").resolve()
    )
    given = deployment_parameters(parser.parse_args(["--params", "mine.yaml"]))
    assert given["params_file"] == str(tmp_path / "mine.yaml")


def test_every_progress_bar_follows_one_rule_made_in_one_place():
    """The training loop hid its bar by its own test (``not sys.stderr.isatty()``) while the
    others passed tqdm ``disable=None``: now every bar is clipsep.progress.bar."""
    making = {
        f
        for text in ("import tqdm", "disable=", "isatty(")
        for f in files_containing(text)
        if f.split("/")[0] in ("clipsep", "app", "flows")
    }
    assert making == {"clipsep/progress.py"}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_shows_on_a_terminal_only_and_not_when_hidden(monkeypatch):
    from clipsep.progress import bar

    shown = {}
    for name, stream, hidden in [
        ("terminal", _Terminal(), False),
        ("log file", io.StringIO(), False),
        ("other rank", _Terminal(), True),
    ]:
        monkeypatch.setattr(sys, "stderr", stream)
        with bar(total=3, desc="train", hidden=hidden) as progress:
            visible = not progress.disable
            progress.update(3)
        shown[name] = (visible, "train: 100%" in stream.getvalue())
    assert shown == {
        "terminal": (True, True),
        "log file": (False, False),
        "other rank": (False, False),
    }


def test_the_checkpoint_file_names_have_one_home():
    """best.pt and last.pt were spelled out in seven library files, and the registry reader had
    grown its own BEST_CHECKPOINT: the names now live in clipsep.config alone."""
    from clipsep.config import BEST_CHECKPOINT, LAST_CHECKPOINT

    assert (BEST_CHECKPOINT, LAST_CHECKPOINT) == ("best.pt", "last.pt")
    for name in ('"best.pt"', '"last.pt"', "BEST_CHECKPOINT = ", "LAST_CHECKPOINT = "):
        library = [
            f for f in files_containing(name) if f.split("/")[0] in ("clipsep", "app", "flows")
        ]
        assert library == ["clipsep/config.py"], name
