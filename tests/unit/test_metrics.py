"""Tests of kd_modules.metrics against hand-worked examples and independent re-implementations.

The reference code here is written as literal loops over Python lists, following docs/METHODS.md
section 5, and shares nothing with the library but numpy's default ``argsort`` (which the spec
prescribes for ordering tied recalls).
"""

import math

import numpy as np
import pytest
import torch
from speechbrain.utils.metric_stats import EER, minDCF

from kd_modules.metrics import (
    _fine_counts,
    accuracy,
    dcase_coarse_metrics,
    dcase_fine_metrics,
    eer_min_dcf,
)

# --------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------

LOGITS = [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 4.0]]  # argmax 0,1,0,2
TARGETS = [0, 1, 2, 2]  # third clip wrong -> 3/4


def test_accuracy_logits_ids_and_speechbrain_shapes():
    assert accuracy(np.array(LOGITS), np.array(TARGETS)) == 0.75
    assert accuracy(torch.tensor(LOGITS), torch.tensor(TARGETS)) == 0.75
    assert accuracy(torch.tensor([0, 1, 0, 2]), torch.tensor(TARGETS)) == 0.75  # ids
    # SpeechBrain classifiers output (B, 1, C) and encoded labels are (B, 1).
    assert accuracy(torch.tensor(LOGITS)[:, None], torch.tensor(TARGETS)[:, None]) == 0.75
    with pytest.raises(ValueError):
        accuracy(torch.tensor(LOGITS), torch.tensor([0, 1]))


def ref_class_table(truth, scores, complete, x):
    """Rows (threshold, TP, FP, FN) of one coarse class, thresholds descending (step 1)."""
    thresholds = set()
    for row in scores:
        for c in complete:
            if row[c] >= 0.01:
                thresholds.add(row[c])
    thresholds.add(1.0)
    rows = []
    for t in sorted(thresholds, reverse=True):
        tp = fp = fn = 0
        for true_row, score_row in zip(truth, scores):
            yt = [true_row[c] == 1 for c in complete]
            yp = [score_row[c] >= t for c in complete]
            xt = x is not None and true_row[x] == 1
            xp = x is not None and score_row[x] >= t
            for a, b in zip(yt, yp):
                tp += a and b
                fn += a and not b
                fp += (not a) and b and not xt
            cp = any(yp) or xp
            tp += xt and cp and not any(a and b for a, b in zip(yt, yp))
            fn += (not any(yt)) and xt and not cp
            fp += (not xt) and (not any(yt)) and xp and not all(yp)
        rows.append((t, tp, fp, fn))
    return rows


def ref_pr(counts):
    """Step 2: P and R lists from (TP, FP, FN) triples."""
    precision = [tp / max(tp + fp, 0.5) for tp, fp, fn in counts]
    recall = [tp / max(tp + fn, 0.5) for tp, fp, fn in counts]
    return precision, recall


def ref_area(precision, recall):
    """Step 3: rows ordered by np.argsort of R in table order, framed, trapezoid by a loop."""
    order = np.argsort(np.array(recall))
    points = [(0.0, 1.0)] + [(recall[i], precision[i]) for i in order] + [(1.0, 0.0)]
    area = 0.0
    for (r0, p0), (r1, p1) in zip(points[:-1], points[1:]):
        area += (r1 - r0) * (p0 + p1) / 2
    return area


def ref_f1(p, r):
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def ref_summary(tables, micro_counts_at):
    """Steps 3-4, given the class tables and a function t -> micro (TP, FP, FN)."""
    class_auprc = [ref_area(*ref_pr([row[1:] for row in table])) for table in tables]
    micro_thresholds = sorted({row[0] for table in tables for row in table})
    precision, recall = ref_pr([micro_counts_at(t) for t in micro_thresholds])
    i = next(i for i, t in enumerate(micro_thresholds) if t >= 0.5)
    return {
        "micro_auprc": ref_area(precision, recall),
        "micro_f1": ref_f1(precision[i], recall[i]),
        "macro_auprc": sum(class_auprc) / len(class_auprc),
        "class_auprc": class_auprc,
    }


def ref_fine(truth, scores, taxonomy):
    tables = [ref_class_table(truth, scores, e["complete"], e["incomplete"]) for e in taxonomy]

    def micro_counts_at(t):  # each class: its row with the smallest threshold >= t
        total = [0, 0, 0]
        for table in tables:
            row = min((row for row in table if row[0] >= t), key=lambda row: row[0])
            total = [a + b for a, b in zip(total, row[1:])]
        return total

    return ref_summary(tables, micro_counts_at)


