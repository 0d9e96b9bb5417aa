"""Skip a stage whose inputs are unchanged: its fingerprint, and the record left after success.

A stage's :class:`Fingerprint` covers everything it reads: the params sections it declares, the
library code it runs and its input files (content digests), and its input folders (cheap
identity: relative path, size and mtime of each file in them). After the stage succeeds, a record
``.stage-<name>.json`` is written next to its outputs, holding the fingerprint, the identity of
the outputs and the stage's summary. A later run may skip the stage when both the fingerprint and
the outputs' identity match the record; a changed param, input or code file, or an output touched
or deleted since, runs it again. Stages downstream follow by themselves: a stage that runs
rewrites its outputs, which are the inputs of the stages after it. A stage that found its work
done already (a training already complete) keeps the record of the run that did the work
(:func:`keep_record`): its seconds and summary stay, only the fingerprint and outputs are renewed.

Hidden names (starting with ``.``: records, atomic-write temporaries, ``.DS_Store``) and bytecode
never count. This module imports no torch and touches nothing until called.

Before any of that, :func:`check_ready` names the file a stage cannot start without and lacks: the
one check of the stage (:func:`clipsep.stages.run_stage`) and of its Python API
(:func:`clipsep.tracking.register`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from clipsep.config import BEST_CHECKPOINT
from clipsep.errors import BadInputError
from clipsep.fileio import file_digest, write_json

if TYPE_CHECKING:
    from clipsep.config import Params

RECORD_FORMAT = 1
ABSENT = "absent"


def required_files(stage: str, p: Params) -> list[tuple[Path, str]]:
    """The files ``stage`` cannot start without, each with the stage that makes it."""
    best, metrics = p.path("checkpoints") / BEST_CHECKPOINT, p.path("evaluation") / "metrics.json"
    return {
        "evaluate": [(best, "train")],
        "register": [(best, "train"), (metrics, "evaluate")],
    }.get(stage, [])


def check_ready(stage: str, p: Params) -> list[Path]:
    """The files ``stage`` cannot start without (:func:`required_files`), all present; else
    BadInputError (one line) naming the first one missing, e.g. ``checkpoint /x/best.pt not
    found: run `clipsep train` first (or set paths.checkpoints)``: checked before the stage
    opens an MLflow run or does any other work."""
    needed = required_files(stage, p)
    for path, maker in needed:
        if not path.is_file():
            what = "checkpoint" if path.suffix == ".pt" else "evaluation"
            where = "paths.checkpoints" if maker == "train" else "paths.evaluation"
            raise BadInputError(
                f"{what} {path} not found: run `clipsep {maker}` first (or set {where})"
            )
    return [path for path, _ in needed]


def _counts(relative: Path) -> bool:
    """Whether a file below a tree counts for its identity (not hidden, not bytecode)."""
    return (
        not any(part.startswith(".") or part == "__pycache__" for part in relative.parts)
        and relative.suffix != ".pyc"
    )


def tree_identity(path: str | Path, content: bool = False) -> str:
    """sha256 over the files of ``path`` (a file or a folder, recursively): for each, its relative
    path and size + mtime (ns), or with ``content`` the sha256 of its bytes (for small code
    files). ``"absent"`` when ``path`` does not exist."""
    path = Path(path)
    if not path.exists():
        return ABSENT
    if path.is_file():
        files = [(".", path)]
    else:
        files = sorted(
            (f.relative_to(path).as_posix(), f)
            for f in path.rglob("*")
            if f.is_file() and _counts(f.relative_to(path))
        )
    digest = hashlib.sha256()
    for name, file in files:
        stat = file.stat()
        facts = file_digest(file) if content else f"{stat.st_size}:{stat.st_mtime_ns}"
        digest.update(f"{name}\0{facts}\n".encode())
    return digest.hexdigest()


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """Digests of what a stage reads, by kind: ``params``, ``code``, ``inputs``."""

    parts: dict[str, str]

    @property
    def digest(self) -> str:
        return _digest(self.parts)

    @property
    def short(self) -> str:
        """The first 12 hex digits, for log lines."""
        return self.digest[:12]


def fingerprint(
    params: Mapping[str, Any], code: Mapping[str, Path], inputs: Mapping[str, Path]
) -> Fingerprint:
    """The fingerprint of a stage run.

    ``params``: the params sections the stage reads (plain data); ``code``: name -> library file or
    folder (content digests); ``inputs``: name -> data file (content digest: a manifest or a
    metrics file rewritten with the same bytes is unchanged) or folder (size + mtime of its files);
    a missing one counts as ``"absent"``.
    """
    data = {
        name: tree_identity(path, content=Path(path).is_file()) for name, path in inputs.items()
    }
    return Fingerprint(
        {
            "params": _digest(dict(params)),
            "code": _digest(
                {name: tree_identity(path, content=True) for name, path in code.items()}
            ),
            "inputs": _digest(data),
        }
    )


def record_path(folder: str | Path, stage: str) -> Path:
    return Path(folder) / f".stage-{stage}.json"


def write_record(
    folder: str | Path,
    stage: str,
    fp: Fingerprint,
    outputs: Path | None,
    summary: dict[str, Any],
    seconds: float,
) -> Path:
    """Record a successful run of ``stage`` (call it after the stage wrote its ``outputs``)."""
    record = {
        "format": RECORD_FORMAT,
        "stage": stage,
        **_identity(fp, outputs),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 3),
        "summary": summary,
    }
    return write_json(record_path(folder, stage), record, default=str)


def keep_record(
    folder: str | Path,
    stage: str,
    fp: Fingerprint,
    outputs: Path | None,
    summary: dict[str, Any],
    seconds: float,
) -> Path:
    """Record a run of ``stage`` that found its work done already (``summary``: the stored one,
    e.g. a training already complete). The record of the run that did the work keeps its
    ``seconds``, ``finished`` and ``summary`` (its MLflow run id with it) and takes only this
    run's fingerprint and outputs identity, which :func:`compare` reads; the file is left as it
    is when those match already. Without such a record (none, or one whose summary differs in a
    value of ``summary``: other results), written as :func:`write_record` does."""
    record = read_record(folder, stage)
    if record is None or not _same_results(record.get("summary"), summary):
        return write_record(folder, stage, fp, outputs, summary, seconds)
    now = _identity(fp, outputs)
    path = record_path(folder, stage)
    if any(record.get(key) != value for key, value in now.items()):
        write_json(path, {**record, **now}, default=str)
    return path


def _identity(fp: Fingerprint, outputs: Path | None) -> dict[str, Any]:
    """What a record holds of a run's inputs and outputs, the part :func:`compare` reads."""
    return {
        "fingerprint": fp.digest,
        "parts": fp.parts,
        "outputs": tree_identity(outputs) if outputs is not None else None,
    }


