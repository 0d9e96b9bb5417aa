"""Build separators from named presets and save/load self-describing checkpoints.

Presets are JSON files in ``clipsep/model/presets/`` (the registry: file name = preset name).
A checkpoint is plain data only -- configs as dicts, the state dict, the query-encoder reference,
the clipsep version -- so it loads with ``torch.load(weights_only=True)`` and rebuilds the network
without params.yaml or the preset files.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import clipsep
from clipsep.config import PRESETS_DIR, AudioConfig, ModelConfig, preset_names
from clipsep.errors import BadInputError, MissingWeightsError
from clipsep.model.network import CLIPSepNet, NetConfig
from clipsep.fileio import torch_save

CHECKPOINT_FORMAT = "clipsep-separator"
CHECKPOINT_VERSION = 1
_PRESET_INFO_KEYS = {"description"}  # documentation keys of a preset, not NetConfig fields


@dataclass(frozen=True)
class CheckpointInfo:
    """Everything a checkpoint says about itself besides the weights."""

    model_cfg: ModelConfig
    audio_cfg: AudioConfig
    net_cfg: NetConfig
    query: dict  # QueryEncoder.reference(): architecture, weights, prompt templates
    extra: dict  # e.g. training step, metrics
    clipsep_version: str


def preset_config(preset: str, *, nit: bool, query_dim: int) -> NetConfig:
    """The :class:`NetConfig` of a named preset with the NIT switch and query size filled in."""
    path = PRESETS_DIR / f"{preset}.json"
    if not path.is_file():
        raise BadInputError(
            f"unknown model preset {preset!r}; known presets: "
            f"{', '.join(preset_names())} (files in {PRESETS_DIR})"
        )
    values = {k: v for k, v in json.loads(path.read_text()).items() if k not in _PRESET_INFO_KEYS}
    try:
        return NetConfig(**values, nit=nit, query_dim=query_dim)
    except TypeError as err:
        raise BadInputError(f"model preset {path} does not match NetConfig: {err}") from err


def build_model(model_cfg: ModelConfig, query_dim: int) -> CLIPSepNet:
    """A freshly initialised separator for ``model_cfg.preset`` (train mode, CPU)."""
    return CLIPSepNet(preset_config(model_cfg.preset, nit=model_cfg.nit, query_dim=query_dim))


def check_warp_bins(net_cfg: NetConfig, audio_cfg: AudioConfig, where: str) -> None:
    """BadInputError unless the network's input rows are the audio front end's warp_bins.

    ``audio.warp_bins`` (params.yaml) is the number training warps with and inference reads back
    from the checkpoint; a preset's ``warp_bins`` only describes the network and must agree.
    """
    if net_cfg.warp_bins != audio_cfg.warp_bins:
        raise BadInputError(
            f"{where}: the model preset expects warp_bins={net_cfg.warp_bins} rows "
            f"but audio.warp_bins={audio_cfg.warp_bins}; they must agree"
        )


def save_checkpoint(
    path: str | Path,
    model: CLIPSepNet,
    *,
    model_cfg: ModelConfig,
    audio_cfg: AudioConfig,
    query: dict,
    extra: dict | None = None,
) -> Path:
    """Write a self-describing checkpoint atomically (tmp file + ``os.replace``)."""
    check_warp_bins(model.cfg, audio_cfg, str(path))
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "clipsep_version": clipsep.__version__,
        "model_cfg": dataclasses.asdict(model_cfg),
        "audio_cfg": dataclasses.asdict(audio_cfg),
        "net_cfg": model.cfg.to_dict(),
        "query": _plain_data(query, "query"),
        "extra": _plain_data(extra or {}, "extra"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return torch_save(payload, path)


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[CLIPSepNet, CheckpointInfo]:
    """Rebuild the separator of a checkpoint (eval mode, on ``device``) and describe it."""
    payload = _read_payload(Path(path), device)
    try:
        info = CheckpointInfo(
            model_cfg=ModelConfig(**payload["model_cfg"]),
            audio_cfg=AudioConfig(**payload["audio_cfg"]),
            net_cfg=NetConfig(**payload["net_cfg"]),
            query=payload["query"],
            extra=payload["extra"],
            clipsep_version=payload["clipsep_version"],
        )
        model = CLIPSepNet(info.net_cfg)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise BadInputError(
            f"checkpoint {path} does not fit this clipsep version ({clipsep.__version__}): {err}"
        ) from err
    check_warp_bins(info.net_cfg, info.audio_cfg, str(path))
    return model.to(device).eval(), info


def checkpoint_audio_config(path: str | Path) -> AudioConfig:
    """The audio settings a checkpoint records, read without reading its weights (memory-mapped)
    or building the network; the errors of :func:`load_checkpoint`."""
    payload = _read_payload(Path(path), "cpu", mmap=True)
    try:
        return AudioConfig(**payload["audio_cfg"])
    except (KeyError, TypeError) as err:
        raise BadInputError(
            f"checkpoint {path} does not fit this clipsep version ({clipsep.__version__}): {err}"
        ) from err


def _read_payload(path: Path, device: str | torch.device, mmap: bool = False) -> dict[str, Any]:
    if not path.is_file():
        raise MissingWeightsError(
            f"separator checkpoint not found: {path} "
            f"(train one with `clipsep train`, or pass an existing .pt file)"
        )
    try:
        payload = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
        RuntimeError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
    ) as err:  # a text file: KeyError
        raise BadInputError(
            f"cannot read checkpoint {path}: corrupt, truncated or not a "
            f"weights-only torch file ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise BadInputError(
            f"{path} is not a clipsep separator checkpoint (no format={CHECKPOINT_FORMAT!r})"
        )
    if payload.get("format_version", 0) > CHECKPOINT_VERSION:
        raise BadInputError(
            f"{path} has checkpoint format {payload['format_version']}, newer than "
            f"this clipsep ({CHECKPOINT_VERSION}); upgrade clipsep"
        )
    return payload


def _plain_data(value: Any, where: str) -> Any:
    """Check that ``value`` is made of dict/list/tuple/str/int/float/bool/None/tensor only."""
    if isinstance(value, dict):
        return {k: _plain_data(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain_data(v, where) for v in value)
    if value is None or isinstance(value, (str, int, float, bool, torch.Tensor)):
        return value
    raise BadInputError(
        f"checkpoint field {where} holds a {type(value).__name__}; only plain "
        f"data (dict, list, str, numbers, tensors) can be loaded with "
        f"weights_only=True"
    )
