"""The house (docs/ARCHITECTURE.md): clipsep/'s imports form floors, with no circle and no arrow up.

Every ``import`` and ``from ... import`` in clipsep/ counts, function-local ones included (a lazy
import is still a dependency). Each module sits on a floor; it may import modules on its own floor
or below, never above, and the import graph has no circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "clipsep"
# module (or package prefix: every module below it) -> floor; the longest match wins
FLOORS = {
    # 0 foundation: errors, environment, atomic files, params, progress reports
    "clipsep": 0,
    "clipsep.errors": 0,
    "clipsep.env": 0,
    "clipsep.fileio": 0,
    "clipsep.progress": 0,
    "clipsep.config": 0,
    "clipsep.layout": 0,
    # 1 signals, stores and the machine: STFT/warp, audio files, media probing, the registry's
    # read side, precision selection, the stages' run records
    "clipsep.audio": 1,
    "clipsep.audio_io": 1,
    "clipsep.registry_reader": 1,
    "clipsep.precision": 1,
    "clipsep.stage_record": 1,
    "clipsep.data.media": 1,
    "clipsep.data.world_pictures": 1,
    "clipsep.data.world_sound": 1,
    "clipsep.model.unet": 1,
    "clipsep.evaluation.metrics": 1,
    # stem activity and how stems are written (names, formats, clipping)
    "clipsep.activity": 1,
    "clipsep.outputs": 1,
    # 2 data and models: datasets, ingest, validation, networks, CLIP, training's building blocks
    "clipsep.data": 2,
    "clipsep.model": 2,
    "clipsep.training": 2,
    "clipsep.evaluation.plots": 2,
    # 3 the two uses of a model: separating (inference) and learning one (the training loop)
    "clipsep.inference": 3,
    "clipsep.training.loop": 3,
    "clipsep.training.report": 3,
    # 4 judging and publishing a model: evaluation, the pyfunc wrapper, the registry's write side
    "clipsep.evaluation": 4,
    "clipsep.registry_model": 4,
    "clipsep.registry_model_code": 4,
    "clipsep.tracking": 4,
    "clipsep.live_run": 4,
    "clipsep.run_owner": 4,
    # 5 entry points: the stage table and the command line
    "clipsep.stages": 5,
    "clipsep.cli": 5,
    "clipsep.__main__": 5,
    "clipsep.batch": 5,
}
OUTSIDE = ("app", "flows", "tests", "bench", "prefect", "gradio", "dvc")  # never imported


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_names(path: Path, name: str) -> set[str]:
    """Absolute dotted names ``path`` imports anywhere in its body (``from a import b`` -> a.b)."""
    names: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """clipsep module -> the clipsep modules it imports (a name resolves to its longest module)."""
    known = modules()
    graph = {}
    for name, path in known.items():
        targets = set()
        for imported in imported_names(path, name):
            while imported and imported not in known:
                imported = imported.rpartition(".")[0]
            if imported.startswith("clipsep"):
                targets.add(imported)
        graph[name] = targets - {name, "clipsep"}
    return graph


def floor_of(name: str) -> int | None:
    """The floor of ``name`` or of its longest listed package ("clipsep" itself matches only
    itself, so a new top-level module must be placed by hand)."""
    parts = name.split(".")
    for end in range(len(parts), 1, -1):
        if ".".join(parts[:end]) in FLOORS:
            return FLOORS[".".join(parts[:end])]
    return FLOORS.get(name)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{source} (floor {floor_of(source)}) -> {target} (floor {floor_of(target)})"
        for source, targets in sorted(graph.items())
        for target in sorted(targets)
        if floor_of(target) > floor_of(source)
    ]


def test_every_module_has_a_floor():
    homeless = [name for name in modules() if floor_of(name) is None]
    assert homeless == [], f"place these in FLOORS and docs/ARCHITECTURE.md: {homeless}"


def test_the_import_graph_has_no_circle():
    assert circles(import_graph()) == []


def test_no_import_points_up_a_floor():
    assert upward_arrows(import_graph()) == []


def test_the_library_never_imports_the_edges():
    reaching_out = sorted(
        f"{name} imports {imported}"
        for name, path in modules().items()
        for imported in imported_names(path, name)
        if imported.split(".")[0] in OUTSIDE
    )
    assert reaching_out == []


def test_the_checks_see_function_local_imports_and_circles(tmp_path):
    """The checker itself: a lazy import inside a function closes a circle and is found."""
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from clipsep.cli import main\n    return main\n")
    assert "clipsep.cli.main" in imported_names(source, "clipsep.audio")
    graph = {"clipsep.audio": {"clipsep.cli"}, "clipsep.cli": {"clipsep.audio"}}
    assert circles(graph) == [["clipsep.audio", "clipsep.cli"]]
    assert upward_arrows(graph) == ["clipsep.audio (floor 1) -> clipsep.cli (floor 5)"]
    assert floor_of("clipsep.newcomer") is None and floor_of("clipsep.data.newcomer") == 2
