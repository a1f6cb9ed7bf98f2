"""DeeBERT (Xin et al., ACL 2020): stop once a block's prediction is confident (low entropy)."""

import tensorflow as tf

from dact_tf import config
from dact_tf.exits import base
from dact_tf.ops import exit_ops


@base.register
class DeeBert(base.ExitCriterion):
    """Entropy-based early exit, trained in two stages.

    The answer after block n is the block's own `y_n`; a row stops once
    the entropy of `y_n` (nats) is below `entropy_threshold`.
    Classification only, with one head per block. No guarantee of the
    full-depth prediction.

    Training: stage 1 trains the whole model on the last block's answer;
    stage 2 (`start_stage`) freezes the backbone and trains the other
    blocks' heads on the mean of their losses.

    Args:
        entropy_threshold: float >= 0 (nats).

    Example:
    >>> DeeBert(entropy_threshold=0.2)
    DeeBert(entropy_threshold=0.2)
    """

    name = "deebert"
    display_name = "DeeBERT"
    settings = ("entropy_threshold",)
    training_stages = 2
    DEFAULT_ENTROPY_THRESHOLD = config.ModelConfig.entropy_threshold
    #: The thresholds `sweep` replays (nats).
    THRESHOLDS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)

    def __init__(self, entropy_threshold=DEFAULT_ENTROPY_THRESHOLD):
        self._set("entropy_threshold", entropy_threshold)

    def _set(self, key, value):
        value = float(value)
        if not value >= 0.0:
            raise ValueError(f"`entropy_threshold` must be >= 0.0, got {value}.")
        self.entropy_threshold = value

    def check(self, task, shared_heads):
        if task == "regression":
            raise ValueError(
                "`method='deebert'` exits on the entropy of a class distribution: "
                "classification only (use 'pabee' or 'dact' for regression).")
        if shared_heads:
            raise ValueError(
                "`method='deebert'` trains the intermediate heads after freezing "
                "the last one: it needs per-block heads (`shared_heads=False`).")

    def step(self, y, h, answer, state, remaining, context):
        del h, answer, remaining, context
        return y, state, exit_ops.deebert_exits(y, self.entropy_threshold)

    def loss(self, parts):
        if parts.stage == 1 or parts.num_layers == 1:
            return parts.main  # stage 1: the last block's answer
        return tf.reduce_mean(parts.block_losses()[:-1])  # stage 2: the other heads

    def start_stage(self, model, stage):
        """Stage 2: freezes `model`'s backbone; `loss` then trains the other heads.

        The last block's head gets no gradient, so with a freshly compiled
        optimizer (call `compile` again, as Keras requires after changing
        `trainable`) the final classifier stays exactly as stage 1 left it.
        """
        if stage != 2:
            raise ValueError(f"DeeBERT trains in stages 1 and 2, not {stage}.")
        model.backbone.trainable = False
        model.training_stage = 2

    def certified_grid(self, num_layers, fit_trace=None, context=None):
        """Threshold 0 (no row exits early), then `THRESHOLDS`, or with `fit_trace` the
        quantiles of the fit rows' entropies (200 steps, lowest first)."""
        del num_layers, context
        if fit_trace is None:
            thresholds = self.THRESHOLDS
        else:
            entropies = exit_ops.entropy(tf.constant(fit_trace["answers"][:-1])).numpy()
            # A row stops below the threshold: a grid point just above each quantile.
            thresholds = [t + 1e-6 for t in base.quantile_grid(entropies, descending=False)]
        return [("entropy_threshold", t, DeeBert(t)) for t in (0.0, *thresholds)]

    def sweep(self, num_layers):
        del num_layers
        return [("entropy_threshold", t, DeeBert(t), 0.0) for t in self.THRESHOLDS]
