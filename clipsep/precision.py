"""Which arithmetic to run in: fp32, bf16 autocast or fp16 AMP, chosen by what is fast *here*.

bf16 autocast pays on CPUs with native bf16 (AMX-BF16, AVX512-BF16: Sapphire Rapids and later;
a small-preset training step 1.6x, 1.9x with channels_last, in an older run under load) and is a
trap everywhere else: oneDNN then emulates it, and on an AVX2-only AMD EPYC a training step of
the small preset ran 21x slower than fp32 (docs/training.md), a separation forward 140x slower.
So ``auto`` resolves in two steps:

1. Capability: no native bf16 in the CPU flags, or an ISA capped below it by
   ``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY``, means fp32, with no measurement.
2. Measurement: where bf16 is native, a short convolution forward + backward probe (U-Net-sized
   layers) in fp32 and under bf16 autocast; bf16 is chosen only when it is at least
   :data:`MIN_SPEEDUP` faster. The verdict is cached per machine (CPU model, flags, torch
   version, ISA caps, threads) in ``$XDG_CACHE_HOME/clipsep/precision.json`` (default
   ``~/.cache``).

On CUDA, ``auto`` is fp16 AMP (the paper's setting). An explicit ``bf16`` on a CPU without native
support still runs, after one warning line that says how much slower it measured.

Imports torch (lazily) and the standard library only.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from clipsep.config import PRECISIONS
from clipsep.errors import BadInputError

log = logging.getLogger(__name__)

MIN_SPEEDUP = 1.1  # bf16 must beat fp32 by 10 % to be worth its rounding
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# the CPU flags timings here depend on: vector width, int8 dot products (VNNI), native bf16
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
# ONEDNN_MAX_CPU_ISA values (oneDNN's cpu_isa names) at or above which bf16 is native
ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10", "ALL")
CACHE_VERSION = 2  # 2: the probe alternates fp32 and bf16 runs (re-measure verdicts of 1)


@dataclass(frozen=True)
class PrecisionChoice:
    """A resolved precision: ``mode`` (fp32 | bf16 | fp16) and the one-line ``reason`` for it.

    ``bf16_speedup`` is fp32 time / bf16 time of the probe where it was measured, else None.
    """

    mode: str
    reason: str
    requested: str
    bf16_speedup: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_model_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def cpu_description() -> str:
    """The CPU's name plus what tells machines of one name apart, for timings to quote:
    ``AMD EPYC (family 26 model 2; avx2 avx512f avx512_vnni avx512_bf16)``. Virtual machines
    often report only a family name ("AMD EPYC" for an AVX2-only Zen 2 and a Zen 5 with native
    bf16 alike); the family and model numbers name the generation, the flags (of
    :data:`SPEED_FLAGS` that this CPU has) the arithmetic this code's speed depends on."""
    family, model = _cpuinfo_field("cpu family"), _cpuinfo_field("model")
    parts = [f"family {family} model {model}"] if family and model else []
    flags = [flag for flag in SPEED_FLAGS if flag in cpu_flags()]
    parts.append(" ".join(flags) or "no AVX2")
    return f"{cpu_model_name()} ({'; '.join(parts)})"


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where it does not exist)."""
    return frozenset((_cpuinfo_field("flags") or "").split())


@functools.lru_cache(maxsize=None)
def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def isa_caps() -> dict[str, str]:
    """The environment variables that cap the instruction set PyTorch and oneDNN may use."""
    return {
        k: os.environ[k]
        for k in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
        if os.environ.get(k)
    }


def onednn_isa_cap() -> str:
    """The instruction set oneDNN is capped at, upper case (``ONEDNN_MAX_CPU_ISA``, or its older
    name ``DNNL_MAX_CPU_ISA``): ``"ALL"`` where neither is set."""
    caps = isa_caps()
    return (caps.get("ONEDNN_MAX_CPU_ISA") or caps.get("DNNL_MAX_CPU_ISA") or "ALL").upper()


def native_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively (and nothing caps it), with the reason."""
    flags = cpu_flags()
    have = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if not have:
        return False, f"no native bf16 on {cpu_model_name()} (no {' / '.join(NATIVE_BF16_FLAGS)})"
    onednn = onednn_isa_cap()
    if not onednn.startswith(ONEDNN_BF16_ISAS):
        return False, f"oneDNN capped at {onednn} (ONEDNN_MAX_CPU_ISA): bf16 would be emulated"
    aten = isa_caps().get("ATEN_CPU_CAPABILITY", "").lower()
    if aten and not aten.startswith("avx512"):
        return False, f"ATen capped at {aten} (ATEN_CPU_CAPABILITY): bf16 would be emulated"
    return True, f"native bf16 on {cpu_model_name()} ({', '.join(have)})"


def onednn_uses_avx512() -> bool:
    """Whether oneDNN, which runs the convolutions, uses AVX-512 here: the CPU flags have
    ``avx512f`` and ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) does not cap it below.
    ``ATEN_CPU_CAPABILITY`` does not matter here: it caps PyTorch's own kernels, not oneDNN's.

    fp32 training runs channels_last only then. A training step of the cpu / small preset, 2
    threads, was faster channels_last by 1.21x / 1.34x on a Zen 4, 1.16x / 1.26x there with
    oneDNN capped at AVX512_CORE (the Skylake-to-Ice-Lake ISA, no native bf16) and 1.19x / 1.49x
    with only ATen capped at AVX2; capped at AVX2 it was 0.98x / 1.01x (0.92x on a real AVX2
    EPYC) (docs/training.md).
    """
    return "avx512f" in cpu_flags() and onednn_isa_cap().startswith(("AVX512", "AVX10", "ALL"))


