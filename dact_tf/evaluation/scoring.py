"""Running a trained model over a dataset: outputs, task metrics, blocks executed and speed."""

import time

import numpy as np
import tensorflow as tf

from dact_tf.evaluation import analysis
from dact_tf.utils import progress
from dact_tf.callbacks import exit_summary

def predict_dataset(model, dataset, full_depth=False, verbose=0, max_layers=None):
    """Runs the model over a dataset; returns `(outputs dict, labels)`.

    Args:
        model: a `DactClassifier`.
        dataset: `(features, labels)` batches.
        full_depth: bool, run every block (no early exit).
        verbose: 0 (silent) or 1 (a progress counter on stderr).
        max_layers: None, or int >= 1: cap every row at this many blocks
            (anytime answers; adds the output `exact`).
    """
    if max_layers is None:
        def call(f):
            return model(f, training=False, full_depth=full_depth)
    else:
        if int(max_layers) < 1:
            raise ValueError(f"max_layers must be >= 1, got {max_layers}.")

        def call(f):
            rows = tf.shape(f["token_ids"])[:1]
            return model(f, training=False, max_layers=tf.fill(rows, int(max_layers)))
    fn = tf.function(call, reduce_retracing=True)
    outputs, labels = {}, []
    label = "Predicting (full depth)" if full_depth else "Predicting"
    for features, y in progress.iterate(dataset, verbose, label):
        for key, value in fn(features).items():
            outputs.setdefault(key, []).append(value.numpy())
        labels.append(y.numpy())
    if not labels:
        raise ValueError("Got an empty dataset: nothing to predict.")
    return {k: np.concatenate(v) for k, v in outputs.items()}, np.concatenate(labels)


def evaluate(model, dataset, metric_task, verbose=0, max_layers=None, full_depth_disagreement=False):
    """The task metrics and the blocks executed of a model on a dataset.

    `verbose=1` shows a progress counter on stderr. With `max_layers=K`
    every row is capped at K blocks (anytime answers) and the results add
    `max_layers` and `exact_fraction`, the fraction of rows whose answer is
    proven to be the uncapped one (DACT: equal to full depth).
    `full_depth_disagreement=True` runs every block too and adds
    `full_depth_disagreement`, the fraction of rows whose answer differs
    from the full-depth one (regression: by more than the tolerance); 0
    for DACT's proven rules, at most the certified rate (on most draws)
    for a certified halting mode; regression adds
    `full_depth_mean_deviation`, the mean distance from the full-depth
    score as a share of the score range (what `--certified_risk=
    mean_deviation` certifies).

    Returns:
        A dict: the task metric(s), `mean_layers_executed`, `num_layers`,
        `layers_histogram` (examples per number of blocks 1..N),
        `ideal_speedup` and `num_examples`.
    """
    outputs, labels = predict_dataset(model, dataset, verbose=verbose, max_layers=max_layers)
    results = results_from_outputs(model, outputs, labels, metric_task)
    if max_layers is not None:
        results.update(max_layers=int(max_layers),
                       exact_fraction=float(outputs["exact"].mean()))
    if full_depth_disagreement:
        full, _ = predict_dataset(model, dataset, full_depth=True, verbose=verbose)
        key = "scores" if model.task == "regression" else "predictions"
        results["full_depth_disagreement"] = float(
            analysis.differs(model, outputs[key], full[key]).mean())
        if model.task == "regression":
            results["full_depth_mean_deviation"] = float(
                analysis.score_distance(model, outputs[key], full[key]).mean())
    return results


def results_from_outputs(model, outputs, labels, metric_task):
    """`evaluate`'s results from outputs of `predict_dataset` (early exit)."""
    preds = outputs["scores"] if model.task == "regression" else outputs["predictions"]
    results = analysis.task_metrics(metric_task, labels, preds)
    results.update(model.exit_criterion.summary())
    results.update(method=model.method,
                   **exit_summary(outputs["layers_executed"], model.num_layers))
    return results


def measure_speedup(model, dataset, repeats=3, verbose=0):
    """Wall-clock time of early exit vs full depth over a dataset (same run).

    Args:
        model: a `DactClassifier`.
        dataset: batches of `features` or `(features, labels)`.
        repeats: int, timed passes of each (after one warm-up pass each).
        verbose: 0 or 1 (a progress counter on stderr, one step a pass).

    Returns:
        A dict with `early_exit_s`, `full_depth_s` (best of `repeats`, both
        measured interleaved) and `speedup`.
    """
    batches = [b[0] if isinstance(b, tuple) else b for b in dataset]
    early = tf.function(lambda f: model(f, training=False), reduce_retracing=True)
    full = tf.function(lambda f: model(f, full_depth=True), reduce_retracing=True)
    bar = progress.Progress(f"Timing early exit vs full depth ({len(batches)} batches)",
                            total=2 * (repeats + 1), unit="passes") if verbose else None

    def run(fn):
        start = time.perf_counter()
        for features in batches:
            fn(features)["layers_executed"].numpy()
        if bar:
            bar.update()
        return time.perf_counter() - start

    run(early), run(full)  # trace and warm up
    times = {"early": [], "full": []}
    for _ in range(repeats):
        times["early"].append(run(early))
        times["full"].append(run(full))
    if bar:
        bar.close()
    e, f = min(times["early"]), min(times["full"])
    return {"early_exit_s": e, "full_depth_s": f, "speedup": f / e}
