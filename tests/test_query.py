"""QueryEncoder: the frozen open_clip text/image encoder behind every query."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipsep.errors import BadInputError, MissingWeightsError
from clipsep.model.query import QueryEncoder, bundled_config, register_bundled_configs


def save_random_clip(path: Path, architecture: str = "clipsep-tiny", seed: int = 0) -> Path:
    """A randomly initialised open_clip checkpoint, as pretrain-clip would write it."""
    import open_clip

    register_bundled_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model(architecture, pretrained=None)
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def pictures() -> list[Image.Image]:
    return [Image.new("RGB", (80, 80), colour) for colour in ("red", "green", "blue")]


@pytest.fixture(scope="module")
def clip_setup(tmp_path_factory):
    """(clip config, checkpoint path, encoder) built from a random tiny checkpoint."""
    from conftest import tiny_params_at

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("query")
    weights = save_random_clip(root / "clip.pt")
    cfg = dataclasses.replace(tiny_params_at(root).clip, device="cpu")
    return cfg, weights, QueryEncoder.from_config(cfg, weights, "cpu")


def test_embedding_shapes(clip_setup):
    _, _, encoder = clip_setup
    assert encoder.embed_dim == bundled_config("clipsep-tiny")["embed_dim"]
    text = encoder.encode_text(["cello", "acoustic guitar"])
    images = encoder.encode_images(pictures())
    assert text.shape == (2, encoder.embed_dim) and text.dtype == torch.float32
    assert images.shape == (3, encoder.embed_dim)
    assert torch.isfinite(text).all() and torch.isfinite(images).all()


def test_text_query_is_mean_over_prompt_templates(clip_setup):
    _, _, encoder = clip_setup
    assert len(encoder.prompt_templates) > 1
    singles = []
    for template in encoder.prompt_templates:
        ref = {**encoder.reference(), "prompt_templates": [template]}
        singles.append(QueryEncoder.from_reference(ref, "cpu").encode_text(["violin"]))
    expected = torch.stack(singles).mean(dim=0)
    torch.testing.assert_close(encoder.encode_text(["violin"]), expected)
    assert not torch.allclose(singles[0], singles[1])  # the templates really differ


def test_query_order_and_whitespace_do_not_mix_queries(clip_setup):
    _, _, encoder = clip_setup
    both = encoder.encode_text(["flute", "tuba"])
    torch.testing.assert_close(both[1:], encoder.encode_text(["  tuba "]))


@pytest.mark.parametrize("queries", [[""], ["   "], ["cello", ""], [], "cello"])
def test_empty_or_malformed_query_is_rejected(clip_setup, queries):
    _, _, encoder = clip_setup
    with pytest.raises(BadInputError):
        encoder.encode_text(queries)


def test_encoder_is_frozen_and_outputs_are_ordinary_tensors(clip_setup):
    _, _, encoder = clip_setup
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.model.parameters())
    query = encoder.encode_text(["cello"])
    assert not query.requires_grad and not query.is_inference()
    head = torch.nn.Linear(encoder.embed_dim, 1)
    head(query).sum().backward()  # usable as the input of a module being trained
    assert head.weight.grad is not None


def test_images_as_pil_or_preprocessed_tensor_agree(clip_setup):
    _, _, encoder = clip_setup
    batch = torch.stack([encoder.preprocess(p) for p in pictures()])
    torch.testing.assert_close(
        encoder.encode_images(batch), encoder.encode_images(pictures(), batch_size=2)
    )
    with pytest.raises(BadInputError):
        encoder.encode_images(torch.zeros(2, 64, 64))
    with pytest.raises(BadInputError):
        encoder.encode_images([])


def test_reference_round_trip_gives_identical_embeddings(clip_setup, tmp_path):
    _, weights, encoder = clip_setup
    ref = json.loads(json.dumps(encoder.reference()))  # what a checkpoint stores
    assert ref["pretrained"] == str(weights.resolve())
    assert ref["model_config"] == bundled_config("clipsep-tiny")
    rebuilt = QueryEncoder.from_reference(ref, "cpu")
    copied = QueryEncoder.from_reference(ref, "cpu", weights=shutil.copy(weights, tmp_path))
    for other in (rebuilt, copied):
        assert torch.equal(other.encode_text(["cello"]), encoder.encode_text(["cello"]))
        assert torch.equal(other.encode_images(pictures()), encoder.encode_images(pictures()))
        assert other.fingerprint() == encoder.fingerprint()


def test_fingerprint_tracks_the_weights(clip_setup, tmp_path):
    cfg, _, encoder = clip_setup
    other = QueryEncoder.from_config(cfg, save_random_clip(tmp_path / "b.pt", seed=1), "cpu")
    assert other.fingerprint() != encoder.fingerprint()
    assert len(encoder.fingerprint()) == 16


def test_stored_custom_config_loads_without_touching_the_registry(tmp_path):
    """A checkpoint whose config differs from today's clipsep-tiny.json still loads anywhere."""
    import open_clip

    register_bundled_configs()
    small = json.loads(json.dumps(bundled_config("clipsep-tiny")))
    small["embed_dim"] = 32
    small["vision_cfg"]["layers"] = 1
    path = tmp_path / "small.pt"
    torch.save({"state_dict": open_clip.CLIP(**small).state_dict()}, path)
    ref = {
        "architecture": "clipsep-tiny",
        "model_config": small,
        "pretrained": str(path),
        "prompt_templates": ["a photo of {}."],
        "embed_dim": 32,
    }
    encoder = QueryEncoder.from_reference(ref, "cpu")
    assert encoder.encode_text(["cello"]).shape == (1, 32)
    assert open_clip.get_model_config("clipsep-tiny") == bundled_config("clipsep-tiny")
    with pytest.raises(BadInputError, match="32"):
        QueryEncoder.from_reference({**ref, "embed_dim": 64}, "cpu")


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Empty weight caches, and any download attempt fails the test."""
    import huggingface_hub
    import open_clip.pretrained

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", refuse)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_url", refuse)


def test_missing_default_checkpoint_says_to_run_pretrain_clip(clip_setup, tmp_path):
    cfg, _, _ = clip_setup
    with pytest.raises(MissingWeightsError, match="clipsep pretrain-clip"):
        QueryEncoder.from_config(cfg, tmp_path / "models" / "clip.pt", "cpu")


def test_offline_tag_fails_fast_with_instructions(clip_setup, no_network):
    cfg, _, _ = clip_setup
    paper = dataclasses.replace(cfg, architecture="ViT-B-32", pretrained="openai")
    with pytest.raises(MissingWeightsError) as caught:
        QueryEncoder.from_config(paper, None, "cpu")
    message = str(caught.value)
    assert "HF_HUB_OFFLINE" in message and "clip.pretrained" in message


@pytest.mark.parametrize("pretrained", ["no-such-tag", "/nowhere/clip.pt"])
def test_unknown_weights_are_a_clear_error(clip_setup, no_network, pretrained):
    cfg, _, _ = clip_setup
    with pytest.raises(MissingWeightsError, match="neither an existing file nor a known"):
        QueryEncoder.from_config(dataclasses.replace(cfg, pretrained=pretrained), None, "cpu")


def test_unknown_architecture_and_bad_templates(clip_setup):
    cfg, weights, _ = clip_setup
    with pytest.raises(MissingWeightsError, match="unknown CLIP architecture"):
        QueryEncoder.from_config(
            dataclasses.replace(cfg, architecture="no-such-net"), weights, "cpu"
        )
    with pytest.raises(BadInputError, match="prompt_templates"):
        QueryEncoder.from_config(
            dataclasses.replace(cfg, prompt_templates=("a photo",)), weights, "cpu"
        )


def test_a_random_weight_encoder_warns_once_in_its_own_words(caplog):
    """open_clip's "No pretrained weights loaded" is dropped where random weights are meant; the
    encoder's own warning (what it means for queries) stays."""
    import logging

    from conftest import tiny_params_at

    cfg = dataclasses.replace(tiny_params_at(Path("/nonexistent")).clip, device="cpu")
    with caplog.at_level(logging.WARNING):
        QueryEncoder.from_config(cfg, None, "cpu")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "CLIP clipsep-tiny has random weights (clip.pretrained unset and no default checkpoint): "
        "queries carry no meaning"
    ]
