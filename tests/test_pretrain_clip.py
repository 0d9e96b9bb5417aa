"""pretrain-clip: contrastive training of the tiny CLIP on a small captioned picture set."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from clipsep.errors import BadInputError
from clipsep.model.pretrain_clip import label_aware_clip_loss, load_captions, pretrain_clip
from clipsep.model.query import QueryEncoder

# One look per class: shape + colour, so a few epochs suffice to tell them apart.
LOOKS = {
    "cello": ("ellipse", (200, 40, 40)),
    "flute": ("rectangle", (40, 90, 220)),
    "trumpet": ("triangle", (230, 200, 30)),
    "xylophone": ("bars", (40, 170, 60)),
}


def draw_picture(label: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A noisy grey background with the class's shape at a random place and size."""
    noise = rng.integers(90, 160, (size, size, 3), dtype=np.uint8)
    picture = Image.fromarray(noise)
    draw = ImageDraw.Draw(picture)
    shape, colour = LOOKS[label]
    side = int(size * rng.uniform(0.45, 0.7))
    x, y = rng.integers(0, size - side, 2)
    box = [int(x), int(y), int(x + side), int(y + side)]
    if shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "rectangle":
        draw.rectangle([box[0], box[1] + side // 3, box[2], box[3] - side // 3], fill=colour)
    elif shape == "triangle":
        draw.polygon(
            [(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour
        )
    else:
        for i in range(4):
            left = box[0] + i * side // 4
            draw.rectangle([left, box[1], left + side // 8, box[3]], fill=colour)
    return picture


def make_caption_set(
    world_dir: Path,
    per_class_train: int = 12,
    per_class_test: int = 4,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write world_dir/captions/{images/*.png, captions.csv} like the world generator does."""
    rng = np.random.default_rng(seed)
    captions_dir = world_dir / "captions"
    (captions_dir / "images").mkdir(parents=True)
    rows = []
    for label in LOOKS:
        for split, count in (("train", per_class_train), ("test", per_class_test)):
            for i in range(count):
                name = f"images/{label}-{split}-{i}.png"
                draw_picture(label, size, rng).save(captions_dir / name)
                caption = ["a {} on stage", "someone playing the {}", "a picture of a {}"][i % 3]
                rows.append(
                    {
                        "image": name,
                        "caption": caption.format(label),
                        "label": label,
                        "split": split,
                    }
                )
    with open(captions_dir / "captions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return world_dir


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """(clip config, world dir, out dir, summary) of one short pretraining run."""
    from conftest import tiny_params_at

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pretrain")
    world = make_caption_set(root / "world")
    cfg = dataclasses.replace(
        tiny_params_at(root).clip, device="cpu", pretrain_epochs=8, pretrain_lr=0.001
    )
    summary = pretrain_clip(cfg, world, root / "clip")
    return cfg, world, root / "clip", summary


def test_pretraining_beats_chance_on_held_out_pictures(pretrained):
    _, _, out_dir, summary = pretrained
    report = json.loads((out_dir / "zero_shot.json").read_text())
    assert report["chance"] == pytest.approx(0.25)
    assert report["n_test"] == 16
    assert summary["zero_shot_accuracy"] == report["accuracy"]
    assert report["accuracy"] >= 0.75, report  # chance is 0.25; measured 1.0 for seeds 0-3
    assert set(report["per_class"]) == set(LOOKS)
    assert all(entry["n"] == 4 for entry in report["per_class"].values())


def test_loss_goes_down_and_curve_is_drawn(pretrained):
    _, _, out_dir, summary = pretrained
    report = json.loads((out_dir / "zero_shot.json").read_text())
    assert summary["steps"] == 8 * 3  # 48 train pictures, batch 16
    assert report["final_loss"] < np.log(16)  # ClipLoss of a model that knows nothing
    with Image.open(out_dir / "loss.png") as image:
        assert image.size[0] > 300
    assert not list(out_dir.glob(".*tmp*")), "temporary files left behind"


def test_checkpoint_loads_in_open_clip_and_in_the_encoder(pretrained):
    import open_clip

    cfg, _, out_dir, _ = pretrained
    state = torch.load(out_dir / "clip.pt", weights_only=True)
    assert set(state) >= {"state_dict"}
    model, _, _ = open_clip.create_model_and_transforms(
        cfg.architecture, pretrained=str(out_dir / "clip.pt")
    )
    encoder = QueryEncoder.from_config(cfg, out_dir / "clip.pt", "cpu")
    tokens = encoder.tokenizer(["a photo of cello."])
    with torch.no_grad():
        direct = model.encode_text(tokens)
    torch.testing.assert_close(encoder._encode_tokens(tokens), direct)


def test_missing_or_broken_caption_csv_is_a_clear_error(tmp_path):
    with pytest.raises(BadInputError, match="clipsep world"):
        load_captions(tmp_path)
    (tmp_path / "captions").mkdir()
    (tmp_path / "captions" / "captions.csv").write_text("image,caption\na.png,a cello\n")
    with pytest.raises(BadInputError, match="missing"):
        load_captions(tmp_path)


def test_label_aware_loss_is_clip_loss_when_labels_differ():
    import open_clip

    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    expected = open_clip.ClipLoss()(images, texts, scale)
    torch.testing.assert_close(
        label_aware_clip_loss(images, texts, scale, torch.arange(6)), expected
    )
    # Two pictures of one class with swapped captions: no penalty for the "wrong" caption.
    same = label_aware_clip_loss(
        images, images[[1, 0, 2, 3, 4, 5]], scale, torch.tensor([0, 0, 1, 2, 3, 4])
    )
    distinct = label_aware_clip_loss(images, images[[1, 0, 2, 3, 4, 5]], scale, torch.arange(6))
    assert same < distinct


def test_building_the_untrained_clip_logs_no_missing_weights_warning(tmp_path, caplog):
    """Random initial weights are the point of pretraining: open_clip's warning about them would
    read as a failure in the quick start's log; other warnings still get through."""
    import logging

    from clipsep.model.pretrain_clip import _untrained_model
    from conftest import tiny_params_at

    with caplog.at_level(logging.WARNING):
        _untrained_model(tiny_params_at(tmp_path).clip, "cpu")
        logging.warning("another warning")
    assert [r.getMessage() for r in caplog.records] == ["another warning"]
