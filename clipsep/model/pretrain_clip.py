"""Contrastive pretraining of the embedded world's tiny CLIP on its captioned pictures.

The paper uses OpenAI's ViT-B/32, which knows what a violin looks like. The embedded world's
instruments are drawn pictures no public CLIP has seen (and the project runs offline), so this
stage trains a small open_clip model (``clip.architecture``, e.g. the bundled ``clipsep-tiny``)
from scratch on ``captions/captions.csv`` with open_clip's contrastive loss (made label-aware: see
:func:`label_aware_clip_loss`), saves it as a normal open_clip checkpoint (``clip.pt``, loadable
with ``pretrained=<path>``) and reports its zero-shot accuracy on the held-out pictures: each
test picture is assigned the class whose prompt-ensembled text embedding is closest (cosine),
exactly as the separator's text queries are built.

Outputs in ``out_dir``: ``clip.pt``, ``model_config.json``, ``zero_shot.json``, ``loss.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from PIL import Image

from clipsep.config import CLIP_CHECKPOINT, ClipConfig
from clipsep.env import headless_pyplot, resolve_device
from clipsep.precision import PrecisionChoice, autocast, resolve_precision
from clipsep.errors import BadInputError
from clipsep.model.query import (
    QueryEncoder,
    bundled_config,
    random_init_expected,
    register_bundled_configs,
)
from clipsep.fileio import atomic_path, torch_save, write_json

log = logging.getLogger(__name__)

CAPTION_COLUMNS = ("image", "caption", "label", "split")
WARMUP_SHARE = 0.1  # share of steps with linear LR warm-up before the cosine decay
MAX_LOGIT_SCALE = math.log(100.0)  # open_clip's clamp of the learned temperature


@dataclass
class CaptionSet:
    """Captioned pictures of one split: parallel lists of RGB images, captions and class labels."""

    images: list[Image.Image]
    captions: list[str]
    labels: list[str]


def load_captions(world_dir: Path) -> dict[str, CaptionSet]:
    """Read ``world_dir/captions/captions.csv`` into ``{"train": ..., "test": ...}`` CaptionSets."""
    csv_path = Path(world_dir) / "captions" / "captions.csv"
    if not csv_path.is_file():
        raise BadInputError(f"no captioned pictures at {csv_path}: run `clipsep world` first")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in CAPTION_COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise BadInputError(
            f"{csv_path}: needs rows with columns {list(CAPTION_COLUMNS)}"
            + (f"; missing {missing}" if missing else "; it is empty")
        )
    splits = {"train": CaptionSet([], [], []), "test": CaptionSet([], [], [])}
    for row in rows:
        if row["split"] not in splits:
            raise BadInputError(f"{csv_path}: split must be train or test, got {row['split']!r}")
        with Image.open(csv_path.parent / row["image"]) as image:
            picture = image.convert("RGB")
        target = splits[row["split"]]
        target.images.append(picture)
        target.captions.append(row["caption"])
        target.labels.append(row["label"])
    for name, part in splits.items():
        if not part.images:
            raise BadInputError(f"{csv_path}: no pictures in the {name} split")
    return splits


def _optimizer(model: torch.nn.Module, cfg: ClipConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on weight matrices only (open_clip_train's grouping)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        exempt = param.ndim < 2 or "logit_scale" in name or "bias" in name or "ln" in name
        (no_decay if exempt else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.pretrain_weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.pretrain_lr, betas=(0.9, 0.98), eps=1e-6)


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int):
    """Linear warm-up, then cosine decay to zero."""
    warmup = max(1, int(WARMUP_SHARE * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def label_aware_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    label_ids: torch.Tensor,
) -> torch.Tensor:
    """open_clip's ClipLoss, except that a caption with the picture's own label is no negative.

    image_features, text_features: [B, D] L2-normalised; label_ids: [B] ints. A batch of 64 over
    10 classes holds ~5 same-class captions per picture; plain ClipLoss pushes the picture away
    from them, which contradicts what the encoder should learn (and measurably slows it). Targets
    are spread uniformly over the same-label pairs, so with all labels distinct this *is* ClipLoss.
    """
    logits = logit_scale * image_features @ text_features.T  # [B, B]
    same = (label_ids[:, None] == label_ids[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)
    return (
        torch.nn.functional.cross_entropy(logits, target)
        + torch.nn.functional.cross_entropy(logits.T, target.T)
    ) / 2


def _train(
    model: torch.nn.Module,
    data: CaptionSet,
    train_transform: Callable,
    tokenizer,
    cfg: ClipConfig,
    device: str,
    precision: str = "fp32",
) -> list[float]:
    """Run ``cfg.pretrain_epochs`` epochs of the contrastive loss; returns every step's loss.

    ``precision`` is a resolved mode (fp32 | bf16 | fp16) for the forward pass; the loss is fp32.
    """
    from clipsep.progress import bar as progress_bar

    tokens, label_ids = _encode_captions(data, tokenizer)
    n = len(data.images)
    batch = min(cfg.pretrain_batch_size, n)
    steps_per_epoch = max(1, n // batch)  # drop the ragged last batch: ClipLoss wants >1 pair
    optimizer = _optimizer(model, cfg)
    scheduler = _schedule(optimizer, cfg.pretrain_epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(cfg.pretrain_seed)
    losses: list[float] = []
    model.train()
    with progress_bar(
        total=cfg.pretrain_epochs * steps_per_epoch, desc="pretrain-clip", unit="step"
    ) as bar:
        for _ in range(cfg.pretrain_epochs):
            for index in _epoch_batches(n, batch, steps_per_epoch, generator):
                pixels = torch.stack([train_transform(data.images[i]) for i in index.tolist()])
                loss = _contrastive_loss(
                    model, pixels, tokens[index], label_ids[index], device, precision
                )
                _update(model, optimizer, scheduler, loss)
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def _encode_captions(data: CaptionSet, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """The captions' tokens ``[N, context_length]`` and class ids ``[N]`` (classes sorted)."""
    classes = sorted(set(data.labels))
    label_ids = torch.tensor([classes.index(label) for label in data.labels])
    return tokenizer(data.captions), label_ids


