"""A learned consistency score: how likely a row's early answer is its full-depth answer.

A certified halting mode stops a row at the first block whose score passes a
threshold, the threshold being certified on held-out rows (see
`dact_tf.calibration.certify.certify_halting`). Any score is valid there: the
certificate bounds the disagreement whatever the score is, so a better score
only buys fewer blocks at the same bound. This module gives DACT such a
score, in the manner of the meta consistency classifier of CATs (Schuster et
al., "Consistent Accelerated Inference via Confident Adaptive Transformers",
EMNLP 2021): a logistic regression, fitted on rows kept out of the
certificate, of "the prediction after block n equals the one after the last
block" on a few features of the exit answer:

- the top probability of `a_n` and its margin over the runner-up;
- whether `a_n`'s prediction equals `a_{n-1}`'s (0 after block 1);
- DACT's remaining budget `p_n`;
- the tight halting test's own quantity `q (1 + delta) - 1` (positive where
  the guarantee already holds, `dact_tf.ops.should_halt`);
- one bias per number of blocks left.

A regression model's answer is a score in `[lo, hi]`, and "the same answer"
means within the tolerance of the full-depth score
(`ExitContext.tolerance`); its features are the score's steadiness
`1 - |a_n - a_{n-1}| / (hi - lo)`, how central it is in the range
`4 u (1 - u)` with `u = (a_n - lo) / (hi - lo)` (mid-range scores move the
most), whether it moved by at most the tolerance since the block before, the
budget `p_n` and the tight test's quantity `tolerance / (hi - lo) - (1 - q)`
(the first and third are 0 after block 1, which has no block before).

The features are computed by the same TensorFlow function in the early-exit
loop, in replays and when fitting, so a fitted score is exactly the score the
exported model computes.
"""

import numpy as np
import tensorflow as tf

from dact_tf import ops
from dact_tf.exits import base

#: The per-row features before the per-block biases.
NUM_FEATURES = 5
FEATURE_NAMES = ("top_probability", "margin", "same_as_previous", "budget", "tight_test")


def features(previous, answer, budget, remaining, context=None, num_layers=None):
    """`[batch, NUM_FEATURES]` float32 features of the answer after one block.

    Args:
        previous: `[batch, C]`, the answer after the block before (zeros
            before block 1).
        answer: `[batch, C]`, the answer after this block (`a_n`).
        budget: `[batch]`, the remaining budget `p_n`.
        remaining: int (Python or tensor), the blocks after this one.
        context: the model's `ExitContext`, or None: a classifier's.
        num_layers: int, the model's blocks (regression: tells block 1,
            which has no block before, from the others).
    """
    answer = tf.cast(answer, tf.float32)
    previous = tf.cast(previous, tf.float32)
    budget = tf.cast(budget, tf.float32)
    if context is not None and context.task == "regression":
        return _regression_features(previous, answer, budget, remaining, context, num_layers)
    top2 = tf.math.top_k(answer, k=2).values
    first, second = top2[:, 0], top2[:, 1]
    same = tf.logical_and(
        tf.equal(tf.argmax(answer, axis=-1), tf.argmax(previous, axis=-1)),
        tf.reduce_max(previous, axis=-1) > 0.0)
    q = ops.remaining_weight_bound(budget, remaining)
    return tf.stack([first, first - second, tf.cast(same, tf.float32), budget,
                     q * (1.0 + first - second) - 1.0], axis=-1)


def _regression_features(previous, answer, budget, remaining, context, num_layers):
    """`features` of a score `a_n` (`[batch, 1]`) in `context.output_range`."""
    if num_layers is None:
        raise ValueError("A regression consistency score needs `num_layers`.")
    lo, hi = (float(v) for v in context.output_range)
    width = hi - lo
    answer, previous = answer[:, 0], previous[:, 0]
    has_previous = tf.cast(tf.cast(remaining, tf.int32) < num_layers - 1, tf.float32)
    change = tf.abs(answer - previous)
    position = tf.clip_by_value((answer - lo) / width, 0.0, 1.0)
    q = ops.remaining_weight_bound(budget, remaining)
    return tf.stack([
        has_previous * (1.0 - tf.minimum(change / width, 1.0)),
        4.0 * position * (1.0 - position),
        has_previous * tf.cast(change <= context.tolerance, tf.float32),
        budget,
        context.tolerance / width - (1.0 - q),
    ], axis=-1)


