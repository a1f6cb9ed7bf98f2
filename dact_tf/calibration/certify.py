"""Certificates: promises about unseen rows, computed on held-out rows.

DACT's exact halting needs no statistics: an early answer is proven equal to
the full-depth one. Two other promises can only be certified on data
(`dact_tf.calibration.risk_bounds` has the statistics):

- **A compute target at a bounded cost** (`certify_compute_target`). The
  halting biases are shifted so the model runs about `target_blocks`
  blocks; the cost, against the plain fine-tuned full-depth model a user
  would otherwise ship (the reference: DACT's stage 1 or the `init_from`
  model), is the accuracy drop: the rate of rows the shifted model answers
  wrongly where the reference answers rightly, less the rate of the other
  way round, bounded by `risk_bounds.difference_upper_bound` (regression:
  the mean of its absolute error less the reference's, as a share of the
  score range, bounded by betting, `risk_bounds.mean_difference_upper_bound`).
  The shifts from full depth down to the target are tested
  in that order on calibration rows (fixed-sequence testing); the model
  takes the one closest to the target whose rate is certified at most
  `max_drop` with the given confidence. Where none is, it runs at the
  safest shift and the result says so, with how many rows would be needed.
- **A certified halting mode** (`certify_halting`): each row stops at the
  first block a threshold accepts; the threshold is the most aggressive
  one, on the exit method's ordered grid (`ExitCriterion.certified_grid`:
  DACT's learned consistency score, fitted on the selection rows, or its
  slack on the tight test; DeeBERT's entropy; PABEE's patience), whose rate
  of answers that differ from the model's own full-depth answer is certified
  at most `max_disagreement`. The score only decides how few blocks the
  certified setting runs; the bound holds for any score fixed before the
  calibration rows are read. A regression model may bound instead the mean
  distance of its early score from the full-depth one, as a share of its
  score range (`MeanDeviation`; `risk_bounds.mean_upper_bound`): a row may
  move by more than the tolerance, so long as the rows move little on
  average.

Both hold on unseen rows from the distribution the calibration rows were
drawn from, with probability at least `confidence` each, provided nothing
else was chosen on those rows: `dact-tf train` keeps calibration rows apart
from the rows that pick the best epoch (`DataConfig.calibration_share`), and
the certificate records whether they were shared.
"""

import math

import numpy as np

from dact_tf.evaluation import analysis
from dact_tf.calibration import halting_bias
from dact_tf.calibration import risk_bounds
from dact_tf.calibration.risks import Disagreement, MeanDeviation, halting_risk  # noqa: F401
from dact_tf.layers.dact_heads import PASS_THROUGH_BIAS

#: The default bound of a certified halting mode: 1 % of rows differ from full depth.
DEFAULT_MAX_DISAGREEMENT = 0.01
#: The shift a compute-target certificate starts from (halting values near
#: 1: every row runs every block), and its step (logits).
_SAFE_SHIFT = 12.0
_SHIFT_STEP = 0.25


#: What a certificate's `calibration_rows` says of rows no other choice saw, and of the
#: selection rows themselves (a calibration file: its name and digest, `calibration_run`).
KEPT_APART = "kept apart"
SHARED = "shared with the selection rows"


def _predictions(model, answers):
    return analysis.predictions(model, answers)


differs = analysis.differs


def full_depth_predictions(model, trace):
    """The model's own full-depth predictions from a `analysis.trace_dataset` trace."""
    return _predictions(model, model.exit_criterion.answers_in(trace)[-1])


def make_certificate(kind, risk, epsilon, delta, n, at_risk, bounds, passed, grid, shared,
                     **extra):
    """The JSON-able record of one certificate (`passed`: how many of `grid`'s settings
    passed, in order; `at_risk`, `bounds`: one per setting tested)."""
    index = max(passed - 1, 0)
    rate = (at_risk[index] - extra.get("better", 0)) / n
    certified = passed > 0
    return {
        "kind": kind,
        "risk": risk,
        "epsilon": float(epsilon),
        "confidence": 1.0 - delta,
        "rows": int(n),
        "at_risk": int(at_risk[index]),
        "observed_rate": float(rate),
        "bound": float(bounds[index]) if bounds else None,
        "certified": bool(certified),
        "tested": len(bounds),
        "grid_size": len(grid),
        "calibration_rows": SHARED if shared else KEPT_APART,
        **extra,
    }


