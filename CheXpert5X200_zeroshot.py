"""CheXpert 5x200 zero-shot classification: accuracy of the most similar class embedding,
each the mean feature of a class's prompts (every combination of its phrase lists)."""
from util.eval_data import CHEXPERT5X200_CLASSES, read_chexpert5x200, require_file
from util.evaluation import (class_embeddings, encode_images, load_for_eval, report_results, run_script,
                             script_parser, zero_shot_accuracy)
from util.prompts import DEFAULT_PROMPTS_FILE, load_class_prompts

PROMPT_LENGTH = 128


def build_parser():
    parser = script_parser(__doc__, "ALTA_results/CheXpert5X200_zeroshot.json")
    parser.add_argument("--chexpert_root", default=".", help="folder the CSV's image paths are relative to")
    parser.add_argument("--csv", default="CheXpert5X200_dataset/chexpert_5x200.csv")
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS_FILE),
                        help="JSON of phrase lists per class (see util/prompts.py)")
    return parser


def main(argv=None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    require_file(args.csv, "CheXpert 5x200 CSV")
    prompts = load_class_prompts(args.prompts, CHEXPERT5X200_CLASSES)
    model, tokenizer, device, amp = load_for_eval(args)
    images, _ = read_chexpert5x200(args.csv, args.chexpert_root)

    embeddings = class_embeddings(model, tokenizer, prompts, device, PROMPT_LENGTH,
                                  batch_size=args.batch_size, amp_dtype=amp)
    image_features, labels = encode_images(model, images.data_loader(args.batch_size, args.num_workers), device, amp)
    metrics = {"ACC": zero_shot_accuracy(image_features, embeddings, labels)}
    return report_results("CheXpert 5x200 zero-shot classification", metrics, args)


if __name__ == "__main__":
    run_script(main)
