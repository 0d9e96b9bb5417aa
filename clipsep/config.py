"""One typed configuration, loaded from params.yaml.

``load_params`` reads a params file, applies an optional size profile (``profiles/<name>.yaml``,
which lists only the keys that differ) and ``section.key=value`` overrides, and returns one frozen
:class:`Params`. The dataclasses here carry types and meanings, not values: every value lives in
params.yaml, the one source of hyperparameters. (``SeparateConfig`` alone has defaults, for the
Python API without a params file; params.yaml repeats them and a test checks the two agree.) An
unknown key, a missing key, a wrong type or an inconsistent value raises :class:`ConfigError`
naming where the value came from (the params or profile file and its line, or the override as
written, e.g. ``--set train.steps=many``), the section and key, the value given and, for keys with a
fixed set of choices (:data:`CHOICES`; for ``model.preset`` the preset files), the choices. This
module imports no torch: the CLI, DVC and tests load it fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
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
CHANNEL_MASKS = ("shared", "independent")  # separate.channel_masks: one mask for all, or each
HIGH_BANDS = ("extend", "residual")  # separate.high_band: the target's share above the model's band
AUDIO_FORMATS = ("wav", "flac")  # of ingested clips (ingest.audio_format)
METRICS_BACKENDS = ("museval", "fast_bss_eval")  # eval.metrics_backend
# keys whose value must be one of a fixed set: checked (and the set listed) before the type
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    **{(section, "precision"): PRECISIONS for section in ("clip", "train", "eval", "separate")},
    ("train", "mask_target"): MASK_TARGETS,
    ("separate", "engine"): ENGINES,
    ("separate", "channel_masks"): CHANNEL_MASKS,
    ("separate", "high_band"): HIGH_BANDS,
    ("ingest", "audio_format"): AUDIO_FORMATS,
    ("eval", "metrics_backend"): METRICS_BACKENDS,
}
# the architecture presets: one JSON file per preset, named after it (read by clipsep.model.factory)
PRESETS_DIR = Path(__file__).resolve().parent / "model" / "presets"
SHOWN_CHARS = 80  # a value echoed in an error message is cut to this many characters


def preset_names() -> tuple[str, ...]:
    """Names of the bundled architecture presets (the ``*.json`` files in :data:`PRESETS_DIR`)."""
    return tuple(sorted(path.stem for path in PRESETS_DIR.glob("*.json")))


def choices_of(section: str, key: str) -> tuple[str, ...] | None:
    """The values ``section.key`` may take (:data:`CHOICES`; ``model.preset``: the preset
    files), or None for a key of no fixed set."""
    if (section, key) == ("model", "preset"):
        return preset_names()
    return CHOICES.get((section, key))


class ConfigError(ValueError):
    """Params that cannot become :class:`Params`; the one-line message names where the value
    came from (file and line, or the override as written), the section, key and value."""


# where each value came from: (section, key) -> "FILE line N" | "--set S.K=V (over FILE)" | ...;
# (section, None) -> where the section itself was given
Origins = dict[tuple[str, "str | None"], str]


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
    channels_last: bool | None  # None = auto: bf16/fp16, or fp32 where oneDNN runs AVX-512
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
        """Absolute path of ``paths.<name>``, resolved against ``paths.root``; ``path("root")``
        is the root itself. A relative root is taken from the params file's folder (else the
        working folder)."""
        root = Path(self.paths.root)
        if not root.is_absolute():
            base = Path(self.source_file).parent if self.source_file else Path.cwd()
            root = base / root
        if name == "root":  # not root / root: a relative root would be joined onto itself
            return root.resolve()
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
BEST_CHECKPOINT = "best.pt"  # in paths.checkpoints: the best validation checkpoint training keeps
LAST_CHECKPOINT = "last.pt"  # in paths.checkpoints: the latest one, that training resumes from
CLIP_CHECKPOINT = "clip.pt"  # in paths.clip_model: pretrain-clip's weights (clip.pretrained null)
PARAMS_FILE = "params.yaml"
FOLDER_DIGITS = 16  # hex digits of the sha256 of an output folder's path that name its records


def load_params(
    path: str | Path = "params.yaml",
    profile: str | None = None,
    overrides: typing.Iterable[str | tuple[str, Any]] | typing.Mapping[str, Any] = (),
) -> Params:
    """Load ``path``, apply ``profiles/<profile>.yaml`` (beside it), then ``overrides``: a
    mapping ``{"section.key": value}`` or an iterable of ``"section.key=value"`` strings (a YAML
    value, as ``--set`` takes them; errors quote them as ``--set ...``) and ``(key, value)``
    pairs, the later winning. A pass into another ``paths.checkpoints`` than the file's gets an
    evaluation folder of its own unless it names one (:func:`_own_evaluation`)."""
    path = Path(path).resolve()
    raw, origins = _read_yaml(path)
    file_paths = dict(raw["paths"]) if isinstance(raw.get("paths"), dict) else {}  # dvc.yaml's
    if profile:
        profile_path = path.parent / PROFILES_DIR / f"{profile}.yaml"
        # a name, not a path: `--profile ../params` had read params.yaml as its own profile
        if Path(profile).name != profile or profile.startswith(".") or not profile_path.is_file():
            known = sorted(p.stem for p in (path.parent / PROFILES_DIR).glob("*.yaml"))
            raise ConfigError(
                f"unknown profile {profile!r}{_did_you_mean(profile, known)}: {profile_path} "
                f"does not exist (known: {', '.join(known) or 'none'})"
            )
        extra, extra_origins = _read_yaml(profile_path)
        raw = _merge(raw, extra, str(profile_path))
        _add_origins(origins, extra_origins)
    extra, extra_origins = _parse_overrides(overrides, path)
    raw = _merge(raw, extra, "overrides")
    _add_origins(origins, extra_origins)
    params = build_params(raw, source=str(path), origins=origins)
    return _own_evaluation(params, file_paths)


def folder_digest(p: Params) -> str:
    """The first FOLDER_DIGITS hex digits of the sha256 of the resolved ``paths.checkpoints``:
    the name of that output folder's records (its pipeline run's,
    :func:`clipsep.tracking.run_file`, and its own evaluation folder's, :func:`_own_evaluation`)."""
    return hashlib.sha256(str(p.path("checkpoints")).encode()).hexdigest()[:FOLDER_DIGITS]