def check_weights(weights):
    """The weights as a tuple of floats, or None; refuses a malformed list with one line."""
    if weights is None:
        return None
    try:
        values = tuple(float(w) for w in weights)
    except (TypeError, ValueError):
        raise ValueError("`consistency_weights` must be a list of numbers (or None), got "
                         f"{weights!r}.") from None
    if len(values) < NUM_FEATURES + 1 or not all(np.isfinite(values)):
        raise ValueError(f"`consistency_weights` must hold {NUM_FEATURES} feature weights and "
                         f"one bias per block, all finite; got {len(values)} values.")
    return values


def score(weights, previous, answer, budget, remaining, context=None):
    """`[batch]` float32: the fitted probability that this answer is the full-depth one
    (`context`: as for `features`; the weights hold one bias per block)."""
    num_layers = len(weights) - NUM_FEATURES
    w = tf.constant(weights[:NUM_FEATURES], tf.float32)
    biases = tf.constant(weights[NUM_FEATURES:], tf.float32)
    index = tf.clip_by_value(tf.cast(remaining, tf.int32), 0, num_layers - 1)
    logit = tf.linalg.matvec(
        features(previous, answer, budget, remaining, context, num_layers), w)
    return tf.sigmoid(logit + tf.gather(biases, index))


def _per_block(fn, accumulated, budgets):
    """`fn(previous, answer, budget, remaining)` on every block of a trace, stacked (NumPy)."""
    n = accumulated.shape[0]
    previous = np.concatenate([np.zeros_like(accumulated[:1]), accumulated[:-1]])
    return np.stack([fn(previous[i], accumulated[i], budgets[i], n - 1 - i).numpy()
                     for i in range(n)])


def trace_features(accumulated, budgets, context=None):
    """`[N, rows, NUM_FEATURES]` NumPy features of every block of a trace."""
    n = accumulated.shape[0]
    return _per_block(lambda *args: features(*args, context, n), accumulated, budgets)


def trace_scores(weights, accumulated, budgets, context=None):
    """`[N, rows]` the score of every block of a trace (as the loop computes it)."""
    return _per_block(lambda *args: score(weights, *args, context), accumulated, budgets)


def consistent(accumulated, context=None, within=None):
    """bool `[N, rows]`: whether each block's answer is the last block's (regression:
    within `within` of it, default `context.tolerance`)."""
    if context is not None and context.task == "regression":
        within = context.tolerance if within is None else float(within)
        return np.abs(accumulated[..., 0] - accumulated[-1:, :, 0]) <= within
    preds = accumulated.argmax(-1)
    return preds == preds[-1:]


def fit(accumulated, budgets, l2=1e-2, steps=50, context=None, within=None):
    """Fits the weights on a trace: logistic regression of `consistent(accumulated)`.

    Args:
        accumulated: float `[N, rows, C]`, the answers after each block.
        budgets: float `[N, rows]`, `p_n`.
        l2: the ridge penalty (the features are nearly collinear in binary
            tasks).
        steps: Newton steps.
        context: the model's `ExitContext`, or None: a classifier's.
        within: regression, the distance from the last score that counts as
            the same answer (`consistent`), or None: the tolerance.

    Returns:
        A tuple of `NUM_FEATURES + N` floats: the feature weights, then one
        bias per number of blocks left (0, 1, ..., N-1).
    """
    n, rows = accumulated.shape[:2]
    if n < 2 or rows < 1:
        raise ValueError("Fitting a consistency score needs at least 2 blocks and 1 row.")
    x = trace_features(accumulated, budgets, context)[:-1].astype(np.float64)  # the last stops
    y = consistent(accumulated, context, within)[:-1].astype(np.float64).reshape(-1)
    onehot = np.zeros((n - 1, rows, n))
    for i in range(n - 1):
        onehot[i, :, n - 1 - i] = 1.0  # indexed by blocks left
    x = np.concatenate([x, onehot], axis=-1).reshape(-1, NUM_FEATURES + n)
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30.0, 30.0)))
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return tuple(float(v) for v in w)


def threshold_grid(scores, size=200):
    """Thresholds from the fit rows' scores, highest (safest) first, inside (0, 1).

    The grid is fixed by rows the certificate never sees, as fixed-sequence
    testing requires. `scores` is `[N, rows]`; the last block is left out
    (it always stops).
    """
    grid = base.quantile_grid(np.asarray(scores)[:-1], size=size, descending=True)
    return [t for t in grid if 0.0 < t < 1.0]
