"""Tests of DactHeads."""

import numpy as np
import pytest
import tensorflow as tf

from dact_tf.layers import DactHeads
from tests.testing import run_layer_test


def _numpy_head(heads, x, index):
    i = 0 if heads.shared else index
    w = {v.path.split("/")[-1]: v.numpy() for v in heads.weights}
    z = np.tanh(x @ w["hidden_kernel"][i] + w["hidden_bias"][i])
    logits = z @ w["answer_kernel"][i] + w["answer_bias"][i]
    h = 1 / (1 + np.exp(-(z @ w["halting_kernel"][i] + w["halting_bias"][i])))
    return logits, h


@pytest.mark.parametrize("shared", [False, True])
def test_heads_match_numpy_and_stacked_call(shared):
    heads = DactHeads(num_layers=3, num_outputs=4, hidden_dim=5, shared=shared)
    rng = np.random.default_rng(0)
    x_all = rng.normal(size=(3, 6, 8)).astype("float32")
    y_all, h_all = run_layer_test(
        heads, tf.constant(x_all), num_trainable_weights=6
    )
    assert y_all.shape == (3, 6, 4) and h_all.shape == (3, 6)
    k = 1 if shared else 3
    assert heads.hidden_kernel.shape == (k, 8, 5)
    for n in range(3):
        y, h = heads(x_all[n], layer_index=n)
        logits, ref_h = _numpy_head(heads, x_all[n], n)
        ref_y = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        np.testing.assert_allclose(y, ref_y, atol=1e-5)
        np.testing.assert_allclose(h, ref_h, atol=1e-5)
        np.testing.assert_allclose(y, y_all[n], atol=1e-6)
        np.testing.assert_allclose(h, h_all[n], atol=1e-6)
        # layer_index may also be a tensor (as inside the while loop).
        y_t, _ = heads(x_all[n], layer_index=tf.constant(n))
        np.testing.assert_allclose(y_t, y, atol=1e-7)


def test_regression_heads_are_bounded():
    heads = DactHeads(2, 1, task="regression", output_range=(0.0, 5.0))
    y, _ = heads(tf.random.normal([100, 4]) * 100, layer_index=0)
    assert (y.numpy() >= 0).all() and (y.numpy() <= 5).all()


def test_halting_bias_initialisation():
    heads = DactHeads(2, 2, halting_bias=3.0)
    _, h = heads(tf.zeros([1, 4]), layer_index=1)
    np.testing.assert_allclose(h, 1 / (1 + np.exp(-3.0)), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_layers=0, num_outputs=2), "num_layers"),
        (dict(num_layers=2, num_outputs=1), "num_outputs"),
        (dict(num_layers=2, num_outputs=2, task="regression"), "num_outputs"),
        (dict(num_layers=2, num_outputs=1, task="regression"), "output_range"),
        (dict(num_layers=2, num_outputs=1, task="regression", output_range=(5, 0)), "lo < hi"),
        (dict(num_layers=2, num_outputs=2, task="ranking"), "task"),
        (dict(num_layers=2, num_outputs=2, dropout=1.5), "dropout"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DactHeads(**kwargs)
