"""``python -m app [--params F] [--profile P] [--set K=V] [--model REF] [--port N]``: the demo.

Loads ``serve.model`` (null: ``separate.model``, ``models:/clipsep@champion`` from the params'
MLflow store, or a checkpoint path), renders the examples once into a cache folder, and serves
the page on ``serve.host:serve.port`` (127.0.0.1 by default) until Ctrl-C. Telemetry is off.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from clipsep.config import ROOT_NAME, add_params_arguments, params_from_args, params_root
from clipsep.env import apply_offline_defaults

log = logging.getLogger("app")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    add_params_arguments(parser)
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint path (relative to the working folder) or models:/NAME@ALIAS "
        "(default: serve.model)",
    )
    parser.add_argument("--port", type=int, default=None, help="port (default: serve.port)")
    return parser.parse_args(argv)


def examples_cache() -> Path:
    """Where example mixtures are written: beside Gradio's uploads, outside the project."""
    base = os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()
    return Path(base) / "clipsep-examples"


def serve(argv: Sequence[str] | None = None) -> int:
    apply_offline_defaults()  # before gradio/mlflow/open_clip are imported
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        datefmt="%H:%M:%S",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from clipsep.config import ConfigError
    from clipsep.errors import ClipsepError

    overrides = {"serve.port": args.port} if args.port is not None else {}
    try:
        params = params_from_args(args, overrides)
        served = load_served(params, args.model, params_root(args, params)[0])
    except (ConfigError, ClipsepError) as err:
        log.error("%s", err)
        return 2
    from app.demo import build_demo, launch

    model = args.model or params.serve.model
    log.info("serving %s on http://%s:%d", model, params.serve.host, params.serve.port)
    launch(build_demo(params, served), params.serve, served)
    return 0


def load_served(params, model: str | None = None, root_name: str = ROOT_NAME):
    """The separator, its card and the examples for the page; ``model``: --model (a path
    relative to the working folder; default ``serve.model``, relative to ``paths.root``)."""
    from app import handlers
    from app.demo import Served

    separator, card = handlers.load_model(params, model, root_name)
    cache = examples_cache()
    examples = handlers.build_examples(params, cache)
    log.info("%d example(s) in %s", len(examples), cache)
    return Served(separator, card, examples, cache if examples else None)


if __name__ == "__main__":
    sys.exit(serve())
