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

Heads of little use get no weight. Trained with a ponder cost, DACT halts
cheaply by keeping the first halting value small, which leaves most of every
answer on block 1's head (on CoLA about 73 % of the exit answer, from a head
whose MCC is 0). Where the first heads score less than half of the best
head's gain over a constant answer on the held-out rows, the calibration
makes those blocks pass their whole budget on (`h_n = 1`,
`DactHeads.pass_budget_through`): their heads drop out of every answer and
the rows stop from the first useful block on (`pass_through` in the result).
"""

import numpy as np

from dact_tf.evaluation import analysis
from dact_tf.layers.dact_heads import PASS_THROUGH_BIAS

_MAX_SHIFT = 30.0
# How close to the target the bisection stops (mean blocks).
DEFAULT_TOLERANCE = 0.02
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


def _first_metric(metric_task, labels, predictions):
    """`(name, value)` of the task's first metric."""
    return next(iter(analysis.task_metrics(metric_task, labels, predictions).items()))


def useless_leading_blocks(model, answers, labels, metric_task, fraction=0.5):
    """How many leading heads score below `fraction` of the best head's gain.

    A head's gain is its metric on `labels` minus that of a constant answer
    (the most frequent label; 0 for a regressor). Counts heads from block 1
    while their gain is below `fraction` times the best head's.

    Args:
        model: the `DactClassifier`.
        answers: float `[N, rows, outputs]`, the heads' `y_n`.
        labels: `[rows]`.
        metric_task: as for `analysis.task_metrics`.
        fraction: float in `[0, 1]`.

    Returns:
        int in `[0, N - 1]`.
    """

    def score(predictions):
        value = _first_metric(metric_task, labels, predictions)[1]
        return 0.0 if np.isnan(value) else float(value)

    scores = [score(analysis.predictions(model, answers[i])) for i in range(answers.shape[0])]
    if model.task == "regression":
        base = 0.0
    else:
        values, counts = np.unique(labels, return_counts=True)
        base = score(np.full(len(labels), values[np.argmax(counts)], dtype=np.asarray(labels).dtype))
    best = max(scores)
    count = 0
    for value in scores[:-1]:
        if best <= base or value - base >= fraction * (best - base):
            break
        count += 1
    return count


def trace_trained_halting(model, dataset, verbose=0):
    """`analysis.trace_dataset` with no block passed through: the trained halting values."""
    heads = model.encoder.heads
    passed_before = heads.passed_blocks
    heads.pass_budget_through(0)
    try:
        return analysis.trace_dataset(model, dataset, verbose=verbose)
    finally:
        heads.pass_budget_through(passed_before)


