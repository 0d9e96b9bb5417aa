"""The frozen CLIP query encoder: text -> embedding, image(s) -> embedding (open_clip).

One class, :class:`QueryEncoder`, hides where the weights come from:

* ``pretrained=None`` in params -> the embedded world's tiny CLIP (``paths.clip_model/clip.pt``,
  written by ``clipsep pretrain-clip``);
* a local checkpoint file (``.pt``/``.bin``/``.safetensors``) or an open_clip ``local-dir:`` folder;
* an open_clip tag such as ``openai`` for ``ViT-B-32`` (the paper's encoder). With
  ``HF_HUB_OFFLINE=1`` a tag is only looked up in the local caches; if it is not there a
  :class:`~clipsep.errors.MissingWeightsError` says how to supply the weights, instead of open_clip
  retrying the network for ~46 s.

Embeddings are the raw (unnormalised) projection outputs, as in CLIPSep: text and image
embeddings have different norms and the separator sees them as they are. Text queries are
prompt-ensembled: every template (``clip.prompt_templates``) is filled in, encoded, and averaged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from clipsep.config import ClipConfig
from clipsep.env import resolve_device
from clipsep.errors import BadInputError, MissingWeightsError
from clipsep.fileio import file_digest

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "clip_configs"
_registered_bundled = False  # add_model_config mutates a process-wide registry: do it once
_OFFLINE_VALUES = ("1", "true", "yes", "on")


def register_bundled_configs() -> None:
    """Make clipsep's JSON architectures (``clip_configs/*.json``) known to open_clip.

    Idempotent; called lazily, never at import.
    """
    global _registered_bundled
    if _registered_bundled:
        return
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    _registered_bundled = True


def bundled_config(architecture: str) -> dict[str, Any] | None:
    """The JSON config of a clipsep-bundled architecture, or None for open_clip's built-ins."""
    path = CONFIG_DIR / f"{architecture}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _register_model_config(architecture: str, model_config: dict[str, Any]) -> str:
    """Register ``model_config`` with open_clip and return the name to build it under.

    A config equal to the registered one keeps its name; a different one (e.g. a checkpoint made
    before clipsep-tiny.json changed) gets a content-hashed name so it never overwrites the
    registry entry other encoders in this process use.
    """
    import open_clip

    register_bundled_configs()
    if open_clip.get_model_config(architecture) == model_config:
        return architecture
    digest = hashlib.sha256(json.dumps(model_config, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{architecture}-{digest}"
    if open_clip.get_model_config(name) is None:
        # The registry keeps the parsed dict, not the file, so a temporary file is enough.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps(model_config))
            open_clip.add_model_config(path)
    return name


@dataclass(frozen=True)
class WeightsSource:
    """Where an encoder's weights come from: kind is 'random', 'file', 'local-dir' or 'tag'."""

    kind: str
    value: str | None  # absolute file/folder path, tag, or None for random init

    def describe(self) -> str:
        return "random init" if self.kind == "random" else f"{self.kind} {self.value}"


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


def resolve_weights(architecture: str, pretrained: str | None) -> WeightsSource:
    """Classify ``pretrained`` (None, a path, ``local-dir:`` folder or tag); raise if unusable."""
    import open_clip

    if pretrained is None:
        return WeightsSource("random", None)
    if pretrained.startswith("local-dir:"):
        folder = Path(pretrained[len("local-dir:") :]).expanduser().resolve()
        if not (folder / "open_clip_config.json").is_file():
            raise MissingWeightsError(
                f"clip.pretrained={pretrained!r}: {folder} has no "
                "open_clip_config.json (not an open_clip local-dir model)"
            )
        return WeightsSource("local-dir", str(folder))
    path = Path(pretrained).expanduser()
    if path.is_file():
        return WeightsSource("file", str(path.resolve()))
    register_bundled_configs()
    if open_clip.get_pretrained_cfg(architecture, pretrained):
        return WeightsSource("tag", pretrained)
    known = open_clip.list_pretrained_tags_by_model(architecture)
    raise MissingWeightsError(
        f"clip.pretrained={pretrained!r} is neither an existing file nor a known open_clip tag for "
        f"{architecture!r} (known tags: {', '.join(known) or 'none'}). Set clip.pretrained to a "
        "checkpoint file, or to null to use the embedded world's CLIP from "
        "`clipsep pretrain-clip`."
    )


def _cached_tag_file(architecture: str, tag: str) -> str | None:
    """The local copy of a tag's weights (HF cache or open_clip's URL cache), without network."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(architecture, tag)
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    hub = cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        names = (
            [filename]
            if filename
            else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        )
        for name in names:
            found = try_to_load_from_cache(repo_id, name)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = cfg.get("url", "")
    cached = Path("~/.cache/clip").expanduser() / os.path.basename(url) if url else None
    return str(cached) if cached is not None and cached.is_file() else None


def _tag_create_kwargs(architecture: str, tag: str) -> dict[str, Any]:
    """create_model_and_transforms kwargs for a tag; offline it points at the cached file."""
    import open_clip

    if not _hf_offline():
        return {"pretrained": tag}
    local = _cached_tag_file(architecture, tag)
    if local is None:
        raise MissingWeightsError(
            f"CLIP weights {architecture!r}/{tag!r} are not in the local cache and "
            "HF_HUB_OFFLINE=1 "
            "forbids downloading them. Either download the checkpoint on a machine with network "
            "access (e.g. open_clip.create_model_and_transforms(...) there, or the file from "
            "huggingface.co) and set clip.pretrained to its local path, or run with network access "
            "and HF_HUB_OFFLINE unset so open_clip can fetch it."
        )
    cfg = open_clip.get_pretrained_cfg(architecture, tag)
    # Loading a tag's file by path loses the tag's settings; carry the ones that change outputs.
    kwargs: dict[str, Any] = {"pretrained": local, "force_quick_gelu": bool(cfg.get("quick_gelu"))}
    for key, arg in (
        ("mean", "image_mean"),
        ("std", "image_std"),
        ("interpolation", "image_interpolation"),
        ("resize_mode", "image_resize_mode"),
    ):
        if key in cfg:
            kwargs[arg] = cfg[key]
    return kwargs


def _sha256_state_dict(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _MessageFilter(logging.Filter):
    """Drops the log records whose message contains ``text``."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def random_init_expected() -> Iterator[None]:
    """Keep open_clip's "No pretrained weights loaded ... initialized randomly" warning (on the
    root logger) off the log while a model whose random weights are meant is built: pretraining
    starts from them, and a query encoder without weights says what that means in its own
    warning. Other records pass."""
    quiet = _MessageFilter("No pretrained weights loaded")
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _build_open_clip(
    architecture: str, model_config: dict[str, Any] | None, weights: WeightsSource, device: str
):
    """(model, tokenizer, preprocess, model_config) for these weights; errors are user-facing."""
    import open_clip

    register_bundled_configs()
    if weights.kind == "local-dir":
        name, kwargs = f"local-dir:{weights.value}", {}
    else:
        name = _register_model_config(architecture, model_config) if model_config else architecture
        if open_clip.get_model_config(name) is None:
            raise MissingWeightsError(
                f"unknown CLIP architecture {architecture!r}: not an "
                f"open_clip model and not in {CONFIG_DIR}"
            )
        kwargs = (
            _tag_create_kwargs(architecture, weights.value)
            if weights.kind == "tag"
            else {"pretrained": weights.value}
        )
    random = random_init_expected() if weights.kind == "random" else contextlib.nullcontext()
    try:
        with random:  # its own warning follows
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, device=device, **kwargs
            )
    except RuntimeError as err:  # open_clip reports missing/corrupt weights as RuntimeError
        raise MissingWeightsError(
            f"could not load CLIP {architecture!r} from {weights.describe()}: {err}"
        ) from err
    if weights.kind == "random":
        log.warning(
            "CLIP %s has random weights (clip.pretrained unset and no default checkpoint): "
            "queries carry no meaning",
            architecture,
        )
    config = open_clip.get_model_config(name) if weights.kind != "local-dir" else None
    return model, open_clip.get_tokenizer(name), preprocess, config


def _check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    if not templates:
        raise BadInputError(
            "clip.prompt_templates is empty: give at least one template like 'a photo of {}.'"
        )
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise BadInputError(
            f"clip.prompt_templates must each contain '{{}}' exactly once; bad: {bad}"
        )
    return tuple(templates)


class QueryEncoder:
    """A frozen open_clip model turning text or pictures into query embeddings ``[B, D]``.

    Always in eval mode with ``requires_grad`` off; encoding runs under ``torch.inference_mode``
    and returns ordinary float32 tensors (cloned out of inference mode, so callers may feed them
    into modules that are being trained).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        preprocess,
        *,
        architecture: str,
        model_config: dict[str, Any] | None,
        weights: WeightsSource,
        prompt_templates: Sequence[str],
        device: str,
    ) -> None:
        self.device = device
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.preprocess = preprocess  # PIL.Image -> [3, H, W] normalised tensor
        self.architecture = architecture
        self.model_config = model_config
        self.weights = weights
        self.prompt_templates = _check_templates(prompt_templates)
        self.embed_dim = int(self._encode_tokens(self.tokenizer(["probe"])).shape[-1])
        self._fingerprint: str | None = None

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, clip_cfg: ClipConfig, default_weights: Path | None, device: str = "auto"
    ) -> "QueryEncoder":
        """Build from params; ``clip.pretrained=None`` means ``default_weights``.

        ``default_weights`` is pretrain-clip's output (``paths.clip_model/clip.pt``).

        ``default_weights=None`` with ``pretrained=None``: a randomly initialised encoder (warns).
        """
        pretrained = clip_cfg.pretrained
        if pretrained is None and default_weights is not None:
            if not Path(default_weights).is_file():
                raise MissingWeightsError(
                    f"the embedded world's CLIP checkpoint {default_weights} does not exist: run "
                    "`clipsep pretrain-clip` first, or set clip.pretrained to a checkpoint file or "
                    "an open_clip tag (with clip.architecture, e.g. ViT-B-32 + openai)"
                )
            pretrained = str(default_weights)
        return cls._build(
            clip_cfg.architecture,
            bundled_config(clip_cfg.architecture),
            pretrained,
            clip_cfg.prompt_templates,
            device,
        )

    @classmethod
    def from_reference(
        cls, ref: dict[str, Any], device: str = "auto", weights: Path | None = None
    ) -> "QueryEncoder":
        """Rebuild the encoder a separation checkpoint describes (see :meth:`reference`).

        ``weights`` replaces the stored weights location (e.g. a copy bundled by a model registry).
        """
        missing = [k for k in ("architecture", "pretrained", "prompt_templates") if k not in ref]
        if missing:
            raise BadInputError(
                f"CLIP reference lacks {missing}; it must come from QueryEncoder.reference()"
            )
        pretrained = str(weights) if weights is not None else ref["pretrained"]
        encoder = cls._build(
            ref["architecture"],
            ref.get("model_config"),
            pretrained,
            ref["prompt_templates"],
            device,
        )
        if ref.get("embed_dim") not in (None, encoder.embed_dim):
            raise BadInputError(
                f"CLIP from {encoder.weights.describe()} gives "
                f"{encoder.embed_dim}-d embeddings but the checkpoint expects "
                f"{ref['embed_dim']}-d"
            )
        return encoder

    @classmethod
    def _build(
        cls,
        architecture: str,
        model_config: dict[str, Any] | None,
        pretrained: str | None,
        templates: Sequence[str],
        device: str,
    ) -> "QueryEncoder":
        _check_templates(templates)  # before the (possibly slow) model load
        device = resolve_device(device)
        weights = resolve_weights(architecture, pretrained)
        model, tokenizer, preprocess, config = _build_open_clip(
            architecture, model_config, weights, device
        )
        return cls(
            model,
            tokenizer,
            preprocess,
            architecture=architecture,
            model_config=config if model_config or bundled_config(architecture) else None,
            weights=weights,
            prompt_templates=templates,
            device=device,
        )

    def reference(self) -> dict[str, Any]:
        """JSON-able description that :meth:`from_reference` rebuilds this encoder from."""
        pretrained = self.weights.value
        if self.weights.kind == "local-dir":
            pretrained = f"local-dir:{pretrained}"
        return {
            "architecture": self.architecture,
            "model_config": self.model_config,
            "pretrained": pretrained,
            "prompt_templates": list(self.prompt_templates),
            "embed_dim": self.embed_dim,
        }

    def fingerprint(self) -> str:
        """Hash of architecture + weights (file hash, tag, or the weights themselves).

        Equal fingerprints mean equal image embeddings, so caches of frame embeddings key on it.
        Prompt templates are not part of it (they change text embeddings only).
        """
        if self._fingerprint is None:
            if self.weights.kind == "file":
                weights = "file:" + file_digest(self.weights.value)
            elif self.weights.kind == "tag":
                weights = "tag:" + str(self.weights.value)
            else:  # random init or a local-dir folder: hash what was actually loaded
                weights = "state:" + _sha256_state_dict(self.model)
            payload = json.dumps(
                {
                    "architecture": self.architecture,
                    "config": self.model_config,
                    "weights": weights,
                },
                sort_keys=True,
            )
            self._fingerprint = hashlib.sha256(payload.encode()).hexdigest()[:16]
        return self._fingerprint

    # --- encoding ----------------------------------------------------------------------------

    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            features = self.model.encode_text(tokens.to(self.device)).float()
        return features.clone()  # a normal tensor: usable in autograd graphs downstream

    def encode_text(self, queries: Sequence[str]) -> torch.Tensor:
        """Prompt-ensembled text embeddings ``[B, D]`` (mean over templates, unnormalised)."""
        if isinstance(queries, str) or not queries:
            raise BadInputError("encode_text takes a non-empty list of query strings")
        cleaned = []
        for query in queries:
            if not isinstance(query, str) or not query.strip():
                raise BadInputError(
                    f"empty text query {query!r}: describe the sound to separate, e.g. 'violin'"
                )
            cleaned.append(" ".join(query.split()))
        prompts = [t.replace("{}", q) for q in cleaned for t in self.prompt_templates]
        features = self._encode_tokens(self.tokenizer(prompts))
        return features.view(len(cleaned), len(self.prompt_templates), -1).mean(dim=1)

    def encode_images(self, images, batch_size: int = 64) -> torch.Tensor:
        """Image embeddings ``[B, D]`` from PIL images or a preprocessed ``[B, 3, H, W]`` tensor."""
        pixels = self._pixels(images)
        chunks = []
        for start in range(0, pixels.shape[0], batch_size):
            batch = pixels[start : start + batch_size].to(self.device)
            with torch.inference_mode():
                chunks.append(self.model.encode_image(batch).float())
        return torch.cat(chunks).clone()

    def _pixels(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
                raise BadInputError(
                    f"image tensor must be [B, 3, H, W] with B > 0, got {tuple(images.shape)}"
                )
            return images.float()
        if not images:
            raise BadInputError("encode_images needs at least one image")
        return torch.stack([self.preprocess(image.convert("RGB")) for image in images])
