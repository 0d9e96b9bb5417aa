"""One typed configuration, loaded from params.yaml.

``load_params`` reads a params file, applies an optional size profile (``profiles/<name>.yaml``,
which lists only the keys that differ) and ``section.key=value`` overrides, and returns one frozen
:class:`Params`. The dataclasses here carry types and meanings, not values: every value lives in
params.yaml, the one source of hyperparameters. (``SeparateConfig`` alone has defaults, for the
Python API without a params file; params.yaml repeats them and a test checks the two agree.) An
unknown key, a missing key, a wrong type or an inconsistent value raises :class:`ConfigError`
naming the file, section and key. This module imports no torch: the CLI, DVC and tests load it fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml


# auto: the fastest precision on this machine that is exact enough (clipsep.precision)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MASK_TARGETS = ("binary", "ratio")  # what the training masks learn (train.mask_target)
ENGINES = ("torch", "onnx", "onnx-int8")  # what runs the separator network at separation time


class ConfigError(ValueError):
    """A params file that cannot become :class:`Params`; the message names file/section/key."""


@dataclass(frozen=True)
class PathsConfig:
    """Where each stage reads and writes, relative to ``root`` (relative to the params file)."""

    root: str
    world: str  # rendered embedded world: videos/, captions/, ground_truth.csv
    clips: str  # ingested clips: audio/, frames/, manifest.csv, quarantine.csv
    validation: str  # Great Expectations result + report
    clip_model: str  # the tiny open_clip checkpoint of the embedded world
    checkpoints: str  # training output: last.pt, best.pt, curves, examples
    evaluation: str  # metrics.json + plots
    mlflow: str  # sqlite tracking store + artifacts (when tracking_uri is unset)


@dataclass(frozen=True)
class WorldConfig:
    """The embedded synthetic world: instrument videos with real soundfont recordings."""

    seed: int
    classes: tuple[str, ...]
    videos_per_class: dict[str, int]
    interference_videos: int  # noisy test videos forming the interference pool
    duration_s: tuple[float, float]
    noisy_share: float  # share of train videos carrying off-screen sound
    duet_share: float  # share of train videos showing and sounding two instruments
    offscreen_db: tuple[float, float]  # off-screen level relative to the on-screen sound
    background_noise_db: tuple[float, float]
    video_fps: int
    image_size: int
    audio_sample_rate: int
    caption_images_per_class: int
    workers: int


@dataclass(frozen=True)
class IngestConfig:
    """Turning a folder of videos into clips (16 kHz mono audio + 1-fps frames + manifest)."""

    source: str | None  # a video folder; None = the embedded world's videos
    labels_csv: str | None  # optional CSV (path,label); else a label-named parent folder
    sample_rate: int
    audio_format: str  # wav | flac
    fps: float
    frame_size: int
    clip_seconds: float  # long videos are cut into clips of this length...
    hop_seconds: float  # ...every hop seconds
    min_seconds: float  # shorter clips (or videos) are dropped / quarantined
    max_pixels: int  # larger frames are quarantined as absurd
    silence_db: float  # clips quieter than this (RMS, dBFS) are quarantined as silent
    split_fractions: dict[str, float]
    workers: int


@dataclass(frozen=True)
class ValidateConfig:
    """Thresholds of the Great Expectations gate over the clip manifest."""

    sample_rate: int  # every clip's rate; must equal audio.sample_rate
    silence_db: float  # RMS (dBFS) below which a clip counts as silent for max_silent_share
    min_duration_s: float
    max_duration_s: float
    min_frames: int
    max_silent_share: float
    max_quarantine_share: float
    min_clips: int
    allowed_labels: tuple[str, ...] | None


@dataclass(frozen=True)
class ClipConfig:
    """The frozen CLIP query encoder (open_clip) and, for the embedded world, its pretraining."""

    architecture: str  # an open_clip model name or a config bundled with clipsep
    pretrained: str | None  # None -> the pretrain-clip output; a tag or a local file path
    prompt_templates: tuple[str, ...]
    pretrain_epochs: int
    pretrain_batch_size: int
    pretrain_lr: float
    pretrain_weight_decay: float
    pretrain_seed: int
    pretrain_crop_scale: tuple[float, float]  # area range of the random resized crop
    precision: str  # of pretraining: one of PRECISIONS (auto: bf16 only where measured faster)
    device: str


@dataclass(frozen=True)
class AudioConfig:
    """Time-frequency front end (the paper's numbers)."""

    sample_rate: int
    n_fft: int
    hop_length: int
    warp_bins: int  # log-frequency rows fed to the U-Net
    segment_samples: int  # 256 STFT frames with centred framing


@dataclass(frozen=True)
class ModelConfig:
    """Separator architecture: a preset (clipsep/model/presets/<name>.json) plus the NIT switch."""

    preset: str
    nit: bool


@dataclass(frozen=True)
class TrainConfig:
    """Mix-and-separate training."""

    seed: int
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    decay_steps: int  # linear decay to final_lr_scale by this step
    final_lr_scale: float
    grad_clip: float
    n_mix: int
    gain_range: tuple[float, float]
    pair_candidates: int  # partner = least CLIP-similar of this many random clips (1 = uniform)
    absent_candidates: int  # absent-sound query per example: least similar of this many (0 = off)
    absent_weight: float  # weight of the absent-query loss (target: silence)
    absent_rank_weight: float  # weight of the absent-below-source ranking term (0 = off)
    sdr_weight: float  # weight of -SDR (dB) of the waveforms the query masks give (0 = off)
    mask_target: str  # one of MASK_TARGETS: binary 1[|S_n| > 0.5 |mix|] (paper) | ratio |S_n|/sum
    query_frames: int
    segment_samples: int | None  # training window; None = audio.segment_samples (eval's window)
    window_jitter_s: float  # window centre within +- this of its query frame's time (0 = aligned)
    nit_lambda: float
    nit_gamma: float
    validate_every: int
    checkpoint_every: int
    val_mixtures: int
    precision: str  # one of PRECISIONS: bf16 CPU autocast, fp16 CUDA AMP; auto picks by speed
    channels_last: bool | None  # None = auto: with bf16/fp16 only (a loss in fp32 on AVX2)
    num_workers: int
    device: str
    examples: int  # audio + spectrogram examples written per validation
    keep_snapshots: bool  # also keep every validation step's checkpoint under snapshots/


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation protocol: clean targets mixed with noisy interference (MUSIC+-like)."""

    seed: int
    targets_csv: str | None  # None -> the world's clean test videos
    interference_csv: str | None  # None -> the world's noisy interference pool
    mixtures_per_target: int
    soft_masks: bool
    metrics_backend: str  # BSS-Eval v4
    precision: str  # of the network pass: one of PRECISIONS
    device: str


@dataclass(frozen=True)
class SeparateConfig:
    """Separating user files (``clipsep separate`` and the Python API).

    The one section with defaults: ``SeparateConfig()`` is what a Python user who loads no params
    file separates with (``clipsep.inference.DEFAULT_SETTINGS``). params.yaml still lists every
    key (a params file must be complete) and tests/test_inference.py checks it repeats these.
    """

    model: str = "models:/clipsep@champion"  # a checkpoint path or models:/name@alias
    overlap: float = 0.25  # share of each model segment overlapping its neighbour (overlap-add)
    channel_masks: str = "shared"  # shared: one mask from the mono downmix | independent
    precision: str = "auto"  # of the network pass only: one of PRECISIONS
    device: str = "auto"
    engine: str = "torch"  # torch | onnx | onnx-int8 (ONNX Runtime on the CPU): one of ENGINES
    activity_frame_s: float = 0.05  # stem activity: frame length (energies per frame)
    activity_smoothing_s: float = 0.25  # centred window the frame energies are summed over
    activity_threshold_db: float = -12.0  # active: stem energy above this dB re the mixture's
    activity_floor_db: float = -60.0  # ... and the mixture above this dBFS (silence: inactive)
    activity_min_s: float = 0.2  # shorter active stretches are dropped
    high_band: str = "extend"  # above the model's Nyquist: extend (the target's share) | residual


@dataclass(frozen=True)
class RegistryConfig:
    """MLflow tracking and the promotion gate."""

    tracking_uri: str | None  # None -> sqlite store under paths.mlflow
    experiment: str
    model_name: str
    promotion_margin_db: float  # a challenger must beat the champion's text SDR by this
    champion_floor_db: float  # a first model must reach this text SDR to become champion
    absent_margin_db: float  # champion only if an absent query returns >= this many dB less
    # energy than the right query (absent_query.energy_db vs right_query_energy_db)
    live_tracking: bool  # the first stage opens the MLflow run; stages and training log into it
    system_metrics_s: float | None  # training's system metrics sampling interval (None/0: off)


@dataclass(frozen=True)
class ServeConfig:
    """The Gradio demo."""

    host: str
    port: int
    max_file_mb: int
    max_seconds: float
    concurrency: int  # separations running at once; the rest wait in the queue
    queue_size: int  # waiting requests beyond which new ones are turned away
    model: str | None  # None (params.yaml: null) -> separate.model; never None once loaded


@dataclass(frozen=True)
class Params:
    """Every hyperparameter and path of the project; built by :func:`load_params`."""

    paths: PathsConfig
    world: WorldConfig
    ingest: IngestConfig
    validate: ValidateConfig
    clip: ClipConfig
    audio: AudioConfig
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig
    separate: SeparateConfig
    registry: RegistryConfig
    serve: ServeConfig
    source_file: str  # the params file this came from (absolute), for messages and paths

    def path(self, name: str) -> Path:
        """Absolute path of ``paths.<name>``, resolved against ``paths.root``."""
        root = Path(self.paths.root)
        if not root.is_absolute():
            base = Path(self.source_file).parent if self.source_file else Path.cwd()
            root = base / root
        value = Path(getattr(self.paths, name))
        return (value if value.is_absolute() else root / value).resolve()

    def to_dict(self) -> dict[str, Any]:
        """The params as plain YAML-able data (tuples become lists), without ``source_file``."""
        data = _plain(dataclasses.asdict(self))
        data.pop("source_file")
        return data


SECTIONS: dict[str, type] = {
    name: hint for name, hint in typing.get_type_hints(Params).items() if name != "source_file"
}
PROFILES_DIR = "profiles"
PARAMS_FILE = "params.yaml"


def load_params(
    path: str | Path = "params.yaml",
    profile: str | None = None,
    overrides: typing.Iterable[str] | typing.Mapping[str, Any] = (),
) -> Params:
    """Load ``path``, apply ``profiles/<profile>.yaml`` (beside it), ``section.key=value`` pairs."""
    path = Path(path).resolve()
    raw = _read_yaml(path)
    if profile:
        profile_path = path.parent / PROFILES_DIR / f"{profile}.yaml"
        if not profile_path.is_file():
            known = sorted(p.stem for p in (path.parent / PROFILES_DIR).glob("*.yaml"))
            raise ConfigError(
                f"unknown profile {profile!r}: {profile_path} does not exist "
                f"(known: {', '.join(known) or 'none'})"
            )
        raw = _merge(raw, _read_yaml(profile_path), str(profile_path))
    raw = _merge(raw, _parse_overrides(overrides), "overrides")
    return build_params(raw, source=str(path))


def build_params(raw: typing.Mapping[str, Any], source: str = "<dict>") -> Params:
    """Turn a nested mapping into :class:`Params`, checking every key, type and invariant."""
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown section(s) {sorted(unknown)}; known sections: {sorted(SECTIONS)}"
        )
    missing = [name for name in SECTIONS if name not in raw]
    if missing:
        raise ConfigError(f"{source}: missing section(s) {missing}")
    sections = {
        name: _build_section(cls, raw[name], f"{source}: section '{name}'")
        for name, cls in SECTIONS.items()
    }
    params = _derive(Params(**sections, source_file=source))
    _check_invariants(params, source)
    return params


def add_params_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--params F``, ``--profile P`` and repeatable ``--set SECTION.KEY=VALUE``
    (``args.overrides``, a list of strings) to ``parser``: every command line that loads params
    (the CLI, the app, the flows) declares them here."""
    parser.add_argument(
        "--params",
        default=None,
        help=f"params file (default: ./{PARAMS_FILE}, else the project's, next to the package)",
    )
    parser.add_argument("--profile", default=None, help="size profile: profiles/<NAME>.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one parameter (repeatable)",
    )


def params_from_args(
    args: argparse.Namespace, extra: typing.Mapping[str, Any] | None = None
) -> Params:
    """:func:`load_params` with the options of :func:`add_params_arguments`; ``extra``
    (``{"section.key": value}``, e.g. from a command's own flags) wins over ``--set``."""
    overrides = dict(_split_override(text) for text in args.overrides)
    overrides.update(extra or {})
    return load_params(params_file_from_args(args), profile=args.profile, overrides=overrides)


def params_file_from_args(args: argparse.Namespace) -> Path:
    """The params file of :func:`add_params_arguments`' options: ``--params``, else
    :func:`default_params_file`."""
    return Path(args.params) if args.params else default_params_file()


def default_params_file() -> Path:
    """``./params.yaml`` when there is one, else the project's own (the folder above the
    ``clipsep`` package, as in an editable install), so that ``clipsep separate song.wav`` works
    from any folder; ``./params.yaml`` (not found: :class:`ConfigError`) when neither exists."""
    here = Path(PARAMS_FILE)
    project = Path(__file__).resolve().parents[1] / PARAMS_FILE
    if here.is_file() or not project.is_file():
        return here
    return project


def dump_params(params: Params, path: str | Path) -> None:
    """Write a full params file (e.g. a profile merged into the defaults)."""
    Path(path).write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))