def _epoch_batches(
    n: int, batch: int, steps: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """``steps`` batches of ``batch`` indices ``[batch]`` from one shuffle of ``range(n)``."""
    order = torch.randperm(n, generator=generator)
    for step in range(steps):
        yield order[step * batch : (step + 1) * batch]


def _contrastive_loss(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    tokens: torch.Tensor,
    label_ids: torch.Tensor,
    device: str,
    precision: str,
) -> torch.Tensor:
    """The label-aware ClipLoss (fp32) of one batch: pictures ``[B, 3, H, W]``, tokens
    ``[B, context_length]``, class ids ``[B]``; the forward pass runs in ``precision``."""
    with autocast(precision, device):
        image_features, text_features, logit_scale = model(pixels.to(device), tokens.to(device))[:3]
    return label_aware_clip_loss(
        image_features.float(), text_features.float(), logit_scale.float(), label_ids.to(device)
    )


def _update(model: torch.nn.Module, optimizer, scheduler, loss: torch.Tensor) -> None:
    """One optimiser and schedule step on ``loss``, then open_clip's clamp of the temperature."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def zero_shot(encoder: QueryEncoder, data: CaptionSet, classes: list[str]) -> dict[str, Any]:
    """Accuracy of picture -> closest class text embedding (cosine), overall and per class."""
    text = torch.nn.functional.normalize(encoder.encode_text(classes), dim=-1)  # [K, D]
    images = torch.nn.functional.normalize(encoder.encode_images(data.images), dim=-1)  # [N, D]
    predicted = (images @ text.T).argmax(dim=-1).tolist()
    truth = [classes.index(label) for label in data.labels]
    per_class = {}
    for k, name in enumerate(classes):
        hits = [p == t for p, t in zip(predicted, truth) if t == k]
        per_class[name] = {"accuracy": sum(hits) / len(hits) if hits else None, "n": len(hits)}
    correct = sum(p == t for p, t in zip(predicted, truth))
    return {"accuracy": correct / len(truth), "n": len(truth), "per_class": per_class}


def _plot_losses(losses: list[float], steps_per_epoch: int, path: Path) -> None:
    """Per-step ClipLoss (thin) and its per-epoch mean (thick) against the epoch."""
    plt = headless_pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [(i + 1) / steps_per_epoch for i in range(len(losses))]
    ax.plot(epochs, losses, lw=0.8, alpha=0.5, label="step")
    means = [
        sum(losses[i : i + steps_per_epoch]) / steps_per_epoch
        for i in range(0, len(losses) - steps_per_epoch + 1, steps_per_epoch)
    ]
    ax.plot(range(1, len(means) + 1), means, lw=2, marker="o", ms=3, label="epoch mean")
    ax.set(xlabel="epoch", ylabel="label-aware ClipLoss", title="tiny CLIP pretraining")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


@dataclass
class _TrainingRun:
    """What a pretraining run leaves besides the weights, for the loss plot and the report."""

    losses: list[float]  # every step's loss
    steps_per_epoch: int
    seconds: float  # from the start of pretrain_clip (reading the captions included)
    device: str
    precision: PrecisionChoice


def pretrain_clip(cfg: ClipConfig, world_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Train ``cfg.architecture`` from scratch on the world's captioned pictures; see module doc.

    Writes ``out_dir/clip.pt`` as ``{"state_dict": ...}`` (open_clip-loadable) and
    ``out_dir/zero_shot.json``; returns a summary with the held-out zero-shot accuracy.
    """
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    splits = load_captions(Path(world_dir))
    classes = sorted(set(splits["train"].labels) | set(splits["test"].labels))
    model, run = _train_from_scratch(cfg, splits["train"], len(classes), device, started)
    out_dir = Path(out_dir)
    checkpoint = _save_model(model, cfg, out_dir)
    _plot_losses(run.losses, run.steps_per_epoch, out_dir / "loss.png")
    report = _zero_shot_report(cfg, checkpoint, splits, classes, run)
    _write_zero_shot(report, out_dir)
    return _summary(report, checkpoint, len(splits["train"].images), started)


def _train_from_scratch(
    cfg: ClipConfig, data: CaptionSet, n_classes: int, device: str, started: float
) -> tuple[torch.nn.Module, _TrainingRun]:
    """A fresh ``cfg.architecture`` trained on ``data``; its seconds count from ``started``."""
    model, train_transform, tokenizer = _untrained_model(cfg, device)
    log.info(
        "pretraining CLIP %s on %d pictures (%d classes) for %d epochs on %s",
        cfg.architecture,
        len(data.images),
        n_classes,
        cfg.pretrain_epochs,
        device,
    )
    precision = resolve_precision(cfg.precision, device)
    losses = _train(model, data, train_transform, tokenizer, cfg, device, precision.mode)
    seconds = time.perf_counter() - started
    steps_per_epoch = max(1, len(losses) // max(1, cfg.pretrain_epochs))
    return model, _TrainingRun(losses, steps_per_epoch, seconds, device, precision)


def _untrained_model(cfg: ClipConfig, device: str) -> tuple[torch.nn.Module, Callable, Any]:
    """(model, train transform, tokenizer) of ``cfg.architecture``, seeded, without weights."""
    import open_clip
    from torchvision import transforms

    torch.manual_seed(cfg.pretrain_seed)
    register_bundled_configs()
    with random_init_expected():  # the point here: pretraining starts from random weights
        model, train_transform, _ = open_clip.create_model_and_transforms(
            cfg.architecture,
            pretrained=None,
            device=device,
            aug_cfg={"scale": tuple(cfg.pretrain_crop_scale)},
        )
    # Instruments look the same mirrored; flips double the few pictures each class has.
    train_transform = transforms.Compose([transforms.RandomHorizontalFlip(), train_transform])
    return model, train_transform, open_clip.get_tokenizer(cfg.architecture)


def _save_model(model: torch.nn.Module, cfg: ClipConfig, out_dir: Path) -> Path:
    """Write ``out_dir/clip.pt`` (CPU weights) and ``out_dir/model_config.json``; the .pt path."""
    import open_clip

    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / CLIP_CHECKPOINT
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch_save({"state_dict": state, "epoch": cfg.pretrain_epochs}, checkpoint)
    write_json(out_dir / "model_config.json", open_clip.get_model_config(cfg.architecture))
    return checkpoint


def _zero_shot_report(
    cfg: ClipConfig,
    checkpoint: Path,
    splits: dict[str, CaptionSet],
    classes: list[str],
    run: _TrainingRun,
) -> dict[str, Any]:
    """The content of zero_shot.json: held-out (and train) zero-shot accuracy of ``checkpoint``."""
    # Evaluate the file just written, through the same encoder the separator uses.
    encoder = QueryEncoder.from_config(
        dataclasses.replace(cfg, pretrained=str(checkpoint)), None, run.device
    )
    test = zero_shot(encoder, splits["test"], classes)
    train = zero_shot(encoder, splits["train"], classes)
    return {
        "architecture": cfg.architecture,
        "model_config": bundled_config(cfg.architecture),
        "accuracy": test["accuracy"],
        "chance": 1.0 / len(classes),
        "n_test": test["n"],
        "per_class": test["per_class"],
        "train_accuracy": train["accuracy"],
        "classes": classes,
        "prompt_templates": list(cfg.prompt_templates),
        "epochs": cfg.pretrain_epochs,
        "steps": len(run.losses),
        "final_loss": sum(run.losses[-run.steps_per_epoch :]) / run.steps_per_epoch,
        "train_seconds": round(run.seconds, 1),
        "device": run.device,
        "precision": run.precision.mode,
        "precision_reason": run.precision.reason,
    }


def _write_zero_shot(report: dict[str, Any], out_dir: Path) -> None:
    """Write ``out_dir/zero_shot.json`` and log its held-out accuracy against chance."""
    write_json(out_dir / "zero_shot.json", report)
    log.info(
        "tiny CLIP zero-shot accuracy on %d held-out pictures: %.1f%% (chance %.1f%%)",
        report["n_test"],
        100 * report["accuracy"],
        100 * report["chance"],
    )


def _summary(
    report: dict[str, Any], checkpoint: Path, n_train: int, started: float
) -> dict[str, Any]:
    """What pretrain_clip returns: the report's headline numbers, seconds since ``started``."""
    return {
        "checkpoint": str(checkpoint),
        "zero_shot_accuracy": report["accuracy"],
        "chance": report["chance"],
        "train_accuracy": report["train_accuracy"],
        "n_train": n_train,
        "n_test": report["n_test"],
        "steps": report["steps"],
        "final_loss": report["final_loss"],
        "seconds": round(time.perf_counter() - started, 1),
    }
