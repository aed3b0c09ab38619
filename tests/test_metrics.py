"""Each GLUE metric against values computed by hand."""

import math

import pytest

from bench.tasks import metrics as M

PREDS = [1, 1, 1, 0, 0]
LABELS = [1, 1, 0, 1, 0]  # TP=2, FP=1, FN=1, TN=1


def test_accuracy():
    assert M.accuracy(PREDS, LABELS) == pytest.approx(3 / 5)


def test_f1_is_binary_f1_of_positive_class_not_macro():
    # P = 2/3, R = 2/3 -> F1 = 2/3; the macro average would be (2/3 + 1/2) / 2 = 0.5833
    assert M.f1_positive(PREDS, LABELS) == pytest.approx(2 / 3)


def test_matthews():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3*3*2*2) = 1/6
    assert M.matthews(PREDS, LABELS) == pytest.approx(1 / 6)


def test_pearson():
    # x = [1, 2, 3], y = [1, 2, 4]: cov = 3 (sum of products of deviations), var_x = 2, var_y = 42/9
    assert M.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / math.sqrt(2 * 42 / 9))


def test_spearman():
    # ranks [1,2,3,4] vs [1,3,2,4]: sum d^2 = 2 -> 1 - 6*2 / (4 * 15) = 0.8
    assert M.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_constant_predictions_give_zero_correlation_not_nan():
    assert M.pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0


def test_unknown_metric_is_named():
    with pytest.raises(KeyError, match="bleu"):
        M.compute(["bleu"], [1], [1])
