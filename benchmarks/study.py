r"""The accuracy-per-block study: DACT's default recipe against the baselines.

For each task and seed it trains, on the same backbone, data, held-out rows
and fine-tuning recipe (`dact_tf.training.train_lib.train`: AdamW, warm-up, linear
decay, best epoch on held-out training rows):

- `full`: plain full-depth fine-tuning (`--method=static`, every block). It
  is also stage 1 of the DACT recipe and of DeeBERT, so those two start from
  it instead of training it again;
- `static`: static truncation to k blocks (`--static_layers`);
- `dact`: the default recipe of `dact-tf train` (stage 2 from `full`,
  self-distillation, tau steered to the default target of half the blocks
  and the halting calibrated to it on the held-out rows: `knob=default`),
  and the same trained model re-calibrated after training to each of
  `--target_blocks` (`knob=target<K>`; see `dact_tf.calibration.halting_bias`);
- `dact_paper`: the paper's form (loss on `a_N` plus the ponder cost, no
  per-block or distillation loss, no stage 1, no target: tau decides), and
  calibrated after training to the same targets;
- `dact_t2` (a variant, not in the default plan): the default recipe trained
  towards 2 held-out blocks instead of half the blocks (does training for
  the budget beat re-calibrating to it?);
- `dact_blocks` (a variant): the default recipe with `ponder="blocks"`, a
  ponder cost that counts the blocks the halting rule runs instead of the
  paper's `sum_n p_n` (`dact_tf.ops.expected_blocks`);
- `pabee` (one model, each of `--patiences`) and `deebert` (stage 2 from
  `full`, each of `--entropy_thresholds`).

Every point is evaluated on the task's dev set (never used for training or
model selection). For each DACT model the mean blocks under the paper's
halting rule are also recorded (`paper_rule_blocks`): the tight rule gives
the same predictions and never more blocks.

The study is resumable per point: models live under `--out_dir/<task>/seed<s>/`
and every finished point is a JSON file under `--out_dir/points/`; a re-run
skips finished points and models. After each point the CSV (one row per
task, method, knob, seed) and `STUDY.md`'s generated part are rewritten,
and with `--commit` they are committed to git at once (a long run may be
interrupted). Plots (metric vs mean blocks, mean and std over seeds) come
from `--plot_only`.

Usage (from the repository root):
    PYTHONPATH=. python -m benchmarks.study --glue_dir=GLUE_DIR \
        --tasks=sst2,mrpc,stsb,rte,cola --seeds=0,1,2 --commit
"""

import csv
import glob
import json
import os
import shlex
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks import bench_utils  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ("full", "static", "dact", "dact_paper", "pabee", "deebert",
           # Variants of the recipe, for choosing it (STUDY.md, "How the recipe was chosen").
           "dact_nodistill", "dact_conf", "dact_noconf", "dact_onestage", "dact_t2",
           "dact_blocks")
METRIC = {"sst2": "accuracy", "mrpc": "f1", "rte": "accuracy", "cola": "matthews_corrcoef",
          "stsb": "pearson", "qnli": "accuracy"}
SEQ_LENGTH = {"sst2": 64, "cola": 64}  # pair tasks: 128
CSV_KEYS = ("task", "method", "knob", "seed", "train_examples", "metric_name", "metric",
            "mean_layers_executed", "backbone_layers", "accuracy", "paper_rule_blocks",
            "holdout_metric", "layers_histogram", "epochs", "train_seconds", "model_dir",
            "pass_through")

flags.DEFINE_string("glue_dir", None, "GLUE folder: <TASK>/{train,dev}.tsv, as GLUE distributes them (required).")
flags.DEFINE_list("tasks", ["sst2"], "GLUE tasks, in the order to run.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_list("methods", ["full", "dact", "static", "pabee", "deebert", "dact_paper"],
                  f"Methods, in the order to run, from {METHODS}.")
