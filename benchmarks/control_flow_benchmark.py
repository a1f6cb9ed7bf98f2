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

A third way avoids both costs: a `tf.while_loop` whose body is one block's
graph, run with the weights of block `n` picked by resource handle (no copy),
so the graph holds one block however deep the encoder and a skipped block is
never visited (`block_selector`, `one_row_loop_forward` below; they stay in
this script because they measured no better).

This script exports the same trained model up to six times (shipped: every
cond lowered; `one_row_loop`: the batch-1 chain replaced by that loop;
`loop_selector`: the batched loop's block picked by handle instead of a tree
of conds, which also shrinks the dead branch `serving_default` walks at batch
1; `all_selector`: both; `chain_functional`: only the chain's conds kept as
functional `If`s; `all_functional`: no cond or loop lowered anywhere), loads
the SavedModels in one process and times `serving_default`, `serve_one` and
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
VARIANTS = ("shipped", "one_row_loop", "loop_selector", "all_selector", "chain_functional", "all_functional")
EARLY = ("serving_default", "serve_one")

flags.DEFINE_integer("sentences", 150, "Dev sentences timed (drawn at random, seed 0).")
flags.DEFINE_integer("reps", 3, "Timed calls per sentence and signature.")
flags.DEFINE_integer("warmup", 50, "Warm-up calls per signature.")
flags.DEFINE_list("variants", list(VARIANTS), f"Exports to time, from {VARIANTS}.")
flags.DEFINE_integer("inter_op_threads", 0, "TF inter-op threads (0: TensorFlow's default).")
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


# The experimental paths (not in the library: they measured no better).

def block_selector(encoder):
    """One block's graph that runs any block, or None where the blocks differ.

    Returns `select(index)` (for one call of the encoder), which returns
    `run(x, padding_mask)`: block `index` (a scalar tensor) computed by block
    0's layer with block `index`'s weights. The weights are picked by
    resource handle (`ReadVariableOp` of a gathered handle), so nothing is
    copied and the live variables are read. A graph that runs it in a
    `tf.while_loop` holds one block however deep the encoder, so blocks a
    row skips are never visited, where a chain of lowered `tf.cond`s still
    walks every skipped node as "dead" (about 0.6 ms a block at batch 1 on
    a 2-core CPU, `benchmarks/CONTROL_FLOW_RESULTS.md`).

    None unless every block has block 0's class, config (but its name) and
    variable shapes: the caller then keeps the chain of conds. TFLite
    freezes variables into constants and has no resource handles, so its
    conversion keeps the chain too.
    """
    import tensorflow as tf

    blocks = list(encoder.blocks)
    template = blocks[0]

    def signature(block):
        config = dict(block.get_config())
        config.pop("name", None)
        return (type(block), repr(sorted(config.items())),
                [(tuple(v.shape), str(v.dtype)) for v in block.trainable_variables],
                len(block.non_trainable_variables))

    first = signature(template)
    if not template.trainable_variables or any(signature(b) != first for b in blocks[1:]):
        return None
    weights = template.trainable_variables
    handles = [tf.stack([b.trainable_variables[i].handle for b in blocks])
               for i in range(len(weights))]
    # Non-trainable state of a block (dropout seeds) is unused at inference.
    fixed = [tf.convert_to_tensor(v) for v in template.non_trainable_variables]

    def select(index):
        values = [
            tf.ensure_shape(
                tf.raw_ops.ReadVariableOp(resource=h[index], dtype=tf.as_dtype(w.dtype)),
                w.shape)
            for h, w in zip(handles, weights)
        ]

        def run(x, padding_mask):
            # `stateless_call` skips `__call__`'s cast of the inputs.
            x = tf.cast(x, template.compute_dtype)
            out, _ = template.stateless_call(
                values, fixed, x, padding_mask=padding_mask, training=False)
            return out

        return run

    return select


