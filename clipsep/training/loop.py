"""Mix-and-separate training of CLIPSep (with noise invariant training when ``model.nit``).

``train(params, clips_dir, out_dir)`` trains a separator on the ingested clips and writes
``out_dir/{last.pt, best.pt, history.csv, curves.png, examples/, summary.json}`` (and
``snapshots/`` with ``train.keep_snapshots``).

* Data: :class:`clipsep.data.mixing.MixDataset` draws each step's batch as a pure function of
  (seed, step, rank); queries are cached CLIP frame embeddings (no CLIP per step).
* Optimisation: Adam, the warm-up/decay schedule of :mod:`clipsep.training.schedule`, gradient-norm
  clipping; fp16 AMP on CUDA, bf16 autocast on CPUs where it is measured faster, else fp32
  (``train.precision``, resolved by :mod:`clipsep.precision`).
* Resumable: ``last.pt`` holds model, optimiser, scheduler, scaler, step, RNG states and history;
  a rerun after any kill continues from it and (CPU, fp32) ends with the same weights. A rerun of
  a complete training does nothing (its files, summary timings included, stay as they were).
* Scale-out: under ``torchrun`` (WORLD_SIZE > 1) it runs DistributedDataParallel (gloo on CPU,
  NCCL on CUDA); each rank draws its share of the batch, rank 0 writes the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from clipsep.config import BEST_CHECKPOINT, CLIP_CHECKPOINT, LAST_CHECKPOINT, Params
from clipsep.data.mixing import (
    LoadedClip,
    MixBatch,
    MixDataset,
    load_wave,
    manifest_path,
    read_manifest,
    validation_batch,
)
from clipsep.env import process_rank, resolve_device
from clipsep.errors import INTERRUPTS, BadInputError
from clipsep.precision import (
    PrecisionChoice,
    autocast,
    network_pass_mode,
    onednn_uses_avx512,
    resolve_precision,
)
from clipsep.training import embeddings as frame_cache
from clipsep.training.schedule import lr_multiplier
from clipsep.model.losses import sdr_db
from clipsep.training.spectral import SpectralBatch, reconstruct, run_model, spectral_batch
from clipsep import progress as clipsep_progress
from clipsep.fileio import file_digest, torch_save

log = logging.getLogger(__name__)

STATE_FORMAT = "clipsep-training-state"
# Keys that may change between a run and its resumption (they do not change what is learned).
RESUME_FREE_KEYS = {
    "steps",
    "validate_every",
    "checkpoint_every",
    "num_workers",
    "device",
    "examples",
    "precision",
    "channels_last",
    "keep_snapshots",
}


# --- distributed ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def init_distributed(device: str) -> tuple[Dist, str]:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(), device
    dist = Dist(process_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.startswith("cuda"):
        device = f"cuda:{dist.local_rank}"
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist, device


# --- data ----------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """Train clips (audio in memory + frame embeddings), fixed validation set, text queries."""

    train_clips: list[LoadedClip]
    val_batch: MixBatch
    val_text_queries: torch.Tensor | None  # [V, N, D] or None when val clips have no labels
    encoder_reference: dict
    fingerprint: str


def prepare_data(
    params: Params, clips_dir: Path, out_dir: Path, device: str, dist: Dist
) -> TrainingData:
    """Load clips, build (rank 0) or read the frame-embedding cache, fix the validation mixtures."""
    from clipsep.model.query import QueryEncoder

    records = read_manifest(clips_dir)
    chosen = [r for r in records if r.split in ("train", "val")]
    encoder = QueryEncoder.from_config(
        params.clip, params.path("clip_model") / CLIP_CHECKPOINT, device
    )
    cache_dir = Path(out_dir) / "cache"
    if not dist.is_main:
        dist.barrier()  # wait for rank 0 to write the cache, then read it
    frame_embeddings = frame_cache.load_or_build(encoder, chosen, clips_dir, cache_dir)
    if dist.is_main:
        dist.barrier()
    loaded = {
        split: [
            LoadedClip(
                r, load_wave(r.audio_path, params.audio.sample_rate), frame_embeddings[r.clip_id]
            )
            for r in chosen
            if r.split == split
        ]
        for split in ("train", "val")
    }
    val_batch = validation_batch(loaded["val"], params)
    return TrainingData(
        train_clips=loaded["train"],
        val_batch=val_batch,
        val_text_queries=_text_queries(encoder, loaded["val"], val_batch),
        encoder_reference=encoder.reference(),
        fingerprint=frame_cache.cache_key(encoder, clips_dir),
    )


def _text_queries(encoder, val_clips: list[LoadedClip], batch: MixBatch) -> torch.Tensor | None:
    """Prompt-ensembled label embeddings [V, N, D] of the validation sources, if all have labels.

    Training never reads ground truth: labels come from the manifest only (a labelled ingest).
    """
    labels = {c.record.clip_id: c.record.label for c in val_clips}
    if not labels or any(label is None for label in labels.values()):
        return None
    names = sorted(set(labels.values()))
    table = dict(zip(names, encoder.encode_text(names).cpu()))
    return torch.stack([torch.stack([table[labels[i]] for i in ids]) for ids in batch.clip_ids])


# --- state, resumption ---------------------------------------------------------------------------


@dataclass
class RunState:
    """What survives a kill besides model/optimiser: step, history, best validation result."""

    step: int = 0
    history: list[dict] = field(default_factory=list)
    best_loss: float = math.inf
    best_step: int = -1
    seconds: float = 0.0  # training wall time summed over all sessions


def resume_key(params: Params, world_size: int, data: str) -> str:
    """Hash of everything that changes what is learned: the params but the run's length, the
    process count, and ``data`` (:func:`data_identity`); resumption refuses any other."""
    train = {k: v for k, v in dataclasses.asdict(params.train).items() if k not in RESUME_FREE_KEYS}
    learned = {
        "clip": dataclasses.asdict(params.clip),
        "audio": dataclasses.asdict(params.audio),
        "model": dataclasses.asdict(params.model),
        "train": train,
        "world_size": world_size,
        "data": data,
    }
    text = json.dumps(learned, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_identity(params: Params, clips_dir: Path) -> str:
    """16 hex digits of the sha256 of what training learns from besides its params: the clip
    manifest (it holds a sha256 of every source video, and the splits) and the CLIP weights file
    that embeds the frames (``clip.pretrained``, else pretrain-clip's ``clip.pt``; a tag or a
    folder is named by the params' clip section). Read without loading either."""
    digest = hashlib.sha256(file_digest(manifest_path(clips_dir)).encode())
    weights = Path(params.clip.pretrained or params.path("clip_model") / CLIP_CHECKPOINT)
    weights = weights.expanduser()
    if weights.is_file():
        digest.update(file_digest(weights).encode())
    return digest.hexdigest()[:16]


def save_state(path: Path, model, optimizer, scheduler, scaler, state: RunState, key: str) -> None:
    """Write ``last.pt`` atomically (tmp + os.replace): a kill never leaves a half-written file."""
    numpy_state = np.random.get_state()
    payload = {
        "format": STATE_FORMAT,
        "resume_key": key,
        "run": dataclasses.asdict(state),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
        },
    }
    torch_save(payload, path)