# --- internals -------------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"params file not found: {path} (run from the project folder or give --params FILE)"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any], source: str) -> dict[str, Any]:
    """Merge two-level dicts section by section; ``extra`` wins."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in extra.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping")
        merged.setdefault(section, {})
        if not isinstance(merged[section], dict):
            merged[section] = {}
        merged[section].update(values)
    return merged


def _parse_overrides(overrides: typing.Iterable[str] | typing.Mapping[str, Any]) -> dict:
    items = (
        overrides.items()
        if isinstance(overrides, typing.Mapping)
        else (_split_override(o) for o in overrides)
    )
    nested: dict[str, dict[str, Any]] = {}
    for key, value in items:
        section, _, name = key.partition(".")
        if not name:
            raise ConfigError(f"override {key!r} must look like section.key=value")
        nested.setdefault(section, {})[name] = value
    return nested


def _split_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    return key.strip(), yaml.safe_load(value)


def _build_section(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{key}'{hint}; known keys: {sorted(known)}")
    missing = sorted(known - set(values))
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    kwargs = {k: _coerce(v, hints[k], f"{where}, key '{k}'") for k, v in values.items()}
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a type hint, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: must not be null")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(k, args[0], where): _coerce(v, args[1], where) for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {hint.__name__}, got a boolean {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(
            f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _derive(p: Params) -> Params:
    """Fill the keys whose null means "the same as another key": serve.model -> separate.model."""
    if p.serve.model is None:
        p = dataclasses.replace(p, serve=dataclasses.replace(p.serve, model=p.separate.model))
    return p


def _check_invariants(p: Params, source: str) -> None:
    def fail(section: str, key: str, why: str) -> None:
        raise ConfigError(f"{source}: section '{section}', key '{key}': {why}")

    if p.audio.hop_length > p.audio.n_fft:
        fail("audio", "hop_length", f"must be <= n_fft ({p.audio.n_fft})")
    if p.ingest.sample_rate != p.audio.sample_rate:
        fail("ingest", "sample_rate", f"must equal audio.sample_rate ({p.audio.sample_rate})")
    if p.validate.sample_rate != p.audio.sample_rate:
        fail("validate", "sample_rate", f"must equal audio.sample_rate ({p.audio.sample_rate})")
    if p.ingest.audio_format not in ("wav", "flac"):
        fail("ingest", "audio_format", "must be 'wav' or 'flac'")
    if p.ingest.hop_seconds <= 0 or p.ingest.clip_seconds < p.ingest.min_seconds:
        fail("ingest", "clip_seconds", "must be >= min_seconds, with hop_seconds > 0")
    if abs(sum(p.ingest.split_fractions.values()) - 1.0) > 1e-6:
        fail("ingest", "split_fractions", "must sum to 1")
    if p.model.nit and p.train.n_mix != 2:
        fail("train", "n_mix", "noise invariant training (model.nit) needs n_mix == 2")
    if p.train.warmup_steps > p.train.decay_steps:
        fail("train", "warmup_steps", "must be <= decay_steps")
    for section in ("clip", "train", "eval", "separate"):
        if getattr(p, section).precision not in PRECISIONS:
            fail(section, "precision", f"must be one of {', '.join(PRECISIONS)}")
    if p.separate.engine not in ENGINES:
        fail("separate", "engine", f"must be one of {', '.join(ENGINES)}")
    if (
        p.train.pair_candidates < 1
        or p.train.absent_candidates < 0
        or min(p.train.absent_weight, p.train.absent_rank_weight) < 0
    ):
        fail(
            "train",
            "pair_candidates",
            "pair_candidates >= 1, absent_candidates >= 0, absent_weight >= 0 "
            "and absent_rank_weight >= 0",
        )
    if p.train.segment_samples is not None and p.train.segment_samples < p.audio.n_fft:
        fail("train", "segment_samples", f"must be null or >= audio.n_fft ({p.audio.n_fft})")
    if p.train.mask_target not in MASK_TARGETS:
        fail("train", "mask_target", f"must be one of {', '.join(MASK_TARGETS)}")
    if p.train.window_jitter_s < 0:
        fail("train", "window_jitter_s", "must be >= 0")
    lo, hi = p.train.gain_range
    if not 0 < lo <= hi:
        fail("train", "gain_range", "must be 0 < low <= high")
    if not 0 <= p.world.noisy_share <= 1 or not 0 <= p.world.duet_share <= 1:
        fail("world", "noisy_share", "shares must lie in [0, 1]")
    if p.world.duration_s[0] > p.world.duration_s[1]:
        fail("world", "duration_s", "must be [min, max] with min <= max")
    if p.eval.metrics_backend not in ("museval", "fast_bss_eval"):
        fail("eval", "metrics_backend", "must be 'museval' or 'fast_bss_eval'")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
