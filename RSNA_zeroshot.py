"""RSNA Pneumonia zero-shot classification with the prompts "There is pneumonia" / "There is no
pneumonia": AUC of p = softmax([cos_pos, cos_neg])[0], and ACC and F1 at a threshold on p chosen
by best F1 on nine of ten stratified folds and applied to the tenth, averaged over folds."""
from util.eval_data import read_rsna_split, require_file
from util.evaluation import (auroc, check_fold_sizes, load_for_eval, pneumonia_probability, report_results,
                             rsna_cosines, run_script, script_parser, threshold_cross_validation)


def build_parser():
    parser = script_parser(__doc__, "ALTA_results/RSNA_zeroshot.json")
    parser.add_argument("--rsna_root", default="RSNA_dataset", help="folder the split file's paths are relative to")
    parser.add_argument("--split_file", default="RSNA_dataset/test_list.txt",
                        help="lines 'relative/path.dcm label' (see prepare_rsna.py)")
    parser.add_argument("--n_folds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold shuffling")
    return parser


def main(argv=None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    require_file(args.split_file, "split file")
    model, tokenizer, device, amp = load_for_eval(args)
    images = read_rsna_split(args.split_file, args.rsna_root)
    check_fold_sizes(images.labels.numpy(), args.n_folds)

    cosines, labels = rsna_cosines(model, images.data_loader(args.batch_size, args.num_workers), tokenizer, device, amp)
    probability = pneumonia_probability(cosines)
    folds = threshold_cross_validation(probability, labels, args.n_folds, args.seed)
    metrics = {"AUC": auroc(labels, probability), "ACC": folds["acc"], "F1": folds["f1"]}
    return report_results("RSNA Pneumonia zero-shot classification", metrics, args)


if __name__ == "__main__":
    run_script(main)