flags.DEFINE_list("static_layers", ["1", "2", "3"], "static: blocks kept.")
flags.DEFINE_list("target_blocks", ["1.5", "2", "2.5", "4"], "DACT: mean blocks to re-calibrate the trained model to (its default is half the blocks).")
flags.DEFINE_list("patiences", ["1", "2", "3"], "PABEE: patience values.")
flags.DEFINE_list("entropy_thresholds", ["0.1", "0.2", "0.3", "0.45", "0.55", "0.62"],
                  "DeeBERT: thresholds (nats); 0.55 and 0.62 let a binary task reach 2.5 blocks.")
flags.DEFINE_string("schedule", None, "Comma-separated task:seed:method items to run in this order instead of the tasks x seeds x methods product (e.g. sst2:0:full,sst2:0:dact).")
flags.DEFINE_string("out_dir", "runs/study", "Model directories and finished points.")
flags.DEFINE_string("backbone", "minilm_l6", "Backbone spec.")
flags.DEFINE_integer("max_train_examples", None, "Training rows per task (None: all).")
flags.DEFINE_integer("epochs", 3, "Epochs per training stage.")
flags.DEFINE_float("learning_rate", None, "Peak learning rate (None: the TrainConfig default).")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_string("mixed_precision", "none", "Training precision (TrainConfig.mixed_precision): e.g. mixed_bfloat16, about 2x faster on CPUs with AVX512-BF16; DACT's halting math stays float32.")
flags.DEFINE_string("epochs_per_task", "", "Overrides of --epochs per task, e.g. sst2:1.")
flags.DEFINE_boolean("commit", False, "git-commit the CSV and STUDY.md after every finished point.")
flags.DEFINE_boolean("plot_only", False, "Only rewrite the tables and plots from finished points.")
flags.DEFINE_string("results_csv", os.path.join(HERE, "results", "study.csv"), "The CSV.")
flags.DEFINE_string("results_md", os.path.join(HERE, "STUDY.md"), "The Markdown tables.")
FLAGS = flags.FLAGS


def _data_config(task, seed):
    from dact_tf.training import train_lib

    return train_lib.DataConfig(
        task=task, data_dir=FLAGS.glue_dir, sequence_length=SEQ_LENGTH.get(task, 128),
        batch_size=FLAGS.batch_size, max_train_examples=FLAGS.max_train_examples, seed=int(seed),
    )


def _train_config(task):
    from dact_tf.training import train_lib

    epochs = dict(item.split(":") for item in FLAGS.epochs_per_task.split(",") if item)
    kwargs = dict(epochs=int(epochs.get(task, FLAGS.epochs)), verbose=2,
                  mixed_precision=FLAGS.mixed_precision)
    if FLAGS.learning_rate:
        kwargs["learning_rate"] = FLAGS.learning_rate
    return train_lib.TrainConfig(**kwargs)


def _model_dir(task, seed, name):
    return os.path.join(FLAGS.out_dir, task, f"seed{seed}", name)


