"""The MLflow UI's compare view of two registered versions, in a real headless Chromium.

Runs the tiny pipeline twice into a fresh sqlite store (scripts/mlflow_compare_screenshot.py),
starts the real `mlflow server`, opens the compare-runs page and reads it like a person would.
"""

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
def test_compare_view_shows_both_versions_and_their_metrics(tmp_path, artifacts_dir, monkeypatch):
    pytest.importorskip("playwright.sync_api")
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    script = compare_script()
    shot = artifacts_dir / "mlflow-compare.png"
    seen = script.check_compare_view(tmp_path, shot)
    first, second = seen["registered"]
    assert (first["version"], second["version"]) == ("1", "2")
    text = seen["page_text"]
    assert "clipsep-v1" in text and "clipsep-v2" in text
    # the second version's absent-query energy as its evaluation wrote it (the first one's
    # metrics.json was overwritten), on the page as the compare table writes it
    metrics = json.loads((tmp_path / "reports" / "evaluation" / "metrics.json").read_text())
    assert script.SHOWN in text
    assert script.metric_text(metrics["absent_query"]["energy_db"]["mean"]) in text
    assert shot.stat().st_size > 20_000
    # the pipeline run was open from the first stage: world ran in version 1's run, which
    # holds the stages' results; version 2's pass started at train (earlier stages unchanged)
    client = MlflowClient(first["tracking_uri"])
    run_1, run_2 = (client.get_run(r["run_id"]) for r in (first, second))
    assert run_1.data.tags["clipsep.opened_by"] == "world"
    assert run_1.data.tags["clipsep.stage.validate"] == "done"
    assert run_1.data.metrics["validate/n_clips"] > 0
    assert run_2.data.tags["clipsep.opened_by"] == "train"
    assert "clipsep.stage.world" not in run_2.data.tags