def fixed_precision(mode: str, reason: str, requested: str) -> PrecisionChoice:
    """A precision the engine fixes whatever was requested (an ONNX Runtime network runs as
    exported); logged as :func:`resolve_precision` logs its choice."""
    choice = PrecisionChoice(mode, reason, requested)
    log.info("precision: %s (%s)", choice.mode, choice.reason)
    return choice


def resolve_precision(requested: str, device: str) -> PrecisionChoice:
    """Turn ``requested`` (auto | fp32 | bf16 | fp16) into the mode to run on ``device``.

    Raises BadInputError for an unknown name or fp16 without CUDA. Logs the choice.
    """
    if requested not in PRECISIONS:
        raise BadInputError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    cuda = device.startswith("cuda")
    if requested == "fp16" and not cuda:
        raise BadInputError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if cuda:
        mode = "fp16" if requested == "auto" else requested
        choice = PrecisionChoice(mode, f"{mode} on {device}", requested)
    elif requested == "auto":
        choice = _auto_cpu()
    elif requested == "bf16":
        choice = _explicit_cpu_bf16()
    else:
        choice = PrecisionChoice("fp32", "fp32 as requested", requested)
    log.info("precision: %s (%s)", choice.mode, choice.reason)
    return choice


def _auto_cpu() -> PrecisionChoice:
    native, why = native_bf16()
    if not native:
        return PrecisionChoice("fp32", why, "auto")
    speedup, cached = bf16_speedup_and_cache()
    mode = "bf16" if speedup >= MIN_SPEEDUP else "fp32"
    when = f"on this machine before (cached in {cached})" if cached else "here, now"
    reason = f"{why}; bf16 measured {speedup:.2f}x fp32 {when}"
    return PrecisionChoice(mode, reason, "auto", speedup)


def _explicit_cpu_bf16() -> PrecisionChoice:
    native, why = native_bf16()
    if native:
        return PrecisionChoice("bf16", f"bf16 as requested ({why})", "bf16")
    speedup = measured_bf16_speedup()
    log.warning(
        "bf16 requested but %s: it is emulated and measured %.0fx slower than fp32 here; "
        "use precision auto or fp32",
        why,
        1.0 / max(speedup, 1e-6),
    )
    return PrecisionChoice("bf16", f"bf16 as requested, emulated ({why})", "bf16", speedup)


def measured_bf16_speedup() -> float:
    """fp32 time / bf16-autocast time of the probe on this machine (cached per machine)."""
    return bf16_speedup_and_cache()[0]


def bf16_speedup_and_cache() -> tuple[float, Path | None]:
    """(:func:`measured_bf16_speedup`, the cache file it was read from, or None when the probe
    ran just now)."""
    key = _machine_key()
    cache = _cache_path()
    entries = _read_cache(cache)
    if key in entries:
        return float(entries[key]), cache
    speedup = _probe_speedup()
    entries[key] = round(speedup, 4)
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.replace(tmp, cache)
    return speedup, None


def _machine_key() -> str:
    import torch

    parts = [
        CACHE_VERSION,
        cpu_model_name(),
        sorted(cpu_flags()),
        torch.__version__,
        isa_caps(),
        torch.get_num_threads(),
    ]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "clipsep" / "precision.json"


def _read_cache(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _probe_speedup(repeats: int = 5) -> float:
    """Best-of-``repeats`` seconds of a U-Net-like conv block, forward + backward, fp32 / bf16.

    Sized to take ~0.1 s in fp32 on two cores; where bf16 is emulated it is never run (the
    capability check answers first), except for the warning of an explicit bf16 request.
    """
    import torch

    with torch.random.fork_rng(devices=[]):  # layer init must not move the caller's seed
        torch.manual_seed(0)
        return _time_probe(repeats)


def _time_probe(repeats: int) -> float:
    import torch

    block = torch.nn.Sequential(
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.BatchNorm2d(32),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1),
    )
    x = torch.rand(4, 16, 64, 64)

    def seconds(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = block(x)
        out.float().square().mean().backward()
        return time.perf_counter() - start

    seconds(False), seconds(True)  # warm-up: oneDNN builds its kernels on first use
    # Alternate the two, so that load from other processes (the verdict is cached for good)
    # falls on both alike. Zen 4, two bursty busy loops beside it, 12 probes: timed one
    # precision after the other 1.19-2.69x, alternated 1.26-2.34x (quiet: 1.3-1.75x).
    fp32 = bf16 = float("inf")
    for _ in range(repeats):
        fp32, bf16 = min(fp32, seconds(False)), min(bf16, seconds(True))
    return fp32 / bf16


def network_pass_mode(mode: str, device: str, frames: int, depth: int) -> str:
    """The precision of one U-Net pass over ``frames`` STFT frames at ``depth`` levels: ``mode``,
    except fp32 for a bf16 pass on a CPU whose deepest feature map is one frame wide
    (``frames < 2 ** (depth + 1)``). There oneDNN's AMX bf16 convolution (torch 2.11) reads past
    its input: a stride-2 4x4 convolution whose output is one column wide (16 -> 32 channels,
    input 32 x 2) gave other values, and NaN, from call to call on the same input (1921 of 2000
    calls with NaN-filled memory around it; always the same in fp32 and with AMX off). Only
    short passes reach it (the tiny preset below 32 frames, the others below 256): fp32 costs
    little there."""
    if mode == "bf16" and str(device).startswith("cpu") and frames < 2 ** (depth + 1):
        return "fp32"
    return mode


def autocast(mode: str, device: str) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved mode (a no-op for fp32)."""
    if mode == "fp32":
        return contextlib.nullcontext()
    import torch

    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=dtype)
