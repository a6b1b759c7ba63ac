"""Evaluation metrics: accuracy, DCASE 2019 Task 5 (SONYC-UST) AUPRC/F1, EER and minDCF.

The functions take arrays or tensors and never know a dataset. The DCASE metrics follow the
organisers' evaluation step by step (docs/METHODS.md section 5), including its tie handling, so that
numbers are comparable with the published ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import torch

# Scores below this never become thresholds of a DCASE table (organisers' speed-up).
DCASE_MIN_THRESHOLD = 0.01


def _to_numpy(x) -> np.ndarray:
    """Tensors (any device, with or without grad), arrays and lists as a numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() else x  # numpy has no bfloat16
    return np.asarray(x)


# --------------------------------------------------------------------------------------------
# Classification accuracy
# --------------------------------------------------------------------------------------------


def _n_correct(logits_or_pred, targets) -> tuple[int, int]:
    """Correct top-1 predictions and total: floating input is logits (..., C), integer input
    is predicted ids; both are flattened against the flattened targets."""
    pred = _to_numpy(logits_or_pred)
    target = _to_numpy(targets).reshape(-1)
    if np.issubdtype(pred.dtype, np.floating):
        pred = pred.argmax(-1)
    pred = pred.reshape(-1)
    if pred.size != target.size:
        raise ValueError(f"{pred.size} predictions for {target.size} targets")
    return int((pred == target).sum()), int(target.size)


def accuracy(logits_or_pred, targets) -> float:
    """Top-1 accuracy.

    Arguments
    ---------
    logits_or_pred : floating logits (N, C) (or (N, 1, C), SpeechBrain's classifier output),
        or integer predicted class ids (N,).
    targets : class ids (N,) (or (N, 1), SpeechBrain's encoded labels).
    """
    correct, total = _n_correct(logits_or_pred, targets)
    return correct / total


# --------------------------------------------------------------------------------------------
# DCASE 2019 Task 5 (SONYC-UST)
# --------------------------------------------------------------------------------------------


class CoarseClass(TypedDict):
    """Columns of one coarse class in the fine-level matrices."""

    complete: list[int]  # its complete fine tags
    incomplete: int | None  # its "X" tag ("other/unknown"), None when it has none


def _fine_counts(
    y_true: np.ndarray, y_pred: np.ndarray, x_true: np.ndarray, x_pred: np.ndarray
) -> tuple[int, int, int]:
    """TP, FP, FN of one coarse class at one threshold (organisers' ``confusion_matrix_fine``).

    ``y_true``, ``y_pred``: (N, F) bool, complete fine tags, true and predicted.
    ``x_true``, ``x_pred``: (N,) bool, the class's X tag, true and predicted (all False when the
    class has no X tag). The coarse level is the special case F = 1 without X tag.
    """
    hit = y_true & y_pred
    # Complete part: only the false alarms are restricted to clips whose truth has no X.
    tp = hit.sum()
    fn = (y_true & ~y_pred).sum()
    fp = (~y_true & y_pred & ~x_true[:, None]).sum()
    # Incomplete part, per clip, on the coarsened prediction.
    any_true = y_true.any(axis=1)
    coarse_pred = y_pred.any(axis=1) | x_pred
    tp += (x_true & coarse_pred & ~hit.any(axis=1)).sum()
    fn += (~any_true & x_true & ~coarse_pred).sum()
    fp += (~x_true & ~any_true & x_pred & ~y_pred.all(axis=1)).sum()
    return int(tp), int(fp), int(fn)