def certify_halting(model, dataset, max_disagreement=DEFAULT_MAX_DISAGREEMENT,
                    confidence=risk_bounds.DEFAULT_CONFIDENCE, apply=True, shared=False,
                    verbose=0, fit_dataset=None):
    """Sets the most aggressive exit threshold whose disagreement with full depth is certified.

    Runs every block once on `dataset` (`analysis.trace_dataset`), then
    replays the exit method's `certified_grid`, safest first, counting the
    rows whose early answer differs from the model's own full-depth answer
    (regression: by more than its tolerance). Fixed-sequence testing keeps
    every setting whose one-sided Clopper-Pearson bound is at most
    `max_disagreement`; the last one (the fewest blocks) is taken. Where not
    even the first can be certified (too few rows), the model keeps an exact
    setting (DACT: the tight rule; DeeBERT, PABEE: full depth) and
    `certified` is false. With `MeanDeviation` (regression) the mean
    distance of the early score from the full-depth one is bounded instead.

    Args:
        model: a trained `DactClassifier` (DACT, PABEE or DeeBERT).
        dataset: batches of features (or `(features, labels)`: labels are
            not read), rows nothing else was chosen on.
        max_disagreement: float in (0, 1), the bound on
            P(early answer != full-depth answer); or a risk
            (`Disagreement(eps)`, `MeanDeviation(eps)`; see `halting_risk`).
        confidence: float in (0, 1), e.g. 0.95.
        apply: bool, configure the model's exit with the chosen setting.
        shared: bool, whether the rows were also used for another choice
            (recorded in the certificate).
        verbose: 0 or 1 (a progress counter).
        fit_dataset: batches of rows other than `dataset` (e.g. the
            selection rows) on which the method may fit its grid (DACT: a
            learned consistency score, `dact_tf.exits.consistency`; DeeBERT:
            its entropies' quantiles), or None (DACT: the slacks of the tight
            test). The certificate's `fit_rows` counts them (0: none).

    Returns:
        A dict: `method`, `knob`, `value` (the chosen setting),
        `mean_layers_executed` (on the rows), `full_depth_disagreement` (the
        rate seen), `mean_deviation` (regression: the mean distance from
        the full-depth score, in the score's units) and `certificate` (see
        the module docstring; `rows_needed`: about how many rows would
        certify the bound at the most aggressive setting's rate).

    Example:
    ```python
    result = certify_halting(model, calibration_rows, max_disagreement=0.01)
    result["certificate"]["certified"], result["mean_layers_executed"]
    ```
    """
    delta = risk_bounds.delta_from_confidence(confidence)
    risk = halting_risk(max_disagreement)
    risk.check(model)
    fit_trace, fit_rows = None, 0
    if fit_dataset is not None:
        fit_trace, _ = analysis.trace_dataset(model, fit_dataset, verbose=verbose)
        fit_rows = len(fit_trace["exit_layers"])
        if model.task == "regression":
            fit_trace["settled_within"] = risk.settled_within(model)
    grid = model.exit_criterion.certified_grid(model.num_layers, fit_trace=fit_trace,
                                               context=model.encoder.exit_context)
    if not grid:
        raise ValueError(f"method={model.method!r} has no exit threshold to certify.")
    trace, _ = analysis.trace_dataset(model, dataset, verbose=verbose)
    full = full_depth_predictions(model, trace)
    n = len(full)
    replays, at_risk, bounds, losses = [], [], [], []
    for index in range(len(grid)):
        exits, outputs = analysis.replay_exits(model, trace, 0.0, grid[index][2])
        early = _predictions(model, outputs)
        replays.append((exits, early))
        at_risk.append(int(differs(model, early, full).sum()))
        losses.append(risk.losses(model, early, full))
        bounds.append(risk.bound(losses[-1], delta))
        if bounds[-1] > risk.epsilon:
            break
    passed = len(bounds) - (bounds[-1] > risk.epsilon)  # the loop stops at a failure
    chosen = max(passed - 1, 0)
    knob, value, setting = grid[chosen]
    exact = passed == 0 or value == grid[0][1]
    if exact:
        setting = setting.proven_form()
    certificate = make_certificate(
        "halting", risk.statement, risk.epsilon, delta, n, at_risk, bounds, passed, grid,
        shared, knob=knob, value=value, exact=bool(exact), fit_rows=fit_rows,
        rows_needed=risk.rows_needed(losses[-1], delta),  # at the last setting tested
        **({} if risk.name == Disagreement.name else
           {"risk_kind": risk.name, "observed_rate": float(losses[chosen].mean())}))
    if apply:
        model.configure_exit(**setting.get_config())
    exits, early = replays[chosen]
    result = {"method": model.method, "knob": knob, "value": value,
              "mean_layers_executed": float(exits.mean()),
              "full_depth_disagreement": at_risk[chosen] / n, "certificate": certificate}
    if model.task == "regression":
        result["mean_deviation"] = float(np.abs(np.asarray(early) - np.asarray(full)).mean())
    return result


