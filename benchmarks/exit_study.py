r"""Accuracy vs blocks executed: DACT against PABEE, DeeBERT and static truncation.

For each task it trains, on the same backbone, data pipeline and budget
(`dact_tf.training.train_lib.train`, what `dact-tf train --method=...` runs):

- DACT at each `--taus` (one model per tau), and with `dact_warm` in
  `--methods` also warm-started from the full-depth static model (a
  warm-up stage of plain fine-tuning, DACT.md section 2); `dact_conf` is
  `dact_warm` with halting units that also read their answer's confidence
  (`--halting_confidence`),
- PABEE once, evaluated at each `--patiences`,
- DeeBERT once (two stages), evaluated at each `--entropy_thresholds`,
- DACT's relaxed rule (`dact_relaxed`, no guarantee, no training): a
  trained DACT model exits once its budget `p_n` is below each
  `--relaxed_epsilons`,
- static truncation at each `--static_layers` k (one model per k; k = N is
  the plain full-depth fine-tuned score with the same head and pooling).

Each point is evaluated on the dev set (task metric, mean blocks executed,
blocks histogram) and its model is exported as a SavedModel whose
`serving_default` (early exit) is timed against its `full_depth` signature
on `--timing_examples` dev examples, interleaved (the measured speedup).

Every trained model is a directory under `--out_dir/<task>/`; every
evaluated point writes `points/<name>.json`. Finished points and models are
skipped, so an interrupted study resumes where it stopped. The tables hold
every finished point under `--out_dir` (all tasks). Writes
`results/exit_study.csv`, `EXIT_STUDY.md` and `exit_study_<task>.png`
(metric against mean blocks executed, one curve per method) next to this
file.

Usage (from the repository root):
    PYTHONPATH=. python -m benchmarks.exit_study --glue_dir=GLUE_DIR --tasks=sst2
"""

import csv
import json
import os
import shlex
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks import bench_utils  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ("static", "dact", "dact_warm", "dact_conf", "dact_frozen", "dact_shared", "dact_relaxed",
           "pabee", "deebert")
METRIC = {"sst2": "accuracy", "mrpc": "f1", "rte": "accuracy", "cola": "matthews_corrcoef",
          "stsb": "pearson", "qnli": "accuracy"}

flags.DEFINE_string("glue_dir", None, "GLUE folder: <TASK>/{train,dev}.tsv, as GLUE distributes them (required).")
flags.DEFINE_list("tasks", ["sst2"], "GLUE tasks.")
flags.DEFINE_list("methods", ["static", "dact", "pabee", "deebert"], f"Methods to run, from {METHODS}; dact_warm is DACT warm-started from the full-depth static model (run static first), dact_frozen the same with the backbone frozen (heads only), dact_conf the same as dact_warm with halting units that also read their answer's confidence (--halting_confidence), dact_shared DACT with one head shared by all blocks.")
flags.DEFINE_float("halting_confidence", -4.0, "dact_conf: the initial weight of each halting unit on its answer's confidence.")
flags.DEFINE_list("taus", ["0.06", "0.15", "0.3"], "DACT: tau values.")
flags.DEFINE_list("patiences", ["1", "2", "3", "4"], "PABEE: patience values.")
flags.DEFINE_list("entropy_thresholds", ["0.05", "0.15", "0.3", "0.45", "0.6"], "DeeBERT: thresholds (nats).")
flags.DEFINE_string("relaxed_from", "dact_warm_tau0.3", "dact_relaxed: the trained DACT model (name under <out_dir>/<task>/) to evaluate with the relaxed rule.")
flags.DEFINE_list("relaxed_epsilons", ["0.05", "0.1", "0.2", "0.3"], "dact_relaxed: exit once the budget p_n is below this (no guarantee).")
flags.DEFINE_list("static_layers", ["1", "2", "3", "4", "6"], "Static: blocks kept.")
flags.DEFINE_string("out_dir", "runs/exit_study", "Model directories and point results.")
flags.DEFINE_string("reuse_dact_from", "runs/glue_study", "Reuse DACT models trained by glue_study with the same budget (<dir>/<task>/dact_tau<t>/); '' to always train.")
flags.DEFINE_string("backbone", "minilm_l6", "Backbone spec.")
flags.DEFINE_integer("max_train_examples", 1000, "Training examples per task.")
flags.DEFINE_integer("sequence_length", 64, "Tokens per example.")
flags.DEFINE_integer("epochs", 2, "Epochs (DeeBERT: per stage).")
flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate.")
flags.DEFINE_float("tau_warmup_epochs", 1.0, "DACT: epochs over which tau ramps up linearly from 0.")
flags.DEFINE_integer("timing_examples", 256, "Dev examples timed per point (batch 32).")
flags.DEFINE_integer("timing_repeats", 3, "Interleaved timing repeats (best of).")
flags.DEFINE_string("results_md", os.path.join(HERE, "EXIT_STUDY.md"), "Markdown table.")
flags.DEFINE_string("results_csv", os.path.join(HERE, "results", "exit_study.csv"), "CSV table.")
flags.DEFINE_string("plot_dir", HERE, "Where the plots go.")
FLAGS = flags.FLAGS