def calibrate_halting_bias(model, dataset, target_blocks, tolerance=DEFAULT_TOLERANCE, apply=True,
                           max_metric_drop=DEFAULT_MAX_METRIC_DROP, metric_task=None,
                           pass_through="auto", verbose=0):
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
        pass_through: how many leading blocks pass their whole budget on
            (`DactHeads.pass_budget_through`): an int in `[0, N - 1]`, or
            `"auto"` (with labels, `useless_leading_blocks`, at most
            `target_blocks - 1`; without labels, 0). Rows run at least
            `pass_through + 1` blocks: a lower target is not reached
            (`limited`). Where no shift keeps the metric within the bound
            with it, fewer blocks are passed through, down to none (or the
            model's own pass-through) (`pass_through_dropped`; `limited`
            when it was asked for by number). The halting values are traced without any
            pass-through; the bound's reference is the model as it is.
        verbose: 0 or 1: progress counters of the trace on stderr.

    Returns:
        A dict: `shift` (added to every halting bias), `pass_through`,
        `pass_through_dropped`,
        `mean_layers_executed` (on `dataset`, after the shift), `before`
        (the mean before), `target_blocks`, `limited` (whether the metric
        bound stopped the shift short of the target) and, with labels,
        `metric_name`, `metric_before`, `metric` (after) and
        `max_metric_drop`.

    Example:
    ```python
    result = calibrate_halting_bias(model, holdout, target_blocks=3.0)
    result["mean_layers_executed"]  # about 3.0, unless result["limited"]
    ```
    """
    n = model.num_layers
    model.exit_criterion.check_target_blocks(target_blocks, n)
    if max_metric_drop is not None and not float(max_metric_drop) >= 0:
        raise ValueError(f"`max_metric_drop` must be >= 0 or None, got {max_metric_drop}.")
    heads = model.encoder.heads
    most = 0 if heads.shared else n - 1
    if pass_through != "auto" and (isinstance(pass_through, bool) or not (
            isinstance(pass_through, (int, np.integer)) and 0 <= pass_through <= most)):
        raise ValueError(
            f"`pass_through` must be 'auto' or an int in [0, {most}] (shared heads: 0), "
            f"got {pass_through!r}.")
    passed_before = heads.passed_blocks
    trace, labels = trace_trained_halting(model, dataset, verbose)
    search = _ShiftSearch(model, trace, labels, metric_task or model.task, target_blocks,
                          tolerance, max_metric_drop)
    asked_auto = pass_through == "auto"
    if asked_auto:
        # At most target - 1 blocks: the target stays within reach.
        reach = min(most, int(np.floor(float(target_blocks))) - 1)
        pass_through = 0 if labels is None or reach <= 0 else min(
            reach, useless_leading_blocks(model, search.answers, labels, search.metric_task))
    requested = int(pass_through)
    # The model as it is (its shift and pass-through) is the reference.
    before = search.mean_blocks(0.0, passed_before)
    search.reference = search.metric(0.0, passed_before) if search.bounded else None
    # Where no shift keeps the metric within the bound with that many blocks
    # passed through, fewer are tried; the model's own pass-through at shift
    # 0 is the reference, always within the bound.
    for candidate in dict.fromkeys([*range(requested, -1, -1), passed_before]):
        solved = search.solve(candidate)
        if solved is not None:
            pass_through = candidate
            break
    dropped = pass_through != requested
    shift, blocks, value, limited = solved
    result = {"target_blocks": float(target_blocks), "before": before,
              "limited": limited or (dropped and not asked_auto),
              "pass_through": int(pass_through), "pass_through_dropped": bool(dropped)}
    if search.bounded:
        result.update(metric_name=search.reference[1],
                      metric_before=float(search.reference[2]),
                      metric=float(value), max_metric_drop=float(max_metric_drop))
    if apply:
        heads.pass_budget_through(0)
        if shift:
            heads.shift_halting_bias(shift)
        heads.pass_budget_through(pass_through)
        model.predict_function = model.test_function = None
    result.update(shift=float(shift), mean_layers_executed=blocks)
    return result


class _ShiftSearch:
    """`calibrate_halting_bias`'s search over shifts of the halting logits, on a trace."""

    def __init__(self, model, trace, labels, metric_task, target_blocks, tolerance,
                 max_metric_drop):
        self.model, self.labels, self.metric_task = model, labels, metric_task
        self.target, self.tolerance = float(target_blocks), tolerance
        self.max_metric_drop = max_metric_drop
        self.bounded = labels is not None and max_metric_drop is not None
        self.answers = trace["answers"]
        halting = np.clip(trace["halting"].astype(np.float64), 1e-12, 1 - 1e-12)
        self.logits = np.log(halting) - np.log1p(-halting)
        self.reference = None  # `metric` of the model as it is

    def shifts(self, shift, passed):
        n = self.model.num_layers
        return shift + np.where(np.arange(n) < passed, PASS_THROUGH_BIAS, 0.0)

    def mean_blocks(self, shift, passed):
        return float(exit_layers_for_shift(self.model, self.answers, self.logits,
                                           self.shifts(shift, passed)).mean())

    def metric(self, shift, passed):
        """`(mean blocks, metric name, metric value)` with the biases moved by `shift`."""
        trace = {"answers": self.answers, "halting_logits": self.logits}
        exits, outputs = analysis.replay_exits(self.model, trace, self.shifts(shift, passed))
        return (float(exits.mean()),) + _first_metric(
            self.metric_task, self.labels, analysis.predictions(self.model, outputs))

    def bisect(self, passed):
        """`(shift, blocks)` closest to the target (mean blocks grows with the shift)."""
        lo, hi = -_MAX_SHIFT, _MAX_SHIFT
        start = self.mean_blocks(0.0, passed)
        best = (abs(start - self.target), 0.0, start)
        for _ in range(40):
            mid = (lo + hi) / 2.0
            blocks = self.mean_blocks(mid, passed)
            best = min(best, (abs(blocks - self.target), mid, blocks))
            if abs(blocks - self.target) <= self.tolerance:
                break
            if blocks < self.target:
                lo = mid
            else:
                hi = mid
        return best[1], best[2]

    def solve(self, passed):
        """`(shift, blocks, metric or None, limited)` with `passed` blocks passed through,
        or None where no shift keeps the metric within the bound."""
        shift, blocks = self.bisect(passed)
        # Rows run at least passed + 1 blocks: a lower target is out of reach.
        short = passed + 1 > self.target + self.tolerance
        if not self.bounded:
            return shift, blocks, None, short
        floor = self.reference[2] - float(self.max_metric_drop)
        value = self.metric(shift, passed)[2]
        if value >= floor or np.isnan(self.reference[2]):
            return shift, blocks, value, short
        # Not monotone in general: scan the shifts from the target's (which
        # fails) to the trained model's, keep the closest to the target that
        # passes (on a tie, the smaller shift).
        passing = []
        for candidate in np.linspace(shift, 0.0, _SCAN_POINTS)[1:]:
            candidate_blocks, _, candidate_value = self.metric(candidate, passed)
            if candidate_value >= floor:
                passing.append((abs(candidate_blocks - self.target), abs(candidate),
                                float(candidate), candidate_blocks, candidate_value))
        if not passing:
            return None
        _, _, shift, blocks, value = min(passing)
        return shift, blocks, value, True
