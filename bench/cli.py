"""Benchmark the cold start of `clipsep separate` on a 10-s file, and what its imports cost.

Each run is a fresh ``python -m clipsep.cli separate`` process (nothing warm but the OS file
cache), timed wall-clock from spawn to exit; the median of ``--repeats`` runs is reported, plus
the first run of each case (it pays for one-time work: the registry download, the ONNX export).
Cases:

* ``path``: ``--model`` a checkpoint file (random-init weights of params.yaml's preset: speed
  does not depend on the weights; the bundled tiny CLIP encodes the query);
* ``registry``: ``--model models:/clipsep@champion`` in a temporary MLflow sqlite registry
  holding that checkpoint (``MLFLOW_TRACKING_URI``; the resolved-model cache under a temporary
  ``TMPDIR``, so the first run downloads);
* ``path+onnx``: the checkpoint with ``separate.engine=onnx`` (the first run exports it once into
  a temporary ``XDG_CACHE_HOME``).

Import costs (``python -X importtime``, cumulative, median of 3 fresh processes): ``clipsep.cli``
alone, and torch, open_clip, mlflow and onnxruntime each alone.

    .venv/bin/python bench/cli.py                       # 10-s file, 3 repeats, all cases
    .venv/bin/python bench/cli.py --cases path --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from separate import make_checkpoint, write_test_file  # bench/separate.py (same folder)

REPO = Path(__file__).resolve().parents[1]
CASES = ("path", "registry", "path+onnx")
MODULES = ("clipsep.cli", "torch", "open_clip", "mlflow", "onnxruntime")


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

    from clipsep.registry_model import ClipSepPyfunc

    uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("bench", artifact_location=(work / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ClipSepPyfunc(),
            artifacts={"checkpoint": str(checkpoint), "clip_weights": str(clip)},
            registered_model_name="clipsep",
        )
    MlflowClient(uri).set_registered_model_alias(
        "clipsep", "champion", info.registered_model_version
    )
    return uri


def separate_once(
    model: str, wav: Path, out: Path, env: dict[str, str], overrides: list[str]
) -> float:
    command = [
        sys.executable,
        "-m",
        "clipsep.cli",
        "separate",
        str(wav),
        "--query",
        "cello",
        "--model",
        model,
        "--out",
        str(out),
        "--params",
        str(REPO / "params.yaml"),
        "--set",
        "separate.device=cpu",
        *[f for o in overrides for f in ("--set", o)],
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"separate failed ({model}):\n{done.stderr[-3000:]}")
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="input length (44.1 kHz stereo)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per case after the first"
    )
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--skip-imports", action="store_true")
    args = parser.parse_args()
    from clipsep.config import load_params
    from clipsep.precision import cpu_model_name

    preset = load_params(REPO / "params.yaml").model.preset
    print(
        f"{cpu_model_name()}; {os.cpu_count()} CPUs; python {sys.version.split()[0]}; "
        f"{args.seconds}-s 44.1 kHz stereo input; preset {preset}"
    )
    if not args.skip_imports:
        import_table()
    with tempfile.TemporaryDirectory(prefix="clipsep-bench-cli-") as tmp:
        work = Path(tmp)
        checkpoint = make_checkpoint(preset, work)
        wav = work / "input.wav"
        write_test_file(wav, args.seconds)
        print(f"| case | first run s | median of {args.repeats} later runs s | runs |")
        print("|---|---|---|---|")
        for case in args.cases.split(","):
            env = child_env(
                TMPDIR=str(work / f"tmp-{case}"), XDG_CACHE_HOME=str(work / f"cache-{case}")
            )
            os.makedirs(env["TMPDIR"], exist_ok=True)
            model, overrides = str(checkpoint), []
            if case == "registry":
                env["MLFLOW_TRACKING_URI"] = register(checkpoint, work / "clip.pt", work)
                model = "models:/clipsep@champion"
            elif case == "path+onnx":
                overrides = ["separate.engine=onnx"]
            runs = [
                separate_once(model, wav, work / "out", env, overrides)
                for _ in range(args.repeats + 1)
            ]
            print(
                f"| {case} | {runs[0]:.1f} | {statistics.median(runs[1:]):.1f} | "
                f"{' '.join(f'{r:.1f}' for r in runs)} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
