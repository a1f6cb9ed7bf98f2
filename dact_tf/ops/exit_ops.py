"""The math of the early-exit baselines' tests: PABEE, DeeBERT and static truncation.

The baselines share DACT's per-block heads, its early-exit loop and its
exports; only the per-example state carried from block to block and the
exit test differ (the criteria objects are in `dact_tf.exits`; DeeBERT:
Xin et al., ACL 2020; PABEE: Zhou et al., NeurIPS 2020):

- `"static"`: a classifier on the last of the first k blocks; never exits
  early (k is the number of blocks the model keeps).
- `"deebert"` (Xin et al., 2020): exit after block n when the entropy of
  block n's own prediction falls below a threshold; the answer is block n's.
- `"pabee"` (Zhou et al., 2020): exit when the prediction has stayed the
  same for `patience` consecutive blocks (for regression: changed by less
  than a tolerance); the answer is the current block's.

Unlike DACT's rules none of these guarantees the full-depth prediction.
"""

import tensorflow as tf

def entropy(probabilities):
    """Shannon entropy (nats) of each row of `[batch, classes]` probabilities.

    Example:
    >>> float(entropy(tf.constant([[0.5, 0.5]]))[0])  # log 2
    0.6931...
    """
    p = tf.cast(probabilities, tf.float32)
    return -tf.reduce_sum(p * tf.math.log(tf.maximum(p, 1e-12)), axis=-1)


def deebert_exits(probabilities, threshold):
    """DeeBERT's test: `entropy(probabilities) < threshold`, `[batch]` bool."""
    return entropy(probabilities) < threshold


def pabee_update(answer, previous, count, task="classification", tolerance=0.0):
    """One step of PABEE's patience counter.

    Args:
        answer: float `[batch, classes]` probabilities (classification) or
            `[batch, 1]` scores (regression), the current block's answer.
        previous: float `[batch]`, the previous block's predicted class (as a
            float; -1 before the first block) or score.
        count: float `[batch]`, how many consecutive blocks agreed so far.
        task: `"classification"` or `"regression"`.
        tolerance: regression only: scores closer than this count as the
            same prediction.

    Returns:
        `(prediction, count)`: the current prediction (class id as float,
        or score) and the updated counter (0 when the prediction changed).
    """
    if task == "regression":
        prediction = tf.cast(answer[:, 0], tf.float32)
        same = tf.abs(prediction - previous) < tolerance
    else:
        prediction = tf.cast(tf.argmax(answer, axis=-1), tf.float32)
        same = tf.equal(prediction, previous)
    count = tf.where(same, count + 1.0, tf.zeros_like(count))
    return prediction, count


def pabee_exits(count, patience):
    """PABEE's test: the prediction held for `patience` blocks, `[batch]` bool."""
    return count >= float(patience)
