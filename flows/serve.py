"""Serve the ``train-clipsep`` deployment on a cron schedule (a long-running process).

    .venv/bin/python -m flows.serve [--name weekly] [--cron "0 3 * * 1"] [--profile P] [--set k=v]

Registers deployment ``train-clipsep/<name>`` on the Prefect API named by PREFECT_API_URL (the
local server of ``make platform``, or a team's own) and runs its flow runs in this process:
scheduled ones and those triggered with
``prefect deployment run 'train-clipsep/<name>' -p profile=tiny -p 'overrides=["train.steps=8"]'``.
The cron (default weekly, Monday 03:00) also comes from CLIPSEP_CRON. Stop it with SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from clipsep.config import params_file_from_args
from flows.entry import add_flow_options, prepare_environment

DEFAULT_CRON = "0 3 * * 1"  # weekly: Monday 03:00
DEFAULT_NAME = "weekly"


def deployment_parameters(args: argparse.Namespace) -> dict:
    """Default flow parameters of the deployment (a trigger's -p values override them)."""
    return {
        "params_file": str(params_file_from_args(args).resolve()),
        "profile": args.profile,
        "overrides": args.overrides,
        "source": args.source,
    }


def main(argv: Sequence[str] | None = None) -> int:
    prepare_environment()  # before Prefect is imported; the flow runs inherit it
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=os.environ.get("CLIPSEP_DEPLOYMENT", DEFAULT_NAME))
    parser.add_argument("--cron", default=os.environ.get("CLIPSEP_CRON", DEFAULT_CRON))
    add_flow_options(parser)
    args = parser.parse_args(argv)
    from flows.train_clipsep import train_clipsep

    print(
        f"serving deployment '{train_clipsep.name}/{args.name}' (cron '{args.cron}') "
        f"on {os.environ.get('PREFECT_API_URL', 'an ephemeral Prefect server')}",
        flush=True,
    )
    train_clipsep.serve(
        name=args.name,
        cron=args.cron,
        parameters=deployment_parameters(args),
        tags=["clipsep"],
        description="train, evaluate and register CLIPSep",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