def _data_config(task):
    from dact_tf.training import train_lib

    return train_lib.DataConfig(
        task=task, data_dir=FLAGS.glue_dir, sequence_length=FLAGS.sequence_length,
        batch_size=32, max_train_examples=FLAGS.max_train_examples,
    )


def _trained(task, name, model_config):
    """Loads the model dir `<out_dir>/<task>/<name>`, training it if needed."""
    from dact_tf.training import train_lib

    model_dir = os.path.join(FLAGS.out_dir, task, name)
    reuse = os.path.join(FLAGS.reuse_dact_from or "", task, name)  # glue_study's dact_tau*
    if FLAGS.reuse_dact_from and os.path.exists(os.path.join(reuse, train_lib.MODEL_FILE)):
        model_dir = reuse
    elif not os.path.exists(os.path.join(model_dir, train_lib.MODEL_FILE)):
        logging.info("Training %s %s", task, name)
        start = time.time()
        train_lib.train(
            model_dir, _data_config(task), model_config,
            train_lib.TrainConfig(epochs=FLAGS.epochs, learning_rate=FLAGS.learning_rate,
                                  verbose=2),
        )
        train_lib.write_json(os.path.join(model_dir, "train_seconds.json"),
                             {"seconds": time.time() - start})
    return model_dir


def _models(task):
    """`(method, knob, model name, ModelConfig)` per model to train."""
    from dact_tf.training import train_lib

    common = dict(backbone=FLAGS.backbone, tau_warmup_epochs=FLAGS.tau_warmup_epochs)
    for method in FLAGS.methods:
        if method == "dact":
            for tau in FLAGS.taus:
                yield method, float(tau), f"dact_tau{float(tau):g}", train_lib.ModelConfig(
                    tau=float(tau), **common)
        elif method == "dact_relaxed":
            # No training: a trained DACT model with the relaxed (unguaranteed) rule.
            yield method, None, FLAGS.relaxed_from, None
        elif method == "dact_shared":
            # One head shared by all blocks (DACT.md leaves it open).
            for tau in FLAGS.taus:
                yield method, float(tau), f"dact_shared_tau{float(tau):g}", train_lib.ModelConfig(
                    tau=float(tau), shared_heads=True, **common)
        elif method in ("dact_warm", "dact_frozen", "dact_conf"):
            # A warm-up stage: DACT training starts from the full-depth static
            # model; dact_frozen then trains the DACT heads only; dact_conf's
            # halting units also read their answer's confidence.
            full = os.path.join(FLAGS.out_dir, task, f"static_k{max(map(int, FLAGS.static_layers))}")
            confidence = FLAGS.halting_confidence if method == "dact_conf" else 0.0
            for tau in FLAGS.taus:
                yield method, float(tau), f"{method}_tau{float(tau):g}", train_lib.ModelConfig(
                    tau=float(tau), init_from=full, freeze_backbone=method == "dact_frozen",
                    halting_confidence=confidence, **common)
        elif method == "static":
            for k in FLAGS.static_layers:
                yield method, int(k), f"static_k{int(k)}", train_lib.ModelConfig(
                    method="static", num_layers=int(k), head_loss_weight=0.0, **common)
        elif method in ("pabee", "deebert"):
            yield method, None, method, train_lib.ModelConfig(method=method, **common)
        else:
            raise app.UsageError(f"Unknown method {method!r}.")