def _model_configs(task, seed, method):
    """`(model name, ModelConfig)` of each model `method` needs, in order."""
    from dact_tf.training import train_lib

    base = train_lib.ModelConfig(backbone=FLAGS.backbone)
    full = _model_dir(task, seed, "full")
    if method == "full":
        return [("full", train_lib.full_depth_config(base))]
    if method == "static":
        return [(f"static_k{int(k)}", train_lib.dataclasses.replace(
            train_lib.full_depth_config(base), num_layers=int(k))) for k in FLAGS.static_layers]
    if method == "dact":  # the default recipe; stage 1 is the `full` model
        return [("dact", train_lib.dataclasses.replace(base, init_from=full))]
    if method == "dact_nodistill":  # dact_tf 0.8's recipe, warm-started
        return [(method, train_lib.dataclasses.replace(base, init_from=full, distill_weight=0.0))]
    if method == "dact_conf":  # halting units that read their answer's confidence
        return [(method, train_lib.dataclasses.replace(
            base, init_from=full, halting_confidence=-4.0))]
    if method == "dact_noconf":  # the paper's halting units, in the default recipe
        return [(method, train_lib.dataclasses.replace(
            base, init_from=full, halting_confidence=0.0))]
    if method == "dact_t2":  # the default recipe trained towards 2 held-out blocks, not 3
        return [(method, train_lib.dataclasses.replace(base, init_from=full, target_blocks=2.0))]
    if method == "dact_blocks":  # the ponder cost that counts the blocks run (ops.expected_blocks)
        return [(method, train_lib.dataclasses.replace(base, init_from=full, ponder="blocks"))]
    if method == "dact_onestage":  # no stage 1
        return [(method, train_lib.dataclasses.replace(base, full_depth_stage=False))]
    if method == "dact_paper":
        return [("dact_paper", train_lib.dataclasses.replace(
            base, head_loss_weight=0.0, distill_weight=0.0, halting_confidence=0.0,
            full_depth_stage=False, target_blocks=0, tau_warmup_epochs=1.0))]
    if method == "pabee":
        return [("pabee", train_lib.dataclasses.replace(
            base, method="pabee", distill_weight=0.0, halting_confidence=0.0))]
    if method == "deebert":  # stage 1 is the `full` model
        return [("deebert", train_lib.dataclasses.replace(
            base, method="deebert", init_from=full, distill_weight=0.0, halting_confidence=0.0))]
    raise app.UsageError(f"Unknown method {method!r}; use some of {METHODS}.")


def _train(task, seed, name, model_config, extra_callbacks=()):
    from dact_tf.training import train_lib

    model_dir = _model_dir(task, seed, name)
    if os.path.exists(os.path.join(model_dir, train_lib.MODEL_FILE)):
        return model_dir
    if model_config.init_from and not os.path.exists(
            os.path.join(model_config.init_from, train_lib.MODEL_FILE)):
        _train(task, seed, "full", _model_configs(task, seed, "full")[0][1])
    logging.info("Training %s seed %s %s", task, seed, name)
    start = time.time()
    import keras

    keras.backend.clear_session()
    train_lib.train(model_dir, _data_config(task, seed), model_config, _train_config(task),
                    extra_callbacks=extra_callbacks)
    train_lib.write_json(os.path.join(model_dir, "train_seconds.json"),
                         {"seconds": time.time() - start})
    return model_dir


def _knobs(method, name):
    if method == "pabee":
        return [(f"patience{int(p)}", {"patience": int(p)}) for p in FLAGS.patiences]
    if method == "deebert":
        return [(f"entropy{float(t):g}", {"entropy_threshold": float(t)})
                for t in FLAGS.entropy_thresholds]
    if method.startswith("dact"):
        return [("default", {})] + [(f"target{float(k):g}", {"target_blocks": float(k)})
                                    for k in FLAGS.target_blocks]
    if method == "static":
        return [(name.split("_k")[1], {})]
    return [("", {})]


def _point(task, seed, method, knob, settings, model_dir, datasets, metric_task,
           trained_pass_through=0):
    from dact_tf.calibration import halting_bias as calibration
    from dact_tf.training import train_lib

    model, _, config = train_lib.load_model_dir(model_dir)
    result = {}
    target = settings.get("target_blocks")
    if model.method == "dact":
        # Every DACT point is calibrated from the trained halting values, as
        # `dact-tf train` does after training (at most one point of the
        # held-out metric may go): the saved calibration is undone first,
        # so models trained before a change of the calibration are scored
        # with the current one.
        _undo_calibration(model, model_dir, trained_pass_through)
        trained_target = config["model"].get("target_blocks")
        if target is None and trained_target != 0:
            target = trained_target or model.num_layers / 2.0
        if target:
            result["calibration"] = calibration.calibrate_halting_bias(
                model, datasets["holdout"], target, metric_task=metric_task)
            result["pass_through"] = result["calibration"]["pass_through"]
    elif settings:
        model.configure_exit(**settings)
    dev = train_lib.evaluate(model, datasets["validation"], metric_task)
    holdout = train_lib.evaluate(model, datasets["holdout"], metric_task)
    metric_name = METRIC[task]
    result.update(
        task=task, method=method, knob=knob, seed=int(seed),
        train_examples=train_lib.dataset_sizes(_data_config(task, seed))[0],
        metric_name=metric_name, metric=dev[metric_name],
        mean_layers_executed=dev["mean_layers_executed"], backbone_layers=dev["num_layers"],
        accuracy=dev.get("accuracy"), holdout_metric=holdout[metric_name],
        layers_histogram=" ".join(map(str, dev["layers_histogram"])),
        epochs=config["train"]["epochs"], dev=dev,
        # Relative to the repository root, so the committed CSV names no machine's paths.
        model_dir=os.path.relpath(os.path.abspath(model_dir), os.path.dirname(HERE)),
    )
    if model.method == "dact":
        model.configure_exit(halting_rule="paper")
        result["paper_rule_blocks"] = train_lib.evaluate(
            model, datasets["validation"], metric_task)["mean_layers_executed"]
    seconds = os.path.join(model_dir, "train_seconds.json")
    if os.path.exists(seconds):
        with open(seconds) as f:
            result["train_seconds"] = round(json.load(f)["seconds"])
    return result


