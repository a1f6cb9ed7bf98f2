"""DACT (Eyzaguirre et al., arXiv:2109.11745): the accumulated answer and its guaranteed halt."""

import numpy as np
import tensorflow as tf

from dact_tf import config
from dact_tf import ops
from dact_tf.callbacks import tau_scheduler
from dact_tf.exits import base
from dact_tf.exits import consistency


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
            `halting_slack`, or, with `consistency_weights`, the tight test
            or a learned consistency score of at least `halting_threshold`:
            a setting whose disagreement rate with full depth a certificate
            bounds, `dact_tf.calibration.certify.certify_halting`),
            `"relaxed"` (faster, no guarantee) or `"never"`.
        halting_margin: float in [0, 1], the guaranteed rules' rounding
            margin.
        halting_epsilon: float in [0, 1], `"relaxed"`: also stop once the
            budget `p_n` is below it.
        halting_slack: float in [0, 1], `"relaxed"` and `"certified"`:
            slack of the test.
        consistency_weights: `"certified"`: the weights of a learned score
            of "this answer is the full-depth one"
            (`dact_tf.exits.consistency`, fitted by `certified_grid` on rows
            the certificate does not use), or None.
        halting_threshold: float in [0, 1], `"certified"` with
            `consistency_weights`: a row also stops once the score reaches it.

    Example:
    >>> Dact(halting_rule="paper")
    Dact(halting_rule='paper', halting_margin=1e-05, halting_epsilon=0.0, halting_slack=0.0, consistency_weights=None, halting_threshold=1.0)
    """

    name = "dact"
    display_name = "DACT"
    settings = ("halting_rule", "halting_margin", "halting_epsilon", "halting_slack",
                "consistency_weights", "halting_threshold")
    state_fields = ("budget", "ponder")
    trains_halting_units = True
    certifies_drop = True
    #: The halting-bias shifts `sweep` replays (logits).
    SHIFTS = tuple(float(s) for s in np.round(np.arange(-12.0, 12.01, 0.5), 2))
    #: The slacks a halting certificate tests, safest (the tight rule) first.
    CERTIFIED_SLACKS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25,
                        0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

    def __init__(self, halting_rule=config.ModelConfig.halting_rule, halting_margin=1e-5,
                 halting_epsilon=0.0, halting_slack=0.0, consistency_weights=None,
                 halting_threshold=1.0):
        for key, value in (("halting_rule", halting_rule), ("halting_margin", halting_margin),
                           ("halting_epsilon", halting_epsilon), ("halting_slack", halting_slack),
                           ("consistency_weights", consistency_weights),
                           ("halting_threshold", halting_threshold)):
            self._set(key, value)

    def _set(self, key, value):
        if key == "halting_rule":
            if value not in ops.HALTING_RULES:
                raise ValueError(
                    f"`halting_rule` must be one of {ops.HALTING_RULES}, got {value!r}.")
        elif key == "consistency_weights":
            value = consistency.check_weights(value)
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
        previous = answer
        answer, budget = ops.accumulate(answer, budget, y, h)
        return answer, (budget, ponder + budget), self.halts(answer, budget, remaining, context,
                                                             previous=previous)

    def halts(self, answer, budget, remaining, context, previous=None):
        """The halting rule on `a_n` and `p_n`, `[batch]` bool.

        `previous` is `a_{n-1}` (zeros before block 1), which the learned
        consistency score reads; None: only the rule's test.
        """
        halt = ops.should_halt(
            answer, budget, remaining, task=context.task, rule=self.halting_rule,
            margin=self.halting_margin, epsilon=self.halting_epsilon, slack=self.halting_slack,
            tolerance=context.tolerance, output_range=context.output_range or (0.0, 1.0),
        )
        if (self.halting_rule == "certified" and self.consistency_weights is not None
                and previous is not None):
            learned = consistency.score(self.consistency_weights, previous, answer, budget,
                                        remaining, context) >= self.halting_threshold
            halt = tf.logical_or(halt, learned)
        return halt

    def proven(self, answer, state, remaining, context, stops):
        if self.halting_rule not in ("relaxed", "certified"):
            return stops  # the guaranteed rules (and "never")
        proof = ops.should_halt(
            answer, state[0], remaining, task=context.task, rule="tight",
            margin=self.halting_margin, tolerance=context.tolerance,
            output_range=context.output_range or (0.0, 1.0))
        return tf.logical_and(stops, proof)

    def certified_grid(self, num_layers, fit_trace=None, context=None):
        """The tight test loosened by a slack; with `fit_trace`, a learned score's thresholds.

        With `fit_trace` (a trace of rows the certificate does not use), the
        consistency score (`dact_tf.exits.consistency`) is fitted on it and
        the grid is the tight rule, then the score's thresholds from the
        fitted rows' own scores, highest first; otherwise the slacks
        `CERTIFIED_SLACKS`. A regression trace may hold `"settled_within"`:
        the distance from the full-depth score that the score learns to call
        the same answer (default: the tolerance).
        """
        del num_layers
        if fit_trace is None:
            return [("halting_slack", s, Dact("certified", self.halting_margin, 0.0, s))
                    for s in self.CERTIFIED_SLACKS]
        accumulated, budgets = fit_trace["accumulated"], fit_trace["budgets"]
        weights = consistency.fit(accumulated, budgets, context=context,
                                  within=fit_trace.get("settled_within"))
        thresholds = consistency.threshold_grid(
            consistency.trace_scores(weights, accumulated, budgets, context))
        return [("halting_threshold", t, self.certified_form(weights, t))
                for t in [1.0] + thresholds]

    def certified_form(self, weights, threshold):
        """The certified rule with a learned score's `weights` at `threshold` (None, 1.0:
        the tight test alone), this rule's margin kept."""
        return Dact("certified", self.halting_margin, 0.0, 0.0, weights, threshold)

    def ponder_cost(self, state, answer):
        del answer
        return state[1]

    def loss(self, parts):
        loss = parts.main + parts.head_loss_weight * tf.reduce_mean(parts.block_losses())
        if parts.distill_weight and parts.block_accumulated is not None:
            distill = ops.distillation_loss(
                parts.block_answers, parts.block_accumulated, task=parts.context.task,
                output_range=parts.context.output_range, teacher=parts.teacher)
            loss = loss + parts.distill_weight * distill / float(parts.replicas)
        return loss

    def sweep(self, num_layers):
        del num_layers
        return [("halting_bias_shift", s, self, s) for s in self.SHIFTS]

    def training_callbacks(self, model_config, target_blocks, steps_per_epoch, total_steps,
                           selection):
        """DACT's tau schedule (the weight of the ponder cost).

        tau grows from 0 while the heads learn to answer: with untrained
        heads the ponder cost alone would drive every example to halt at
        block 1. With a compute target, tau is then steered towards it.
        """
        warmup = int(round(model_config.tau_warmup_epochs * steps_per_epoch))
        if target_blocks is None:
            return [tau_scheduler.TauScheduler(
                tau_scheduler.LinearTauWarmup(model_config.tau, warmup))]
        control = config.TAU_CONTROL  # why these constants: `config.TauControl`
        interval = max(1, (total_steps - warmup) // control.measurements)
        return [tau_scheduler.TargetBlocksTau(
            target_blocks, model_config.tau, warmup, data=selection.take(2),
            interval=interval, gain=control.gain,
            tau_range=(model_config.tau * control.low, model_config.tau * control.high))]

    def recipe_settings(self, model_config, task="classification"):
        # The halting units read the answer's confidence in classification only.
        return {"distill_weight": model_config.distill_weight,
                "halting_confidence": (0.0 if task == "regression"
                                       else model_config.halting_confidence)}

    def check_distill_weight(self, weight):
        del weight  # DACT distills its accumulated answers

    def uses_full_depth_stage(self, model_config):
        return bool(model_config.full_depth_stage and not model_config.init_from)

    def calibrates_to_target(self, model_config):
        return model_config.target_blocks != 0

    def check_target_blocks(self, target_blocks, num_layers):
        if not 1.0 <= float(target_blocks) <= num_layers:
            raise ValueError(f"`target_blocks` must be in [1, {num_layers}], got {target_blocks}.")

    def answers_in(self, trace):
        return trace["accumulated"]

    def reported_ponder_cost(self, trace):
        return trace["ponder_cost"]

    def ponder_loss(self, trace, ponder, context):
        """The paper's `sum_n p_n` (`"budget"`) or the smooth count of the
        blocks the halting rule runs (`"blocks"`, `ops.expected_blocks`)."""
        if ponder == "blocks":
            return ops.expected_blocks(
                trace["accumulated"], trace["budgets"], task=context.task,
                output_range=context.output_range, tolerance=context.tolerance)
        return trace["ponder_cost"]

    def training_outputs(self, trace):
        return {"block_accumulated": trace["accumulated"]}

    def replay_halting(self, trace, shift):
        logits = trace.get("halting_logits")
        if logits is None:
            halting = np.clip(trace["halting"].astype(np.float64), 1e-12, 1 - 1e-12)
            logits = np.log(halting) - np.log1p(-halting)
        logits = logits + np.reshape(np.asarray(shift, np.float64), (-1, 1))
        return tf.sigmoid(tf.constant(logits, tf.float32))

    def per_block_columns(self, trace, index, score):
        return {"accumulated": score(trace["accumulated"][index]),
                "mean_halting": float(trace["halting"][index].mean()),
                "mean_budget": float(trace["budgets"][index].mean())}

    def proven_form(self):
        if self.halting_rule in ("relaxed", "certified"):
            return Dact("tight", self.halting_margin)
        return self.copy()

    def summary(self):
        if self.halting_rule == "certified" and self.consistency_weights is not None:
            return {"halting_rule": self.halting_rule,
                    "halting_threshold": self.halting_threshold}
        if self.halting_rule == "certified":
            return {"halting_rule": self.halting_rule, "halting_slack": self.halting_slack}
        return {"halting_rule": self.halting_rule}

