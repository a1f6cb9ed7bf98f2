"""PABEE (Zhou et al., NeurIPS 2020): stop once the prediction has held for `patience` blocks."""

import tensorflow as tf

from dact_tf import config
from dact_tf.exits import base
from dact_tf.ops import exit_ops


@base.register
class Pabee(base.ExitCriterion):
    """Patience-based early exit.

    The answer after block n is the block's own `y_n`; the state is the
    previous prediction (a class id as a float, or a score; before block 1
    nothing agrees with it) and how many consecutive blocks agreed. A row
    stops once that count reaches `patience` (for regression, scores closer
    than the model's `regression_tolerance` count as the same prediction).
    No guarantee of the full-depth prediction.

    Trained with the index-weighted mean of every block's loss,
    `sum_n n * L_n / sum_n n`.

    Args:
        patience: int >= 1.

    Example:
    >>> Pabee(patience=3)
    Pabee(patience=3)
    """

    name = "pabee"
    display_name = "PABEE"
    settings = ("patience",)
    state_fields = ("previous", "count")  # the last prediction, how long it held
    DEFAULT_PATIENCE = config.ModelConfig.patience

    def __init__(self, patience=DEFAULT_PATIENCE):
        self._set("patience", patience)

    def _set(self, key, value):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"`patience` must be an integer >= 1, got {value}.")
        self.patience = int(value)

    def initial_state(self, batch_size, context):
        # Before block 1 no prediction agrees with the previous one.
        previous, count = super().initial_state(batch_size, context)
        return previous + (float("inf") if context.task == "regression" else -1.0), count

    def step(self, y, h, answer, state, remaining, context):
        del h, answer, remaining
        prediction, count = exit_ops.pabee_update(
            y, *state, task=context.task, tolerance=context.tolerance)
        return y, (prediction, count), exit_ops.pabee_exits(count, self.patience)

    def loss(self, parts):
        n = parts.num_layers
        if n == 1:
            return parts.main
        per_block = parts.block_losses()
        # sum_n n * L_n / sum_n n; `main` is L_N.
        weights = tf.range(1, n, dtype=tf.float32)
        weighted = tf.reduce_sum(weights * per_block[:-1]) + n * parts.main
        return weighted / (n * (n + 1) / 2.0)

    def certified_grid(self, num_layers, fit_trace=None, context=None):
        del fit_trace, context
        # Patience N: no row holds its prediction for N blocks before the last.
        return [("patience", p, Pabee(p)) for p in range(num_layers, 0, -1)]

    def sweep(self, num_layers):
        return [("patience", p, Pabee(p), 0.0) for p in range(1, num_layers + 1)]
