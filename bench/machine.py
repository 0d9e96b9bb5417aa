"""What the benches must know of the machine before they time anything.

* :func:`arithmetic_skip_reason`: whether a variant's arithmetic runs on the device (fp16 needs
  CUDA); :func:`bf16_skip_reason`: whether bf16 variants are worth running on this CPU. Where
  bf16 would be emulated (no native bf16, or an ISA cap below it) ``precision: auto`` never picks
  it and a run takes minutes (a training step 21x, a separation forward 140x slower than fp32 on
  an AVX2 EPYC).
* :func:`separate_capped_cache`: a torch.compile (Inductor) cache of its own for runs under an ISA
  cap. Inductor's on-disk cache does not tell an ``ONEDNN_MAX_CPU_ISA`` /
  ``ATEN_CPU_CAPABILITY``-capped process from an uncapped one: on an AMD EPYC with AVX-512
  (Zen 5), a capped bench run that reused the kernels an uncapped run had compiled died with a
  bus error (SIGBUS, exit status 135) in a cached kernel; with a fresh cache it ran. Benchmarks
  that compile call it before their first ``torch.compile``.
"""

from __future__ import annotations

import getpass
import os
import re
import tempfile

from clipsep.precision import isa_caps, native_bf16


def separate_capped_cache() -> str | None:
    """Point ``TORCHINDUCTOR_CACHE_DIR`` at a folder named after the ISA caps when any is set
    and the variable is not set already; returns that folder (None: nothing changed)."""
    caps = isa_caps()
    if not caps or os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return None
    tag = re.sub(r"[^A-Za-z0-9_.=-]", "_", "-".join(f"{k}={v}" for k, v in sorted(caps.items())))
    folder = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}-{tag}")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    return folder


def arithmetic_skip_reason(mode: str, device: str, force_bf16: bool) -> str | None:
    """Why a bench variant in arithmetic ``mode`` (fp32 | bf16 | fp16) does not run on
    ``device``, for its one-line message; None where it runs. fp16 autocast is CUDA AMP only; bf16
    runs on CUDA, and on a CPU where :func:`bf16_skip_reason` has no objection."""
    cuda = device.startswith("cuda")
    if mode == "fp16" and not cuda:
        return "fp16 autocast needs CUDA"
    if mode == "bf16" and not cuda:
        return bf16_skip_reason(force_bf16)
    return None


def bf16_skip_reason(force_bf16: bool) -> str | None:
    """Why a CPU bench skips its bf16 variants here (bf16 would be emulated), for its one-line
    message; None where they run: native bf16, or ``force_bf16``."""
    native, why = native_bf16()
    if native or force_bf16:
        return None
    return f"{why} (emulated bf16 is 20-140x slower than fp32; --force-bf16)"