def _undo_calibration(model, model_dir, trained_pass_through=0):
    """Puts back the halting biases training left, before `calibration.json`'s shift
    (with the first `trained_pass_through` blocks passing their budget on, as in training)."""
    from dact_tf.training import train_lib

    path = os.path.join(model_dir, train_lib.CALIBRATION_FILE)
    if os.path.exists(path):
        with open(path) as f:
            shift = json.load(f).get("shift", 0.0)
        heads = model.encoder.heads
        heads.pass_budget_through(0)
        heads.shift_halting_bias(-shift)
        heads.pass_budget_through(trained_pass_through)


def _evaluation_datasets(task, seed):
    """`{"holdout": ..., "validation": ...}`: the rows every point is scored on."""
    from dact_tf.training import train_lib
    from dact_tf.models import backbones

    _, tokenizer = backbones.load_backbone(FLAGS.backbone, max_sequence_length=8)
    data_config = _data_config(task, seed)
    preprocessor = backbones.make_preprocessor(
        tokenizer, sequence_length=data_config.sequence_length)
    return train_lib.make_datasets(data_config, preprocessor, splits=("holdout", "validation"))


def _schedule():
    """The `(task, seed, method)` points to run, checked before any training starts."""
    from dact_tf import exits
    from dact_tf.data import glue

    if FLAGS.schedule:
        items = [tuple(item.strip().split(":"))
                 for item in FLAGS.schedule.split(",") if item.strip()]
    else:
        items = [(t, s, m) for t in FLAGS.tasks for s in FLAGS.seeds for m in FLAGS.methods]
    for item in items:
        name = ":".join(item)
        if len(item) != 3:
            raise app.UsageError(f"--schedule item {name!r} is not TASK:SEED:METHOD.")
        task, seed, method = item
        if task not in METRIC:
            raise app.UsageError(f"Unknown task {task!r} in {name!r}; use one of {sorted(METRIC)}.")
        if not seed.isdigit():
            raise app.UsageError(f"Seed {seed!r} in {name!r} is not a non-negative integer.")
        # Each model's own exit-method check (e.g. DeeBERT refuses a regression
        # task), run here rather than when its training starts, hours in.
        kind = "regression" if glue.glue_task(task).is_regression else "classification"
        for _, model_config in _model_configs(task, seed, method):  # refuses unknown methods
            try:
                exits.get(model_config.method).check(
                    task=kind, shared_heads=model_config.shared_heads)
            except ValueError as error:
                raise app.UsageError(f"{name!r}: {error}") from None
    return items


