"""Export the separator network to ONNX, and run an exported one with ONNX Runtime.

``export_onnx(checkpoint, out_dir)`` writes a self-describing folder:

* ``separator.onnx``: the network's mask pass, ``mix_mag [B, 1, W, T]`` (warped linear magnitude,
  float32) + ``queries [B, N, D]`` (query embeddings) -> ``mask_logits [B, N, W, T]``
  (pre-sigmoid). B, N and T are dynamic (T a multiple of ``2**depth``); W is ``warp_bins``.
  Exported with ``torch.onnx.export(dynamo=True)`` (the torch.export-based exporter, the default
  since torch 2.9; the TorchScript one is deprecated), which runs offline.
* ``clipsep-export.json``: what the front end needs around it: the audio config (STFT, rate,
  segment), the network config (depth, warp bins, query size), the model config, the query
  encoder reference (the CLIP that turns text or images into ``queries``; it runs in torch) and
  the tensor names.

:class:`OnnxNetwork` wraps an ONNX Runtime session with the call signature of
:class:`~clipsep.model.network.CLIPSepNet` at inference (``net(mix_mag, queries,
with_noise=False).mask_logits``), so :class:`~clipsep.inference.Separator` runs either engine.

onnxruntime, onnx and onnxscript are the optional ``onnx`` extra; they are imported only here,
and only when used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

import clipsep
from clipsep.config import ENGINES, AudioConfig, ModelConfig
from clipsep.errors import BadInputError, ClipsepError
from clipsep.fileio import file_digest, write_json
from clipsep.model.network import CLIPSepNet, NetConfig, SeparationOutput

log = logging.getLogger(__name__)

EXPORT_FORMAT = "clipsep-onnx"
EXPORT_VERSION = 1
MANIFEST = "clipsep-export.json"
ONNX_FILE = "separator.onnx"
INPUT_NAMES = ("mix_mag", "queries")
OUTPUT_NAMES = ("mask_logits",)
FORMATS = ("onnx",)
MAX_BLOCKS = 1 << 12  # T may be up to 2**depth * 4096 frames
MAX_BATCH = 1 << 10
MAX_QUERIES = 1 << 8
_INSTALL_HINT = "install the onnx extra: pip install 'clipsep[onnx]'"


@dataclass(frozen=True)
class ExportInfo:
    """What an exported folder says about itself (its ``clipsep-export.json``)."""

    folder: Path
    model_cfg: ModelConfig
    audio_cfg: AudioConfig
    net_cfg: NetConfig
    query: dict  # QueryEncoder.reference() of the checkpoint
    manifest: dict

    @property
    def extra(self) -> dict:
        """What the source checkpoint recorded (training step, metrics)."""
        return dict(self.manifest.get("extra") or {})


class _MaskPass(torch.nn.Module):
    """The network's inference pass as a module with tensor outputs only (what is exported)."""

    def __init__(self, network: CLIPSepNet):
        super().__init__()
        self.network = network

    def forward(self, mix_mag: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        return self.network(mix_mag, queries, with_noise=False).mask_logits


def export_onnx(checkpoint: str | Path, out_dir: str | Path, opset: int | None = None) -> Path:
    """Export a separator checkpoint to ``out_dir`` (``separator.onnx`` + ``clipsep-export.json``).

    The folder is written under a temporary name beside ``out_dir`` and renamed when complete;
    an existing ``out_dir`` that is not an export folder is refused (BadInputError).
    Returns ``out_dir``. Raises MissingWeightsError / BadInputError for an unusable checkpoint
    and ClipsepError when the ONNX packages are not installed.
    """
    from clipsep.model.factory import load_checkpoint

    _require("onnxscript")
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if out_dir.exists() and not (out_dir / MANIFEST).is_file():
        raise BadInputError(
            f"{out_dir} exists and is not a clipsep export folder; choose a new "
            "folder (an existing export is replaced)"
        )
    network, info = load_checkpoint(checkpoint, "cpu")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
        work = Path(tmp) / "export"
        work.mkdir()
        opset_used = _export_network(network, work / ONNX_FILE, opset)
        manifest = {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_VERSION,
            "clipsep_version": clipsep.__version__,
            "torch_version": torch.__version__,
            "exporter": "torch.onnx.export(dynamo=True)",
            "opset": opset_used,
            "onnx_file": ONNX_FILE,
            "inputs": list(INPUT_NAMES),
            "outputs": list(OUTPUT_NAMES),
            "shapes": {
                "mix_mag": ["batch", 1, info.net_cfg.warp_bins, f"{2**info.net_cfg.depth}*blocks"],
                "queries": ["batch", "queries", info.net_cfg.query_dim],
                "mask_logits": [
                    "batch",
                    "queries",
                    info.net_cfg.warp_bins,
                    f"{2**info.net_cfg.depth}*blocks",
                ],
            },
            "source_checkpoint": {
                "path": str(checkpoint.resolve()),
                "sha256": file_digest(checkpoint),
            },
            "audio_cfg": dataclasses.asdict(info.audio_cfg),
            "net_cfg": info.net_cfg.to_dict(),
            "model_cfg": dataclasses.asdict(info.model_cfg),
            "query": info.query,
            "extra": info.extra,
        }
        write_json(work / MANIFEST, manifest, default=str)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    log.info("exported %s to %s (opset %s)", checkpoint, out_dir, opset_used)
    return out_dir


def _export_network(network: CLIPSepNet, path: Path, opset: int | None) -> int:
    """torch.onnx.export (dynamo) of the mask pass with dynamic batch, queries and frames.

    The exporter's own optimizer is off (``optimize=False``): onnxscript 0.7.2's rewrite rules
    match ``x + 0`` with an absolute tolerance of 1e-8, so they turned ``log(x + 1e-10)`` into
    ``log(x)`` (a silent bin became -inf, quiet ones drifted by up to 14; the test's zero frames
    catch it). Only its constant folding runs (it folds the BatchNorm parameters' Expand/Cast
    chains, which ONNX Runtime needs to fuse Conv+BN: 35 -> 24 ms for the small preset), then
    ONNX Runtime applies its own graph optimisations when it loads the file.
    """
    import onnxscript
    from torch.export import Dim

    cfg = network.cfg
    step = 2**cfg.depth
    mix_mag = torch.rand(1, 1, cfg.warp_bins, 2 * step) + 0.01
    queries = torch.randn(1, 1, cfg.query_dim)
    batch = Dim("batch", min=1, max=MAX_BATCH)
    shapes = {
        "mix_mag": {0: batch, 3: step * Dim("blocks", min=1, max=MAX_BLOCKS)},
        "queries": {0: batch, 1: Dim("queries", min=1, max=MAX_QUERIES)},
    }
    with _quiet_exporter():
        program = torch.onnx.export(
            _MaskPass(network).eval(),
            (mix_mag, queries),
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamic_shapes=shapes,
            external_data=False,
            verbose=False,
            optimize=False,
        )
        onnxscript.optimizer.inline(program.model)
        onnxscript.optimizer.fold_constants(program.model)
        onnxscript.optimizer.remove_unused_nodes(program.model)
    program.save(str(path))
    return int(program.model.opset_imports.get("", 0))


@contextlib.contextmanager
def _quiet_exporter():
    """Send the exporter's progress prints to the debug log and silence its warnings."""
    with contextlib.redirect_stdout(io.StringIO()) as printed, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            log.debug("%s", printed.getvalue())


def read_export(folder: str | Path) -> ExportInfo:
    """Read an export folder's manifest; BadInputError when it is not one or does not fit."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BadInputError(
            f"{folder} is not a clipsep export folder (no {MANIFEST}); make one "
            "with `clipsep export MODEL --format onnx OUT`"
        )
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != EXPORT_FORMAT:
            raise KeyError("format")
        if manifest.get("format_version", 0) > EXPORT_VERSION:
            raise BadInputError(
                f"{path} has export format {manifest['format_version']}, newer "
                f"than this clipsep ({EXPORT_VERSION}); upgrade clipsep"
            )
        return ExportInfo(
            folder,
            ModelConfig(**manifest["model_cfg"]),
            AudioConfig(**manifest["audio_cfg"]),
            NetConfig(**manifest["net_cfg"]),
            manifest["query"],
            manifest,
        )
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise BadInputError(f"{path} is not a valid clipsep export manifest ({err})") from err


def is_export_folder(ref: str | Path) -> bool:
    """Whether ``ref`` names a folder written by :func:`export_onnx`."""
    return not str(ref).startswith("models:/") and (Path(ref) / MANIFEST).is_file()


def cpu_session(onnx_path: str | Path, threads: int | None = None, optimization: str = "all"):
    """An ONNX Runtime CPU ``InferenceSession`` as the separator runs it: ``threads`` intra-op
    threads (default: torch's intra-op count), one inter-op thread, graph optimisation
    ``optimization`` (``all``, ``extended`` or ``basic``), no busy-waiting between runs."""
    ort = _require("onnxruntime")
    levels = ort.GraphOptimizationLevel
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = {
        "all": levels.ORT_ENABLE_ALL,
        "extended": levels.ORT_ENABLE_EXTENDED,
        "basic": levels.ORT_ENABLE_BASIC,
    }[optimization]
    # No busy-waiting between runs: torch (STFT, resampling) shares these cores, and spinning
    # pool threads slowed the torch work that follows a run 2x on 2 cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


class OnnxNetwork:
    """An exported separator run by ONNX Runtime (CPU), called like ``CLIPSepNet`` at inference.

    ``net(mix_mag [B, 1, W, T], queries [B, N, D]) -> SeparationOutput(mask_logits [B, N, W, T],
    None)``; tensors in and out are float32 torch tensors on the CPU. ``threads`` (default:
    torch's intra-op thread count) sets ONNX Runtime's intra-op pool.
    """

    def __init__(
        self, onnx_path: str | Path, cfg: NetConfig, threads: int | None = None, int8: bool = False
    ):
        self.session = cpu_session(onnx_path, threads)
        self.cfg = cfg
        self.path = Path(onnx_path)
        self.int8 = int8  # quantised (clipsep.model.quantize): int8 inside, fp32 in and out

    def eval(self) -> "OnnxNetwork":
        return self

    def __call__(
        self, mix_mag: torch.Tensor, queries: torch.Tensor, with_noise: bool = False
    ) -> SeparationOutput:
        feeds = {"mix_mag": _numpy(mix_mag), "queries": _numpy(queries)}
        (logits,) = self.session.run(list(OUTPUT_NAMES), feeds)
        return SeparationOutput(torch.from_numpy(logits).to(mix_mag.device), None)


def _numpy(tensor: torch.Tensor):
    return tensor.detach().to("cpu", torch.float32).contiguous().numpy()


def load_onnx_network(
    folder: str | Path, threads: int | None = None
) -> tuple[OnnxNetwork, ExportInfo]:
    """The :class:`OnnxNetwork` of an export folder and the folder's :class:`ExportInfo`."""
    info = read_export(folder)
    onnx_path = info.folder / info.manifest.get("onnx_file", ONNX_FILE)
    if not onnx_path.is_file():
        raise BadInputError(f"{info.folder}: {onnx_path.name} is missing")
    int8 = "quantization" in info.manifest
    return OnnxNetwork(onnx_path, info.net_cfg, threads, int8=int8), info


def cached_export(checkpoint: str | Path, cache_root: str | Path | None = None) -> Path:
    """The export folder of ``checkpoint``, exported once and reused (keyed by the checkpoint's
    sha256 and the clipsep/torch versions) under ``$XDG_CACHE_HOME/clipsep/onnx``."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        from clipsep.errors import MissingWeightsError

        raise MissingWeightsError(f"separator checkpoint not found: {checkpoint}")
    key = hashlib.sha256(
        f"{file_digest(checkpoint)}|{clipsep.__version__}|{torch.__version__}".encode()
    ).hexdigest()[:20]
    root = Path(cache_root) if cache_root else _cache_root()
    folder = root / key
    if not (folder / MANIFEST).is_file():
        log.info("exporting %s to ONNX once (cached in %s)", checkpoint, folder)
        export_onnx(checkpoint, folder)
    return folder


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clipsep" / "onnx"


def check_engine(engine: str) -> str:
    """``engine`` if it is one of :data:`ENGINES`, else BadInputError."""
    if engine not in ENGINES:
        raise BadInputError(f"separate.engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return engine


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ClipsepError(f"the ONNX engine needs the {module} package ({_INSTALL_HINT})") from err
