"""Every entry point applies the offline and telemetry-off defaults itself (a user who runs
``.venv/bin/python -m flows --profile tiny`` without ``source scripts/env.sh`` gets the same
environment), and the shell and make read the list from its one home, clipsep/env.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from clipsep.env import OFFLINE_DEFAULTS

ENTRY_DIRS = ("app", "flows", "bench", "scripts", "clipsep")
NOT_ENTRY_POINTS = {
    "flows/train_clipsep.py": "refuses to run: `python -m flows` (test_flow_integration)",
    "clipsep/env.py": "prints the defaults for env.sh / env.mk; changes nothing",
}
# HF_HUB_OFFLINE is also read for its own sake (clipsep/model/query.py and its tests)
LIST_KEYS = tuple(key for key in OFFLINE_DEFAULTS if key != "HF_HUB_OFFLINE")


def entry_points() -> list[str]:
    found = []
    for folder in ENTRY_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            text = path.read_text()
            name = str(path.relative_to(REPO))
            is_main = path.name == "__main__.py" or 'if __name__ == "__main__"' in text
            if is_main and name not in NOT_ENTRY_POINTS:
                found.append(name)
    return found


def without_defaults(tmp_path: Path) -> dict[str, str]:
    """This environment minus every default (conftest applied them), as a new user's shell."""
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_DEFAULTS}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect_home"))
    return env


def probe(entry: str, prefect_settings: bool) -> str:
    """Run ``entry --help`` as ``__main__`` (a package's module, or a script with its folder on
    sys.path), then print the defaults' variables as the process has them at exit."""
    path = REPO / entry
    if path.parent.joinpath("__init__.py").is_file():
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        start = f"runpy.run_module({module.removesuffix('.__main__')!r}, run_name='__main__')"
    else:
        start = f"sys.path.insert(0, {str(path.parent)!r}); runpy.run_path({str(path)!r}, "
        start += "run_name='__main__')"
    report = f"seen = {{k: os.environ.get(k) for k in {sorted(OFFLINE_DEFAULTS)!r}}}"
    if prefect_settings:  # what Prefect itself reads, imported after the entry point ran
        report += (
            "; import prefect.settings as s; "
            "seen['prefect startup timeout'] = s.PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
            ".value(); seen['prefect analytics'] = s.PREFECT_SERVER_ANALYTICS_ENABLED.value()"
        )
    return (
        "import atexit, json, os, runpy, sys\n"
        "def report():\n"
        f"    {report}\n"
        "    print('PROBE ' + json.dumps(seen), flush=True)\n"
        "atexit.register(report)\n"
        f"sys.argv = [{entry!r}, '--help']\n"
        f"{start}\n"
    )


@pytest.mark.parametrize("entry", entry_points())
def test_each_entry_point_applies_the_defaults_first(entry, tmp_path):
    """Even ``--help`` (which exits while parsing arguments) leaves every default applied."""
    is_flow = entry.startswith("flows/")
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", probe(entry, prefect_settings=is_flow)],
        env=without_defaults(tmp_path),
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, f"{entry} --help: rc {done.returncode}, stderr: {done.stderr[-2000:]}"
    seen = json.loads(lines[-1].removeprefix("PROBE "))
    if is_flow:
        assert seen.pop("prefect startup timeout") == 90.0
        assert seen.pop("prefect analytics") is False
    assert seen == OFFLINE_DEFAULTS, f"{entry} does not call apply_offline_defaults() first"
    assert list(work.iterdir()) == [], "--help wrote into the working folder"


def test_the_readme_flow_command_starts_without_env_sh(tmp_path):
    """The README's ``python -m flows --profile tiny`` as a fresh shell runs it: the defaults,
    the Prefect start-up timeout included, are in place before Prefect is imported."""
    done = subprocess.run(
        [sys.executable, "-c", probe("flows/__main__.py", prefect_settings=True)],
        env=without_defaults(tmp_path),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "usage: python -m flows" in done.stdout, done.stderr[-2000:]
    seen = json.loads(done.stdout.splitlines()[-1].removeprefix("PROBE "))
    assert seen["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "90"
    assert seen["prefect startup timeout"] == 90.0 and seen["prefect analytics"] is False


def shell_env(command: list[str], extra: dict[str, str]) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], **extra}
    done = subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    pairs = (line.partition("=") for line in done.stdout.splitlines() if "=" in line)
    return {key: value for key, _, value in pairs if key in OFFLINE_DEFAULTS}


def test_env_sh_exports_the_python_defaults_and_keeps_a_users_value():
    source = ["bash", "-c", "set -euo pipefail; source scripts/env.sh; env"]
    assert shell_env(source, {}) == OFFLINE_DEFAULTS
    mine = shell_env(source, {"DO_NOT_TRACK": "false"})
    assert mine == {**OFFLINE_DEFAULTS, "DO_NOT_TRACK": "false"}


def test_env_mk_exports_the_python_defaults_and_keeps_a_users_value(tmp_path):
    makefile = tmp_path / "probe.mk"
    makefile.write_text("include scripts/env.mk\nprobe:\n\t@env\n")
    make = ["make", "-s", "-f", str(makefile), "probe"]
    assert shell_env(make, {}) == OFFLINE_DEFAULTS
    mine = shell_env(make, {"HF_HUB_OFFLINE": "0"})
    assert mine == {**OFFLINE_DEFAULTS, "HF_HUB_OFFLINE": "0"}


def test_env_py_prints_the_defaults_with_the_standard_library_alone():
    """-S: no site-packages, as the system python3 that env.sh and env.mk run before .venv."""
    done = subprocess.run(
        [sys.executable, "-S", "clipsep/env.py", "--make"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert dict(word.split("=", 1) for word in done.stdout.split()) == OFFLINE_DEFAULTS
    wrong = subprocess.run(
        [sys.executable, "-S", "clipsep/env.py", "--bash"], cwd=REPO, capture_output=True, text=True
    )
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "usage" in wrong.stderr


def test_the_defaults_have_one_home():
    """No other script, makefile or Python file holds a copy of the list (two or more of its
    variables; a single one in a printed hint or a subprocess's own env is not a copy)."""
    files = [REPO / "Makefile", *(REPO / "scripts").glob("*.sh"), *(REPO / "scripts").glob("*.mk")]
    for folder in ("clipsep", "app", "flows", "bench", "scripts", "tests"):
        files += (REPO / folder).rglob("*.py")
    here = Path(__file__).resolve()
    holders = {
        str(path.relative_to(REPO))
        for path in files
        if path.resolve() != here and sum(key in path.read_text() for key in LIST_KEYS) >= 2
    }
    assert holders == {"clipsep/env.py"}
