"""Benchmark separation: the network's forward per engine, and `clipsep separate`'s RTF and memory.

Part ``forward`` (one 4.1-s segment: warped magnitude [1, 1, 256, 256] + one query [1, 1, 512]):
the eager NCHW forward, channels_last, bf16 autocast (alone and with channels_last; skipped where
the CPU has no native bf16, as ``precision: auto`` would never pick it: ``--force-bf16``),
torch.compile (its compile time is reported) and ONNX Runtime on the exported network (``clipsep
export``; its export time is reported) in fp32 and quantised to int8 (``onnxruntime-int8``: static
QDQ, :mod:`clipsep.model.quantize`, calibrated on random inputs here, as speed does not depend on
them; its quantisation time is reported), timed interleaved (round-robin, so load on the machine
hits them alike), median per variant, each ratio against the eager forward of the same preset in
the same run. Prints the CPU model, its ISA and what ``precision: auto`` resolves to. The ONNX
outputs are checked against eager (max |diff|: ~1e-6 for fp32; int8's is its rounding on a
random-weight network, not an accuracy figure -- the int8 SDR on the world's test mixtures in
docs/benchmarks.md is).

Part ``rtf``: for each model preset, engine and length (default 10 s, 60 s, 10 min of 44.1 kHz
stereo), a fresh subprocess loads a random-init checkpoint (speed does not depend on the weights)
and separates the file through the same file-based path as the CLI
(``Separator.separate_file``), once per ``--precisions`` entry (default ``auto,fp32``: what
``separate.precision: auto`` resolves to here, against fp32; one row where they agree). It
reports wall time of the separation, RTF (= wall / audio length, < 1 is faster than real time)
and the process's peak RSS. Memory must not grow with length: the
10-min peak RSS should stay within 1.3x of the 10-s one (the ratio is printed; exit status 1 if
not).

    .venv/bin/python bench/separate.py --part forward --presets small,cpu-conv-upsample
    .venv/bin/python bench/separate.py --part rtf --durations 10,600 --engines torch,onnx
    .venv/bin/python bench/separate.py                      # both parts, defaults below

Several queries share one U-Net pass per segment: part ``rtf`` ends, per preset, with 3 queries
against 1 on a ``--query-seconds`` file (wall-time ratio; exit status 1 above MAX_QUERY_RATIO).

The query encoder is the bundled clipsep-tiny CLIP for every preset (the query is encoded once per
file; its cost does not scale with length).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RATE = 44100
MAX_RSS_RATIO = 1.3
MAX_QUERY_RATIO = 1.2  # 3 queries may cost at most this much more than 1
THREE_QUERIES = ["violin", "cello", "acoustic guitar"]
QUERY_ROUNDS = 4  # runs of each in the 3-vs-1 comparison


def write_test_file(path: Path, seconds: int) -> None:
    """Stereo sines + noise, written block by block (16-bit PCM) so the parent stays small."""
    import soundfile as sf

    rng = np.random.default_rng(seconds)
    with sf.SoundFile(str(path), "w", samplerate=RATE, channels=2, subtype="PCM_16") as out:
        for start in range(0, seconds * RATE, RATE * 10):
            t = (start + np.arange(min(RATE * 10, seconds * RATE - start))) / RATE
            left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
            right = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(t.size)
            out.write(np.stack([left, right], axis=1))


def make_checkpoint(preset: str, folder: Path) -> Path:
    """A random-init checkpoint of ``preset`` with the default audio front end."""
    import torch

    from clipsep.config import load_params
    from clipsep.model.factory import build_model, save_checkpoint
    from clipsep.model.query import QueryEncoder

    params = load_params(REPO / "params.yaml", profile="tiny")
    default = load_params(REPO / "params.yaml")
    encoder = QueryEncoder.from_config(params.clip, None, "cpu")
    clip_path = folder / "clip.pt"
    torch.save({"state_dict": encoder.model.state_dict()}, clip_path)
    model_cfg = type(default.model)(preset=preset, nit=default.model.nit)
    network = build_model(model_cfg, encoder.embed_dim)
    reference = {**encoder.reference(), "pretrained": str(clip_path)}
    return save_checkpoint(
        folder / f"{preset}.pt",
        network,
        model_cfg=model_cfg,
        audio_cfg=default.audio,
        query=reference,
    )


FORWARD_VARIANTS = (
    "eager",
    "channels_last",
    "bf16",
    "bf16+channels_last",
    "fp16",
    "fp16+channels_last",
    "compile",
    "onnxruntime",
    "onnxruntime-int8",
)
CPU_ONLY = ("onnxruntime", "onnxruntime-int8")  # ONNX Runtime runs here on the CPU alone
CALIBRATION_INPUTS = 8  # int8 here: random calibration inputs (speed does not depend on them)


def bench_inputs(query_dim: int, seed: int = 0, batch: int = 1, device: str = "cpu"):
    """(warped magnitude [B, 1, 256, 256], one query each [B, 1, D]) of B 4.1-s segments."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    mag = torch.rand(batch, 1, 256, 256, generator=generator) + 0.01
    queries = torch.randn(batch, 1, query_dim, generator=generator)
    return mag.to(device), queries.to(device)