def one_row_loop_forward(encoder, inputs, padding_mask, max_layers=None):
    """Early exit for a batch of one row in a `tf.while_loop` over one block's graph.

    The `chain_forward` answers, from a loop whose body is one block
    (`block_selector`): the loop stops after the block where the row
    stops, and no skipped block is in the graph to be walked. The body
    mirrors `chain_forward`'s step on purpose (same heads and criterion
    calls in the same order), with the block picked by `block_selector`
    (which must not be None for `encoder`).
    """
    import tensorflow as tf

    from dact_tf import ops

    num_layers, c = encoder.num_layers, encoder.num_outputs
    criterion, context = encoder.exit_criterion, encoder.exit_context
    select = block_selector(encoder)
    inputs = tf.cast(inputs, encoder.blocks[0].compute_dtype)
    batch_size = tf.shape(inputs)[0]
    answer, _ = ops.initial_state(batch_size, c)
    carried = (tf.constant(0, tf.int32), inputs, answer,
               criterion.initial_state(batch_size, context),
               tf.constant(False), tf.constant(False))

    def body(n, hidden, answer, state, stop, exact):
        del stop, exact
        remaining = num_layers - 1 - n
        hidden = select(n)(hidden, padding_mask)
        y, h = encoder.heads(encoder._pool(hidden, padding_mask), layer_index=n)
        answer, state, halts = criterion.step(y, h, answer, state, remaining, context)
        done = tf.logical_or(tf.reduce_all(halts), remaining <= 0)
        stop = done
        if max_layers is not None:
            stop = tf.logical_or(done, n + 1 >= max_layers[0])
        return n + 1, hidden, answer, state, stop, done

    layers, _, answer, state, _, exact = tf.while_loop(
        lambda n, hidden, answer, state, stop, exact: tf.logical_not(stop),
        body, carried, maximum_iterations=num_layers)
    result = encoder._outputs(answer, tf.fill([batch_size], layers),
                              criterion.ponder_cost(state))
    if max_layers is not None:
        result["exact"] = tf.fill([batch_size], exact)
    return result


def export_variant(model, variant, path):
    from dact_tf.export import export_saved_model
    from dact_tf.layers import early_exit

    shipped_chain = early_exit.chain_forward

    def functional_chain(*args, **kwargs):
        with _lowering(False):
            return shipped_chain(*args, **kwargs)

    if variant == "chain_functional":
        early_exit.chain_forward = functional_chain
    shipped_run_block = early_exit.run_block

    def selector_run_block(encoder, index, x, padding_mask):
        # Called inside the batched loop's body, so the handles are stacked
        # on every iteration (as measured; `one_row_loop` stacks them once).
        return block_selector(encoder)(index)(x, padding_mask)

    if variant in ("one_row_loop", "all_selector"):
        early_exit.chain_forward = one_row_loop_forward
    if variant in ("loop_selector", "all_selector"):
        early_exit.run_block = selector_run_block
    try:
        with _lowering(variant != "all_functional"):
            return export_saved_model(model, path, text_signatures=False)
    finally:
        early_exit.chain_forward = shipped_chain
        early_exit.run_block = shipped_run_block


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

    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
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
        "# Batch-1 SavedModel early exit: lowered conds (shipped) vs a one-block loop vs functional `If`s",
        "",
        f"Run: {env['date_utc']}, {time.perf_counter() - started:.0f} s. Command:",
        "",
        "    PYTHONPATH=. .venv/bin/python -m benchmarks.control_flow_benchmark "
        + " ".join(sys.argv[1:]),
        "",
        f"Machine: {env['cpu_model']}, {env['cpu_cores']} cores, no GPU (load average at start "
        f"{', '.join(f'{x:.2f}' for x in env['load_average_at_start'])}); TensorFlow "
        f"{env['tensorflow']}, Keras {env['keras']}; TF threads intra {env['intra_op_threads']} / "
        f"inter {env['inter_op_threads']} (0 = default); dact_tf at `{env['git_commit'][:10]}`.",
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
