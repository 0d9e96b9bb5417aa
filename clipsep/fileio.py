"""Atomic file writes: a reader (or a later run) never sees half a file under its final name.

Every stage writes its outputs through these, so a killed process leaves either the old file or
the new one, plus at most a hidden ``.<name>.tmp-<pid><suffix>`` that nothing reads.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from clipsep.errors import BadInputError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; it replaces ``path`` on success, is removed on error.

    The temporary name keeps the suffix, so writers that infer the format from it (matplotlib,
    PIL, soundfile) work unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, payload: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def write_json(path: str | Path, data: Any, **dump_options: Any) -> Path:
    """JSON with 2-space indent and a final newline (``dump_options`` go to ``json.dumps``)."""
    return write_text(path, json.dumps(data, indent=2, **dump_options) + "\n")


def write_csv(
    path: str | Path,
    columns: Sequence[str],
    rows: Iterable[dict[str, Any]],
    extrasaction: str = "raise",
) -> Path:
    """A header row of ``columns``, then one line per dict, lines ending in ``\n`` (the csv
    module's default ``\r\n`` trips line-based tools such as ``cut`` and ``awk``)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=list(columns), extrasaction=extrasaction, lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def torch_save(obj: Any, path: str | Path) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def shown_path(path: str | Path) -> str:
    """``path`` as a message shows it: relative to the working folder when it lies under it,
    else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in blocks (constant memory for any size)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def check_writable_folder(folder: str | Path) -> Path:
    """``folder`` as a Path once it is known that files can be made in it: it (and its parents)
    are created as needed and a hidden folder is made and removed in it; the folders this made
    are removed again. BadInputError naming the folder and the system's reason otherwise (a
    file, a read-only or virtual file system, no permission)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BadInputError(f"cannot use {folder} as the output folder: it is not a folder")
    made = first_missing(folder)
    try:
        step = "create the output folder"
        folder.mkdir(parents=True, exist_ok=True)
        step = "create anything in the output folder"  # it exists: what fails is writing in it
        os.rmdir(tempfile.mkdtemp(prefix=".clipsep-check-", dir=folder))
    except OSError as err:
        raise BadInputError(f"cannot {step} {folder} ({err.strerror or err})") from err
    finally:
        remove_empty_folders(folder, made)
    return folder


def first_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet (None if it exists)."""
    if folder.exists():
        return None
    while not folder.parent.exists():
        folder = folder.parent
    return folder


def remove_empty_folders(folder: Path, top: Path | None) -> None:
    """Remove ``folder`` and its parents up to ``top`` while they are empty."""
    if top is None:
        return
    folder, top = folder.resolve(), top.resolve()
    while folder.is_relative_to(top):
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone)
            return
        folder = folder.parent
