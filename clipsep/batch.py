"""Separating many files with one loaded model: inputs (files and folders), skips, a report.

``find_jobs`` turns the command line's inputs into jobs: a file is separated into
``OUT/<stem>/``; a folder is walked (:func:`walk_folder`: nested, the audio and video suffixes of
:data:`clipsep.audio_io.MEDIA_SUFFIXES`, hidden files left out) and each file found goes to
``OUT/<its folder relative to the input folder>/<stem>/``; its other files are skipped, and the
report names them as ignored (:func:`not_media_line`, ``ignored`` in :func:`summary`). ``run_jobs``
separates them in order and carries on past a file that fails. It skips a file (unless
``overwrite``) only when its outputs all exist and their ``separation.json`` records the same
request (input file, queries, model, settings, format: :func:`clipsep.outputs.request_record`);
outputs made for another request, or with no record, are made again and the report says why. The
model is loaded only when a file needs separating. Exit status (:func:`exit_status`): 0 when
nothing failed, 2 when a file named on the command line was unusable (a usage error), 1 when only
files found in a folder failed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from clipsep import audio_io, outputs
from clipsep.errors import BadInputError, ClipsepError

log = logging.getLogger(__name__)
# a file's failure is one of the command's own error lines: logged as the CLI logs its errors
failure_log = logging.getLogger("clipsep")


@dataclass(frozen=True)
class Job:
    """One input file, the folder its ``<stem>/`` goes in, and whether it was named explicitly.
    ``problem``: why a named input cannot be separated at all (missing, a folder without audio or
    video); such a job fails in :func:`run_jobs` like an unreadable file, and the others go on."""

    path: Path
    out_dir: Path
    named: bool
    problem: str = ""


@dataclass
class Outcome:
    """What happened to one job: ``separated``, ``skipped`` or ``failed`` (with the reason)."""

    job: Job
    status: str
    seconds: float = 0.0
    result: Any = None  # clipsep.inference.FileResult when separated
    error: str = ""
    note: str = ""  # why existing outputs were made again (another request, no record)

    @property
    def reason(self) -> str:
        """Why it failed or was skipped, without the file name that keys it in the table and
        in ``--json`` (the logged message names the file first)."""
        return self.error.removeprefix(f"{self.job.path}: ")


@dataclass
class Found:
    """What the inputs name: the ``jobs``, the files of input folders that are not audio or
    video (``not_media``) and the folders of earlier outputs left out (``earlier``)."""

    jobs: list[Job]
    not_media: list[Path]
    earlier: list[Path]


def find_jobs(inputs: Sequence[str | Path], out: str | Path) -> Found:
    """Jobs for files and folders, and what the folders hold besides (:func:`walk_folder`). A
    file reached twice (named twice, or named and found in a named folder: the same file once
    resolved) is one job, its first, and one INFO line says so. BadInputError for
    two inputs that would write the same ``<stem>/``; a missing input or a folder without audio
    or video is a job with its ``problem``, reported by :func:`run_jobs` (the others go on)."""
    out = Path(out)
    found = Found([], [], [])
    first: dict[Path, tuple[int, str]] = {}  # resolved file -> (its job, how it was given)
    twice = []
    for typed in inputs:  # as typed (``./a.wav``), for the line below; pathlib drops "./"
        for job in _item_jobs(Path(typed), out, found):
            way = str(typed) if job.named else f"{job.path} (in {typed})"
            i, was = first.setdefault(job.path.resolve(), (len(found.jobs), way))
            if i == len(found.jobs):
                found.jobs.append(job)
            else:  # named either way: its failure is a usage error (exit_status)
                found.jobs[i] = replace(found.jobs[i], named=found.jobs[i].named or job.named)
                twice.append(f"{was} and {way}")
    if twice:
        log.info("the same file given twice, separated once: %s", audio_io.listed(twice))
    found.not_media, found.earlier = [
        list(dict.fromkeys(p)) for p in (found.not_media, found.earlier)
    ]
    usable = [job for job in found.jobs if not job.problem]
    targets = [(job.out_dir / job.path.stem).as_posix().lower() for job in usable]
    clashes = sorted({str(j.path) for j, t in zip(usable, targets) if targets.count(t) > 1})
    if clashes:
        raise BadInputError(
            f"inputs {clashes} would write the same output folder (same name stem); rename one"
        )
    return found


def _item_jobs(item: Path, out: Path, found: Found) -> list[Job]:
    """The jobs of one input; a folder's other files and earlier outputs are added to ``found``."""
    if item.is_file():
        return [Job(item, out, True)]
    if not item.is_dir():
        return [Job(item, out, True, f"{item}: no such file or folder")]
    media, others, earlier = walk_folder(item, out)
    if not media:
        return [Job(item, out, True, str(_no_media(item, others, earlier)))]
    found.not_media += others
    found.earlier += earlier
    return [Job(p, out / p.parent.relative_to(item), False) for p in media]


