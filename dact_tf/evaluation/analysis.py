"""Where a trained model's accuracy goes: per-block reports and exit curves.

Everything here starts from one pass of the model over a dataset that runs
every block (`trace_dataset`): the heads' answers `y_n`, DACT's halting
values `h_n`, budgets `p_n` and accumulated answers `a_n`. From that trace,
`per_block_report` tells heads from halting, and `exit_curve` replays the
exit rule at other settings of the method's knob (DACT: a common shift of
the halting biases, as `dact_tf.calibration.halting_bias` applies; PABEE: the patience;
DeeBERT: the entropy threshold) to give accuracy against mean blocks
without retraining or re-running the backbone.
"""

import numpy as np
import tensorflow as tf

from dact_tf import data as dact_data
from dact_tf import ops
from dact_tf.utils import progress


def task_metrics(metric_task, labels, preds):
    """The metrics of `metric_task` (a GLUE task, "classification",
    "regression" or "custom") as a dict."""
    if metric_task == "custom":
        return {"accuracy": dact_data.accuracy(labels, preds)}
    return dict(dact_data.task_metrics(metric_task, labels, preds))


def per_block_report(model, dataset, metric_task, verbose=0):
    """Where a model's accuracy goes, block by block: heads vs halting.

    Runs every block on `dataset` (`model.trace`) and reports, for each block
    n, the task metric of the block's own answer `y_n`; for DACT also the
    metric of the accumulated answer `a_n` (the model's output is `a_N`),
    the mean halting value `h_n` and the mean budget `p_n`; and how many
    examples the exit rule stops after block n, with their accuracy
    (regression: mean absolute error) at exit and of `y_n` alone. Heads that
    are good while `a_N` is not mean the halting, not the heads, costs
    accuracy (see `benchmarks/EXIT_ANATOMY.md`).

    Args:
        model: a `DactClassifier` (any `method`; its current exit settings).
        dataset: `(features, labels)` batches, as `make_datasets` gives.
        metric_task: the metric task name of `task_info` (a GLUE task,
            `"classification"`, `"regression"` or `"custom"`).
        verbose: 0 or 1 (a progress counter on stderr).

    Returns:
        A dict: `num_layers`, `num_examples`, `method` and `blocks`, a list of
        dicts with keys `block` (1-based), `head` (metrics of `y_n`),
        `exits`, `exit_accuracy` or `exit_mae` (None where no example exits),
        `exit_head_accuracy` or `exit_head_mae`, and for DACT `accumulated`
        (metrics of `a_n`), `mean_halting` and `mean_budget`.

    Example:
    ```python
    report = analysis.per_block_report(model, dev, "sst2")
    print(analysis.format_per_block(report))
    ```
    """
    trace, labels = trace_dataset(model, dataset, verbose=verbose)
    return per_block_from_trace(model, trace, labels, metric_task)


def trace_dataset(model, dataset, verbose=0):
    """Runs `model.trace` (every block, inference) over a dataset.

    Args:
        model: a `DactClassifier`.
        dataset: batches of `(features, labels)` or of features alone.
        verbose: 0 or 1 (a progress counter on stderr).

    Returns:
        `(trace, labels)`: the trace dict of `DactEncoder.trace` as NumPy
        arrays concatenated over batches (`exit_layers` `[examples]`, the
        others `[num_layers, examples, ...]`), and the labels (None for
        features alone).
    """
    fn = tf.function(model.trace, reduce_retracing=True)
    keys = ("answers", "accumulated", "halting", "budgets", "exit_layers")
    parts, labels = {k: [] for k in keys}, []
    for batch in progress.iterate(dataset, verbose, "Tracing every block"):
        features, y = batch if isinstance(batch, tuple) else (batch, None)
        trace = fn(features)
        for k in keys:
            parts[k].append(trace[k].numpy())
        if y is not None:
            labels.append(y.numpy())
    if not parts["answers"]:
        raise ValueError("Got an empty dataset: nothing to trace.")
    trace = {k: np.concatenate(v, axis=0 if k == "exit_layers" else 1) for k, v in parts.items()}
    return trace, (np.concatenate(labels) if labels else None)


