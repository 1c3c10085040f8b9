"""Teacher-forcing and learning-rate schedules."""

from __future__ import annotations

import pytest

from hanseq.engine.config import TeacherForcingConfig, TrainingConfig
from hanseq.engine.schedules import learning_rate_factor, teacher_forcing_ratio


@pytest.mark.parametrize(
    "cfg",
    [
        TeacherForcingConfig("linear", 1.0, 0.25, steps=100),
        TeacherForcingConfig("exponential", 1.0, 0.25, k=0.99),
        TeacherForcingConfig("inverse_sigmoid", 1.0, 0.25, k=20.0),
    ],
)
def test_decaying_schedules_fall_from_start_to_the_floor(cfg):
    ratios = [teacher_forcing_ratio(cfg, s) for s in range(0, 2000, 10)]
    assert ratios[0] == pytest.approx(1.0, abs=0.06)
    assert all(a >= b for a, b in zip(ratios, ratios[1:], strict=False))
    assert ratios[-1] == pytest.approx(0.25, abs=1e-3)


def test_constant_schedule():
    assert teacher_forcing_ratio(TeacherForcingConfig(start=0.8), 5000) == 0.8


@pytest.mark.parametrize("decay", ["constant", "inverse_sqrt", "linear", "cosine"])
def test_learning_rate_warms_up_then_decays_to_the_floor(decay):
    cfg = TrainingConfig(
        warmup_steps=10, max_steps=100, lr_decay=decay, learning_rate=1e-3, min_learning_rate=1e-5
    )
    factors = [learning_rate_factor(cfg, s) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(f >= 0.01 for f in factors)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