def _knobs(method, knob):
    if method == "pabee":
        return [("patience", int(p)) for p in FLAGS.patiences]
    if method == "deebert":
        return [("entropy_threshold", float(t)) for t in FLAGS.entropy_thresholds]
    if method == "dact_relaxed":
        return [("halting_epsilon", float(e)) for e in FLAGS.relaxed_epsilons]
    return [("tau" if method.startswith("dact") else "k", knob)]


def _time_export(model, export_root, timing_batches):
    """Exports `model` and times `serving_default` vs `full_depth` (interleaved)."""
    import tensorflow as tf

    from dact_tf import export

    shutil.rmtree(export_root, ignore_errors=True)
    path = export.export_saved_model(model, export_root)
    loaded = tf.saved_model.load(path)
    fns = {s: loaded.signatures[s] for s in ("serving_default", "full_depth")}
    batches = [{k: tf.cast(v, tf.int32) for k, v in b.items()} for b in timing_batches]
    times = {s: [] for s in fns}
    for s, fn in fns.items():  # warm up
        fn(**batches[0])
    with bench_utils.NoGC():
        for _ in range(FLAGS.timing_repeats):
            for s, fn in fns.items():
                start = time.perf_counter()
                for b in batches:
                    fn(**b)["layers_executed"].numpy()
                times[s].append(time.perf_counter() - start)
    early, full = min(times["serving_default"]), min(times["full_depth"])
    shutil.rmtree(export_root, ignore_errors=True)  # ~95 MB each
    return {"early_exit_s": early, "full_depth_s": full, "measured_speedup": full / early}


def _point(task, method, knob_name, knob, model_dir, dev, timing_batches):
    from dact_tf.training import train_lib

    model, _, _ = train_lib.load_model_dir(model_dir)
    if knob_name in ("patience", "entropy_threshold"):
        model.configure_exit(**{knob_name: knob})
    elif knob_name == "halting_epsilon":
        model.configure_exit(halting_rule="relaxed", halting_epsilon=knob)
    _, _, _, metric_task = train_lib.task_info(_data_config(task))
    result = train_lib.evaluate(model, dev, metric_task)
    result.update(_time_export(model, os.path.join(model_dir, "export_tmp"), timing_batches))
    seconds = os.path.join(model_dir, "train_seconds.json")
    if os.path.exists(seconds):
        with open(seconds) as f:
            result["train_seconds"] = json.load(f)["seconds"]
    result.update(task=task, method=method, knob=knob_name, value=knob, model_dir=model_dir)
    return result


def main(argv):
    del argv
    from dact_tf.training import train_lib
    from dact_tf.models import backbones

    for task in FLAGS.tasks:
        _, tokenizer = backbones.load_backbone(FLAGS.backbone, max_sequence_length=FLAGS.sequence_length)
        pre = backbones.make_preprocessor(tokenizer, sequence_length=FLAGS.sequence_length)
        dev = train_lib.make_datasets(_data_config(task), pre, splits=("validation",))["validation"]
        timing = [x for x, _ in dev.unbatch().take(FLAGS.timing_examples).batch(32)]
        points_dir = os.path.join(FLAGS.out_dir, task, "points")
        os.makedirs(points_dir, exist_ok=True)
        for method, knob, name, model_config in _models(task):
            for knob_name, value in _knobs(method, knob):
                path = os.path.join(points_dir, f"{name}_{knob_name}{value:g}.json")
                if not os.path.exists(path):
                    model_dir = _trained(task, name, model_config)
                    logging.info("Evaluating %s %s %s=%g", task, name, knob_name, value)
                    train_lib.write_json(path, _point(task, method, knob_name, value,
                                                      model_dir, dev, timing))
                _write_outputs(_collect_rows())


def _collect_rows():
    """Every finished point under --out_dir (all tasks, not only this run's)."""
    import glob

    order = {m: i for i, m in enumerate(METHODS)}
    tasks = list(METRIC)
    rows = []
    for path in glob.glob(os.path.join(FLAGS.out_dir, "*", "points", "*.json")):
        with open(path) as f:
            rows.append(json.load(f))
    return sorted(rows, key=lambda r: (tasks.index(r["task"]) if r["task"] in tasks else 99,
                                       order.get(r["method"], 9), r["value"]))


