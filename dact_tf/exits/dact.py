"""DACT (Eyzaguirre et al., arXiv:2109.11745): the accumulated answer and its guaranteed halt."""

import numpy as np
import tensorflow as tf

from dact_tf import ops
from dact_tf.exits import base


@base.register
class Dact(base.ExitCriterion):
    """DACT's exit: mix the heads' answers, stop once later blocks cannot matter.

    After block n the answer is the accumulated `a_n`
    (`dact_tf.ops.accumulate`), the state is the remaining budget `p_n` and
    the ponder cost so far, and a row stops when the halting rule proves
    that the remaining blocks cannot change its prediction
    (`dact_tf.ops.should_halt`).

    Training adds, to the loss on `a_N` (and the ponder cost the encoder
    adds with `tau`), `head_loss_weight` times the mean loss of every
    block's own answer and `distill_weight` times the self-distillation
    loss (`dact_tf.ops.distillation_loss`).

    Args:
        halting_rule: `"tight"` (default, guaranteed), `"paper"`
            (guaranteed, looser), `"certified"` (the tight test loosened by
            `halting_slack`, a slack whose disagreement rate with full depth
            a certificate bounds: `dact_tf.certify.certify_halting`),
            `"relaxed"` (faster, no guarantee) or `"never"`.
        halting_margin: float in [0, 1], the guaranteed rules' rounding
            margin.
        halting_epsilon: float in [0, 1], `"relaxed"`: also stop once the
            budget `p_n` is below it.
        halting_slack: float in [0, 1], `"relaxed"` and `"certified"`:
            slack of the test.

    Example:
    >>> Dact(halting_rule="paper")
    Dact(halting_rule='paper', halting_margin=1e-05, halting_epsilon=0.0, halting_slack=0.0)
    """

    name = "dact"
    display_name = "DACT"
    settings = ("halting_rule", "halting_margin", "halting_epsilon", "halting_slack")
    accumulates = True
    #: The halting-bias shifts `sweep` replays (logits).
    SHIFTS = tuple(float(s) for s in np.round(np.arange(-12.0, 12.01, 0.5), 2))
    #: The slacks a halting certificate tests, safest (the tight rule) first.
    CERTIFIED_SLACKS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25,
                        0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

    def __init__(self, halting_rule="tight", halting_margin=1e-5, halting_epsilon=0.0,
                 halting_slack=0.0):
        for key, value in (("halting_rule", halting_rule), ("halting_margin", halting_margin),
                           ("halting_epsilon", halting_epsilon), ("halting_slack", halting_slack)):
            self._set(key, value)

    def _set(self, key, value):
        if key == "halting_rule":
            if value not in ops.HALTING_RULES:
                raise ValueError(
                    f"`halting_rule` must be one of {ops.HALTING_RULES}, got {value!r}.")
        else:
            value = float(value)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{key}` must be in [0.0, 1.0], got {value}.")
        setattr(self, key, value)

    def initial_state(self, batch_size, context):
        budget, ponder = super().initial_state(batch_size, context)
        return budget + 1.0, ponder

    def step(self, y, h, answer, state, remaining, context):
        budget, ponder = state
        answer, budget = ops.accumulate(answer, budget, y, h)
        return answer, (budget, ponder + budget), self.halts(answer, budget, remaining, context)

    def halts(self, answer, budget, remaining, context):
        """The halting rule on `a_n` and `p_n`, `[batch]` bool."""
        return ops.should_halt(
            answer, budget, remaining, task=context.task, rule=self.halting_rule,
            margin=self.halting_margin, epsilon=self.halting_epsilon, slack=self.halting_slack,
            tolerance=context.tolerance, output_range=context.output_range or (0.0, 1.0),
        )

    def proven(self, answer, state, remaining, context, stops):
        if self.halting_rule not in ("relaxed", "certified"):
            return stops  # the guaranteed rules (and "never")
        proof = ops.should_halt(
            answer, state[0], remaining, task=context.task, rule="tight",
            margin=self.halting_margin, tolerance=context.tolerance,
            output_range=context.output_range or (0.0, 1.0))
        return tf.logical_and(stops, proof)

    def certified_grid(self, num_layers):
        del num_layers
        return [("halting_slack", s, Dact("certified", self.halting_margin, 0.0, s))
                for s in self.CERTIFIED_SLACKS]

    def ponder_cost(self, state):
        return state[1]

    def loss(self, parts):
        loss = parts.main + parts.head_loss_weight * tf.reduce_mean(parts.block_losses())
        if parts.distill_weight and parts.block_accumulated is not None:
            distill = ops.distillation_loss(
                parts.block_answers, parts.block_accumulated, task=parts.context.task,
                output_range=parts.context.output_range)
            loss = loss + parts.distill_weight * distill / float(parts.replicas)
        return loss

    def sweep(self, num_layers):
        del num_layers
        return [("halting_bias_shift", s, self, s) for s in self.SHIFTS]

    def summary(self):
        if self.halting_rule == "certified":
            return {"halting_rule": self.halting_rule, "halting_slack": self.halting_slack}
        return {"halting_rule": self.halting_rule}

