"""ALTA pre-training on MIMIC-CXR (SPEC §8): adapters, norms and heads of an MRM ViT and CXR-BERT
trained with four losses, validated on RSNA pneumonia zero-shot after every epoch.

    python main_pretrain.py --data_path MIMIC-CXR_dataset --resume MRM.pth --from_begin   # one process
    torchrun --nproc_per_node 4 main_pretrain.py ...                                      # DDP, see run.sh

Checkpoints, log.txt (one JSON line per epoch) and TensorBoard logs go to --output_dir.
"""
import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

import engine_pretrain as engine
from models_alta import ARCHITECTURES, build_model
from util.checkpoint import CXR_BERT_WEIGHT_FILES
from util.dist import get_rank, init_distributed, is_dist, is_main_process
from util.eval_data import rsna_loader
from util.misc import format_duration, log
from util.pretrain_data import PretrainDataset
from util.text_encoder import load_tokenizer, read_text_config
from util.trainable import mark_trainable, parameter_summary

VAL_BATCH_SIZE = 32
RSNA_VAL_SPLIT = "val_list.txt"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--batch_size", type=int, default=24, help="batch per GPU/process; effective = batch_size x accum_iter x processes")
    add("--epochs", type=int, default=100, help="length of the learning-rate schedule")
    add("--max_epochs", type=int, default=30, help="stop after this many epochs (the original trains 30 of 100)")
    add("--accum_iter", type=int, default=1, help="batches per optimiser step (gradient accumulation)")

    add("--model", default="alta", choices=list(ARCHITECTURES))
    add("--input_size", type=int, default=224, help="side of the encoder's images (the current frontal is loaded at twice this)")
    add("--mask_ratio", type=float, default=0.75, help="share of patches removed from every view")
    add("--norm_pix_loss", action="store_true", default=True, help="reconstruct per-patch normalised pixels (default)")
    add("--no_norm_pix_loss", action="store_false", dest="norm_pix_loss", help="reconstruct raw pixels")
    add("--text_encoder", default="./BiomedVLP-CXR-BERT-specialized", help="CXR-BERT-specialized directory")

    add("--weight_decay", type=float, default=0.05)
    add("--lr", type=float, default=None, help="absolute learning rate (default: blr x effective batch / 256)")
    add("--blr", type=float, default=1.5e-4, help="base learning rate")
    add("--min_lr", type=float, default=0.0, help="floor of the cosine schedule")
    add("--warmup_epochs", type=float, default=10, help="epochs of linear warm-up")
    add("--amp", choices=list(engine.AMP_DTYPES), default=None,
        help="mixed precision (default: bf16 on GPUs that support it, else fp16 on GPU; off on the CPU)")

    add("--data_path", default="./MIMIC-CXR_dataset/", help="directory holding train.csv (see prepare_mimic.py)")
    add("--skip_missing", action="store_true", help="train without the CSV rows naming nonexistent images")
    add("--rsna_root", default=None, help="RSNA folder for per-epoch validation (default split: its val_list.txt)")
    add("--rsna_split", default=None, help="validation split file, lines 'relative/path.dcm label' (see prepare_rsna.py)")
    add("--output_dir", default="./ALTA_results/", help="checkpoints and log.txt go here")
    add("--log_dir", default=None, help="TensorBoard directory (default: <output_dir>/logs)")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--seed", type=int, default=0)
    add("--resume", default="", help="MRM.pth (with --from_begin) to start, or a checkpoint of this script to continue")
    add("--from_begin", action="store_true", help="take only the weights of --resume and start at --start_epoch")
    add("--start_epoch", type=int, default=0)
    add("--save_freq", type=int, default=5, help="keep checkpoint-<epoch>.pth every this many epochs")
    add("--print_freq", type=int, default=20, help="progress line every this many steps")
    add("--num_workers", type=int, default=10)
    add("--pin_mem", action="store_true", default=True, help="pin host memory of batches bound for the GPU (default)")
    add("--no_pin_mem", action="store_false", dest="pin_mem")
    add("--dist_url", default="env://", help="process-group initialisation (torchrun sets the environment)")
    add("--note", default="", help="free text stored with the run's settings in every checkpoint")
    return parser