def load_state(path: Path, model, optimizer, scheduler, scaler, key: str) -> RunState | None:
    """Restore ``last.pt`` into the given objects; None when absent or from other params."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable state means: start over, loudly
        log.warning("ignoring unreadable training state %s (%s); starting from step 0", path, err)
        return None
    if not _resumable(payload, key):
        log.warning(
            "%s was written with other training params, data or process count; starting from "
            "step 0",
            path,
        )
        return None
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    scaler.load_state_dict(payload["scaler"])
    rng = payload["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(_tuples(rng["python"]))
    numpy_state = rng["numpy"]
    np.random.set_state((numpy_state[0], numpy_state[1].numpy(), *numpy_state[2:]))
    return RunState(**payload["run"])


def _resumable(payload: dict[str, Any], key: str) -> bool:
    """Whether a loaded ``last.pt`` is this format's and was written with these params (``key``:
    :func:`resume_key`)."""
    return payload.get("format") == STATE_FORMAT and payload.get("resume_key") == key


def finished_summary(out_dir: Path, key: str, steps: int) -> dict[str, Any] | None:
    """The stored ``summary.json`` of a training in ``out_dir`` that is already complete: its
    ``last.pt`` was written with these params (``key``), reached ``steps`` (or more) and its
    reports describe that step. None otherwise (no or other-params ``last.pt``, steps left to
    train, or reports missing or from an earlier step: training writes them)."""
    last = Path(out_dir) / LAST_CHECKPOINT
    if not last.is_file():
        return None
    try:  # mmap: the header is read without loading the weights
        payload = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        summary = json.loads((Path(out_dir) / "summary.json").read_text())
    except Exception:  # noqa: BLE001 - unreadable: train() decides and says so (load_state)
        return None
    if not _resumable(payload, key):
        return None
    step = int(payload["run"]["step"])
    if step < steps or not isinstance(summary, dict) or summary.get("steps") != step:
        return None
    return summary


def complete_line(out_dir: Path, step: int, steps: int) -> str:
    """What ``train`` says when ``last.pt`` has nothing left to train."""
    last = Path(out_dir) / LAST_CHECKPOINT
    if step == steps:
        return (
            f"training already complete: step {step} of {steps} in {last}; "
            "nothing to do (raise train.steps to continue)"
        )
    return (
        f"training already complete: step {step} (train.steps is {steps}) in {last}; "
        f"nothing to do (raise train.steps above {step} to continue)"
    )


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


# --- validation ----------------------------------------------------------------------------------


@torch.no_grad()
def validate(
    model, data: TrainingData, params: Params, device: str, depth: int
) -> dict[str, float | None]:
    """Validation loss with image and (if labelled) text queries, and the soft-mask SDR (dB)."""
    was_training = model.training
    model.eval()
    totals: dict[str, list[float]] = {"val_loss_image": [], "val_loss_text": [], "val_sdr": []}
    for start, batch, spec in _val_chunks(data, params, device):
        image_q = data.val_batch.queries[start : start + batch].to(device)
        masks, loss = _val_loss(model, spec, image_q, params, depth)
        totals["val_loss_image"].append(loss * batch)
        estimates = reconstruct(torch.sigmoid(masks.float()), spec.mix_spec, params)
        references = data.val_batch.sources[start : start + batch].to(device)
        totals["val_sdr"].append(float(sdr_db(estimates, references).sum()) / estimates.shape[1])
        if data.val_text_queries is not None:
            text_q = data.val_text_queries[start : start + batch].to(device)
            totals["val_loss_text"].append(_val_loss(model, spec, text_q, params, depth)[1] * batch)
    model.train(was_training)
    count = data.val_batch.sources.shape[0]
    return {k: (sum(v) / count if v else None) for k, v in totals.items()}


def _val_loss(
    model, spec: SpectralBatch, queries: torch.Tensor, params: Params, depth: int
) -> tuple[torch.Tensor, float]:
    """Mask logits and separation loss of one validation chunk for ``queries [b, N, D]``."""
    from clipsep.model.losses import separation_loss

    masks, noise = run_model(model, spec.mix_warped, queries, depth, False)
    loss = separation_loss(
        masks,
        noise,
        spec.targets,
        spec.weight,
        nit_lambda=params.train.nit_lambda,
        nit_gamma=params.train.nit_gamma,
    )
    return masks, float(loss.total)


def _val_chunks(
    data: TrainingData, params: Params, device: str
) -> Iterator[tuple[int, int, SpectralBatch]]:
    sources = data.val_batch.sources
    for start in range(0, sources.shape[0], params.train.batch_size):
        chunk = sources[start : start + params.train.batch_size].to(device)
        yield start, chunk.shape[0], spectral_batch(chunk, params)


# --- the loop ------------------------------------------------------------------------------------


@dataclass
class Trainer:
    """Model, optimiser and schedule of one run; ``step(batch)`` does one optimisation step."""

    params: Params
    device: str
    model: torch.nn.Module  # the DDP wrapper when distributed
    net: torch.nn.Module  # the bare CLIPSepNet (what checkpoints save)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    precision_choice: PrecisionChoice
    channels_last: bool

    @property
    def precision(self) -> str:
        """The resolved mode: fp32 | bf16 | fp16."""
        return self.precision_choice.mode

    @property
    def depth(self) -> int:
        return self.net.cfg.depth

    def step(self, batch: MixBatch) -> dict[str, float]:
        """One optimisation step on ``batch``; returns loss terms, grad norm and lr."""
        from clipsep.model.losses import (
            absent_query_loss,
            absent_rank_loss,
            sdr_loss,
            separation_loss,
        )

        train = self.params.train
        spec = spectral_batch(batch.sources.to(self.device), self.params)
        queries, n_sources = batch.queries.to(self.device), batch.queries.shape[1]
        if batch.absent_queries is not None:
            queries = torch.cat([queries, batch.absent_queries.to(self.device)], dim=1)
        frames = spec.mix_warped.shape[-1]
        with autocast(
            network_pass_mode(self.precision, self.device, frames, self.depth), self.device
        ):
            masks, noise = run_model(
                self.model,
                spec.mix_warped,
                queries,
                self.depth,
                self.channels_last,
                noise_queries=n_sources,
            )
        terms = separation_loss(
            masks[:, :n_sources].float(),
            None if noise is None else noise.float(),
            spec.targets,
            spec.weight,
            nit_lambda=train.nit_lambda,
            nit_gamma=train.nit_gamma,
        )
        absent = rank = masks.new_zeros((), dtype=torch.float32)
        if masks.shape[1] > n_sources:
            absent = absent_query_loss(masks[:, n_sources:].float(), spec.weight)
        if masks.shape[1] > n_sources and train.absent_rank_weight > 0:
            rank = absent_rank_loss(
                masks[:, n_sources:], masks[:, :n_sources], spec.targets, spec.weight
            )
        sdr_term = masks.new_zeros((), dtype=torch.float32)
        if train.sdr_weight > 0:
            sources = batch.sources.to(self.device)
            estimates = reconstruct(
                torch.sigmoid(masks[:, :n_sources].float()),
                spec.mix_spec,
                self.params,
                sources.shape[-1],
            )
            sdr_term = sdr_loss(estimates, sources)
        total = (
            terms.total
            + train.absent_weight * absent
            + train.absent_rank_weight * rank
            + train.sdr_weight * sdr_term
        )
        if not torch.isfinite(total):
            raise BadInputError(
                f"training loss became {float(total)}; lower train.lr or "
                "check the clips (silent or corrupt audio)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), train.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {
            "loss": float(total.detach()),
            "separation": float(terms.separation.detach()),
            "absent": float(absent.detach()),
            "absent_rank": float(rank.detach()),
            "neg_sdr": float(sdr_term.detach()),
            "noise_activation": float(terms.noise_activation),
            "grad_norm": float(grad_norm),
            "lr": lr,
        }


def auto_channels_last(mode: str, device: str) -> bool:
    """``train.channels_last: null``: channels_last with bf16/fp16 (1.22x on top of bf16 on
    AMX, 1.17-1.58x on a Zen 4), and in fp32 only where oneDNN runs AVX-512 (1.15-1.49x there;
    on AVX2 it is no faster, 0.92-1.01x): :func:`clipsep.precision.onednn_uses_avx512`."""
    if mode != "fp32":
        return True
    return device == "cpu" and onednn_uses_avx512()


def build_trainer(params: Params, query_dim: int, device: str, dist: Dist) -> Trainer:
    """Resolved precision and memory format, seeded model init, Adam, LambdaLR(lr_multiplier),
    GradScaler (active for fp16 only)."""
    from clipsep.model.factory import build_model

    precision = resolve_precision(params.train.precision, device)
    torch.manual_seed(params.train.seed)
    channels_last = params.train.channels_last
    if channels_last is None:
        channels_last = auto_channels_last(precision.mode, device)
    net = build_model(params.model, query_dim).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = net
    if dist.enabled:
        ids = [torch.device(device).index] if device.startswith("cuda") else None
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    optimizer = torch.optim.Adam(net.parameters(), lr=params.train.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, params.train)
    )
    scaler = torch.amp.GradScaler(
        "cuda" if device.startswith("cuda") else "cpu", enabled=precision.mode == "fp16"
    )
    return Trainer(
        params, device, model, net, optimizer, scheduler, scaler, precision, channels_last
    )


def train(
    params: Params, clips_dir: Path, out_dir: Path, open_live: Callable[[bool], Any] | None = None
) -> dict[str, Any]:
    """Train a separator on ``clips_dir``; write checkpoints and reports to ``out_dir``.

    ``open_live(resuming)`` (rank 0; e.g. :func:`clipsep.live_run.open_run` bound to the params
    and the stage)
    returns a live MLflow run that gets every step's record and the checkpoints as they come.

    Returns the summary (also written to ``out_dir/summary.json`` by rank 0). A training that
    is already complete (``last.pt`` of these params at ``train.steps`` or beyond, its reports
    written) logs ``training already complete: step N of N in .../last.pt; nothing to do (raise
    train.steps to continue)`` and returns the stored summary with ``already_complete`` True:
    nothing is loaded or written and ``open_live`` is not called (no MLflow session).
    """
    from clipsep.training import report

    dist, device = init_distributed(resolve_device(params.train.device))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_run_params(params, dist)
    key = resume_key(params, dist.world_size, data_identity(params, Path(clips_dir)))
    done = finished_summary(out_dir, key, params.train.steps) if dist.is_main else None
    finished = _agreed(done, dist)
    if finished is not None:  # no data, no model, no MLflow session: the files stay as they are
        return _nothing_to_do(finished, out_dir, params.train.steps, dist)
    data = prepare_data(params, Path(clips_dir), out_dir, device, dist)
    trainer = build_trainer(params, data.val_batch.queries.shape[-1], device, dist)
    state = (
        load_state(
            out_dir / LAST_CHECKPOINT,
            trainer.net,
            trainer.optimizer,
            trainer.scheduler,
            trainer.scaler,
            key,
        )
        or RunState()
    )
    if state.step:
        log.info("resuming from %s at step %d", out_dir / LAST_CHECKPOINT, state.step)
    elif dist.is_main:
        # a fresh run must not inherit a stale best
        (out_dir / BEST_CHECKPOINT).unlink(missing_ok=True)
    if dist.is_main:
        log.info("%s", start_line(trainer, data, state.step, dist.world_size))
        advice = gate_advice(params, trainer.net.cfg)
        if advice:
            log.warning("%s", advice)
    started = state.step
    session_start = time.perf_counter()
    live = open_live(state.step > 0) if dist.is_main and open_live is not None else None
    with _ends_run_on_error(live):
        run_steps(trainer, data, state, out_dir, dist, key, live)
    summary: dict[str, Any] = {"rank": dist.rank, "steps": state.step}
    if dist.is_main:
        summary = report.write_reports(
            trainer,
            data,
            state,
            out_dir,
            session_steps=state.step - started,
            session_seconds=time.perf_counter() - session_start,
        )
    if live is not None:
        live.flush()
        summary["mlflow_run_id"] = live.run_id
    dist.barrier()
    if dist.enabled:
        torch.distributed.destroy_process_group()
    return summary


def _agreed(value: Any, dist: Dist) -> Any:
    """Rank 0's ``value`` on every rank (so that all ranks train, or none)."""
    if not dist.enabled:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _nothing_to_do(
    finished: dict[str, Any], out_dir: Path, steps: int, dist: Dist
) -> dict[str, Any]:
    """Rank 0 says so (and reports the training done); the stored summary, ``already_complete``
    True (other ranks: their rank and the step)."""
    step = finished["steps"]
    if dist.is_main:
        log.info("%s", complete_line(out_dir, step, steps))
        clipsep_progress.report("train", step, step)
    dist.barrier()
    if dist.enabled:
        torch.distributed.destroy_process_group()
    if not dist.is_main:
        return {"rank": dist.rank, "steps": step}
    return {**finished, "already_complete": True}


