"""Per-iteration learning rate: linear warm-up, then a half-cycle cosine down to `min_lr` (as MAE).

The schedule is a function of the fractional epoch `epoch + step / len(loader)`. Its length is
`epochs` even when training stops earlier (ALTA runs 30 of a 100-epoch schedule).
"""
import math

from torch.optim import Optimizer


def learning_rate_at(epoch: float, *, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """The learning rate at fractional `epoch`: `lr * epoch / warmup_epochs` during warm-up, then
    `min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2` with progress going 0 → 1 from the
    end of warm-up to `epochs`; `min_lr` from `epochs` on."""
    if warmup_epochs > epochs:
        raise ValueError(f"warmup_epochs ({warmup_epochs}) must not exceed the schedule length epochs ({epochs})")
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    if epoch >= epochs:
        return min_lr
    progress = (epoch - warmup_epochs) / (epochs - warmup_epochs)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def adjust_learning_rate(optimizer: Optimizer, epoch: float, *, lr: float, min_lr: float,
                         warmup_epochs: float, epochs: float) -> float:
    """Set the scheduled rate on every parameter group (times the group's `lr_scale`, if it has
    one) and return the unscaled rate."""
    rate = learning_rate_at(epoch, lr=lr, min_lr=min_lr, warmup_epochs=warmup_epochs, epochs=epochs)
    for group in optimizer.param_groups:
        group["lr"] = rate * group.get("lr_scale", 1.0)
    return rate
