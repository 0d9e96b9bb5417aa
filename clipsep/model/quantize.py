"""int8 separator: static QDQ quantisation of an ONNX export with ONNX Runtime's quantisation tool.

``quantize_export(src, out, feeds)`` reads an export folder (``clipsep export``), calibrates the
activation ranges on ``feeds`` (real network inputs, see :func:`calibration_feeds`) and writes a
new export folder whose ``separator.int8.onnx`` has int8 weights (per output channel, symmetric)
and uint8 activations (QDQ format: ONNX Runtime fuses each DequantizeLinear -> op ->
QuantizeLinear into one integer kernel, e.g. QLinearConv). Weights use 7 bits
(``reduce_range``): AVX2 CPUs without VNNI multiply uint8 x int8 with ``vpmaddubsw``, whose
int16 pair sums saturate with 8-bit weights; on trained cpu-preset networks that made the masks
differ from fp32 by 0.15-0.29 on average (0.002-0.008 with 7 bits). The settings have one home,
:func:`static_options`; the manifest records them and the calibration set's digest.
:class:`~clipsep.model.export.OnnxNetwork` runs it unchanged.

On an AVX2 CPU without VNNI (AMD EPYC, 2 cores) the int8 forward was 1.0-1.7x ONNX Runtime's fp32
one for the small, cpu and paper presets (bench/separate.py, 2 threads under load), and the
paper preset's 1.76-1.95x at 1 pinned thread, where no other setting of the quantisation tool
(format, weight and activation types, per-channel, extra options) or of the session was faster
(bench/int8_variants.py; docs/separation.md). ``separate.engine: onnx-int8`` selects it.
Calibration inputs are mixtures of two of the world's train clips (the training recipe's
mix-and-separate, halved sources), each queried with its clip's middle frame. The front end
before the first convolution and the late fusion stay fp32 (:func:`fp32_nodes`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from clipsep import audio
from clipsep.config import AudioConfig
from clipsep.errors import BadInputError
from clipsep.fileio import file_digest, write_json
from clipsep.model import export

log = logging.getLogger(__name__)

INT8_FILE = "separator.int8.onnx"
CALIBRATION_MIXTURES = 24  # calibration set size: ranges settled by ~16 (max |diff| < 2 %)
CALIBRATION_SEED = 0

Feed = dict[str, np.ndarray]


def network_input(mono: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """The separator's input ``[1, 1, W, T]`` (warped STFT magnitude) of a mono wave ``[n]``."""
    spec = audio.stft(mono[None], cfg)  # [1, F, T]
    return audio.warp(spec.abs()[:, None], cfg.warp_bins)


