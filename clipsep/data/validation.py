"""The data gate: a Great Expectations suite over the clip manifest, with reports a person can read.

``validate_clips`` reads ``manifest.csv`` and ``quarantine.csv`` from the clips folder (columns in
docs/CONTRACTS.md, "Clips"), runs two GX suites and writes ``result.json`` (machine-readable),
``report.md`` and ``report.html`` (self-contained: inline CSS, no network; the stock Data Docs fetch
their CSS and JS from CDNs). When an expectation fails it raises :class:`ValidationFailed` naming
the failing expectations, *after* the reports are written.

Two tables are validated, so every check appears uniformly in one list:
  * the manifest itself, one row per clip, plus two derived columns (``audio_exists``,
    ``frames_exist``) from checking each clip's files on disk;
  * a one-row table of dataset statistics (silent share, quarantine share, ...) for checks that
    are about the whole dataset rather than one clip.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

from clipsep.config import ValidateConfig
from clipsep.data.ingest import MANIFEST_COLUMNS  # the columns ingest writes
from clipsep.errors import BadInputError, ValidationFailed
from clipsep.fileio import write_json, write_text

log = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ("source", "source_hash", "reason", "detail")
TEXT_COLUMNS = ("clip_id", "source", "source_hash", "split", "audio_path", "frames_dir", "label")
SPLITS = ("train", "val", "test", "interference")
# pandas reads whole numbers as int64 and decimals as float64; anything else means junk in the
# column
INT_TYPES = ["int64", "int32", "Int64", "Int32"]
NUMBER_TYPES = INT_TYPES + ["float64", "float32", "Float64"]
SHOWN_UNEXPECTED = 5  # example values per failed expectation in the reports


def validate_clips(clips_dir: Path, out_dir: Path, cfg: ValidateConfig) -> dict[str, Any]:
    """Validate ``clips_dir``; write ``out_dir/{result.json, report.md, report.html}``.

    Returns a summary dict; raises ValidationFailed (listing the failed checks) when the data
    breaks a threshold of ``cfg``, and BadInputError when manifest.csv is missing or unreadable.
    """
    clips_dir, out_dir = Path(clips_dir), Path(out_dir)
    manifest, quarantine = read_clip_tables(clips_dir)
    log.info(
        "validating %d clips (%d quarantined sources) in %s",
        len(manifest),
        quarantine["source"].nunique(),
        clips_dir,
    )
    manifest = with_file_checks(manifest, clips_dir)
    statistics = dataset_statistics(manifest, quarantine, cfg)
    checks = run_suites(manifest, statistics, cfg)
    failed = [c for c in checks if not c["success"]]
    result = {
        "success": not failed,
        "clips_dir": str(clips_dir),
        "statistics": statistics,
        "evaluated_expectations": len(checks),
        "failed_expectations": len(failed),
        "expectations": checks,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "result.json", result, default=str)
    write_text(out_dir / "report.md", render_markdown(result))
    write_text(out_dir / "report.html", render_html(result))
    log.info(
        "validation: %d/%d expectations passed; report: %s",
        len(checks) - len(failed),
        len(checks),
        out_dir / "report.html",
    )
    if failed:
        lines = "\n".join(f"  - {describe_failure(c)}" for c in failed)
        raise ValidationFailed(
            f"data validation failed: {len(failed)} of {len(checks)} "
            f"expectations failed for {clips_dir}:\n{lines}\n"
            f"report: {out_dir / 'report.html'}"
        )
    return {
        "success": True,
        "n_clips": statistics["n_clips"],
        "expectations": len(checks),
        "result": str(out_dir / "result.json"),
        "report": str(out_dir / "report.html"),
    }


def read_clip_tables(clips_dir: Path):
    """(manifest, quarantine) DataFrames; text columns as strings, empty labels as missing."""
    import pandas as pd

    manifest_path = clips_dir / "manifest.csv"
    if not manifest_path.is_file():
        raise BadInputError(f"no manifest at {manifest_path}: run `clipsep ingest` first")
    text_types = {name: "string" for name in TEXT_COLUMNS}
    try:
        manifest = pd.read_csv(manifest_path, dtype=text_types)
    except (ValueError, pd.errors.ParserError) as err:
        raise BadInputError(f"cannot read {manifest_path}: {err}") from err
    quarantine_path = clips_dir / "quarantine.csv"
    if quarantine_path.is_file() and quarantine_path.stat().st_size > 0:
        quarantine = pd.read_csv(quarantine_path, dtype="string")
    else:
        quarantine = pd.DataFrame({name: pd.Series(dtype="string") for name in QUARANTINE_COLUMNS})
    if "source" not in quarantine.columns:
        raise BadInputError(
            f"{quarantine_path} has no 'source' column (expected {', '.join(QUARANTINE_COLUMNS)})"
        )
    return manifest, quarantine


def with_file_checks(manifest, clips_dir: Path):
    """A copy of ``manifest`` with boolean ``audio_exists`` and ``frames_exist`` per clip.

    frames_exist: the clip's last frame (``frames_dir/<n_frames:06d>.jpg``) is on disk, which also
    catches a frame folder cut short. One stat per clip: cheap even for 100k clips.
    """
    manifest = manifest.copy()
    audio = manifest["audio_path"] if "audio_path" in manifest else [None] * len(manifest)
    frames = manifest["frames_dir"] if "frames_dir" in manifest else [None] * len(manifest)
    counts = manifest["n_frames"] if "n_frames" in manifest else [None] * len(manifest)
    manifest["audio_exists"] = [_is_file(clips_dir, path) for path in audio]
    manifest["frames_exist"] = [
        _last_frame_exists(clips_dir, folder, n) for folder, n in zip(frames, counts)
    ]
    return manifest


def _is_file(root: Path, relative: Any) -> bool:
    return isinstance(relative, str) and bool(relative) and (root / relative).is_file()


def _last_frame_exists(root: Path, folder: Any, n_frames: Any) -> bool:
    try:
        last = int(n_frames)
    except (TypeError, ValueError):
        return False
    return isinstance(folder, str) and last >= 1 and _is_file(root, f"{folder}/{last:06d}.jpg")


def dataset_statistics(manifest, quarantine, cfg: ValidateConfig) -> dict[str, Any]:
    """Whole-dataset numbers: counts, silent share, quarantine share (quarantined / all sources)."""
    import pandas as pd

    n_clips = len(manifest)
    rms = pd.to_numeric(manifest["rms_db"], errors="coerce") if "rms_db" in manifest else None
    silent = int((rms < cfg.silence_db).sum()) if rms is not None else 0
    kept_sources = set(manifest["source"].dropna()) if "source" in manifest else set()
    quarantined = set(quarantine["source"].dropna()) - kept_sources
    n_sources = len(kept_sources) + len(quarantined)
    splits = manifest["split"].value_counts().to_dict() if "split" in manifest else {}
    duration = pd.to_numeric(manifest.get("duration_s", pd.Series(dtype=float)), errors="coerce")
    return {
        "n_clips": n_clips,
        "n_sources": n_sources,
        "n_quarantined_sources": len(quarantined),
        "quarantine_share": len(quarantined) / n_sources if n_sources else 0.0,
        "n_silent_clips": silent,
        "silent_share": silent / n_clips if n_clips else 0.0,
        "total_hours": float(duration.sum()) / 3600.0,
        "clips_per_split": {str(k): int(v) for k, v in sorted(splits.items())},
    }


def manifest_expectations(cfg: ValidateConfig) -> list:
    """The per-clip suite: each expectation's ``meta['check']`` says in words what it guards.

    The groups run in this order, which the reports and result.json keep.
    """
    return (
        _table_expectations(cfg)
        + _column_type_expectations()
        + _uniqueness_expectations()
        + _value_expectations(cfg)
        + _file_expectations()
        + _label_expectations(cfg)
    )


def _check(expectation_cls, words: str, **kwargs):
    """One GX expectation whose ``meta['check']`` carries ``words`` into the reports."""
    return expectation_cls(meta={"check": words}, **kwargs)


def _table_expectations(cfg: ValidateConfig) -> list:
    """The manifest as a whole: every contract column is there, and enough rows."""
    import great_expectations.expectations as gxe

    return [
        _check(
            gxe.ExpectTableColumnsToMatchSet,
            "the manifest has every contract column",
            column_set=list(MANIFEST_COLUMNS),
            exact_match=False,
        ),
        _check(
            gxe.ExpectTableRowCountToBeBetween,
            f"at least {cfg.min_clips} clips",
            min_value=cfg.min_clips,
        ),
    ]


def _column_type_expectations() -> list:
    """No missing values (label aside: empty when unknown), and numbers where numbers belong."""
    import great_expectations.expectations as gxe

    not_null = [
        _check(gxe.ExpectColumnValuesToNotBeNull, f"no missing {name}", column=name)
        for name in MANIFEST_COLUMNS
        if name != "label"
    ]
    whole_numbers = [
        _check(
            gxe.ExpectColumnValuesToBeInTypeList,
            f"{name} holds whole numbers",
            column=name,
            type_list=INT_TYPES,
        )
        for name in ("n_frames", "sample_rate")
    ]
    numbers = [
        _check(
            gxe.ExpectColumnValuesToBeInTypeList,
            f"{name} holds numbers",
            column=name,
            type_list=NUMBER_TYPES,
        )
        for name in ("start_s", "duration_s", "rms_db")
    ]
    return not_null + whole_numbers + numbers


def _uniqueness_expectations() -> list:
    """Each clip once: unique ids, and no video cut twice at the same start."""
    import great_expectations.expectations as gxe

    return [
        _check(gxe.ExpectColumnValuesToBeUnique, "clip ids are unique", column="clip_id"),
        _check(
            gxe.ExpectCompoundColumnsToBeUnique,
            "no duplicate video: (source_hash, start_s) is unique",
            column_list=["source_hash", "start_s"],
        ),
    ]


def _value_expectations(cfg: ValidateConfig) -> list:
    """Per-clip values in their allowed set or range: split, rate, duration, start, frames."""
    import great_expectations.expectations as gxe

    return [
        _check(
            gxe.ExpectColumnValuesToBeInSet,
            "split is train, val, test or interference",
            column="split",
            value_set=list(SPLITS),
        ),
        _check(
            gxe.ExpectColumnValuesToBeInSet,
            f"every clip is {cfg.sample_rate} Hz",
            column="sample_rate",
            value_set=[cfg.sample_rate],
        ),
        _check(
            gxe.ExpectColumnValuesToBeBetween,
            f"clip duration in [{cfg.min_duration_s}, {cfg.max_duration_s}] s",
            column="duration_s",
            min_value=cfg.min_duration_s,
            max_value=cfg.max_duration_s,
        ),
        _check(
            gxe.ExpectColumnValuesToBeBetween,
            "clips start at t >= 0",
            column="start_s",
            min_value=0.0,
        ),
        _check(
            gxe.ExpectColumnValuesToBeBetween,
            f"at least {cfg.min_frames} frames per clip",
            column="n_frames",
            min_value=cfg.min_frames,
        ),
    ]


def _file_expectations() -> list:
    """Each clip's files are on disk (the columns :func:`with_file_checks` derives)."""
    import great_expectations.expectations as gxe

    return [
        _check(
            gxe.ExpectColumnValuesToBeInSet,
            "every clip's audio file exists",
            column="audio_exists",
            value_set=[True],
        ),
        _check(
            gxe.ExpectColumnValuesToBeInSet,
            "every clip's frames exist (up to the last one)",
            column="frames_exist",
            value_set=[True],
        ),
    ]


