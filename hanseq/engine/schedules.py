"""Schedules over training steps: the teacher-forcing ratio and the learning rate.

Teacher forcing trains on gold histories, but at inference the decoder reads its own output
(exposure bias). Scheduled sampling (Bengio et al., 2015) lowers the share of gold previous
tokens as training goes on, by one of their decay curves.
"""

from __future__ import annotations

import math

from hanseq.engine.config import TeacherForcingConfig, TrainingConfig


def teacher_forcing_ratio(cfg: TeacherForcingConfig, step: int) -> float:
    """Probability that a decoder step reads the gold previous token at this training step."""
    if cfg.schedule == "constant":
        return cfg.start
    if cfg.schedule == "linear":
        return max(cfg.end, cfg.start - (cfg.start - cfg.end) * step / max(cfg.steps, 1))
    if cfg.schedule == "exponential":
        return max(cfg.end, cfg.start * cfg.k**step)
    # inverse sigmoid: k / (k + exp(step / k)); k ~ the step count around which it falls
    decay = cfg.k / (cfg.k + math.exp(min(step / cfg.k, 700.0)))
    return cfg.end + (cfg.start - cfg.end) * decay


def learning_rate_factor(cfg: TrainingConfig, step: int) -> float:
    """Multiplier of the base learning rate: linear warm-up, then the chosen decay."""
    floor = cfg.min_learning_rate / cfg.learning_rate
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    after = step - cfg.warmup_steps
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    if cfg.lr_decay == "constant":
        factor = 1.0
    elif cfg.lr_decay == "inverse_sqrt":
        factor = math.sqrt(max(cfg.warmup_steps, 1) / max(step, 1))
    elif cfg.lr_decay == "linear":
        factor = 1.0 - after / span
    else:  # cosine
        factor = 0.5 * (1.0 + math.cos(math.pi * min(after / span, 1.0)))
    return max(factor, floor)
