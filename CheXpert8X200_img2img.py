"""CheXpert 8x200 image-to-image retrieval: P@5, P@10 and P@50 of ConVIRT's query images
against the candidate images (a candidate counts when it is positive for the query's class)."""
from util.eval_data import read_candidates, read_image_queries, require_file
from util.evaluation import (encode_images, load_for_eval, positive_for_query_class, precision_at_k,
                             report_results, run_script, script_parser)

DATA = "CheXpert8X200_dataset/image-retrieval"


def build_parser():
    parser = script_parser(__doc__, "ALTA_results/CheXpert8X200_img2img.json")
    parser.add_argument("--chexpert_root", default=".", help="folder the CSVs' image paths are relative to")
    parser.add_argument("--query_csv", default=f"{DATA}/query.csv")
    parser.add_argument("--candidate_csv", default=f"{DATA}/candidate.csv")
    parser.add_argument("--top_k", type=int, nargs="+", default=[5, 10, 50])
    return parser


def main(argv=None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    require_file(args.query_csv, "query CSV")
    require_file(args.candidate_csv, "candidate CSV")
    model, _, device, amp = load_for_eval(args)
    queries = read_image_queries(args.query_csv, args.chexpert_root)
    candidates = read_candidates(args.candidate_csv, args.chexpert_root)

    query_features, query_labels = encode_images(
        model, queries.data_loader(args.batch_size, args.num_workers), device, amp, desc="query images")
    candidate_features, candidate_positive = encode_images(
        model, candidates.data_loader(args.batch_size, args.num_workers), device, amp, desc="candidate images")
    relevant = positive_for_query_class(query_labels, candidate_positive)
    metrics = precision_at_k(query_features @ candidate_features.T, relevant, args.top_k)
    return report_results("CheXpert 8x200 image-to-image retrieval", metrics, args)


if __name__ == "__main__":
    run_script(main)