def _label_expectations(cfg: ValidateConfig) -> list:
    """Known labels only, where labelled; none when ``cfg.allowed_labels`` is unset."""
    if not cfg.allowed_labels:
        return []
    import great_expectations.expectations as gxe

    return [
        _check(
            gxe.ExpectColumnValuesToBeInSet,
            "known labels only (where labelled)",
            column="label",
            value_set=list(cfg.allowed_labels),
        )
    ]


def statistics_expectations(cfg: ValidateConfig) -> list:
    """The whole-dataset suite, run over the one-row statistics table."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeBetween(
            column="silent_share",
            min_value=0.0,
            max_value=cfg.max_silent_share,
            meta={
                "check": f"at most {cfg.max_silent_share:.0%} of clips quieter than "
                f"{cfg.silence_db} dBFS"
            },
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="quarantine_share",
            min_value=0.0,
            max_value=cfg.max_quarantine_share,
            meta={"check": f"at most {cfg.max_quarantine_share:.0%} of sources quarantined"},
        ),
    ]


def run_suites(manifest, statistics: dict[str, Any], cfg: ValidateConfig) -> list[dict[str, Any]]:
    """Run both suites in an ephemeral GX context (no files, no progress bars); one record each."""
    # GX logs its bookkeeping at INFO (from import on, and one module pins its own level to INFO);
    # the CLI's INFO level would drown our summary in it
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(name="clipsep")
    scalar_stats = {k: [v] for k, v in statistics.items() if not isinstance(v, dict)}
    tables = [
        ("manifest", manifest, manifest_expectations(cfg)),
        ("statistics", pd.DataFrame(scalar_stats), statistics_expectations(cfg)),
    ]
    records: list[dict[str, Any]] = []
    for table, frame, expectations in tables:
        batch = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(
            gx.ExpectationSuite(name=f"clips_{table}", expectations=expectations)
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"clips_{table}", data=batch, suite=suite)
        )
        run = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        records += [expectation_record(table, outcome) for outcome in run.results]
    return records


def expectation_record(table: str, outcome) -> dict[str, Any]:
    """One GX ExpectationValidationResult as plain JSON-able data."""
    config = outcome.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    result = outcome.result or {}
    error = None
    if outcome.exception_info:
        raised_once = "raised_exception" in outcome.exception_info
        infos = [outcome.exception_info] if raised_once else outcome.exception_info.values()
        error = next((i.get("exception_message") for i in infos if i.get("raised_exception")), None)
    return {
        "table": table,
        "expectation": config.type,
        "column": kwargs.get("column") or ", ".join(kwargs.get("column_list", [])) or None,
        "check": (config.meta or {}).get("check", ""),
        "kwargs": kwargs,
        "success": bool(outcome.success),
        "observed_value": result.get("observed_value"),
        "element_count": result.get("element_count"),
        "unexpected_count": result.get("unexpected_count"),
        "unexpected_examples": list(result.get("partial_unexpected_list", []))[:SHOWN_UNEXPECTED],
        "error": error,
    }


def describe_failure(record: dict[str, Any]) -> str:
    """``expect_x(column): words -- what was seen`` for messages and reports."""
    target = f"({record['column']})" if record["column"] else ""
    return f"{record['expectation']}{target}: {record['check']} -- {_seen(record)}"


def _seen(record: dict[str, Any]) -> str:
    if record["error"]:
        return f"error: {record['error']}"
    if record["unexpected_count"] is not None:
        seen = f"{record['unexpected_count']} of {record['element_count']} rows unexpected"
        examples = record["unexpected_examples"]
        return seen + (f", e.g. {examples}" if examples and not record["success"] else "")
    return f"observed {record['observed_value']}"


def render_markdown(result: dict[str, Any]) -> str:
    """The report as Markdown: verdict, statistics, one table row per expectation."""
    verdict = "PASSED" if result["success"] else "FAILED"
    lines = [
        f"# Data validation: {verdict}",
        "",
        f"{result['evaluated_expectations'] - result['failed_expectations']} of "
        f"{result['evaluated_expectations']} expectations passed for `{result['clips_dir']}`.",
        "",
        "## Statistics",
        "",
        "| statistic | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in result["statistics"].items()]
    lines += [
        "",
        "## Expectations",
        "",
        "| result | table | expectation | column | check | seen |",
        "| --- " * 6 + "|",
    ]
    for r in sorted(result["expectations"], key=lambda r: r["success"]):
        cells = [
            "pass" if r["success"] else "**FAIL**",
            r["table"],
            r["expectation"],
            r["column"] or "",
            r["check"],
            _seen(r),
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1.pass { color: #1a7f37; } h1.fail { color: #b42318; }
table { border-collapse: collapse; width: 100%; margin-bottom: 2em; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr.fail td { background: #fdecea; } td.verdict { font-weight: bold; }
code { font-size: 13px; }
"""


