r"""Where the early-exit loop's time goes, and what leaner loops would gain.

A companion of `overhead_benchmark.py` (same model, calibration and flags).
It leaves `dact_tf` untouched: the candidate changes are written here, as
functions that take a `DactClassifier` and run a modified copy of its
inference path, and are timed against the package's own paths in the same
run (interleaved, medians).

Variants (batch 1 unless said otherwise):

- `unrolled_blocks`: embeddings + the N blocks, no heads (the floor).
- `full_depth`: `DactClassifier(..., full_depth=True)` as shipped.
- `full_depth+direct_heads`: same, but `DactHeads._call_all` reads its
  stacked weights directly instead of `tf.gather(v, tf.range(N))` (a copy
  of every head's weights on every call).
- `bare_loop_tree`: the while loop with only the `tf.cond` tree and blocks
  (no heads, no halting test, no compaction).
- `bare_loop_no_tree`: the while loop calling one block every iteration
  (no tree): what the loop alone costs.
- `loop`: `encoder.adaptive_forward(halting=False)` / the early-exit call,
  as shipped.
- `loop+slice_heads`: the shipped loop with the per-block head weights
  taken with `v[n]` (a strided slice: zero copy) instead of
  `tf.gather(v, n)`.
- `lean_loop`: slice heads; per-row state packed in one `[b, C + 2]`
  tensor (answer, budget, ponder) and the outputs in one `[batch, C + 2]`
  tensor, updated with one `tensor_scatter_nd_update`; the compaction
  (where/gather/scatter) runs only when some row halts
  (`tf.cond(reduce_any(done))`).
- `lean_loop+hoist`: `lean_loop`, and the heads' weights read once before
  the loop, each head's answer and halting kernels packed into one
  `[H, C + 1]` matrix (one matmul per iteration instead of matmul + matvec).
- `cond_chain`: no while loop: N Python-unrolled `tf.cond(any row active)`
  steps, block n and head n picked statically, otherwise as `lean_loop`
  (`+hoist` likewise).

`--profile` adds a TF-profiler pass (batch 1, halting off, fresh graphs) that
counts, per call, the ops outside the Transformer blocks. (Its times are not
steady-state: on a fresh graph TF's executor still sends every op to its
thread pool; see `overhead_benchmark --small_warmup`.)

Usage:
    PYTHONPATH=. .venv/bin/python -m benchmarks.loop_ablation
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks import overhead_benchmark as ob  # noqa: E402
from dact_tf.layers import early_exit  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("ablation_rounds", 30, "Loop-cost rounds (batch 1).")
flags.DEFINE_integer("ablation_calls", 4, "Calls per variant per round.")
flags.DEFINE_integer(
    "ablation_pool", 96, "Early exit: examples timed at batch 1.")
flags.DEFINE_integer("ablation_passes", 3, "Early exit: passes over them.")
flags.DEFINE_integer(
    "ablation_large_batches", 6, "Early exit: batches of --large_batch.")
flags.DEFINE_integer("ablation_large_reps", 3, "Early exit: calls per batch.")
flags.DEFINE_bool("profile", True, "Run the TF-profiler pass.")
flags.DEFINE_integer("profile_calls", 5, "Calls per profiled variant.")
flags.DEFINE_string(
    "ablation_json", "benchmarks/results/loop_ablation.json", "Output JSON.")


# --------------------------------------------------- candidate head changes


def _slice_head_call(self, inputs, layer_index=None, training=None):
    """`DactHeads.call` with `v[n]` (strided slice, no copy) for one head,
    and the stacked weights used directly for all heads."""
    import tensorflow as tf

    x = self._dropout_layer(inputs, training=training)
    if layer_index is None:
        if self.shared:
            return self._call_all(x)
        z = self.activation(
            tf.einsum("lbi,lih->lbh", x, self.hidden_kernel)
            + self.hidden_bias[:, None, :]
        )
        logits = tf.einsum("lbh,lho->lbo", z, self.answer_kernel) + (
            self.answer_bias[:, None, :]
        )
        halting_logits = tf.einsum("lbh,lh->lb", z, self.halting_kernel) + (
            self.halting_bias_weight[:, None]
        )
        return self._finish(logits, halting_logits)
    i = 0 if self.shared else layer_index
    z = self.activation(tf.matmul(x, self.hidden_kernel[i]) + self.hidden_bias[i])
    logits = tf.matmul(z, self.answer_kernel[i]) + self.answer_bias[i]
    halting_logits = (
        tf.linalg.matvec(z, self.halting_kernel[i]) + self.halting_bias_weight[i]
    )
    return self._finish(logits, halting_logits)


def make_patched_model(dact):
    """A second DactClassifier on the same backbone, same head weights, with
    `_slice_head_call` as its heads' call."""
    import dact_tf

    enc = dact.encoder
    twin = dact_tf.DactClassifier(
        dact.backbone,
        num_classes=dact.num_classes,
        halting_bias=enc.halting_bias,
        method=enc.exit_criterion,  # copied by the new model
    )
    twin.encoder.heads.set_weights(enc.heads.get_weights())
    twin.encoder.heads.call = types.MethodType(_slice_head_call, twin.encoder.heads)
    return twin