def _same_results(recorded: Any, summary: dict[str, Any]) -> bool:
    """Whether ``recorded`` (a record's summary) holds every value of ``summary`` (compared as
    JSON text: NaN equals NaN) but its ``already_complete`` flag."""
    if not isinstance(recorded, dict):
        return False

    def text(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    return all(
        key in recorded and text(recorded[key]) == text(value)
        for key, value in summary.items()
        if key != "already_complete"
    )


def read_record(folder: str | Path, stage: str) -> dict[str, Any] | None:
    """The record of the last successful run, or None (none, unreadable, another format)."""
    try:
        record = json.loads(record_path(folder, stage).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and record.get("format") == RECORD_FORMAT
    return record if ok and record.get("stage") == stage else None


def compare(
    folder: str | Path, stage: str, fp: Fingerprint, outputs: Path | None
) -> tuple[dict[str, Any] | None, str]:
    """(the recorded summary, "unchanged") when ``stage`` may be skipped, else (None, why not)."""
    record = read_record(folder, stage)
    if record is None:
        return None, "no record of a successful run"
    changed = [
        kind for kind, value in fp.parts.items() if record.get("parts", {}).get(kind) != value
    ]
    if changed:
        return None, " and ".join(changed) + " changed since the last run"
    if outputs is not None and tree_identity(outputs) != record.get("outputs"):
        return None, f"outputs in {outputs} changed or missing since the last run"
    return record.get("summary") or {}, "unchanged"
