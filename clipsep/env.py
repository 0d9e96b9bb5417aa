"""Offline and telemetry-off defaults, applied by entry points (CLI, flows, app, bench, scripts,
tests) before heavy imports.

:data:`OFFLINE_DEFAULTS` is the one home of these variables. The shell and make get them from here:
``python3 clipsep/env.py`` prints ``export`` lines for ``scripts/env.sh`` and ``--make`` prints
``KEY=VALUE`` words for ``scripts/env.mk``. This module therefore imports only the standard library
at its top, so any Python 3 runs it as a file, before ``.venv`` exists.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
from typing import Iterator

# HF_HUB_OFFLINE must be set before huggingface_hub (via open_clip) is imported, or a missing
# weight file costs ~46 s of retries. The telemetry switches are the ones each tool documents.
OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "GX_ANALYTICS_ENABLED": "False",
    "DVC_NO_ANALYTICS": "1",
    # Prefect's ephemeral API server (python -m flows without PREFECT_API_URL) must answer within
    # this; the default 20 s is too short on a loaded 2-core machine ("Timed out while attempting
    # to connect to ephemeral Prefect API server").
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def apply_offline_defaults() -> None:
    """Set each variable unless the user already chose a value."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def paused_gc(freeze: bool = False) -> Iterator[None]:
    """Pause Python's cyclic garbage collector while loading (imports, checkpoints, CLIP).

    Importing torch and open_clip (which pulls in torch._dynamo and sympy) leaves about 330,000
    long-lived objects for the collector to track; running, it makes ~900 passes on the way (five
    over everything), and finds next to no garbage (~9,000 small objects, no arrays).
    ``freeze``: move everything alive at the end to the permanent generation (``gc.freeze``), so
    that no later pass visits it either. Only for a process that ends after its one command (the
    CLI program, where that garbage is the few thousand objects above): objects frozen are never
    collected, so in a long-lived caller (tests, the app) garbage alive at that moment would be
    kept for good.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if enabled:
            gc.enable()


def skip_exit_collection() -> None:
    """At interpreter exit, skip the collector's last passes over every object: ``gc.freeze`` as an
    exit handler (handlers run last-registered first, all before the modules are torn down). The
    memory goes back to the OS with the process anyway; the other exit handlers and weakref
    finalizers still run, and the CLI's files are closed by their owners before it returns. With
    torch and open_clip loaded, those passes took longer than separating a 10-s file. For a
    process that ends after one command (the CLI program)."""
    atexit.register(gc.freeze)


def shell_exports() -> str:
    """``export KEY="${KEY-value}"`` lines for bash: a value the user already set wins."""
    return "".join(
        f'export {key}="${{{key}-{value}}}"\n' for key, value in OFFLINE_DEFAULTS.items()
    )


def make_words() -> str:
    """``KEY=VALUE`` words on one line for make's ``$(shell ...)`` (values hold no space)."""
    return " ".join(f"{key}={value}" for key, value in OFFLINE_DEFAULTS.items())


def main(argv: list[str] | None = None) -> int:
    """``python3 clipsep/env.py [--make]``: the defaults for ``scripts/env.sh`` (or env.mk)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--make"]):
        print(f"usage: python3 clipsep/env.py [--make]; got {' '.join(args)}", file=sys.stderr)
        return 2
    sys.stdout.write(make_words() + "\n" if args else shell_exports())
    return 0


def process_rank() -> int:
    """This process's rank in a torchrun group (torchrun's ``RANK``; 0 outside one, or with
    ``WORLD_SIZE`` 1). Rank 0 alone reports and records what the group did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    return int(os.environ.get("RANK", "0"))


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; any other torch device name is returned as
    given once it is usable here. BadInputError for a name torch does not know, or a CUDA
    device on a machine without one (else torch fails later, e.g. "cannot read checkpoint ...
    Attempting to deserialize object on a CUDA device")."""
    import torch

    from clipsep.errors import BadInputError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise BadInputError(
            f"device {name!r} is not a torch device (auto, cpu, cuda, cuda:N)"
        ) from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BadInputError(
                f"device {name!r}: this machine has no CUDA device; use auto or cpu"
            )
        if device.index is not None and device.index >= count:
            raise BadInputError(f"device {name!r}: this machine has {count} CUDA device(s)")
    return name


def headless_pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend: every figure here is written to a
    file (PNG), never shown, so plotting works on a server without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


if __name__ == "__main__":
    raise SystemExit(main())