def ref_coarse(truth, scores):
    """Coarse level; micro counts by thresholding every clip at t directly (equivalent at the
    coarse level, since no score lies strictly between t and the class's next threshold)."""
    n_classes = len(truth[0])
    tables = [ref_class_table(truth, scores, [k], None) for k in range(n_classes)]

    def micro_counts_at(t):
        tp = fp = fn = 0
        for true_row, score_row in zip(truth, scores):
            for k in range(n_classes):
                tp += true_row[k] == 1 and score_row[k] >= t
                fp += true_row[k] == 0 and score_row[k] >= t
                fn += true_row[k] == 1 and score_row[k] < t
        return tp, fp, fn

    return ref_summary(tables, micro_counts_at)


def assert_same(result, expected):
    for key in ("micro_auprc", "micro_f1", "macro_auprc"):
        assert result[key] == pytest.approx(expected[key], abs=1e-12), key
    assert result["class_auprc"] == pytest.approx(expected["class_auprc"], abs=1e-12)


# --------------------------------------------------------------------------------------------
# DCASE coarse level
# --------------------------------------------------------------------------------------------


def test_dcase_coarse_hand_example():
    # Class A: positives clips 0, 2, 3 (clip 3 scores 0.005 < 0.01: never a threshold, never
    # found). Negatives 1 and 4 tie with positives 0 and 2, so every step adds a TP: no tied R.
    #   t    TP FP FN   P    R
    #   1.0  0  0  3    0    0
    #   0.8  1  1  2   1/2  1/3
    #   0.6  2  2  1   1/2  2/3
    #   curve (0,1)(0,0)(1/3,1/2)(2/3,1/2)(1,0): 1/12 + 1/6 + 1/12 = 1/3
    # Class B: positives 1, 2, 5.
    #   1.0  0  0  3    0    0
    #   0.9  1  1  2   1/2  1/3
    #   0.7  2  1  1   2/3  2/3
    #   0.4  3  1  0   3/4   1
    #   area 1/3*(0+1/2)/2 + 1/3*(1/2+2/3)/2 + 1/3*(2/3+3/4)/2 + 0 = 37/72
    # Micro, ascending thresholds, summing each class's row at its smallest threshold >= t:
    #   t    TP FP FN   P    R
    #   0.4  5  3  1   5/8  5/6
    #   0.6  4  3  2   4/7  2/3   <- first t >= 0.5: F = 2/(7/4 + 3/2) = 8/13
    #   0.7  3  2  3   3/5  1/2
    #   0.8  2  2  4   1/2  1/3
    #   0.9  1  1  5   1/2  1/6
    #   1.0  0  0  6    0    0
    #   area (widths 1/6): 1/24 + 1/12 + 11/120 + 41/420 + 67/672 + 5/96 = 261/560
    truth = [[1, 0], [0, 1], [1, 1], [1, 0], [0, 0], [0, 1]]
    scores = [[0.8, 0.9], [0.8, 0.9], [0.6, 0.7], [0.005, 0.0], [0.6, 0.004], [0.0, 0.4]]
    result = dcase_coarse_metrics(np.array(truth), np.array(scores))
    assert_same(
        result,
        {
            "micro_auprc": 261 / 560,
            "micro_f1": 8 / 13,
            "macro_auprc": (1 / 3 + 37 / 72) / 2,
            "class_auprc": [1 / 3, 37 / 72],
        },
    )
    # Tensors are accepted as well.
    assert dcase_coarse_metrics(torch.tensor(truth), torch.tensor(scores)) == result


def test_dcase_tied_recalls_follow_numpy_argsort_in_table_order():
    # One class; positives clips 0, 2, 3; negative clip 1 (0.7) adds an FP without a TP.
    # Class table (descending thresholds) R = [0, 1/3, 1/3, 1], P = [0, 1, 1/2, 3/4].
    #   tie order (P=1, P=1/2): (0,0)(1/3,1) 1/6 + (1/3,1/2)(1,3/4) 2/3*(5/4)/2 = 7/12
    #   tie order (P=1/2, P=1): (0,0)(1/3,1/2) 1/12 + (1/3,1)(1,3/4) 2/3*(7/4)/2 = 2/3
    # The micro table holds the same rows in ascending threshold order, R = [1, 1/3, 1/3, 0],
    # P = [3/4, 1/2, 1, 0], so its tie can be ordered the other way.
    result = dcase_coarse_metrics(
        np.array([[1], [0], [1], [1]]), np.array([[0.9], [0.7], [0.5], [0.5]])
    )
    one_first = {True: 7 / 12, False: 2 / 3}  # keyed by "the P=1 row comes first"
    class_order = np.argsort(np.array([0, 1 / 3, 1 / 3, 1]))
    micro_order = np.argsort(np.array([1, 1 / 3, 1 / 3, 0]))
    assert result["class_auprc"][0] == pytest.approx(one_first[bool(class_order[1] == 1)])
    assert result["micro_auprc"] == pytest.approx(one_first[bool(micro_order[1] == 2)])


