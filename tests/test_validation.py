"""Data tier: the Great Expectations gate over the clip manifest, with planted faults."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from clipsep.data.validation import validate_clips
from clipsep.errors import BadInputError, ValidationFailed

N_CLIPS = 8
N_FRAMES = 6


def write_clips(clips_dir: Path, manifest: pd.DataFrame, quarantine: pd.DataFrame) -> None:
    """Lay out a clips folder as ingest does: files on disk + manifest.csv + quarantine.csv."""
    for row in manifest.itertuples():
        audio = clips_dir / row.audio_path
        audio.parent.mkdir(parents=True, exist_ok=True)
        audio.write_bytes(b"RIFF")  # existence is what the gate checks, not decodability
        frames = clips_dir / row.frames_dir
        frames.mkdir(parents=True, exist_ok=True)
        for i in range(1, N_FRAMES + 1):
            (frames / f"{i:06d}.jpg").write_bytes(b"\xff\xd8")
    manifest.to_csv(clips_dir / "manifest.csv", index=False)
    quarantine.to_csv(clips_dir / "quarantine.csv", index=False)


def good_manifest() -> pd.DataFrame:
    ids = [f"c{i:03d}" for i in range(N_CLIPS)]
    return pd.DataFrame(
        {
            "clip_id": ids,
            "source": [f"train/w{i:05d}.mp4" for i in range(N_CLIPS)],
            "source_hash": [f"{i:064x}" for i in range(N_CLIPS)],
            "split": ["train"] * 5 + ["val", "test", "interference"],
            "start_s": [0.0] * N_CLIPS,
            "duration_s": [6.0] * N_CLIPS,
            "audio_path": [f"audio/{c}.wav" for c in ids],
            "frames_dir": [f"frames/{c}" for c in ids],
            "n_frames": [N_FRAMES] * N_CLIPS,
            "sample_rate": [16000] * N_CLIPS,
            "rms_db": [-20.0 - i for i in range(N_CLIPS)],
            "label": ["cello", "flute", "", "trumpet", "cello", "", "flute", ""],
        }
    )


def good_quarantine() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source": ["train/bad.mp4"],
            "source_hash": ["f" * 64],
            "reason": ["corrupt"],
            "detail": ["no video stream"],
        }
    )


@pytest.fixture
def cfg(tiny_params):
    return dataclasses.replace(
        tiny_params.validate, allowed_labels=("cello", "flute", "trumpet", "xylophone")
    )


def test_good_clips_pass_and_reports_are_offline(tmp_path, cfg):
    write_clips(tmp_path / "clips", good_manifest(), good_quarantine())
    summary = validate_clips(tmp_path / "clips", tmp_path / "val", cfg)
    assert summary["success"] and summary["n_clips"] == N_CLIPS
    result = json.loads((tmp_path / "val" / "result.json").read_text())
    assert result["success"] and result["failed_expectations"] == 0
    assert result["statistics"]["quarantine_share"] == pytest.approx(1 / (N_CLIPS + 1))
    assert {"expectation", "column", "kwargs", "success", "unexpected_count"} <= set(
        result["expectations"][0]
    )
    assert any(r["column"] == "label" for r in result["expectations"])
    for name in ("report.md", "report.html"):
        text = (tmp_path / "val" / name).read_text()
        assert "PASSED" in text and "http" not in text


def _rows(**changes):
    """A fault that sets column values on the first rows: changes = {column: [values...]}."""

    def plant(manifest, quarantine, clips_dir):
        for column, values in changes.items():
            manifest[column] = manifest[column].astype(object)
            manifest.loc[: len(values) - 1, column] = values
        return manifest, quarantine

    return plant


def _too_many_quarantined(manifest, quarantine, clips_dir):
    extra = pd.DataFrame(
        {
            "source": [f"train/q{i}.mp4" for i in range(N_CLIPS)],
            "source_hash": ["e" * 64] * N_CLIPS,
            "reason": ["silent"] * N_CLIPS,
            "detail": [""] * N_CLIPS,
        }
    )
    return manifest, pd.concat([quarantine, extra])


def _delete_files(manifest, quarantine, clips_dir):
    (clips_dir / "audio" / "c001.wav").unlink()
    (clips_dir / "frames" / "c002" / f"{N_FRAMES:06d}.jpg").unlink()
    return manifest, quarantine


def _duplicate_video(manifest, quarantine, clips_dir):
    manifest.loc[1, "source_hash"] = manifest.loc[0, "source_hash"]  # same bytes, other path
    return manifest, quarantine


def _too_few_clips(manifest, quarantine, clips_dir):
    return manifest.iloc[:2], quarantine


FAULTS = {
    "wrong sample rate": (_rows(sample_rate=[44100]), ["sample_rate", "16000 Hz", "44100"]),
    "too short": (_rows(duration_s=[1.5]), ["duration_s", "1.5"]),
    "too few frames": (_rows(n_frames=[2]), ["expect_column_values_to_be_between(n_frames)"]),
    "duplicate hash": (_duplicate_video, ["expect_compound_columns_to_be_unique", "source_hash"]),
    "too many silent": (_rows(rms_db=[-70.0]), ["silent_share"]),
    "unknown label": (_rows(label=["kazoo"]), ["(label)", "kazoo"]),
    "quarantine rate": (_too_many_quarantined, ["quarantine_share"]),
    "missing files": (_delete_files, ["(audio_exists)", "(frames_exist)"]),
    "NaN values": (_rows(rms_db=[float("nan")]), ["expect_column_values_to_not_be_null(rms_db)"]),
    "junk number": (_rows(n_frames=["six"]), ["expect_column_values_to_be_in_type_list(n_frames)"]),
    "too few clips": (_too_few_clips, ["expect_table_row_count_to_be_between"]),
    "missing column": (
        lambda m, q, d: (m.drop(columns=["rms_db"]), q),
        ["expect_table_columns_to_match_set", "rms_db"],
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_planted_fault_fails_naming_its_expectation(tmp_path, cfg, fault):
    plant, words = FAULTS[fault]
    clips_dir = tmp_path / "clips"
    write_clips(clips_dir, good_manifest(), good_quarantine())
    manifest, quarantine = plant(good_manifest(), good_quarantine(), clips_dir)
    manifest.to_csv(clips_dir / "manifest.csv", index=False)
    quarantine.to_csv(clips_dir / "quarantine.csv", index=False)
    with pytest.raises(ValidationFailed) as err:
        validate_clips(clips_dir, tmp_path / "val", cfg)
    for word in words:
        assert word in str(err.value), f"{fault}: {word!r} not in {err.value}"
    # the reports are written before the stage fails, so a person can read why
    result = json.loads((tmp_path / "val" / "result.json").read_text())
    assert not result["success"] and result["failed_expectations"] >= 1
    html = (tmp_path / "val" / "report.html").read_text()
    assert "FAILED" in html and "http" not in html


def test_missing_manifest_is_a_clear_error(tmp_path, cfg):
    (tmp_path / "clips").mkdir()
    with pytest.raises(BadInputError, match="clipsep ingest"):
        validate_clips(tmp_path / "clips", tmp_path / "val", cfg)


def test_labels_are_not_checked_without_allowed_labels(tmp_path, tiny_params):
    assert tiny_params.validate.allowed_labels is None
    clips_dir = tmp_path / "clips"
    write_clips(
        clips_dir, _rows(label=["kazoo"])(good_manifest(), None, clips_dir)[0], good_quarantine()
    )
    assert validate_clips(clips_dir, tmp_path / "val", tiny_params.validate)["success"]
    shutil.rmtree(clips_dir)