def _no_media(folder: Path, others: Sequence[Path], earlier: Sequence[Path]) -> BadInputError:
    found = [p.relative_to(folder) for p in others]
    only = f"; it holds only {audio_io.listed(found)}" if found else ""
    left_out = f"; {earlier_line(earlier)}" if earlier else ""
    return BadInputError(
        f"{folder}: no audio or video files in this folder "
        f"(looked for {', '.join(sorted(audio_io.MEDIA_SUFFIXES))}){only}{left_out}"
    )


def walk_folder(folder: Path, out: Path) -> audio_io.Walk:
    """(audio and video files, other files, folders of earlier outputs) under ``folder``:
    :func:`clipsep.audio_io.walk_media` (by suffix, :data:`clipsep.audio_io.MEDIA_SUFFIXES`;
    hidden files, the output folder ``out`` and each folder below ``folder`` holding a request
    record :data:`clipsep.outputs.SIDECAR` in neither list: clipsep wrote those)."""
    return audio_io.walk_media(folder, audio_io.MEDIA_SUFFIXES, exclude=out, marker=outputs.SIDECAR)


EARLIER = f"earlier clipsep outputs (it holds {outputs.SIDECAR}; name its files to separate them)"


def earlier_line(folders: Sequence[Path]) -> str:
    """``left out 1 folder of earlier clipsep outputs (holding separation.json): in/separated/a``"""
    n = "1 folder" if len(folders) == 1 else f"{len(folders)} folders"
    holding = f"holding {outputs.SIDECAR}"
    return f"left out {n} of earlier clipsep outputs ({holding}): {audio_io.listed(folders)}"


NOT_MEDIA = "not an audio or video file (by its suffix; name it as an input to try it anyway)"


def not_media_line(paths: Sequence[Path]) -> str:
    """The line after the table: ``ignored 2 files that are not audio or video: a.txt, b.jpg``
    (ignored, not skipped: the table's skipped inputs are media whose outputs exist)."""
    files = "1 file that is" if len(paths) == 1 else f"{len(paths)} files that are"
    return f"ignored {files} not audio or video: {audio_io.listed(paths)}"


def expected_outputs(job: Job, names: Sequence[str], output: outputs.OutputFormat) -> list[Path]:
    """The audio files separating ``job`` with stems ``names`` writes."""
    files = outputs.stem_files(names, output.suffix)
    return [job.out_dir / job.path.stem / name for name in files.values()]


SKIPPED = "outputs exist for this same request (--overwrite redoes)"


def run_jobs(
    load: Callable[[], Any],
    jobs: Sequence[Job],
    names: Sequence[str],
    overwrite: bool,
    separate_kwargs: dict[str, Any],
    model_record: dict[str, Any] | None,
    progress: Callable[[Job], Any] | None = None,
    describe: Callable[[Exception], str] = str,
    check: Callable[[Path], Any] = audio_io.declared_seconds,
) -> list[Outcome]:
    """Separate every job (``load().separate_file(path, out_dir, **separate_kwargs)``), outcomes
    in job order. ``model_record`` is what the loaded separator records
    (:func:`clipsep.outputs.model_record`), for deciding skips before loading. Every job not
    skipped is checked first with ``check(path)`` (default: the file opens; the CLI also refuses
    files too short: :func:`clipsep.inference.check_length`): a file it refuses (ClipsepError)
    fails before the model loads, and ``load`` is called once, only if a job is left.
    ``describe`` turns a failure into its one-line message (the CLI adds its flags)."""
    output = separate_kwargs.get("output", outputs.DEFAULT_FORMAT)
    request = {**separate_kwargs, "output": output}
    decided: dict[int, Outcome] = {}
    todo: list[tuple[int, Job, str]] = []
    for index, job in enumerate(jobs):
        if job.problem:
            decided[index] = _failed(job, BadInputError(job.problem), describe, 0.0)
            continue
        note = ""
        if all(p.is_file() for p in expected_outputs(job, names, output)):
            wanted = outputs.request_record(job.path, model_record, **request)
            note = outputs.why_separate_again(job.out_dir / job.path.stem, wanted) or ""
            if not (note or overwrite):
                decided[index] = Outcome(job, "skipped", error=SKIPPED)
                continue
            note = note if not overwrite else ""
        try:
            check(job.path)
        except ClipsepError as err:
            decided[index] = _failed(job, err, describe, 0.0)
            continue
        todo.append((index, job, note))
    separator = load() if todo else None
    for index, job, note in todo:
        bar = progress(job) if progress else None
        decided[index] = _separate(separator, job, note, bar, describe, separate_kwargs)
    return [decided[index] for index in range(len(jobs))]


