r"""Batch-1 SavedModel early exit: how its `tf.cond`s are executed, measured.

The batch-1 early exit (`dact_tf.layers.early_exit.chain_forward`) is a chain
of `tf.cond`s, one per block. TensorFlow can run a `tf.cond` in two ways:

- **lowered** (TensorFlow's default inside a `tf.function`, what dact_tf
  ships): the cond becomes `Switch`/`Merge` nodes in the caller's graph; the
  branch not taken is still visited node by node as "dead", so a skipped
  block costs its node count in executor bookkeeping, not in arithmetic;
- **functional** (`If` ops that call a branch function): a skipped block
  costs nothing, but every `If` pays a function call and its branch bodies
  are optimized apart from the caller.

This script exports the same trained model three times (shipped: every cond
lowered; `chain_functional`: only the chain's conds kept as functional `If`s;
`all_functional`: no cond or loop lowered anywhere), loads the three
SavedModels in one process and times `serving_default`, `serve_one` and
`full_depth` of each on the same batch-1 dev sentences, the calls
interleaved in random order (medians of `--reps` calls per sentence, after a
warm-up). Ratios are taken within one export: early exit vs its own
`full_depth`, against the ideal `N / mean blocks`.

Usage (from the repository root, on a trained model directory):
    PYTHONPATH=. .venv/bin/python -m benchmarks.control_flow_benchmark \
        --model_dir=runs/study/sst2/seed2/dact
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import bench_utils  # noqa: E402
from benchmarks import export_benchmark  # noqa: E402  (its --model_dir, data flags)

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("shipped", "chain_functional", "all_functional")
EARLY = ("serving_default", "serve_one")

flags.DEFINE_integer("sentences", 150, "Dev sentences timed (drawn at random, seed 0).")
flags.DEFINE_integer("reps", 3, "Timed calls per sentence and signature.")
flags.DEFINE_integer("warmup", 50, "Warm-up calls per signature.")
flags.DEFINE_list("variants", list(VARIANTS), f"Exports to time, from {VARIANTS}.")
flags.DEFINE_string("out", os.path.join(HERE, "CONTROL_FLOW_RESULTS.md"), "Results file.")
FLAGS = flags.FLAGS


@contextlib.contextmanager
def _lowering(enabled):
    """Whether `tf.cond`/`tf.while_loop` ops built inside are lowered."""
    from tensorflow.python.ops import control_flow_util_v2 as cfu

    before = cfu._DISABLE_LOWER_USING_SWITCH_MERGE
    cfu._DISABLE_LOWER_USING_SWITCH_MERGE = not enabled
    try:
        yield
    finally:
        cfu._DISABLE_LOWER_USING_SWITCH_MERGE = before


def export_variant(model, variant, path):
    from dact_tf.export import export_saved_model
    from dact_tf.layers import early_exit

    shipped_chain = early_exit.chain_forward

    def functional_chain(*args, **kwargs):
        with _lowering(False):
            return shipped_chain(*args, **kwargs)

    if variant == "chain_functional":
        early_exit.chain_forward = functional_chain
    try:
        with _lowering(variant != "all_functional"):
            return export_saved_model(model, path, text_signatures=False)
    finally:
        early_exit.chain_forward = shipped_chain


def time_all(functions, inputs, rng):
    keys = list(functions)
    for k in keys:
        for i in range(FLAGS.warmup):
            functions[k](**inputs[i % len(inputs)])
    times = {k: [] for k in keys}
    with bench_utils.NoGC():
        for x in inputs:
            per = {k: [] for k in keys}
            for _ in range(FLAGS.reps):
                for j in rng.permutation(len(keys)):
                    t0 = time.perf_counter()
                    functions[keys[j]](**x)
                    per[keys[j]].append(time.perf_counter() - t0)
            for k in keys:
                times[k].append(bench_utils.median(per[k]))
    return {k: float(np.sum(v)) / len(inputs) for k, v in times.items()}


def main(argv):
    del argv
    import tensorflow as tf

    model, _, _, arrays, _ = export_benchmark.load_dev_set(FLAGS.model_dir)
    env = bench_utils.environment()
    started = time.perf_counter()
    functions, layers = {}, None
    rng = np.random.default_rng(0)
    rows = rng.choice(len(arrays["token_ids"]), FLAGS.sentences, replace=False)
    inputs = [{k: tf.constant(a[i:i + 1]) for k, a in arrays.items()} for i in rows]
    with tempfile.TemporaryDirectory() as tmp:
        for variant in FLAGS.variants:
            path = export_variant(model, variant, os.path.join(tmp, variant))
            loaded = tf.saved_model.load(path)
            functions[(variant, "full_depth")] = loaded.signatures["full_depth"]
            for s in EARLY:
                functions[(variant, s)] = loaded.signatures[s]
            blocks = [int(loaded.signatures["serving_default"](**x)["layers_executed"][0])
                      for x in inputs]
            if layers is None:
                layers = blocks
            if blocks != layers:
                raise AssertionError(f"{variant}: other blocks executed than the first export")
        ms = time_all(functions, inputs, rng)
    mean_blocks = float(np.mean(layers))
    ideal = model.num_layers / mean_blocks
    lines = [
        "<!-- Generated by benchmarks/control_flow_benchmark.py: rerun it, do not edit the table. -->",
        "",
        "# Batch-1 SavedModel early exit: lowered conds (shipped) vs functional `If`s",
        "",
        f"Run: {env['date_utc']}, {time.perf_counter() - started:.0f} s. Command:",
        "",
        "    PYTHONPATH=. .venv/bin/python -m benchmarks.control_flow_benchmark "
        + " ".join(sys.argv[1:]),
        "",
        f"Machine: {env['cpu_model']}, {env['cpu_cores']} cores, no GPU (load average at start "
        f"{', '.join(f'{x:.2f}' for x in env['load_average_at_start'])}); TensorFlow "
        f"{env['tensorflow']}, Keras {env['keras']}; dact_tf at `{env['git_commit'][:10]}`.",
        f"Model: `{FLAGS.model_dir}`, {model.num_layers} blocks; {FLAGS.sentences} dev sentences "
        f"at batch 1 (padded to the model's length), {mean_blocks:.2f} mean blocks, ideal "
        f"speedup {ideal:.3f}; {FLAGS.warmup} warm-up calls per signature, then {FLAGS.reps} "
        "timed calls per sentence and signature, all signatures of all exports interleaved in "
        "random order; medians per sentence, means over sentences.",
        "",
        "| export | signature | full depth ms | early exit ms | measured speedup | measured / ideal |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for variant in FLAGS.variants:
        full = ms[(variant, "full_depth")]
        for s in EARLY:
            early = ms[(variant, s)]
            lines.append(f"| {variant} | `{s}` | {1000 * full:.2f} | {1000 * early:.2f} | "
                         f"{full / early:.3f} | {full / early / ideal:.3f} |")
    bench_utils.write_generated_markdown(FLAGS.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    flags.mark_flag_as_required("model_dir")
    app.run(main)
