"""Frame-embedding cache: CLIP image embeddings of every ingested frame, computed once.

Training never runs CLIP per step: the query of a source is the mean of the embeddings of three
frames, and those are looked up here. The cache is keyed by a fingerprint of the encoder (its
reference + weights) and of the clips manifest, so a new CLIP or re-ingested clips build a new one.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from clipsep.data.mixing import MANIFEST, ClipRecord
from clipsep.errors import BadInputError
from clipsep.progress import bar
from clipsep.fileio import torch_save

log = logging.getLogger(__name__)

IMAGE_BATCH = 64  # frames per CLIP forward pass


def cache_key(encoder, clips_dir: Path) -> str:
    """Key of the cache for (encoder, manifest): 16 hex digits."""
    manifest = (Path(clips_dir) / MANIFEST).read_bytes()
    # QueryEncoder.fingerprint covers architecture + weights: equal fingerprints, equal embeddings
    digest = hashlib.sha256(encoder.fingerprint().encode() + manifest)
    return digest.hexdigest()[:16]


def frame_paths(record: ClipRecord) -> list[Path]:
    """The clip's frames ``000001.jpg ...`` in order; raises if the manifest's count is wrong."""
    paths = sorted(record.frames_dir.glob("*.jpg"))
    if len(paths) < record.n_frames or record.n_frames < 1:
        raise BadInputError(
            f"clip {record.clip_id}: manifest says {record.n_frames} frames, "
            f"found {len(paths)} in {record.frames_dir}"
        )
    return paths[: record.n_frames]


@torch.no_grad()
def compute_embeddings(encoder, records: Sequence[ClipRecord]) -> dict[str, torch.Tensor]:
    """``{clip_id: [n_frames, D] float32 (CPU)}`` for every clip, frames batched through CLIP."""
    owners, paths = [], []
    for record in records:
        for path in frame_paths(record):
            owners.append(record.clip_id)
            paths.append(path)
    chunks = []
    batches = range(0, len(paths), IMAGE_BATCH)
    for start in bar(batches, desc="CLIP frame embeddings", unit="batch"):
        images = [_open_rgb(p) for p in paths[start : start + IMAGE_BATCH]]
        chunks.append(encoder.encode_images(images).float().cpu())
    flat = torch.cat(chunks) if chunks else torch.zeros(0)
    result: dict[str, list[torch.Tensor]] = {}
    for owner, row in zip(owners, flat):
        result.setdefault(owner, []).append(row)
    return {clip_id: torch.stack(rows) for clip_id, rows in result.items()}


def load_or_build(
    encoder, records: Sequence[ClipRecord], clips_dir: Path, cache_dir: Path
) -> dict[str, torch.Tensor]:
    """Embeddings of ``records`` from ``cache_dir/frame-embeddings-<key>.pt``, built if missing."""
    path = Path(cache_dir) / f"frame-embeddings-{cache_key(encoder, clips_dir)}.pt"
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if all(r.clip_id in cached for r in records):
            log.info("frame embeddings from cache %s", path)
            return cached
    embeddings = compute_embeddings(encoder, records)
    torch_save(embeddings, path)
    log.info("cached %d clips' frame embeddings in %s", len(embeddings), path)
    return embeddings


def _open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        raise BadInputError(f"cannot read frame {path}: {err}") from err
