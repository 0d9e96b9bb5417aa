"""Losses, tested by their invariances rather than by hard-coded numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipsep.errors import BadInputError
from clipsep.model.losses import (
    absent_query_loss,
    absent_rank_loss,
    clipsep_loss,
    nit_loss,
    sdr_loss,
    separation_loss,
    weighted_bce,
)

torch.set_num_threads(1)
NIT = {"nit_lambda": 0.1, "nit_gamma": 0.25}


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    targets = (torch.rand(3, 2, 16, 8, generator=gen) > 0.5).float()
    weight = torch.rand(3, 1, 16, 8, generator=gen) * 2 + 0.01
    mask_logits = torch.randn(3, 2, 16, 8, generator=gen)
    noise_logits = torch.randn(3, 2, 16, 8, generator=gen) - 1
    return mask_logits, noise_logits, targets, weight


def test_weighted_bce_matches_torch(batch):
    mask_logits, _, targets, weight = batch
    prob = torch.sigmoid(mask_logits)
    expected = F.binary_cross_entropy(
        prob, targets, weight=weight.expand_as(prob), reduction="none"
    )
    assert torch.allclose(
        weighted_bce(prob, targets, weight.expand_as(prob)), expected.flatten(1).mean(1), atol=1e-6
    )


def test_swapping_noise_heads_changes_nothing(batch):
    mask_logits, noise_logits, targets, weight = batch
    a = nit_loss(mask_logits, noise_logits, targets, weight, **NIT)
    b = nit_loss(mask_logits, noise_logits.flip(1), targets, weight, **NIT)
    assert torch.allclose(a.total, b.total) and torch.allclose(a.regulariser, b.regulariser)


def test_nit_pit_min_is_per_example(batch):
    mask_logits, noise_logits, targets, weight = batch
    # swap the heads of one example only: a batch-level PIT would change, a per-example one cannot
    mixed = noise_logits.clone()
    mixed[0] = noise_logits[0].flip(0)
    a = nit_loss(mask_logits, noise_logits, targets, weight, **NIT).total
    assert torch.allclose(a, nit_loss(mask_logits, mixed, targets, weight, **NIT).total)


def test_perfect_mask_gives_the_minimum(batch):
    _, _, targets, weight = batch
    perfect = (targets * 2 - 1) * 30.0  # sigmoid -> 0/1 exactly where the target is
    silent_noise = torch.full_like(perfect, -30.0)
    best_plain = clipsep_loss(perfect, targets, weight).total
    best_nit = nit_loss(perfect, silent_noise, targets, weight, **NIT).total
    assert best_plain < 1e-6 and best_nit < 1e-6
    for seed in range(3):
        noise = torch.randn(perfect.shape, generator=torch.Generator().manual_seed(seed))
        assert clipsep_loss(perfect + 10 * noise, targets, weight).total > best_plain
        assert nit_loss(perfect + 10 * noise, silent_noise, targets, weight, **NIT).total > best_nit


def test_nit_with_silent_noise_heads_equals_plain_loss(batch):
    mask_logits, _, targets, weight = batch
    silent = torch.full_like(mask_logits, -80.0)
    plain = clipsep_loss(mask_logits, targets, weight).total
    assert torch.allclose(nit_loss(mask_logits, silent, targets, weight, **NIT).total, plain)


def test_noise_heads_can_only_help_fully_active_targets(batch):
    mask_logits, noise_logits, targets, weight = batch
    nit = nit_loss(mask_logits, noise_logits, targets, weight, nit_lambda=0.0, nit_gamma=0.25)
    # noise heads can only explain target energy the query masks missed: with all-ones targets
    # adding noise mass can only help
    ones = torch.ones_like(targets)
    with_noise = nit_loss(mask_logits, noise_logits, ones, weight, nit_lambda=0.0, nit_gamma=0.25)
    assert with_noise.total <= clipsep_loss(mask_logits, ones, weight).total
    assert nit.separation == nit.total


def test_regulariser_only_above_gamma(batch):
    mask_logits, _, targets, weight = batch
    low = torch.full_like(mask_logits, -4.0)  # sig ~ 0.018 per head: A ~ 0.036 < 0.25
    high = torch.full_like(mask_logits, 0.0)  # sig = 0.5 per head: A = 1.0
    below = nit_loss(mask_logits, low, targets, weight, **NIT)
    above = nit_loss(mask_logits, high, targets, weight, **NIT)
    assert below.regulariser == 0 and below.noise_activation < 0.25
    assert above.noise_activation == pytest.approx(1.0)
    assert above.regulariser.item() == pytest.approx(0.1 * (1.0 - 0.25))


def test_saturated_sum_has_zero_gradient(batch):
    _, _, targets, weight = batch
    mask_logits = torch.full_like(targets, 5.0, requires_grad=True)
    noise_logits = torch.full_like(targets, 5.0, requires_grad=True)  # 0.99 + 0.99 > 1
    loss = nit_loss(mask_logits, noise_logits, targets, weight, nit_lambda=0.0, nit_gamma=0.25)
    loss.total.backward()
    assert mask_logits.grad.abs().max() == 0


def test_separation_loss_dispatches_on_noise_logits(batch):
    mask_logits, noise_logits, targets, weight = batch
    assert torch.equal(
        separation_loss(mask_logits, None, targets, weight, **NIT).total,
        clipsep_loss(mask_logits, targets, weight).total,
    )
    assert torch.equal(
        separation_loss(mask_logits, noise_logits, targets, weight, **NIT).total,
        nit_loss(mask_logits, noise_logits, targets, weight, **NIT).total,
    )


def test_losses_reject_bad_shapes(batch):
    mask_logits, noise_logits, targets, weight = batch
    with pytest.raises(BadInputError, match="weight"):
        clipsep_loss(mask_logits, targets, weight.expand_as(targets))
    with pytest.raises(BadInputError, match="2 noise heads"):
        nit_loss(mask_logits, noise_logits[:, :1], targets, weight, **NIT)


def test_plain_loss_is_weighted_bce_of_the_sigmoid(batch):
    mask_logits, _, targets, weight = batch
    prob = torch.sigmoid(mask_logits)
    expected = F.binary_cross_entropy(prob, targets, weight=weight.expand_as(prob))
    assert torch.allclose(clipsep_loss(mask_logits, targets, weight).total, expected, atol=1e-6)


@pytest.mark.parametrize("extreme", [30.0, 120.0])
def test_saturated_masks_give_finite_gradients(batch, extreme):
    _, _, targets, weight = batch
    wrong = ((1 - 2 * targets) * extreme).requires_grad_()  # confidently wrong everywhere
    noise = torch.full_like(targets, -extreme).requires_grad_()
    clipsep_loss(wrong, targets, weight).total.backward()
    nit_loss(wrong, noise, targets, weight, **NIT).total.backward()
    assert torch.isfinite(wrong.grad).all() and torch.isfinite(noise.grad).all()
    assert wrong.grad.abs().sum() > 0  # the plain loss still pushes saturated wrong masks back


def test_absent_query_loss_is_the_weighted_bce_towards_silence(batch):
    mask_logits, _, _, weight = batch
    expected = weighted_bce(
        torch.sigmoid(mask_logits), torch.zeros_like(mask_logits), weight.expand_as(mask_logits)
    ).mean()
    assert torch.allclose(absent_query_loss(mask_logits, weight), expected, rtol=1e-4)
    silent = torch.full_like(mask_logits, -30.0)
    assert float(absent_query_loss(silent, weight)) < 1e-10  # silence is what it asks for
    assert float(absent_query_loss(mask_logits + 1, weight)) > float(
        absent_query_loss(mask_logits, weight)
    )  # a louder absent mask costs more
    with pytest.raises(BadInputError, match="absent logits"):
        absent_query_loss(mask_logits, weight[:, :, :4])


def test_absent_rank_loss_ranks_below_the_dominating_source_only(batch):
    mask_logits, _, targets, weight = batch
    absent = torch.randn(3, 1, 16, 8, generator=torch.Generator().manual_seed(1))
    loss = absent_rank_loss(absent, mask_logits, targets, weight)
    # by hand: softplus(A - M_n) on the bins where n dominates, weighted, averaged over them
    bins = targets * weight
    expected = (F.softplus(absent - mask_logits) * bins).sum() / bins.sum()
    assert torch.allclose(loss, expected, rtol=1e-5)
    # far below every source: no cost; shifting all logits together changes nothing
    assert (
        float(absent_rank_loss(mask_logits.min() - 40 + absent * 0, mask_logits, targets, weight))
        < 1e-12
    )
    assert torch.allclose(absent_rank_loss(absent + 3, mask_logits + 3, targets, weight), loss)
    # a bin no source dominates does not count
    changed = absent.clone()
    changed[targets.sum(dim=1, keepdim=True) == 0] += 50.0
    assert torch.allclose(absent_rank_loss(changed, mask_logits, targets, weight), loss)
    # it pushes the absent mask down and the right one up, by the same amount
    absent.requires_grad_(True)
    sources = mask_logits.clone().requires_grad_(True)
    absent_rank_loss(absent, sources, targets, weight).backward()
    assert (absent.grad >= 0).all() and (sources.grad <= 0).all()
    assert torch.allclose(absent.grad.sum(), -sources.grad.sum(), rtol=1e-5)
    with pytest.raises(BadInputError, match="absent logits"):
        absent_rank_loss(absent[:, :, :4], mask_logits, targets, weight)


def test_sdr_loss_is_minus_the_sdr_in_db_and_scale_invariant():
    torch.manual_seed(0)
    references = torch.randn(2, 2, 4000)
    noise = torch.randn(2, 2, 4000)
    estimates = references + 0.1 * noise  # SDR = 10 log10(|s|^2 / |0.1 n|^2)
    expected = -(10 * torch.log10(references.pow(2).sum(-1) / (0.1 * noise).pow(2).sum(-1)))
    assert torch.allclose(sdr_loss(estimates, references), expected.mean(), atol=1e-4)
    assert torch.allclose(sdr_loss(5 * estimates, 5 * references), expected.mean(), atol=1e-4)
    assert sdr_loss(references, references) < -60  # a perfect estimate: very high SDR, finite
    assert torch.isfinite(sdr_loss(torch.zeros(1, 1, 10), torch.zeros(1, 1, 10)))


def test_sdr_loss_gradient_moves_the_estimate_towards_the_reference():
    references = torch.randn(1, 2, 1000)
    estimates = torch.zeros(1, 2, 1000, requires_grad=True)
    sdr_loss(estimates, references).backward()
    assert (estimates.grad * references).sum() < 0  # descent increases the overlap