def resolve_validation_paths(args) -> None:
    """Either RSNA flag alone is enough: the split's folder is the root, the root's val_list.txt the split."""
    if args.rsna_split and not args.rsna_root:
        args.rsna_root = str(Path(args.rsna_split).parent)
    elif args.rsna_root and not args.rsna_split:
        args.rsna_split = str(Path(args.rsna_root) / RSNA_VAL_SPLIT)


def check_inputs(args) -> None:
    """Fail on bad settings or missing files before any data or model is built."""
    if args.resume and not Path(args.resume).is_file():
        raise FileNotFoundError(f"--resume {args.resume} does not exist. Pass MRM.pth (with --from_begin) or a "
                                f"checkpoint written by this script, e.g. {args.output_dir}/{engine.NEWEST_CHECKPOINT}.")
    read_text_config(args.text_encoder)
    if not any((Path(args.text_encoder) / name).is_file() for name in CXR_BERT_WEIGHT_FILES):
        raise FileNotFoundError(f"--text_encoder {args.text_encoder} holds no {' or '.join(CXR_BERT_WEIGHT_FILES)}; "
                                "point it at a copy of microsoft/BiomedVLP-CXR-BERT-specialized.")
    if args.rsna_split and not Path(args.rsna_split).is_file():
        raise FileNotFoundError(f"RSNA validation split {args.rsna_split} does not exist; write it with prepare_rsna.py, "
                                "or leave out --rsna_root/--rsna_split to train without validation.")
    if not 0 < args.mask_ratio < 1:
        raise ValueError(f"--mask_ratio must lie strictly between 0 and 1, got {args.mask_ratio}")
    if args.warmup_epochs > args.epochs:
        raise ValueError(f"--warmup_epochs ({args.warmup_epochs}) must not exceed --epochs ({args.epochs})")
    if min(args.batch_size, args.accum_iter, args.save_freq, args.print_freq) < 1:
        raise ValueError("--batch_size, --accum_iter, --save_freq and --print_freq must be at least 1")


def select_device(name: str, local_rank: int) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and is_dist():
        return torch.device("cuda", local_rank)
    return device


def build_data(args, device: torch.device):
    """Tokenizer, training loader (train.csv and its images checked) and RSNA validation loader or None."""
    tokenizer = load_tokenizer(args.text_encoder)
    dataset = PretrainDataset(Path(args.data_path) / "train.csv", tokenizer, is_train=True,
                              input_size=args.input_size, skip_missing=args.skip_missing)
    loader = engine.build_train_loader(dataset, args.batch_size, args.num_workers, args.seed,
                                       pin_memory=args.pin_mem and device.type == "cuda")
    if len(loader) < args.accum_iter:
        raise ValueError(f"{args.data_path}: {len(dataset)} studies give {len(loader)} full batch(es) of "
                         f"{args.batch_size} per process, fewer than --accum_iter {args.accum_iter}; "
                         "use a smaller --batch_size or fewer processes.")
    val_loader = rsna_loader(args.rsna_split, args.rsna_root, VAL_BATCH_SIZE, args.num_workers) if args.rsna_split else None
    return tokenizer, loader, val_loader


def build_trained_model(args, device: torch.device):
    """The model with the trainable set marked, its optimiser and loss scaler, initialised from
    --resume; also the first epoch to train and the best validation AUROC so far."""
    model = build_model(args.model, img_size=args.input_size, text_encoder=args.text_encoder,
                        norm_pix_loss=args.norm_pix_loss)
    mark_trainable(model)
    log(parameter_summary(model))
    model.to(device)
    optimizer = engine.build_optimizer(model, args.lr, args.weight_decay)
    scaler = engine.make_grad_scaler(device, args.amp)
    start_epoch, best_auroc = engine.restore(model, optimizer, scaler, args)
    return model, optimizer, scaler, start_epoch, best_auroc


