"""One certificate for the whole trade-off: the fewest blocks whose drop is bounded.

`certify.certify_compute_target` moves one knob (DACT's halting biases)
towards a number of blocks and bounds its cost against the plain full-depth
model; `certify.certify_halting` moves another (a learned consistency score)
and bounds the disagreement with the model's *own* full depth. Stacked, the
two promises add up (1 % + 1 % is a 2 % drop at most), and the first knob
cannot go below the blocks its bound allows before the second one starts.

`certify_drop_halting` moves both knobs at once under a single promise, the
one a user asks for: the accuracy drop against the full-depth reference,
P(worse) - P(better) (`risk_bounds.difference_upper_bound`), at most
`max_drop` with the given confidence. Every pair (halting-bias shift, score
threshold) is a candidate; the consistency score is fitted anew for each
shift. On the selection rows the candidates are put in order: the frontier
of the fewest blocks for a given drop, safest first. That order is fixed
before the calibration rows are read, so fixed-sequence testing on them
(Learn-then-Test, Angelopoulos et al. 2021) certifies the last candidate
that passes. The chosen model runs DACT's certified rule (the tight test,
or the score at its threshold) at the chosen shift. Where no pair passes,
nothing is certified and the model keeps the setting it is given to keep
(`calibration_run.calibrate_drop`: its previous calibration) or, with none,
its trained halting under its proven rule.
"""

import numpy as np

from dact_tf.calibration import certify
from dact_tf.calibration import halting_bias
from dact_tf.calibration import risk_bounds
from dact_tf.calibration import risks
from dact_tf.evaluation import analysis
from dact_tf.exits import consistency

#: The halting-bias shifts (logits) whose score thresholds are candidates,
#: from every row running every block to halting earlier than trained.
SHIFTS = (12.0, 8.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0)


def frontier(model, trace, labels, reference, shifts_of, shifts=SHIFTS):
    """The candidates on `trace`'s rows, in the order they are tested, safest first.

    For each shift the consistency score is fitted on these rows and every
    threshold of its grid (`consistency.threshold_grid`, with 1.0: the tight
    test alone) is replayed. A candidate stays if no candidate with as few
    blocks has a lower drop against `reference`.

    Args:
        model: a DACT `DactClassifier` (a regressor's score is fitted to scores
            within `risks.settled_distance` of the last one, its drop is the
            mean `certify.excess_error`).
        trace: `halting_bias.trace_trained_halting`'s trace of the selection
            rows.
        labels: `[rows]` their labels; reference: `[rows]` the reference's
            predictions on them.
        shifts_of: `shift -> [N]` per-block shifts (the pass-through added).
        shifts: the shifts tried.

    Returns:
        A list of `(blocks, drop, shift, weights, threshold)`, most blocks
        first.
    """
    proven = model.exit_criterion.certified_form(None, 1.0)
    context = model.encoder.exit_context
    regression = model.task == "regression"
    within = risks.settled_distance(model) if regression else None
    rows = np.arange(len(labels))
    candidates = []
    for shift in shifts:
        accumulated, state, tight = analysis.replay_blocks(model, trace, shifts_of(shift), proven)
        budgets = state[0]
        weights = consistency.fit(accumulated, budgets, context=context, within=within)
        scores = consistency.trace_scores(weights, accumulated, budgets, context)
        predictions = accumulated[..., 0] if regression else accumulated.argmax(-1)
        for threshold in [1.0] + consistency.threshold_grid(scores):
            stops = tight | (scores >= threshold)
            stops[-1] = True
            exits = stops.argmax(axis=0)
            drop = certify.observed_drop(model, predictions[exits, rows], reference, labels)
            candidates.append((float(exits.mean() + 1), drop, float(shift), weights,
                               float(threshold)))
    candidates.sort(key=lambda c: (c[0], c[1]))
    kept, lowest = [], np.inf
    for candidate in candidates:
        if candidate[1] < lowest - 1e-12:
            kept.append(candidate)
            lowest = candidate[1]
    return kept[::-1]


def _replayer(model, trace, shifts_of):
    """`certify.drop_in_sequence`'s replay of a frontier candidate on the calibration rows'
    `trace`: the real loop's `(exits, predictions, criterion)`."""
    def replay(candidate):
        _, _, shift, weights, threshold = candidate
        criterion = model.exit_criterion.certified_form(weights, threshold)
        exits, outputs = analysis.replay_exits(model, trace, shifts_of(shift), criterion)
        return exits, analysis.predictions(model, outputs), criterion

    return replay