def onnx_network(checkpoint: Path, work: Path, int8: bool):
    """The ONNX Runtime network of ``checkpoint`` (exported once per run), quantised to int8
    (static QDQ, :mod:`clipsep.model.quantize`) on random inputs when ``int8``."""
    from clipsep.model.export import export_onnx, load_onnx_network, read_export
    from clipsep.model.quantize import quantize_export

    folder = work / f"onnx-{checkpoint.stem}"
    if not folder.exists():
        export_onnx(checkpoint, folder)
    if int8:
        dim = read_export(folder).net_cfg.query_dim
        feeds = [
            {name: t.numpy() for name, t in zip(("mix_mag", "queries"), bench_inputs(dim, seed))}
            for seed in range(1, CALIBRATION_INPUTS + 1)
        ]
        folder = quantize_export(folder, work / f"onnx-int8-{checkpoint.stem}", feeds)
    return load_onnx_network(folder)[0]


def forward_variants(checkpoint: Path, work: Path, names: list[str], device: str) -> dict:
    """{variant: (callable(mag, queries) -> mask logits, set-up seconds)} for one checkpoint."""
    import torch

    from clipsep.model.factory import load_checkpoint

    made = {}
    for name in names:
        network, _ = load_checkpoint(checkpoint, device)
        start = time.perf_counter()
        if name.endswith("channels_last"):
            network = network.to(memory_format=torch.channels_last)
        elif name == "compile":
            network = torch.compile(network)
        elif name in ("onnxruntime", "onnxruntime-int8"):
            network = onnx_network(checkpoint, work, int8=name.endswith("int8"))
        made[name] = [network, time.perf_counter() - start]
    return made


def variant_mode(name: str) -> str:
    """The arithmetic of a forward variant: ``bf16`` / ``fp16`` for those autocast variants (alone
    or ``+channels_last``), ``fp32`` for every other one (int8 is ONNX Runtime's, inside)."""
    return name.split("+")[0] if name.startswith(("bf16", "fp16")) else "fp32"


def forward_once(network, name: str, mag, queries):
    """One forward's mask logits (float32); on CUDA, after the device has finished it."""
    import torch

    from clipsep.precision import autocast

    if name.endswith("channels_last"):
        mag = mag.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(variant_mode(name), str(mag.device)):
        out = network(mag, queries, with_noise=False).mask_logits.float()
    if mag.is_cuda:
        torch.cuda.synchronize(mag.device)
    return out


def usable_variants(names: list[str], force_bf16: bool, device: str = "cpu") -> list[str]:
    """``names`` less what cannot run on ``device``: the bf16 ones where a CPU would emulate
    bf16 (unless ``force_bf16``), fp16 off CUDA, ONNX Runtime on CUDA."""
    from machine import arithmetic_skip_reason

    reasons = {}
    for name in names:
        why = arithmetic_skip_reason(variant_mode(name), device, force_bf16)
        if why:
            reasons[name] = why
        elif name in CPU_ONLY and device.startswith("cuda"):
            reasons[name] = "ONNX Runtime runs on the CPU here"
    for name, reason in reasons.items():
        print(f"skipping {name}: {reason}")
    return [n for n in names if n not in reasons]