def calibration_feeds(
    clips_dir: str | Path,
    cfg: AudioConfig,
    encode_images: Callable[[list], torch.Tensor],
    count: int = CALIBRATION_MIXTURES,
    seed: int = CALIBRATION_SEED,
) -> list[Feed]:
    """``count`` network inputs ``{"mix_mag": [1, 1, W, T], "queries": [1, 2, D]}`` from the
    ``train`` split of ``clips_dir/manifest.csv`` (labels not needed): two clips drawn with
    ``seed``, their middle ``cfg.segment_samples`` each halved and summed, queried with each
    clip's middle frame (the training recipe's image query). BadInputError with fewer than two
    train clips."""
    from PIL import Image

    from clipsep.data.mixing import load_wave, read_manifest, segment_at

    clips = [c for c in read_manifest(Path(clips_dir)) if c.split == "train"]
    if len(clips) < 2:
        raise BadInputError(
            f"int8 calibration needs at least two train clips in {clips_dir} "
            "(run `clipsep ingest`, or use separate.engine onnx)"
        )
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        pair = [clips[i] for i in rng.choice(len(clips), 2, replace=False)]
        waves = [load_wave(c.audio_path, cfg.sample_rate) for c in pair]
        mixture = sum(
            segment_at(w, w.numel() / 2 / cfg.sample_rate, cfg.segment_samples, cfg.sample_rate) / 2
            for w in waves
        )
        frames = [sorted(Path(c.frames_dir).glob("*.jpg")) for c in pair]
        if not all(frames):
            raise BadInputError(f"int8 calibration: no frames in {pair[0].frames_dir.parent}")
        images = [Image.open(f[len(f) // 2]).convert("RGB") for f in frames]
        feeds.append(
            {
                "mix_mag": network_input(mixture, cfg).numpy().astype(np.float32),
                "queries": encode_images(images)[None].detach().float().numpy(),
            }
        )
    return feeds


def fp32_nodes(model) -> list[str]:
    """Names of the nodes of the exported ONNX graph that stay fp32 in the int8 network.

    * The front end before the first convolution (``log(mix_mag + eps)``, the input norm):
      uint8 steps over the linear magnitude's range would round most bins to 0 (log = -23);
      the first int8 tensor is the log-magnitude that the first convolution reads.
    * Every node the ``queries`` input reaches (the late fusion: projection, sigmoid, the
      per-query combination of the U-Net's k features): the int8 ranges then do not depend on
      which queries calibrated them (images here, text at separation). Both are a few per cent
      of the forward's work.
    """
    names, reached = [], {"queries"}
    nodes = list(model.graph.node)  # ONNX graphs are topologically sorted
    first_conv = next(i for i, node in enumerate(nodes) if node.op_type == "Conv")
    for index, node in enumerate(nodes):
        if index < first_conv or reached.intersection(node.input):
            names.append(node.name)
        if reached.intersection(node.input):
            reached.update(node.output)
    return names


def static_options(quantization) -> dict:
    """``quantize_static``'s settings for the int8 network (their one home; ``quantization`` is
    the ``onnxruntime.quantization`` module): QDQ, int8 weights per output channel in 7 bits,
    uint8 activations, min-max ranges. bench/int8_variants.py measures the alternatives."""
    return {
        "quant_format": quantization.QuantFormat.QDQ,
        "per_channel": True,
        "activation_type": quantization.QuantType.QUInt8,
        "weight_type": quantization.QuantType.QInt8,
        "reduce_range": True,
        "calibrate_method": quantization.CalibrationMethod.MinMax,
    }


def prepare(src: str | Path, out: str | Path) -> Path:
    """Write ``out``: the ONNX file ``src`` after ``quant_pre_process`` (ONNX Runtime's basic
    optimisations, which fold each BatchNormalization into its convolution)."""
    quantization = export._require("onnxruntime.quantization")
    quantization.quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    return Path(out)


def quantize_export(src: str | Path, out: str | Path, feeds: Sequence[Feed]) -> Path:
    """Write ``out``: the export folder ``src`` with its network quantised to int8 (static QDQ,
    per-channel int8 weights, uint8 activations, min-max ranges over ``feeds``). Returns ``out``.
    BadInputError for a folder that is not an export or no feeds."""
    quantization = export._require("onnxruntime.quantization")
    info = export.read_export(src)
    if not feeds:
        raise BadInputError("int8 quantisation needs at least one calibration input")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        work = Path(tmp) / "export"
        work.mkdir()
        prepared = prepare(
            info.folder / info.manifest.get("onnx_file", export.ONNX_FILE),
            Path(tmp) / "prepared.onnx",
        )
        import onnx

        keep_fp32 = fp32_nodes(onnx.load(str(prepared)))
        options = static_options(quantization)
        settings = {
            "format": "QDQ",
            "weights": "int8 in 7 bits (reduce_range), symmetric, per channel",
            "activations": "uint8, asymmetric, per tensor",
            "calibration": "MinMax",
        }
        quantization.quantize_static(
            str(prepared),
            str(work / INT8_FILE),
            CalibrationReader(feeds),
            nodes_to_exclude=keep_fp32,
            **options,
        )
        manifest = {
            **info.manifest,
            "onnx_file": INT8_FILE,
            "quantization": {
                **settings,
                "tool": "onnxruntime.quantization.quantize_static",
                "options": {name: str(value) for name, value in options.items()},
                "fp32_nodes": keep_fp32,
                "calibration_inputs": len(feeds),
                "calibration_sha256": _feeds_digest(feeds),
                "fp32_source": str(info.folder.resolve()),
            },
        }
        write_json(work / export.MANIFEST, manifest, default=str)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    log.info("quantised %s to int8 in %s (%d calibration inputs)", src, out, len(feeds))
    return out


class CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: Sequence[Feed]):
        self._items = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self._items, None)


def _feeds_digest(feeds: Sequence[Feed]) -> str:
    digest = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(feed[name]).tobytes())
    return digest.hexdigest()


def cached_int8_export(
    checkpoint: str | Path,
    clips_dir: str | Path,
    encode_images: Callable[[list], torch.Tensor],
    cache_root: str | Path | None = None,
) -> Path:
    """The int8 export folder of ``checkpoint`` calibrated on ``clips_dir``'s train clips,
    quantised once and reused (keyed by the fp32 export and the clip manifest's sha256) beside
    the fp32 export cache (:func:`clipsep.model.export.cached_export`)."""
    fp32 = export.cached_export(checkpoint, cache_root)
    manifest = Path(clips_dir) / "manifest.csv"
    if not manifest.is_file():
        raise BadInputError(
            f"separate.engine onnx-int8 calibrates on the clip manifest, and there is none at "
            f"{manifest} (run `clipsep ingest`, or use separate.engine onnx)"
        )
    key = hashlib.sha256(
        json.dumps(
            [fp32.name, file_digest(manifest), CALIBRATION_MIXTURES, CALIBRATION_SEED]
        ).encode()
    ).hexdigest()[:20]
    folder = fp32.parent / f"{fp32.name}-int8-{key}"
    if not (folder / export.MANIFEST).is_file():
        info = export.read_export(fp32)
        log.info("quantising %s to int8 once (cached in %s)", checkpoint, folder)
        feeds = calibration_feeds(clips_dir, info.audio_cfg, encode_images)
        quantize_export(fp32, folder, feeds)
    return folder