def certify_drop_halting(model, selection, rows, reference=None, max_drop=0.01,
                         confidence=risk_bounds.DEFAULT_CONFIDENCE, metric_task=None,
                         shared=False, apply=True, kept=None, verbose=0):
    """Sets the fewest-blocks exit whose accuracy drop against full depth is certified.

    Args:
        model: a trained DACT `DactClassifier` (a regressor: the drop is its
            mean absolute error above the reference's, as a share of the
            score range).
        selection: `(features, labels)` batches that order the candidates
            (and fit the score): rows the certificate does not use.
        rows: `(features, labels)` batches, the calibration rows.
        reference: the plain full-depth `DactClassifier` the drop is
            measured against (DACT's stage 1 or its `init_from` model), or
            None: the model's own full depth as it is (a weaker promise;
            recorded).
        max_drop: float in (0, 1), the certified bound (0.01: one point).
        confidence: float in (0, 1).
        metric_task: as for `analysis.task_metrics` (reported metrics).
        shared: bool, whether `rows` are also `selection` (recorded: the
            certificate then does not hold as stated).
        apply: bool, configure the model with the chosen setting.
        kept: `(shift, criterion)`, the setting to keep where nothing is
            certified: a halting shift from the trained biases and an exit
            criterion of the model's method (e.g. a previous calibration's);
            None: the trained biases under the proven rule.
        verbose: 0 or 1.

    Returns:
        A dict: `shift`, `halting_threshold`, `pass_through`, `before` and
        `mean_layers_executed` (mean blocks on `rows` as the model was and
        with the choice), `selection_layers_executed`, `metric_name`,
        `metric_before`, `metric`, `reference_metric` (on `rows`),
        `max_metric_drop` and `certificate` (`certified` false: the model
        keeps the `kept` setting, or its trained halting under its proven
        rule, and `rows_needed` says about how many rows the first
        candidate would need), and `kept` (whether the `kept` setting is
        the one reported). Unlike a
        compute target, no setting is safe by construction here: the
        halting shift that runs every block moves DACT's answer towards
        its last head, which can be less accurate than the trained mix.

    Example:
    ```python
    result = certify_drop_halting(model, selection_rows, calibration_rows,
                                  reference=full_depth_model, max_drop=0.01)
    result["certificate"]["certified"], result["mean_layers_executed"]
    ```
    """
    delta = certify.check_max_drop(max_drop, confidence)
    if not model.exit_criterion.certifies_drop:
        raise ValueError("A certified drop over the halting shift and score needs a DACT "
                         f"model (method={model.method!r}).")
    metric_task = metric_task or model.task
    passed = model.encoder.heads.passed_blocks

    def shifts_of(shift):
        return certify.passed_shifts(model, shift, passed)

    own = reference is None
    traces, labels, refs = {}, {}, {}
    for split, data in (("selection", selection), ("rows", rows)):
        traces[split], y = halting_bias.trace_trained_halting(model, data, verbose)
        labels[split] = np.asarray(y)
        if own:
            answers, _, _ = analysis.replay_blocks(model, traces[split], shifts_of(0.0))
            refs[split] = analysis.predictions(model, answers[-1])
        else:
            refs[split] = np.asarray(certify.reference_predictions(reference, data)[0])
    path = frontier(model, traces["selection"], labels["selection"], refs["selection"],
                    shifts_of)
    y, ref, n = labels["rows"], refs["rows"], len(labels["rows"])
    *tested, outcomes = certify.drop_in_sequence(
        model, path, _replayer(model, traces["rows"], shifts_of), ref, y, max_drop, delta)
    bounds = tested[2]
    passed_count = len(bounds) - (bounds[-1] > max_drop)
    if passed_count:
        chosen = passed_count - 1
        exits, predictions, criterion = outcomes[chosen]
        _, _, shift, _, threshold = path[chosen]
    else:  # nothing certified: the kept setting, or the trained halting under the proven rule
        chosen = 0
        shift, criterion = kept or (0.0, model.exit_criterion.proven_form())
        threshold = criterion.get_config().get("halting_threshold", 1.0)
        exits, outputs = analysis.replay_exits(model, traces["rows"], shifts_of(shift), criterion)
        predictions = analysis.predictions(model, outputs)
    before_exits, before_outputs = analysis.replay_exits(model, traces["rows"], shifts_of(0.0))

    def metric(values):
        return next(iter(analysis.task_metrics(metric_task, y, values).items()))

    certificate = certify.drop_certificate(
        model, tested, passed_count, path, n, max_drop, delta, shared,
        knob="halting_bias_shift+halting_threshold", value=float(threshold), shift=float(shift),
        fit_rows=int(len(labels["selection"])),
        reference="the model's own full depth before the shift" if own else
        "the full-depth model")
    name, value = metric(predictions)
    result = {
        "mode": "certified_drop", "shift": float(shift), "halting_threshold": float(threshold),
        "pass_through": int(passed), "before": float(before_exits.mean()),
        "mean_layers_executed": float(exits.mean()),
        "selection_layers_executed": float(path[chosen][0]) if path else None,
        "candidates": len(path), "metric_name": name,
        "metric_before": float(metric(analysis.predictions(model, before_outputs))[1]),
        "metric": float(value), "reference_metric": float(metric(ref)[1]),
        "max_metric_drop": float(max_drop), "certificate": certificate,
        "kept": bool(kept) and not passed_count,
    }
    if apply:
        model.configure_exit(**criterion.get_config())
        certify.apply_shift(model, shift, passed)
    return result


def message(result):
    """One line: where the certified drop landed, or what the model kept."""
    if not result["certificate"]["certified"]:
        kept = ("its previous calibration" if result.get("kept") else
                "its trained halting under the proven rule")
        return (f"No certified drop: the model keeps {kept}, "
                f"{result['mean_layers_executed']:.2f} blocks on the calibration rows; "
                f"{result['metric_name']} {result['metric']:.4f} against the full-depth "
                f"model's {result['reference_metric']:.4f}. "
                + certify.describe(result["certificate"]))
    return (f"Certified drop: {result['mean_layers_executed']:.2f} blocks on the calibration "
            f"rows (halting shift {result['shift']:+g}, score threshold "
            f"{result['halting_threshold']:.4g}); {result['metric_name']} "
            f"{result['metric']:.4f} against the full-depth model's "
            f"{result['reference_metric']:.4f}. " + certify.describe(result["certificate"]))
