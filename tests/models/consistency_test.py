"""The learned consistency score (dact_tf.exits.consistency) against NumPy references."""

import numpy as np
import pytest

from dact_tf import exits
from dact_tf.exits import consistency


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _reference_features(previous, answer, budget, remaining):
    top = np.sort(answer, axis=-1)
    first, second = top[:, -1], top[:, -2]
    same = (answer.argmax(-1) == previous.argmax(-1)) & (previous.max(-1) > 0)
    q = (1.0 - budget) ** remaining
    return np.stack([first, first - second, same.astype(float), budget,
                     q * (1.0 + first - second) - 1.0], axis=-1)


def test_features_and_score_match_a_numpy_reference():
    rng = np.random.default_rng(0)
    answer = _softmax(rng.normal(size=(9, 3))).astype(np.float32)
    previous = _softmax(rng.normal(size=(9, 3))).astype(np.float32)
    previous[:2] = 0.0  # before block 1: no previous answer, never "the same"
    budget = rng.uniform(0.0, 1.0, size=9).astype(np.float32)
    got = consistency.features(previous, answer, budget, 3).numpy()
    np.testing.assert_allclose(got, _reference_features(previous, answer, budget, 3),
                               rtol=1e-5, atol=1e-6)
    assert not got[:2, 2].any()
    weights = tuple(rng.normal(size=consistency.NUM_FEATURES + 4))
    expected = 1.0 / (1.0 + np.exp(-(_reference_features(previous, answer, budget, 3)
                                     @ np.array(weights[:5]) + weights[5 + 3])))
    np.testing.assert_allclose(consistency.score(weights, previous, answer, budget, 3).numpy(),
                               expected, rtol=1e-5)


def _trace(rows=300, blocks=4, seed=1):
    """Answers that settle on the final prediction as blocks go (like a trained model's)."""
    rng = np.random.default_rng(seed)
    final = rng.normal(size=(rows, 2)) * 3.0
    accumulated = np.stack([_softmax(final * (i + 1) / blocks + rng.normal(size=(rows, 2)))
                            for i in range(blocks)])
    budgets = np.stack([np.full(rows, 0.5 ** (i + 1)) for i in range(blocks)])
    return accumulated.astype(np.float32), budgets.astype(np.float32)


def test_fit_is_the_penalised_maximum_likelihood():
    accumulated, budgets = _trace()
    weights = np.array(consistency.fit(accumulated, budgets, l2=1e-2))
    n, rows = accumulated.shape[:2]
    x = consistency.trace_features(accumulated, budgets)[:-1].astype(np.float64)
    onehot = np.zeros((n - 1, rows, n))
    for i in range(n - 1):
        onehot[i, :, n - 1 - i] = 1.0
    x = np.concatenate([x, onehot], -1).reshape(-1, consistency.NUM_FEATURES + n)
    preds = accumulated.argmax(-1)
    y = (preds[:-1] == preds[-1]).reshape(-1)
    p = 1.0 / (1.0 + np.exp(-(x @ weights)))
    # The gradient of the penalised log-likelihood vanishes at the fit.
    np.testing.assert_allclose(x.T @ (p - y) + 1e-2 * weights, 0.0, atol=1e-6)
    # And the score separates agreeing from disagreeing rows better than chance.
    scores = consistency.trace_scores(tuple(weights), accumulated, budgets)[:-1].reshape(-1)
    assert scores[y].mean() > scores[~y].mean() + 0.1


def test_the_grid_is_descending_inside_zero_one_and_from_the_fit_rows():
    accumulated, budgets = _trace()
    weights = consistency.fit(accumulated, budgets)
    scores = consistency.trace_scores(weights, accumulated, budgets)
    grid = consistency.threshold_grid(scores, size=50)
    assert grid == sorted(grid, reverse=True) and len(set(grid)) == len(grid)
    assert 0.0 < grid[-1] and grid[0] < 1.0
    assert grid[0] <= scores[:-1].max() + 1e-6 and grid[-1] >= scores[:-1].min() - 1e-6


def test_dact_fits_its_certified_grid_on_a_trace_and_refuses_bad_weights():
    accumulated, budgets = _trace(blocks=3)
    criterion = exits.Dact()
    grid = criterion.certified_grid(3, fit_trace={"accumulated": accumulated,
                                                  "budgets": budgets},
                                    context=exits.ExitContext())
    knob, value, first = grid[0]
    assert knob == "halting_threshold" and value == 1.0  # the safest: the tight test alone
    assert all(c.halting_rule == "certified" and len(c.consistency_weights) == 5 + 3
               for _, _, c in grid)
    assert [v for _, v, _ in grid] == sorted((v for _, v, _ in grid), reverse=True)
    # A serialized criterion keeps its weights.
    assert exits.get(exits.serialize(grid[5][2])) == grid[5][2]
    # No rows to fit on: the slacks of the tight test.
    assert grid[0][0] != criterion.certified_grid(
        3, fit_trace=None)[0][0] == "halting_slack"
    for bad, match in (([1.0, 2.0], "5 feature weights"), ("abc", "list of numbers"),
                       ([0.0] * 5 + [float("nan")], "finite")):
        with pytest.raises(ValueError, match=match):
            exits.Dact("certified", consistency_weights=bad)
    with pytest.raises(ValueError, match="halting_threshold"):
        exits.Dact("certified", halting_threshold=1.5)


