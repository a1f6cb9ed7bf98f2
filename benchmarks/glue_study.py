r"""Accuracy vs blocks executed on GLUE dev sets: DACT at several tau vs plain fine-tuning.

For each task it fine-tunes (1) a plain keras-hub `BertTextClassifier` on the
same backbone, data pipeline and budget (the full-depth score), and (2) a DACT
model per tau, then evaluates each on the dev set: the task metric(s), mean
blocks executed, the blocks histogram and the ideal speedup. Every point is
a model directory under `--out_dir` with a `result.json`; finished points are
skipped, so an interrupted study resumes where it stopped. Writes
`results/glue_study.csv` and `GLUE_STUDY.md` (next to this file by default).

Usage:
    PYTHONPATH=. python -m benchmarks.glue_study --glue_dir=GLUE_DIR \
        --tasks=sst2,mrpc --taus=0.03,0.06,0.1 --max_train_examples=2000
"""

import csv
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks import bench_utils  # noqa: E402

flags.DEFINE_string("glue_dir", None, "GLUE folder: <TASK>/{train,dev}.tsv, as GLUE distributes them (required).")
flags.DEFINE_list("tasks", ["sst2", "mrpc", "rte", "cola", "stsb"], "GLUE tasks.")
flags.DEFINE_list("taus", ["0.03", "0.06", "0.1"], "DACT tau values.")
flags.DEFINE_string("out_dir", "runs/glue_study", "Model directories, one per point.")
flags.DEFINE_string("backbone", "minilm_l6", "Backbone spec.")
flags.DEFINE_integer("max_train_examples", 2000, "Training examples per task (seeded subset order).")
flags.DEFINE_integer("max_eval_examples", None, "Dev examples per task.")
flags.DEFINE_integer("sequence_length", 64, "Tokens per example.")
flags.DEFINE_integer("epochs", 3, "Epochs per point.")
flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate.")
flags.DEFINE_float("warmup_epochs", 1.0, "DACT: tau grows from 0 over this many epochs.")
flags.DEFINE_float("halting_bias", 1.0, "DACT: initial halting bias.")
flags.DEFINE_string("results_md", os.path.join(os.path.dirname(__file__), "GLUE_STUDY.md"), "Markdown table.")
flags.DEFINE_string("results_csv", os.path.join(os.path.dirname(__file__), "results", "glue_study.csv"), "CSV table.")
FLAGS = flags.FLAGS


def _data_config(task):
    from dact_tf.training import train_lib

    return train_lib.DataConfig(
        task=task, data_dir=FLAGS.glue_dir, sequence_length=FLAGS.sequence_length,
        batch_size=32, max_train_examples=FLAGS.max_train_examples,
        max_eval_examples=FLAGS.max_eval_examples,
    )


def _plain_point(task, model_dir):
    """Fine-tunes keras-hub's BertTextClassifier: the full-depth reference."""
    import keras
    import keras_hub
    import numpy as np

    from dact_tf import data as dact_data
    from dact_tf.training import train_lib
    from dact_tf.models import backbones

    data_config = _data_config(task)
    num_classes, regression, _, metric_task = train_lib.task_info(data_config)
    keras.utils.set_random_seed(data_config.seed)
    backbone, tokenizer = backbones.load_backbone(
        FLAGS.backbone, max_sequence_length=FLAGS.sequence_length
    )
    pre = backbones.make_preprocessor(tokenizer, sequence_length=FLAGS.sequence_length)
    ds = train_lib.make_datasets(data_config, pre)
    model = keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=1 if regression else num_classes,
        preprocessor=None, activation=None,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
        loss=(keras.losses.MeanSquaredError() if regression
              else keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
    )
    model.fit(ds["train"], epochs=FLAGS.epochs, verbose=2)
    preds, labels = [], []
    for x, y in ds["validation"]:
        out = model(x, training=False).numpy()
        preds.append(out[:, 0] if regression else out.argmax(-1))
        labels.append(y.numpy())
    preds, labels = np.concatenate(preds), np.concatenate(labels)
    result = dict(dact_data.task_metrics(metric_task, labels, preds))
    n = backbone.num_layers
    result.update(mean_layers_executed=float(n), num_layers=n, ideal_speedup=1.0,
                  layers_histogram=[0] * (n - 1) + [len(labels)], num_examples=len(labels))
    return result


