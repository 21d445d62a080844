"""ALTA pre-training, the parts main_pretrain.py wires together (SPEC §8): the data loader and
its per-epoch seeding, the optimiser, mixed precision, one training epoch, RSNA validation,
resuming and checkpoints, and the per-epoch log. Everything also runs in a single process
without torch.distributed.
"""
import json
import math
import random
from contextlib import nullcontext
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from timm.optim import param_groups_weight_decay
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from models_alta import ALTALosses
from util.checkpoint import checkpoint_kind, load_alta_checkpoint, load_mrm_weights, save_checkpoint_atomic, torch_load_safe
from util.dist import get_rank, get_world_size, is_dist
from util.evaluation import rsna_zero_shot
from util.lr_sched import adjust_learning_rate
from util.misc import ProgressLine, log
from util.pretrain_data import collate_pretrain

LOSS_NAMES = ALTALosses._fields
TEMPERATURE_NAMES = ("logit_scale", "logit_scale_local1", "logit_scale_local2", "logit_scale_local3")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
NEWEST_CHECKPOINT = "checkpoint-newest.pth"
BEST_CHECKPOINT = "checkpoint-best_auroc.pth"
LOG_FILE = "log.txt"
# Settings that shape the learning-rate schedule; a resumed run warns when they changed.
SCHEDULE_SETTINGS = ("lr", "min_lr", "warmup_epochs", "epochs", "batch_size", "accum_iter", "world_size")


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stops before the weights are updated."""


# ---------------------------------------------------------------------------------- randomness

def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed for one (seed, epoch, rank); different triples give unrelated streams."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def start_epoch_randomness(loader: DataLoader, seed: int, epoch: int) -> None:
    """Make an epoch's randomness a function of (seed, epoch, rank) alone: the sample order and
    the global RNGs behind augmentation, sentence shuffling, MLM and patch masking (DataLoader
    workers are seeded from the global torch RNG). A run resumed at this epoch therefore
    repeats the uninterrupted run, whatever ran before (validation, checkpoint loading)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    else:
        loader.sampler.generator.manual_seed(epoch_seed(seed, epoch))
    seed_everything(epoch_seed(seed, epoch, get_rank()))


# ---------------------------------------------------------------------------------- set-up

def build_train_loader(dataset, batch_size: int, num_workers: int, seed: int, pin_memory: bool) -> DataLoader:
    """Shuffled batches of full size (drop_last): each rank's share under DDP, all otherwise."""
    if is_dist():
        sampler = DistributedSampler(dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=True, seed=seed)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator())
    return DataLoader(dataset, sampler=sampler, batch_size=batch_size, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=True, collate_fn=collate_pretrain)


