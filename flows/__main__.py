"""``python -m flows [--params F] [--profile P] [--set k=v] [--source DIR]``: one run of the
``train-clipsep`` flow (``make quickstart``). The environment is set before Prefect is imported."""

from __future__ import annotations

import sys
from typing import Sequence

from flows.entry import prepare_environment


def main(argv: Sequence[str] | None = None) -> int:
    prepare_environment()
    from flows.train_clipsep import main as run_once

    return run_once(argv)


if __name__ == "__main__":
    sys.exit(main())