# --------------------------------------------------------- candidate loops


def lean_forward(dact, inputs, halting=True, chain=False, hoist=False):
    """The early-exit inference path with the changes described above.

    Same outputs as `DactEncoder.adaptive_forward` (probabilities,
    predictions, layers_executed, ponder_cost).

    `hoist=True` also reads the heads' weights once, before the loop, and
    packs each head's answer and halting kernels into one `[H, C + 1]`
    matrix (one matmul instead of a matmul and a matvec per iteration).
    """
    import tensorflow as tf

    from dact_tf import ops

    enc = dact.encoder
    token_ids, mask, segment_ids = dact._standardize_inputs(inputs)
    x = dact._embed(token_ids, segment_ids, training=False)
    n_layers, c = enc.num_layers, enc.num_outputs
    heads = enc.heads
    if hoist:
        hk = tf.convert_to_tensor(heads.hidden_kernel)
        hb = tf.convert_to_tensor(heads.hidden_bias)
        ok = tf.concat(
            [heads.answer_kernel, tf.expand_dims(heads.halting_kernel, -1)], -1)
        obias = tf.concat(
            [heads.answer_bias, tf.expand_dims(heads.halting_bias_weight, -1)],
            -1)

        def head(first, n):
            i = 0 if heads.shared else n
            z = heads.activation(tf.matmul(first, hk[i]) + hb[i])
            o = tf.matmul(z, ok[i]) + obias[i]
            return heads._finish(o[:, :c], o[:, c])
    else:

        def head(first, n):
            return heads(first, layer_index=n)
    batch = tf.shape(x)[0]
    answer, budget = ops.initial_state(batch, c)
    state = dict(
        n=tf.constant(0, tf.int32),
        hidden=x,
        mask=mask,
        rows=tf.range(batch),
        # Active rows: [answer (C), budget, ponder].
        small=tf.concat([answer, budget[:, None], tf.zeros([batch, 1])], 1),
        # Every row: [answer (C), ponder, layers executed].
        out=tf.zeros(tf.stack([batch, c + 2])),
    )

    def step(s, block_fn, n):
        hidden = block_fn(s["hidden"], s["mask"])
        y, h = head(enc._pool(hidden, s["mask"]), n)
        small = s["small"]
        a, p = ops.accumulate(small[:, :c], small[:, c], y, h)
        ponder = small[:, c + 1] + p
        remaining = n_layers - 1 - n
        if halting:
            done = tf.logical_or(
                enc.exit_criterion.halts(a, p, remaining, enc.exit_context), remaining <= 0)
        else:
            done = tf.fill(tf.shape(p), remaining <= 0)
        small = tf.concat([a, p[:, None], ponder[:, None]], 1)

        def compact():
            done_at = tf.where(done)[:, 0]
            keep_at = tf.where(tf.logical_not(done))[:, 0]
            fin = tf.gather(small, done_at)
            layers = tf.cast(n + 1, tf.float32) * tf.ones_like(fin[:, :1])
            out = tf.tensor_scatter_nd_update(
                s["out"],
                tf.gather(s["rows"], done_at)[:, None],
                tf.concat([fin[:, :c], fin[:, c + 1:], layers], 1),
            )
            return (
                tf.gather(hidden, keep_at),
                tf.gather(s["mask"], keep_at),
                tf.gather(s["rows"], keep_at),
                tf.gather(small, keep_at),
                out,
            )

        def carry():
            return hidden, s["mask"], s["rows"], small, s["out"]

        h2, m2, r2, sm2, out = tf.cond(tf.reduce_any(done), compact, carry)
        return dict(n=n + 1, hidden=h2, mask=m2, rows=r2, small=sm2, out=out)

    if chain:
        s = state
        for i, block in enumerate(enc.blocks):

            def run(s=s, i=i, block=block):
                return step(
                    s,
                    lambda h, m: block(h, padding_mask=m, training=False),
                    tf.constant(i, tf.int32),
                )

            s = tf.cond(tf.size(s["rows"]) > 0, run, lambda s=s: dict(s))
        final = s
    else:

        def body(s):
            n = s["n"]
            return (
                step(s, lambda h, m: early_exit.run_block(enc, n, h, m), n),
            )

        def loose(t):
            return tf.TensorShape([None]).concatenate(t.shape[1:])

        inv = {k: loose(v) for k, v in state.items()}
        inv["n"] = tf.TensorShape([])
        inv["out"] = state["out"].shape
        (final,) = tf.while_loop(
            lambda s: tf.size(s["rows"]) > 0,
            body,
            (state,),
            shape_invariants=(inv,),
            maximum_iterations=n_layers,
        )
    out = final["out"]
    return {
        "probabilities": out[:, :c],
        "predictions": tf.argmax(out[:, :c], axis=-1, output_type=tf.int32),
        "ponder_cost": out[:, c],
        "layers_executed": tf.cast(out[:, c + 1], tf.int32),
    }


