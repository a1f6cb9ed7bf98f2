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
    halting_logits = z @ w["halting_kernel"][i] + w["halting_bias"][i]
    if "halting_confidence" in w:
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        c = logits.shape[-1]
        confidence = (probs.max(-1) - 1 / c) * c / (c - 1)
        halting_logits = halting_logits + w["halting_confidence"][i] * confidence
    h = 1 / (1 + np.exp(-halting_logits))
    return logits, h


@pytest.mark.parametrize("shared, confidence", [(False, 0.0), (True, 0.0), (False, -3.0),
                                                (True, -3.0)])
def test_heads_match_numpy_and_stacked_call(shared, confidence):
    heads = DactHeads(num_layers=3, num_outputs=4, hidden_dim=5, shared=shared,
                      halting_confidence=confidence)
    rng = np.random.default_rng(0)
    x_all = rng.normal(size=(3, 6, 8)).astype("float32")
    y_all, h_all = run_layer_test(
        heads, tf.constant(x_all), num_trainable_weights=7 if confidence else 6
    )
    if confidence:  # the confidence weights start where they were asked to
        np.testing.assert_allclose(heads.confidence_weight, [confidence] * (1 if shared else 3))
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
        (dict(num_layers=2, num_outputs=1, task="regression", output_range=(0, 5),
              halting_confidence=-1.0), "halting_confidence"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DactHeads(**kwargs)


def test_confident_answers_halt_more():
    """With a negative confidence weight, a confident answer gets a lower h."""
    heads = DactHeads(1, 2, hidden_dim=4, halting_confidence=-4.0, halting_bias=1.0)
    heads.build((None, 3))
    for v in (heads.hidden_kernel, heads.halting_kernel):
        v.assign(tf.zeros_like(v))  # z = 0: the confidence term alone moves h
    heads.answer_bias.assign([[0.0, 0.0]])
    _, unsure = heads(tf.zeros([1, 3]), layer_index=0)
    heads.answer_bias.assign([[0.0, 6.0]])
    _, sure = heads(tf.zeros([1, 3]), layer_index=0)
    np.testing.assert_allclose(unsure, 1 / (1 + np.exp(-1.0)), rtol=1e-6)
    conf = (1 / (1 + np.exp(-6.0)) - 0.5) * 2
    np.testing.assert_allclose(sure, 1 / (1 + np.exp(-(1.0 - 4.0 * conf))), rtol=1e-5)


def test_the_halting_unit_reads_the_confidence_but_does_not_train_it():
    """The ponder cost must not make answers confident to halt sooner."""
    heads = DactHeads(2, 3, hidden_dim=4, halting_confidence=-4.0)
    x = tf.random.stateless_normal([5, 6], seed=[1, 2])
    heads.build(x.shape)
    with tf.GradientTape() as tape:
        _, halting = heads(x, layer_index=1)
        loss = tf.reduce_sum(halting)
    grads = tape.gradient(loss, [heads.answer_kernel, heads.answer_bias,
                                 heads.confidence_weight, heads.halting_kernel])
    # The answer's weights get no gradient from the halting value ...
    assert grads[0] is None or not np.any(grads[0].numpy())
    assert grads[1] is None or not np.any(grads[1].numpy())
    # ... while the halting unit's own weights (and the confidence weight) do.
    assert np.any(grads[2].numpy()[1]) and np.any(grads[3].numpy()[1])


def _built_heads(num_layers=4, confidence=-4.0, seed=0):
    heads = DactHeads(num_layers=num_layers, num_outputs=2, hidden_dim=3,
                      halting_confidence=confidence)
    heads(tf.zeros([1, 5]), layer_index=0)
    rng = np.random.default_rng(seed)
    for variable in heads.trainable_weights:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    return heads


def test_pass_through_is_exact_and_undoing_it_restores_the_bias_bit_for_bit():
    heads = _built_heads()
    trained = heads.halting_bias_weight.numpy().copy()
    x = tf.constant(np.random.default_rng(1).normal(size=(6, 5)), tf.float32)
    _, h_before = heads(tf.stack([x] * 4))
    for _ in range(3):  # repeated calibrations must not drift the trained biases
        heads.pass_budget_through(2)
        heads.shift_halting_bias(0.0)
        assert heads.passed_blocks == 2
        _, h = heads(tf.stack([x] * 4))
        np.testing.assert_array_equal(h.numpy()[:2], 1.0)
        np.testing.assert_array_equal(h.numpy()[2:], h_before.numpy()[2:])
        for n in range(4):  # the per-block call (the early-exit loop) agrees
            h_n = heads(x, layer_index=n)[1].numpy()
            np.testing.assert_allclose(h_n, h.numpy()[n], atol=1e-6)
            assert (h_n == 1.0).all() == (n < 2)
        heads.pass_budget_through(0)
    np.testing.assert_array_equal(heads.halting_bias_weight.numpy(), trained)
    np.testing.assert_array_equal(heads(tf.stack([x] * 4))[1].numpy(), h_before.numpy())


def test_the_pass_through_survives_saving_and_an_older_file_loads_it(tmp_path):
    heads = _built_heads()
    trained = heads.halting_bias_weight.numpy().copy()
    heads.pass_budget_through(1)
    store = {}
    heads.save_own_variables(store)
    assert store["pass_through"].numpy().tolist() == [1.0, 0.0, 0.0, 0.0]
    again = _built_heads(seed=5)
    again.load_own_variables(store)
    assert again.passed_blocks == 1
    np.testing.assert_array_equal(again.halting_bias_weight.numpy(), trained)
    # A file written before the mask existed held the pass-through in the
    # bias: it loads as a pass-through on the trained bias (to float32's
    # rounding of the old sum).
    old = {key: np.asarray(value) for key, value in store.items() if key != "pass_through"}
    old["5"] = old["5"] + np.array([1e4, 1e4, 0, 0], np.float32)
    older = _built_heads(seed=6)
    older.load_own_variables(old)
    assert older.passed_blocks == 2
    np.testing.assert_allclose(older.halting_bias_weight.numpy(), trained, atol=1e-3)
    # A full-depth model's heads (no confidence term) load into heads with it.
    plain = _built_heads(confidence=0.0, seed=7)
    plain_store = {}
    plain.save_own_variables(plain_store)
    heads.load_own_variables(plain_store)
    assert heads.passed_blocks == 0
    np.testing.assert_array_equal(heads.halting_bias_weight.numpy(),
                                  plain.halting_bias_weight.numpy())
    with pytest.raises(ValueError, match="expected 7 saved weights, found 3"):
        heads.load_own_variables({str(i): old[str(i)] for i in range(3)})
