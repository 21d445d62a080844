"""Per-iteration learning rate: linear warm-up, then half-cycle cosine to min_lr."""
import math

import pytest
import torch

from util.lr_sched import adjust_learning_rate, learning_rate_at

# ALTA's run: 10 warm-up epochs of a 100-epoch schedule (training stops after 30).
SCHEDULE = dict(lr=1e-3, min_lr=1e-5, warmup_epochs=10, epochs=100)


@pytest.mark.parametrize("epoch, expected", [
    (0.0, 0.0),
    (2.5, 2.5e-4),            # a quarter of the warm-up
    (9.999, 9.999e-4),
    (10.0, 1e-3),             # warm-up done: the cosine starts at its top
    (40.0, 1e-5 + (1e-3 - 1e-5) * 0.75),  # progress 1/3: (1 + cos(pi/3)) / 2 = 0.75
    (55.0, 1e-5 + (1e-3 - 1e-5) * 0.5),   # halfway down
    (100.0, 1e-5),
    (120.0, 1e-5),
])
def test_learning_rate_at_chosen_epochs(epoch, expected):
    assert learning_rate_at(epoch, **SCHEDULE) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_fractional_epochs_follow_the_cosine_formula():
    steps_per_epoch = 7
    for epoch in (12, 29, 30, 77):
        for step in (0, 3, 6):
            t = epoch + step / steps_per_epoch
            cosine = 0.5 * (1 + math.cos(math.pi * (t - 10) / 90))
            assert learning_rate_at(t, **SCHEDULE) == pytest.approx(1e-5 + (1e-3 - 1e-5) * cosine, rel=1e-12)


def test_schedule_rises_then_falls():
    rates = [learning_rate_at(e / 4, **SCHEDULE) for e in range(0, 400)]
    peak = rates.index(max(rates))
    assert peak == 40
    assert all(a < b for a, b in zip(rates[:peak], rates[1:peak + 1]))
    assert all(a > b for a, b in zip(rates[peak:], rates[peak + 1:]))


def test_without_warmup_the_schedule_starts_at_lr():
    assert learning_rate_at(0.0, lr=1e-3, min_lr=0.0, warmup_epochs=0, epochs=2) == pytest.approx(1e-3)
    assert learning_rate_at(1.0, lr=1e-3, min_lr=0.0, warmup_epochs=0, epochs=2) == pytest.approx(5e-4)


def test_warmup_longer_than_schedule_is_rejected():
    with pytest.raises(ValueError, match="warmup_epochs"):
        learning_rate_at(0.0, lr=1e-3, min_lr=0.0, warmup_epochs=5, epochs=4)


def test_adjust_learning_rate_sets_every_group_with_its_scale():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([{"params": [a]}, {"params": [b], "lr_scale": 0.1}], lr=123.0)
    rate = adjust_learning_rate(optimizer, 5.0, **SCHEDULE)
    assert rate == pytest.approx(5e-4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(5e-5)
