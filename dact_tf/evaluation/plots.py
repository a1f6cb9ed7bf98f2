"""Pictures of a trained model: its metric against the blocks it runs.

`write_model_report` (behind `dact-tf evaluate --plot_dir=DIR`) traces the
model once over a dataset (every block) and writes into DIR:

- `accuracy_vs_blocks.png` (named after the task's metric): each block's own
  head `y_n` (what truncating the model after block n would answer), the
  curve over the method's exit knob replayed without retraining (DACT: the
  halting biases shifted together; PABEE: patience; DeeBERT: entropy
  threshold), the model at its current setting, and full depth;
- `exit_histogram.png`: how many rows exit after each block;
- the anytime curve: every row capped at k blocks (`serve_budget`, `dact-tf
  evaluate --max_layers`);
- `per_block.csv`, `exit_curve.csv` and `budget_curve.csv`: the numbers.
"""

import csv
import os

import numpy as np

from dact_tf.evaluation import analysis


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "Plots need matplotlib, which dact_tf's set-up installs: "
            "pip install 'matplotlib>=3.8'."
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write_csv(path, rows, keys):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _metric_name(report):
    return next(iter(report["blocks"][0]["head"]))


def _budget_curve(model, answers, exits, labels, metric_task, metric):
    """Anytime answers: the metric with every row capped at k blocks (`serve_budget`)."""
    budget = []
    for k in range(1, model.num_layers + 1):
        stop = np.minimum(exits, k)
        capped = answers[stop - 1, np.arange(len(labels))]
        point = {"max_layers": k, "mean_layers_executed": float(stop.mean()),
                 "exact_fraction": float((exits <= k).mean())}
        point[metric] = analysis.task_metrics(
            metric_task, labels, analysis.predictions(model, capped))[metric]
        budget.append(point)
    return budget


def write_model_report(model, dataset, metric_task, directory, verbose=0, title=None):
    """Writes the accuracy-vs-blocks plot, the exit histogram and their CSVs.

    Args:
        model: a trained `DactClassifier` (its current exit settings are the
            operating point shown).
        dataset: `(features, labels)` batches (e.g. the dev set).
        metric_task: the metric task name (`train_lib.task_info`'s last item).
        directory: str, created if missing.
        verbose: 0 or 1 (a progress counter while tracing).
        title: str or None, the plots' title.

    Returns:
        A dict: the paths written (`plot`, `histogram`, `per_block_csv`,
        `exit_curve_csv`, `budget_csv`), and `metric`, `mean_layers_executed` of the
        operating point and `full_depth_metric`.

    Example:
    ```python
    plots.write_model_report(model, dev, "sst2", "runs/sst2/plots")
    ```
    """
    plt = _pyplot()
    os.makedirs(directory, exist_ok=True)
    trace, labels = analysis.trace_dataset(model, dataset, verbose=verbose)
    if labels is None:
        raise ValueError("write_model_report needs (features, labels) batches.")
    report = analysis.per_block_from_trace(model, trace, labels, metric_task)
    curve = analysis.exit_curve(model, trace, labels, metric_task)
    metric = _metric_name(report)
    n = model.num_layers
    exits, outputs = analysis.replay_exits(model, trace)
    here = analysis.task_metrics(metric_task, labels, analysis.predictions(model, outputs))
    answers = model.exit_criterion.answers_in(trace)
    full = analysis.task_metrics(metric_task, labels, analysis.predictions(model, answers[-1]))
    budget = _budget_curve(model, answers, exits, labels, metric_task, metric)

    rows = []
    for row in report["blocks"]:
        flat = {"block": row["block"], f"head_{metric}": row["head"][metric],
                "exits": row["exits"]}
        if "accumulated" in row:
            flat.update({f"accumulated_{metric}": row["accumulated"][metric],
                         "mean_halting": row["mean_halting"], "mean_budget": row["mean_budget"]})
        rows.append(flat)
    paths = {
        "per_block_csv": os.path.join(directory, "per_block.csv"),
        "exit_curve_csv": os.path.join(directory, "exit_curve.csv"),
        "budget_csv": os.path.join(directory, "budget_curve.csv"),
        "plot": os.path.join(directory, f"{metric}_vs_blocks.png"),
        "histogram": os.path.join(directory, "exit_histogram.png"),
    }
    _write_csv(paths["per_block_csv"], rows, list(rows[0]))
    _write_csv(paths["exit_curve_csv"], curve,
               ["knob", "value", "mean_layers_executed", metric])
    _write_csv(paths["budget_csv"], budget,
               ["max_layers", "mean_layers_executed", "exact_fraction", metric])

    name = model.exit_criterion.display_name or model.method
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    blocks = list(range(1, n + 1))
    ax.plot(blocks, [r["head"][metric] for r in report["blocks"]], "s--", color="gray",
            label="block n's own head (cut after n)")
    if curve:
        ax.plot([p["mean_layers_executed"] for p in curve], [p[metric] for p in curve], ".-",
                label=f"{name}, over {curve[0]['knob'].replace('_', ' ')}")
    ax.plot([p["mean_layers_executed"] for p in budget], [p[metric] for p in budget], "^:",
            color="C2", label="capped at k blocks (serve_budget)")
    ax.plot([float(exits.mean())], [here[metric]], "*", markersize=14, color="C3",
            label=f"this model: {here[metric]:.3f} at {exits.mean():.2f} blocks")
    ax.axhline(full[metric], color="k", linewidth=0.8, linestyle=":",
               label=f"full depth: {full[metric]:.3f}")
    ax.set_xlabel(f"mean blocks executed (of {n})")
    ax.set_ylabel(metric)
    ax.set_xlim(0.8, n + 0.2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or f"{name}: {metric} against compute ({len(labels)} rows)")
    fig.tight_layout()
    fig.savefig(paths["plot"], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.bar(blocks, [r["exits"] for r in report["blocks"]], color="C0")
    ax.set_xlabel("exit after block")
    ax.set_ylabel("rows")
    ax.set_xticks(blocks)
    ax.set_title(title or f"{name}: where rows exit (mean {exits.mean():.2f} blocks)")
    fig.tight_layout()
    fig.savefig(paths["histogram"], dpi=120)
    plt.close(fig)
    paths.update(metric=here[metric], mean_layers_executed=float(exits.mean()),
                 full_depth_metric=full[metric])
    return paths
