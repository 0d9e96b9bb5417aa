"""Progress of a long stage, for whoever listens (e.g. the Prefect flow's progress artifact).

The library reports (:func:`report`); a caller that wants it wraps the call in
:func:`listening`. The listener lives in a context variable, so the library imports nothing of the
listener's kind (no Prefect here) and concurrent callers do not see each other's reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

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