def per_block_from_trace(model, trace, labels, metric_task):
    """`per_block_report`'s result from `trace_dataset`'s output."""
    n, count = model.num_layers, len(labels)
    regression = model.task == "regression"
    criterion = model.exit_criterion

    def preds(answers):  # [..., batch, C] -> predictions
        return answers[..., 0] if regression else answers.argmax(-1)

    def subset_score(pred, rows):
        if regression:
            return float(np.abs(pred[rows] - labels[rows]).mean())
        return float((pred[rows] == labels[rows]).mean())

    # What the early-exit loop returns: the method's answer at the exit.
    exit_index = trace["exit_layers"] - 1
    final = criterion.answers_in(trace)
    output = preds(final[exit_index, np.arange(count)])
    suffix = "mae" if regression else "accuracy"
    blocks = []
    for i in range(n):
        head = preds(trace["answers"][i])
        rows = exit_index == i
        row = {
            "block": i + 1,
            "head": task_metrics(metric_task, labels, head),
            "exits": int(rows.sum()),
            f"exit_{suffix}": subset_score(output, rows) if rows.any() else None,
            f"exit_head_{suffix}": subset_score(head, rows) if rows.any() else None,
        }
        row.update(criterion.per_block_columns(
            trace, i, lambda answers: task_metrics(metric_task, labels, preds(answers))))
        blocks.append(row)
    return {"method": model.method, "num_layers": n, "num_examples": count, "blocks": blocks}


def format_per_block(report):
    """`per_block_report`'s result as a Markdown table (one row per block)."""
    first = report["blocks"][0]
    metric = next(iter(first["head"]))
    suffix = "mae" if "exit_mae" in first else "accuracy"
    dact = "accumulated" in first
    header = ["block", f"head {metric}"]
    header += [f"a_n {metric}", "mean h_n", "mean p_n"] if dact else []
    header += ["exits", f"exit {suffix}", f"head {suffix} at exit"]

    def fmt(value):
        return "-" if value is None else f"{value:.3f}"

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["blocks"]:
        cells = [str(row["block"]), fmt(row["head"][metric])]
        if dact:
            cells += [fmt(row["accumulated"][metric]), fmt(row["mean_halting"]),
                      fmt(row["mean_budget"])]
        cells += [str(row["exits"]), fmt(row[f"exit_{suffix}"]),
                  fmt(row[f"exit_head_{suffix}"])]
        lines.append("| " + " | ".join(cells) + " |")
    legend = [
        "",
        f"head {metric}: block n's own head y_n, as if every row stopped there.",
    ]
    if dact:
        legend += [
            f"a_n {metric}: DACT's accumulated answer after block n (the model answers a_exit).",
            "mean h_n: the halting value (1: keep going); mean p_n: the budget left, the",
            "  product h_1...h_n (small: later blocks can barely change a_n).",
        ]
    legend += [
        f"exits: rows the exit rule stops after block n; exit {suffix}: of the model's answer",
        f"  on those rows; head {suffix} at exit: of y_n alone on the same rows.",
    ]
    return "\n".join(lines + legend)


def predictions(model, answers):
    """Predictions (classes, or regression scores) from answers `[..., outputs]`."""
    return answers[..., 0] if model.task == "regression" else answers.argmax(-1)


def differs(model, a, b):
    """bool `[rows]`: predictions `a` and `b` differ (regression: by more than the tolerance)."""
    if model.task == "regression":
        return np.abs(a - b) > model.encoder.exit_context.tolerance
    return a != b


def score_distance(model, a, b):
    """float `[rows]` in `[0, 1]`: regression scores `a` and `b` apart, as a share of the
    model's score range."""
    lo, hi = model.encoder.exit_context.output_range
    distance = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return np.clip(distance.reshape(len(distance), -1).max(axis=1) / (hi - lo), 0.0, 1.0)