def bare_loop(dact, inputs, tree=True):
    import tensorflow as tf

    enc = dact.encoder
    token_ids, mask, segment_ids = dact._standardize_inputs(inputs)
    x = dact._embed(token_ids, segment_ids, training=False)

    def body(n, h):
        if tree:
            h = early_exit.run_block(enc, n, h, mask)
        else:
            h = enc.blocks[0](h, padding_mask=mask, training=False)
        return n + 1, h

    _, x = tf.while_loop(
        lambda n, h: n < enc.num_layers, body, (tf.constant(0), x),
        maximum_iterations=enc.num_layers,
    )
    return x[:, 0, :]


def unrolled_blocks(dact, inputs):
    token_ids, mask, segment_ids = dact._standardize_inputs(inputs)
    x = dact._embed(token_ids, segment_ids, training=False)
    for block in dact.encoder.blocks:
        x = block(x, padding_mask=mask, training=False)
    return x[:, 0, :]


# ----------------------------------------------------------------- profile


def profile_variant(fn, x, calls, logdir):
    """Per call: ops outside the blocks, their time, and block-free time."""
    import collections
    import glob
    import shutil

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    for _ in range(3):
        fn(x)
    shutil.rmtree(logdir, ignore_errors=True)
    tf.profiler.experimental.start(logdir)
    for _ in range(calls):
        fn(x)
    tf.profiler.experimental.stop()
    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    plane = [p for p in space.planes if p.name == "/host:CPU"][0]
    meta = plane.event_metadata
    ops_, spans = [], []
    for line in plane.lines:
        for ev in line.events:
            name = meta[ev.metadata_id].name
            start = line.timestamp_ns * 1000 + ev.offset_ps
            end = start + ev.duration_ps
            if name.startswith("EagerKernelExecute"):
                spans.append((start, end))
            elif ":" in name and "/" in name:
                ops_.append((start, end, name))
    block = sorted((s_, e) for s_, e, n in ops_ if "transformer_layer" in n)
    merged = []
    for s_, e in block:
        if merged and s_ <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s_, e])
    per_call = lambda v: v / len(spans) / 1e9  # noqa: E731  ps -> ms per call
    by_type, counts = collections.Counter(), collections.Counter()
    for s_, e, n in ops_:
        if "transformer_layer" not in n:
            t = n.rsplit(":", 1)[-1]
            by_type[t] += e - s_
            counts[t] += 1
    call_ms = per_call(sum(e - s_ for s_, e in spans))
    block_ms = per_call(sum(e - s_ for s_, e in merged))
    return {
        "call_ms_under_profiler": call_ms,
        "block_ops_busy_ms": block_ms,
        "block_free_ms": call_ms - block_ms,
        "non_block_ops_per_call": sum(counts.values()) / len(spans),
        "non_block_op_time_ms": per_call(sum(by_type.values())),
        "top_non_block_ops_ms": {
            f"{k} x{counts[k] / len(spans):g}": per_call(v)
            for k, v in by_type.most_common(8)
        },
    }