def bench_forward(
    preset: str,
    checkpoint: Path,
    work: Path,
    names: list[str],
    rounds: int,
    device: str = "cpu",
    batch: int = 1,
) -> list[dict]:
    """Median forward seconds per variant (interleaved rounds) and each one's set-up time (the
    first call included: that is when torch.compile compiles)."""

    made = forward_variants(checkpoint, work, names, device)
    mag, queries = bench_inputs(made["eager"][0].cfg.query_dim, batch=batch, device=device)
    reference = forward_once(made["eager"][0], "eager", mag, queries)
    diffs = {}
    for name, entry in made.items():
        start = time.perf_counter()
        for _ in range(2):  # warm-up (compile happens in the first)
            out = forward_once(entry[0], name, mag, queries)
        entry[1] += (
            (time.perf_counter() - start) / 2 if name != "compile" else time.perf_counter() - start
        )
        diffs[name] = float((out - reference).abs().max())
    times = {name: [] for name in made}
    for _ in range(rounds):
        for name, (network, _) in made.items():
            start = time.perf_counter()
            forward_once(network, name, mag, queries)
            times[name].append(time.perf_counter() - start)
    eager = statistics.median(times["eager"])
    return [
        {
            "preset": preset,
            "variant": name,
            "forward_s": statistics.median(times[name]),
            "speedup": eager / statistics.median(times[name]),
            "setup_s": made[name][1],
            "max_abs_diff": diffs[name],
        }
        for name in made
    ]


def machine_line(threads: int, device: str = "cpu") -> str:
    import torch

    from clipsep.precision import cpu_description, resolve_precision

    auto = resolve_precision("auto", device)
    gpu = f"{torch.cuda.get_device_name(device)}; " if device.startswith("cuda") else ""
    return (
        f"{gpu}{cpu_description()}; ISA {torch.backends.cpu.get_cpu_capability()}; torch "
        f"{torch.__version__}; {threads} threads; precision auto -> {auto.mode} "
        f"({auto.reason})"
    )


def forward_part(presets: list[str], work: Path, args) -> list[dict]:
    names = ["eager", *[v for v in args.variants.split(",") if v != "eager"]]
    names = usable_variants(names, args.force_bf16, args.device)
    b = args.batch
    print(
        f"forward of {b} 4.1-s segment(s) ([{b}, 1, 256, 256] + 1 query each [{b}, 1, D]) on "
        f"{args.device}, median of {args.rounds} interleaved rounds; ratios against eager NCHW "
        "of the same preset"
    )
    print("| preset | variant | forward ms | vs eager | set-up s | max abs diff |")
    print("|---|---|---|---|---|---|")
    rows = []
    for preset in presets:
        checkpoint = make_checkpoint(preset, work)
        rows_here = bench_forward(
            preset, checkpoint, work, names, args.rounds, args.device, args.batch
        )
        for row in rows_here:
            setup = {
                "compile": "compile ",
                "onnxruntime": "export ",
                "onnxruntime-int8": "quantise ",
            }.get(row["variant"], "")
            print(
                f"| {preset} | {row['variant']} | {1000 * row['forward_s']:.1f} | "
                f"{row['speedup']:.2f}x | {setup}{row['setup_s']:.1f} | "
                f"{row['max_abs_diff']:.1e} |",
                flush=True,
            )
            rows.append(row)
    return rows


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: Linux's VmHWM, the high-water mark of the
    memory the process has since it was started (exec). Not ``ru_maxrss``: Linux carries the
    parent's high-water mark into a child through fork and exec, so a child of a 1.1-GB parent
    reported 1.1 GB whatever it used."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def run_case(
    checkpoint: str,
    wav: str,
    out_dir: str,
    threads: int,
    engine: str,
    n_queries: int = 1,
    precision: str = "auto",
) -> None:
    """Child process: separate one file with 1 query (``target``) or ``n_queries`` in one pass,
    at ``separate.precision`` = ``precision``; print a JSON line with timings, peak RSS and the
    precision it resolved to."""
    import dataclasses

    import torch

    torch.set_num_threads(threads)
    from clipsep.inference import DEFAULT_SETTINGS, Separator

    settings = dataclasses.replace(DEFAULT_SETTINGS, precision=precision)
    separator = Separator.from_pretrained(
        checkpoint, device="cpu", engine=engine, settings=settings
    )
    loaded_rss = peak_rss_mb()
    start = time.perf_counter()
    if n_queries == 1:
        separator.separate_file(wav, out_dir, query="cello")
    else:
        separator.separate_file(wav, out_dir, queries=THREE_QUERIES[:n_queries])
    wall = time.perf_counter() - start
    peak = peak_rss_mb()
    print(
        json.dumps(
            {
                "wall_s": wall,
                "peak_rss_mb": peak,
                "loaded_rss_mb": loaded_rss,
                "precision": separator.precision.mode,
            }
        )
    )


