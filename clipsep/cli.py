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
from typing import Any, Callable, Sequence

from clipsep.config import add_params_arguments, params_from_args, params_root
from clipsep.env import apply_offline_defaults, paused_gc, process_rank, skip_exit_collection

log = logging.getLogger("clipsep")
# library argument -> its CLI flag
FLAGS = {"query": "--query TEXT", "queries": "--query TEXT", "image": "--image PATH"}


def run_stage(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one pipeline stage by name and return its summary. It always runs (``dvc repro``
    decides what to skip) and leaves its record, so a later flow run can skip it. Its caller
    drives the pipeline (dvc, or a person), not this process. Under torchrun only rank 0's
    summary is returned (printed); the other ranks return None."""
    from clipsep.stages import run_stage as run

    summary = run(name, params_from_args(args), in_process=False).summary
    return summary if process_rank() == 0 else None


def show_params(args: argparse.Namespace) -> dict[str, Any]:
    """Print (or write with --output) the merged params, e.g. a profile as a full params file."""
    from clipsep.config import dump_params

    params = params_from_args(args)
    if args.output:
        if Path(args.output).exists() and not args.force:
            from clipsep.errors import BadInputError

            raise BadInputError(
                f"{args.output} exists; --force replaces it (written from the merged values: "
                "its comments are not kept)"
            )
        dump_params(params, args.output)
        return {"written": args.output}
    return params.to_dict()


def plain(text: str) -> str:
    """A docstring line for --help: without its reStructuredText literal markup (``x``)."""
    return text.replace("``", "")


def _version() -> str:
    """The installed distribution's version ("unknown" when run from a tree not installed)."""
    from importlib import metadata

    try:
        return metadata.version("clipsep")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _command(sub, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` opens with the line ``clipsep --help`` lists it by."""
    return sub.add_parser(name, help=summary, description=summary)


def build_parser() -> argparse.ArgumentParser:
    from clipsep.stages import STAGES

    parser = argparse.ArgumentParser(prog="clipsep", description=plain(__doc__.splitlines()[0]))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"clipsep {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, fn in STAGES.items():
        stage = _command(sub, name, plain((fn.__doc__ or "").splitlines()[0]))
        add_params_arguments(stage)
        stage.set_defaults(handler=lambda a, n=name: run_stage(n, a))
    params_cmd = _command(sub, "params", "Print the merged params (profile + overrides).")
    add_params_arguments(params_cmd)
    params_cmd.add_argument("-o", "--output", default=None, help="write a full params file here")
    params_cmd.add_argument(
        "--force", action="store_true", help="let --output replace a file that exists"
    )
    params_cmd.set_defaults(handler=show_params)
    _add_separate_command(sub)
    _add_export_command(sub)
    return parser


def _add_export_command(sub) -> None:
    cmd = _command(sub, "export", "Write the separator network as ONNX (+ its settings).")
    cmd.add_argument(
        "model",
        metavar="MODEL",
        help="separator checkpoint (.pt) or registry reference models:/NAME@ALIAS or "
        "models:/NAME/VERSION (in the registry of the params: registry.tracking_uri)",
    )
    cmd.add_argument(
        "out",
        metavar="OUT",
        help="output folder (separator.onnx, "
        "clipsep-export.json); run it with clipsep separate --model OUT or "
        "Separator.from_pretrained(OUT)",
    )
    cmd.add_argument("--format", default="onnx", choices=("onnx",), help="export format")
    cmd.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's)")
    add_params_arguments(cmd)
    cmd.set_defaults(handler=export_model)


def export_model(args: argparse.Namespace) -> dict[str, Any]:
    """``clipsep export MODEL --format onnx OUT``: the checkpoint MODEL names (a file, or a
    registry version: :func:`clipsep.inference.resolve_reference`) through export_onnx."""
    from clipsep.inference import resolve_reference
    from clipsep.model.export import export_onnx, read_export
    from clipsep.registry_reader import registry_uri

    params = params_from_args(args)
    resolved = resolve_reference(
        args.model, None, registry_uri(params), elsewhere=params_root(args, params)
    )
    folder = export_onnx(resolved.checkpoint, args.out, opset=args.opset)
    manifest = read_export(folder).manifest
    return {
        "model": args.model,
        "version": resolved.version,
        "exported": str(folder),
        "format": args.format,
        "opset": manifest["opset"],
        "onnx": str(folder / manifest["onnx_file"]),
        "shapes": manifest["shapes"],  # of the inputs mix_mag, queries and the output
    }


def _add_separate_command(sub) -> None:
    cmd = _command(sub, "separate", "Extract the sounds that text or image queries describe.")
    cmd.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="audio (wav/flac/ogg/mp3) or video files, or folders (walked, nested; their other "
        "files are named as ignored, hidden ones left out)",
    )
    cmd.add_argument(
        "--query",
        dest="queries",
        action="append",
        default=[],
        help="text query, e.g. 'acoustic guitar'; repeat for several stems in one "
        "pass (OUT/<stem>/<query>.wav each). Without --query and --image, a video's middle "
        "frame is its query",
    )
    cmd.add_argument(
        "--image",
        action="append",
        default=None,
        help="image query (a picture of the sound source; one per run, its stem image.wav "
        "beside the --query stems)",
    )
    cmd.add_argument(
        "--model",
        default=None,
        help="checkpoint path or models:/NAME@ALIAS (default: params separate.model)",
    )
    cmd.add_argument("--clip-weights", default=None, help="CLIP weights replacing the stored ones")
    cmd.add_argument(
        "-o", "--out", default="separated", help="output folder (default: ./separated)"
    )
    cmd.add_argument(
        "--format",
        default="wav",
        choices=["wav", "flac", "mp3"],
        help="output format (default: wav)",
    )
    cmd.add_argument(
        "--bits",
        default=None,
        choices=["16", "24", "32f"],
        help="bit depth: 16/24-bit PCM clip at full scale (counted and warned), 32f "
        "keeps everything (default: a 16/24-bit PCM input's depth, else 32f, or 24 for FLAC, "
        "which has no float)",
    )
    cmd.add_argument(
        "--overwrite",
        action="store_true",
        help="separate again files whose outputs exist (default: skip them)",
    )
    cmd.add_argument(
        "--json", action="store_true", help="print a machine-readable summary instead of the table"
    )
    add_params_arguments(cmd)
    cmd.set_defaults(handler=separate_files)


def _model_reference(
    args: argparse.Namespace, params
) -> tuple[str, Path | None, tuple[str, Path] | None]:
    """(reference, root, elsewhere) for resolve_reference: --model is taken from the working
    folder (a missing one's error names it under the params' root when it is there:
    clipsep.config.params_root), the params' separate.model from the project (paths.root)."""
    if args.model:
        return args.model, None, params_root(args, params)
    return params.separate.model, params.path("root"), None


def _load_separator(args: argparse.Namespace, params):
    """The Separator of --model or the params' separate.model, with the embeddings of the text
    queries ready: a query not met before builds the CLIP model here, while loading (with the
    garbage collector paused: :func:`clipsep.env.paused_gc`), and every file reads the
    embedding from the text-embedding cache."""
    from clipsep.inference import Separator
    from clipsep.registry_reader import registry_uri

    ref, root, elsewhere = _model_reference(args, params)
    with paused_gc(freeze=args.program):
        separator = Separator.from_pretrained(
            ref,
            device=params.separate.device,
            clip_weights=args.clip_weights,
            settings=params.separate,
            tracking_uri=registry_uri(params),
            root=root,
            calibration=params.path("clips"),
            elsewhere=elsewhere,
        )
        for query in args.queries:
            separator.embed_query(query)
    return separator


def _unloaded_model(args: argparse.Namespace, params) -> tuple[dict[str, Any], Callable]:
    """What the separator _load_separator would load records in separation.json
    (Separator.model_record) and a check that refuses a file too short for it
    (clipsep.inference.check_length), both found without loading it (resolve_reference,
    choose_engine, audio_config), so that a run whose files are all skipped, or all too short,
    loads nothing."""
    from clipsep import outputs
    from clipsep.inference import audio_config, check_length, choose_engine, resolve_reference
    from clipsep.registry_reader import registry_uri

    ref, root, elsewhere = _model_reference(args, params)
    resolved = resolve_reference(ref, args.clip_weights, registry_uri(params), root, elsewhere)
    audio_cfg = audio_config(resolved.checkpoint)
    engine, device, settings = choose_engine(ref, None, params.separate.device, params.separate)
    record = outputs.model_record(
        resolved.checkpoint,
        resolved.version,
        resolved.clip_weights,
        settings,
        engine,
        device,
        calibration=params.path("clips"),
    )
    return record, lambda path: check_length(path, audio_cfg)


def _check_queries(args: argparse.Namespace) -> None:
    """Usage errors of --query and --image, before any work: an empty query, a missing or
    unreadable image, --image given more than once (appended, so a second one is not silently
    dropped). Leaves ``args.image`` the one image path or None."""
    from clipsep.errors import BadInputError
    from clipsep.inference import check_text_query, load_image

    for query in args.queries:
        check_text_query(query)
    images = args.image or []
    if len(images) > 1:
        raise BadInputError(
            f"--image is given {len(images)} times: one image query per run "
            "(repeat --query for several text queries)",
            arguments=("image",),
        )
    args.image = images[0] if images else None
    if args.image is not None:
        try:
            load_image(args.image)  # decoded once more when embedded: a photo takes milliseconds
        except BadInputError as err:
            raise BadInputError(str(err), arguments=("image",)) from err


def _refuse_if_nothing_usable(jobs) -> None:
    """When no input can be separated at all (each missing, or a folder without audio or video),
    a usage error at once, before any model is resolved: every problem but the last logged, the
    last raised. Otherwise the unusable inputs fail in the report and the others go on."""
    from clipsep.errors import BadInputError

    if jobs and all(job.problem for job in jobs):
        for job in jobs[:-1]:
            log.error("%s", job.problem)
        raise BadInputError(jobs[-1].problem)


def _check_own_queries(jobs) -> None:
    """Without --query and --image every input must be a video (its middle frame is the query):
    a usage error naming the inputs that are not, before the model loads."""
    from clipsep import audio_io
    from clipsep.errors import BadInputError

    without = [
        job.path for job in jobs if not job.problem and not audio_io.has_video_stream(job.path)
    ]
    if without:
        more = f" (and {len(without) - 1} more)" if len(without) > 1 else ""
        raise BadInputError(
            f"no query: {without[0]}{more} has no video picture to serve as the query; "
            "give a text query or an image",
            arguments=("query", "image"),
        )


class _ProgressBars:
    """One tqdm bar per file (segments done), closed when the next file starts."""

    def __init__(self):
        self.bar = None

    def start(self, job):
        from clipsep.progress import bar

        self.close()
        self.bar = bar(desc=str(job.path), unit="segment", leave=False)
        return self.update

    def update(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def separate_files(args: argparse.Namespace) -> int:
    """Separate every input file (and every audio or video file in input folders) into
    OUT/<stem>/; print a table and a line naming the folders' other files (or --json); exit 1 if
    a file found in a folder failed, 2 if a named input did."""
    import time

    started = time.perf_counter()
    if args.program:
        skip_exit_collection()
    with paused_gc(freeze=args.program):  # imports torch (and mlflow for a registry model)
        from clipsep import batch, fileio, outputs
        from tqdm.contrib.logging import logging_redirect_tqdm

        _check_queries(args)
        output = outputs.OutputFormat(args.format, args.bits)
        several = len(args.queries) > 1 or (args.queries and args.image)
        queries = [q.strip() for q in args.queries] if several else None
        names = outputs.stem_names(queries, bool(args.image))
        outputs.stem_files(names, output.suffix)  # clashing names: a usage error before any work
        found = batch.find_jobs(args.inputs, args.out)
        jobs = found.jobs
        _refuse_if_nothing_usable(jobs)
        fileio.check_writable_folder(args.out)  # before the model loads
        if not args.queries and args.image is None:
            _check_own_queries(jobs)
        params = params_from_args(args)
        model = _model_reference(args, params)[0]
        model_record, check = _unloaded_model(args, params)
    kwargs = dict(
        queries=queries,
        image=args.image,
        output=output,
        query=None if several else (args.queries[0] if args.queries else None),
    )

    bars = _ProgressBars()
    try:
        # log lines go between the progress bars, each on a line of its own
        with logging_redirect_tqdm():
            outcomes = batch.run_jobs(
                lambda: _load_separator(args, params),
                jobs,
                names,
                args.overwrite,
                kwargs,
                model_record,
                bars.start,
                describe=with_flags,
                check=check,
            )
    finally:
        bars.close()
    failed = sum(o.status == "failed" for o in outcomes)
    alone = failed and len(outcomes) == 1  # one input that failed: its error line said it all
    if args.json:
        seconds = time.perf_counter() - started
        print(
            json.dumps(
                batch.summary(outcomes, model, seconds, found.not_media, found.earlier), indent=2
            )
        )
    else:
        if not alone:
            print(batch.table(outcomes))
        if found.not_media:  # not failures: the exit status does not count them
            print(batch.not_media_line(found.not_media))
        if found.earlier:
            print(batch.earlier_line(found.earlier))
    if failed and not alone:  # after the table it sums up (stdout flushed first)
        separated = sum(o.status == "separated" for o in outcomes)
        sys.stdout.flush()
        log.warning(
            "%d of %d inputs could not be separated (see above); %s",
            failed,
            len(outcomes),
            batch.count_files(separated, "separated"),
        )
    return batch.exit_status(outcomes)


def with_flags(err: Exception) -> str:
    """The error's message plus the command-line flags of the arguments it names."""
    flags = [FLAGS[name] for name in getattr(err, "arguments", ()) if name in FLAGS]
    return f"{err} ({' / '.join(flags)})" if flags else str(err)


def _resume_hint(command: str) -> str:
    """What running ``command`` again does after an interruption (training resumes)."""
    if command == "train":
        return "; the same `clipsep train` command resumes from the last checkpoint (last.pt)"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status. ``argv`` None: run as the program (sys.argv), in
    a process that ends afterwards; a list: a caller in Python (e.g. a test). Only separate
    cares: it pauses the garbage collector while it loads (:func:`clipsep.env.paused_gc`) and, as
    the program, also freezes what it loaded and skips the collector's passes at exit
    (:func:`clipsep.env.skip_exit_collection`)."""
    apply_offline_defaults()
    program = argv is None
    from clipsep.config import ConfigError
    from clipsep.errors import ClipsepError

    args = build_parser().parse_args(argv)
    args.program = program
    # other libraries (open_clip logs on the root logger) speak at WARNING unless --verbose
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("clipsep").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        result = args.handler(args)
    except KeyboardInterrupt:  # one line, not the traceback of wherever Ctrl-C landed
        log.error("interrupted (Ctrl-C)%s", _resume_hint(args.command))
        return 130
    except SystemExit as err:  # SIGTERM during training arrives as SystemExit(143)
        if isinstance(err.code, int) and err.code > 128:
            log.error("stopped by signal %d%s", err.code - 128, _resume_hint(args.command))
        raise
    except (ConfigError, ClipsepError, FileNotFoundError) as err:
        if getattr(err, "result", None) is not None:  # a batch with failures: what did work
            print(json.dumps(err.result, indent=2, default=str))
        log.error("%s", with_flags(err))
        return 2
    if isinstance(result, int):  # a command that printed its own report returns its status
        return result
    if result is not None:
        print(json.dumps(result, indent=2, default=str, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
