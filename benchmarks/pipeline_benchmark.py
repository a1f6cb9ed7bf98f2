r"""Training throughput: padding every batch to S vs length bucketing.

Trains the same DACT model (MiniLM-L6 by default) on the same SST-2 training
rows with `padding="max_length"` (every batch `[32, S]`, dact_tf's pipeline
before 0.9), `"batch"` (each batch cut to its longest example) and
`"bucket"` (similar lengths batched together, then cut), interleaved, and
reports training examples per second for each, measured in one run. Then it
checks that the three give the same evaluation metrics on the dev set (a
model's output for an example does not depend on the padding after it).

Writes `PIPELINE_RESULTS.md` next to this file.

Usage (from the repository root):
    PYTHONPATH=. python -m benchmarks.pipeline_benchmark --glue_dir=GLUE_DIR
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import bench_utils  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PADDINGS = ("max_length", "batch", "bucket")

flags.DEFINE_string("glue_dir", None, "GLUE folder (<TASK>/{train,dev}.tsv); default: the SST-2 sample dact_tf ships.")
flags.DEFINE_string("task", "sst2", "GLUE task.")
flags.DEFINE_string("backbone", "minilm_l6", "Backbone spec.")
flags.DEFINE_integer("sequence_length", 64, "S, tokens per example.")
flags.DEFINE_integer("batch_size", 32, "Examples per batch.")
flags.DEFINE_integer("steps", 60, "Timed training steps per padding and round.")
flags.DEFINE_integer("rounds", 2, "Interleaved rounds (best of).")
flags.DEFINE_integer("eval_examples", 872, "Dev examples for the same-metrics check.")
flags.DEFINE_string("results_md", os.path.join(HERE, "PIPELINE_RESULTS.md"), "Output table.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import keras
    import numpy as np

    from dact_tf import data as dact_data
    from dact_tf.training import train_lib
    from dact_tf.models import backbones
    from dact_tf.models.dact_classifier import DactClassifier

    glue_dir = FLAGS.glue_dir or dact_data.builtin_sst2_dir()
    keras.utils.set_random_seed(0)
    backbone, tokenizer = backbones.load_backbone(FLAGS.backbone, max_sequence_length=FLAGS.sequence_length)
    preprocessor = backbones.make_preprocessor(tokenizer, sequence_length=FLAGS.sequence_length)
    model = DactClassifier(backbone, num_classes=2, pooling="mean", head_loss_weight=1.0,
                           distill_weight=1.0, tau=0.06)
    model.compile(optimizer=keras.optimizers.AdamW(1e-5))
    iterators, lengths = {}, {}
    for padding in PADDINGS:
        config = train_lib.DataConfig(task=FLAGS.task, data_dir=glue_dir, batch_size=FLAGS.batch_size,
                                      sequence_length=FLAGS.sequence_length, padding=padding,
                                      holdout_fraction=0.0)
        train = train_lib.make_datasets(config, preprocessor, splits=("train",))["train"]
        iterators[padding] = iter(train.repeat())
        lengths[padding] = []
    step = model.make_train_function()  # noqa: F841 (Keras builds lazily)

    def run(padding, steps):
        it = iterators[padding]
        batches = [next(it) for _ in range(steps)]
        lengths[padding] += [int(b[0]["token_ids"].shape[1]) for b in batches]
        start = time.perf_counter()
        for x, y in batches:
            model.train_on_batch(x, y)
        return steps * FLAGS.batch_size / (time.perf_counter() - start)

    for padding in PADDINGS:  # warm-up: traces each shape family
        run(padding, 10)
    rates = {p: [] for p in PADDINGS}
    for _ in range(FLAGS.rounds):
        for padding in PADDINGS:
            rates[padding].append(run(padding, FLAGS.steps))
    best = {p: max(v) for p, v in rates.items()}

    # Same metrics on the dev set, whatever the padding (evaluation keeps order).
    metrics = {}
    for padding in PADDINGS:
        config = train_lib.DataConfig(task=FLAGS.task, data_dir=glue_dir, batch_size=FLAGS.batch_size,
                                      sequence_length=FLAGS.sequence_length, padding=padding,
                                      max_eval_examples=FLAGS.eval_examples)
        dev = train_lib.make_datasets(config, preprocessor, splits=("validation",))["validation"]
        start = time.perf_counter()
        outputs, labels = train_lib.predict_dataset(model, dev, full_depth=True)
        metrics[padding] = (float((outputs["predictions"] == labels).mean()),
                            outputs["probabilities"], time.perf_counter() - start)
    ref = metrics["max_length"][1]
    env = bench_utils.environment()
    lines = [
        "# Training throughput: padding vs length bucketing",
        "",
        f"Machine: {env['cpu_model']}, {env['cpu_cores']} cores, load {env['load_average_at_start'][0]:.1f} at start; {env['date_utc']}; commit {env['git_commit'][:10]}. Command: "
        "`PYTHONPATH=. python -m benchmarks.pipeline_benchmark "
        f"--glue_dir=<GLUE> --task={FLAGS.task} --steps={FLAGS.steps} --rounds={FLAGS.rounds}`.",
        f"Model: `{FLAGS.backbone}` DACT classifier (every block trained, distillation on), "
        f"batch {FLAGS.batch_size}, S = {FLAGS.sequence_length}; {FLAGS.task} training rows in "
        f"shuffled order. Rates are the best of {FLAGS.rounds} interleaved rounds of "
        f"{FLAGS.steps} steps, after a warm-up.",
        "",
        "| padding | mean batch length (tokens) | training examples/s | vs max_length |"
        " dev accuracy (full depth) | max abs diff of probabilities vs max_length |",
        "|---|---|---|---|---|---|",
    ]
    for p in PADDINGS:
        diff = float(np.abs(metrics[p][1] - ref).max())
        lines.append(
            f"| `{p}` | {np.mean(lengths[p]):.1f} | {best[p]:.1f} | "
            f"{best[p] / best['max_length']:.2f}x | {metrics[p][0]:.4f} | {diff:.1e} |"
        )
    text = "\n".join(lines) + "\n"
    bench_utils.write_generated_markdown(FLAGS.results_md, text)
    print(text)


if __name__ == "__main__":
    app.run(main)