def test_dcase_tie_run_of_three_follows_numpy_argsort():
    # Positive at .95, negatives at .9 and .8 (FP-only steps), last positive at .05.
    #   t    TP FP FN   P    R
    #   1.0  0  0  2    0    0
    #   .95  1  0  1    1   1/2
    #   .9   1  1  1   1/2  1/2
    #   .8   1  2  1   1/3  1/2
    #   .05  2  2  0   1/2   1
    # Only the first and last rows of the R = 1/2 run touch their neighbours (0,0) and (1,1/2):
    #   area = 1/2 * (0 + P_first) / 2 + 1/2 * (P_last + 1/2) / 2
    # A run of three need not keep its order under numpy's default argsort (it does not with
    # numpy 2.x on AVX2), and the class and micro tables list the rows in opposite orders.
    truth = np.array([[1], [0], [0], [1]])
    scores = np.array([[0.95], [0.9], [0.8], [0.05]])
    result = dcase_coarse_metrics(truth, scores)

    def area(table_recall, table_precision):
        order = np.argsort(np.array(table_recall))
        p_first, p_last = table_precision[order[1]], table_precision[order[3]]
        return (0 + p_first) / 4 + (p_last + 1 / 2) / 4

    assert result["class_auprc"][0] == pytest.approx(
        area([0, 1 / 2, 1 / 2, 1 / 2, 1], [0, 1, 1 / 2, 1 / 3, 1 / 2])
    )
    assert result["micro_auprc"] == pytest.approx(
        area([1, 1 / 2, 1 / 2, 1 / 2, 0], [1 / 2, 1 / 3, 1 / 2, 1, 0])
    )


def test_dcase_score_of_exactly_min_threshold_is_a_threshold():
    # 0.01 is kept (>= 0.01): rows 1.0 (P=R=0) and 0.01 (P=R=1): (0,0)-(1,1) = 1/2.
    result = dcase_coarse_metrics(np.array([[1], [0]]), np.array([[0.01], [0.0]]))
    assert result["class_auprc"] == [pytest.approx(0.5)]


@pytest.mark.parametrize("seed", range(5))
def test_dcase_coarse_random_matches_reference(seed):
    rng = np.random.default_rng(seed)
    truth = (rng.random((40, 4)) < 0.35).astype(int)
    scores = np.round(rng.random((40, 4)), 1)  # coarse grid: tied scores and tied recalls
    scores[rng.random((40, 4)) < 0.2] = 0.0  # below 0.01: never a threshold
    expected = ref_coarse(truth.tolist(), scores.tolist())
    assert_same(dcase_coarse_metrics(truth, scores), expected)


def test_dcase_coarse_degenerate_cases_do_not_crash():
    truth = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 1]])  # class 1: no positive clip
    scores = np.array([[0.9, 0.8, 0.0], [0.2, 0.3, 0.0], [0.7, 0.0, 0.0], [0.1, 0.6, 0.005]])
    result = dcase_coarse_metrics(truth, scores)  # class 2 is never predicted (all < 0.01)
    assert all(math.isfinite(v) for v in [*result["class_auprc"], result["micro_auprc"]])
    assert result["class_auprc"][1] == 0.0 and result["class_auprc"][2] == 0.0
    assert_same(result, ref_coarse(truth.tolist(), scores.tolist()))

    silent = dcase_coarse_metrics(truth, np.zeros((4, 3)))  # only the threshold 1.0 remains
    assert silent == {
        "micro_auprc": 0.0,
        "micro_f1": 0.0,
        "macro_auprc": 0.0,
        "class_auprc": [0.0, 0.0, 0.0],
    }
    assert math.isfinite(dcase_coarse_metrics(np.zeros((3, 2)), np.ones((3, 2)))["micro_f1"])
    with pytest.raises(ValueError):
        dcase_coarse_metrics(truth, scores + 1.0)