def reference_predictions(reference, dataset, verbose=0):
    """The full-depth predictions of a reference model on `dataset`.

    Args:
        reference: a `DactClassifier` (e.g. DACT's stage-1 model).
        dataset: `(features, labels)` batches.

    Returns:
        `(predictions, labels)`: class ids (or scores) `[rows]`, labels.
    """
    from dact_tf.evaluation import scoring

    outputs, labels = scoring.predict_dataset(reference, dataset, full_depth=True,
                                                 verbose=verbose)
    key = "scores" if reference.task == "regression" else "predictions"
    return outputs[key], labels


def against_reference(model, predictions, reference, labels):
    """`(worse, better)` bool `[rows]`: the answer is wrong where the reference's is
    right, and the other way round (regression: its error exceeds the other's by
    more than the tolerance)."""
    if model.task == "regression":
        tolerance = model.encoder.exit_context.tolerance
        mine, theirs = np.abs(predictions - labels), np.abs(reference - labels)
        return mine > theirs + tolerance, theirs > mine + tolerance
    right, reference_right = predictions == labels, reference == labels
    return ~right & reference_right, right & ~reference_right


def excess_error(model, predictions, reference, labels):
    """float `[rows]` in `[-1, 1]`: a regression answer's absolute error less the
    reference's, as a share of the score range (what a regression compute target bounds
    the mean of)."""
    lo, hi = model.encoder.exit_context.output_range
    mine = np.abs(np.asarray(predictions, np.float64).reshape(len(labels)) - labels)
    theirs = np.abs(np.asarray(reference, np.float64).reshape(len(labels)) - labels)
    return np.clip((mine - theirs) / (hi - lo), -1.0, 1.0)


#: What a compute target bounds: a classifier's accuracy drop, a regressor's mean excess error.
_DROP_RISK = "accuracy drop against the full-depth reference: P(worse) - P(better)"
_EXCESS_RISK = ("E(|error| - |the reference's error|) / (the score range), the mean absolute "
                "error above the full-depth reference's")


def observed_drop(model, predictions, reference, labels):
    """The drop a compute target bounds, on these rows: `P(worse) - P(better)` (a
    classifier) or the mean `excess_error` (a regressor)."""
    if model.task == "regression":
        return float(excess_error(model, predictions, reference, labels).mean())
    worse, better = against_reference(model, predictions, reference, labels)
    return float(worse.mean() - better.mean())