def steps_per_epoch(batches: int, accum_iter: int) -> int:
    """Batches trained per epoch: a trailing, incomplete accumulation cycle is left out."""
    return batches - batches % accum_iter


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW as the original: timm's groups (no decay for biases and parameters of ndim <= 1,
    frozen parameters left out) and betas (0.9, 0.95)."""
    return torch.optim.AdamW(param_groups_weight_decay(model, weight_decay), lr=lr, betas=(0.9, 0.95))


def default_amp(device: torch.device) -> str:
    """bf16 on GPUs that support it, else fp16 on GPUs; off on the CPU."""
    if device.type != "cuda":
        return "off"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def make_grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16; for bf16 and float32 a disabled scaler that passes values through."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


# ---------------------------------------------------------------------------------- training

def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    if get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= get_world_size()
    return values


def check_finite(losses: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(losses).all():
        listing = ", ".join(f"{name} {value:.4g}" for name, value in zip(LOSS_NAMES, losses.tolist()))
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch}, step {step} ({listing}); training stopped before updating the "
            f"weights. Checkpoints of earlier epochs are intact: resume from {NEWEST_CHECKPOINT} with a lower "
            "--lr/--blr, or try --amp bf16 or --amp off.")


def gradient_sync(model: torch.nn.Module, sync: bool):
    """DDP averages gradients during backward; on micro-steps without an update, skip that."""
    return nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync()


def write_step_scalars(writer, model, losses: list[float], lr: float, epoch_float: float) -> None:
    # The x-axis is 1000 x epoch, as in the original, so runs with different batch sizes line up.
    x = int(epoch_float * 1000)
    for name, value in zip(LOSS_NAMES, losses):
        writer.add_scalar(f"train/{name}", value, x)
    writer.add_scalar("train/loss", sum(losses), x)
    writer.add_scalar("lr", lr, x)
    for name in TEMPERATURE_NAMES:
        writer.add_scalar(f"logit_scale/{name}", getattr(model, name).item(), x)


def train_one_epoch(model, loader, optimizer, scaler, epoch: int, args, device: torch.device,
                    log_writer=None) -> dict[str, float]:
    """Train for one epoch; return each loss averaged over the steps and ranks, their sum
    (`loss`) and the last learning rate.

    The learning rate follows the per-iteration schedule, set at the start of each accumulation
    cycle; the optimiser steps every `args.accum_iter` batches, when gradients are synchronised
    across ranks, and the temperatures are clamped after every step. Losses are averaged across
    ranks before the backward pass, so every rank stops together on a non-finite one.
    """
    model.train()
    bare_model = getattr(model, "module", model)
    amp_dtype = AMP_DTYPES[args.amp]
    n_steps = steps_per_epoch(len(loader), args.accum_iter)
    progress = ProgressLine(f"epoch {epoch}", n_steps, args.print_freq)
    totals = torch.zeros(len(LOSS_NAMES), dtype=torch.float64)
    optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(islice(loader, n_steps)):
        epoch_float = epoch + step / len(loader)
        if step % args.accum_iter == 0:
            lr = adjust_learning_rate(optimizer, epoch_float, lr=args.lr, min_lr=args.min_lr,
                                      warmup_epochs=args.warmup_epochs, epochs=args.epochs)
        update = (step + 1) % args.accum_iter == 0
        with gradient_sync(model, update):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                losses = model({k: v.to(device, non_blocking=True) for k, v in batch.items()},
                               mask_ratio=args.mask_ratio)
            values = mean_over_ranks(torch.stack([loss.detach().float() for loss in losses]))
            check_finite(values, epoch, step)
            scaler.scale(sum(losses) / args.accum_iter).backward()
        values = values.tolist()
        if update:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            bare_model.clamp_logit_scales()
            if log_writer is not None:
                write_step_scalars(log_writer, bare_model, values, lr, epoch_float)
        totals += torch.tensor(values, dtype=torch.float64)
        progress.update(step, {"lr": lr, **dict(zip(LOSS_NAMES, values))})
    means = (totals / n_steps).tolist()
    return {**dict(zip(LOSS_NAMES, means)), "loss": sum(means), "lr": lr}


def validate(model, loader, tokenizer, device: torch.device, amp: str) -> dict[str, float]:
    """RSNA pneumonia zero-shot metrics of the current weights (AUROC, acc, F1, recall, precision)."""
    bare_model = getattr(model, "module", model)
    bare_model.eval()  # the text tower has dropout; train_one_epoch switches back
    return rsna_zero_shot(bare_model, loader, tokenizer, device, AMP_DTYPES[amp])


# ---------------------------------------------------------------------------------- checkpoints

def restore(model, optimizer, scaler, args) -> tuple[int, float]:
    """Initialise from `args.resume`; return the first epoch to train and the best AUROC so far.

    * a training checkpoint of ours: model, optimiser, scaler and epoch (weights only with
      --from_begin, starting at --start_epoch);
    * an MRM checkpoint: the vision tower and decoder (the text tower comes from --text_encoder),
      starting at --start_epoch, as the original's `--resume MRM.pth --from_begin`;
    * anything else: a CheckpointError naming the file.
    """
    fresh = args.start_epoch, -math.inf
    if not args.resume:
        log("No --resume given: the vision tower starts from a random initialisation.")
        return fresh
    checkpoint = torch_load_safe(args.resume)
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not (isinstance(state, dict) and checkpoint_kind(state) == "alta"):
        del checkpoint, state  # the MRM loader reads the file itself
        log(load_mrm_weights(model, args.resume).summary())
        return fresh
    log(load_alta_checkpoint(model, args.resume, checkpoint).summary())
    if args.from_begin or not {"optimizer", "epoch"} <= checkpoint.keys():
        return fresh
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scaler.is_enabled() and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    warn_if_schedule_changed(checkpoint.get("args"), args)
    log(f"Resumed after epoch {checkpoint['epoch']} (optimiser and loss-scaler state restored).")
    return checkpoint["epoch"] + 1, checkpoint.get("best_auroc", -math.inf)


def warn_if_schedule_changed(saved_args, args) -> None:
    changed = [f"{name} {getattr(saved_args, name, None)} -> {getattr(args, name)}" for name in SCHEDULE_SETTINGS
               if getattr(saved_args, name, None) != getattr(args, name)]
    if changed:
        log(f"Note: the learning-rate schedule continues with settings that differ from the checkpoint's "
            f"({', '.join(changed)}).")


def training_state(model, optimizer, scaler, epoch: int, args, best_auroc: float) -> dict:
    """What a checkpoint holds. The epoch fixes the position in the LR schedule and, through
    `start_epoch_randomness`, the random streams, so no RNG state needs saving."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "epoch": epoch, "args": args, "best_auroc": best_auroc}


def checkpoint_names(epoch: int, last_epoch: int, save_freq: int, is_best: bool) -> list[str]:
    """`newest` every epoch, `<epoch>` every `save_freq` epochs and at the last, `best_auroc` on a new best."""
    names = [NEWEST_CHECKPOINT]
    if (epoch + 1) % save_freq == 0 or epoch == last_epoch:
        names.append(f"checkpoint-{epoch}.pth")
    if is_best:
        names.append(BEST_CHECKPOINT)
    return names


def save_checkpoints(state: dict, output_dir, names: list[str]) -> None:
    for name in names:
        save_checkpoint_atomic(state, Path(output_dir) / name)


def append_epoch_log(output_dir, writer, epoch: int, train_stats: dict, val_metrics: dict) -> None:
    """One JSON line in log.txt, and the validation metrics in TensorBoard."""
    record = {**{f"train_{k}": v for k, v in train_stats.items()}, **{f"val_{k}": v for k, v in val_metrics.items()},
              "epoch": epoch}
    with open(Path(output_dir) / LOG_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    for name, value in val_metrics.items():
        writer.add_scalar(f"val/{name}", value, epoch)
    writer.flush()
