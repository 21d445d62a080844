"""Feature extraction, retrieval/zero-shot metrics and the RSNA routine (SPEC §9).

Everything here works on any model with ALTA's evaluation methods:
  forward_img_feature(images) -> (B, P) L2-normalised
  forward_txt_feature({"input_ids", "attention_mask"} of shape (B, C, N), normalize) -> (B, C, P)

The last section holds what the five evaluation scripts share: their common flags, model
loading, error reporting and the results table/JSON.
"""
import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from tqdm import tqdm

from util.checkpoint import load_model_for_eval, sha256_file
from util.text_encoder import load_tokenizer

# BERT's position table: longer texts are cut here even where the protocol asks for no truncation.
BERT_MAX_LENGTH = 512

RSNA_PROMPTS = ("There is pneumonia", "There is no pneumonia")
RSNA_PROMPT_LENGTH = 10
RSNA_THRESHOLDS = np.linspace(0.0, 1.0, 201)  # 0, 0.005, ..., 1

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------- feature extraction

def evaluation_context(device: torch.device, amp_dtype: torch.dtype | None):
    """no_grad, plus autocast to `amp_dtype` on CUDA (never on CPU, where it would only be slower)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.no_grad())
    if amp_dtype is not None and torch.device(device).type == "cuda":
        stack.enter_context(torch.autocast("cuda", dtype=amp_dtype))
    return stack


def encode_images(model, data_loader, device, amp_dtype=None, desc="images") -> tuple[torch.Tensor, torch.Tensor]:
    """Image features (N, P) in float32 on the CPU, and the loader's labels, in loader order."""
    features, labels = [], []
    with evaluation_context(device, amp_dtype):
        for images, batch_labels in tqdm(data_loader, desc=f"encoding {desc}", unit="batch"):
            features.append(model.forward_img_feature(images.to(device)).float().cpu())
            labels.append(batch_labels)
    return torch.cat(features), torch.cat(labels)


def tokenize(tokenizer, texts: Sequence[str], length: int, truncate: bool) -> dict[str, torch.Tensor]:
    """Token ids padded to `length`; longer texts are cut at `length` only when `truncate`.

    Without truncation the batch is padded to its longest text instead (the original scripts
    tokenise one text at a time with `truncation=False`); padding does not change BERT's output.
    """
    if not truncate:
        longest = max(len(ids) for ids in tokenizer(list(texts))["input_ids"])
        length = min(max(length, longest), BERT_MAX_LENGTH)
    tokens = tokenizer(list(texts), padding="max_length", max_length=length, truncation=True,
                       return_tensors="pt")
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def encode_texts(model, tokenizer, texts: Sequence[str], device, length: int, truncate: bool = False,
                 normalize: bool = True, batch_size: int = 64, amp_dtype=None, desc=None) -> torch.Tensor:
    """Text features (N, P) in float32 on the CPU (global projection of [CLS])."""
    chunks = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
    features = []
    with evaluation_context(device, amp_dtype):
        for chunk in tqdm(chunks, desc=f"encoding {desc}", unit="batch", disable=desc is None):
            tokens = {k: v.unsqueeze(1).to(device) for k, v in tokenize(tokenizer, chunk, length, truncate).items()}
            features.append(model.forward_txt_feature(tokens, normalize=normalize)[:, 0].float().cpu())
    return torch.cat(features)


def class_embeddings(model, tokenizer, prompts: dict[str, list[str]], device, length: int = 128,
                     batch_size: int = 64, amp_dtype=None) -> torch.Tensor:
    """(K, P): per class, the mean of its prompts' un-normalised features, L2-normalised.

    Computed once per run: the embeddings do not depend on the images.
    """
    means = [encode_texts(model, tokenizer, class_prompts, device, length, truncate=True, normalize=False,
                          batch_size=batch_size, amp_dtype=amp_dtype).mean(0)
             for class_prompts in tqdm(prompts.values(), desc="encoding class prompts", unit="class")]
    return F.normalize(torch.stack(means), dim=-1)


# ---------------------------------------------------------------- metrics

