"""Command line: ``clipsep <stage> [--params F] [--profile P] [--set section.key=value ...]``.

Thin by design: parse, set up logging, call a stage function from :mod:`clipsep.stages` (or the
separation API), print its summary. Hyperparameters are never flags: they live in params.yaml.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from clipsep.env import apply_offline_defaults

log = logging.getLogger("clipsep")
FLAGS = {"query": "--query TEXT", "image": "--image PATH"}  # library argument -> its CLI flag


def _add_params_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml",
                        help="params file (default: params.yaml)")
    parser.add_argument("--profile", default=None, help="size profile: profiles/<NAME>.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override one parameter (repeatable)")


def load_cli_params(args: argparse.Namespace):
    from clipsep.config import load_params

    return load_params(args.params, profile=args.profile, overrides=args.overrides)


def run_stage(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one pipeline stage by name and return its summary."""
    from clipsep.stages import STAGES

    return STAGES[name](load_cli_params(args))


def show_params(args: argparse.Namespace) -> dict[str, Any]:
    """Print (or write with --output) the merged params, e.g. a profile as a full params file."""
    from clipsep.config import dump_params

    params = load_cli_params(args)
    if args.output:
        dump_params(params, args.output)
        return {"written": args.output}
    return params.to_dict()


def build_parser() -> argparse.ArgumentParser:
    from clipsep.stages import STAGES

    parser = argparse.ArgumentParser(prog="clipsep", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, fn in STAGES.items():
        stage = sub.add_parser(name, help=(fn.__doc__ or "").splitlines()[0])
        _add_params_options(stage)
        stage.set_defaults(handler=lambda a, n=name: run_stage(n, a))
    params_cmd = sub.add_parser("params", help="print the merged params (profile + overrides)")
    _add_params_options(params_cmd)
    params_cmd.add_argument("-o", "--output", default=None, help="write a full params file here")
    params_cmd.set_defaults(handler=show_params)
    _add_separate_command(sub)
    return parser


def _add_separate_command(sub) -> None:
    cmd = sub.add_parser("separate", help="extract the sound a text or image query describes")
    cmd.add_argument("inputs", nargs="+", metavar="INPUT",
                     help="audio (wav/flac/ogg/mp3) or video files")
    cmd.add_argument("--query", default=None, help="text query, e.g. 'acoustic guitar'")
    cmd.add_argument("--image", default=None, help="image query (a picture of the sound source)")
    cmd.add_argument("--model", default=None, help="checkpoint path or models:/NAME@ALIAS "
                     "(default: params separate.model)")
    cmd.add_argument("--clip-weights", default=None, help="CLIP weights replacing the stored ones")
    cmd.add_argument("--out", default="separated", help="output folder (default: separated)")
    _add_params_options(cmd)
    cmd.set_defaults(handler=separate_files)


def separate_files(args: argparse.Namespace) -> dict[str, Any]:
    """Separate every input into OUT/<stem>/{target,residual}.wav; a bad input is reported and
    skipped, and the run then ends with PartialFailure (exit status 2)."""
    from tqdm import tqdm

    from clipsep.errors import BadInputError, PartialFailure
    from clipsep.inference import Separator
    from clipsep.registry_reader import registry_uri

    stems = [Path(path).stem for path in args.inputs]
    if len(set(stems)) < len(stems):  # OUT/<stem>/ would be overwritten by a later input
        raise BadInputError(f"inputs share a file name stem ({sorted(stems)}); rename one")
    params = load_cli_params(args)
    # --model is taken from the working folder, the default from the project (paths.root)
    separator = Separator.from_pretrained(args.model or params.separate.model,
                                          device=params.separate.device,
                                          clip_weights=args.clip_weights, settings=params.separate,
                                          tracking_uri=registry_uri(params),
                                          root=None if args.model else params.path("root"))
    written, failed = {}, {}
    for path in args.inputs:
        try:
            with tqdm(desc=str(path), unit="segment", leave=False) as bar:
                def progress(done: int, total: int, bar=bar) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                target, residual = separator.separate_file(path, args.out, query=args.query,
                                                           image=args.image, progress=progress)
        except BadInputError as err:
            if len(args.inputs) == 1:
                raise
            message = with_flags(err)
            failed[str(path)] = message if str(path) in message else f"{path}: {message}"
            log.error("%s", failed[str(path)])
            continue
        written[str(path)] = {"target": str(target), "residual": str(residual)}
        log.info("%s -> %s", path, target.parent)
    if failed:
        raise PartialFailure(f"{len(failed)} of {len(args.inputs)} inputs could not be separated "
                             f"(see above); {len(written)} were",
                             {"separated": written, "failed": failed})
    return {"separated": written}


def with_flags(err: Exception) -> str:
    """The error's message plus the command-line flags of the arguments it names."""
    flags = [FLAGS[name] for name in getattr(err, "arguments", ()) if name in FLAGS]
    return f"{err} ({' / '.join(flags)})" if flags else str(err)


def main(argv: Sequence[str] | None = None) -> int:
    apply_offline_defaults()
    from clipsep.config import ConfigError
    from clipsep.errors import ClipsepError

    args = build_parser().parse_args(argv)
    # other libraries (open_clip logs on the root logger) speak at WARNING unless --verbose
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("clipsep").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        result = args.handler(args)
    except (ConfigError, ClipsepError, FileNotFoundError) as err:
        if getattr(err, "result", None) is not None:  # a batch with failures: what did work
            print(json.dumps(err.result, indent=2, default=str))
        log.error("%s", with_flags(err))
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
