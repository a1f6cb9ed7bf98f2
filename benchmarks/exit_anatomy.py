r"""Why an early-exit model wins or loses: its heads or its halting?

For each trained model directory (e.g. the exit study's), on the dev set and
on the training rows the model was trained on, writes
`train_lib.per_block_report`: every block's own head metric, for DACT the
accumulated answer `a_n` (the model's output is `a_N`), the mean halting
value and budget, and where the exit rule stops examples. For DACT models it
also asks what the same heads would give with DeeBERT's entropy rule (exit at
the first block whose answer `y_n` has entropy below S): if that beats the
model's own curve, the heads are good and the halting/mixing costs the
accuracy.

Writes `EXIT_ANATOMY.md` next to this file (the "## Notes" section of an
existing file is kept).

Usage (from the repository root):
    PYTHONPATH=. python -m benchmarks.exit_anatomy \
        --models=runs/exit_study/sst2/dact_warm_tau0.4,runs/exit_study/sst2/deebert
"""

import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks import bench_utils  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

flags.DEFINE_list("models", None, "Trained model directories.", required=True)
flags.DEFINE_string("glue_dir", None, "GLUE folder: <TASK>/{train,dev}.tsv, as GLUE distributes them (required).")
flags.DEFINE_integer("train_rows", 1000, "Also report on up to this many of the training rows the model was trained on (0: dev only).", lower_bound=0)
flags.DEFINE_list("entropy_thresholds", ["0.3", "0.5", "0.6", "0.65", "0.68"], "DACT models: the entropy rule on the same heads (nats).")
flags.DEFINE_string("results_md", os.path.join(HERE, "EXIT_ANATOMY.md"), "Markdown report.")
FLAGS = flags.FLAGS


def _entropy_rule(answers, labels, thresholds):
    """`[(S, accuracy, mean blocks)]`: DeeBERT's exit rule on per-block answers.

    `answers` is `[N, examples, C]` (a trace's `y_n`).
    """
    import numpy as np

    entropy = -(answers * np.log(np.maximum(answers, 1e-12))).sum(-1)  # [N, examples]
    rows = []
    for s in thresholds:
        below = entropy < s
        below[-1] = True  # the last block always answers
        exit_index = below.argmax(axis=0)
        pred = answers[exit_index, np.arange(len(labels))].argmax(-1)
        rows.append((s, float((pred == labels).mean()), float(exit_index.mean() + 1)))
    return rows


def _section(model_dir):
    from dact_tf.training import train_lib

    model, preprocessor, config = train_lib.load_model_dir(model_dir)
    data = dict(config["data"], data_dir=FLAGS.glue_dir, seed=0)
    data_config = train_lib.DataConfig(**data)
    _, _, _, metric_task = train_lib.task_info(data_config, config["label_names"])
    splits = ("validation", "train") if FLAGS.train_rows else ("validation",)
    datasets = train_lib.make_datasets(data_config, preprocessor, config["label_names"], splits)
    if FLAGS.train_rows:  # a shuffled sample of the rows it was trained on
        datasets["train"] = datasets["train"].unbatch().take(FLAGS.train_rows).batch(
            data_config.batch_size)
    lines = [f"## `{model_dir}` ({model.method}, {_knob(config)})", ""]
    for split in splits:
        logging.info("%s: %s", model_dir, split)
        trace, labels = train_lib.trace_dataset(model, datasets[split])  # one pass
        report = train_lib.per_block_from_trace(model, trace, labels, metric_task)
        name = ("dev" if split == "validation"
                else f"{report['num_examples']} of the training rows it was trained on")
        lines += [f"On {name}:", "", train_lib.format_per_block(report), ""]
        if model.method == "dact" and model.task != "regression":
            thresholds = [float(s) for s in FLAGS.entropy_thresholds]
            rule = _entropy_rule(trace["answers"], labels, thresholds)
            lines += [
                "The same heads with the entropy rule (exit at the first `y_n` whose entropy < S): "
                + "; ".join(f"S={s:g}: {acc:.3f} at {blocks:.2f} blocks" for s, acc, blocks in rule)
                + ".",
                "",
            ]
    return lines


def _knob(config):
    m = config["model"]
    method = m.get("method", "dact")
    if method == "dact":
        return f"tau {m['tau']:g}" + (", warm-started" if m.get("init_from") else "")
    if method == "static":
        return f"k={m.get('num_layers')}"
    return {"pabee": f"patience {m['patience']}",
            "deebert": f"entropy threshold {m['entropy_threshold']:g}"}[method]


def main(argv):
    del argv
    env = bench_utils.environment()
    lines = [
        "# Anatomy of early exit: heads vs halting, block by block",
        "",
        "Command (from the repository root):",
        "",
        "    PYTHONPATH=. python -m benchmarks.exit_anatomy "
        + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "",
        f"Machine: {env['cpu_model']}, {env['cpu_cores']} cores; {env['date_utc']}; commit "
        f"`{env['git_commit'][:10]}`.",
        "",
        "Columns: *head*, the metric of block n's own answer `y_n` on all examples; *a_n* (DACT), "
        "the accumulated answer after block n (the model's output is `a_N`; the guaranteed rule "
        "returns exactly its prediction); *mean h_n*, *mean p_n*, the halting value and budget; "
        "*exits*, examples the exit rule stops after block n; *exit accuracy*, the accuracy of "
        "what the model returns for them; *head accuracy at exit*, of `y_n` alone on them.",
        "",
    ]
    for model_dir in FLAGS.models:
        lines += _section(model_dir)
    bench_utils.write_generated_markdown(FLAGS.results_md, "\n".join(lines))
    logging.info("Wrote %s", FLAGS.results_md)


if __name__ == "__main__":
    flags.mark_flag_as_required("glue_dir")
    app.run(main)
