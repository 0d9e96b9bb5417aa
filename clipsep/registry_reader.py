"""Reading the model registry: one way to turn a model reference into local files.

A model reference is a checkpoint path, ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.
:func:`resolve_model` turns any of them into a :class:`ResolvedModel` (checkpoint file, CLIP
weights file or None, registry version); :func:`describe_model` reads a version's tags, aliases
and run metrics. This is the registry's read side: inference, the CLI, the app and evaluation use
it; the write side (logging runs, registering, the promotion gate) lives in
:mod:`clipsep.tracking`, above it.

Errors tell apart a reference that names nothing (:class:`ModelNotFoundError`: no such model,
alias or version) from a store that could not be read (:class:`RegistryUnavailableError`).

Cache, keyed by the registry version: a version's files are downloaded once into
``<cache_dir>/<name>-v<N>-<store>/``, with a note of the version's identity in the registry (its
run id and source, :data:`IDENTITY_FILE`). A version is immutable, but a store deleted and made
anew at the same URI (a fresh clone at the same path, ``git clean``) numbers its versions from 1
again: a cached folder whose identity differs from the store's version is stale, and is replaced.
For a sqlite store the alias is looked up with a read-only sqlite query first; when it still names
the version already in the cache, the files are used without importing mlflow at all (a cold
``clipsep separate`` skips seconds of MLflow start-up). Any doubt (an unknown alias, another store
kind, a schema this query does not know, another identity) takes the MLflow path, which is
authoritative.

The cache is pruned (:func:`prune_cache`) each time the MLflow path resolves a version: of the
same model and store, the versions older than that one beyond the newest ``KEEP_VERSIONS`` cached
are removed, each by an atomic rename into ``<cache_dir>/.trash/`` and then deleted, so a
resolver sees a version whole or not at all. A process that resolved a version holds a shared
``flock`` on its folder for as long as it lives (its CLIP weights may be read long after, at a
server's first new text query); a folder so held is in use and is never removed. Only folders
named ``<name>-v<N>-<store>`` of that model and store, holding an ``MLmodel``, are candidates,
plus the staging folders ``.<name>-v<N>-<store>-*`` that a killed download left behind (a
download in progress holds a lock on its own, so it is never taken for one).
mlflow is imported lazily: importing this module is cheap and has no side effects.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import yaml

from clipsep.config import BEST_CHECKPOINT, Params
from clipsep.errors import ClipsepError, MissingWeightsError
from clipsep.fileio import shown_path

log = logging.getLogger(__name__)

REGISTRY_PREFIX = "models:/"
CACHE_FOLDER = "clipsep-models"  # under the temp folder unless a cache_dir is given
KEEP_VERSIONS = 3  # cached versions of a model (per store) kept when a resolution prunes the cache
TRASH_FOLDER = ".trash"  # pruned versions are renamed into it, then deleted
IDENTITY_FILE = "clipsep-version.json"  # in a cached version: the registry's run id and source
_LEASES: dict[Path, int] = {}  # version folder -> the descriptor holding this process's lock
# MLflow's error codes for a name, alias or version that does not exist
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class RegistryError(ClipsepError):
    """A registry reference or state that cannot be used."""


class ModelNotFoundError(RegistryError):
    """The store was read, and it has no such registered model, alias or version."""


class RegistryUnavailableError(RegistryError):
    """The store could not be read (missing server, corrupt or unreadable database)."""

    @classmethod
    def of(cls, uri: str, err: BaseException) -> RegistryUnavailableError:
        """The error for store ``uri`` failing with ``err`` (its first line, cut to 300 chars)."""
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return cls(f"cannot read the MLflow store {uri}: {first_line[:300]}")


@dataclass(frozen=True)
class ResolvedModel:
    """Local files of a model reference; ``version`` is None for a plain checkpoint path."""

    checkpoint: Path
    clip_weights: Path | None = None
    version: str | None = None


@dataclass(frozen=True)
class ModelDescription:
    """What the registry records about one model version (tags, aliases, its run's metrics)."""

    reference: str
    version: str
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    run_metrics: dict[str, float] = field(default_factory=dict)


# --- which store ------------------------------------------------------------------------------


def tracking_uri(p: Params) -> str:
    """registry.tracking_uri, else a sqlite store under paths.mlflow (4 slashes: absolute path)."""
    return p.registry.tracking_uri or f"sqlite:///{p.path('mlflow')}/mlflow.db"


def registry_uri(p: Params | None = None) -> str:
    """Where references are resolved: MLFLOW_TRACKING_URI, else the store of ``p`` (default:
    the params of :func:`clipsep.config.default_params_file`)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if p is not None:
        return tracking_uri(p)
    from clipsep.config import default_params_file, load_params

    params_file = default_params_file()
    if not params_file.is_file():
        raise RegistryError(
            "cannot resolve a models:/ reference: set MLFLOW_TRACKING_URI or run "
            "from the project folder (its params.yaml names the default store)"
        )
    return tracking_uri(load_params(params_file))


def parse_model_reference(ref: str) -> tuple[str, str, str]:
    """'models:/n@a' -> (n, 'alias', a); 'models:/n/3' -> (n, 'version', '3')."""
    body = ref.removeprefix(REGISTRY_PREFIX)
    if body == ref or not body:
        raise RegistryError(f"{ref!r} is not a registry reference like models:/clipsep@champion")
    if "@" in body:
        name, _, alias = body.partition("@")
        if name and alias:
            return name, "alias", alias
    else:
        name, _, version = body.partition("/")
        if name and version.isdigit():
            return name, "version", version
    raise RegistryError(f"{ref!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def is_registry_reference(ref: str | Path) -> bool:
    """True for ``models:/...`` references, False for checkpoint paths."""
    return str(ref).startswith(REGISTRY_PREFIX)


# --- reading versions -------------------------------------------------------------------------


def lookup_version(client, name: str, kind: str, value: str):
    """The ModelVersion ``name@value`` (alias) or ``name/value`` (version); None when the store
    has no such model, alias or version. RegistryUnavailableError when it cannot be read."""
    from mlflow.exceptions import MlflowException

    try:
        if kind == "alias":
            return client.get_model_version_by_alias(name, value)
        return client.get_model_version(name, value)
    except MlflowException as err:
        if err.error_code in NOT_FOUND_CODES:
            return None
        raise RegistryUnavailableError.of(client.tracking_uri, err) from err
    except Exception as err:  # a dead server, a corrupt database: never "no such model"
        raise RegistryUnavailableError.of(client.tracking_uri, err) from err


def version_from_run(uri: str, name: str, version: str, run_id: str) -> bool:
    """Whether ``uri`` holds version ``version`` of model ``name``, registered from run ``run_id``
    (how a skipped register stage knows its model is still there). Raises
    RegistryUnavailableError when the store cannot be read."""
    if _missing_sqlite_store(uri) is not None:
        return False
    found = lookup_version(_client(uri), name, "version", str(version))
    return found is not None and found.run_id == run_id


def sqlite_path(uri: str) -> Path | None:
    """The database file of a local sqlite ``uri`` (None for any other store)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(unquote(uri.removeprefix("sqlite:///").partition("?")[0]))
    return path if path.is_absolute() else Path.cwd() / path


def _missing_sqlite_store(uri: str) -> Path | None:
    """The database file of a local sqlite ``uri`` when it does not exist (else None): reading a
    missing store must not create one, as opening an MlflowClient on it would."""
    path = sqlite_path(uri)
    return path if path is not None and not path.exists() else None


def _require_store(ref: str, uri: str) -> None:
    """ModelNotFoundError, before any MLflow call, when ``uri`` is a sqlite store not made yet."""
    missing = _missing_sqlite_store(uri)
    if missing is not None:
        raise ModelNotFoundError(
            f"no model version {ref}: there is no MLflow store at {missing} yet; train and "
            "register one first (`make quickstart` or `clipsep register`)"
        )


def _client(uri: str):
    try:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as err:  # a store that cannot even be opened
        raise RegistryUnavailableError.of(uri, err) from err


def _require_version(client, ref: str, uri: str):
    name, kind, value = parse_model_reference(ref)
    version = lookup_version(client, name, kind, value)
    if version is None:
        hint = what_is_registered(client, name, value if kind == "alias" else None)
        raise ModelNotFoundError(
            f"no model version {ref} in {uri}: "
            + (hint or "train and register one first (`make quickstart` or `clipsep register`)")
        )
    return version


SHOWN_VERSIONS = 5  # a missing reference's message names at most this many of the newest versions


def what_is_registered(client, name: str, alias: str | None = None) -> str:
    """What model ``name`` does have, and the reference to use instead, for a reference that
    named nothing (``alias``: the alias it asked for, if any); "" when it has no version at all
    (or the listing fails: the caller's message then stands on its own).

    A mistyped alias gets the closest alias by name (:func:`difflib.get_close_matches`), e.g.
    ``no alias 'champoin' on clipsep: did you mean @champion? (aliases: @challenger (v2),
    @champion (v1); versions 1-2)``; when none is close the aliases are listed, and the one
    alias there is, or the newest version, is offered (a first model below
    ``registry.champion_floor_db`` is only ``@challenger``, so ``@champion`` names nothing).
    """
    try:
        aliases = dict(client.get_registered_model(name).aliases or {})
        versions = sorted(
            (int(v.version) for v in client.search_model_versions(f"name='{name}'")), reverse=True
        )
    except Exception:  # no such registered model, or a listing this store does not answer
        return _other_models(client, name)
    if not versions:
        return ""
    model, newest, shown = f"{REGISTRY_PREFIX}{name}", versions[0], _versions_text(versions)
    close = difflib.get_close_matches(alias, list(aliases), n=1) if alias else []
    named = ", ".join(f"@{a} (v{v})" for a, v in sorted(aliases.items()))
    if close:
        return (
            f"no alias {alias!r} on {name}: did you mean @{close[0]}? (aliases: {named}; "
            f"{shown}); use {model}@{close[0]}"
        )
    if not aliases:
        return f"{name} has {shown}, no alias; use {model}/{newest}"
    offered = f"@{next(iter(aliases))}" if len(aliases) == 1 else "@ALIAS with one of them"
    return f"{name} has {named}, {shown}; use {model}{offered} (or {model}/{newest})"


def _versions_text(versions: list[int]) -> str:
    """'version 1', 'versions 1-3' (no gap), else the newest SHOWN_VERSIONS: 'versions 9, 7, 4'."""
    if len(versions) == 1:
        return f"version {versions[0]}"
    if versions == list(range(versions[0], versions[-1] - 1, -1)):
        return f"versions {versions[-1]}-{versions[0]}"
    shown = ", ".join(str(v) for v in versions[:SHOWN_VERSIONS])
    more = f" and {len(versions) - SHOWN_VERSIONS} older" if len(versions) > SHOWN_VERSIONS else ""
    return f"versions {shown}{more}"


def _other_models(client, name: str) -> str:
    """The registered model names of the store, for a reference to a name it does not have (the
    closest name by spelling, when one is close, is the one offered)."""
    try:
        names = sorted(m.name for m in client.search_registered_models())
    except Exception:
        return ""
    if not names:
        return ""
    close = difflib.get_close_matches(name, names, n=1)
    guess = f"did you mean {close[0]}? " if close else ""
    offered = close[0] if close else names[0]
    return (
        f"the store has no registered model {name!r}, only {', '.join(names)}; {guess}use "
        f"{REGISTRY_PREFIX}{offered}@ALIAS or {REGISTRY_PREFIX}{offered}/VERSION"
    )


def describe_model(ref: str, uri: str) -> ModelDescription:
    """Tags, aliases and run metrics of the version ``ref`` (``models:/...``) names in ``uri``."""
    _require_store(ref, uri)
    client = _client(uri)
    version = _require_version(client, ref, uri)
    try:
        run = client.get_run(version.run_id) if version.run_id else None
    except Exception as err:  # a store that answered the version, then failed
        raise RegistryUnavailableError.of(uri, err) from err
    return ModelDescription(
        reference=ref,
        version=str(version.version),
        aliases=tuple(version.aliases or ()),
        tags=dict(version.tags or {}),
        run_metrics=dict(run.data.metrics) if run else {},
    )


# --- resolving references into files ----------------------------------------------------------


def resolve_model(
    ref: str | Path,
    tracking_uri: str | None = None,
    cache_dir: str | Path | None = None,
    root: str | Path | None = None,
    elsewhere: tuple[str, Path] | None = None,
) -> ResolvedModel:
    """A checkpoint path or ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` -> local files.

    ``tracking_uri`` names the registry (default: MLFLOW_TRACKING_URI, else ./params.yaml's);
    relative checkpoint paths are taken from ``root`` (default: the working folder); registry
    files are cached under ``cache_dir`` (default: $TMPDIR/clipsep-models), which keeps the newest
    ``KEEP_VERSIONS`` versions per model and store (:func:`prune_cache`). ``elsewhere``
    (name, folder): another folder a relative path may have been meant from, e.g.
    ``("--profile tiny's root", params.path("root"))`` for a path given on a command line; when
    the path is missing but exists there, the error names it.
    Raises MissingWeightsError (no such file, no checkpoint in the version), ModelNotFoundError,
    RegistryUnavailableError.
    """
    if not is_registry_reference(ref):
        path = Path(ref)
        path = path if path.is_absolute() or root is None else Path(root) / path
        if not path.is_file():
            raise MissingWeightsError(_no_checkpoint(Path(ref), path, root, elsewhere))
        return ResolvedModel(path)
    ref = str(ref)
    name, kind, value = parse_model_reference(ref)
    uri = tracking_uri or registry_uri()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    found = _sqlite_version(uri, name, kind, value)
    version = found[0] if found else None
    model_dir = _version_dir(cache, name, version, uri) if found else None
    if model_dir is None or _cached_identity(model_dir) != found[1] or not _lease(model_dir):
        _require_store(ref, uri)
        client = _client(uri)
        registered = _require_version(client, ref, uri)
        version, identity = str(registered.version), version_identity(registered)
        model_dir = _version_dir(cache, name, version, uri)
        for _ in range(2):  # twice: another process may prune it between download and lease
            _download_model(client, name, version, uri, model_dir, identity)
            if _lease(model_dir):
                break
        else:
            raise RegistryUnavailableError(f"{model_dir} vanished twice right after its download")
        prune_cache(cache, name, version, uri)
    return _read_artifacts(ref, model_dir, version)


def _no_checkpoint(
    ref: Path, path: Path, root: str | Path | None, elsewhere: tuple[str, Path] | None
) -> str:
    """Why the checkpoint ``ref`` (looked for at ``path``) is missing: where relative paths start
    and, when it is a file under ``elsewhere``'s folder (another one), its path there."""
    if path.is_dir():
        return _a_folder(path)
    start = Path(root) if root is not None else Path.cwd()
    there = Path(elsewhere[1]) / ref if elsewhere and not ref.is_absolute() else None
    if there is None or not there.exists() or there.resolve() == path.resolve():
        return f"checkpoint {path} not found (give a file or models:/NAME@ALIAS)"
    where = (
        f"paths on the command line are relative to the working folder {start.resolve()}"
        if root is None
        else f"relative paths are taken from {start.resolve()}"
    )
    return f"checkpoint {path} not found ({where}); under {elsewhere[0]} it is {shown_path(there)}"


def _a_folder(path: Path) -> str:
    """``--model`` names a folder: the checkpoint in it (``best.pt``, else its one ``*.pt``)."""
    found = sorted(path.glob("*.pt"))
    best = path / BEST_CHECKPOINT
    guess = best if best in found else found[0] if len(found) == 1 else None
    hint = f": did you mean {guess}?" if guess else " (give a file or models:/NAME@ALIAS)"
    return f"{path} is a folder, not a checkpoint file{hint}"


def default_cache_dir() -> Path:
    """The cache of resolved registry models (and cached text-query embeddings):
    ``$TMPDIR/clipsep-models``."""
    return Path(tempfile.gettempdir()) / CACHE_FOLDER


def _store_id(uri: str) -> str:
    return hashlib.md5(uri.encode()).hexdigest()[:8]


def _version_dir(cache: Path, name: str, version: str, uri: str) -> Path:
    return cache / f"{name}-v{version}-{_store_id(uri)}"


def _lease(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a cached version; if so this process keeps a shared lock on it
    for as long as it lives, so that no other process prunes it meanwhile (:func:`prune_cache`;
    no locks without ``fcntl``, on Windows)."""
    if not (model_dir / "MLmodel").is_file():
        return False
    fcntl = _fcntl()
    if fcntl is None or _leased(model_dir):
        return True
    fd = _lock_shared(model_dir, fcntl)
    if fd is None:
        return False
    _LEASES[model_dir] = fd
    return True


def _lock_shared(folder: Path, fcntl) -> int | None:
    """A descriptor holding a shared ``flock`` on ``folder`` as it is now; None when it cannot be
    opened or a pruner renamed it away before the lock took."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits while a pruner renames it away (a moment)
        if os.stat(folder).st_ino == os.fstat(fd).st_ino:  # not renamed meanwhile
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _leased(model_dir: Path) -> bool:
    """Whether this process holds ``model_dir`` as it is now (not a folder deleted since)."""
    fd = _LEASES.get(model_dir)
    if fd is None:
        return False
    try:
        if os.fstat(fd).st_ino == os.stat(model_dir).st_ino:
            return True
    except OSError:
        pass
    os.close(_LEASES.pop(model_dir))
    return False


def _fcntl():
    try:
        import fcntl
    except ImportError:
        return None
    return fcntl


def versions_to_prune(cached: list[int], resolved: int, keep: int = KEEP_VERSIONS) -> list[int]:
    """The cached versions a resolution of version ``resolved`` removes: those older than it and
    not among the newest ``keep`` cached (a resolved older version, a rollback, removes no newer
    one). Ascending."""
    kept = set(sorted(cached, reverse=True)[:keep])
    return sorted(v for v in cached if v < resolved and v not in kept)


def cached_versions(cache: Path, name: str, uri: str) -> dict[int, Path]:
    """The cached versions of model ``name`` from store ``uri``: version -> folder. Only real
    folders (no links) named ``<name>-v<N>-<store>`` that hold an ``MLmodel`` count."""
    pattern = re.compile(rf"{re.escape(name)}-v([0-9]+)-{_store_id(uri)}")
    try:
        entries = list(Path(cache).iterdir())
    except OSError:
        return {}
    found = {}
    for path in entries:
        match = pattern.fullmatch(path.name)
        if match and not path.is_symlink() and path.is_dir() and (path / "MLmodel").is_file():
            found[int(match.group(1))] = path
    return found


def prune_cache(cache: Path, name: str, version: str, uri: str) -> list[str]:
    """Remove the cached versions of ``name`` (store ``uri``) that :func:`versions_to_prune`
    names after resolving ``version``, except those a process holds (:func:`_lease`), and the
    staging folders of its downloads that were killed (:func:`stale_downloads`); return the
    removed folders' names (logged in one line). Leftovers of an interrupted prune go too, and
    the trash folder with them once it is empty."""
    cache = Path(cache)
    found = cached_versions(cache, name, uri)
    candidates = [found[v] for v in versions_to_prune(list(found), int(version))]
    candidates += stale_downloads(cache, name, uri)
    removed = [folder.name for folder in candidates if _discard(folder, cache / TRASH_FOLDER)]
    _empty_trash(cache / TRASH_FOLDER)
    if removed:
        log.info(
            "model cache %s: removed %s (keeps the newest %d versions of %s)",
            cache,
            ", ".join(removed),
            KEEP_VERSIONS,
            name,
        )
    return removed


def stale_downloads(cache: Path, name: str, uri: str) -> list[Path]:
    """The staging folders ``.<name>-v<N>-<store>-*`` of model ``name`` (store ``uri``) in
    ``cache``, real folders only, sorted; a download still running holds its own lock on one, so
    :func:`prune_cache` leaves that one alone."""
    pattern = re.compile(rf"\.{re.escape(name)}-v[0-9]+-{_store_id(uri)}-.+")
    try:
        entries = list(Path(cache).iterdir())
    except OSError:
        return []
    return sorted(
        path
        for path in entries
        if pattern.fullmatch(path.name) and not path.is_symlink() and path.is_dir()
    )


def _discard(folder: Path, trash: Path) -> bool:
    """Rename ``folder`` into ``trash`` (atomic: readers see it whole or not at all) unless a
    process holds it; False when it is held or already gone."""
    fcntl = _fcntl()
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: a process holds it
        trash.mkdir(exist_ok=True)
        os.rename(folder, trash / f"{folder.name}-{secrets.token_hex(4)}")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _empty_trash(trash: Path) -> None:
    try:
        entries = list(trash.iterdir())
    except OSError:
        return
    for entry in entries:
        shutil.rmtree(entry, ignore_errors=True)
    with contextlib.suppress(OSError):  # another pruner may be filling it: then it stays
        trash.rmdir()


def version_identity(version) -> dict[str, str | None]:
    """What tells one registered version from another of the same number: run id and source."""
    return _identity(version.run_id, version.source)


def _identity(run_id: str | None, source: str | None) -> dict[str, str | None]:
    return {"run_id": run_id or None, "source": source or None}


def _cached_identity(model_dir: Path) -> dict[str, str | None] | None:
    """The identity a cached version was downloaded with (None: none recorded, or unreadable)."""
    try:
        return json.loads((model_dir / IDENTITY_FILE).read_text())
    except (OSError, ValueError):
        return None


def _read_artifacts(ref: str, model_dir: Path, version: str) -> ResolvedModel:
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    files = mlmodel["flavors"]["python_function"]
    artifacts = {
        key: model_dir / entry["path"] for key, entry in files.get("artifacts", {}).items()
    }
    if "checkpoint" not in artifacts or not artifacts["checkpoint"].is_file():
        raise MissingWeightsError(f"{ref} (version {version}) has no checkpoint artifact")
    return ResolvedModel(artifacts["checkpoint"], artifacts.get("clip_weights"), version)


def _sqlite_version(
    uri: str, name: str, kind: str, value: str
) -> tuple[str, dict[str, str | None]] | None:
    """(version, :func:`version_identity`) of what an alias (or version number) names in a sqlite
    store, read without mlflow.

    None whenever this cannot say for sure (not sqlite, no such row, another schema): the caller
    then asks MLflow.
    """
    path = sqlite_path(uri)
    if path is None or not path.is_file():
        return None
    columns = "SELECT v.version, v.run_id, v.source FROM model_versions v"
    live = "v.current_stage != 'Deleted_Internal'"
    query = (
        f"{columns} JOIN registered_model_aliases a ON a.name = v.name AND a.version = v.version "
        f"WHERE a.name = ? AND a.alias = ? AND {live}"
        if kind == "alias"
        else f"{columns} WHERE v.name = ? AND v.version = ? AND {live}"
    )
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute(query, (name, int(value) if kind == "version" else value)).fetchall()
    except (sqlite3.Error, ValueError):
        return None
    if len(rows) != 1:
        return None
    version, run_id, source = rows[0]
    return str(version), _identity(run_id, source)


def quiet_artifact_transfers() -> None:
    """No "Downloading artifacts" progress bars from MLflow for the artifact reads and writes
    clipsep does itself (a version's files on a separate run, the validation of a model being
    registered): set in the environment as a default, so a user's own
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` wins."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _download_model(
    client, name: str, version: str, uri: str, final: Path, identity: dict[str, str | None]
) -> Path:
    """Download a model version's files once, atomically, into ``final``, with their
    ``identity`` (:func:`version_identity`); a folder there from another version of the same
    number (a store made anew at the same URI) is discarded first."""
    import mlflow

    if (final / "MLmodel").is_file():
        if _cached_identity(final) == identity:
            return final
        _replace_stale(final, identity)
    quiet_artifact_transfers()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging, held = _locked_staging(final)
    try:
        # ask this registry where the version's files are: a "models:/" URI would be resolved
        # against MLflow's global registry URI (./mlflow.db by default), not this store
        source = client.get_model_version_download_uri(name, version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(staging), tracking_uri=uri
        )
        (Path(local) / IDENTITY_FILE).write_text(json.dumps(identity))
        os.replace(local, final)
    except OSError:
        if not (final / "MLmodel").is_file():  # another process won the race: use theirs
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if held is not None:
            os.close(held)
    return final


def _replace_stale(final: Path, identity: dict[str, str | None]) -> None:
    """Move the cached folder ``final``, which holds another version of its number, out of the
    way (this process lets go of its own lease on it first). RegistryUnavailableError when
    another process still holds it; none when another process replaced it meanwhile."""
    found = _cached_identity(final)
    fd = _LEASES.pop(final, None)
    if fd is not None:
        os.close(fd)
    trash = final.parent / TRASH_FOLDER
    kept = not _discard(final, trash)  # held by a process, or gone already
    if kept and (final / "MLmodel").is_file() and _cached_identity(final) != identity:
        raise RegistryUnavailableError(
            f"the model cache {final} holds another model of that version number (run "
            f"{(found or {}).get('run_id')}, the registry's is {identity.get('run_id')}: the store "
            "was made anew) and another process is using it; stop it, or pass another cache folder"
        )
    log.info("model cache %s: replaced, it held another registration of that version", final)
    _empty_trash(trash)


def _locked_staging(final: Path, attempts: int = 5) -> tuple[Path, int | None]:
    """A new staging folder beside ``final`` and a descriptor holding a shared lock on it until
    closed (None without ``fcntl``): a pruner takes only unlocked ones, the leftovers of killed
    downloads. Should a pruner take a new one in the moment before its lock, another is made."""
    fcntl = _fcntl()
    for _ in range(attempts):
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        if fcntl is None:
            return staging, None
        fd = _lock_shared(staging, fcntl)
        if fd is not None:
            return staging, fd
    return staging, None  # pruners kept winning: download unlocked rather than not at all