def replay_exits(model, trace, shift=0.0, criterion=None):
    """The exit block and answer of every row, replayed on a trace.

    Runs only the exit criterion's steps (for DACT the recurrence and the
    halting rule) on the recorded answers; for DACT the halting biases are
    taken as moved by `shift` (`shift=0`: the model as it is).

    Args:
        model: the `DactClassifier` the trace came from.
        trace: `trace_dataset`'s trace (DACT: `"halting_logits"` may stand
            in for `"halting"`).
        shift: float, DACT only: a common shift of the halting biases, or
            `[N]` floats, one per block.
        criterion: a `dact_tf.exits.ExitCriterion` to replay instead of the
            model's own (e.g. another patience), or None.

    Returns:
        `(exit_layers, answers)`: int `[rows]` 1-based blocks, and float
        `[rows, outputs]` what the early exit returns for each row.
    """
    outputs, _, halts = replay_blocks(model, trace, shift, criterion)
    exits = ops.first_halting_layer(tf.constant(halts)).numpy()
    return exits, outputs[exits - 1, np.arange(outputs.shape[1])]


def replay_blocks(model, trace, shift=0.0, criterion=None):
    """Every block's exit answer, state and stop decision, replayed on a trace.

    `replay_exits` without taking the first stop: what the early-exit loop
    computes after each block, for every row.

    Args:
        model, trace, shift, criterion: as for `replay_exits`.

    Returns:
        `(answers, states, halts)`: float `[N, rows, outputs]` (DACT: the
        accumulated `a_n`), a tuple of NumPy `[N, rows, ...]` arrays (the
        criterion's state fields, e.g. DACT's budget `p_n`), and bool
        `[N, rows]`, whether the criterion stops after each block.
    """
    criterion = criterion or model.exit_criterion
    context = model.encoder.exit_context
    answers = trace["answers"]
    n, rows = answers.shape[0], answers.shape[1]
    halting = criterion.replay_halting(trace, shift)
    answer, _ = ops.initial_state(rows, answers.shape[2])
    state = criterion.initial_state(rows, context)
    outputs, states, halts = [], [], []
    for i in range(n):
        answer, state, done = criterion.step(
            tf.constant(answers[i]), halting[i], answer, state, n - 1 - i, context)
        outputs.append(answer.numpy())
        states.append([np.asarray(s) for s in state])
        halts.append(np.asarray(done))
    return (np.stack(outputs), tuple(np.stack(field) for field in zip(*states)),
            np.stack(halts))


def exit_curve(model, trace, labels, metric_task):
    """Metric against mean blocks over the method's knob, without retraining.

    The settings are the exit criterion's `sweep`: DACT: the halting biases
    shifted together (what `calibration.calibrate_halting_bias` sets);
    PABEE: patience 1..N; DeeBERT: entropy thresholds (nats); static
    truncation has no knob. Every point is what the early exit would return
    with that setting (replayed on `trace`, see `replay_exits`); the model
    itself is not changed.

    Returns:
        A list of dicts with `knob` (its name), `value`,
        `mean_layers_executed` and the task metrics, sorted by blocks; empty
        for static truncation.
    """
    points, seen = [], set()
    for knob, value, criterion, shift in model.exit_criterion.sweep(model.num_layers):
        exits, outputs = replay_exits(model, trace, shift=shift, criterion=criterion)
        key = tuple(np.bincount(exits, minlength=model.num_layers + 1))
        if key in seen:  # the same exits as a neighbouring setting
            continue
        seen.add(key)
        point = {"knob": knob, "value": value, "mean_layers_executed": float(exits.mean())}
        point.update(task_metrics(metric_task, labels, predictions(model, outputs)))
        points.append(point)
    return sorted(points, key=lambda p: p["mean_layers_executed"])
