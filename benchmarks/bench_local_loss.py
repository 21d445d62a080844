"""Time the local (token-patch) loss: vectorised `util.losses` against the original per-text loop.

    python benchmarks/bench_local_loss.py --batch 64 --patches 196 --words 127 --dim 128

Forward + backward, after one warm-up run, median of --repeats. Both versions are checked to give
the same value (relative difference printed). `--lengths mixed` draws caption lengths in
[20, words]; the default `full` uses unpadded reports, the most expensive case.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from util.losses import local_contrastive_loss, symmetric_cross_entropy  # noqa: E402


def per_text_loop(patches, words, lengths, t1, t2, t3):
    """The original's algorithm: for each text, its words against all images at once."""
    n_images = patches.shape[0]
    columns = []
    for i in range(words.shape[0]):
        w = words[i, : int(lengths[i])].unsqueeze(0).repeat(n_images, 1, 1)  # (Bi, L, D)
        attention = torch.softmax(torch.bmm(patches, w.transpose(1, 2)), dim=-1)  # (Bi, P, L) over words
        attention = torch.softmax(t1 * attention.transpose(1, 2), dim=-1)  # (Bi, L, P) over patches
        context = torch.bmm(attention, patches)  # (Bi, L, D)
        cos = (w * context).sum(-1) / (w.norm(dim=-1) * context.norm(dim=-1)).clamp(min=1e-8)
        columns.append(torch.log(torch.exp(t2 * cos).sum(dim=1, keepdim=True)))
    return symmetric_cross_entropy(t3 * torch.cat(columns, dim=1))


def time_it(fn, inputs, repeats):
    times, value = [], None
    for step in range(repeats + 1):
        for t in inputs:
            t.grad = None
        start = time.perf_counter()
        value = fn(*inputs[:2], LENGTHS, *inputs[2:])
        value.backward()
        if step:  # the first run is a warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times), value.detach()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--patches", type=int, default=196)
    parser.add_argument("--words", type=int, default=127)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--lengths", choices=["full", "mixed"], default="full")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    patches = torch.randn(args.batch, args.patches, args.dim, requires_grad=True)
    words = torch.randn(args.batch, args.words, args.dim, requires_grad=True)
    temps = [torch.tensor(v, requires_grad=True) for v in (1 / 0.07, 5.0, 10.0)]
    LENGTHS = (torch.full((args.batch,), args.words) if args.lengths == "full"
               else torch.randint(20, args.words + 1, (args.batch,)))
    inputs = [patches, words, *temps]
    print(f"batch {args.batch}, {args.patches} image tokens, {args.words} word tokens ({args.lengths} lengths), "
          f"dim {args.dim}, {args.threads} threads, torch {torch.__version__}")
    loop_s, loop_value = time_it(per_text_loop, inputs, args.repeats)
    vec_s, vec_value = time_it(local_contrastive_loss, inputs, args.repeats)
    # Both versions do the same six matrix products per (text, image) pair: two forward, four backward.
    gflop = 6 * 2 * args.batch * args.patches * args.dim * int(LENGTHS.sum()) / 1e9
    print(f"matrix-product work: {gflop:.1f} GFLOP per forward + backward")
    print(f"per-text loop : {loop_s * 1000:8.1f} ms  ({gflop / loop_s:5.1f} GFLOP/s)  loss {loop_value.item():.6f}")
    print(f"vectorised    : {vec_s * 1000:8.1f} ms  ({gflop / vec_s:5.1f} GFLOP/s)  loss {vec_value.item():.6f}")
    print(f"speed-up {loop_s / vec_s:.2f}x, relative difference {abs(vec_value - loop_value).item() / abs(loop_value).item():.1e}")