_REGRESSION = exits.ExitContext(task="regression", output_range=(0.0, 5.0), tolerance=0.1)


def _reference_regression_features(previous, answer, budget, remaining, num_layers):
    lo, hi = _REGRESSION.output_range
    has_previous = float(remaining < num_layers - 1)
    change = np.abs(answer[:, 0] - previous[:, 0])
    u = np.clip((answer[:, 0] - lo) / (hi - lo), 0.0, 1.0)
    q = (1.0 - budget) ** remaining
    return np.stack([has_previous * (1.0 - np.minimum(change / (hi - lo), 1.0)),
                     4.0 * u * (1.0 - u),
                     has_previous * (change <= _REGRESSION.tolerance),
                     budget,
                     _REGRESSION.tolerance / (hi - lo) - (1.0 - q)], axis=-1)


@pytest.mark.parametrize("remaining", [3, 1, 0])
def test_regression_features_and_score_match_a_numpy_reference(remaining):
    rng = np.random.default_rng(2)
    answer = rng.uniform(0.0, 5.0, size=(9, 1)).astype(np.float32)
    previous = (answer + rng.normal(scale=0.2, size=(9, 1))).astype(np.float32)
    previous[:3] = answer[:3] + 0.05  # within the tolerance
    budget = rng.uniform(0.0, 1.0, size=9).astype(np.float32)
    want = _reference_regression_features(previous, answer, budget, remaining, 4)
    got = consistency.features(previous, answer, budget, remaining, _REGRESSION, 4).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Block 1 (3 blocks left of 4) has no block before: never steady, never "the same".
    assert (remaining == 3) == (not got[:, 2].any())
    weights = tuple(rng.normal(size=consistency.NUM_FEATURES + 4))
    expected = 1.0 / (1.0 + np.exp(-(want @ np.array(weights[:5]) + weights[5 + remaining])))
    np.testing.assert_allclose(
        consistency.score(weights, previous, answer, budget, remaining, _REGRESSION).numpy(),
        expected, rtol=1e-5)
    with pytest.raises(ValueError, match="num_layers"):
        consistency.features(previous, answer, budget, remaining, _REGRESSION)


def _regression_trace(rows=300, blocks=4, seed=3):
    """Scores that settle on the final score as blocks go, some rows faster than others."""
    rng = np.random.default_rng(seed)
    final = rng.uniform(0.0, 5.0, size=rows)
    offset = rng.normal(size=rows) * rng.uniform(0.1, 2.0, size=rows)
    accumulated = np.stack([np.clip(final + offset * (blocks - 1 - i) / blocks
                                    + rng.normal(scale=0.02, size=rows), 0.0, 5.0)
                            for i in range(blocks)])
    budgets = np.stack([np.full(rows, 0.9 ** (i + 1)) for i in range(blocks)])
    return accumulated[..., None].astype(np.float32), budgets.astype(np.float32)


def test_a_regression_score_is_fitted_to_within_the_tolerance_of_the_last_score():
    accumulated, budgets = _regression_trace()
    weights = np.array(consistency.fit(accumulated, budgets, l2=1e-2, context=_REGRESSION))
    n, rows = accumulated.shape[:2]
    x = consistency.trace_features(accumulated, budgets, _REGRESSION)[:-1].astype(np.float64)
    onehot = np.zeros((n - 1, rows, n))
    for i in range(n - 1):
        onehot[i, :, n - 1 - i] = 1.0
    x = np.concatenate([x, onehot], -1).reshape(-1, consistency.NUM_FEATURES + n)
    y = (np.abs(accumulated[:-1, :, 0] - accumulated[-1, :, 0]) <= 0.1).reshape(-1)
    assert 0.05 < y.mean() < 0.95
    p = 1.0 / (1.0 + np.exp(-(x @ weights)))
    np.testing.assert_allclose(x.T @ (p - y) + 1e-2 * weights, 0.0, atol=1e-6)
    scores = consistency.trace_scores(tuple(weights), accumulated, budgets,
                                      _REGRESSION)[:-1].reshape(-1)
    assert scores[y].mean() > scores[~y].mean() + 0.1
    # DACT's certified grid for a regressor is the fitted score's thresholds.
    grid = exits.Dact().certified_grid(
        n, fit_trace={"accumulated": accumulated, "budgets": budgets}, context=_REGRESSION)
    assert [k for k, _, _ in grid] == ["halting_threshold"] * len(grid) and len(grid) > 10
    np.testing.assert_allclose(grid[3][2].consistency_weights, weights)
    # A risk may fit it to a wider "same answer" (`settled_within`, e.g. a mean deviation's).
    wider = consistency.consistent(accumulated, _REGRESSION, within=0.5)
    assert wider.mean() > consistency.consistent(accumulated, _REGRESSION).mean()
    grid = exits.Dact().certified_grid(
        n, fit_trace={"accumulated": accumulated, "budgets": budgets, "settled_within": 0.5},
        context=_REGRESSION)
    np.testing.assert_allclose(
        grid[3][2].consistency_weights,
        consistency.fit(accumulated, budgets, context=_REGRESSION, within=0.5))
    assert not np.allclose(grid[3][2].consistency_weights, weights)
