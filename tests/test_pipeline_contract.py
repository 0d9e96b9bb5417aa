"""Code tier: dvc.yaml, the CLI and clipsep.stages agree; the library is free of platform tools."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest
import yaml

from clipsep.cli import build_parser
from clipsep.config import load_params
from clipsep.stages import STAGE_CODE, STAGE_PARAMS, STAGES, stage_inputs
from clipsep.stages import STAGE_OUTPUTS as STAGE_OUTPUT_PATH  # its outs and metrics lie under it
from conftest import REPO

PLATFORM_PACKAGES = {"prefect", "gradio", "dvc"}


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def resolve(template: str) -> str:
    """Expand ${paths.<name>} the way DVC does, from params.yaml."""
    paths = load_params(REPO / "params.yaml").paths
    return re.sub(r"\$\{paths\.(\w+)\}", lambda m: getattr(paths, m.group(1)), template)


def entries(stage: dict, key: str) -> list[str]:
    """Paths of a deps/outs/metrics list (entries are strings or {path: options})."""
    return [e if isinstance(e, str) else next(iter(e)) for e in stage.get(key, [])]


def test_dvc_stages_are_the_cli_stages():
    assert list(dvc_stages()) == list(STAGES)
    assert set(STAGE_OUTPUT_PATH) == set(STAGES)


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_cmd_params_and_outs_agree(name):
    stage = dvc_stages()[name]
    assert stage["cmd"] == f".venv/bin/clipsep {name}"
    assert build_parser().parse_args([name]).command == name
    assert stage["params"] == STAGE_PARAMS[name], "dvc.yaml params must be STAGE_PARAMS"
    params = load_params(REPO / "params.yaml")
    written = entries(stage, "outs") + entries(stage, "metrics")
    if STAGE_OUTPUT_PATH[name] is None:
        assert not written
    else:
        assert written, f"{name} declares no outputs"
    for out in written:
        path = (REPO / resolve(out)).resolve()
        assert path.is_relative_to(params.path(STAGE_OUTPUT_PATH[name])), out
    for dep in entries(stage, "deps"):
        if dep.startswith("clipsep/"):  # library code a stage runs must exist
            assert (REPO / dep).exists(), f"{name}: dependency {dep} does not exist"


@pytest.mark.parametrize("name", list(STAGES))
def test_dvc_deps_are_what_the_flow_fingerprints(name):
    """DVC and the flow's skip records (clipsep.stage_record) watch the same code and data."""
    declared = {(REPO / resolve(dep)).resolve() for dep in entries(dvc_stages()[name], "deps")}
    params = load_params(REPO / "params.yaml")
    fingerprinted = {(REPO / "clipsep" / code).resolve() for code in STAGE_CODE[name]} | {
        path.resolve() for path in stage_inputs(name, params)
    }
    assert declared == fingerprinted


def test_outputs_live_under_one_data_folder_per_kind():
    params = load_params(REPO / "params.yaml")
    data_root = params.path("root") / "data"
    for name in ("world", "clips", "validation"):
        assert params.path(name).is_relative_to(data_root)


def test_library_never_imports_platform_tools():
    offenders = []
    for module in sorted((REPO / "clipsep").rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(), filename=str(module))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{module.relative_to(REPO)}: {n}"
                for n in names
                if n.split(".")[0] in PLATFORM_PACKAGES
            ]
    assert not offenders, offenders


def test_importing_stages_and_cli_creates_no_files(tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    env = {**os.environ, "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    code = "import clipsep.stages, clipsep.cli; clipsep.cli.build_parser()"
    subprocess.run([sys.executable, "-c", code], cwd=work, env=env, check=True, timeout=120)
    assert not list(home.rglob("*")) and not list(work.rglob("*"))
