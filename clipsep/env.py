"""Offline and telemetry-off defaults, applied by entry points (CLI, flows, app, tests) before
heavy imports."""

from __future__ import annotations

import os

# HF_HUB_OFFLINE must be set before huggingface_hub (via open_clip) is imported, or a missing
# weight file costs ~46 s of retries. The telemetry switches are the ones each tool documents.
OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "GX_ANALYTICS_ENABLED": "False",
    "DVC_NO_ANALYTICS": "1",
}


def apply_offline_defaults() -> None:
    """Set each variable unless the user already chose a value."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; anything else is returned as given."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def headless_pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend: every figure here is written to a
    file (PNG), never shown, so plotting works on a server without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
