"""Retrieval, zero-shot and RSNA metrics on hand-built inputs with known answers."""
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sklearn.model_selection import StratifiedKFold

from util.evaluation import (binary_metrics, positive_for_query_class, precision_at_k, same_class,
                             threshold_cross_validation, zero_shot_accuracy)


def test_precision_at_k_counts_relevant_share_of_top_k():
    # Candidates are the four axes; each query ranks them by its weights.
    candidates = torch.eye(4)
    queries = torch.tensor([[0.9, 0.8, 0.1, 0.0],   # ranks c0, c1, c2, c3
                            [0.0, 0.2, 0.3, 0.9]])  # ranks c3, c2, c1, c0
    candidate_labels = torch.tensor([0, 1, 0, 1])
    query_labels = torch.tensor([0, 0])
    relevant = same_class(query_labels, candidate_labels)
    metrics = precision_at_k(queries @ candidates.T, relevant, [1, 2, 3])
    # query 0: c0 (yes) c1 (no) c2 (yes); query 1: c3 (no) c2 (yes) c1 (no)
    assert metrics == pytest.approx({"P@1": (1 + 0) / 2, "P@2": (1 / 2 + 1 / 2) / 2, "P@3": (2 / 3 + 1 / 3) / 2})


def test_precision_at_k_needs_enough_candidates():
    with pytest.raises(ValueError, match="P@5 needs at least 5 candidates"):
        precision_at_k(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool), [1, 5])


def test_relevance_from_candidate_label_columns():
    candidate_positive = torch.tensor([[True, False], [False, True], [True, True]])  # 3 candidates, 2 classes
    relevant = positive_for_query_class(torch.tensor([1, 0]), candidate_positive)
    assert relevant.tolist() == [[False, True, True], [True, False, True]]


def test_zero_shot_accuracy():
    classes = torch.eye(3)
    images = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.2, 0.9], [0.1, 0.8, 0.3], [0.7, 0.6, 0.0]])
    labels = torch.tensor([0, 2, 1, 1])  # the last image is closest to class 0
    assert zero_shot_accuracy(images, classes, labels) == pytest.approx(0.75)


def test_binary_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.random(50) < 0.4
    predicted = rng.random(50) < 0.5
    metrics = binary_metrics(labels, predicted)
    assert metrics["acc"] == pytest.approx(accuracy_score(labels, predicted))
    assert metrics["f1"] == pytest.approx(f1_score(labels, predicted))
    assert metrics["recall"] == pytest.approx(recall_score(labels, predicted))
    assert metrics["precision"] == pytest.approx(precision_score(labels, predicted))


def test_binary_metrics_without_predicted_positives_are_zero_not_nan():
    metrics = binary_metrics(np.array([True, False, True]), np.array([False, False, False]))
    assert metrics["precision"] == 0 and metrics["f1"] == 0 and metrics["recall"] == 0
    assert metrics["acc"] == pytest.approx(1 / 3)


def direct_threshold_cross_validation(scores, labels):
    """The standalone RSNA procedure written plainly with scikit-learn."""
    thresholds = np.array([i * 0.005 for i in range(201)])
    accuracies, f1s = [], []
    for train, test in StratifiedKFold(n_splits=10, shuffle=True, random_state=0).split(scores, labels):
        # one column per threshold: F1 of (score > threshold) on the training folds
        truth = np.repeat(labels[train][:, None], len(thresholds), axis=1)
        train_f1 = f1_score(truth, scores[train][:, None] > thresholds[None, :], average=None, zero_division=0)
        best_threshold, best_f1 = None, -1.0
        for threshold, f1 in zip(thresholds, train_f1):
            if f1 > best_f1:
                best_threshold, best_f1 = threshold, f1
        predicted = scores[test] > best_threshold
        accuracies.append(accuracy_score(labels[test], predicted))
        f1s.append(f1_score(labels[test], predicted, zero_division=0))
    return np.mean(accuracies), np.mean(f1s)


def test_threshold_cross_validation_equals_direct_sklearn_computation():
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    # p = softmax([cos_pos, cos_neg])[0] lies near 0.5; positives score a little higher.
    scores = 0.5 + 0.05 * rng.standard_normal(300) + 0.03 * labels
    acc, f1 = direct_threshold_cross_validation(scores, labels)
    result = threshold_cross_validation(scores, labels)
    assert result["acc"] == pytest.approx(acc, abs=1e-12)
    assert result["f1"] == pytest.approx(f1, abs=1e-12)


def test_threshold_cross_validation_needs_ten_of_each_label():
    labels = np.array([True] * 9 + [False] * 30)
    with pytest.raises(ValueError, match="at least 10 images of each label; got 9 positive and 30 negative"):
        threshold_cross_validation(np.linspace(0, 1, 39), labels)