def _class_table(
    y_true: np.ndarray, scores: np.ndarray, x_true: np.ndarray, x_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One coarse class's table: thresholds (T,) in descending order, counts (T, 3) = TP, FP, FN.

    ``y_true`` (N, F) bool and ``scores`` (N, F) are the complete tags (they alone give the
    thresholds); ``x_true`` (N,) bool and ``x_scores`` (N,) the X tag (-inf when there is none).
    """
    candidates = np.append(scores[scores >= DCASE_MIN_THRESHOLD], 1.0)
    thresholds = np.unique(candidates)[::-1]
    counts = np.array(
        [_fine_counts(y_true, scores >= t, x_true, x_scores >= t) for t in thresholds]
    )
    return thresholds, counts


def _precision_recall(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P and R (T,) from counts (T, 3); the 0.5 floor only avoids 0/0 (the numerator is 0)."""
    tp, fp, fn = counts.T
    return tp / np.maximum(tp + fp, 0.5), tp / np.maximum(tp + fn, 0.5)


def _auprc(precision: np.ndarray, recall: np.ndarray) -> float:
    """Trapezoid area under the P-R rows, taken in their table order.

    The rows are ordered by numpy's default (not stable) argsort of R and framed by (R=0, P=1)
    and (R=1, P=0); with tied recalls the area depends on this order, hence the exact recipe.
    """
    order = np.argsort(recall)
    r = np.concatenate(([0.0], recall[order], [1.0]))
    p = np.concatenate(([1.0], precision[order], [0.0]))
    return float(np.sum(np.diff(r) * (p[1:] + p[:-1]) / 2))


def _summarize(tables: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Per-class, macro and micro AUPRC and micro-F1 from the class tables (descending)."""
    class_auprc = [_auprc(*_precision_recall(counts)) for _, counts in tables]
    # Micro: at each threshold (ascending) every class contributes its row with the smallest
    # threshold >= t. Every table holds 1.0 >= any t, so that row always exists.
    micro_thresholds = np.unique(np.concatenate([thr for thr, _ in tables]))
    micro_counts = np.zeros((len(micro_thresholds), 3), dtype=np.int64)
    for thresholds, counts in tables:
        ascending = np.searchsorted(thresholds[::-1], micro_thresholds, side="left")
        micro_counts += counts[len(thresholds) - 1 - ascending]
    precision, recall = _precision_recall(micro_counts)
    i = int(np.argmax(micro_thresholds >= 0.5))
    with np.errstate(divide="ignore"):  # P or R = 0 gives F = 0, as in the organisers' code
        micro_f1 = 2 / (1 / precision[i] + 1 / recall[i])
    return {
        "micro_auprc": _auprc(precision, recall),
        "micro_f1": float(micro_f1),
        "macro_auprc": float(np.mean(class_auprc)),
        "class_auprc": class_auprc,
    }


def _check_scores(y_true: np.ndarray, y_score: np.ndarray) -> None:
    if y_true.shape != y_score.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} must be equal (N, K)")
    if np.any(y_score > 1.0):  # 1.0 must be the top threshold of every class table
        raise ValueError("DCASE scores must lie in [0, 1]")


def dcase_fine_metrics(y_true_fine, y_score_fine, taxonomy: Sequence[CoarseClass]) -> dict:
    """DCASE 2019 Task 5 fine-level metrics, one P-R table per coarse class.

    Arguments
    ---------
    y_true_fine : (N, F) {0, 1}, every fine tag including the X tags.
    y_score_fine : (N, F) in [0, 1], the same columns.
    taxonomy : one entry per coarse class k: ``{"complete": [columns], "incomplete": column or
        None}``. An X tag is matched at the coarse level (docs/METHODS.md section 5, step 1).

    Returns
    -------
    dict with ``micro_auprc``, ``micro_f1`` (at threshold 0.5), ``macro_auprc`` and
    ``class_auprc`` (list of K floats, taxonomy order).
    """
    y_true = _to_numpy(y_true_fine).astype(bool)
    y_score = _to_numpy(y_score_fine).astype(np.float64)
    _check_scores(y_true, y_score)
    no_x_true = np.zeros(len(y_true), dtype=bool)
    no_x_score = np.full(len(y_true), -np.inf)
    tables = []
    for coarse in taxonomy:
        cols, x = list(coarse["complete"]), coarse["incomplete"]
        x_true = no_x_true if x is None else y_true[:, x]
        x_score = no_x_score if x is None else y_score[:, x]
        tables.append(_class_table(y_true[:, cols], y_score[:, cols], x_true, x_score))
    return _summarize(tables)


def dcase_coarse_metrics(y_true, y_score) -> dict:
    """DCASE 2019 Task 5 coarse-level metrics.

    ``y_true`` (N, K) {0, 1} coarse labels, ``y_score`` (N, K) in [0, 1]. Each class is its own
    single complete tag without X tag, which reduces the fine-level counting to plain
    TP/FP/FN per class. Returns the dict of :func:`dcase_fine_metrics`.
    """
    n_classes = np.shape(y_true)[1]
    taxonomy = [CoarseClass(complete=[k], incomplete=None) for k in range(n_classes)]
    return dcase_fine_metrics(y_true, y_score, taxonomy)


# --------------------------------------------------------------------------------------------
# Speaker verification
# --------------------------------------------------------------------------------------------


def eer_min_dcf(
    positive_scores,
    negative_scores,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> dict:
    """EER and minDCF of verification trials (accept a trial when its score > threshold).

    Arguments
    ---------
    positive_scores : (P,) scores of target trials; negative_scores : (M,) of non-target trials.

    The candidate thresholds are the trial scores, as in SpeechBrain's ``EER``/``minDCF`` (its
    extra midpoints repeat the error rates of the score below them), but counted by sorting
    instead of a (T, P) comparison matrix, so that 37k VoxCeleb trials stay cheap. Both ends of
    the sweep are included: the top score rejects every trial, and -inf (missing from
    SpeechBrain's sweep) accepts every trial, so the normalised minDCF never exceeds 1 (for
    p_target > 0.5 "accept all" is the cheaper trivial system).

    Returns
    -------
    dict with ``eer`` (fraction: mean of FAR and FRR at the lowest threshold where they are
    closest, as SpeechBrain resolves ties), ``eer_percent``, ``min_dcf_raw`` (min over
    thresholds of c_miss·p_miss·p_target + c_fa·p_fa·(1 − p_target), SpeechBrain's value) and
    ``min_dcf`` (raw / min(c_miss·p_target, c_fa·(1 − p_target)), the normalised value the
    VoxCeleb literature reports).
    """
    pos = np.sort(_to_numpy(positive_scores).astype(np.float64).reshape(-1))
    neg = np.sort(_to_numpy(negative_scores).astype(np.float64).reshape(-1))
    thresholds = np.concatenate([[-np.inf], np.unique(np.concatenate([pos, neg]))])
    misses = np.searchsorted(pos, thresholds, side="right")
    false_alarms = len(neg) - np.searchsorted(neg, thresholds, side="right")
    p_miss, p_fa = misses / len(pos), false_alarms / len(neg)
    # |p_fa - p_miss| in integers, so that equal gaps tie exactly and the lowest threshold wins.
    i = int(np.argmin(np.abs(false_alarms * len(pos) - misses * len(neg))))
    eer = float((p_fa[i] + p_miss[i]) / 2)
    min_dcf_raw = float(np.min(c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)))
    return {
        "eer": eer,
        "eer_percent": 100 * eer,
        "min_dcf": min_dcf_raw / min(c_miss * p_target, c_fa * (1 - p_target)),
        "min_dcf_raw": min_dcf_raw,
    }
