"""A callback that records how long a DACT model thinks, per epoch."""

import csv
import os

import keras
import numpy as np
import tensorflow as tf


def halting_statistics(model, data, max_batches=None):
    """Halting statistics of a DACT model on some data.

    Runs `model.trace` (every block, inference mode) and applies the model's
    halting rule, so the exits are exactly those the early-exit loop takes.

    Args:
        model: a `DactClassifier` (anything with `trace` and `num_layers`).
        data: a `tf.data.Dataset` (or iterable) of features or of
            `(features, labels[, weights])` tuples.
        max_batches: int or None, how many batches to read.

    Returns:
        A dict: `num_examples`, `num_layers`, `ponder_cost` (mean of
        `sum p_n`), `mean_layers_executed`, `ideal_speedup`
        (`num_layers / mean_layers_executed`), `halting_mean` (list, the
        mean `h_n` per block), `exit_rate` (list, the fraction of examples
        that exit after each block) and `layers_histogram` (list, the count
        of examples per number of blocks executed, 1..N).
    """
    trace_fn = _trace_function(model)
    num_layers = model.num_layers
    halting_sum = np.zeros(num_layers)
    ponder_sum = 0.0
    exits = []
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        features = batch[0] if isinstance(batch, tuple) else batch
        halting, ponder, exit_layers = trace_fn(features)
        halting_sum += halting.numpy().sum(axis=1)
        ponder_sum += float(ponder.numpy().sum())
        exits.append(exit_layers.numpy())
    if not exits:
        raise ValueError("halting_statistics got no data.")
    summary = exit_summary(np.concatenate(exits), num_layers)
    count = summary["num_examples"]
    return {
        **summary,
        "ponder_cost": ponder_sum / count,
        "halting_mean": (halting_sum / count).tolist(),
        "exit_rate": (np.asarray(summary["layers_histogram"]) / count).tolist(),
    }


def exit_summary(layers_executed, num_layers):
    """What the blocks executed per row say: one place for every report.

    Args:
        layers_executed: int `[rows]`, 1-based blocks each row ran.
        num_layers: int, the model's blocks.

    Returns:
        A dict: `num_examples`, `num_layers`, `mean_layers_executed`,
        `ideal_speedup` (`num_layers / mean`) and `layers_histogram` (rows
        per number of blocks 1..N).
    """
    layers = np.asarray(layers_executed)
    mean = float(layers.mean())
    return {"num_examples": int(len(layers)), "num_layers": int(num_layers),
            "mean_layers_executed": mean, "ideal_speedup": float(num_layers / mean),
            "layers_histogram": np.bincount(layers, minlength=num_layers + 1)[1:].tolist()}


def _trace_function(model):
    # One compiled function per model, kept on the model (not global state).
    fn = getattr(model, "_dact_halting_stats_fn", None)
    if fn is None:

        @tf.function(reduce_retracing=True)
        def fn(features):
            trace = model.trace(features)
            return trace["halting"], trace["ponder_cost"], trace["exit_layers"]

        model._dact_halting_stats_fn = fn
    return fn


class PonderCostLogger(keras.callbacks.Callback):
    """Logs, per epoch, how many blocks the model uses and where it exits.

    At the end of every epoch it measures on `data` (e.g. the validation
    set): the mean ponder cost, the mean halting value and the exit rate of
    each block, and a histogram of blocks executed (see
    `halting_statistics`). It writes them to TensorBoard (`log_dir`) and
    appends a row to a CSV file (`csv_path`), and adds
    `val_mean_layers_executed` and `val_ideal_speedup` to the epoch logs, so
    later callbacks (CSVLogger, TensorBoard, progress bars) see them.

    Args:
        data: a `tf.data.Dataset` of features or `(features, labels)`.
        log_dir: str or None, the TensorBoard directory (written under
            `log_dir/validation`, tags `dact/...`).
        csv_path: str or None, the CSV file; rows are appended, so a resumed
            run continues the same file.
        max_batches: int or None, limit the batches read per epoch.

    Example:
    ```python
    logger = PonderCostLogger(val_ds, log_dir="runs/tb", csv_path="runs/ponder.csv")
    model.fit(train_ds, validation_data=val_ds, epochs=3, callbacks=[logger])
    logger.history[-1]["mean_layers_executed"]
    ```
    """

    def __init__(self, data, log_dir=None, csv_path=None, max_batches=None):
        super().__init__()
        self.data = data
        self.log_dir = log_dir
        self.csv_path = csv_path
        self.max_batches = max_batches
        self.history = []
        self._writer = None

    def on_train_begin(self, logs=None):
        if self.log_dir and self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, "validation")
            )

    def on_epoch_end(self, epoch, logs=None):
        stats = halting_statistics(self.model, self.data, self.max_batches)
        stats["epoch"] = epoch
        self.history.append(stats)
        if logs is not None:
            # Measured on held-out data: `val_` keys (Keras' TensorBoard
            # callback writes them under `validation/`).
            logs["val_mean_layers_executed"] = stats["mean_layers_executed"]
            logs["val_ideal_speedup"] = stats["ideal_speedup"]
        if self._writer is not None:
            self._write_summaries(epoch, stats)
        if self.csv_path:
            self._write_csv(stats, logs or {})

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write_summaries(self, epoch, stats):
        with self._writer.as_default(step=epoch):
            tf.summary.scalar("dact/ponder_cost", stats["ponder_cost"])
            tf.summary.scalar("dact/mean_layers_executed", stats["mean_layers_executed"])
            tf.summary.scalar("dact/ideal_speedup", stats["ideal_speedup"])
            for n, (h, r) in enumerate(
                zip(stats["halting_mean"], stats["exit_rate"]), start=1
            ):
                tf.summary.scalar(f"dact/halting_mean/block_{n:02d}", h)
                tf.summary.scalar(f"dact/exit_rate/block_{n:02d}", r)
            exits = np.repeat(
                np.arange(1, stats["num_layers"] + 1), stats["layers_histogram"]
            )
            tf.summary.histogram(
                "dact/layers_executed", exits, buckets=stats["num_layers"]
            )
        self._writer.flush()

    def _write_csv(self, stats, logs):
        n = stats["num_layers"]
        header = (
            ["epoch", "num_examples", "ponder_cost", "mean_layers_executed",
             "ideal_speedup", "train_ponder_cost"]
            + [f"halting_mean_{i}" for i in range(1, n + 1)]
            + [f"exit_rate_{i}" for i in range(1, n + 1)]
            + [f"layers_{i}" for i in range(1, n + 1)]
        )
        row = (
            [stats["epoch"], stats["num_examples"], stats["ponder_cost"],
             stats["mean_layers_executed"], stats["ideal_speedup"],
             logs.get("ponder_cost", "")]
            + stats["halting_mean"]
            + stats["exit_rate"]
            + stats["layers_histogram"]
        )
        new = not os.path.exists(self.csv_path) or os.path.getsize(self.csv_path) == 0
        os.makedirs(os.path.dirname(os.path.abspath(self.csv_path)), exist_ok=True)
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(header)
            writer.writerow(row)