def drop_certificate(model, tested, passed, grid, n, max_drop, delta, shared, **extra):
    """`make_certificate` for a compute target's drop.

    `tested`: `(at_risk, better, bounds, observed)`, one entry per setting of
    `grid` tested (`drop_bound`'s); `passed`: how many passed; `n`: rows. The
    rows needed are estimated at the rates where the sequence stopped (a
    classifier's; a regressor's mean has no such estimate).
    """
    at_risk, better, bounds, observed = tested
    chosen, stopped = max(passed - 1, 0), len(bounds) - 1
    regression = model.task == "regression"
    return make_certificate(
        "compute_target", _EXCESS_RISK if regression else _DROP_RISK, max_drop, delta, n,
        at_risk, bounds, passed, grid, shared, better=int(better[chosen]),
        observed_rate=float(observed[chosen]),
        rows_needed=None if regression else risk_bounds.rows_needed(
            at_risk[stopped] / n, max_drop, delta, better_rate=better[stopped] / n),
        **({"risk_kind": "mean_excess_error"} if regression else {}), **extra)


def drop_bound(model, predictions, reference, labels, delta):
    """`(worse, better, bound, observed)` of a compute target at one shift.

    A classifier: rows worse and better than the reference and the bound on
    `P(worse) - P(better)` (`risk_bounds.difference_upper_bound`). A
    regressor: the rows worse and better by more than the tolerance (for the
    record) and the betting bound on the mean `excess_error`
    (`risk_bounds.mean_difference_upper_bound`): counting rows beyond a
    tolerance weighs a row that moves by 0.06 like one that moves by 3, and
    two regressors of equal quality still differ on most rows, so that rate's
    bound stays far above any useful target.
    """
    worse, better = against_reference(model, predictions, reference, labels)
    worse, better, n = int(worse.sum()), int(better.sum()), len(labels)
    if model.task == "regression":
        excess = excess_error(model, predictions, reference, labels)
        return (worse, better, risk_bounds.mean_difference_upper_bound(excess, delta),
                float(excess.mean()))
    return worse, better, risk_bounds.difference_upper_bound(worse, better, n, delta), (
        (worse - better) / n)


def _shift_grid(target_shift):
    """The shifts tested, from `_SAFE_SHIFT` down to the target's, `_SHIFT_STEP` apart."""
    start = max(_SAFE_SHIFT, target_shift)
    count = int(math.floor((start - target_shift) / _SHIFT_STEP))
    grid = [start - i * _SHIFT_STEP for i in range(count + 1)]
    if grid[-1] > target_shift:
        grid.append(target_shift)
    return grid


def drop_in_sequence(model, grid, replay, reference, labels, max_drop, delta):
    """Fixed-sequence testing of the drop against `reference` along `grid`.

    `replay(setting)` returns `(exits, predictions, ...)` for one setting of
    `grid`. Returns `(at_risk, better, bounds, observed, outcomes)`, one
    entry per setting tested: worse and better rows, the drop's upper bound
    and observed value (`drop_bound`) and `replay`'s outcome; the sequence
    stops at the first failure.
    """
    at_risk, better, bounds, observed, outcomes = [], [], [], [], []
    for setting in grid:
        outcomes.append(replay(setting))
        for values, value in zip((at_risk, better, bounds, observed),
                                 drop_bound(model, outcomes[-1][1], reference, labels, delta)):
            values.append(value)
        if bounds[-1] > max_drop:
            break
    return at_risk, better, bounds, observed, outcomes