def render_html(result: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS, no scripts, no external links)."""
    esc = html.escape
    ok = result["success"]
    stats = "".join(
        f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>"
        for k, v in result["statistics"].items()
    )
    rows = "".join(
        f'<tr class="{"pass" if r["success"] else "fail"}">'
        f'<td class="verdict">{"pass" if r["success"] else "FAIL"}</td><td>{esc(r["table"])}</td>'
        f"<td><code>{esc(r['expectation'])}</code></td><td>{esc(r['column'] or '')}</td>"
        f"<td>{esc(r['check'])}</td><td>{esc(_seen(r))}</td></tr>"
        for r in sorted(result["expectations"], key=lambda r: r["success"])
    )
    passed = result["evaluated_expectations"] - result["failed_expectations"]
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>clipsep data validation</title><style>{HTML_STYLE}</style></head><body>"
        f'<h1 class="{"pass" if ok else "fail"}">Data validation: '
        f"{'PASSED' if ok else 'FAILED'}</h1>"
        f"<p>{passed} of {result['evaluated_expectations']} expectations passed for "
        f"<code>{esc(result['clips_dir'])}</code>.</p>"
        f"<h2>Statistics</h2><table><tr><th>statistic</th><th>value</th></tr>{stats}</table>"
        f"<h2>Expectations</h2><table><tr><th>result</th><th>table</th><th>expectation</th>"
        f"<th>column</th><th>check</th><th>seen</th></tr>{rows}</table></body></html>\n"
    )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