# --------------------------------------------------------------------------------------------
# DCASE fine level
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "yt, yp, xt, xp, expected",
    [
        # X truth, a wrong complete tag predicted: incomplete TP; its complete FP is not counted.
        ([0, 0], [1, 0], True, False, (1, 0, 0)),
        ([0, 0], [0, 0], True, True, (1, 0, 0)),  # X truth, only X predicted: TP
        ([0, 0], [0, 0], True, False, (0, 0, 1)),  # X truth, nothing predicted: FN
        ([1, 0], [1, 0], True, False, (1, 0, 0)),  # correct complete tag: no second TP from X
        ([1, 0], [0, 0], True, False, (0, 0, 1)),  # complete FN only (truth has a complete tag)
        ([1, 0], [0, 1], True, False, (1, 0, 1)),  # complete FN + incomplete TP, FP masked
        ([0, 0], [0, 0], False, True, (0, 1, 0)),  # X predicted on an empty clip: FP
        ([0, 0], [1, 1], False, True, (0, 2, 0)),  # all complete tags predicted: no X FP
        ([0, 0], [1, 0], False, True, (0, 2, 0)),  # complete FP + X FP
        ([0, 1], [0, 1], False, True, (1, 0, 0)),  # X predicted beside a true complete tag
        ([0, 1], [1, 0], False, False, (0, 1, 1)),  # plain complete FP and FN
    ],
)
def test_fine_counting_rules_one_clip(yt, yp, xt, xp, expected):
    counts = _fine_counts(
        np.array([yt], dtype=bool), np.array([yp], dtype=bool), np.array([xt]), np.array([xp])
    )
    assert counts == expected


FINE_TAXONOMY = [{"complete": [0, 1], "incomplete": 2}, {"complete": [3], "incomplete": None}]


def test_dcase_fine_hand_example():
    # Coarse class 0: complete tags c0, c1 and X tag cX; class 1: single tag d, no X tag.
    # clip  truth(c0 c1 cX | d)  scores(c0  c1  cX | d)
    #  0     0  0  1 | 1          .9  .1  0  | .5   X truth: incomplete TP once c0 >= t
    #  1     0  0  1 | 0          0   0   .3 | 0    X truth: FN until cX >= t (at t = .1)
    #  2     1  0  1 | 0          .6  0   0  | .5   c0 + X truth: complete FN, then TP (not 2)
    #  3     0  0  0 | 1          0   0   .8 | .2   X predicted, empty truth: incomplete FP
    #  4     0  1  0 | 0          .4  .7  0  | 0    complete TP on c1, FP on c0
    # Class 0 thresholds come from c0, c1 only: 1.0 .9 .7 .6 .4 .1
    #   t    TP FP FN   P    R
    #   1.0  0  0  4    0    0     FN: clips 0, 1 (X), 2 (c0), 4 (c1)
    #   .9   1  0  3    1   1/4    clip 0 TP (coarsened c0 >= .9)
    #   .7   2  1  2   2/3  1/2    + clip 4 TP (c1), clip 3 FP (X .8)
    #   .6   3  1  1   3/4  3/4    clip 2: c0 hit, so TP 1 and no incomplete TP
    #   .4   3  2  1   3/5  3/4    + clip 4 FP (c0)
    #   .1   4  2  0   2/3   1     clip 0 c1 FP masked by X truth; clip 1 TP (cX .3 >= .1)
    #   area 1/8 + 5/24 + 17/96 + 0 + 19/120 = 107/160 (tie at R=3/4: equal widths, order-free)
    # Class 1: 1.0 (0,0,2); .5 (1,1,1) P=R=1/2; .2 (2,1,0) P=2/3 R=1 -> 1/8 + 7/24 = 5/12
    # Micro (class 0 row looked up at its own threshold, so cX is judged at .4 for t = .2):
    #   t    TP FP FN   P    R
    #   .1   6  3  0   2/3   1
    #   .2   5  3  1   5/8  5/6
    #   .4   4  3  2   4/7  2/3
    #   .5   4  2  2   2/3  2/3   <- micro-F1 = 2/3
    #   .6   3  1  3   3/4  1/2
    #   .7   2  1  4   2/3  1/3
    #   .9   1  0  5    1   1/6
    #   1.0  0  0  6    0    0
    #   area (widths 1/6) 1/12 + 5/36 + 17/144 + (3/4+4/7+2/3+5/8)/12 + 31/288 = 671/1008
    truth = [[0, 0, 1, 1], [0, 0, 1, 0], [1, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0]]
    scores = [
        [0.9, 0.1, 0.0, 0.5],
        [0.0, 0.0, 0.3, 0.0],
        [0.6, 0.0, 0.0, 0.5],
        [0.0, 0.0, 0.8, 0.2],
        [0.4, 0.7, 0.0, 0.0],
    ]
    result = dcase_fine_metrics(np.array(truth), np.array(scores), FINE_TAXONOMY)
    assert_same(
        result,
        {
            "micro_auprc": 671 / 1008,
            "micro_f1": 2 / 3,
            "macro_auprc": (107 / 160 + 5 / 12) / 2,
            "class_auprc": [107 / 160, 5 / 12],
        },
    )


