"""Anytime (budgeted) inference: `model(x, max_layers=...)`."""

import numpy as np
import pytest
import tensorflow as tf

from dact_tf.training import train_lib
from dact_tf.models.dact_classifier import DactClassifier
from tests.testing import dataset
from tests.testing import synthetic_task
from tests.testing import tiny_backbone


@pytest.mark.parametrize("method", ["dact", "pabee", "deebert", "static"])
def test_a_cap_stops_each_row_and_answers_with_what_it_has(method):
    feats, _ = synthetic_task(64, seed=3)
    model = DactClassifier(tiny_backbone(seed=3), num_classes=2, dropout=0.0,
                           halting_bias=0.5, method=method)
    uncapped = model(feats)["layers_executed"].numpy()
    trace = model.trace(feats)
    answers = trace["accumulated" if method == "dact" else "answers"].numpy()
    caps = (np.arange(64) % 5 + 1).astype("int32")  # 5 > the 4 blocks: no cap
    out = model(feats, max_layers=caps)
    layers = out["layers_executed"].numpy()
    np.testing.assert_array_equal(layers, np.minimum(uncapped, caps))
    # DACT: the accumulated a_n at the stop; baselines: the last head's y_n.
    np.testing.assert_allclose(out["probabilities"], answers[layers - 1, np.arange(64)],
                               atol=1e-5)
    np.testing.assert_array_equal(out["exact"], uncapped <= caps)
    if method == "dact":  # exact rows are the full-depth prediction (the guarantee)
        full = model(feats, full_depth=True)["predictions"].numpy()
        exact = out["exact"].numpy()
        np.testing.assert_array_equal(out["predictions"].numpy()[exact], full[exact])


def test_evaluate_reports_the_exact_fraction_at_a_cap():
    feats, labels = synthetic_task(48, seed=5)
    model = DactClassifier(tiny_backbone(seed=5), num_classes=2, dropout=0.0, halting_bias=2.0)
    data = dataset(feats, labels, batch_size=16)
    free = train_lib.evaluate(model, data, "classification")
    one = train_lib.evaluate(model, data, "classification", max_layers=1)
    assert one["mean_layers_executed"] == 1.0 and one["max_layers"] == 1
    expected = free["layers_histogram"][0] / free["num_examples"]
    assert one["exact_fraction"] == pytest.approx(expected)
    everything = train_lib.evaluate(model, data, "classification", max_layers=4)
    assert everything["exact_fraction"] == 1.0
    assert everything["accuracy"] == free["accuracy"]


def test_bad_caps_are_refused():
    feats, _ = synthetic_task(4, seed=1)
    model = DactClassifier(tiny_backbone(), num_classes=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=">= 1"):
        model(feats, max_layers=np.array([1, 0, 2, 3], "int32"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="one entry per row"):
        model(feats, max_layers=np.array([1, 2], "int32"))
    with pytest.raises(TypeError, match="int32"):
        model(feats, max_layers=np.array([1.0, 2.0, 1.0, 1.0], "float32"))
    with pytest.raises(ValueError, match="full_depth"):
        model(feats, max_layers=np.array([1, 1, 1, 1], "int32"), full_depth=True)
    with pytest.raises(ValueError, match="max_layers must be >= 1"):
        train_lib.predict_dataset(model, dataset(feats, np.zeros(4, "int32")), max_layers=0)
