"""The learning-rate schedule of CLIPSep: linear warm-up, linear decay, then constant.

The paper (train.py defaults) warms up over 5 000 steps, decays linearly to 0.1x by step 100 000
and stays there; ``params.yaml`` scales those step counts to the profile. The schedule is a pure
function of the step so that resumed runs reproduce it exactly.
"""

from __future__ import annotations

from clipsep.config import TrainConfig


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Factor applied to ``cfg.lr`` for optimiser step ``step`` (0-based).

    Warm-up: (step + 1) / warmup_steps up to 1 (the paper's LambdaLR uses step + 1, so the first
    step already moves). Decay: linear from 1 at ``warmup_steps`` to ``final_lr_scale`` at
    ``decay_steps``. After ``decay_steps``: ``final_lr_scale``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if step >= cfg.decay_steps or cfg.decay_steps == cfg.warmup_steps:
        return cfg.final_lr_scale
    progress = (step - cfg.warmup_steps) / (cfg.decay_steps - cfg.warmup_steps)
    return 1.0 + progress * (cfg.final_lr_scale - 1.0)
