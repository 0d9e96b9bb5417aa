"""The MLflow pyfunc form of a separator (what each registered ``clipsep`` model version holds).

Artifacts: ``checkpoint`` (the self-describing separation checkpoint) and, when the checkpoint's
CLIP reference is a local file, ``clip_weights``. ``predict`` takes a DataFrame with columns
``audio`` (path of a wav/flac/video file) and ``query`` (text) and returns a DataFrame with the
``target`` and ``residual`` wav paths it wrote (under params ``out_dir``, default a fresh temp dir).
Kept apart from :mod:`clipsep.tracking` because it must subclass mlflow's PythonModel at import.
A version holds it as "models from code" (:data:`MODEL_CODE`, https://mlflow.org/docs/latest/ml/
model/models-from-code/); versions registered before hold a cloudpickled instance and still load.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

# where predict writes when no out_dir is given and this is set (the registration's smoke test)
SCRATCH_ENV = "CLIPSEP_PYFUNC_SCRATCH"
# MLflow's "models from code" file that each registered version holds and runs to build its model
# (instead of a cloudpickled object, which MLflow warns may run arbitrary code when loaded)
MODEL_CODE = str(Path(__file__).with_name("registry_model_code.py"))


def _safe_stem(path: str, index: int) -> str:
    return f"{index:03d}-" + re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem)[:60]


class ClipSepPyfunc(mlflow.pyfunc.PythonModel):
    """Registry wrapper around :class:`clipsep.inference.Separator` (loaded once per device)."""

    def load_context(self, context) -> None:
        self.checkpoint = Path(context.artifacts["checkpoint"])
        clip = context.artifacts.get("clip_weights")
        self.clip_weights = Path(clip) if clip else None
        self._separators: dict[str, Any] = {}

    def _separator(self, device: str):
        if device not in self._separators:
            from clipsep.inference import Separator

            self._separators[device] = Separator.from_pretrained(
                str(self.checkpoint), device=device, clip_weights=self.clip_weights
            )
        return self._separators[device]

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """model_input rows (audio path, query text) -> rows (target wav, residual wav paths)."""
        from clipsep.audio_io import read_audio, write_wav

        params = params or {}
        out_dir = Path(
            params.get("out_dir")
            or os.environ.get(SCRATCH_ENV)
            or tempfile.mkdtemp(prefix="clipsep-pyfunc-")
        )
        separator = self._separator(str(params.get("device") or "auto"))
        rows = []
        pairs = zip(model_input["audio"], model_input["query"])
        for index, (audio_path, query) in enumerate(pairs):
            audio, sample_rate = read_audio(audio_path)
            result = separator.separate(audio, sample_rate, query=str(query))
            folder = out_dir / _safe_stem(str(audio_path), index)
            rate = result.sample_rate
            target = write_wav(folder / "target.wav", result.target, rate)
            residual = write_wav(folder / "residual.wav", result.residual, rate)
            rows.append({"target": str(target), "residual": str(residual)})
        return pd.DataFrame(rows, columns=["target", "residual"])
