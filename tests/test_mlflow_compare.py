"""The MLflow UI comparing two registered versions, in a real headless Chromium.

Runs the tiny pipeline twice into a fresh sqlite store (scripts/mlflow_compare_screenshot.py),
starts the real `mlflow server`, and reads the chart view (SDR/SDRi bars, spectrogram image grid)
and the artifact viewer (a logged wav playing) like a person would."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def compare_script():
    spec = importlib.util.spec_from_file_location(
        "mlflow_compare_screenshot", REPO / "scripts" / "mlflow_compare_screenshot.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(2400)
def test_compare_view_shows_both_versions_their_metrics_images_and_audio(
    tmp_path, artifacts_dir, monkeypatch
):
    pytest.importorskip("playwright.sync_api")
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    script = compare_script()
    shot = artifacts_dir / "mlflow-compare.png"
    seen = script.check_compare_view(tmp_path, shot)  # raises if the UI lacks what it checks
    first, second = seen["registered"]
    assert (first["version"], second["version"]) == ("1", "2")
    assert seen["names"] == ["clipsep-v1", "clipsep-v2"]
    # the second version's SDRi as its evaluation wrote it (the first one's metrics.json was
    # overwritten), drawn as a bar of the chart view
    metrics = json.loads((tmp_path / "reports" / "evaluation" / "metrics.json").read_text())
    assert f"{metrics['text']['sdri']['mean']:.2f}" in seen["charts"]["eval/text/sdri/mean"]
    assert f"{metrics['image']['sdri']['mean']:.2f}" in seen["charts"]["eval/image/sdri/mean"]
    # the image grid: the evaluation's example and the training example of both runs
    assert seen["keys"] == ["evaluation/example", "examples/00/spectrogram"]
    # the artifact viewer decoded the whole wav and its player ran
    assert seen["audio"]["duration_s"] == pytest.approx(seen["audio"]["file_s"], abs=0.05)
    assert seen["audio"]["played_s"] > 0
    for path in seen["shots"].values():
        assert path.stat().st_size > 20_000
    # the pipeline run was open from the first stage: world ran in version 1's run, which
    # holds the stages' results; version 2's pass started at train (earlier stages unchanged)
    client = MlflowClient(first["tracking_uri"])
    run_1, run_2 = (client.get_run(r["run_id"]) for r in (first, second))
    assert run_1.data.tags["clipsep.opened_by"] == "world"
    assert run_1.data.tags["clipsep.stage.validate"] == "done"
    assert run_1.data.metrics["validate/n_clips"] > 0
    assert run_2.data.tags["clipsep.opened_by"] == "train"
    assert "clipsep.stage.world" not in run_2.data.tags
    # per-class results are a table artifact, not metrics
    assert not [name for name in run_2.data.metrics if name.startswith("eval/per_class")]
    table = client.download_artifacts(second["run_id"], "evaluation/per_class.csv", str(tmp_path))
    assert len(Path(table).read_text().splitlines()) == 1 + len(metrics["per_class"])
