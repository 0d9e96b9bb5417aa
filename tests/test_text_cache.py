"""Text-query embeddings cached on disk: a hit equals the encoder's output, a changed CLIP or
template misses, and a repeated `clipsep separate` never imports open_clip (or mlflow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

from conftest import REPO
from test_inference import make_tiny_model, tones

# prints which heavy packages the CLI call imported (after running it in this fresh process)
PROBE = """
import json, sys
from clipsep.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as done:
    status = done.code
heavy = ("open_clip", "mlflow", "torchvision", "scipy.signal", "torch")
print(json.dumps({"status": status, "imported": [m for m in heavy if m in sys.modules]}))
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model"))


def reference_of(checkpoint: Path) -> dict:
    from clipsep.model.factory import load_checkpoint

    return load_checkpoint(checkpoint, "cpu")[1].query


def cached_encoder(checkpoint: Path, cache: Path, weights: Path | None = None):
    from clipsep.model.text_cache import CachedQueryEncoder

    return CachedQueryEncoder(reference_of(checkpoint), "cpu", cache, weights=weights)


def real_embedding(checkpoint: Path, query: str, weights: Path | None = None) -> torch.Tensor:
    from clipsep.model.query import QueryEncoder

    encoder = QueryEncoder.from_reference(reference_of(checkpoint), "cpu", weights=weights)
    return encoder.encode_text([query])


def test_cache_hit_equals_the_encoder_and_builds_no_clip(model, tmp_path):
    checkpoint, _ = model
    expected = real_embedding(checkpoint, "acoustic guitar")
    first = cached_encoder(checkpoint, tmp_path)
    assert torch.equal(first.encode_text(["acoustic  guitar "]), expected)  # miss: computed
    again = cached_encoder(checkpoint, tmp_path)
    hit = again.encode_text(["acoustic guitar"])
    assert again._encoder is None  # answered from the cache: no CLIP built
    assert hit.dtype == torch.float32 and hit.shape == expected.shape
    assert torch.equal(hit, expected)  # bit for bit
    assert len(list((tmp_path / "text-embeddings").glob("*.npy"))) == 1


def test_cache_misses_when_the_clip_weights_or_templates_change(model, tmp_path):
    checkpoint, clip = model
    weights = tmp_path / "clip.pt"
    weights.write_bytes(clip.read_bytes())
    before = cached_encoder(checkpoint, tmp_path / "cache", weights).encode_text(["cello"])
    state = torch.load(weights, weights_only=True)
    state["state_dict"] = {k: v + 0.01 for k, v in state["state_dict"].items()}
    torch.save(state, weights)  # same path, new weights
    changed = cached_encoder(checkpoint, tmp_path / "cache", weights)
    after = changed.encode_text(["cello"])
    assert changed._encoder is not None  # a miss: the new weights were loaded
    assert torch.equal(after, real_embedding(checkpoint, "cello", weights))
    assert not torch.allclose(after, before)

    from clipsep.model.text_cache import CachedQueryEncoder

    reference = {**reference_of(checkpoint), "prompt_templates": ["the sound of {}."]}
    other = CachedQueryEncoder(reference, "cpu", tmp_path / "cache", weights=weights)
    assert other.cache.path("cello") != changed.cache.path("cello")


def test_missing_clip_weights_fail_at_load(model, tmp_path):
    from clipsep.errors import MissingWeightsError

    checkpoint, _ = model
    with pytest.raises(MissingWeightsError):
        cached_encoder(checkpoint, tmp_path, weights=tmp_path / "absent.pt")


def probe(args: list[str], tmp_path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_and_a_repeated_query_import_no_open_clip(model, tmp_path):
    checkpoint, clip = model
    helped = probe(["separate", "--help"], tmp_path)
    assert helped == {"status": 0, "imported": []}
    mix = tmp_path / "mix.wav"
    sf.write(mix, tones(44100, 2.0, channels=2).T, 44100)
    args = ["separate", str(mix), "--query", "cello", "--model", str(checkpoint)]
    args += ["--clip-weights", str(clip), "--out", str(tmp_path / "out"), "--overwrite"]
    args += ["--params", str(REPO / "params.yaml"), "--profile", "tiny"]
    args += ["--set", "separate.device=cpu"]
    first = probe(args, tmp_path)
    assert first["status"] == 0 and "open_clip" in first["imported"]
    target = sf.read(tmp_path / "out" / "mix" / "target.wav")[0]
    repeated = probe(args, tmp_path)
    assert repeated["status"] == 0
    assert "open_clip" not in repeated["imported"] and "mlflow" not in repeated["imported"]
    assert (sf.read(tmp_path / "out" / "mix" / "target.wav")[0] == target).all()
