"""CheXpert 5x200 zero-shot: class embeddings computed once versus once per image batch.

The original script encodes every class's prompts again for every batch of images; ours
encodes them once per run. Both give the same predictions; this times the two.

By default it runs a randomly initialised tiny ALTA on a miniature 5x200 set written to a
temporary folder; --checkpoint/--text_encoder/--csv/--chexpert_root run it on the real thing.

    python benchmarks/bench_zeroshot.py --per_class 10 --batch_size 16
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from util.eval_data import CHEXPERT5X200_CLASSES, read_chexpert5x200  # noqa: E402
from util.evaluation import class_embeddings, encode_images, evaluation_context  # noqa: E402
from util.prompts import DEFAULT_PROMPTS_FILE, load_class_prompts  # noqa: E402
from util.text_encoder import load_tokenizer  # noqa: E402

PROMPT_LENGTH = 128


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per_class", type=int, default=10, help="images per class of the miniature set")
    parser.add_argument("--batch_size", type=int, default=16, help="images per batch (the original uses 16)")
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS_FILE))
    parser.add_argument("--checkpoint", help="ALTA checkpoint (default: a random tiny ALTA)")
    parser.add_argument("--text_encoder", help="CXR-BERT directory that goes with --checkpoint")
    parser.add_argument("--csv", help="chexpert_5x200.csv (default: a generated miniature one)")
    parser.add_argument("--chexpert_root", default=".")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each approach; the fastest counts")
    return parser.parse_args()


def tiny_model_and_data(work_dir: Path, per_class: int):
    from models_alta import build_model
    from util.assets import write_cxr_bert_dir
    from util.demo_benchmarks import make_demo_benchmarks

    text_encoder = write_cxr_bert_dir(work_dir / "cxr_bert", dropout=0.0)
    torch.manual_seed(0)
    model = build_model("alta_tiny", text_encoder=text_encoder).eval()
    flags = make_demo_benchmarks(work_dir / "data", per_class=per_class)["CheXpert5X200_zeroshot"]
    return model, text_encoder, flags[flags.index("--csv") + 1], flags[flags.index("--chexpert_root") + 1]


def predict_once(model, tokenizer, prompts, loader, device) -> torch.Tensor:
    embeddings = class_embeddings(model, tokenizer, prompts, device, PROMPT_LENGTH)
    features, _ = encode_images(model, loader, device)
    return (features @ embeddings.T).argmax(1)


def predict_per_batch(model, tokenizer, prompts, loader, device) -> torch.Tensor:
    """The original's order of work: the class embeddings are recomputed inside the image loop."""
    predictions = []
    for images, _ in loader:
        embeddings = class_embeddings(model, tokenizer, prompts, device, PROMPT_LENGTH)
        with evaluation_context(device, None):
            features = model.forward_img_feature(images.to(device)).float().cpu()
        predictions.append((features @ embeddings.T).argmax(1))
    return torch.cat(predictions)


def fastest(repeats: int, function, *args):
    """The result and the shortest wall time of `repeats` runs (after one untimed warm-up run)."""
    result = function(*args)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*args)
        seconds.append(time.perf_counter() - start)
    return result, min(seconds)


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory() as work_dir:
        if args.checkpoint:
            from util.checkpoint import load_model_for_eval
            model = load_model_for_eval(args.checkpoint, args.text_encoder, args.device)
            text_encoder, csv_file, chexpert_root = args.text_encoder, args.csv, args.chexpert_root
        else:
            model, text_encoder, csv_file, chexpert_root = tiny_model_and_data(Path(work_dir), args.per_class)
            model.to(args.device)
        tokenizer = load_tokenizer(text_encoder)
        prompts = load_class_prompts(args.prompts, CHEXPERT5X200_CLASSES)
        images, _ = read_chexpert5x200(csv_file, chexpert_root)
        loader = images.data_loader(args.batch_size, num_workers=0)

        once, once_seconds = fastest(args.repeats, predict_once, model, tokenizer, prompts, loader, args.device)
        per_batch, per_batch_seconds = fastest(args.repeats, predict_per_batch, model, tokenizer, prompts, loader,
                                               args.device)

    accuracy_once = (once == images.labels).float().mean().item()
    accuracy_per_batch = (per_batch == images.labels).float().mean().item()
    assert accuracy_once == accuracy_per_batch, (accuracy_once, accuracy_per_batch)
    n_prompts = sum(len(p) for p in prompts.values())
    print(f"\n{len(images.paths)} images in {len(loader)} batches of {args.batch_size}, {n_prompts} prompts, "
          f"device {args.device}")
    print(f"  class embeddings once:            {once_seconds:8.2f} s   accuracy {accuracy_once:.4f}")
    print(f"  class embeddings per image batch: {per_batch_seconds:8.2f} s   accuracy {accuracy_per_batch:.4f}")
    print(f"  speed-up: {per_batch_seconds / once_seconds:.1f}x")


if __name__ == "__main__":
    main()