def main(argv):
    del argv
    from dact_tf.training import train_lib

    schedule = _schedule()
    _import_committed_points()
    if not FLAGS.plot_only:
        datasets_cache = {}
        for task, seed, method in schedule:
            for name, model_config in _model_configs(task, seed, method):
                todo = [(k, s) for k, s in _knobs(method, name)
                        if not os.path.exists(_point_path(task, seed, method, k))]
                if not todo:
                    continue
                model_dir = _train(task, seed, name, model_config)
                key = (task, seed)
                if key not in datasets_cache:
                    datasets_cache = {key: _evaluation_datasets(task, seed)}
                metric_task = train_lib.task_info(_data_config(task, seed))[3]
                for knob, settings in todo:
                    logging.info("Evaluating %s seed %s %s %s", task, seed, method, knob)
                    result = _point(task, seed, method, knob, settings, model_dir,
                                    datasets_cache[key], metric_task)
                    train_lib.write_json(_point_path(task, seed, method, knob), result)
                    _write_outputs(_collect_rows(), plots=False)
                    if FLAGS.commit:
                        _commit(f"Study point: {task} seed {seed} {method} {knob or ''}: "
                                f"{result['metric_name']} {result['metric']:.4f} at "
                                f"{result['mean_layers_executed']:.2f} blocks")
    _write_outputs(_collect_rows(), plots=True)
    if FLAGS.commit:
        _commit("Study: tables and plots")


def _point_path(task, seed, method, knob):
    name = f"{task}_seed{seed}_{method}" + (f"_{knob}" if knob else "") + ".json"
    return os.path.join(FLAGS.out_dir, "points", name)


_CSV_TYPES = {"seed": int, "train_examples": int, "metric": float, "mean_layers_executed": float,
              "backbone_layers": int, "accuracy": float, "paper_rule_blocks": float,
              "holdout_metric": float, "epochs": int, "train_seconds": int,
              "pass_through": int}


