"""CheXpert 5x200 image-to-text retrieval: P@5, P@10 and P@100 of every image against all
report impressions (cleaned as GLoRIA; a report counts when it has the image's class)."""
from util.eval_data import read_chexpert5x200, require_file
from util.evaluation import (encode_images, encode_texts, load_for_eval, precision_at_k, report_results,
                             run_script, same_class, script_parser)
from util.prompts import clean_report

REPORT_LENGTH = 256  # padded to 256 tokens, truncated only at BERT's 512 (as the original)


def build_parser():
    parser = script_parser(__doc__, "ALTA_results/CheXpert5X200_retrieval.json")
    parser.add_argument("--chexpert_root", default=".", help="folder the CSV's image paths are relative to")
    parser.add_argument("--csv", default="CheXpert5X200_dataset/chexpert_5x200.csv")
    parser.add_argument("--top_k", type=int, nargs="+", default=[5, 10, 100])
    return parser


def main(argv=None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    require_file(args.csv, "CheXpert 5x200 CSV")
    model, tokenizer, device, amp = load_for_eval(args)
    images, impressions = read_chexpert5x200(args.csv, args.chexpert_root)

    image_features, labels = encode_images(model, images.data_loader(args.batch_size, args.num_workers), device, amp)
    report_features = encode_texts(model, tokenizer, [clean_report(t) for t in impressions], device,
                                   REPORT_LENGTH, batch_size=args.batch_size, amp_dtype=amp, desc="reports")
    metrics = precision_at_k(image_features @ report_features.T, same_class(labels, labels), args.top_k)
    return report_results("CheXpert 5x200 image-to-text retrieval", metrics, args)


if __name__ == "__main__":
    run_script(main)
