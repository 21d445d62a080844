"""CheXpert 8x200 image-to-image retrieval: P@5, P@10 and P@50 of ConVIRT's query images
against the candidate images (a candidate counts when it is positive for the query's class)."""
from util.eval_data import read_candidates, read_image_queries, require_file
from util.evaluation import (chexpert8x200_parser, encode_images, load_for_eval, report_results, retrieval_precision,
                             run_script)


def build_parser():
    return chexpert8x200_parser(__doc__, "CheXpert8X200_img2img", "CheXpert8X200_dataset/image-retrieval")


def main(argv=None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    require_file(args.query_csv, "query CSV")
    require_file(args.candidate_csv, "candidate CSV")
    model, _, device, amp = load_for_eval(args)
    queries = read_image_queries(args.query_csv, args.chexpert_root)
    candidates = read_candidates(args.candidate_csv, args.chexpert_root)

    query_features, query_labels = encode_images(
        model, queries.data_loader(args.batch_size, args.num_workers), device, amp, desc="query images")
    metrics = retrieval_precision(model, query_features, query_labels, candidates, args, device, amp)
    return report_results("CheXpert 8x200 image-to-image retrieval", metrics, args)


if __name__ == "__main__":
    run_script(main)