def _separate(separator, job: Job, note: str, progress, describe, separate_kwargs) -> Outcome:
    started = time.perf_counter()
    try:
        result = separator.separate_file(
            job.path, job.out_dir, progress=progress, **separate_kwargs
        )
    except ClipsepError as err:
        return _failed(job, err, describe, time.perf_counter() - started)
    if result.clipped:
        log.warning(
            "%s: %d sample(s) beyond full scale were clipped in the integer/MP3 "
            "output (--bits 32f keeps them)",
            job.path,
            result.clipped,
        )
    return Outcome(job, "separated", time.perf_counter() - started, result, note=note)


def _failed(job: Job, err: ClipsepError, describe: Callable[[Exception], str], seconds: float):
    """The failed outcome of ``job``, its one-line message (naming the file) logged."""
    text = describe(err)
    message = text if str(job.path) in text else f"{job.path}: {text}"
    failure_log.error("%s", message)
    return Outcome(job, "failed", seconds, error=message)


def count_files(n: int, done: str) -> str:
    """``0 files were separated``, ``1 file was separated``, ``2 files were separated``."""
    return f"{n} file was {done}" if n == 1 else f"{n} files were {done}"


def exit_status(outcomes: Sequence[Outcome]) -> int:
    failed = [o for o in outcomes if o.status == "failed"]
    if any(o.job.named for o in failed):
        return 2
    return 1 if failed else 0


def table(outcomes: Sequence[Outcome]) -> str:
    """A per-file table (status, seconds, audio length, where) and a failure count."""
    width = max([len(str(o.job.path)) for o in outcomes] + [5])
    lines = [f"{'input':<{width}}  {'status':<9}{'audio s':>8}{'took s':>8}  output / reason"]
    for o in outcomes:
        audio = f"{o.result.duration_s:8.1f}" if o.result else f"{'-':>8}"
        where = str(o.job.out_dir / o.job.path.stem) if o.status == "separated" else o.reason
        where += f" ({o.note})" if o.note else ""
        # hundredths: a short file is separated in a few (0.04 s read "0.0", as if nothing ran)
        lines.append(f"{str(o.job.path):<{width}}  {o.status:<9}{audio}{o.seconds:8.2f}  {where}")
    counts = {s: sum(o.status == s for o in outcomes) for s in ("separated", "skipped", "failed")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def summary(
    outcomes: Sequence[Outcome],
    model: str,
    seconds: float,
    not_media: Sequence[Path] = (),
    earlier: Sequence[Path] = (),
) -> dict[str, Any]:
    """The ``--json`` report: ``separated`` (per input: stems, residual, activity segments,
    duration, time taken), ``skipped`` and ``failed`` (per input: why, not naming the input
    again), ``ignored`` (the files ``not_media`` of input folders, each with NOT_MEDIA),
    ``left_out`` (the folders ``earlier`` of earlier outputs, each with EARLIER), model and total
    seconds."""
    report: dict[str, Any] = {
        "model": model,
        "seconds": round(seconds, 3),
        "separated": {},
        "skipped": {},
        "failed": {},
    }
    for o in outcomes:
        if o.result is None:
            report[o.status][str(o.job.path)] = o.reason
            continue
        r = o.result
        report["separated"][str(o.job.path)] = {
            "stems": {n: str(p) for n, p in r.stems.items()},
            "residual": str(r.residual),
            "activity": {n: [list(s) for s in segs] for n, segs in r.activity.items()},
            "duration_s": round(r.duration_s, 3),
            "sample_rate": r.sample_rate,
            "channels": r.channels,
            "clipped_samples": r.clipped,
            "seconds": round(o.seconds, 3),
            "note": o.note or None,
        }
    report["ignored"] = {str(path): NOT_MEDIA for path in not_media}
    report["left_out"] = {str(path): EARLIER for path in earlier}
    return report
