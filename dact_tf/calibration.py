"""Compute budgets in blocks: set a trained DACT model's halting to a target.

Users think in compute ("about 3 of 6 blocks"), not in tau. After training,
`calibrate_halting_bias` shifts the bias of every halting unit by one common
amount `s`, `h_n = sigmoid(W_h z_n + b_h + s)`, chosen by bisection so that
the mean number of blocks the early exit runs on some held-out rows is the
target. A lower bias halts earlier. The shifted model is an ordinary DACT
model: its early exit still returns exactly its full-depth prediction.

The search needs one pass of the model over the rows: the heads' answers
`y_n` and halting logits do not depend on the shift, so every candidate `s`
is scored by re-running only the DACT recurrence and halting rule (the ops
of `dact_tf.ops`) on the recorded trace.

A target is a wish, not an order: with labelled rows the shift may cost at
most `max_metric_drop` of the task's metric on them (default one point).
Where the target needs more, the calibration stops where the bound does and
says so (`limited`), rather than return a model that silently answers worse.
"""

import numpy as np

from dact_tf import analysis

_MAX_SHIFT = 30.0
_SCAN_POINTS = 41
# The default bound: one point of accuracy (or of Pearson, MCC, F1).
DEFAULT_MAX_METRIC_DROP = 0.01


def exit_layers_for_shift(model, answers, halting_logits, shift):
    """The exit block of every row if the halting biases moved by `shift`.

    Args:
        model: the `DactClassifier` (its halting rule and settings).
        answers: float `[N, rows, outputs]`, the heads' `y_n`.
        halting_logits: float `[N, rows]`, the halting units' logits.
        shift: float, the common bias shift.

    Returns:
        int `[rows]`, 1-based blocks.
    """
    trace = {"answers": answers, "halting_logits": halting_logits}
    return analysis.replay_exits(model, trace, shift)[0]


def calibrate_halting_bias(model, dataset, target_blocks, tolerance=0.02, apply=True,
                           max_metric_drop=DEFAULT_MAX_METRIC_DROP, metric_task=None):
    """Shifts the halting biases so the mean blocks on `dataset` is `target_blocks`.

    With labels in `dataset`, the shift is also bounded by accuracy: the
    task's metric on `dataset` may fall at most `max_metric_drop` below the
    trained model's (shift 0). Where reaching the target would cost more,
    the shift that comes closest to it within the bound is taken and
    `limited` is true. Without this bound a target a model cannot reach
    honestly is reached anyway: a regressor calibrated to half its blocks
    can put nearly all of its answer on the first head (on STS-B the
    Pearson fell from 0.84 to 0.14).

    Args:
        model: a trained `DactClassifier` with `method="dact"`.
        dataset: batches of `(features, labels)` (or features alone: then
            no accuracy bound), e.g. rows held out of the training data.
        target_blocks: float in `[1, N]`, the mean blocks to aim at.
        tolerance: float, stop the bisection this close to the target.
        apply: bool, whether to add the shift to the model's halting biases
            (otherwise only report it).
        max_metric_drop: float >= 0, the most the metric may fall (in its
            own units: 0.01 is one point of accuracy); None: no bound.
        metric_task: the task whose first metric is bounded (a GLUE task
            name, `"classification"` or `"regression"`; see
            `dact_tf.data.task_metrics`); None: accuracy, or Pearson for a
            regressor.

    Returns:
        A dict: `shift` (added to every halting bias), `mean_layers_executed`
        (on `dataset`, after the shift), `before` (the mean before),
        `target_blocks`, `limited` (whether the metric bound stopped the
        shift short of the target) and, with labels, `metric_name`,
        `metric_before`, `metric` (after) and `max_metric_drop`.

    Example:
    ```python
    result = calibrate_halting_bias(model, holdout, target_blocks=3.0)
    result["mean_layers_executed"]  # about 3.0, unless result["limited"]
    ```
    """
    if not model.exit_criterion.accumulates:
        raise ValueError(
            f"Only DACT models have halting units to calibrate, not method={model.method!r}."
        )
    n = model.num_layers
    if not 1.0 <= float(target_blocks) <= n:
        raise ValueError(f"`target_blocks` must be in [1, {n}], got {target_blocks}.")
    if max_metric_drop is not None and not float(max_metric_drop) >= 0:
        raise ValueError(f"`max_metric_drop` must be >= 0 or None, got {max_metric_drop}.")
    trace, labels = analysis.trace_dataset(model, dataset)
    answers, halting = trace["answers"], trace["halting"]
    halting = np.clip(halting.astype(np.float64), 1e-12, 1 - 1e-12)
    logits = np.log(halting) - np.log1p(-halting)
    bounded = labels is not None and max_metric_drop is not None
    if metric_task is None:
        metric_task = model.task  # "classification" or "regression"

    def mean_blocks(shift):
        return float(exit_layers_for_shift(model, answers, logits, shift).mean())

    def metric(shift):
        """`(mean blocks, metric name, metric value)` with the biases moved by `shift`."""
        trace = {"answers": answers, "halting_logits": logits}
        exits, outputs = analysis.replay_exits(model, trace, shift)
        scores = analysis.task_metrics(metric_task, labels, analysis.predictions(model, outputs))
        return (float(exits.mean()),) + next(iter(scores.items()))

    before = mean_blocks(0.0)
    lo, hi = -_MAX_SHIFT, _MAX_SHIFT  # mean blocks grows with the shift
    best = (abs(before - target_blocks), 0.0, before)
    for _ in range(40):
        mid = (lo + hi) / 2.0
        blocks = mean_blocks(mid)
        best = min(best, (abs(blocks - target_blocks), mid, blocks))
        if abs(blocks - target_blocks) <= tolerance:
            break
        if blocks < target_blocks:
            lo = mid
        else:
            hi = mid
    _, shift, blocks = best
    result = {"target_blocks": float(target_blocks), "before": before, "limited": False}
    if bounded:
        _, name, reference = metric(0.0)
        floor = reference - float(max_metric_drop)
        value = metric(shift)[2]
        if not value >= floor and not np.isnan(reference):
            # Not monotone in general: scan the shifts strictly between the
            # target's (which fails) and the trained model's (which passes),
            # keep the closest to the target that passes (on a tie, the
            # smaller shift).
            passing = [(abs(before - target_blocks), 0.0, 0.0, before, reference)]
            for candidate in np.linspace(shift, 0.0, _SCAN_POINTS)[1:-1]:
                candidate_blocks, _, candidate_value = metric(candidate)
                if candidate_value >= floor:
                    passing.append((abs(candidate_blocks - target_blocks), abs(candidate),
                                    float(candidate), candidate_blocks, candidate_value))
            _, _, shift, blocks, value = min(passing)
            result["limited"] = True
        result.update(metric_name=name, metric_before=float(reference), metric=float(value),
                      max_metric_drop=float(max_metric_drop))
    if apply and shift:
        model.encoder.heads.shift_halting_bias(shift)
        model.predict_function = model.test_function = None
    result.update(shift=float(shift), mean_layers_executed=blocks)
    return result
