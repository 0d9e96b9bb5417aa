"""Benchmark the cold start of `clipsep separate` on a 10-s file, and where its time goes.

Each run is a fresh ``python -m clipsep.cli separate`` process (nothing warm but the OS file
cache), timed wall-clock from spawn to exit; the median of ``--repeats`` runs is reported.
Cases (``--model``: a random-init checkpoint of params.yaml's preset with the bundled tiny CLIP,
or ``models:/clipsep@champion`` in a temporary sqlite registry holding it):

* ``registry first``: the registry default, empty caches (a fresh ``TMPDIR`` per run: the model
  version is downloaded, the query's embedding computed with open_clip);
* ``registry new query``: the resolved-model cache answers, the text-embedding cache is emptied
  before each run (a query not met before: open_clip builds the text tower, no mlflow);
* ``registry repeat``: the same call again (the resolved-model cache and the text-embedding cache
  answer: no mlflow, no open_clip);
* ``path first`` / ``path repeat``: the same with ``--model`` a checkpoint file;
* ``path+onnx repeat`` (only with ``--cases`` naming it): ``separate.engine=onnx``.

Per case, one more run (``bench/cli_child.py`` under ``python -X importtime``) splits the wall
time into components (startup, imports, resolve, load, query, separate, write, other) and lists
the heavy packages imported (cumulative import seconds). The process's load average is printed
with each case: under load, compare ratios, not absolute seconds.

    .venv/bin/python bench/cli.py                       # 10-s file, 3 repeats, default cases
    .venv/bin/python bench/cli.py --cases "path repeat" --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from separate import make_checkpoint, write_test_file  # bench/separate.py (same folder)

from clipsep.model import text_cache
from clipsep.registry_reader import CACHE_FOLDER

REPO = Path(__file__).resolve().parents[1]
CASES = ("registry first", "registry new query", "registry repeat", "path first", "path repeat")
MODULES = ("clipsep.cli", "torch", "open_clip", "mlflow", "onnxruntime")
HEAVY = ("torch", "open_clip", "scipy", "mlflow", "onnxruntime", "torchvision", "pandas")


def import_seconds(module: str) -> dict[str, float]:
    """Cumulative import seconds of ``module`` and of every package imported on the way (at any
    depth: each is imported once, where it is first needed)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env=child_env(),
    )
    seconds: dict[str, float] = {}
    for line in done.stderr.splitlines():
        fields = line.split("|")
        if line.startswith("import time:") and len(fields) == 3 and fields[1].strip().isdigit():
            seconds.setdefault(fields[2].strip(), int(fields[1]) / 1e6)  # microseconds
    return seconds


def import_table(repeats: int = 3) -> None:
    print("| module | import s (cumulative, fresh process) | heavy packages it pulls in |")
    print("|---|---|---|")
    for module in MODULES:
        runs = [import_seconds(module) for _ in range(repeats)]
        total = statistics.median(run.get(module, float("nan")) for run in runs)
        heavy = {
            name: statistics.median(run.get(name, 0.0) for run in runs)
            for name in ("torch", "open_clip", "mlflow", "onnxruntime", "scipy", "pandas")
            if name != module and any(name in run for run in runs)
        }
        pulled = ", ".join(f"{k} {v:.2f}" for k, v in heavy.items() if v > 0.05) or "none"
        print(f"| {module} | {total:.2f} | {pulled} |", flush=True)


def child_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", **extra}