def measure(
    checkpoint: Path,
    seconds: int,
    work: Path,
    threads: int,
    engine: str = "torch",
    n_queries: int = 1,
    precision: str = "auto",
) -> dict:
    wav = work / f"input-{seconds}s.wav"
    if not wav.exists():
        write_test_file(wav, seconds)
    command = [
        sys.executable,
        __file__,
        "_case",
        str(checkpoint),
        str(wav),
        str(work / "out"),
        str(threads),
        engine,
        str(n_queries),
        precision,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"case failed ({checkpoint.name}, {engine}, {seconds} s):\n{done.stderr[-3000:]}"
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "seconds": seconds, "engine": engine, "rtf": result["wall_s"] / seconds}


def compare_queries(checkpoint: Path, preset: str, seconds: int, work: Path, threads: int) -> bool:
    """Print the wall time of 3 queries in one pass against 1 query; True within the bound."""
    runs: dict[int, list[float]] = {1: [], 3: []}
    for _ in range(QUERY_ROUNDS):  # interleaved, so load on the machine hits both alike
        for n in runs:
            runs[n].append(measure(checkpoint, seconds, work, threads, n_queries=n)["wall_s"])
    one, three = min(runs[1]), min(runs[3])  # the fastest: a shared machine's noise only adds
    ratio = three / one
    print(
        f"  {preset}: {seconds} s with 1 query {one:.2f} s, 3 queries {three:.2f} s = "
        f"{ratio:.2f}x ({'ok' if ratio <= MAX_QUERY_RATIO else 'OVER'} <= {MAX_QUERY_RATIO}x)",
        flush=True,
    )
    return ratio <= MAX_QUERY_RATIO


def rtf_cases(engines: str, precisions: str) -> list[tuple[str, str, str]]:
    """(engine, precision requested, its label) per rtf row: each requested precision of the
    torch engine that resolves to a mode not already listed (``auto`` names what it chose);
    ONNX Runtime engines once, in their own arithmetic."""
    from clipsep.precision import resolve_precision

    cases = []
    for engine in engines.split(","):
        if engine != "torch":
            cases.append((engine, "auto", "fp32" if engine == "onnx" else "int8"))
            continue
        seen = set()
        for requested in precisions.split(","):
            mode = resolve_precision(requested, "cpu").mode
            if mode not in seen:
                seen.add(mode)
                label = f"auto={mode}" if requested == "auto" else mode
                cases.append((engine, requested, label))
    return cases


