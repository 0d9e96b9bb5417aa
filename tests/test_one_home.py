"""Every number and every piece of setup has one home (issue #11, section 3): the copies are gone
and stay gone."""

from __future__ import annotations

from conftest import REPO

CODE_DIRS = ("clipsep", "app", "flows", "tests", "bench", "scripts")


def python_files():
    for folder in CODE_DIRS:
        yield from sorted((REPO / folder).rglob("*.py"))


def files_containing(text: str) -> list[str]:
    here = __file__
    return sorted(str(p.relative_to(REPO)) for p in python_files()
                  if str(p) != here and text in p.read_text())


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
