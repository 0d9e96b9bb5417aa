"""The ``train-clipsep`` flow: world -> ingest -> validate -> pretrain-clip -> train -> evaluate
-> register.

Each task runs a stage function of :mod:`clipsep.stages` (the same ones ``dvc.yaml`` calls), so no
stage logic lives here. Retries only where a retry can help: I/O (rendering/decoding videos,
talking to the MLflow store); none where it cannot (a failing validation gate stops the flow and
publishes its report; training and evaluation are deterministic).

Lineage: the flow runs the stages in-process (it accepts profiles, overrides and a user's video
folder, which a params.yaml-pinned ``dvc repro`` cannot express) and records the exact data version
it used on the MLflow run and model version: the md5 of clips/manifest.csv (which holds a sha256 of
every source video), the dvc.lock md5 of the clips folder when present, the git commit and the
merged params. ``python -m flows`` runs it once (``flows/__main__.py`` sets the environment
first); ``flows.serve`` serves it on a cron.

Skipping: each stage runs through :func:`clipsep.stages.run_stage` with ``skip_unchanged``, so a
stage whose params sections, code and input files are unchanged since its last successful run is
skipped and logged as such; the run ends with a table of each stage's wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from clipsep import progress, stages
from clipsep.config import ConfigError, Params, load_params, params_file_from_args
from clipsep.env import apply_offline_defaults
from clipsep.errors import ClipsepError, ValidationFailed
from clipsep.fileio import shown_path
from clipsep.precision import cpu_description
from flows.entry import add_flow_options

FLOW_NAME = "train-clipsep"
# retries per stage: I/O-bound stages may hit a transient failure; compute and gates may not.
STAGE_RETRIES = {
    "world": 1,
    "ingest": 2,
    "validate": 0,
    "pretrain-clip": 0,
    "train": 0,
    "evaluate": 0,
    "register": 2,
}
PROGRESS_ARTIFACT = "clipsep-train-progress"  # the run page's live progress bar of training
METRIC_ROWS = ("text", "image", "constant_mask", "oracle_ibm", "oracle_irm", "mixture")
METRIC_COLUMNS = ("sdr", "sir", "sar", "si_sdr", "sdri")
# the closing Separate: command without an evaluation example (recorded by an older clipsep)
FALLBACK_MIXTURE, FALLBACK_QUERY = "MIX.wav", "violin"


def run_stage_reporting(stage: str, p: Params, skip_unchanged: bool = False) -> stages.StageRun:
    """:func:`clipsep.stages.run_stage`; for ``train``, the steps done so far as a Prefect
    progress artifact (``clipsep-train-progress``, percent) that the run page shows live."""
    if stage != "train":
        return stages.run_stage(stage, p, skip_unchanged)
    artifact = create_progress_artifact(
        progress=0.0, key=PROGRESS_ARTIFACT, description="training steps done (%)"
    )

    def update(_stage: str, done: int, total: int) -> None:
        update_progress_artifact(artifact, progress=100.0 * done / max(total, 1))

    with progress.listening(update):
        run = stages.run_stage(stage, p, skip_unchanged)
    if run.skipped:
        update_progress_artifact(artifact, 100.0, "skipped: inputs unchanged since the last run")
    return run


def stage_task(stage: str):
    """A stage of clipsep.stages as a Prefect task that skips it when its inputs are unchanged
    (no Prefect cache: the stage's own record decides, next to the files it writes)."""
    return task(
        run_stage_reporting,
        name=stage,
        task_run_name=stage,
        retries=STAGE_RETRIES[stage],
        retry_delay_seconds=10,
        cache_policy=NO_CACHE,
    )


def flow_params(
    params_file: str, profile: str | None, overrides: Sequence[str], source: str | None
) -> Params:
    """Merged params; ``source`` (a user's video folder) becomes ingest.source."""
    extra: list[str | tuple[str, str]] = list(overrides)  # the --set strings, as typed
    if source:
        folder = Path(source).expanduser().resolve()
        if not folder.is_dir():
            raise ClipsepError(f"source {source!r} is not a folder of videos")
        extra.append(("ingest.source", str(folder)))
    return load_params(params_file, profile=profile, overrides=extra)


def planned_stages(p: Params) -> list[str]:
    """Stages this configuration needs: the world only for its videos, captions or test protocol."""
    needs_pretrain = p.clip.pretrained is None  # the embedded world's own tiny CLIP
    needs_world = (
        p.ingest.source is None
        or needs_pretrain
        or p.eval.targets_csv is None
        or p.eval.interference_csv is None
    )
    plan = ["world"] if needs_world else []
    plan += ["ingest", "validate"] + (["pretrain-clip"] if needs_pretrain else [])
    return plan + ["train", "evaluate", "register"]


def metrics_markdown(metrics: dict[str, Any], registered: dict[str, Any]) -> str:
    """Evaluation metrics (dB, mean ± s.e.m. (median) as `clipsep evaluate` prints them) as a
    markdown table, with the gate's decision."""
    from clipsep.evaluation.evaluate import stat_text

    header = "| query | " + " | ".join(METRIC_COLUMNS) + " |"
    lines = [
        f"## clipsep v{registered['version']}: {registered['alias']}",
        f"{registered['reason']}",
        "",
        header,
        "|---" * (len(METRIC_COLUMNS) + 1) + "|",
    ]
    for row in (r for r in METRIC_ROWS if isinstance(metrics.get(r), dict)):
        cells = []
        for column in METRIC_COLUMNS:
            stat = metrics[row].get(column)
            cells.append(stat_text(stat) if stat else "–")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"mean ± s.e.m. (median) over {metrics.get('n_mixtures', '?')} test mixtures, "
        f"{metrics.get('backend', '?')}; "
        f"data version `{registered['data_version']}`, git `{registered['git_commit'][:10]}`",
    ]
    return "\n".join(lines)


