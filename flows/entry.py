"""What every entry point of ``flows/`` does before Prefect is imported, and the flow's options.

Prefect reads its settings (telemetry, which loggers it shows) when it is imported, and
huggingface_hub reads HF_HUB_OFFLINE when open_clip imports it; so ``python -m flows`` and
``python -m flows.serve`` call :func:`prepare_environment` first and import the flow afterwards.
Nothing here imports prefect.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from clipsep.env import apply_offline_defaults

PREFECT_DEFAULTS = {
    # the library logs progress (training steps, stage summaries, skipped stages) on the
    # "clipsep" logger: show it in the flow run's log and on the console, next to Prefect's lines
    "PREFECT_LOGGING_EXTRA_LOGGERS": "clipsep",
    # library use outside flow runs
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def prepare_environment() -> None:
    """Offline and telemetry-off defaults plus Prefect's logging settings (a user's values win);
    a ``PREFECT_HOME`` that does not exist yet is made (Prefect makes one level only, then times
    out on its temporary server after a sqlalchemy traceback that does not name the folder)."""
    apply_offline_defaults()
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if os.environ.get("PREFECT_HOME"):
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)


def add_flow_options(parser: argparse.ArgumentParser) -> None:
    """The flow's parameters as options (one run in ``python -m flows``; a deployment's defaults
    in ``flows.serve``)."""
    from clipsep.config import add_params_arguments

    add_params_arguments(parser)
    parser.add_argument(
        "--source", default=None, help="a folder of videos (default: the embedded world)"
    )