def _own_evaluation(p: Params, file_paths: dict[str, Any]) -> Params:
    """``p`` with an evaluation folder of its own when a profile or override moved
    ``paths.checkpoints`` away from the params file's folder but left the file's
    ``paths.evaluation``: two models' evaluations (and their stage records) would share one folder,
    the later overwriting the earlier's reports. That pass evaluates into
    ``<paths.evaluation>-<checkpoints folder name>-<folder_digest>`` (beside the file's, e.g.
    ``reports/evaluation-other-0123456789abcdef``); the file's own pipeline (``dvc repro``, which
    takes ``dvc.yaml``'s outs from the file) and an explicit ``paths.evaluation`` are unchanged."""
    if p.paths.evaluation != file_paths.get("evaluation") or "checkpoints" not in file_paths:
        return p
    file_folder = dataclasses.replace(p.paths, checkpoints=str(file_paths["checkpoints"]))
    if p.path("checkpoints") == dataclasses.replace(p, paths=file_folder).path("checkpoints"):
        return p
    evaluation = Path(p.paths.evaluation)
    if evaluation.name in ("", ".."):
        evaluation = p.path("evaluation")
    name = f"{evaluation.name}-{p.path('checkpoints').name}-{folder_digest(p)}"
    return dataclasses.replace(
        p, paths=dataclasses.replace(p.paths, evaluation=str(evaluation.with_name(name)))
    )


def build_params(
    raw: typing.Mapping[str, Any], source: str = "<dict>", origins: Origins | None = None
) -> Params:
    """Turn a nested mapping into :class:`Params`, checking every key, type and invariant.
    ``origins`` (from :func:`load_params`) says where each value came from; a value without one
    came from ``source``."""
    where = _Where(source, origins or {})
    unknown = [name for name in raw if name not in SECTIONS]
    if unknown:
        raise ConfigError(
            f"{where.origin(unknown[0])}: unknown section(s) {sorted(map(str, unknown))}"
            f"{_did_you_mean(unknown[0], SECTIONS)}; known sections: {sorted(SECTIONS)}"
        )
    missing = [name for name in SECTIONS if name not in raw]
    if missing:
        raise ConfigError(f"{source}: missing section(s) {missing}")
    sections = {name: _build_section(cls, raw[name], name, where) for name, cls in SECTIONS.items()}
    params = _derive(Params(**sections, source_file=source))
    _check_invariants(params, where)
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
    overrides = [*args.overrides, *(extra or {}).items()]  # the strings as typed, for messages
    return load_params(params_file_from_args(args), profile=args.profile, overrides=overrides)


