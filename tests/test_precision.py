"""Precision selection: ``auto`` never picks an arithmetic slower than fp32 on this machine."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

from clipsep import precision
from clipsep.errors import BadInputError

AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


@pytest.fixture
def amx_cpu(monkeypatch, tmp_path):
    """Pretend to be a CPU with native bf16, with an empty precision cache of our own."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    monkeypatch.setattr(precision, "cpu_model_name", lambda: "Test Xeon")
    for key in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))


def test_auto_resolves_to_fp32_on_a_forced_avx2_cpu(tmp_path):
    """The issue's check: with AVX2 forced before Python starts, auto is fp32, whatever the CPU."""
    code = (
        "from clipsep.precision import resolve_precision, onednn_uses_avx512; import json; "
        "print(json.dumps({**resolve_precision('auto', 'cpu').to_dict(), "
        "'avx512': onednn_uses_avx512()}))"
    )
    env = {**os.environ, **AVX2_ONLY, "XDG_CACHE_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    choice = json.loads(out.stdout.strip().splitlines()[-1])
    assert choice["mode"] == "fp32"
    assert choice["bf16_speedup"] is None  # decided by capability: nothing was measured
    assert choice["avx512"] is False  # so fp32 training stays NCHW (channels_last: null)
    assert not (tmp_path / "clipsep" / "precision.json").exists()


def test_isa_caps_disable_native_bf16(amx_cpu, monkeypatch):
    assert precision.native_bf16()[0]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    native, why = precision.native_bf16()
    assert not native and "ONEDNN_MAX_CPU_ISA" in why
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    native, why = precision.native_bf16()
    assert not native and "ATEN_CPU_CAPABILITY" in why


def test_no_bf16_flags_means_fp32_without_measuring(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(precision, "_probe_speedup", lambda: pytest.fail("must not measure"))
    choice = precision.resolve_precision("auto", "cpu")
    assert (choice.mode, choice.requested) == ("fp32", "auto")
    assert "no native bf16" in choice.reason


@pytest.mark.parametrize("speedup, mode", [(0.5, "fp32"), (1.05, "fp32"), (1.8, "bf16")])
def test_auto_takes_bf16_only_where_measured_faster(amx_cpu, monkeypatch, speedup, mode):
    monkeypatch.setattr(precision, "_probe_speedup", lambda: speedup)
    choice = precision.resolve_precision("auto", "cpu")
    assert choice.mode == mode
    assert choice.bf16_speedup == pytest.approx(speedup)


def test_the_measurement_is_cached_per_machine(amx_cpu, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(precision, "_probe_speedup", lambda: calls.append(1) or 1.7)
    assert precision.measured_bf16_speedup() == pytest.approx(1.7)
    assert precision.measured_bf16_speedup() == pytest.approx(1.7)
    assert len(calls) == 1
    cached = json.loads((tmp_path / "clipsep" / "precision.json").read_text())
    assert list(cached.values()) == [1.7]
    monkeypatch.setattr(precision, "cpu_model_name", lambda: "Another CPU")
    precision.measured_bf16_speedup()
    assert len(calls) == 2  # another machine is measured afresh


def test_the_reason_says_whether_the_probe_ran_now_or_its_verdict_was_cached(
    amx_cpu, monkeypatch, tmp_path
):
    """New-user trial: a fresh clone logged "bf16 measured 1.64x fp32 here" from a verdict an
    earlier run had cached; the reason now says which it was, and where the cache is."""
    monkeypatch.setattr(precision, "_probe_speedup", lambda: 1.7)
    first = precision.resolve_precision("auto", "cpu").reason
    again = precision.resolve_precision("auto", "cpu").reason
    assert first.endswith("; bf16 measured 1.70x fp32 here, now")
    cache = tmp_path / "clipsep" / "precision.json"
    assert again.endswith(f"; bf16 measured 1.70x fp32 on this machine before (cached in {cache})")


def test_explicit_bf16_without_native_support_runs_and_says_how_much_slower(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(precision, "measured_bf16_speedup", lambda: 0.05)
    with caplog.at_level(logging.WARNING, logger="clipsep.precision"):
        choice = precision.resolve_precision("bf16", "cpu")
    assert choice.mode == "bf16"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "20x slower than fp32" in warnings[0]


def test_cuda_and_bad_names():
    assert precision.resolve_precision("auto", "cuda:0").mode == "fp16"
    assert precision.resolve_precision("bf16", "cuda").mode == "bf16"
    with pytest.raises(BadInputError, match="fp16 needs a CUDA device"):
        precision.resolve_precision("fp16", "cpu")
    with pytest.raises(BadInputError, match="precision must be one of"):
        precision.resolve_precision("fp8", "cpu")


def test_a_busy_spell_during_the_probe_does_not_skew_the_verdict(monkeypatch):
    """Load from another process for the first half of the probe slows whatever runs then.

    A fake clock charges fp32 2 s and bf16 1 s per run, 3x as much for the first 6 runs (the
    busy spell). Timed one precision after the other, fp32 would take the whole spell and bf16
    look 6x faster; alternated, both get quiet runs and the probe says 2x.
    """
    modes: list[bool] = []  # autocast's `enabled` of each run, in order
    clock = {"now": 0.0, "reads": 0}

    def fake_autocast(device, dtype, enabled):
        modes.append(enabled)
        return contextlib.nullcontext()

    def fake_clock():  # read twice per run: at its start, then at its end
        clock["reads"] += 1
        if clock["reads"] % 2 == 0:
            run_seconds = 1.0 if modes[-1] else 2.0
            clock["now"] += run_seconds * (3.0 if len(modes) <= 6 else 1.0)
        return clock["now"]

    monkeypatch.setattr(torch, "autocast", fake_autocast)
    monkeypatch.setattr(precision.time, "perf_counter", fake_clock)
    assert precision._probe_speedup(repeats=5) == pytest.approx(2.0)
    assert modes[2:6] == [False, True, False, True]


def test_the_probe_measures_a_positive_ratio_and_leaves_the_seed_alone():
    """The real probe, fp32 against bf16, on this machine (slow where bf16 is emulated: 1 rep).

    It runs inside seeded training set-up, so it must not consume the global RNG.
    """
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    assert precision._probe_speedup(repeats=1) > 0
    assert torch.equal(torch.rand(4), expected)


def test_the_cpu_description_tells_apart_machines_that_share_a_name(monkeypatch):
    """Both machines this project ran on call themselves "AMD EPYC": an AVX2-only one, where
    bf16 is emulated, and a Zen 5 with native bf16. Timings must say which."""
    fields = {"model name": "AMD EPYC", "cpu family": "26", "model": "2"}
    monkeypatch.setattr(precision, "_cpuinfo_field", fields.get)
    monkeypatch.setattr(
        precision, "cpu_flags", lambda: frozenset({"sse4_2", "avx2", "avx512f", "avx512_bf16"})
    )
    assert precision.cpu_description() == "AMD EPYC (family 26 model 2; avx2 avx512f avx512_bf16)"
    fields.update({"cpu family": "23", "model": "49"})
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"sse4_2", "avx2"}))
    assert precision.cpu_description() == "AMD EPYC (family 23 model 49; avx2)"
    fields.clear()  # no /proc/cpuinfo (macOS): the platform's name, no flags
    monkeypatch.setattr(precision.platform, "processor", lambda: "arm")
    monkeypatch.setattr(precision, "cpu_flags", frozenset)
    assert precision.cpu_description() == "arm (no AVX2)"


def test_an_onednn_cap_below_avx512_turns_avx512_off(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert precision.onednn_uses_avx512() is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # PyTorch's own kernels: not oneDNN's
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert precision.onednn_uses_avx512() is True
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert precision.onednn_uses_avx512() is False


def test_a_bf16_pass_one_frame_wide_at_the_bottom_runs_fp32_on_a_cpu():
    """oneDNN's AMX bf16 stride-2 convolution with a one-column output reads past its input
    (tests/test_inference.py shows it): training steps and separation passes that short run
    fp32 on a CPU; CUDA and the other modes are left as they are."""
    depth = 7  # 2 ** (depth + 1) = 256 frames
    assert precision.network_pass_mode("bf16", "cpu", 255, depth) == "fp32"
    assert precision.network_pass_mode("bf16", "cpu", 256, depth) == "bf16"
    assert precision.network_pass_mode("bf16", "cuda:0", 16, depth) == "bf16"
    assert precision.network_pass_mode("fp16", "cuda", 16, depth) == "fp16"
    assert precision.network_pass_mode("fp32", "cpu", 16, depth) == "fp32"