# ------------------------------------------------------------------- main


def main(argv):
    del argv
    import tensorflow as tf

    started = time.time()
    rng = np.random.default_rng(FLAGS.seed)
    n_layers = FLAGS.num_layers
    dact, plain, _ = ob.build_models()
    cal = ob.make_inputs(rng, FLAGS.calibration_size, FLAGS.seq_len,
                         FLAGS.vocabulary_size)
    pool = ob.make_inputs(rng, max(FLAGS.ablation_pool, FLAGS.large_batch),
                          FLAGS.seq_len, FLAGS.vocabulary_size)
    target = FLAGS.target_mean_exit or n_layers / 2.0
    calibration = ob.calibrate_heads(dact, cal, target, FLAGS.halting_kernel_scale)
    twin = make_patched_model(dact)
    sig = [
        {
            k: tf.TensorSpec([None, FLAGS.seq_len], tf.int32)
            for k in ("token_ids", "padding_mask", "segment_ids")
        }
    ]
    fn = lambda f: tf.function(f, input_signature=sig)  # noqa: E731

    def loop_off(model):
        def f(inputs):
            t, m, s = model._standardize_inputs(inputs)
            x = model._embed(t, s, training=False)
            return model.encoder.adaptive_forward(x, m, halting=False)

        return fn(f)

    raw_loop_variants = {
        "keras_hub": lambda i: plain(i, training=False),
        "unrolled_blocks": lambda i: unrolled_blocks(dact, i),
        "full_depth": lambda i: dact(i, training=False, full_depth=True),
        "full_depth+direct_heads": lambda i: twin(
            i, training=False, full_depth=True),
        "bare_loop_tree": lambda i: bare_loop(dact, i, tree=True),
        "loop": lambda i: loop_off(dact).python_function(i),
        "lean_loop": lambda i: lean_forward(twin, i, halting=False),
        "lean_loop+hoist": lambda i: lean_forward(
            twin, i, halting=False, hoist=True),
        "cond_chain+hoist": lambda i: lean_forward(
            twin, i, halting=False, chain=True, hoist=True),
    }
    loop_variants = {
        "keras_hub": fn(lambda i: plain(i, training=False)),
        "unrolled_blocks": fn(lambda i: unrolled_blocks(dact, i)),
        "full_depth": fn(lambda i: dact(i, training=False, full_depth=True)),
        "full_depth+direct_heads": fn(
            lambda i: twin(i, training=False, full_depth=True)),
        "bare_loop_tree": fn(lambda i: bare_loop(dact, i, tree=True)),
        "bare_loop_no_tree": fn(lambda i: bare_loop(dact, i, tree=False)),
        "loop": loop_off(dact),
        "loop+slice_heads": loop_off(twin),
        "lean_loop": fn(lambda i: lean_forward(twin, i, halting=False)),
        "lean_loop+hoist": fn(
            lambda i: lean_forward(twin, i, halting=False, hoist=True)),
        "cond_chain": fn(
            lambda i: lean_forward(twin, i, halting=False, chain=True)),
        "cond_chain+hoist": fn(
            lambda i: lean_forward(twin, i, halting=False, chain=True,
                                   hoist=True)),
    }
    ee_variants = {
        "full_depth": loop_variants["full_depth"],
        "full_depth+direct_heads": loop_variants["full_depth+direct_heads"],
        "early_exit": fn(lambda i: dact(i, training=False)),
        "early_exit+slice_heads": fn(lambda i: twin(i, training=False)),
        "lean_early_exit": fn(lambda i: lean_forward(twin, i)),
        "lean_early_exit+hoist": fn(
            lambda i: lean_forward(twin, i, hoist=True)),
        "cond_chain_early_exit": fn(lambda i: lean_forward(twin, i, chain=True)),
        "cond_chain_early_exit+hoist": fn(
            lambda i: lean_forward(twin, i, chain=True, hoist=True)),
    }
    results = {
        "command": "PYTHONPATH=. .venv/bin/python -m benchmarks.loop_ablation"
        + "".join(" " + a for a in sys.argv[1:]),
        "environment": ob.environment(),
        "calibration": calibration,
    }

    # Same outputs as the shipped paths?
    check = ob.take(pool, slice(0, FLAGS.large_batch))
    ref = ee_variants["early_exit"](check)
    ref_full = ee_variants["full_depth"](check)
    agree = {}
    for name in ("early_exit+slice_heads", "lean_early_exit",
                 "lean_early_exit+hoist", "cond_chain_early_exit",
                 "cond_chain_early_exit+hoist"):
        o = ee_variants[name](check)
        agree[name] = {
            "layers_equal": bool(np.array_equal(
                o["layers_executed"].numpy(), ref["layers_executed"].numpy())),
            "max_abs_prob_diff": float(np.max(np.abs(
                o["probabilities"].numpy() - ref["probabilities"].numpy()))),
        }
    for name in ("lean_loop", "lean_loop+hoist", "cond_chain",
                 "cond_chain+hoist"):
        o = loop_variants[name](check)
        agree[name] = {"max_abs_prob_diff_vs_full_depth": float(np.max(np.abs(
            o["probabilities"].numpy() - ref_full["probabilities"].numpy())))}
    results["agreement"] = agree
    logging.info("agreement: %s", agree)

    # 1. Loop cost, batch 1, halting off.
    x1 = ob.take(pool, slice(0, 1))
    times = ob.interleaved(
        {k: (lambda f=f: f(x1)) for k, f in loop_variants.items()},
        FLAGS.ablation_rounds, FLAGS.ablation_calls, rng, FLAGS.small_warmup)
    med = {k: ob._ms(ob._median(v)) for k, v in times.items()}
    results["batch1_halting_off_ms"] = med
    results["batch1_halting_off_p10_ms"] = {
        k: ob._ms(ob._quantile(v, 0.1)) for k, v in times.items()}
    results["batch1_per_iteration_vs_full_depth_ms"] = {
        k: (v - med["full_depth"]) / n_layers for k, v in med.items()
    }
    logging.info("loop cost: %s", med)

    # 2. Early exit, batch 1, per example.
    small = [ob.take(pool, slice(i, i + 1)) for i in range(FLAGS.ablation_pool)]
    for i in range(FLAGS.small_warmup):
        for f in ee_variants.values():
            f(small[i % len(small)])
    layers = np.array([
        int(ee_variants["early_exit"](b)["layers_executed"].numpy()[0])
        for b in small])
    t = {k: np.zeros([len(small), FLAGS.ablation_passes]) for k in ee_variants}
    names = list(ee_variants)
    with ob._NoGC():
        for p in range(FLAGS.ablation_passes):
            for i in rng.permutation(len(small)):
                for j in rng.permutation(len(names)):
                    t[names[j]][i, p] = ob._timed(ee_variants[names[j]], small[i])
    ideal = n_layers / layers.mean()
    tot = {k: float(np.median(v, axis=1).sum()) for k, v in t.items()}
    results["batch1_early_exit"] = {
        "mean_blocks": float(layers.mean()),
        "ideal_speedup": ideal,
        "mean_latency_ms": {k: ob._ms(v / len(small)) for k, v in tot.items()},
        "measured_over_ideal_vs_shipped_full_depth": {
            k: tot["full_depth"] / v / ideal for k, v in tot.items()
            if not k.startswith("full")
        },
        "measured_over_ideal_vs_full_depth+direct_heads": {
            k: tot["full_depth+direct_heads"] / v / ideal
            for k, v in tot.items() if not k.startswith("full")
        },
    }
    logging.info("batch 1 early exit: %s", results["batch1_early_exit"])

    # 3. Early exit, large batch (no regression?).
    big = [ob.take(pool, rng.choice(len(pool["token_ids"]), FLAGS.large_batch,
                                    replace=False))
           for _ in range(FLAGS.ablation_large_batches)]
    big_names = ["full_depth", "full_depth+direct_heads", "early_exit",
                 "lean_early_exit", "lean_early_exit+hoist",
                 "cond_chain_early_exit+hoist"]
    for i in range(FLAGS.large_warmup):
        for f in (ee_variants[k] for k in big_names):
            f(big[i % len(big)])
    layers_big = np.concatenate([
        ee_variants["early_exit"](b)["layers_executed"].numpy() for b in big])
    tb = {k: np.zeros([len(big), FLAGS.ablation_large_reps]) for k in big_names}
    with ob._NoGC():
        for r in range(FLAGS.ablation_large_reps):
            for i in rng.permutation(len(big)):
                for j in rng.permutation(len(big_names)):
                    k = big_names[j]
                    tb[k][i, r] = ob._timed(ee_variants[k], big[i])
    ideal_b = n_layers / layers_big.mean()
    totb = {k: float(np.median(v, axis=1).sum()) for k, v in tb.items()}
    results[f"batch{FLAGS.large_batch}_early_exit"] = {
        "mean_blocks": float(layers_big.mean()),
        "ideal_speedup": ideal_b,
        "mean_latency_ms": {k: ob._ms(v / len(big)) for k, v in totb.items()},
        "measured_over_ideal_vs_shipped_full_depth": {
            k: totb["full_depth"] / v / ideal_b for k, v in totb.items()
            if not k.startswith("full")
        },
    }
    if FLAGS.profile:
        prof = {}
        for name in ("unrolled_blocks", "full_depth", "full_depth+direct_heads",
                     "bare_loop_tree", "loop", "lean_loop", "lean_loop+hoist",
                     "cond_chain+hoist"):
            # A fresh tf.function: TF's executor traces (and dispatches to
            # its thread pool) every op until its cost estimate decays,
            # about 90 runs; profiling a fresh graph after 3 calls counts
            # every op.
            prof[name] = profile_variant(
                fn(raw_loop_variants[name]), x1, FLAGS.profile_calls,
                f"/tmp/dact_loop_ablation_profile/{name.replace('+', '_')}")
            logging.info("profile %s: %s", name, prof[name])
        results["batch1_halting_off_profile"] = prof
    results["load_average_at_end"] = list(os.getloadavg())
    results["wall_seconds"] = time.time() - started
    os.makedirs(os.path.dirname(FLAGS.ablation_json) or ".", exist_ok=True)
    with open(FLAGS.ablation_json, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    app.run(main)