@pytest.mark.parametrize("seed", range(5))
def test_dcase_fine_random_matches_reference(seed):
    taxonomy = [
        {"complete": [0, 1, 2], "incomplete": 3},
        {"complete": [4], "incomplete": None},
        {"complete": [5, 6], "incomplete": 7},
    ]
    rng = np.random.default_rng(100 + seed)
    truth = (rng.random((30, 8)) < 0.3).astype(int)
    scores = np.round(rng.random((30, 8)), 1)
    scores[rng.random((30, 8)) < 0.2] = 0.0
    expected = ref_fine(truth.tolist(), scores.tolist(), taxonomy)
    assert_same(dcase_fine_metrics(truth, scores, taxonomy), expected)


def test_dcase_fine_degenerate_cases_do_not_crash():
    truth = np.zeros((3, 4), dtype=int)  # no positive anywhere, X tag included
    for scores in (np.zeros((3, 4)), np.full((3, 4), 0.5)):
        result = dcase_fine_metrics(truth, scores, FINE_TAXONOMY)
        assert result["class_auprc"] == [0.0, 0.0] and result["micro_f1"] == 0.0


# --------------------------------------------------------------------------------------------
# Speaker verification
# --------------------------------------------------------------------------------------------


def ref_eer_min_dcf(pos, neg, p_target):
    """Sweep every score as threshold (accept if score > t), with Python lists."""
    best_gap, eer, min_dcf = None, None, None
    for t in sorted(set(pos) | set(neg)):
        frr = sum(1 for s in pos if s <= t) / len(pos)
        far = sum(1 for s in neg if s > t) / len(neg)
        if best_gap is None or abs(far - frr) < best_gap:
            best_gap, eer = abs(far - frr), (far + frr) / 2
        dcf = frr * p_target + far * (1 - p_target)
        min_dcf = dcf if min_dcf is None else min(min_dcf, dcf)
    return eer, min_dcf


def test_eer_perfect_separation():
    result = eer_min_dcf([0.6, 0.7, 0.8, 0.5], [0.4, 0.3, 0.2, 0.1])
    assert result["eer"] == 0.0 and result["min_dcf"] == 0.0


def test_eer_min_dcf_hand_example():
    # pos .9 .8 .3, neg .7 .2 .1 .05; accept if score > t
    #   t     FRR  FAR   |FAR-FRR|   DCF = .01 FRR + .99 FAR
    #   .05   0    3/4   .75         .7425
    #   .1    0    1/2   .5          .495
    #   .2    0    1/4   .25         .2475
    #   .3    1/3  1/4   1/12        .2508
    #   .7    1/3  0     1/3         1/300   <- minDCF raw; normalised by .01: 1/3
    #   .8    2/3  0                 .0067
    #   .9    1    0                 .01
    # EER at t = .3: (1/3 + 1/4) / 2 = 7/24
    result = eer_min_dcf(torch.tensor([0.9, 0.8, 0.3]), torch.tensor([0.7, 0.2, 0.1, 0.05]))
    assert result["eer"] == pytest.approx(7 / 24)
    assert result["eer_percent"] == pytest.approx(700 / 24)
    assert result["min_dcf_raw"] == pytest.approx(1 / 300)
    assert result["min_dcf"] == pytest.approx(1 / 3)