def rtf_part(presets: list[str], work: Path, args) -> tuple[list[dict], bool]:
    durations = [int(d) for d in args.durations.split(",")]
    results, ok = [], True
    print(
        f"{'preset':<19}{'engine':<8}{'precision':<11}{'audio':>8}{'wall s':>9}{'RTF':>8}"
        f"{'peak RSS MB':>13}{'after load':>12}"
    )
    for preset in presets:
        checkpoint = make_checkpoint(preset, work)
        # untimed: the first run embeds the queries, which the text cache then keeps for all
        measure(checkpoint, durations[0], work, args.threads, n_queries=len(THREE_QUERIES))
        for engine, precision, label in rtf_cases(args.engines, args.precisions):
            model, child_engine = checkpoint, engine
            if engine in ("onnx", "onnx-int8"):  # exported (quantised) once here, so no child
                network = onnx_network(checkpoint, work, int8=engine == "onnx-int8")  # pays it
                model, child_engine = network.path.parent, "onnx"
            rows = []
            for seconds in durations:
                measured = measure(model, seconds, work, args.threads, child_engine, 1, precision)
                row = {"preset": preset, **measured, "engine": engine, "precision": label}
                rows.append(row)
                print(
                    f"{preset:<19}{engine:<8}{label:<11}{seconds:>7}s{row['wall_s']:>9.1f}"
                    f"{row['rtf']:>8.3f}{row['peak_rss_mb']:>13.0f}"
                    f"{row['loaded_rss_mb']:>12.0f}",
                    flush=True,
                )
            ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
            ok &= ratio <= MAX_RSS_RATIO
            print(
                f"  peak RSS {durations[-1]} s / {durations[0]} s = {ratio:.2f}x "
                f"({'ok' if ratio <= MAX_RSS_RATIO else 'OVER'} <= {MAX_RSS_RATIO}x)"
            )
            results.extend(rows)
        if args.query_seconds:
            ok &= compare_queries(checkpoint, preset, args.query_seconds, work, args.threads)
    return results, ok


def main(argv: list[str] | None = None) -> int:
    from clipsep.env import apply_offline_defaults

    apply_offline_defaults()  # before open_clip, mlflow, gradio are imported
    from machine import separate_capped_cache

    separate_capped_cache()  # a capped run must not load an uncapped run's kernels
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("forward", "rtf", "all"), default="all")
    parser.add_argument(
        "--presets",
        default="small,cpu,cpu-narrow,cpu-conv-upsample",
        help="presets, comma-separated ('default' = params.yaml's)",
    )
    parser.add_argument(
        "--variants",
        default=",".join(FORWARD_VARIANTS),
        help=f"forward variants (of {', '.join(FORWARD_VARIANTS)})",
    )
    parser.add_argument("--rounds", type=int, default=20, help="timed forwards per variant")
    parser.add_argument("--durations", default="10,60,600", help="rtf: seconds, comma-separated")
    parser.add_argument(
        "--engines", default="torch,onnx", help="rtf: separate.engine values (or onnx-int8)"
    )
    parser.add_argument(
        "--precisions",
        default="auto,fp32",
        help="rtf: separate.precision values for the torch engine (equal resolutions run once)",
    )
    parser.add_argument(
        "--force-bf16",
        action="store_true",
        help="forward: run the bf16 variants where bf16 is emulated too",
    )
    parser.add_argument(
        "--query-seconds",
        type=int,
        default=60,
        help="rtf: length of the 3-queries-vs-1 comparison (0 skips it)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--device", default="cpu", help="forward: where the torch variants run (cpu, cuda)"
    )
    parser.add_argument(
        "--batch", type=int, default=1, help="forward: segments per forward (the GPU's batch)"
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    import torch

    from clipsep.config import load_params

    torch.set_num_threads(args.threads)
    default_preset = load_params(REPO / "params.yaml").model.preset
    presets = [default_preset if p == "default" else p for p in args.presets.split(",")]
    if args.device != "cpu" and args.part != "forward":
        parser.error("--device applies to --part forward only (rtf runs on the CPU)")
    print(machine_line(args.threads, args.device))
    results, ok = {}, True
    with tempfile.TemporaryDirectory(prefix="clipsep-bench-") as tmp:
        work = Path(tmp)
        if args.part in ("forward", "all"):
            results["forward"] = forward_part(presets, work, args)
        if args.part in ("rtf", "all"):
            results["rtf"], ok = rtf_part(presets, work, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_case":
        run_case(*sys.argv[2:5], int(sys.argv[5]), sys.argv[6], int(sys.argv[7]), sys.argv[8])
    else:
        sys.exit(main())
