"""Progress of a long stage, for whoever listens (e.g. the Prefect flow's progress artifact).

The library reports (:func:`report`); a caller that wants it wraps the call in
:func:`listening`. The listener lives in a context variable, so the library imports nothing of the
listener's kind (no Prefect here) and concurrent callers do not see each other's reports.

A person at a terminal sees a progress bar (:func:`bar`): every bar of clipsep is made there, by
one rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

Listener = Callable[[str, int, int], None]  # (stage, done, total)

_listener: ContextVar[Listener | None] = ContextVar("clipsep_progress_listener", default=None)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Within the block, :func:`report` calls ``listener(stage, done, total)``."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def report(stage: str, done: int, total: int) -> None:
    """Tell the listener, if any, that ``stage`` has done ``done`` of ``total`` units."""
    listener = _listener.get()
    if listener is not None:
        listener(stage, done, total)


def bar(iterable: Any = None, *, hidden: bool = False, **kwargs: Any):
    """A tqdm progress bar (``tqdm.auto``; ``kwargs`` go to it: total, desc, unit, ...) on stderr,
    shown only where stderr is a terminal (tqdm's ``disable=None``: not into a log file, a pipe or
    CI) and not ``hidden`` (e.g. on the other ranks of a distributed run). ``bar.disable`` says
    whether it is shown."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=True if hidden else None, **kwargs)
