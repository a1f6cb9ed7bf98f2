"""Tests for dact_tf.data.metrics against values computed by hand."""

import math

import numpy as np
import pytest

from dact_tf.data import metrics

# A small binary case used below. Counts by hand:
# TP = 2 (rows 0, 2), FP = 1 (row 3), FN = 2 (rows 1, 6), TN = 2 (rows 4, 5).
Y_TRUE = [1, 1, 1, 0, 0, 0, 1]
Y_PRED = [1, 0, 1, 1, 0, 0, 0]


def test_accuracy():
    assert metrics.accuracy([0, 1, 1, 0, 1], [0, 1, 0, 0, 1]) == 0.8
    assert metrics.accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 7)


def test_f1_binary():
    # precision 2/3, recall 2/4 -> 2PR/(P+R) = 4/7.
    assert metrics.f1_score(Y_TRUE, Y_PRED) == pytest.approx(4 / 7)
    # Class 0 as positive: TP=1, FP=0, FN=1 -> 2TP/(2TP+FP+FN) = 2/3.
    assert metrics.f1_score([0, 0, 1], [0, 1, 1], positive_label=0) == (
        pytest.approx(2 / 3)
    )
    assert metrics.f1_score([0, 0], [0, 0]) == 0.0  # undefined -> 0.0


def test_matthews_binary():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 2 / 12.
    assert metrics.matthews_corrcoef(Y_TRUE, Y_PRED) == pytest.approx(1 / 6)
    assert metrics.matthews_corrcoef([0, 1, 1], [0, 1, 1]) == 1.0
    assert metrics.matthews_corrcoef([0, 1, 1], [1, 0, 0]) == -1.0
    assert metrics.matthews_corrcoef([0, 1, 1], [1, 1, 1]) == 0.0


def test_matthews_multiclass():
    # c=4, s=6, t=(2,2,2), p=(2,3,1):
    # (4*6 - (4+6+2)) / sqrt((36-14) * (36-12)) = 12 / sqrt(22*24).
    value = metrics.matthews_corrcoef([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0])
    assert value == pytest.approx(12 / math.sqrt(22 * 24))


def test_pearson():
    # dx = (-1, 0, 1), dy = (-7/3, -1/3, 8/3): 5 / sqrt(2 * 114/9).
    value = metrics.pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])
    assert value == pytest.approx(5 / math.sqrt(2 * 114 / 9))
    assert metrics.pearson([1, 2, 3], [-2, -4, -6]) == pytest.approx(-1.0)
    assert math.isnan(metrics.pearson([1, 1, 1], [1, 2, 3]))


def test_rankdata_averages_ties():
    np.testing.assert_array_equal(
        metrics.rankdata([10, 20, 10, 30]), [1.5, 3.0, 1.5, 4.0]
    )
    np.testing.assert_array_equal(
        metrics.rankdata([3, 3, 3, 1]), [3.0, 3.0, 3.0, 1.0]
    )


def test_spearman():
    # Monotone but not linear: rank correlation is exactly 1.
    assert metrics.spearman([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]) == 1.0
    # Ties: ranks x = (1.5, 3, 1.5, 4), y = (1, 3, 2, 4); both mean 2.5;
    # sum dxdy = 4.5, sum dx^2 = 4.5, sum dy^2 = 5.
    value = metrics.spearman([10, 20, 10, 30], [1, 3, 2, 4])
    assert value == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert math.isnan(metrics.spearman([2, 2, 2], [1, 2, 3]))


def test_task_metrics_per_task():
    logits = [[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]
    mrpc = metrics.task_metrics("mrpc", [1, 0, 0, 1], logits)  # pred 1,0,1,0
    assert mrpc == {"accuracy": 0.5, "f1": pytest.approx(0.5)}
    assert metrics.task_metrics("SST-2", [1, 0], [1, 1]) == {"accuracy": 0.5}
    assert set(metrics.task_metrics("cola", Y_TRUE, Y_PRED)) == {
        "matthews_corrcoef"
    }
    stsb = metrics.task_metrics(
        "glue/stsb", [1.0, 2.0, 3.0], [[2.0], [4.0], [7.0]]
    )
    assert stsb == {
        "pearson": pytest.approx(5 / math.sqrt(2 * 114 / 9)),
        "spearman": 1.0,
    }
    assert metrics.task_metrics("regression", [0, 1], [0, 2])["pearson"] == (
        pytest.approx(1.0)
    )


def test_metric_input_checks():
    with pytest.raises(ValueError, match="Unknown task 'wnli'"):
        metrics.task_metrics("wnli", [0], [0])
    with pytest.raises(ValueError, match="same length"):
        metrics.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        metrics.accuracy([], [])
