"""Several queries in one pass: stems + residual == input, masks normalised, one U-Net pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipsep.errors import BadInputError
from test_inference import separator, tones  # noqa: F401 - the module's tiny separator fixture


def test_stems_and_residual_sum_to_the_input(separator):  # noqa: F811
    audio = tones(44100, 2.5, 2)
    stems = separator.separate(audio, 44100, queries=["violin", "cello", "acoustic guitar"])
    assert list(stems) == ["violin", "cello", "acoustic guitar"]
    assert all(stem.shape == audio.shape for stem in stems.values())
    assert stems.residual.shape == audio.shape and stems.sample_rate == 44100
    total = sum(stems.values()) + stems.residual
    assert np.abs(total - audio).max() <= 4 * np.finfo(np.float32).eps * np.abs(audio).max()


def test_overlapping_masks_are_normalised(separator):  # noqa: F811
    # a random-init tiny model gives masks near 0.5: three of them overlap, so they are normalised
    # and the residual's mask 1 - sum(masks) is ~0 (at the model's rate nothing lies above Nyquist)
    audio = tones(16000, 2.0, 1)
    stems = separator.separate(audio, 16000, queries=["violin", "cello", "flute"])
    assert np.std(stems.residual) < 0.05 * min(np.std(s) for s in stems.values())
    single = separator.separate(audio, 16000, query="violin")
    assert np.std(single.residual) > 0.3 * np.std(audio)  # one mask near 0.5 is kept as it is


def test_one_query_among_several_equals_the_single_query_result_when_masks_do_not_overlap(
    separator,  # noqa: F811
):
    audio = tones(16000, 2.0, 1)[0]
    single = separator.separate(audio, 16000, query="flute")
    stems = separator.separate(audio, 16000, queries=["flute"])
    np.testing.assert_allclose(stems["flute"], single.target, atol=1e-6)
    np.testing.assert_allclose(stems.residual, single.residual, atol=1e-6)


def test_normalised_masks_never_sum_above_one():
    from clipsep.inference import normalise_masks

    masks = torch.tensor([[0.9, 0.2, 0.6], [0.8, 0.3, 0.4]])
    out = normalise_masks(masks)
    assert torch.all(out.sum(0) <= 1.0 + 1e-6)
    torch.testing.assert_close(out[:, 1], masks[:, 1])  # sum 0.5: kept
    torch.testing.assert_close(out[:, 0], masks[:, 0] / 1.7)  # sum 1.7: divided
    torch.testing.assert_close(out[:, 2], masks[:, 2])  # sum exactly 1: kept


def test_one_unet_pass_per_segment_for_all_queries(separator, monkeypatch):  # noqa: F811
    calls = []
    unet = separator.network.unet
    original = unet.forward_with_tap  # the U-Net's one pass (forward calls it too)
    monkeypatch.setattr(
        unet,
        "forward_with_tap",
        lambda x, tap_stride: calls.append(x.shape) or original(x, tap_stride),
    )
    audio = tones(16000, 3.0, 1)
    separator.separate(audio, 16000, queries=["violin", "cello", "flute"])
    assert len(calls) == separator.plan(16000, audio.shape[1]).n_chunks


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"queries": []}, "no query"),
        ({"queries": ["cello", " cello "]}, "twice"),
        ({"queries": ["cello", ""]}, "empty"),
        ({"queries": ["a"], "query": "b"}, "not both"),
    ],
)
def test_bad_query_lists_are_refused(separator, kwargs, message):  # noqa: F811
    with pytest.raises(BadInputError, match=message):
        separator.separate(tones(16000, 1.0, 1), 16000, **kwargs)


def test_image_query_joins_text_queries(separator):  # noqa: F811
    from PIL import Image

    picture = Image.fromarray(np.full((32, 32, 3), 200, np.uint8))
    stems = separator.separate(tones(16000, 1.5, 1), 16000, queries=["cello"], image=picture)
    assert list(stems) == ["cello", "image"]
    with pytest.raises(BadInputError, match=r"the query 'image' would write the image query"):
        separator.separate(tones(16000, 1.5, 1), 16000, queries=[" image"], image=picture)
    only = separator.separate(tones(16000, 1.5, 1), 16000, queries=["image"])  # no image: a text
    assert list(only) == ["image"]


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_integer_stems_round_to_nearest_and_sum_to_the_pcm_input_exactly(
    separator,  # noqa: F811
    tmp_path,
    subtype,
    fmt,
):
    """libsndfile rounds float to integer PCM down (a half-step bias in every file): the stems
    are rounded to the nearest step here, and the residual takes what is left of the input."""
    import soundfile as sf

    from clipsep import outputs

    path = tmp_path / f"mix.{fmt}"
    sf.write(path, tones(44100, 2.0, 2).T, 44100, subtype=subtype)
    queries = ["violin", "cello"]
    separator.separate_file(
        path, tmp_path / "out", queries=queries, output=outputs.OutputFormat(fmt)
    )
    scale = outputs.PCM_STEPS[subtype][0]
    bits = {"PCM_16": 16, "PCM_24": 24}[subtype]

    def steps(file):  # the file's integers (int32 reads them left-aligned)
        data, _ = sf.read(file, dtype="int32", always_2d=True)
        return data.T.astype(np.int64) >> (32 - bits)

    folder = tmp_path / "out" / "mix"
    written = {name: steps(folder / f"{name}.{fmt}") for name in [*queries, "residual"]}
    np.testing.assert_array_equal(sum(written.values()), steps(path))
    if subtype == "PCM_16":  # each stem within half a step of what the float pipeline gives
        quantised, _ = sf.read(path, dtype="float32", always_2d=True)
        stems = separator.separate(quantised.T, 44100, queries=queries)
        for name in queries:
            error = written[name] - stems[name].astype(np.float64) * scale
            assert np.abs(error).max() <= 0.5 + 1e-3
            assert abs(error.mean()) < 0.05  # no bias (rounding down gave -0.5)