def timing_markdown(
    runs: Sequence[stages.StageRun], seconds: dict[str, float], total_s: float, cpu: str
) -> str:
    """Each stage's wall time (s) and whether it ran or was skipped, the total, the CPU."""
    lines = ["| stage | wall time (s) | |", "|---|---:|---|"]
    for run in runs:
        status = "skipped (unchanged)" if run.skipped else "ran"
        if not run.skipped and run.summary.get("already_complete"):
            status = "nothing to do (training already complete)"
        lines.append(f"| {run.stage} | {seconds[run.stage]:.1f} | {status} |")
    lines += [f"| **total** | **{total_s:.1f}** | |", "", f"CPU: {cpu}"]
    return "\n".join(lines)


def timing_line(runs: Sequence[stages.StageRun], seconds: dict[str, float], total_s: float) -> str:
    """One log line of each stage's wall time, e.g. ``world 0.2 s (skipped), train 61.0 s, total
    63.5 s``: the table itself goes to the run's artifact and its closing message, once."""
    parts = [
        f"{run.stage} {seconds[run.stage]:.1f} s{' (skipped)' if run.skipped else ''}"
        for run in runs
    ]
    return ", ".join([*parts, f"total {total_s:.1f} s"])


def publish(p: Params, registered: dict[str, Any], timing: str) -> str:
    """Prefect artifacts: the metrics and timing tables, links to the MLflow run and version."""
    metrics = json.loads((p.path("evaluation") / "metrics.json").read_text())
    table = metrics_markdown(metrics, registered) + "\n\n### Stage times\n\n" + timing
    create_markdown_artifact(
        key="clipsep-metrics",
        markdown=table,
        description="evaluation metrics and promotion gate decision",
    )
    create_link_artifact(
        key="clipsep-mlflow-run",
        link=registered["run_url"],
        link_text=f"MLflow run {registered['run_id']} "
        f"({registered['model_uri']} @{registered['alias']})",
        description=f"tracking store: {registered['tracking_uri']}",
    )
    return table


def publish_validation_failure(p: Params, error: ValidationFailed) -> None:
    report = p.path("validation") / "report.md"
    text = report.read_text() if report.is_file() else str(error)
    create_markdown_artifact(
        key="clipsep-validation-failed",
        markdown=text,
        description="the data gate rejected the dataset",
    )


