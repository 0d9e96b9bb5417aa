"""One timed ``clipsep separate`` in this fresh process, for bench/cli.py: runs clipsep.cli.main
with its arguments and prints one JSON line of where the wall time went (seconds).

Components: ``startup`` (interpreter + ``import clipsep.cli``), ``resolve`` (model reference ->
files), ``load`` (network checkpoint, its imports included), ``query`` (query embedding: the
text-embedding cache, or open_clip's import + the CLIP build + encoding on a miss; the CLI
embeds its text queries while loading, and reads them from that cache per file), ``separate``
(resampling + network + overlap-add), ``write`` (stems and residual to disk, activity meter) and
``other`` (the rest: arguments, params, input checks, the activity CSVs, torch's import when
``clipsep.inference`` is first imported). ``total`` ends when main returns: the interpreter's exit
after it is in bench/cli.py's wall times only. Timers wrap the library's own functions; nothing else
changes. Run it with ``python -X importtime`` to get per-package import times on stderr.

    python bench/cli_child.py separate IN --query cello --model M --out OUT
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict

STARTED = time.perf_counter()
SPENT: dict[str, float] = defaultdict(float)


def timed(owner, name: str, component: str) -> None:
    """Wrap ``owner.name`` so its wall time is added to ``component`` (outermost call only)."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            SPENT[component] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def main() -> int:
    from clipsep.env import apply_offline_defaults, paused_gc

    apply_offline_defaults()  # before open_clip, mlflow, gradio are imported
    import clipsep.cli

    SPENT["startup"] = time.perf_counter() - STARTED
    started = time.perf_counter()
    with paused_gc(freeze=True):  # as clipsep.cli.separate_files imports it (the program)
        import clipsep.inference as inference  # torch: counted as "imports" below
        from clipsep import outputs, registry_reader

    SPENT["import clipsep.inference (torch)"] = time.perf_counter() - started
    timed(registry_reader, "resolve_model", "resolve")
    timed(inference, "load_network", "load")
    timed(inference.Separator, "embed_query", "query")
    timed(outputs.StemWriter, "write", "write")
    timed(inference.ActivityMeter, "update", "write")
    timed(inference.Separator, "stream", "separate+write")
    status = clipsep.cli.main()  # no argv: as the program (sys.argv[1:]), see its docstring
    total = time.perf_counter() - STARTED
    SPENT["separate"] = SPENT.pop("separate+write") - SPENT["write"]
    SPENT["other"] = total - sum(SPENT.values())
    print(json.dumps({"total": total, "status": status, **SPENT}), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