def register(checkpoint: Path, clip: Path, work: Path) -> str:
    """Log ``checkpoint`` (+ CLIP weights) as the clipsep pyfunc in a fresh sqlite registry with
    alias champion; returns the tracking URI."""
    import mlflow
    from mlflow import MlflowClient

    from clipsep.registry_model import MODEL_CODE
    from clipsep.registry_reader import quiet_artifact_transfers

    uri = f"sqlite:///{work / 'mlflow.db'}"
    quiet_artifact_transfers()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("bench", artifact_location=(work / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=MODEL_CODE,  # as clipsep.tracking registers it
            artifacts={"checkpoint": str(checkpoint), "clip_weights": str(clip)},
            registered_model_name="clipsep",
        )
    MlflowClient(uri).set_registered_model_alias(
        "clipsep", "champion", info.registered_model_version
    )
    return uri


def separate_command(model: str, wav: Path, out: Path, overrides: list[str]) -> list[str]:
    sets = ["separate.device=cpu", *overrides]
    return [
        *(str(wav), "--query", "cello", "--model", model, "--out", str(out), "--overwrite"),
        *("--params", str(REPO / "params.yaml")),
        *[flag for value in sets for flag in ("--set", value)],
    ]


def separate_once(arguments: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one fresh ``python -m clipsep.cli separate ...`` process."""
    command = [sys.executable, "-m", "clipsep.cli", "separate", *arguments]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"separate failed:\n{done.stderr[-3000:]}")
    return wall


def components(arguments: list[str], env: dict[str, str]) -> tuple[dict, dict]:
    """({component: s}, {heavy package: cumulative import s}) of one fresh timed run."""
    command = [sys.executable, "-X", "importtime", str(REPO / "bench" / "cli_child.py")]
    done = subprocess.run(
        [*command, "separate", *arguments], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"separate failed:\n{done.stderr[-3000:]}")
    lines = done.stderr.splitlines()
    spent = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    imports = {}
    for line in lines:
        fields = line.split("|")
        if line.startswith("import time:") and len(fields) == 3 and fields[1].strip().isdigit():
            name = fields[2].strip()
            if name in HEAVY:
                imports.setdefault(name, int(fields[1]) / 1e6)
    return spent, imports


def case_setup(case: str, work: Path, checkpoint: Path) -> tuple[str, list[str], dict[str, str]]:
    """(model reference, --set overrides, environment) of a case; registry cases get a store."""
    kind = case.split()[0]
    env = child_env(XDG_CACHE_HOME=str(work / "xdg-cache"))
    model, overrides = str(checkpoint), []
    if kind == "registry":
        store = work / "registry"
        if not store.is_dir():  # one store for both registry cases
            store.mkdir()
            register(checkpoint, work / "clip.pt", store)
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
        model = "models:/clipsep@champion"
    elif kind == "path+onnx":
        overrides = ["separate.engine=onnx"]
    return model, overrides, env


def run_case(case: str, work: Path, checkpoint: Path, wav: Path, repeats: int) -> None:
    model, overrides, env = case_setup(case, work, checkpoint)
    arguments = separate_command(model, wav, work / "out", overrides)
    first = case.endswith("first")
    shared_tmp = work / f"tmp-{case.split()[0]}"

    def fresh_env(i: int) -> dict[str, str]:
        tmp = work / f"tmp-{case}-{i}" if first else shared_tmp  # empty caches for "first"
        tmp.mkdir(parents=True, exist_ok=True)
        return {**env, "TMPDIR": str(tmp)}

    if not first:
        separate_once(arguments, fresh_env(-1))  # fill the caches
    new_query = case.endswith("new query")  # the model's cache kept, the query's emptied

    def timed(run, i):
        if new_query:
            shutil.rmtree(shared_tmp / CACHE_FOLDER / text_cache.FOLDER, ignore_errors=True)
        return run(arguments, fresh_env(i))

    runs = [timed(separate_once, i) for i in range(repeats)]
    spent, imports = timed(components, repeats)
    load = os.getloadavg()[0]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in spent.items() if k not in ("total", "status"))
    pulled = ", ".join(f"{k} {v:.2f}" for k, v in imports.items()) or "none"
    print(
        f"| {case} | {statistics.median(runs):.2f} | {' '.join(f'{r:.2f}' for r in runs)} | "
        f"{spent['total']:.2f}: {parts} | {pulled} | {load:.1f} |",
        flush=True,
    )


def main() -> int:
    from clipsep.env import apply_offline_defaults

    apply_offline_defaults()  # before open_clip, mlflow, gradio are imported
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="input length (44.1 kHz stereo)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, see above")
    parser.add_argument("--skip-imports", action="store_true")
    args = parser.parse_args()
    from clipsep.config import load_params
    from clipsep.precision import cpu_description

    preset = load_params(REPO / "params.yaml").model.preset
    print(
        f"{cpu_description()}; {os.cpu_count()} CPUs; python {sys.version.split()[0]}; "
        f"{args.seconds}-s 44.1 kHz stereo input; preset {preset}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    if not args.skip_imports:
        import_table()
    with tempfile.TemporaryDirectory(prefix="clipsep-bench-cli-") as tmp:
        work = Path(tmp)
        checkpoint = make_checkpoint(preset, work)
        wav = work / "input.wav"
        write_test_file(wav, args.seconds)
        print(
            f"| case | median wall s of {args.repeats} | runs | one timed run: total: components "
            "s | heavy imports s | load |"
        )
        print("|---|---|---|---|---|---|")
        for case in args.cases.split(","):
            run_case(case.strip(), work, checkpoint, wav, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