def describe_run(args, loader, val_loader, device, start_epoch: int, last_epoch: int) -> None:
    effective_batch = args.batch_size * args.accum_iter * args.world_size
    log(f"{len(loader.dataset)} studies, {len(loader)} batches per epoch per process; effective batch {effective_batch} "
        f"(batch {args.batch_size} x accum {args.accum_iter} x {args.world_size} process(es)); device {device}, amp {args.amp}")
    log(f"lr {args.lr:.3g} (blr {args.blr:.3g}); epochs {start_epoch} to {last_epoch} of a {args.epochs}-epoch "
        f"schedule with {args.warmup_epochs:g} warm-up epochs")
    log(f"Checkpoints and {engine.LOG_FILE}: {Path(args.output_dir).resolve()}   TensorBoard: {Path(args.log_dir).resolve()}")
    if start_epoch > last_epoch:
        log(f"Nothing to train: epoch {start_epoch} is past --max_epochs {args.max_epochs} / --epochs {args.epochs}.")
    if val_loader is None:
        log("Validation: skipped (no --rsna_root/--rsna_split given); checkpoint-best_auroc.pth will not be written.")


def main(argv=None) -> dict:
    """Train; return the last epoch's log record (train losses and validation metrics)."""
    args = get_args_parser().parse_args(argv)
    resolve_validation_paths(args)
    args.log_dir = args.log_dir or str(Path(args.output_dir) / "logs")
    check_inputs(args)

    rank, args.world_size, local_rank = init_distributed(args.device, args.dist_url)
    device = select_device(args.device, local_rank)
    args.amp = args.amp or engine.default_amp(device)
    if args.lr is None:
        args.lr = args.blr * args.batch_size * args.accum_iter * args.world_size / 256
    engine.seed_everything(args.seed + rank)
    torch.backends.cudnn.benchmark = device.type == "cuda"

    tokenizer, loader, val_loader = build_data(args, device)
    model, optimizer, scaler, start_epoch, best_auroc = build_trained_model(args, device)
    model_without_ddp = model
    if args.world_size > 1:
        # Every trainable parameter gets a gradient at every step, so no search for unused ones.
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    last_epoch = min(args.epochs, args.max_epochs) - 1
    writer = None
    if is_main_process():
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(args.log_dir)
    describe_run(args, loader, val_loader, device, start_epoch, last_epoch)

    record, start_time = {}, time.time()
    for epoch in range(start_epoch, last_epoch + 1):
        engine.start_epoch_randomness(loader, args.seed, epoch)
        train_stats = engine.train_one_epoch(model, loader, optimizer, scaler, epoch, args, device, writer)
        if not is_main_process():
            continue  # validation, checkpoints and logs are rank 0's; the others go on to the next epoch
        val_metrics = engine.validate(model, val_loader, tokenizer, device, args.amp) if val_loader else {}
        is_best = val_metrics.get("auroc", -math.inf) > best_auroc
        best_auroc = max(best_auroc, val_metrics.get("auroc", -math.inf))
        names = engine.checkpoint_names(epoch, last_epoch, args.save_freq, is_best)
        engine.save_checkpoints(engine.training_state(model_without_ddp, optimizer, scaler, epoch, args, best_auroc),
                                args.output_dir, names)
        engine.append_epoch_log(args.output_dir, writer, epoch, train_stats, val_metrics)
        record = {**train_stats, **{f"val_{k}": v for k, v in val_metrics.items()}, "epoch": epoch}
        summary = "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in ("epoch", "lr"))
        log(f"epoch {epoch} done ({format_duration(time.time() - start_time)} so far): {summary}; saved {', '.join(names)}")

    if is_dist():
        dist.barrier()  # the other ranks wait here for rank 0's last validation and checkpoints
        dist.destroy_process_group()
    if writer is not None:
        writer.close()
    log(f"Training finished in {format_duration(time.time() - start_time)}. Outputs in {Path(args.output_dir).resolve()}")
    return record


def cli(argv=None) -> None:
    """main() with bad input (missing files, wrong formats, a non-finite loss) as a one-line error."""
    try:
        main(argv)
    except (OSError, ValueError, engine.NonFiniteLossError) as err:
        prefix = f"rank {get_rank()}: " if is_dist() else ""
        print(f"{prefix}error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
