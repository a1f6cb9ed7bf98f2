"""Static truncation: a classifier on the last kept block, no early exit."""

import tensorflow as tf

from dact_tf.exits import base


@base.register
class Static(base.ExitCriterion):
    """No early exit: every row runs every kept block.

    With `DactClassifier(num_layers=k)` this is static truncation to the
    first k blocks; with every block it is plain full-depth fine-tuning
    (trained on the last block's answer only).

    Example:
    >>> Static()
    Static()
    """

    name = "static"
    display_name = "static"

    def step(self, y, h, answer, state, remaining, context):
        del h, answer, remaining, context
        return y, state, tf.zeros(tf.shape(y)[:1], tf.bool)
