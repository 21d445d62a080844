"""Data-loading throughput: full-size MIMIC-like JPEGs versus copies resized by prepare_mimic.

Writes a small synthetic MIMIC-CXR-JPG layout with full-size images (default 2500×3000), builds
its train.csv twice with prepare_mimic (pointing at the originals, and with `--resize 512`), and
times PretrainDataset + DataLoader passes over both.

    python benchmarks/bench_data_loading.py --num_studies 16 --num_workers 2
"""
import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prepare_mimic import prepare  # noqa: E402
from util.assets import write_cxr_bert_dir  # noqa: E402
from util.demo_data import plan_demo_studies, write_mimic_layout  # noqa: E402
from util.pretrain_data import PretrainDataset, collate_pretrain  # noqa: E402
from util.text_encoder import load_tokenizer  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_studies", type=int, default=16,
                        help="studies to generate; every fourth lacks a lateral view, so about 1.75 images each")
    parser.add_argument("--image_width", type=int, default=2500,
                        help="width (shorter side) of the full-size images; height is 1.2× (default 2500×3000)")
    parser.add_argument("--resize", type=int, default=512, help="shorter side of the resized copies")
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--passes", type=int, default=2, help="timed passes over the data (after one warm-up pass)")
    parser.add_argument("--work_dir", default=None, help="where to write the images (default: a temporary directory)")
    return parser.parse_args()


def samples_per_second(csv_path: Path, tokenizer, args) -> float:
    dataset = PretrainDataset(csv_path, tokenizer)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                        collate_fn=collate_pretrain, persistent_workers=args.num_workers > 0)
    for _ in loader:  # warm-up: worker start-up and file cache
        pass
    start = time.perf_counter()
    for _ in range(args.passes):
        for _ in loader:
            pass
    return args.passes * len(dataset) / (time.perf_counter() - start)


def run(args, work_dir: Path) -> None:
    mimic_root = work_dir / "mimic"
    start = time.perf_counter()
    write_mimic_layout(mimic_root, plan_demo_studies(args.num_studies), image_size=args.image_width)
    generate_s = time.perf_counter() - start
    n_images = sum(1 for _ in (mimic_root / "files").rglob("*.jpg"))
    tokenizer = load_tokenizer(write_cxr_bert_dir(work_dir / "cxr_bert", weights=None))

    prepare(mimic_root, mimic_root)
    start = time.perf_counter()
    prepare(mimic_root, work_dir / "resized", resize=args.resize, num_workers=max(1, args.num_workers))
    resize_s = time.perf_counter() - start

    full = samples_per_second(mimic_root / "train.csv", tokenizer, args)
    resized = samples_per_second(work_dir / "resized" / "train.csv", tokenizer, args)

    height = round(args.image_width * 1.2)
    print(f"\ncommand: python {shlex.join(sys.argv)}")
    print(f"{args.num_studies} studies, {n_images} images of {args.image_width}×{height} (generated in "
          f"{generate_s:.1f} s); batch {args.batch_size}, {args.num_workers} workers, {args.passes} timed passes")
    print(f"{'source':<28}{'samples/s':>10}{'ms/sample':>11}")
    for name, rate in (("full-size JPEG", full), (f"resized (shorter side {args.resize})", resized)):
        print(f"{name:<28}{rate:>10.2f}{1000 / rate:>11.1f}")
    print(f"speed-up {resized / full:.1f}×; one-off resize of {n_images} images took {resize_s:.1f} s")


def main():
    args = parse_args()
    if args.work_dir:
        run(args, Path(args.work_dir))
    else:
        with tempfile.TemporaryDirectory() as work_dir:
            run(args, Path(work_dir))


if __name__ == "__main__":
    main()
