"""CheXpert 8x200 text-to-image retrieval: P@5, P@10 and P@50 of ConVIRT's text queries
against the candidate images (a candidate counts when it is positive for the query's class)."""
from util.eval_data import read_candidates, read_text_queries, require_file
from util.evaluation import (chexpert8x200_parser, encode_texts, load_for_eval, report_results, retrieval_precision,
                             run_script)

QUERY_LENGTH = 20  # padded to 20 tokens, never truncated (as the original)


def build_parser():
    return chexpert8x200_parser(__doc__, "CheXpert8X200_txt2img", "CheXpert8X200_dataset/text-retrieval")


def main(argv=None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    require_file(args.query_csv, "text query CSV")
    require_file(args.candidate_csv, "candidate CSV")
    model, tokenizer, device, amp = load_for_eval(args)
    texts, query_labels = read_text_queries(args.query_csv)
    candidates = read_candidates(args.candidate_csv, args.chexpert_root)

    query_features = encode_texts(model, tokenizer, texts, device, QUERY_LENGTH, batch_size=args.batch_size,
                                  amp_dtype=amp, desc="text queries")
    metrics = retrieval_precision(model, query_features, query_labels, candidates, args, device, amp)
    return report_results("CheXpert 8x200 text-to-image retrieval", metrics, args)


if __name__ == "__main__":
    run_script(main)