@flow(name=FLOW_NAME, log_prints=True, validate_parameters=True)
def train_clipsep(
    params_file: str = "params.yaml",
    profile: str | None = None,
    overrides: list[str] | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Run the pipeline on the embedded world (``source=None``) or a video folder; register.
    Stages whose inputs are unchanged since their last successful run are skipped."""
    start = time.perf_counter()
    apply_offline_defaults()  # a worker's process may not have come through python -m flows
    logger = get_run_logger()
    # Prefect attaches handlers, not a level
    if logging.getLogger("clipsep").level == logging.NOTSET:
        logging.getLogger("clipsep").setLevel(logging.INFO)
    p = flow_params(params_file, profile, overrides or [], source)
    stages.check_pipeline_inputs(p)  # a deployment's run comes here without main's check
    plan = planned_stages(p)
    which = f"profile {profile}" if profile else "no profile"
    logger.info("params %s (%s), stages: %s", p.source_file, which, " -> ".join(plan))
    runs, seconds = [], {}
    for stage in plan:
        began = time.perf_counter()
        try:
            runs.append(stage_task(stage)(stage, p, skip_unchanged=True))
        except ValidationFailed as err:
            publish_validation_failure(p, err)
            raise
        seconds[stage] = time.perf_counter() - began
    registered = runs[-1].summary
    total_s = time.perf_counter() - start
    timing = timing_markdown(runs, seconds, total_s, cpu_description())
    logger.info("stage times: %s", timing_line(runs, seconds, total_s))
    table = publish(p, registered, timing)
    return {
        **registered,
        "metrics_table": table,
        "register_skipped": runs[-1].skipped,
        **example_command_parts(runs, p.world.classes),
        **separate_out(p.path("root")),
    }


def separate_out(root: Path) -> dict[str, str]:
    """Where the closing ``Separate:`` command writes: its default ``separated/`` when the run's
    root (``paths.root``) is the working folder, else ``ROOT/separated`` (a profile's run must
    not replace the quick start's separations)."""
    if Path(root).resolve() == Path.cwd().resolve():
        return {}
    return {"separate_out": shown_path(Path(root) / "separated")}


def example_command_parts(runs: Sequence[stages.StageRun], classes: Sequence[str]) -> dict:
    """What the closing ``Separate:`` command separates: the evaluation's example mixture (two
    test clips) and the query the protocol asked of it, so the command runs as printed; without
    one (an evaluation recorded by an older clipsep), :data:`FALLBACK_MIXTURE` and a class of
    the world."""
    evaluated = next((r.summary for r in runs if r.stage == "evaluate"), {})
    example = evaluated.get("example") or {}
    if example.get("query") and Path(example.get("mixture", "")).is_file():
        return {
            "example_mixture": shown_path(example["mixture"]),
            "example_query": example["query"],
        }
    query = FALLBACK_QUERY if FALLBACK_QUERY in classes or not classes else classes[0]
    return {"example_query": query}


def where_to_look(
    registered: dict[str, Any], profile: str | None = None, overrides: Sequence[str] = ()
) -> str:
    """The closing message of a run: version, metrics, and the commands to look further, with
    the ``--profile`` and the ``paths.*`` / ``registry.*`` overrides of the run (where its
    registry is), so that they find the model it registered."""
    alias, name = registered["alias"], registered["model_name"]
    where = [f"--profile {profile}"] if profile else []
    where += [f"--set {o}" for o in overrides if o.startswith(("paths.", "registry."))]
    options = "".join(f" {w}" for w in where)
    query = shlex.quote(registered.get("example_query", FALLBACK_QUERY))
    mixture = shlex.quote(registered.get("example_mixture", FALLBACK_MIXTURE))
    out = registered.get("separate_out")
    out = f" --out {shlex.quote(out)}" if out else ""
    unchanged = registered.get("register_skipped") or registered.get("already_registered")
    done = "Already registered (unchanged)" if unchanged else "Registered"
    # a version that holds no alias (an earlier one already held the checkpoint) by its number
    model = f"models:/{name}@{alias}" if alias else registered["model_uri"]
    lines = [
        registered.get("metrics_table", ""),
        "",
        f"{done} {registered['model_uri']}{f' -> @{alias}' if alias else ''} "
        f"(text-query SDR {registered['text_sdr']:.2f} dB): {registered['reason']}",
        f"MLflow run:  {registered['run_url']}",
        f"MLflow UI:   {registered['ui_command']}",
        f"Separate:    .venv/bin/clipsep separate {mixture} --query {query}{out} "
        f"--model {model}{options}",
        f"App:         .venv/bin/python -m app --model {model}{options}   (http://127.0.0.1:7860)",
    ]
    if alias != "champion":
        lines.append(
            f"Note: no promotion; models:/{name}@champion is unchanged or absent "
            "(see registry.champion_floor_db / promotion_margin_db in params.yaml)."
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """One run (``python -m flows`` calls this after :func:`flows.entry.prepare_environment`)."""
    parser = argparse.ArgumentParser(
        prog="python -m flows", description="run the train-clipsep flow once"
    )
    add_flow_options(parser)
    args = parser.parse_args(argv)
    try:
        params_file = str(params_file_from_args(args).resolve())
        # bad params (a typo'd --set, an unknown profile): one line, before Prefect starts a
        # server and records a failed run around the traceback
        stages.check_pipeline_inputs(
            flow_params(params_file, args.profile, args.overrides or [], args.source)
        )
        registered = train_clipsep(
            params_file=params_file,
            profile=args.profile,
            overrides=args.overrides,
            source=args.source,
        )
    except (ClipsepError, ConfigError) as err:  # the run's log holds the details; say what to fix
        print(f"\ntrain-clipsep failed: {err}", file=sys.stderr)
        return 2
    print("\n" + where_to_look(registered, args.profile, args.overrides or ()))
    return 0


if __name__ == "__main__":  # prefect is imported by now, before the environment could be set
    sys.exit("run the flow with `python -m flows` (it sets the environment before Prefect starts)")
