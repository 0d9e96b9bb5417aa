"""CLIPSep training losses: pure functions of logits, targets and weights (imports torch only).

Shapes: logits/targets ``[B, N, W, T]``, per-bin weights ``[B, 1, W, T]`` (broadcast over N),
noise logits ``[B, 2, W, T]``. Everything is computed in float32 even under autocast. The BCE is
written out because the fused ``F.binary_cross_entropy`` refuses to run inside CUDA autocast: from
logits (log-sigmoid) for the plain loss, from clamped probabilities for NIT's min(1, p + q), with
finite gradients even for saturated masks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from clipsep.errors import BadInputError

LOG_FLOOR = -100.0  # PyTorch's BCE clamp of log(p)
MIN_PROB = 1e-38  # smallest normal float32: log(MIN_PROB) = -87.5, finite with a finite gradient


class LossTerms(NamedTuple):
    """``total`` is what to backpropagate; the rest are for logging (scalars)."""

    total: torch.Tensor
    separation: torch.Tensor  # weighted BCE part (after the PIT min for NIT)
    regulariser: torch.Tensor  # NIT noise regulariser (0 for the plain loss)
    noise_activation: torch.Tensor  # A = mean(sig(N1) + sig(N2)) (0 for the plain loss)


def weighted_bce(prob: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-example mean of ``w * BCE(p, g)`` over all bins: ``[B, ...] -> [B]``.

    Probabilities are clamped away from exactly 0 and 1 before the log: an unclamped log(0) is
    -inf, and its backward (0 / 0) turns the gradient into NaN even where the value is clamped.
    """
    prob, target, weight = prob.float(), target.float(), weight.float()
    log_p = torch.log(prob.clamp_min(MIN_PROB)).clamp_min(LOG_FLOOR)
    log_not_p = torch.log((1.0 - prob).clamp_min(MIN_PROB)).clamp_min(LOG_FLOOR)
    bce = -(target * log_p + (1.0 - target) * log_not_p)
    return (weight * bce).flatten(1).mean(dim=1)


