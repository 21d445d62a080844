"""Speed and memory of full-size ALTA training steps (forward + backward + AdamW step).

Builds the paper's `alta` model (ViT-B/16 + CXR-BERT-size text tower, generated config and
vocabulary, random weights: nothing is downloaded), and runs `engine_pretrain.train_one_epoch`,
the training loop itself, on random batches shaped like the real ones (reports of 48-128
tokens). Warm-up steps are not timed.

    python benchmarks/bench_train_step.py                                   # CPU, batch 4
    python benchmarks/bench_train_step.py --device cuda --amp bf16 --batch_size 24 [--compile]
"""
import argparse
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine_pretrain as engine  # noqa: E402
from models_alta import build_model  # noqa: E402
from util.assets import write_cxr_bert_dir  # noqa: E402
from util.constants import REPORT_MAX_LENGTH  # noqa: E402
from util.pretrain_data import mask_tokens  # noqa: E402
from util.text_encoder import load_tokenizer  # noqa: E402
from util.trainable import mark_trainable, parameter_summary  # noqa: E402

CXR_BERT_SIZE = dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, projection_size=128,
                     vocab_size=30522)
REPORT_TOKENS = (48, REPORT_MAX_LENGTH)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=list(engine.AMP_DTYPES), default="off", help="mixed precision (CUDA: bf16)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (for GPUs)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--input_size", type=int, default=224)
    return parser.parse_args()


def random_batch(batch_size: int, input_size: int, tokenizer, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Images of the training shapes and tokenised, MLM-masked reports of random length."""
    def images(side):
        return torch.randn(batch_size, 3, side, side, generator=generator)

    lengths = torch.randint(REPORT_TOKENS[0], REPORT_TOKENS[1] + 1, (batch_size, 1), generator=generator)
    positions = torch.arange(REPORT_MAX_LENGTH)
    attention_mask = (positions < lengths).long()
    ids = torch.randint(tokenizer.mask_token_id + 1, len(tokenizer), (batch_size, REPORT_MAX_LENGTH), generator=generator)
    ids[:, 0] = tokenizer.cls_token_id
    ids[positions == lengths - 1] = tokenizer.sep_token_id
    ids[attention_mask == 0] = tokenizer.pad_token_id
    special = torch.tensor(tokenizer.all_special_ids)
    inputs, labels = mask_tokens(ids, special, tokenizer.mask_token_id)
    return {"img": images(2 * input_size), "a_img": images(input_size), "l_img": images(input_size),
            "la_img": images(input_size), "ids": ids, "inputs": inputs, "labels": labels,
            "attention_mask": attention_mask}


def peak_memory_gib(device: torch.device) -> tuple[str, float]:
    if device.type == "cuda":
        return "peak CUDA memory allocated (timed steps)", torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is in KiB on Linux: the process's peak, model construction included.
    return "peak resident memory of the process", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run(args, text_encoder: Path) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(text_encoder)
    model = build_model("alta", img_size=args.input_size, text_encoder=text_encoder, load_text_weights=False,
                        norm_pix_loss=True)
    mark_trainable(model)
    print(parameter_summary(model))
    model.to(device)
    optimizer = engine.build_optimizer(model, lr=1e-4, weight_decay=0.05)
    scaler = engine.make_grad_scaler(device, args.amp)
    trained = torch.compile(model) if args.compile else model
    schedule = argparse.Namespace(accum_iter=1, mask_ratio=0.75, lr=1e-4, min_lr=0.0, warmup_epochs=0, epochs=1,
                                  print_freq=10**6, amp=args.amp)
    generator = torch.Generator().manual_seed(0)

    def train(steps: int) -> float:
        batches = [random_batch(args.batch_size, args.input_size, tokenizer, generator) for _ in range(steps)]
        start = time.perf_counter()
        engine.train_one_epoch(trained, batches, optimizer, scaler, 0, schedule, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    train(args.warmup)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = train(args.steps)

    memory_name, memory = peak_memory_gib(device)
    print(f"\ncommand: python {shlex.join(sys.argv)}")
    print(f"alta, batch {args.batch_size}, device {device}, amp {args.amp}, compile {args.compile}, "
          f"{torch.get_num_threads()} CPU threads; {args.steps} timed steps after {args.warmup} warm-up")
    print(f"{args.steps * args.batch_size / seconds:.2f} samples/s, {seconds / args.steps:.2f} s/step; "
          f"{memory_name}: {memory:.2f} GiB")


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory() as work_dir:
        run(args, write_cxr_bert_dir(Path(work_dir) / "cxr_bert", weights=None, **CXR_BERT_SIZE))


if __name__ == "__main__":
    main()
