"""Tests of the DACT math against a NumPy reference."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dact_tf import ops
from tests.testing import numpy_dact


def _random_trajectory(rng, n, batch, classes, halting_scale=1.0):
    logits = rng.normal(size=(n, batch, classes)) * 3
    answers = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    halting = 1 / (1 + np.exp(-rng.normal(size=(n, batch)) * 3 * halting_scale))
    return answers.astype("float32"), halting.astype("float32")


def _tf_trajectory(answers, halting):
    a, p = ops.initial_state(answers.shape[1], answers.shape[2])
    acc, bud = [], []
    for y, h in zip(answers, halting):
        a, p = ops.accumulate(a, p, y, h)
        acc.append(a.numpy())
        bud.append(p.numpy())
    return np.stack(acc), np.stack(bud)


def test_initial_state():
    a, p = ops.initial_state(3, 4)
    np.testing.assert_array_equal(a.numpy(), np.zeros((3, 4)))
    np.testing.assert_array_equal(p.numpy(), np.ones(3))


def test_accumulate_matches_numpy_and_stays_a_distribution():
    rng = np.random.default_rng(0)
    answers, halting = _random_trajectory(rng, 6, 50, 5)
    acc, bud = _tf_trajectory(answers, halting)
    ref_acc, ref_bud = numpy_dact(answers, halting)
    np.testing.assert_allclose(acc, ref_acc, atol=1e-6)
    np.testing.assert_allclose(bud, ref_bud, atol=1e-7)
    # a_1 = y_1; every a_n is a distribution; p never grows.
    np.testing.assert_allclose(acc[0], answers[0], atol=1e-7)
    assert (acc >= 0).all()
    np.testing.assert_allclose(acc.sum(-1), 1.0, atol=1e-5)
    assert (np.diff(bud, axis=0) <= 0).all()


def test_ponder_cost_is_sum_of_budgets():
    rng = np.random.default_rng(1)
    _, halting = _random_trajectory(rng, 5, 8, 2)
    _, ref_bud = numpy_dact(np.zeros((5, 8, 2)), halting)
    cost = ops.ponder_cost(tf.constant(ref_bud, tf.float32)).numpy()
    np.testing.assert_allclose(cost, ref_bud.sum(0), rtol=1e-6)


def _halting_steps(acc, bud, n_layers, **kwargs):
    """halts[n, b] for every block n (remaining = N - 1 - n)."""
    return np.stack(
        [
            ops.should_halt(
                tf.constant(acc[n], tf.float32),
                tf.constant(bud[n], tf.float32),
                n_layers - 1 - n,
                **kwargs,
            ).numpy()
            for n in range(n_layers)
        ]
    )


@pytest.mark.parametrize("rule", ["tight", "paper"])
def test_guaranteed_rules_never_change_the_prediction(rule):
    rng = np.random.default_rng(2)
    n_layers, batch, classes = 8, 4000, 3
    answers, halting = _random_trajectory(rng, n_layers, batch, classes, 0.7)
    acc, bud = numpy_dact(answers, halting)
    halts = _halting_steps(acc, bud, n_layers, rule=rule)
    final = acc[-1].argmax(-1)
    checked = 0
    for n in range(n_layers - 1):
        rows = halts[n]
        checked += rows.sum()
        np.testing.assert_array_equal(acc[n][rows].argmax(-1), final[rows])
    assert checked > batch  # the test exercised many early halts


def test_tight_rule_halts_no_later_than_paper_rule():
    rng = np.random.default_rng(3)
    answers, halting = _random_trajectory(rng, 8, 3000, 4)
    acc, bud = numpy_dact(answers, halting)
    tight = _halting_steps(acc, bud, 8, rule="tight")
    paper = _halting_steps(acc, bud, 8, rule="paper")
    assert not (paper & ~tight).any()  # paper => tight
    assert (tight & ~paper).any()  # and tight is strictly looser somewhere
    exit_tight = ops.first_halting_layer(tf.constant(tight)).numpy()
    exit_paper = ops.first_halting_layer(tf.constant(paper)).numpy()
    assert (exit_tight <= exit_paper).all()


def test_tight_rule_is_tight():
    # Every state that fails the test has a future that flips (or ties) the
    # prediction: halting values 1 (the budget stays p_n) and every later
    # answer all on the runner-up.
    rng = np.random.default_rng(4)
    answers, halting = _random_trajectory(rng, 3, 2000, 3)
    acc, bud = numpy_dact(answers, halting)
    n, remaining = 2, 4
    fails = ~ops.should_halt(acc[n], bud[n], remaining, margin=0.0).numpy()
    assert fails.sum() > 100
    a, p = acc[n][fails], bud[n][fails]
    top = a.argmax(-1)
    runner_up = np.argsort(a, -1)[:, -2]
    adversary = np.eye(3)[runner_up]
    for _ in range(remaining):
        a = p[:, None] * adversary + (1 - p[:, None]) * a
    rows = np.arange(len(a))
    assert (a[rows, runner_up] >= a[rows, top] - 1e-9).all()


def test_regression_bound_holds():
    rng = np.random.default_rng(5)
    lo, hi, n_layers = 0.0, 5.0, 6
    scores = rng.uniform(lo, hi, size=(n_layers, 3000, 1)).astype("float32")
    halting = (1 / (1 + np.exp(-rng.normal(size=(n_layers, 3000)) * 3))).astype(
        "float32"
    )
    acc, bud = numpy_dact(scores, halting)
    tol = 0.1
    halts = _halting_steps(
        acc, bud, n_layers, task="regression", tolerance=tol, output_range=(lo, hi)
    )
    assert halts[:-1].sum() > 100
    for n in range(n_layers - 1):
        err = np.abs(acc[-1][halts[n], 0] - acc[n][halts[n], 0])
        assert (err <= tol + 1e-5).all()


def test_relaxed_rule_halts_at_least_as_often_and_on_small_budget():
    rng = np.random.default_rng(6)
    answers, halting = _random_trajectory(rng, 6, 2000, 2)
    acc, bud = numpy_dact(answers, halting)
    tight = _halting_steps(acc, bud, 6, rule="tight")
    relaxed = _halting_steps(acc, bud, 6, rule="relaxed", epsilon=0.05, slack=0.05)
    assert not (tight & ~relaxed).any()
    assert (relaxed & ~tight).any()
    # A budget below epsilon always halts under the relaxed rule.
    assert relaxed[bud < 0.05].all()


def test_never_rule_and_last_block():
    never = ops.should_halt(tf.constant([[1.0, 0.0]]), tf.constant([0.0]), 3, rule="never")
    assert not never.numpy().any()
    # No blocks left: the tight test passes on any strict winner.
    last = ops.should_halt(tf.constant([[0.6, 0.4]]), tf.constant([0.9]), 0)
    assert last.numpy().all()


def test_first_halting_layer():
    halts = tf.constant([[False, True, False], [True, False, False], [True, True, False]])
    np.testing.assert_array_equal(ops.first_halting_layer(halts).numpy(), [2, 1, 3])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rule": "sometimes"}, "rule"),
        ({"task": "ranking"}, "task"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ops.should_halt(tf.constant([[0.5, 0.5]]), tf.constant([0.5]), 1, **kwargs)


_probs = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 8), st.integers(1, 6), st.integers(2, 5)),
    elements=st.floats(0.0, 1.0),
).map(lambda x: (x + 1e-3) / (x + 1e-3).sum(-1, keepdims=True))


@settings(max_examples=60, deadline=None)
@given(answers=_probs, data=st.data())
def test_property_distribution_budget_and_guarantee(answers, data):
    n_layers, batch, _ = answers.shape
    halting = data.draw(
        hnp.arrays(np.float64, (n_layers, batch), elements=st.floats(0.0, 1.0))
    )
    acc, bud = _tf_trajectory(answers.astype("float32"), halting.astype("float32"))
    assert (acc >= -1e-7).all()
    np.testing.assert_allclose(acc.sum(-1), 1.0, atol=1e-5)
    assert (np.diff(np.concatenate([np.ones((1, batch)), bud]), axis=0) <= 1e-7).all()
    final = acc[-1].argmax(-1)
    for n in range(n_layers - 1):
        halt = ops.should_halt(acc[n], bud[n], n_layers - 1 - n).numpy()
        np.testing.assert_array_equal(acc[n][halt].argmax(-1), final[halt])