ROOT_NAME = "the params' root (paths.root)"  # how messages name paths.root without a profile


def params_root(args: argparse.Namespace, params: Params) -> tuple[str, Path]:
    """(name, folder) of the params' root (``paths.root``) for a command line's messages: a path
    typed on the command line is relative to the working folder, not to this root, and an error
    about a missing one names where it is under the root (``resolve_model``'s ``elsewhere``)."""
    name = f"--profile {args.profile}'s root" if args.profile else ROOT_NAME
    return name, params.path("root")


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


class _Where:
    """The prefix of a message about a section or key: where its value came from."""

    def __init__(self, source: str, origins: Origins):
        self.source = source
        self.origins = origins

    def origin(self, section: str, key: str | None = None) -> str:
        return self.origins.get((section, key)) or self.origins.get((section, None)) or self.source

    def section(self, section: str, key: str | None = None) -> str:
        return f"{self.origin(section, key)}: section '{section}'"

    def key(self, section: str, key: str) -> str:
        return f"{self.section(section, key)}, key '{key}'"


def _show(value: Any) -> str:
    """``value`` as an error message echoes it: its repr, cut to :data:`SHOWN_CHARS`."""
    if value is None:
        return "an empty value (null)"
    text = repr(_plain(value))
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _show_typed(value: Any) -> str:
    if value is None or isinstance(value, (dict, list, tuple)):
        return _show(value)
    if isinstance(value, bool):
        return f"a boolean {value!r}"
    return f"{type(value).__name__} {_show(value)}"


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: its problem and line, without the quoted snippet."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(err).split())


def _read_yaml(path: Path) -> tuple[dict[str, Any], Origins]:
    """The file's mapping and the line each section and key is given on."""
    if path.is_dir():
        raise ConfigError(f"params file {path} is a folder, not a file (give --params FILE)")
    if not path.is_file():
        raise ConfigError(
            f"params file not found: {path} (run from the project folder or give --params FILE)"
        )
    loader = yaml.SafeLoader(path.read_text())
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from err
    finally:
        loader.dispose()
    if node is None:
        raise ConfigError(
            f"{path}: the file is empty (a params file maps sections, e.g. train:, to their keys)"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    origins: Origins = {}
    for section_node, values_node in node.value:
        section = str(section_node.value)
        origins[(section, None)] = f"{path} line {section_node.start_mark.line + 1}"
        if isinstance(values_node, yaml.MappingNode):
            for key_node, _ in values_node.value:
                origins[(section, str(key_node.value))] = (
                    f"{path} line {key_node.start_mark.line + 1}"
                )
    return data, origins


def _add_origins(origins: Origins, later: Origins) -> None:
    """Record where later values came from; a section keeps the place it was first given."""
    for (section, key), origin in later.items():
        if key is None:
            origins.setdefault((section, None), origin)
        else:
            origins[(section, key)] = origin


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


def _parse_overrides(
    overrides: typing.Iterable[str | tuple[str, Any]] | typing.Mapping[str, Any], path: Path
) -> tuple[dict[str, dict[str, Any]], Origins]:
    """The overrides as sections of values, and each one's origin (as the user wrote it)."""
    items = overrides.items() if isinstance(overrides, typing.Mapping) else overrides
    nested: dict[str, dict[str, Any]] = {}
    origins: Origins = {}
    for item in items:
        if isinstance(item, str):
            key, value = _split_override(item)
            origin = f"--set {_cut(item)} (over {path})"
        else:
            key, value = item
            origin = f"override {key}={_show(value)} (over {path})"
        section, _, name = str(key).partition(".")
        if not section or not name:
            raise ConfigError(f"override {_cut(str(key))!r} must look like section.key=value")
        nested.setdefault(section, {})[name] = value
        origins[(section, name)] = origin
        origins.setdefault((section, None), origin)
    return nested, origins


def _cut(text: str) -> str:
    return text if len(text) <= 2 * SHOWN_CHARS else text[: 2 * SHOWN_CHARS - 3] + "..."


def _split_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise ConfigError(f"override {_cut(text)!r} must look like section.key=value")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"--set {_cut(text)}: the value is not valid YAML: {_yaml_problem(err)}"
        ) from err