def start_line(trainer: Trainer, data: TrainingData, step: int, world_size: int) -> str:
    """The log line a training opens with: its length and what decides what is learned."""
    p = trainer.params
    return (
        f"training steps {step}..{p.train.steps} on {len(data.train_clips)} clips: "
        f"preset {p.model.preset}, nit {'on' if p.model.nit else 'off'}, "
        f"mask_target {p.train.mask_target}, n_mix {p.train.n_mix}, "
        f"batch {p.train.batch_size} ({world_size} process(es)), lr {p.train.lr:g}, "
        f"precision {trainer.precision}, channels_last {'on' if trainer.channels_last else 'off'}"
        f", device {trainer.device}"
    )


def gate_advice(params: Params, net_cfg) -> str | None:
    """A warning for a network with a query gate trained without absent queries, the setting in
    which the gate did not pay (docs/evaluation.md, round 5); None otherwise."""
    if not net_cfg.gate_stride or params.train.absent_candidates:
        return None
    return (
        f"model preset {params.model.preset} has a query gate, but train.absent_candidates is 0: "
        "the gate paid only when trained with absent queries (docs/evaluation.md, round 5); "
        "--profile gated has the measured recipe"
    )


def _check_run_params(params: Params, dist: Dist) -> None:
    train = params.train  # its ranges (steps >= 1, ...) are checked when params load
    if train.batch_size % dist.world_size:
        raise BadInputError(
            f"train.batch_size={train.batch_size} must be divisible by the "
            f"number of processes ({dist.world_size})"
        )