def precision_at_k(similarity: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """P@k for each k: share of each query's k most similar candidates that are relevant, averaged.

    similarity: (Q, C) scores; relevant: (Q, C) bool, True where the candidate has the query's class.
    """
    n_candidates = similarity.shape[1]
    if max(ks) > n_candidates:
        raise ValueError(f"P@{max(ks)} needs at least {max(ks)} candidates; there are {n_candidates}")
    ranked = similarity.topk(max(ks), dim=1).indices
    hits = relevant.gather(1, ranked).float()
    return {f"P@{k}": hits[:, :k].mean().item() for k in ks}


def same_class(query_labels: torch.Tensor, candidate_labels: torch.Tensor) -> torch.Tensor:
    """(Q, C) relevance for single-label queries and candidates."""
    return query_labels[:, None] == candidate_labels[None, :]


def positive_for_query_class(query_labels: torch.Tensor, candidate_positive: torch.Tensor) -> torch.Tensor:
    """(Q, C) relevance when candidates carry a positive flag per class (C, K)."""
    return candidate_positive[:, query_labels].T


def zero_shot_accuracy(image_features: torch.Tensor, class_features: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose most similar class embedding is their class."""
    predicted = (image_features @ class_features.T).argmax(dim=1)
    return (predicted == labels).float().mean().item()


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    return np.divide(numerator, denominator, out=np.zeros(np.shape(numerator)), where=denominator > 0)


def binary_metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, F1, recall and precision of boolean predictions (..., N) against labels (N,).

    Vectorised over leading axes (e.g. one row per threshold). F1 is 2PR/(P+R), in the
    original's floating-point order; an undefined ratio counts as 0.
    """
    labels = np.asarray(labels, dtype=bool)
    tp = (predicted & labels).sum(-1)
    fp = (predicted & ~labels).sum(-1)
    fn = (~predicted & labels).sum(-1)
    recall = _ratio(tp, tp + fn)
    precision = _ratio(tp, tp + fp)
    f1 = _ratio(2 * precision * recall, precision + recall)
    accuracy = (predicted == labels).mean(-1)
    return {"acc": accuracy, "f1": f1, "recall": recall, "precision": precision}


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        raise ValueError("AUROC needs images of both labels")
    return float(roc_auc_score(labels, scores))


def check_fold_sizes(labels: np.ndarray, n_folds: int) -> None:
    positives = int(np.sum(labels))
    negatives = len(labels) - positives
    if min(positives, negatives) < n_folds:
        raise ValueError(f"{n_folds}-fold splitting needs at least {n_folds} images of each label; "
                         f"got {positives} positive and {negatives} negative")


def threshold_cross_validation(scores: np.ndarray, labels: np.ndarray, n_folds: int = 10, seed: int = 0,
                               thresholds: np.ndarray = RSNA_THRESHOLDS) -> dict[str, float]:
    """Mean held-out accuracy and F1 over stratified folds (shuffled, `seed`).

    On each fold's training part, the threshold (prediction = score > threshold) with the best
    F1 is chosen, the first one on ties; it is then applied to the held-out part.
    """
    labels = np.asarray(labels, dtype=bool)
    check_fold_sizes(labels, n_folds)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(scores, labels)
    results = []
    for train, test in folds:
        train_f1 = binary_metrics(labels[train], scores[train][None, :] > thresholds[:, None])["f1"]
        best = thresholds[np.argmax(train_f1)]
        results.append(binary_metrics(labels[test], scores[test] > best))
    return {name: float(np.mean([r[name] for r in results])) for name in ("acc", "f1")}


# ---------------------------------------------------------------- RSNA pneumonia zero-shot

def rsna_prompt_features(model, tokenizer, device, amp_dtype=None) -> torch.Tensor:
    """(2, P) normalised features of the positive and the negative prompt."""
    return encode_texts(model, tokenizer, RSNA_PROMPTS, device, RSNA_PROMPT_LENGTH, amp_dtype=amp_dtype)


def rsna_cosines(model, data_loader, tokenizer, device, amp_dtype=None) -> tuple[torch.Tensor, np.ndarray]:
    """Per image, the cosines (N, 2) with the positive and the negative prompt, and the labels."""
    prompts = rsna_prompt_features(model, tokenizer, device, amp_dtype)
    images, labels = encode_images(model, data_loader, device, amp_dtype, desc="RSNA images")
    return images @ prompts.T, labels.numpy().astype(bool)


def pneumonia_probability(cosines: torch.Tensor) -> np.ndarray:
    """p = softmax([cos_pos, cos_neg])[0]."""
    return cosines.softmax(dim=1)[:, 0].numpy()


def rsna_zero_shot(model, data_loader, tokenizer, device, amp_dtype=None) -> dict[str, float]:
    """RSNA pneumonia zero-shot: AUROC on p, and acc/F1/recall/precision of cos_pos > cos_neg.

    The pre-training loop validates with this each epoch. `data_loader` yields
    (images, labels) as `util.eval_data.rsna_loader` builds it; a DDP-wrapped model is unwrapped.
    """
    model = getattr(model, "module", model)
    cosines, labels = rsna_cosines(model, data_loader, tokenizer, device, amp_dtype)
    predicted = (cosines[:, 0] > cosines[:, 1]).numpy()
    metrics = {name: float(value) for name, value in binary_metrics(labels, predicted).items()}
    return {"auroc": auroc(labels, pneumonia_probability(cosines)), **metrics}


# ---------------------------------------------------------------- shared by the scripts

def script_parser(description: str, default_output: str) -> argparse.ArgumentParser:
    """Flags every evaluation script takes; defaults follow the original repository's layout."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", default="ALTA_weights/ALTA.pth", help="trained ALTA checkpoint")
    parser.add_argument("--text_encoder", default="BiomedVLP-CXR-BERT-specialized",
                        help="CXR-BERT-specialized directory (config, vocabulary)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default="none",
                        help="autocast precision on CUDA; the original evaluates in float32")
    parser.add_argument("--output", default=default_output, help="JSON file for the metrics and settings")
    return parser


def chexpert8x200_parser(description: str, script: str, data_dir: str) -> argparse.ArgumentParser:
    """`script_parser` plus the query/candidate flags of the two CheXpert 8x200 retrieval scripts."""
    parser = script_parser(description, f"ALTA_results/{script}.json")
    parser.add_argument("--chexpert_root", default=".", help="folder the CSVs' image paths are relative to")
    parser.add_argument("--query_csv", default=f"{data_dir}/query.csv")
    parser.add_argument("--candidate_csv", default=f"{data_dir}/candidate.csv")
    parser.add_argument("--top_k", type=int, nargs="+", default=[5, 10, 50])
    return parser


def retrieval_precision(model, query_features: torch.Tensor, query_labels: torch.Tensor, candidates, args,
                        device, amp_dtype) -> dict[str, float]:
    """P@K of queries against encoded candidate images (relevant: positive for the query's class)."""
    candidate_features, candidate_positive = encode_images(
        model, candidates.data_loader(args.batch_size, args.num_workers), device, amp_dtype, desc="candidate images")
    relevant = positive_for_query_class(query_labels, candidate_positive)
    return precision_at_k(query_features @ candidate_features.T, relevant, args.top_k)


def load_for_eval(args) -> tuple[torch.nn.Module, object, torch.device, torch.dtype | None]:
    """Model (checked to be an ALTA checkpoint before any data is read), tokenizer, device, amp dtype."""
    device = torch.device(args.device)
    model = load_model_for_eval(args.checkpoint, args.text_encoder, device)
    return model, load_tokenizer(args.text_encoder), device, AMP_DTYPES[args.amp]


def report_results(benchmark: str, metrics: dict[str, float], args) -> dict[str, float]:
    """Print the metrics as a table and write them, with the settings and the checkpoint's SHA-256, as JSON."""
    width = max(len(name) for name in metrics)
    print(f"\n{benchmark}")
    for name, value in metrics.items():
        print(f"  {name:<{width}}  {value:.4f}")
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        record = {"benchmark": benchmark, "metrics": metrics, "settings": vars(args),
                  "checkpoint_sha256": sha256_file(args.checkpoint)}
        output.write_text(json.dumps(record, indent=2) + "\n")
        print(f"results written to {output}")
    return metrics


def run_script(main) -> None:
    """Run a script's `main`, turning bad input (missing files, wrong formats) into a one-line error."""
    try:
        main()
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