def _with_common_baseline(rows):
    """Adds speedups against each task's full backbone run at full depth.

    A static model with k blocks is compared with its own k-block full
    depth by `measured_speedup`; `speedup_vs_full_model` compares every
    point's early-exit time with the median full-depth time of the task's
    N-block models (same timing set, other moments of the run), and
    `ideal_vs_full_model` is N / mean blocks.
    """
    out = []
    for r in rows:
        same = [p for p in rows if p["task"] == r["task"]]
        n = max(p["num_layers"] for p in same)
        ref = sorted(p["full_depth_s"] for p in same if p["num_layers"] == n)
        r = dict(r)
        r["ideal_vs_full_model"] = n / r["mean_layers_executed"]
        if ref:
            r["speedup_vs_full_model"] = ref[len(ref) // 2] / r["early_exit_s"]
        out.append(r)
    return out


def _write_outputs(rows):
    rows = _with_common_baseline(rows)
    os.makedirs(os.path.dirname(FLAGS.results_csv), exist_ok=True)
    keys = ["task", "method", "knob", "value", "accuracy", "f1", "matthews_corrcoef", "pearson",
            "spearman", "mean_layers_executed", "num_layers", "ideal_vs_full_model",
            "speedup_vs_full_model", "measured_speedup", "early_exit_s", "full_depth_s",
            "num_examples", "train_seconds"]
    with open(FLAGS.results_csv, "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    env = bench_utils.environment()
    lines = [
        "# Early-exit methods on GLUE dev: DACT vs PABEE, DeeBERT, static truncation",
        "",
        "Command of the last run (from the repository root; the table also holds the points "
        "that earlier runs with other `--tasks`/`--methods` left in `--out_dir`):",
        "",
        "    PYTHONPATH=. python -m benchmarks.exit_study "
        + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "",
        f"Machine: {env['cpu_model']}, {env['cpu_cores']} cores, "
        f"{', '.join(env['gpus']) or 'no GPU'}; {env['date_utc']}; commit "
        f"`{env['git_commit'][:10]}`. Backbone `{FLAGS.backbone}`; the first "
        f"{FLAGS.max_train_examples} training rows, {FLAGS.epochs} epochs (DeeBERT: per stage), "
        f"sequence length {FLAGS.sequence_length}, Adam {FLAGS.learning_rate:g}, DACT's tau ramped "
        f"up over {FLAGS.tau_warmup_epochs:g} epochs; full dev sets.",
        "",
        "Columns: *blocks*, mean blocks executed on dev; *ideal*, N / blocks; *measured*, the "
        "exported SavedModel's `serving_default` against the same export's `full_depth` "
        f"({FLAGS.timing_examples} dev examples, batch 32, best of {FLAGS.timing_repeats} "
        "interleaved runs; for a static model both run its k blocks, so about 1). The CSV also has "
        "`speedup_vs_full_model` (early-exit time against the median full-depth time of the "
        "task's N-block exports), measured at other moments of a long run on a shared machine: "
        "too noisy to print here.",
        "",
        "| task | method | knob | metric | blocks | ideal | measured |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        metric = METRIC.get(r["task"], "accuracy")
        lines.append(
            f"| {r['task']} | {r['method']} | {r['knob']}={r['value']:g} | "
            f"{metric} {r[metric]:.4f} | {r['mean_layers_executed']:.2f} | "
            f"{r['ideal_vs_full_model']:.2f}x | {r['measured_speedup']:.2f}x |"
        )
    bench_utils.write_generated_markdown(FLAGS.results_md, "\n".join(lines))
    _plot(rows)


def _plot(rows):
    plt = bench_utils.pyplot()
    if plt is None:
        return
    for task in sorted({r["task"] for r in rows}):
        metric = METRIC.get(task, "accuracy")
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in METHODS:
            pts = sorted((r["mean_layers_executed"], r[metric]) for r in rows
                         if r["task"] == task and r["method"] == method)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method)
        ax.set_xlabel("mean blocks executed")
        ax.set_ylabel(f"dev {metric}")
        ax.set_title(f"{task}: {metric} vs compute ({FLAGS.backbone})")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(FLAGS.plot_dir, f"exit_study_{task}.png"), dpi=120)
        plt.close(fig)


if __name__ == "__main__":
    flags.mark_flag_as_required("glue_dir")
    app.run(main)