def run_end(err: BaseException) -> tuple[str, str]:
    """(MLflow status, ``clipsep.end_reason``) of a training ended by ``err``: KILLED for an
    interruption (:data:`clipsep.errors.INTERRUPTS`), else FAILED."""
    name = type(err).__name__
    if not isinstance(err, INTERRUPTS):
        return "FAILED", f"train: {name}: {err}"
    detail = f"{name} {err}" if str(err) else name
    return "KILLED", f"train: interrupted ({detail})"


@contextlib.contextmanager
def _ends_run_on_error(live):
    """Close the live MLflow run FAILED on an error, KILLED on Ctrl-C or SIGTERM (re-raised)."""
    import signal
    import threading

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    main_thread = live is not None and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    try:
        yield
    except BaseException as err:
        if live is not None:
            live.end(*run_end(err))
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def run_steps(
    trainer: Trainer,
    data: TrainingData,
    state: RunState,
    out_dir: Path,
    dist: Dist,
    key: str,
    live=None,
) -> None:
    """Steps ``state.step .. train.steps - 1``: train, validate, checkpoint, show progress
    (and log each step's record and the checkpoints to the ``live`` MLflow run, if any)."""
    train = trainer.params.train
    dataset = MixDataset(
        data.train_clips, trainer.params, train.batch_size // dist.world_size, dist.rank
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=train.num_workers,
        sampler=range(state.step, train.steps),
    )
    trainer.model.train()
    progress = clipsep_progress.bar(
        total=train.steps, initial=state.step, desc="train", unit="step", hidden=not dist.is_main
    )
    log_every = max(1, min(50, train.steps // 10))
    tick = time.perf_counter()
    for batch in loader:
        metrics = trainer.step(batch)
        state.step += 1
        now = time.perf_counter()
        state.seconds += now - tick
        tick = now
        record = {"step": state.step, **metrics}
        if state.step % train.validate_every == 0 or state.step == train.steps:
            record.update(_validate_and_keep_best(trainer, data, state, out_dir, dist))
            tick = time.perf_counter()  # validation time is not training time
        state.history.append(record)
        _show_progress(progress, record, state, log_every, dist)
        if live is not None:
            live.record(record)
            if state.best_step == state.step:
                live.checkpoint(out_dir / BEST_CHECKPOINT)
        if state.step % train.checkpoint_every == 0 or state.step == train.steps:
            if dist.is_main:
                save_state(
                    out_dir / LAST_CHECKPOINT,
                    trainer.net,
                    trainer.optimizer,
                    trainer.scheduler,
                    trainer.scaler,
                    state,
                    key,
                )
                if live is not None:
                    live.checkpoint(out_dir / LAST_CHECKPOINT)
            tick = time.perf_counter()
    progress.close()


def _validate_and_keep_best(
    trainer: Trainer, data: TrainingData, state: RunState, out_dir: Path, dist: Dist
) -> dict[str, float | None]:
    """Rank 0 validates and saves ``best.pt`` on a new best image-query loss (and, with
    ``train.keep_snapshots``, ``snapshots/step-NNNNNN.pt`` every time); others wait."""
    from clipsep.model.factory import save_checkpoint

    metrics: dict[str, float | None] = {}
    if dist.is_main:
        metrics = validate(trainer.net, data, trainer.params, trainer.device, trainer.depth)
        paths = []
        if metrics["val_loss_image"] < state.best_loss:
            state.best_loss, state.best_step = metrics["val_loss_image"], state.step
            paths.append(out_dir / BEST_CHECKPOINT)
        if trainer.params.train.keep_snapshots:
            paths.append(out_dir / "snapshots" / f"step-{state.step:06d}.pt")
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(
                path,
                trainer.net,
                model_cfg=trainer.params.model,
                audio_cfg=trainer.params.audio,
                query=data.encoder_reference,
                extra={
                    "step": state.step,
                    "train_seconds": state.seconds,
                    "val": metrics,
                    "precision": trainer.precision_choice.to_dict(),
                    "params": trainer.params.to_dict(),
                    "data_fingerprint": data.fingerprint,
                },
            )
    dist.barrier()
    return metrics


def _show_progress(progress, record: dict, state: RunState, log_every: int, dist: Dist) -> None:
    if not dist.is_main:
        return
    if state.step % log_every == 0 or state.step == progress.total:
        clipsep_progress.report("train", state.step, progress.total)
    rate = state.step / state.seconds if state.seconds else 0.0
    if not progress.disable:
        progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        progress.update(1)
    elif state.step % log_every == 0 or "val_loss_image" in record:
        val = record.get("val_loss_image")
        log.info(
            "step %d/%d loss %.4f lr %.2e %.2f steps/s%s",
            state.step,
            progress.total,
            record["loss"],
            record["lr"],
            rate,
            "" if val is None else f" val {val:.4f}",
        )