def certify_compute_target(model, selection, rows, target_blocks, reference,
                           max_drop=halting_bias.DEFAULT_MAX_METRIC_DROP,
                           confidence=risk_bounds.DEFAULT_CONFIDENCE, metric_task=None,
                           pass_through="auto", shared=False, apply=True, verbose=0):
    """Shifts the halting towards `target_blocks` as far as a certified cost allows.

    1. On `selection` (rows that may also pick the epoch), the shift that
       reaches the target and the pass-through are found
       (`calibration.calibrate_halting_bias`, with no metric bound).
    2. On `rows` (calibration rows nothing else saw), shifts from
       `_SAFE_SHIFT` (every row runs every block, DACT's answer is nearly
       its last head's) down to that shift are tested in order: the accuracy
       drop against the reference (rows answered wrongly where it answers
       rightly, less the other way round; regression: the mean
       `excess_error`) must have an upper confidence bound (`drop_bound`)
       at most `max_drop`. The last shift that passes is taken.

    Args:
        model: a trained DACT `DactClassifier`.
        selection: `(features, labels)` batches for step 1.
        rows: `(features, labels)` batches, the calibration rows.
        target_blocks: float in `[1, N]`.
        reference: `[rows]`, the reference model's predictions on `rows`
            (`reference_predictions`), or None: the model's own full-depth
            answer before the shift (a weaker promise; recorded).
        max_drop: float in (0, 1), the certified bound (0.01: one point).
        confidence: float in (0, 1).
        metric_task: as for `analysis.task_metrics` (reported metrics).
        pass_through: as for `calibrate_halting_bias`.
        shared: bool, whether `rows` are also `selection` (recorded).
        apply: bool, shift the model's halting biases.

    Returns:
        A dict: `shift`, `pass_through`, `target_blocks`, `before` and
        `mean_layers_executed` (mean blocks on `rows` before and after),
        `selection_shift` (step 1's), `limited` (the certificate stopped the
        shift short of the target), `metric_name`, `metric_before`,
        `metric` and `reference_metric` (on `rows`), `max_metric_drop` and
        `certificate`.
    """
    delta = check_max_drop(max_drop, confidence)
    metric_task = metric_task or model.task
    search = halting_bias.calibrate_halting_bias(
        model, selection, target_blocks, max_metric_drop=None, metric_task=metric_task,
        pass_through=pass_through, apply=False, verbose=verbose)
    passed_through, target_shift = search["pass_through"], search["shift"]
    passed_before = model.encoder.heads.passed_blocks
    trace, labels = halting_bias.trace_trained_halting(model, rows, verbose)
    labels = np.asarray(labels)

    def replay(shift, passed):
        exits, outputs = analysis.replay_exits(model, trace, passed_shifts(model, shift, passed))
        return exits, _predictions(model, outputs)

    before_exits, before_preds = replay(0.0, passed_before)
    own = reference is None
    if own:
        reference = full_depth_predictions(model, trace)
    reference = np.asarray(reference)
    grid = _shift_grid(target_shift)
    *tested, outcomes = drop_in_sequence(
        model, grid, lambda shift: replay(shift, passed_through), reference, labels, max_drop,
        delta)
    bounds = tested[2]
    passed = len(bounds) - (bounds[-1] > max_drop)
    chosen = max(passed - 1, 0)
    exits, preds = outcomes[chosen]
    target_exits, _ = replay(target_shift, passed_through)

    def metric(predictions):
        return next(iter(analysis.task_metrics(metric_task, labels, predictions).items()))

    name, value = metric(preds)
    certificate = drop_certificate(
        model, tested, passed, grid, len(labels), max_drop, delta, shared,
        knob="halting_bias_shift", value=float(grid[chosen]),
        reference="the model's own full depth before the shift" if own else
        "the full-depth model")
    shift = float(grid[chosen])
    result = {
        "target_blocks": float(target_blocks), "shift": shift, "selection_shift": target_shift,
        "pass_through": int(passed_through), "pass_through_dropped": False,
        "before": float(before_exits.mean()), "mean_layers_executed": float(exits.mean()),
        "target_shift_layers_executed": float(target_exits.mean()),
        "limited": bool(passed < len(grid)) and grid[chosen] != target_shift,
        "metric_name": name, "metric_before": float(metric(before_preds)[1]),
        "metric": float(value), "reference_metric": float(metric(reference)[1]),
        "max_metric_drop": float(max_drop), "certificate": certificate,
    }
    if apply:
        apply_shift(model, shift, passed_through)
    return result