def weighted_bce_with_logits(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """:func:`weighted_bce` of ``sigmoid(logits)``, stably from the logits: ``[B, ...] -> [B]``."""
    logits, target, weight = logits.float(), target.float(), weight.float()
    bce = -(target * F.logsigmoid(logits) + (1.0 - target) * F.logsigmoid(-logits))
    return (weight * bce).flatten(1).mean(dim=1)


def clipsep_loss(
    mask_logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor
) -> LossTerms:
    """Plain CLIPSep loss: mean over batch and sources of the weighted BCE of ``sigmoid(M_n)``."""
    _check_shapes(mask_logits, targets, weight)
    expanded = weight.expand_as(mask_logits)
    per_source = weighted_bce_with_logits(
        mask_logits.flatten(0, 1), targets.flatten(0, 1), expanded.flatten(0, 1)
    )
    separation = per_source.mean()  # every (example, source) has the same number of bins
    zero = separation.new_zeros(())
    return LossTerms(separation, separation, zero, zero)


def nit_loss(
    mask_logits: torch.Tensor,
    noise_logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    *,
    nit_lambda: float,
    nit_gamma: float,
) -> LossTerms:
    """Noise invariant training loss (N = 2 sources, 2 noise heads).

    P_nj = min(1, sig(M_n) + sig(N_j)); per example the better of the two head assignments
    (1->1, 2->2) and (1->2, 2->1); plus ``nit_lambda * relu(mean(sig(N1) + sig(N2)) - nit_gamma)``.
    """
    _check_shapes(mask_logits, targets, weight)
    if mask_logits.shape[1] != 2 or noise_logits.shape != mask_logits.shape:
        raise BadInputError(
            f"NIT needs 2 sources and 2 noise heads of the same shape, got masks "
            f"{tuple(mask_logits.shape)} and noise {tuple(noise_logits.shape)}"
        )
    query_prob = torch.sigmoid(mask_logits.float())  # [B, 2, W, T]
    noise_prob = torch.sigmoid(noise_logits.float())  # [B, 2, W, T]
    same = _per_source_bce(_capped_sum(query_prob, noise_prob), targets, weight)
    swapped = _per_source_bce(_capped_sum(query_prob, noise_prob.flip(1)), targets, weight)
    per_example = torch.minimum(same.mean(dim=1), swapped.mean(dim=1))  # [B]
    separation = per_example.mean()
    activation = noise_prob.sum(dim=1).mean()
    regulariser = nit_lambda * torch.relu(activation - nit_gamma)
    return LossTerms(separation + regulariser, separation, regulariser, activation.detach())


def _capped_sum(query_prob: torch.Tensor, noise_prob: torch.Tensor) -> torch.Tensor:
    """min(1, p + q) as 1 - relu(1 - (p + q)): zero gradient where saturated, as in the paper."""
    return 1 - torch.relu(1 - (query_prob + noise_prob))


def _per_source_bce(
    prob: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """``[B, N, W, T]`` probabilities -> ``[B, N]`` weighted BCE per example and source."""
    batch, sources = prob.shape[:2]
    expanded = weight.expand_as(prob)
    flat = weighted_bce(prob.flatten(0, 1), targets.flatten(0, 1), expanded.flatten(0, 1))
    return flat.view(batch, sources)


def _check_shapes(mask_logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> None:
    if mask_logits.dim() != 4 or targets.shape != mask_logits.shape:
        raise BadInputError(
            f"mask logits {tuple(mask_logits.shape)} and targets "
            f"{tuple(targets.shape)} must both be [B, N, W, T]"
        )
    expected = (mask_logits.shape[0], 1, *mask_logits.shape[2:])
    if tuple(weight.shape) != expected:
        raise BadInputError(f"weight must be [B, 1, W, T] = {expected}, got {tuple(weight.shape)}")


def absent_query_loss(absent_logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted BCE of masks ``[B, M, W, T]`` for queries of sounds *not* in the mixture, towards 0.

    Mix-and-separate alone never shows the model a query for something absent, so nothing teaches
    it silence; this term does, with the same per-bin weight as the separation loss. Scalar.
    """
    if absent_logits.dim() != 4 or tuple(weight.shape) != (
        absent_logits.shape[0],
        1,
        *absent_logits.shape[2:],
    ):
        raise BadInputError(
            f"absent logits {tuple(absent_logits.shape)} must be [B, M, W, T] "
            f"with weight [B, 1, W, T], got weight {tuple(weight.shape)}"
        )
    expanded = weight.expand_as(absent_logits).flatten(0, 1)
    flat = absent_logits.flatten(0, 1)
    return weighted_bce_with_logits(flat, torch.zeros_like(flat), expanded).mean()


def absent_rank_loss(
    absent_logits: torch.Tensor,
    source_logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
) -> torch.Tensor:
    """Logistic ranking of absent-query masks below the right queries' masks. Scalar.

    On the bins where source n dominates (``targets[:, n] == 1``), each absent mask m should be
    below source n's own mask: ``softplus(A_m - M_n)`` (RankNet's loss on the logit gap), weighted
    by the separation loss's per-bin weight and averaged over those bins. It pushes the absent
    mask down and the right one up by the same amount, so, unlike :func:`absent_query_loss`, it
    cannot be met by quieting every query (with NIT the noise heads would take the sources over).
    With the source logits detached it could, and did: both fell together without bound.
    Shapes: absent ``[B, M, W, T]``, sources and targets ``[B, N, W, T]``, weight
    ``[B, 1, W, T]``. Measured (docs/evaluation.md, round 3): it does not pay at 700 steps.
    """
    _check_shapes(source_logits, targets, weight)
    if absent_logits.dim() != 4 or absent_logits.shape[2:] != source_logits.shape[2:]:
        raise BadInputError(
            f"absent logits {tuple(absent_logits.shape)} must be [B, M, W, T] "
            f"with W, T of the sources {tuple(source_logits.shape)}"
        )
    gap = absent_logits.float()[:, :, None] - source_logits.float()[:, None]
    bins = (targets.float() * weight.float())[:, None]  # [B, 1, N, W, T]
    per_bin = F.softplus(gap) * bins
    return per_bin.sum() / (bins.sum() * absent_logits.shape[1]).clamp_min(1e-8)


def sdr_db(estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Plain SDR ``10 log10(|s|^2 / |s - s_hat|^2)`` per signal: ``[B, N, L]`` -> ``[B, N]``.

    Not scale-invariant, as BSS-Eval's SDR is not either; 1e-10 keeps silence finite.
    """
    signal = references.pow(2).sum(-1)
    error = (references - estimates).pow(2).sum(-1)
    return 10 * torch.log10((signal + 1e-10) / (error + 1e-10))


def sdr_loss(estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Negative :func:`sdr_db`, averaged: ``[B, N, L]`` -> scalar (a training term)."""
    if estimates.shape != references.shape or estimates.dim() != 3:
        raise BadInputError(
            f"estimates {tuple(estimates.shape)} and references {tuple(references.shape)} "
            "must both be [B, N, L]"
        )
    return -sdr_db(estimates.float(), references.float()).mean()


def separation_loss(
    mask_logits: torch.Tensor,
    noise_logits: torch.Tensor | None,
    targets: torch.Tensor,
    weight: torch.Tensor,
    *,
    nit_lambda: float,
    nit_gamma: float,
) -> LossTerms:
    """The NIT loss when the model produced noise logits, else the plain CLIPSep loss.

    Call as ``separation_loss(*model(mix, queries), targets, weight, nit_lambda=l, nit_gamma=g)``.
    """
    if noise_logits is None:
        return clipsep_loss(mask_logits, targets, weight)
    return nit_loss(
        mask_logits, noise_logits, targets, weight, nit_lambda=nit_lambda, nit_gamma=nit_gamma
    )
