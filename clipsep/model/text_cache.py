"""Text-query embeddings cached on disk, so a repeated query needs no CLIP model (and no open_clip).

:class:`CachedQueryEncoder` stands in for a :class:`~clipsep.model.query.QueryEncoder`: it builds
the real encoder (importing open_clip, loading the weights) only when a text query is not in the
cache, or for an image query. A cache entry holds exactly what ``QueryEncoder.encode_text([q])``
returned (float32 ``[D]``), under a key made of everything that embedding depends on: the CLIP
architecture and config, the weights (a file's SHA-256, or an open_clip tag), the prompt templates,
the device type, the torch and open_clip versions, and the query (whitespace-normalised, as the
encoder normalises it). Different weights or templates give another key, so a stale entry is never
read. Encoders with random or ``local-dir:`` weights are not cached (their identity is not a file).

Layout (next to the resolved-model cache, ``$TMPDIR/clipsep-models`` by default)::

    <cache>/text-embeddings/<key>.npy          one query's embedding
    <cache>/text-embeddings/digests/<stat>.txt SHA-256 of a weights file, by path + size + mtime

Nothing is imported or read at import time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from clipsep.errors import BadInputError
from clipsep.fileio import atomic_path, file_digest, write_text

log = logging.getLogger(__name__)

FOLDER = "text-embeddings"
WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def normalise_query(query: str) -> str:
    """The query as QueryEncoder.encode_text fills it into the templates (inner whitespace
    collapsed); BadInputError for a non-string or an empty one."""
    if not isinstance(query, str) or not query.strip():
        raise BadInputError(
            f"empty text query {query!r}: describe the sound to separate, e.g. 'violin'"
        )
    return " ".join(query.split())


def weights_identity(pretrained: str | None, folder: Path) -> str | None:
    """``file:<sha256>`` for a weights file, ``tag:<tag>`` for an open_clip tag; None when the
    weights have no stable identity (random init, ``local-dir:``) or name a file that is not
    there (the encoder is then built at once, and says what is wrong)."""
    if pretrained is None or pretrained.startswith("local-dir:"):
        return None
    path = Path(pretrained).expanduser()
    if path.is_file():
        return "file:" + _memo_digest(path, folder / "digests")
    if os.sep in pretrained or path.suffix in WEIGHTS_SUFFIXES:
        return None
    return "tag:" + pretrained


def _memo_digest(path: Path, folder: Path) -> str:
    """A file's SHA-256, remembered by (absolute path, size, mtime): hashing a 600-MB CLIP on
    every call would cost more than the encoder it saves."""
    stat = path.resolve().stat()
    signature = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo = folder / (hashlib.sha256(signature.encode()).hexdigest()[:32] + ".txt")
    try:
        return memo.read_text().split()[0]
    except (OSError, IndexError):
        digest = file_digest(path)
        try:
            write_text(memo, f"{digest} {signature}\n")
        except OSError as err:  # a read-only cache: still correct, only slower next time
            log.debug("cannot remember the digest of %s: %s", path, err)
        return digest


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


class TextEmbeddingCache:
    """``get``/``put`` of one query's embedding ``[D]`` under an encoder ``identity`` (a JSON-able
    dict: equal identities give equal embeddings)."""

    def __init__(self, folder: Path, identity: dict[str, Any]):
        self.folder = Path(folder)
        self.identity = identity

    def path(self, query: str) -> Path:
        payload = json.dumps({**self.identity, "query": query}, sort_keys=True)
        return self.folder / (hashlib.sha256(payload.encode()).hexdigest() + ".npy")

    def get(self, query: str, dim: int | None) -> torch.Tensor | None:
        """The stored embedding ``[D]`` (float32), or None if absent or unreadable."""
        try:
            array = np.load(self.path(query), allow_pickle=False)
        except (OSError, ValueError):
            return None
        if array.dtype != np.float32 or array.ndim != 1 or dim not in (None, array.shape[0]):
            return None
        return torch.from_numpy(array)

    def put(self, query: str, embedding: torch.Tensor) -> None:
        """Store ``embedding [D]``; a cache that cannot be written is skipped (logged)."""
        try:
            with atomic_path(self.path(query)) as tmp, open(tmp, "wb") as handle:
                np.save(handle, embedding.detach().cpu().float().numpy(), allow_pickle=False)
        except OSError as err:
            log.debug("text-embedding cache not written: %s", err)


class CachedQueryEncoder:
    """A query encoder of a checkpoint's CLIP reference that answers repeated text queries from
    :class:`TextEmbeddingCache` and builds the real :class:`QueryEncoder` only when needed.

    ``reference``: ``QueryEncoder.reference()`` as stored in the checkpoint; ``weights``: a file
    replacing its weights location; ``cache_dir``: the folder holding ``text-embeddings/``.
    Same ``encode_text``/``encode_images`` interface as QueryEncoder; ``encode_text`` encodes each
    query on its own (as the separator does), so a hit equals the encoder's output bit for bit.
    """

    def __init__(
        self,
        reference: dict[str, Any],
        device: str,
        cache_dir: Path,
        weights: Path | None = None,
    ):
        self._reference = reference
        self._weights_path = weights
        self.device = device
        self._encoder = None
        folder = Path(cache_dir) / FOLDER
        pretrained = str(weights) if weights is not None else reference.get("pretrained")
        identity = weights_identity(pretrained, folder)
        self.cache = None if identity is None else TextEmbeddingCache(folder, self._key(identity))
        if self.cache is None:  # nothing to cache: build (and check) the encoder now
            _ = self.encoder

    def _key(self, weights: str) -> dict[str, Any]:
        return {
            "architecture": self._reference.get("architecture"),
            "model_config": self._reference.get("model_config"),
            "prompt_templates": list(self._reference.get("prompt_templates") or ()),
            "embed_dim": self._reference.get("embed_dim"),
            "weights": weights,
            "device": torch.device(self.device).type,
            "torch": torch.__version__,
            "open_clip": _package_version("open_clip_torch"),
        }

    @property
    def encoder(self):
        """The real QueryEncoder, built (open_clip imported, weights loaded) on first use."""
        if self._encoder is None:
            from clipsep.model.query import QueryEncoder

            self._encoder = QueryEncoder.from_reference(
                self._reference, self.device, weights=self._weights_path
            )
        return self._encoder

    def encode_text(self, queries: Sequence[str]) -> torch.Tensor:
        """Prompt-ensembled text embeddings ``[B, D]`` (float32, unnormalised)."""
        if isinstance(queries, str) or not queries:
            raise BadInputError("encode_text takes a non-empty list of query strings")
        return torch.stack([self._encode_one(normalise_query(q)) for q in queries])

    def _encode_one(self, query: str) -> torch.Tensor:
        dim = self._reference.get("embed_dim")
        cached = self.cache.get(query, dim) if self.cache is not None else None
        if cached is not None:
            return cached.to(self.device)
        embedding = self.encoder.encode_text([query])[0]
        if self.cache is not None:
            self.cache.put(query, embedding)
        return embedding

    def encode_images(self, images, batch_size: int = 64) -> torch.Tensor:
        """Image embeddings ``[B, D]`` (never cached): see QueryEncoder.encode_images."""
        return self.encoder.encode_images(images, batch_size)

    def __getattr__(self, name: str):
        # anything else (embed_dim, fingerprint, preprocess, ...) is the real encoder's
        if name.startswith("_") or name in ("device", "cache"):
            raise AttributeError(name)
        return getattr(self.encoder, name)