def test_eer_equal_gaps_take_the_lowest_threshold_like_speechbrain():
    # pos .3 .5 .95, neg .1 .2 .8 .9. At t = .3: FRR 1/3, FAR 1/2; at t = .5: FRR 2/3, FAR 1/2.
    # Both gaps are 1/6 (in float64 they differ in the last bit); SpeechBrain keeps the first,
    # EER = (1/3 + 1/2) / 2 = 5/12 (the second would give 7/12).
    pos, neg = [0.3, 0.5, 0.95], [0.1, 0.2, 0.8, 0.9]
    assert eer_min_dcf(pos, neg)["eer"] == pytest.approx(5 / 12)
    assert EER(torch.tensor(pos), torch.tensor(neg))[0] == pytest.approx(5 / 12)


@pytest.mark.parametrize("p_target", [0.01, 0.05])
def test_eer_min_dcf_random_matches_sweep_and_speechbrain(p_target):
    rng = np.random.default_rng(7)
    # Power-of-two trial counts keep every rate exact in float32, SpeechBrain's precision.
    pos = np.round(rng.normal(1.5, 1.0, 64), 1)
    neg = np.round(rng.normal(0.0, 1.0, 256), 1)
    result = eer_min_dcf(pos, neg, p_target=p_target)
    eer, min_dcf = ref_eer_min_dcf(pos.tolist(), neg.tolist(), p_target)
    assert result["eer"] == pytest.approx(eer, abs=1e-12)
    assert result["min_dcf_raw"] == pytest.approx(min_dcf, abs=1e-12)
    assert result["min_dcf"] == pytest.approx(min_dcf / min(p_target, 1 - p_target))

    pos_t, neg_t = torch.tensor(pos, dtype=torch.float32), torch.tensor(neg, dtype=torch.float32)
    sb_min_dcf, _ = minDCF(pos_t, neg_t, p_target=p_target)
    assert result["min_dcf_raw"] == pytest.approx(sb_min_dcf, rel=1e-6)
    if p_target == 0.01:
        assert result["min_dcf"] == pytest.approx(100 * sb_min_dcf, rel=1e-6)
    assert result["eer"] == pytest.approx(EER(pos_t, neg_t)[0], abs=1e-7)


def brute_force_min_dcf(pos, neg, p_target, c_miss=1.0, c_fa=1.0):
    """Normalised minDCF by trying every threshold that decides differently: each score, each
    midpoint between neighbouring scores, and one below (accept all) and above (reject all)."""
    scores = sorted(set(pos) | set(neg))
    mids = [(a + b) / 2 for a, b in zip(scores, scores[1:])]
    best = math.inf
    for t in [scores[0] - 1, *scores, *mids, scores[-1] + 1]:
        p_miss = sum(1 for s in pos if not s > t) / len(pos)
        p_fa = sum(1 for s in neg if s > t) / len(neg)
        best = min(best, c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target))
    return best / min(c_miss * p_target, c_fa * (1 - p_target))


def test_min_dcf_considers_accept_all_and_reject_all():
    # Equal scores: no threshold separates; the best system is trivial, normalised minDCF 1.
    assert eer_min_dcf([1.0], [1.0], p_target=0.9)["min_dcf"] == pytest.approx(1.0)  # accept all
    assert eer_min_dcf([1.0], [1.0], p_target=0.1)["min_dcf"] == pytest.approx(1.0)  # reject all
    # Reversed scores: every threshold but "accept all" misses a target; at p_target = .9
    # accepting all costs .1 (raw), rejecting all .9.
    result = eer_min_dcf([0.1, 0.2], [0.8, 0.9], p_target=0.9)
    assert result["min_dcf_raw"] == pytest.approx(0.1) and result["min_dcf"] == pytest.approx(1.0)
    assert result["eer"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(4))
def test_min_dcf_matches_brute_force_over_p_target(seed):
    rng = np.random.default_rng(seed)
    n_pos, n_neg = rng.integers(1, 12, size=2)
    # Overlapping, tied scores so that trivial and non-trivial systems each win somewhere.
    pos = np.round(rng.normal(0.5, 1.0, n_pos), 1).tolist()
    neg = np.round(rng.normal(0.0, 1.0, n_neg), 1).tolist()
    for p_target in [0.001, *np.linspace(0.02, 0.98, 25), 0.999]:
        for c_miss, c_fa in [(1.0, 1.0), (10.0, 1.0), (1.0, 3.0)]:
            result = eer_min_dcf(pos, neg, p_target=p_target, c_miss=c_miss, c_fa=c_fa)
            expected = brute_force_min_dcf(pos, neg, p_target, c_miss, c_fa)
            assert result["min_dcf"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
            assert result["min_dcf"] <= 1.0 + 1e-12