def _dact_point(task, tau, model_dir):
    from dact_tf.training import train_lib

    data_config = _data_config(task)
    model_config = train_lib.ModelConfig(
        backbone=FLAGS.backbone, tau=tau, halting_bias=FLAGS.halting_bias,
        tau_warmup_epochs=FLAGS.warmup_epochs,
    )
    train_config = train_lib.TrainConfig(
        epochs=FLAGS.epochs, learning_rate=FLAGS.learning_rate, verbose=2
    )
    model, pre, _ = train_lib.train(model_dir, data_config, model_config, train_config)
    _, _, _, metric_task = train_lib.task_info(data_config)
    dev = train_lib.make_datasets(data_config, pre, splits=("validation",))["validation"]
    early, labels = train_lib.predict_dataset(model, dev)
    result = train_lib.results_from_outputs(model, early, labels, metric_task)
    full, _ = train_lib.predict_dataset(model, dev, full_depth=True)
    key = "scores" if model.task == "regression" else "predictions"
    if key == "predictions":
        result["early_equals_full_depth"] = bool((early[key] == full[key]).all())
    return result


def main(argv):
    del argv
    points = []
    for task in FLAGS.tasks:
        points.append((task, "plain", None))
        points.extend((task, "dact", float(t)) for t in FLAGS.taus)
    rows = []
    for task, method, tau in points:
        name = method if tau is None else f"{method}_tau{tau:g}"
        model_dir = os.path.join(FLAGS.out_dir, task, name)
        path = os.path.join(model_dir, "result.json")
        if not os.path.exists(path):
            logging.info("Training %s %s", task, name)
            os.makedirs(model_dir, exist_ok=True)
            start = time.time()
            result = (_plain_point(task, model_dir) if method == "plain"
                      else _dact_point(task, tau, model_dir))
            result.update(task=task, method=method, tau=tau, train_seconds=time.time() - start)
            with open(path + ".tmp", "w") as f:
                json.dump(result, f, indent=2, sort_keys=True)
            os.replace(path + ".tmp", path)
        with open(path) as f:
            rows.append(json.load(f))
        _write_tables(rows)


def _metric_names(row):
    return [k for k in ("accuracy", "f1", "matthews_corrcoef", "pearson", "spearman") if k in row]


def _write_tables(rows):
    os.makedirs(os.path.dirname(FLAGS.results_csv), exist_ok=True)
    keys = ["task", "method", "tau", "accuracy", "f1", "matthews_corrcoef", "pearson",
            "spearman", "mean_layers_executed", "ideal_speedup", "num_examples", "train_seconds"]
    with open(FLAGS.results_csv, "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [
        "# GLUE dev: DACT vs plain fine-tuning (all-MiniLM-L6-v2)",
        "",
        f"Command: `PYTHONPATH=. python -m benchmarks.glue_study --tasks={','.join(FLAGS.tasks)} "
        f"--taus={','.join(FLAGS.taus)} --max_train_examples={FLAGS.max_train_examples} "
        f"--epochs={FLAGS.epochs} --sequence_length={FLAGS.sequence_length} "
        f"--learning_rate={FLAGS.learning_rate}`",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}. Training subset: the first {FLAGS.max_train_examples} "
        "training rows of each task; full dev sets.",
        "",
        "| task | method | tau | metric(s) | mean blocks | ideal speedup | examples |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        metrics = ", ".join(f"{k} {r[k]:.4f}" for k in _metric_names(r))
        tau = "" if r["tau"] is None else f"{r['tau']:g}"
        lines.append(f"| {r['task']} | {r['method']} | {tau} | {metrics} | "
                     f"{r['mean_layers_executed']:.2f} / {r['num_layers']} | "
                     f"{r['ideal_speedup']:.2f}x | {r['num_examples']} |")
    bench_utils.write_generated_markdown(FLAGS.results_md, "\n".join(lines))


if __name__ == "__main__":
    flags.mark_flag_as_required("glue_dir")
    app.run(main)