def _did_you_mean(name: Any, known) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known`` to a mistyped ``name``, else ``""``."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build_section(cls: type, values: Any, section: str, where: _Where) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where.section(section)} must be a mapping, got {_show_typed(values)}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in values:
        if key not in known:
            hint = _did_you_mean(key, known)
            raise ConfigError(
                f"{where.section(section, str(key))}: unknown key '{key}'{hint}; "
                f"known keys: {sorted(known)}"
            )
    missing = sorted(known - set(values))
    if missing:
        raise ConfigError(f"{where.section(section)}: missing key(s) {missing}")
    kwargs = {}
    for key, value in values.items():
        choices = choices_of(section, key)
        if choices is not None and value not in choices:
            raise ConfigError(
                f"{where.key(section, key)}: must be one of {', '.join(choices)}; "
                f"got {_show(value)}{_did_you_mean(value, choices) if value else ''}"
            )
        kwargs[key] = _coerce(value, hints[key], where.key(section, key))
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
            raise ConfigError(f"{where}: expected a list, got {_show_typed(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ConfigError(
                f"{where}: expected a list of {len(args)} values, got {_show_typed(value)}"
            )
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_show_typed(value)}")
        return {_coerce(k, args[0], where): _coerce(v, args[1], where) for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (hint in (int, float) and isinstance(value, bool)) or not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {_show_typed(value)}")
    return value


def _derive(p: Params) -> Params:
    """Fill the keys whose null means "the same as another key": serve.model -> separate.model."""
    if p.serve.model is None:
        p = dataclasses.replace(p, serve=dataclasses.replace(p.serve, model=p.separate.model))
    return p


def _check_invariants(p: Params, where: _Where) -> None:
    """Checks across keys (the choices of :data:`CHOICES` and the types are checked before)."""

    def fail(section: str, key: str, why: str) -> None:
        value = getattr(getattr(p, section), key)
        raise ConfigError(f"{where.key(section, key)}: {why}; got {_show(value)}")

    if p.audio.hop_length > p.audio.n_fft:
        fail("audio", "hop_length", f"must be <= n_fft ({p.audio.n_fft})")
    if p.ingest.sample_rate != p.audio.sample_rate:
        fail("ingest", "sample_rate", f"must equal audio.sample_rate ({p.audio.sample_rate})")
    if p.validate.sample_rate != p.audio.sample_rate:
        fail("validate", "sample_rate", f"must equal audio.sample_rate ({p.audio.sample_rate})")
    if p.ingest.hop_seconds <= 0:
        fail("ingest", "hop_seconds", "must be > 0")
    if p.ingest.clip_seconds < p.ingest.min_seconds:
        fail("ingest", "clip_seconds", f"must be >= min_seconds ({p.ingest.min_seconds})")
    if abs(sum(p.ingest.split_fractions.values()) - 1.0) > 1e-6:
        fail("ingest", "split_fractions", "must sum to 1")
    if p.model.nit and p.train.n_mix != 2:
        fail("train", "n_mix", "noise invariant training (model.nit) needs n_mix == 2")
    if p.train.warmup_steps > p.train.decay_steps:
        fail("train", "warmup_steps", f"must be <= decay_steps ({p.train.decay_steps})")
    for key in ("steps", "batch_size", "validate_every", "checkpoint_every", "val_mixtures"):
        if getattr(p.train, key) < 1:
            fail("train", key, "must be >= 1")
    if not p.train.lr > 0:
        fail("train", "lr", "must be > 0")
    if p.train.pair_candidates < 1:
        fail("train", "pair_candidates", "must be >= 1")
    for key in ("absent_candidates", "absent_weight", "absent_rank_weight"):
        if getattr(p.train, key) < 0:
            fail("train", key, "must be >= 0")
    if p.train.segment_samples is not None and p.train.segment_samples < p.audio.n_fft:
        fail("train", "segment_samples", f"must be null or >= audio.n_fft ({p.audio.n_fft})")
    if p.train.window_jitter_s < 0:
        fail("train", "window_jitter_s", "must be >= 0")
    lo, hi = p.train.gain_range
    if not 0 < lo <= hi:
        fail("train", "gain_range", "must be 0 < low <= high")
    for key in ("noisy_share", "duet_share"):
        if not 0 <= getattr(p.world, key) <= 1:
            fail("world", key, "must lie in [0, 1]")
    if p.world.duration_s[0] > p.world.duration_s[1]:
        fail("world", "duration_s", "must be [min, max] with min <= max")
    if bool(p.eval.targets_csv) != bool(p.eval.interference_csv):  # one protocol: both or neither
        given, missing = (
            ("targets_csv", "interference_csv")
            if p.eval.targets_csv
            else ("interference_csv", "targets_csv")
        )
        fail("eval", given, f"needs eval.{missing} too (set both, or neither)")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