def check_max_drop(max_drop, confidence):
    """`delta` of a drop certificate; refuses a bound outside (0, 1) in one line."""
    if not 0.0 < float(max_drop) < 1.0:
        raise ValueError(f"The certified cost bound must be in (0, 1) (0.01: one point), "
                         f"got {max_drop!r}.")
    return risk_bounds.delta_from_confidence(confidence)


def passed_shifts(model, shift, passed):
    """`[N]` per-block shifts: `shift`, the first `passed` blocks passed through on top."""
    return shift + np.where(np.arange(model.num_layers) < passed, PASS_THROUGH_BIAS, 0.0)


def apply_shift(model, shift, passed):
    """Moves the trained halting biases by `shift` (logits); `passed` leading blocks then
    hand their budget on (`DactHeads.pass_budget_through`)."""
    heads = model.encoder.heads
    heads.pass_budget_through(0)
    heads.shift_halting_bias(shift)
    heads.pass_budget_through(passed)
    model.predict_function = model.test_function = None


def describe(certificate):
    """One line for a user: what a certificate promises, or why it could not."""
    c = certificate
    if c["kind"] != "halting":
        return _describe_drop(c)
    if c.get("risk_kind") == MeanDeviation.name:
        return _describe_deviation(c)
    what = "get an answer that differs from full depth"
    conf = f"{c['confidence']:.0%} confidence"
    if c["certified"]:
        return (f"certified: at most {c['epsilon']:.2%} of unseen rows {what} ({conf}; "
                f"{c['at_risk']} of {c['rows']} calibration rows, bound {c['bound']:.2%}).")
    needed = c.get("rows_needed")
    more = (f"about {needed:,} calibration rows would be needed at the rate seen "
            f"({c['observed_rate']:.2%})" if needed else
            f"the rate seen ({c['observed_rate']:.2%}) is already above the bound")
    return (f"not certified: {c['rows']} calibration rows cannot show that at most "
            f"{c['epsilon']:.2%} of unseen rows {what} at {conf}; {more}.")


def _describe_drop(c):
    """`describe` for a compute-target certificate (a bound on an accuracy drop)."""
    conf = f"{c['confidence']:.0%} confidence"
    if c.get("risk_kind") == "mean_excess_error":
        return _describe_mean(
            c, f"a mean absolute error at most {c['epsilon']:.2%} of the score range above the "
            f"full-depth model's", f"{c['observed_rate']:+.2%} of the range", "+.2%")
    counts = (f"{c['at_risk']} worse and {c['better']} better than the full-depth model on "
              f"{c['rows']} calibration rows")
    if c["certified"]:
        return (f"certified: at most {c['epsilon']:.2%} below the full-depth model on unseen "
                f"rows ({conf}; {counts}, bound {c['bound']:.2%}).")
    needed = c.get("rows_needed")
    more = (f"about {needed:,} calibration rows would be needed at the rates seen" if needed
            else "the drop seen is already above the bound")
    return (f"not certified: {c['rows']} calibration rows cannot show a drop of at most "
            f"{c['epsilon']:.2%} against the full-depth model at {conf} ({counts}); {more}.")


def _describe_deviation(c):
    """`describe` for a halting certificate on the mean distance from full depth."""
    return _describe_mean(
        c, f"an early score at most {c['epsilon']:.2%} of the score range from the full-depth "
        "score on average", f"mean distance {c['observed_rate']:.2%} of the range", ".2%")


def _describe_mean(c, what, seen, style):
    """`describe` for a certificate on a mean (`what` it promises, what was `seen`)."""
    detail = (f"{c['confidence']:.0%} confidence; {seen} on {c['rows']} calibration rows, "
              f"bound {c['bound']:{style}}")
    if c["certified"]:
        return f"certified: {what} on unseen rows ({detail})."
    return f"not certified: {c['rows']} calibration rows cannot show {what} ({detail})."
