"""The ``train-clipsep`` flow: world -> ingest -> validate -> pretrain-clip -> train -> evaluate
-> register.

Each task *is* a stage function of :mod:`clipsep.stages` (the same ones ``dvc.yaml`` calls), so no
stage logic lives here. Retries only where a retry can help: I/O (rendering/decoding videos,
talking to the MLflow store); none where it cannot (a failing validation gate stops the flow and
publishes its report; training and evaluation are deterministic).

Lineage: the flow runs the stages in-process (it accepts profiles, overrides and a user's video
folder, which a params.yaml-pinned ``dvc repro`` cannot express) and records the exact data version
it used on the MLflow run and model version: the md5 of clips/manifest.csv (which holds a sha256 of
every source video), the dvc.lock md5 of the clips folder when present, the git commit and the
merged params. ``python -m flows.train_clipsep`` runs it once; ``flows.serve`` serves it on a cron.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from clipsep.env import apply_offline_defaults

apply_offline_defaults()  # before prefect/mlflow/open_clip imports: no telemetry, no hub retries
# the library logs progress (training steps, stage summaries) on the "clipsep" logger: show it in
# the flow run's log and on the console, next to Prefect's own lines
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "clipsep")
# library use outside flow runs
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_link_artifact, create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from clipsep import stages  # noqa: E402
from clipsep.config import ConfigError, Params, load_params  # noqa: E402
from clipsep.errors import ClipsepError, ValidationFailed  # noqa: E402

FLOW_NAME = "train-clipsep"
# retries per stage: I/O-bound stages may hit a transient failure; compute and gates may not.
STAGE_RETRIES = {"world": 1, "ingest": 2, "validate": 0, "pretrain-clip": 0, "train": 0,
                 "evaluate": 0, "register": 2}
METRIC_ROWS = ("text", "image", "constant_mask", "oracle_ibm", "oracle_irm", "mixture")
METRIC_COLUMNS = ("sdr", "sir", "sar", "si_sdr", "sdri")


def stage_task(stage: str):
    """The stage function of clipsep.stages as a Prefect task (no cache: stages write files)."""
    return task(stages.STAGES[stage], name=stage, task_run_name=stage,
                retries=STAGE_RETRIES[stage], retry_delay_seconds=10, cache_policy=NO_CACHE)


def flow_params(params_file: str, profile: str | None, overrides: Sequence[str],
                source: str | None) -> Params:
    """Merged params; ``source`` (a user's video folder) becomes ingest.source."""
    extra = list(overrides)
    if source:
        folder = Path(source).expanduser().resolve()
        if not folder.is_dir():
            raise ClipsepError(f"source {source!r} is not a folder of videos")
        extra.append(f"ingest.source={json.dumps(str(folder))}")
    return load_params(params_file, profile=profile, overrides=extra)


def planned_stages(p: Params) -> list[str]:
    """Stages this configuration needs: the world only for its videos, captions or test protocol."""
    needs_pretrain = p.clip.pretrained is None  # the embedded world's own tiny CLIP
    needs_world = (p.ingest.source is None or needs_pretrain or p.eval.targets_csv is None
                   or p.eval.interference_csv is None)
    plan = ["world"] if needs_world else []
    plan += ["ingest", "validate"] + (["pretrain-clip"] if needs_pretrain else [])
    return plan + ["train", "evaluate", "register"]


def metrics_markdown(metrics: dict[str, Any], registered: dict[str, Any]) -> str:
    """Evaluation metrics (mean +- sem, dB) as a markdown table, with the gate's decision."""
    header = "| query | " + " | ".join(METRIC_COLUMNS) + " |"
    lines = [f"## clipsep v{registered['version']}: {registered['alias']}",
             f"{registered['reason']}", "", header, "|---" * (len(METRIC_COLUMNS) + 1) + "|"]
    for row in (r for r in METRIC_ROWS if isinstance(metrics.get(r), dict)):
        cells = []
        for column in METRIC_COLUMNS:
            stat = metrics[row].get(column)
            cells.append(f"{stat['mean']:.2f} ± {stat.get('sem', 0):.2f}" if stat else "–")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", f"{metrics.get('n_mixtures', '?')} test mixtures, {metrics.get('backend', '?')}; "
              f"data version `{registered['data_version']}`, git `{registered['git_commit'][:10]}`"]
    return "\n".join(lines)


