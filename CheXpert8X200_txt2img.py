"""CheXpert 8x200 text-to-image retrieval: P@5, P@10 and P@50 of ConVIRT's text queries
against the candidate images (a candidate counts when it is positive for the query's class)."""
from util.eval_data import read_candidates, read_text_queries, require_file
from util.evaluation import (encode_images, encode_texts, load_for_eval, positive_for_query_class,
                             precision_at_k, report_results, run_script, script_parser)

DATA = "CheXpert8X200_dataset/text-retrieval"
QUERY_LENGTH = 20  # padded to 20 tokens, never truncated (as the original)


def build_parser():
    parser = script_parser(__doc__, "ALTA_results/CheXpert8X200_txt2img.json")
    parser.add_argument("--chexpert_root", default=".", help="folder the candidate image paths are relative to")
    parser.add_argument("--query_csv", default=f"{DATA}/query.csv")
    parser.add_argument("--candidate_csv", default=f"{DATA}/candidate.csv")
    parser.add_argument("--top_k", type=int, nargs="+", default=[5, 10, 50])
    return parser


def main(argv=None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    require_file(args.query_csv, "text query CSV")
    require_file(args.candidate_csv, "candidate CSV")
    model, tokenizer, device, amp = load_for_eval(args)
    texts, query_labels = read_text_queries(args.query_csv)
    candidates = read_candidates(args.candidate_csv, args.chexpert_root)

    query_features = encode_texts(model, tokenizer, texts, device, QUERY_LENGTH, batch_size=args.batch_size,
                                  amp_dtype=amp, desc="text queries")
    candidate_features, candidate_positive = encode_images(
        model, candidates.data_loader(args.batch_size, args.num_workers), device, amp, desc="candidate images")
    relevant = positive_for_query_class(query_labels, candidate_positive)
    metrics = precision_at_k(query_features @ candidate_features.T, relevant, args.top_k)
    return report_results("CheXpert 8x200 text-to-image retrieval", metrics, args)


if __name__ == "__main__":
    run_script(main)