def _import_committed_points():
    """Recreates the point files of rows already in `--results_csv`.

    Model directories and point files live under `--out_dir`, which is not
    committed; the CSV is. A run on a fresh clone therefore starts from the
    committed rows instead of recomputing them (and rewriting the CSV without
    them). Imported points carry `"imported": true` and lack the full `dev`
    report, which only the CSV's columns summarise.
    """
    if not os.path.exists(FLAGS.results_csv):
        return
    from dact_tf.training import train_lib

    with open(FLAGS.results_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        path = _point_path(row["task"], row["seed"], row["method"], row["knob"])
        if os.path.exists(path):
            continue
        point = {"imported": True}
        for key, value in row.items():
            if key in _CSV_TYPES and value in ("", None):
                continue
            point[key] = _CSV_TYPES[key](float(value)) if key in _CSV_TYPES else value
        os.makedirs(os.path.dirname(path), exist_ok=True)
        train_lib.write_json(path, point)


def _collect_rows():
    rows = []
    for path in sorted(glob.glob(os.path.join(FLAGS.out_dir, "points", "*.json"))):
        with open(path) as f:
            rows.append(json.load(f))
    tasks, methods = list(METRIC), list(METHODS)
    return sorted(rows, key=lambda r: (tasks.index(r["task"]), methods.index(r["method"]),
                                       r["knob"], r["seed"]))


def _commit(message):
    paths = [FLAGS.results_csv, FLAGS.results_md] + glob.glob(os.path.join(os.path.dirname(FLAGS.results_md), "study_*.png"))
    paths = [p for p in paths if os.path.exists(p)]
    for _ in range(5):  # another git command may hold the index lock
        added = subprocess.run(["git", "add", "--", *paths], capture_output=True)
        done = subprocess.run(["git", "commit", "-q", "-m", message, "--", *paths],
                              capture_output=True, text=True)
        if added.returncode == 0 and (done.returncode == 0 or "nothing" in done.stdout):
            return
        time.sleep(3)
    logging.warning("Could not commit the study point: %s", done.stderr)


def _groups(rows):
    """`{(task, method, knob): [rows over seeds]}`."""
    groups = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"], r["knob"]), []).append(r)
    return groups


def _mean_std(values):
    import numpy as np

    values = np.asarray(values, float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _write_outputs(rows, plots):
    os.makedirs(os.path.dirname(FLAGS.results_csv), exist_ok=True)
    with open(FLAGS.results_csv, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_KEYS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    env = bench_utils.environment()
    lines = [
        "# Accuracy per block: DACT's default recipe vs full depth, static truncation, "
        "PABEE and DeeBERT",
        "",
        "Generated by `benchmarks/study.py` from the finished points (the per-seed rows are in "
        "`results/study.csv`). Command of the last run, from the repository root:",
        "",
        "    PYTHONPATH=. python -m benchmarks.study "
        + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "",
        f"Machine: {env['cpu_model']}, {env['cpu_cores']} cores, "
        f"{', '.join(env['gpus']) or 'no GPU'}; last written {env['date_utc']}. Backbone "
        f"`{FLAGS.backbone}`; full training sets less each run's held-out rows (its "
        "`DataConfig`: runs before 2026-12-06 held out 10 %, at most 1,000 rows; later ones "
        "20 %, capped by `max_holdout_examples`, 60 % of them kept apart for the calibration), "
        "GLUE dev sets for "
        "every figure; sequence length 64 (SST-2, CoLA) or 128 (pairs). Mean ± std over the "
        "seeds listed (n).",
        "",
        "Mean blocks are the tight halting rule's (the default); DACT rows also give the "
        "paper's rule on the same model (identical predictions by construction) and the "
        "share of its blocks the tight rule saves.",
        "",
        "| task | method | knob | n | metric | mean blocks | paper's rule: blocks (saved) "
        "| held-out metric |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (task, method, knob), group in _groups(rows).items():
        m, s = _mean_std([r["metric"] for r in group])
        b, bs = _mean_std([r["mean_layers_executed"] for r in group])
        h, _ = _mean_std([r["holdout_metric"] for r in group])
        paper_blocks = [r.get("paper_rule_blocks") for r in group]
        paper = "-"  # only DACT rows record the paper's rule
        if None not in paper_blocks:
            p, _ = _mean_std(paper_blocks)
            paper = f"{p:.2f} ({100 * (1 - b / p):.1f} %)"
        lines.append(
            f"| {task} | {method} | {knob or '-'} | {len(group)} | "
            f"{group[0]['metric_name']} {m:.4f} ± {s:.4f} | {b:.2f} ± {bs:.2f} | {paper} | "
            f"{h:.4f} |"
        )
    bench_utils.write_generated_markdown(FLAGS.results_md, "\n".join(lines))
    if plots:
        _plot(rows)


def _plot(rows):
    plt = bench_utils.pyplot()
    if plt is None:
        return
    groups = _groups(rows)
    for task in sorted({r["task"] for r in rows}):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for method in METHODS:
            pts, seeds = [], []
            for (t, m, _), group in groups.items():
                if t == task and m == method:
                    y, ys = _mean_std([r["metric"] for r in group])
                    x, xs = _mean_std([r["mean_layers_executed"] for r in group])
                    pts.append((x, y, xs, ys))
                    seeds += [(r["mean_layers_executed"], r["metric"]) for r in group]
            if pts:
                pts.sort()
                xs, ys, xe, ye = zip(*pts)
                bars = ax.errorbar(xs, ys, xerr=xe, yerr=ye, marker="o", capsize=3, label=method,
                                   linestyle="-" if method.startswith(("static", "dact")) else ":")
                # Each seed's own point, faint: a mean over seeds can hide a split.
                ax.scatter(*zip(*seeds), s=18, alpha=0.5, color=bars[0].get_color(), linewidths=0)
        ax.set_xlabel("mean blocks executed (dev)")
        ax.set_ylabel(f"dev {METRIC[task]}")
        ax.set_title(f"{task}: {METRIC[task]} vs compute ({FLAGS.backbone})\n"
                     "mean ± std over seeds; small dots: each seed", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(os.path.dirname(FLAGS.results_md), f"study_{task}.png"), dpi=120)
        plt.close(fig)


if __name__ == "__main__":
    flags.mark_flag_as_required("glue_dir")
    app.run(main)