def publish(p: Params, registered: dict[str, Any]) -> str:
    """Prefect artifacts: the metrics table and links to the MLflow run and model version."""
    metrics = json.loads((p.path("evaluation") / "metrics.json").read_text())
    table = metrics_markdown(metrics, registered)
    create_markdown_artifact(key="clipsep-metrics", markdown=table,
                             description="evaluation metrics and promotion gate decision")
    create_link_artifact(key="clipsep-mlflow-run", link=registered["run_url"],
                         link_text=f"MLflow run {registered['run_id']} "
                                   f"({registered['model_uri']} @{registered['alias']})",
                         description=f"tracking store: {registered['tracking_uri']}")
    return table


def publish_validation_failure(p: Params, error: ValidationFailed) -> None:
    report = p.path("validation") / "report.md"
    text = report.read_text() if report.is_file() else str(error)
    create_markdown_artifact(key="clipsep-validation-failed", markdown=text,
                             description="the data gate rejected the dataset")


@flow(name=FLOW_NAME, log_prints=True, validate_parameters=True)
def train_clipsep(params_file: str = "params.yaml", profile: str | None = None,
                  overrides: list[str] | None = None, source: str | None = None) -> dict[str, Any]:
    """Run the pipeline on the embedded world (``source=None``) or a video folder; register."""
    logger = get_run_logger()
    # Prefect attaches handlers, not a level
    if logging.getLogger("clipsep").level == logging.NOTSET:
        logging.getLogger("clipsep").setLevel(logging.INFO)
    p = flow_params(params_file, profile, overrides or [], source)
    plan = planned_stages(p)
    logger.info("params %s (profile %s), stages: %s", p.source_file, profile, " -> ".join(plan))
    summaries: dict[str, Any] = {}
    for stage in plan:
        try:
            summaries[stage] = stage_task(stage)(p)
        except ValidationFailed as err:
            publish_validation_failure(p, err)
            raise
    table = publish(p, summaries["register"])
    return {**summaries["register"], "metrics_table": table}


def where_to_look(registered: dict[str, Any]) -> str:
    """The closing message of a run: version, metrics, and the commands to look further."""
    alias, name = registered["alias"], registered["model_name"]
    lines = [registered.get("metrics_table", ""), "",
             f"Registered {registered['model_uri']} -> @{alias} "
             f"(text-query SDR {registered['text_sdr']:.2f} dB): {registered['reason']}",
             f"MLflow run:  {registered['run_url']}",
             f"MLflow UI:   {registered['ui_command']}",
             "Separate:    .venv/bin/clipsep separate MIX.wav --query violin "
             f"--model models:/{name}@{alias}",
             f"App:         .venv/bin/python -m app --model models:/{name}@{alias}   "
             "(http://127.0.0.1:7860)"]
    if alias != "champion":
        lines.append(f"Note: no promotion; models:/{name}@champion is unchanged or absent "
                     "(see registry.champion_floor_db / promotion_margin_db in params.yaml).")
    return "\n".join(lines)


def add_flow_options(parser: argparse.ArgumentParser) -> None:
    """The flow's parameters as options (one run here; a deployment's defaults in flows.serve)."""
    from clipsep.config import add_params_arguments

    add_params_arguments(parser)
    parser.add_argument("--source", default=None,
                        help="a folder of videos (default: the embedded world)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run the train-clipsep flow once")
    add_flow_options(parser)
    args = parser.parse_args(argv)
    try:
        registered = train_clipsep(params_file=str(Path(args.params).resolve()),
                                   profile=args.profile, overrides=args.overrides,
                                   source=args.source)
    except (ClipsepError, ConfigError) as err:  # the run's log holds the details; say what to fix
        print(f"\ntrain-clipsep failed: {err}", file=sys.stderr)
        return 2
    print("\n" + where_to_look(registered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
