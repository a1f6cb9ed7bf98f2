r"""Wall-clock cost of DACT: overhead at full depth, and early-exit speedup.

One run measures, on a MiniLM-L6-sized BERT (random weights) at one sequence
length, on CPU:

1. **Overhead at full depth** against keras-hub's `BertTextClassifier` on an
   identically configured `BertBackbone`: inference latency (batch 1 and a
   larger batch) of `DactClassifier(..., full_depth=True)` (the unrolled
   graph) and of the early-exit `tf.while_loop` with halting off, and the
   `train_on_batch` step time. Every model is called through a `tf.function`
   with the same input signature.
2. **Early exit against full depth** on a fixed pool of inputs: mean blocks
   executed, the ideal speedup `N / mean`, the measured wall-clock speedup and
   measured / ideal, at batch 1 (per example, each example its own number of
   blocks) and at the larger batch (batches drawn from the same pool).
3. **The loop's own cost** per iteration: (while loop with halting off -
   unrolled full depth) / N.

Random weights give no spread of exits, so the heads are calibrated first
(see `calibrate_heads`): each head's first layer gets the per-feature
standardization of its block's first-token vectors folded in (so the heads
see per-example differences), and one halting bias shared by all heads is
set by bisection so the mean exit is `--target_mean_exit` (default N/2).

Timing: warm-up calls, then rounds in which the variants run in a random
order (interleaved A/B), medians over many calls; Python's garbage collector
is off while timing. Ratios are taken between medians of the same run.

Usage:
    PYTHONPATH=. .venv/bin/python -m benchmarks.overhead_benchmark
    # a quick smoke run:
    PYTHONPATH=. .venv/bin/python -m benchmarks.overhead_benchmark --quick

Writes `--output_json` (machine-readable) and the generated part of
`--results_md` (between the GENERATED markers; text outside them is kept).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from benchmarks import bench_utils  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

FLAGS = flags.FLAGS

# Model.
flags.DEFINE_integer("num_layers", 6, "Transformer blocks (N).")
flags.DEFINE_integer("hidden_dim", 384, "Hidden size.")
flags.DEFINE_integer("num_heads", 12, "Attention heads.")
flags.DEFINE_integer("intermediate_dim", 1536, "Feed-forward size.")
flags.DEFINE_integer("vocabulary_size", 30522, "Vocabulary size.")
flags.DEFINE_integer("max_sequence_length", 512, "Backbone's maximum length.")
flags.DEFINE_integer("seq_len", 64, "Sequence length of the inputs.")
flags.DEFINE_integer("num_classes", 2, "Classes.")
flags.DEFINE_integer("seed", 0, "Random seed (weights, inputs, orders).")
# Batches.
flags.DEFINE_integer("small_batch", 1, "The small batch size.")
flags.DEFINE_integer("large_batch", 32, "The large batch size (and training).")
# Calibration of the heads.
flags.DEFINE_float(
    "target_mean_exit", None,
    "Mean exit block the halting bias is tuned to; default N/2.")
flags.DEFINE_float(
    "halting_kernel_scale", 1.5,
    "Factor on the halting kernels after calibration (spreads the exits).")
flags.DEFINE_integer("calibration_size", 256, "Examples used to calibrate.")
flags.DEFINE_string("halting_rule", "tight", "DactClassifier halting_rule.")
# Repetitions.
flags.DEFINE_integer(
    "small_warmup", 150,
    "Warm-up calls of every function at the small batch. TF's executor runs "
    "an op inline only once its running cost estimate, which starts high and "
    "decays by 10% per execution, falls below a threshold (about 90 runs of "
    "that op), so small-batch graphs need ~100 calls to reach steady state.")
flags.DEFINE_integer(
    "large_warmup", 4, "Warm-up calls of every function at the large batch.")
flags.DEFINE_integer("small_rounds", 60, "Overhead, small batch: rounds.")
flags.DEFINE_integer(
    "small_calls_per_round", 2,
    "Overhead, small batch: consecutive calls per variant per round.")
flags.DEFINE_integer("large_rounds", 15, "Overhead, large batch: rounds.")
flags.DEFINE_integer("train_rounds", 15, "Training: timed steps per model.")
flags.DEFINE_integer("train_warmup", 3, "Training: warm-up steps per model.")
flags.DEFINE_integer("pool_size", 256, "Early exit: examples in the pool.")
flags.DEFINE_integer(
    "small_passes", 3, "Early exit, small batch: timed passes over the pool.")
flags.DEFINE_integer(
    "large_batches", 12, "Early exit, large batch: batches drawn from the pool.")
flags.DEFINE_integer(
    "large_reps", 4, "Early exit, large batch: timed calls per batch.")
flags.DEFINE_bool("quick", False, "A smoke run with few repetitions.")
flags.DEFINE_list(
    "sections", ["overhead", "training", "early_exit"],
    "Sections to run: overhead, training, early_exit.")
# Threads.
flags.DEFINE_integer("intra_op_threads", 0, "TF intra-op threads (0: default).")
flags.DEFINE_integer("inter_op_threads", 0, "TF inter-op threads (0: default).")
# Outputs.
flags.DEFINE_string(
    "output_json", "benchmarks/results/overhead.json", "Where the JSON goes.")
flags.DEFINE_string(
    "results_md", "benchmarks/RESULTS.md",
    "Markdown file whose GENERATED section is rewritten ('' to skip).")

BEGIN_MARK = "<!-- BEGIN GENERATED: benchmarks.overhead_benchmark -->"
END_MARK = "<!-- END GENERATED: benchmarks.overhead_benchmark -->"

TARGETS = {
    "inference_overhead": 1.05,  # DACT latency / keras-hub latency
    "training_overhead": 1.15,  # DACT step / keras-hub step
    "efficiency_small": 0.9,  # measured / ideal speedup, small batch
    "efficiency_large": 0.8,  # measured / ideal speedup, large batch
}


# ------------------------------------------------------------------ helpers


def _quantile(values, q):
    return float(np.quantile(np.asarray(values, np.float64), q))


def _ms(seconds):
    return 1e3 * seconds


def _stats_ms(times):
    """Median, quartiles and count of a list of seconds, in ms."""
    return {
        "median_ms": _ms(bench_utils.median(times)),
        "p25_ms": _ms(_quantile(times, 0.25)),
        "p75_ms": _ms(_quantile(times, 0.75)),
        "n": len(times),
    }


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def interleaved(variants, rounds, calls_per_round, rng, warmup):
    """Times callables in rounds, each round in a fresh random order.

    Args:
        variants: dict name -> callable of no arguments.
        rounds: int.
        calls_per_round: consecutive calls of a variant in one round.
        rng: a numpy Generator.
        warmup: untimed calls of each variant first.

    Returns:
        dict name -> list of per-call seconds.
    """
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in variants}
    names = list(variants)
    with bench_utils.NoGC():
        for _ in range(rounds):
            for i in rng.permutation(len(names)):
                name = names[i]
                fn = variants[name]
                for _ in range(calls_per_round):
                    times[name].append(_timed(fn))
    return times


def paired_ratio(times, name, base, calls_per_round):
    """Median over rounds of (name's round median / base's round median).

    Robust to slow drifts of the machine's load: each round's variants ran
    back to back.
    """
    a = np.asarray(times[name]).reshape(-1, calls_per_round)
    b = np.asarray(times[base]).reshape(-1, calls_per_round)
    return float(np.median(np.median(a, axis=1) / np.median(b, axis=1)))


def environment():
    env = bench_utils.environment()
    env["onednn"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)")
    return env


# ------------------------------------------------------------------- models


def make_inputs(rng, n, seq_len, vocabulary_size):
    """Random BERT-like inputs: [CLS] tokens [SEP] then padding.

    Lengths vary from seq_len // 4 to seq_len (the compute does not: every
    sequence is padded to seq_len).
    """
    low = min(1000, vocabulary_size // 2)
    ids = rng.integers(low, vocabulary_size, size=(n, seq_len)).astype(np.int32)
    lengths = rng.integers(max(2, seq_len // 4), seq_len + 1, size=n)
    mask = np.arange(seq_len)[None, :] < lengths[:, None]
    ids = np.where(mask, ids, 0).astype(np.int32)
    ids[:, 0] = min(101, vocabulary_size - 1)
    ids[np.arange(n), lengths - 1] = min(102, vocabulary_size - 1)
    return {
        "token_ids": ids,
        "padding_mask": mask.astype(np.int32),
        "segment_ids": np.zeros_like(ids),
    }


def take(inputs, index):
    """Rows `index` of a numpy input dict, as tf tensors."""
    import tensorflow as tf

    return {k: tf.constant(v[index]) for k, v in inputs.items()}


def build_models():
    import keras
    import keras_hub

    import dact_tf

    config = dict(
        vocabulary_size=FLAGS.vocabulary_size,
        num_layers=FLAGS.num_layers,
        num_heads=FLAGS.num_heads,
        hidden_dim=FLAGS.hidden_dim,
        intermediate_dim=FLAGS.intermediate_dim,
        max_sequence_length=FLAGS.max_sequence_length,
    )
    keras.utils.set_random_seed(FLAGS.seed)
    dact_backbone = keras_hub.models.BertBackbone(**config)
    plain_backbone = keras_hub.models.BertBackbone(**config)
    # Same weights in both backbones (not needed for timing, but tidy).
    plain_backbone.set_weights(dact_backbone.get_weights())
    dact = dact_tf.DactClassifier(
        dact_backbone,
        num_classes=FLAGS.num_classes,
        halting_bias=0.0,
        halting_rule=FLAGS.halting_rule,
    )
    plain = keras_hub.models.BertTextClassifier(
        backbone=plain_backbone, num_classes=FLAGS.num_classes, preprocessor=None
    )
    return dact, plain, config


def make_functions(dact, plain, seq_len):
    """The timed inference functions, all `tf.function`s with one signature."""
    import tensorflow as tf

    signature = [
        {
            "token_ids": tf.TensorSpec([None, seq_len], tf.int32),
            "padding_mask": tf.TensorSpec([None, seq_len], tf.int32),
            "segment_ids": tf.TensorSpec([None, seq_len], tf.int32),
        }
    ]

    def plain_fn(inputs):
        return plain(inputs, training=False)

    def dact_full_depth(inputs):
        return dact(inputs, training=False, full_depth=True)

    def dact_early_exit(inputs):
        return dact(inputs, training=False)

    def dact_early_exit_loop(inputs):
        # The early exit through the compacting while loop, the path of
        # batches of several rows (batch 1 takes the chain of tf.conds).
        features, padding_mask = dact._standardize_inputs(inputs)
        x = dact._embed(features, training=False)
        x = tf.cast(x, dact.encoder.blocks[0].compute_dtype)
        return dact.encoder._loop_forward(x, padding_mask, True, None)

    def dact_loop_no_halting(inputs):
        # DactClassifier.call, with the encoder's while loop run with
        # halting off (every block, one per iteration).
        features, padding_mask = dact._standardize_inputs(inputs)
        x = dact._embed(features, training=False)
        return dact.encoder.adaptive_forward(x, padding_mask, halting=False)

    fns = dict(
        keras_hub=plain_fn,
        dact_full_depth=dact_full_depth,
        dact_loop_no_halting=dact_loop_no_halting,
        dact_early_exit=dact_early_exit,
        dact_early_exit_loop=dact_early_exit_loop,
    )
    return {k: tf.function(f, input_signature=signature) for k, f in fns.items()}


# -------------------------------------------------------------- calibration


def _first_token_vectors(dact, inputs, batch_size=64):
    """`[N, n, hidden]` numpy: the first-token vector after every block."""
    import tensorflow as tf

    @tf.function
    def run(batch):
        features, mask = dact._standardize_inputs(batch)
        x = dact._embed(features, training=False)
        cls = []
        for block in dact.encoder.blocks:
            x = block(x, padding_mask=mask, training=False)
            # What the heads read (the first token with pooling="cls").
            cls.append(dact.encoder._pool(x, mask))
        return tf.stack(cls)

    n = len(inputs["token_ids"])
    parts = [
        run(take(inputs, slice(i, i + batch_size))).numpy()
        for i in range(0, n, batch_size)
    ]
    return np.concatenate(parts, axis=1)


def _exit_layers_from_vectors(dact, cls):
    """Exit blocks of the halting rule, from stored first-token vectors.

    The same computation as `DactEncoder.trace` after its blocks.
    """
    import tensorflow as tf

    from dact_tf import ops

    enc = dact.encoder
    answers, halting = enc.heads(tf.constant(cls), training=False)
    answer, budget = ops.initial_state(cls.shape[1], enc.num_outputs)
    halts = []
    for n in range(enc.num_layers):
        answer, budget = ops.accumulate(answer, budget, answers[n], halting[n])
        halts.append(enc.exit_criterion.halts(answer, budget, enc.num_layers - 1 - n,
                                                enc.exit_context))
    return ops.first_halting_layer(tf.stack(halts)).numpy()


def calibrate_heads(dact, inputs, target_mean_exit, kernel_scale):
    """Makes the random heads exit at about `target_mean_exit`, with spread.

    1. Per block, standardize the first-token vectors over `inputs` (random
       BERT's [CLS] vectors differ little between inputs: per-feature std
       about 0.01-0.03 against |mean| 0.8) and fold that into the head's
       first layer: `W' = W / sd[:, None]`, `b' = b - (mu / sd) @ W`.
    2. Multiply the halting kernels by `kernel_scale` (wider spread of
       per-example halting values).
    3. Bisect one halting bias, shared by all heads, until the mean exit on
       `inputs` is `target_mean_exit`.

    Returns:
        A dict describing what was done.
    """
    heads = dact.encoder.heads
    cls = _first_token_vectors(dact, inputs)
    mu = cls.mean(axis=1)
    sd = cls.std(axis=1) + 1e-6
    kernel = np.asarray(heads.hidden_kernel.numpy())
    bias = np.asarray(heads.hidden_bias.numpy())
    if heads.shared:
        raise ValueError("The benchmark calibrates per-layer heads only.")
    heads.hidden_kernel.assign(kernel / sd[:, :, None])
    heads.hidden_bias.assign(bias - np.einsum("li,lih->lh", mu / sd, kernel))
    heads.halting_kernel.assign(
        np.asarray(heads.halting_kernel.numpy()) * kernel_scale
    )

    def mean_exit(b):
        heads.halting_bias_weight.assign(np.full([heads.num_heads], b, np.float32))
        return float(_exit_layers_from_vectors(dact, cls).mean())

    lo, hi = -12.0, 12.0
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if mean_exit(mid) < target_mean_exit:
            lo = mid
        else:
            hi = mid
    bias_value = 0.5 * (lo + hi)
    achieved = mean_exit(bias_value)
    return {
        "method": (
            "per-block standardization of the first-token vectors folded "
            "into each head's hidden layer; halting kernels x "
            f"{kernel_scale}; one shared halting bias bisected to the "
            "target mean exit"
        ),
        "cls_feature_std_mean": [float(v) for v in sd.mean(axis=1)],
        "cls_feature_abs_mean": [float(v) for v in np.abs(mu).mean(axis=1)],
        "halting_kernel_scale": kernel_scale,
        "halting_bias": bias_value,
        "target_mean_exit": target_mean_exit,
        "calibration_mean_exit": achieved,
        "calibration_size": int(cls.shape[1]),
    }


# ----------------------------------------------------------------- sections


def section_overhead(fns, pool, rng):
    """Inference latency: keras-hub vs DACT full depth vs loop w/o halting."""
    names = ("keras_hub", "dact_full_depth", "dact_loop_no_halting")
    out = {}
    for batch, rounds, per_round, warmup in (
        (FLAGS.small_batch, FLAGS.small_rounds, FLAGS.small_calls_per_round,
         FLAGS.small_warmup),
        (FLAGS.large_batch, FLAGS.large_rounds, 1, FLAGS.large_warmup),
    ):
        x = take(pool, slice(0, batch))
        variants = {n: (lambda f=fns[n]: f(x)) for n in names}
        logging.info("overhead: batch %d, %d rounds", batch, rounds)
        times = interleaved(variants, rounds, per_round, rng, warmup)
        res = {n: _stats_ms(times[n]) for n in names}
        base = res["keras_hub"]["median_ms"]
        full = res["dact_full_depth"]["median_ms"]
        loop = res["dact_loop_no_halting"]["median_ms"]
        res["ratio_full_depth_vs_keras_hub"] = full / base
        res["ratio_loop_no_halting_vs_keras_hub"] = loop / base
        res["paired_ratio_full_depth_vs_keras_hub"] = paired_ratio(
            times, "dact_full_depth", "keras_hub", per_round)
        res["paired_ratio_loop_no_halting_vs_keras_hub"] = paired_ratio(
            times, "dact_loop_no_halting", "keras_hub", per_round)
        res["paired_ratio_loop_no_halting_vs_full_depth"] = paired_ratio(
            times, "dact_loop_no_halting", "dact_full_depth", per_round)
        res["loop_overhead_per_iteration_ms"] = (loop - full) / FLAGS.num_layers
        res["loop_overhead_per_iteration_fraction_of_block"] = (
            (loop - full) / full
        )
        out[f"batch_{batch}"] = res
    return out


def section_training(dact, plain, pool, rng):
    """`train_on_batch` step time, same optimizer, batch `large_batch`."""
    import keras

    batch = FLAGS.large_batch
    x = take(pool, slice(0, batch))
    y = rng.integers(0, FLAGS.num_classes, size=batch).astype(np.int32)
    dact.compile(
        optimizer=keras.optimizers.Adam(5e-5), jit_compile=False
    )  # loss: NLL of a_N (+ tau * ponder cost, added by the model)
    plain.compile(
        optimizer=keras.optimizers.Adam(5e-5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=False,
    )
    variants = {
        "keras_hub": lambda: plain.train_on_batch(x, y),
        "dact": lambda: dact.train_on_batch(x, y),
    }
    logging.info("training: %d steps each", FLAGS.train_rounds)
    times = interleaved(variants, FLAGS.train_rounds, 1, rng, FLAGS.train_warmup)
    res = {n: _stats_ms(t) for n, t in times.items()}
    res["ratio_dact_vs_keras_hub"] = (
        res["dact"]["median_ms"] / res["keras_hub"]["median_ms"]
    )
    res["paired_ratio_dact_vs_keras_hub"] = paired_ratio(
        times, "dact", "keras_hub", 1)
    res["batch_size"] = batch
    res["optimizer"] = "Adam(5e-5), jit_compile=False, train_on_batch"
    return res


def _histogram(layers, n):
    return [int(v) for v in np.bincount(layers, minlength=n + 1)[1:]]


def section_early_exit(fns, pool, rng):
    n_layers = FLAGS.num_layers
    ee, full = fns["dact_early_exit"], fns["dact_full_depth"]
    pool_n = len(pool["token_ids"])
    out = {}

    # Batch 1 (small batch): every example alone, many different examples.
    small = FLAGS.small_batch
    starts = list(range(0, pool_n - small + 1, small))
    batches = [take(pool, slice(s, s + small)) for s in starts]
    for i in range(FLAGS.small_warmup):  # every exit depth gets warm
        b = batches[i % len(batches)]
        ee(b), full(b)
    layers, agree = [], 0
    for b in batches:
        o_ee, o_full = ee(b), full(b)
        layers.append(o_ee["layers_executed"].numpy())
        agree += int(
            np.sum(o_ee["predictions"].numpy() == o_full["predictions"].numpy())
        )
    layers_small = np.concatenate(layers)
    logging.info("early exit: batch %d, %d x %d", small, len(batches),
                 FLAGS.small_passes)
    t_ee, t_full = _interleaved_times(ee, full, batches, FLAGS.small_passes, rng)
    out[f"batch_{small}"] = _early_exit_summary(
        t_ee, t_full, layers_small, agree, n_layers,
        per_batch_layers=[l.mean() for l in layers],
    )
    if small == 1:
        # Latency against blocks executed: a line a + b * k.
        med = np.median(t_ee, axis=1)
        ks = layers_small.astype(np.float64)
        by_k = {
            int(k): _ms(float(np.median(med[ks == k])))
            for k in np.unique(layers_small)
        }
        slope, intercept = (
            np.polyfit(ks, med, 1) if len(np.unique(ks)) > 1 else (np.nan, np.nan)
        )
        out[f"batch_{small}"]["median_latency_ms_by_blocks"] = by_k
        out[f"batch_{small}"]["fit_ms_per_block"] = _ms(float(slope))
        out[f"batch_{small}"]["fit_intercept_ms"] = _ms(float(intercept))
        out[f"batch_{small}"]["full_depth_ms_per_block"] = _ms(
            float(np.median(t_full)) / n_layers
        )
        # The same rows through the compacting loop (batch 1 runs the chain).
        loop = fns["dact_early_exit_loop"]
        for i in range(FLAGS.small_warmup):
            loop(batches[i % len(batches)])
        t_loop, t_full2 = _interleaved_times(loop, full, batches, FLAGS.small_passes, rng)
        loop_summary = _early_exit_summary(t_loop, t_full2, layers_small, agree, n_layers,
                                           per_batch_layers=[l.mean() for l in layers])
        out[f"batch_{small}"]["loop_path"] = {
            k: loop_summary[k] for k in ("measured_speedup", "measured_over_ideal",
                                         "mean_latency_early_exit_ms",
                                         "mean_latency_full_depth_ms")}

    # Large batch: batches drawn (without replacement within a batch) from
    # the same pool.
    large = FLAGS.large_batch
    index_sets = [
        rng.choice(pool_n, size=large, replace=False)
        for _ in range(FLAGS.large_batches)
    ]
    batches = [take(pool, idx) for idx in index_sets]
    for i in range(FLAGS.large_warmup):
        b = batches[i % len(batches)]
        ee(b), full(b)
    layers, agree = [], 0
    for b in batches:
        o_ee, o_full = ee(b), full(b)
        layers.append(o_ee["layers_executed"].numpy())
        agree += int(
            np.sum(o_ee["predictions"].numpy() == o_full["predictions"].numpy())
        )
    logging.info("early exit: batch %d, %d x %d", large, len(batches),
                 FLAGS.large_reps)
    t_ee, t_full = _interleaved_times(ee, full, batches, FLAGS.large_reps, rng)
    out[f"batch_{large}"] = _early_exit_summary(
        t_ee, t_full, np.concatenate(layers), agree, n_layers,
        per_batch_layers=[l.mean() for l in layers],
    )
    out[f"batch_{large}"]["per_batch_max_blocks"] = [
        int(l.max()) for l in layers
    ]
    return out


def _interleaved_times(ee, full, batches, reps, rng):
    """Times `ee` and `full` on every batch `reps` times, in random A/B order.

    Returns:
        `(t_ee, t_full)`: seconds, arrays `[len(batches), reps]`.
    """
    t_ee = np.zeros([len(batches), reps])
    t_full = np.zeros_like(t_ee)
    with bench_utils.NoGC():
        for r in range(reps):
            for i in rng.permutation(len(batches)):
                b = batches[i]
                if rng.random() < 0.5:
                    t_ee[i, r] = _timed(ee, b)
                    t_full[i, r] = _timed(full, b)
                else:
                    t_full[i, r] = _timed(full, b)
                    t_ee[i, r] = _timed(ee, b)
    return t_ee, t_full


def _early_exit_summary(t_ee, t_full, layers, agree, n_layers,
                        per_batch_layers):
    """Speedups from `[batches, reps]` times (per-batch medians, summed)."""
    med_ee = np.median(t_ee, axis=1)
    med_full = np.median(t_full, axis=1)
    mean_blocks = float(layers.mean())
    ideal = n_layers / mean_blocks
    measured = float(med_full.sum() / med_ee.sum())
    # Per-batch ideal vs measured: each batch's own mean blocks.
    per_batch_ideal = n_layers / np.asarray(per_batch_layers)
    per_batch_measured = med_full / med_ee
    return {
        "examples": int(layers.size),
        "batches": int(t_ee.shape[0]),
        "reps_per_batch": int(t_ee.shape[1]),
        "mean_blocks_executed": mean_blocks,
        "blocks_histogram": _histogram(layers, n_layers),
        "ideal_speedup": ideal,
        "measured_speedup": measured,
        "measured_over_ideal": measured / ideal,
        "mean_latency_early_exit_ms": _ms(float(med_ee.mean())),
        "mean_latency_full_depth_ms": _ms(float(med_full.mean())),
        "median_per_batch_measured_over_ideal": float(
            np.median(per_batch_measured / per_batch_ideal)
        ),
        "predictions_equal_full_depth": f"{agree}/{layers.size}",
    }


# ------------------------------------------------------------------ report


def _fmt(v, digits=2):
    return f"{v:.{digits}f}"


def _ok(flag):
    return "yes" if flag else "**no**"


def render_markdown(results):
    env, cfg = results["environment"], results["config"]
    lines = [
        BEGIN_MARK,
        "",
        f"Run: {env['date_utc']}. Command (from the repository root):",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"Machine: {env['cpu_model']}, {env['cpu_cores']} cores, no GPU "
        f"(shared; load average at start "
        f"{', '.join(_fmt(v) for v in env['load_average_at_start'])}, "
        f"at end {', '.join(_fmt(v) for v in results['load_average_at_end'])}). "
        f"Python {env['python']}, TensorFlow {env['tensorflow']}, Keras "
        f"{env['keras']}, keras-hub {env['keras_hub']}; TF threads intra "
        f"{env['intra_op_threads']} / inter {env['inter_op_threads']} "
        "(0 = TF default); oneDNN on. dact_tf at commit "
        f"`{env['git_commit'][:10]}`"
        + (" (with uncommitted changes under dact_tf/: "
           f"{env['dact_tf_uncommitted_changes'].replace(chr(10), '; ')})"
           if env["dact_tf_uncommitted_changes"] else "")
        + ". Total run time "
        f"{_fmt(results['wall_seconds'] / 60, 1)} min.",
        "",
        f"Model: BERT with {cfg['num_layers']} blocks, hidden "
        f"{cfg['hidden_dim']}, {cfg['num_heads']} heads, intermediate "
        f"{cfg['intermediate_dim']}, vocabulary {cfg['vocabulary_size']} "
        f"(MiniLM-L6 size, random weights), sequence length {cfg['seq_len']}, "
        f"{cfg['num_classes']} classes, halting rule `{cfg['halting_rule']}`. "
        "Baseline: `keras_hub.models.BertTextClassifier` on an identically "
        "configured `BertBackbone` (same weights). All inference is through "
        "`tf.function`s with the same input signature (`[None, seq]` int32 "
        "`token_ids`, `padding_mask`, `segment_ids`); the DACT functions "
        "return the model's output dict.",
        "",
    ]
    if "overhead" in results:
        ov = results["overhead"]
        lines += [
            "### 1. Overhead at full depth against keras-hub "
            f"(target: inference <= {TARGETS['inference_overhead']:.2f}x, "
            f"training <= {TARGETS['training_overhead']:.2f}x)",
            "",
            "| batch | keras-hub ms | DACT full depth ms | ratio (paired) | "
            "DACT while loop, halting off ms | ratio (paired) | within target "
            "(full depth / loop) |",
            "|---:|---:|---:|---:|---:|---:|:---:|",
        ]
        for key, r in ov.items():
            lim = TARGETS["inference_overhead"]
            lines.append(
                f"| {key.split('_')[1]} | {_fmt(r['keras_hub']['median_ms'])} | "
                f"{_fmt(r['dact_full_depth']['median_ms'])} | "
                f"{_fmt(r['ratio_full_depth_vs_keras_hub'], 3)} "
                f"({_fmt(r['paired_ratio_full_depth_vs_keras_hub'], 3)}) | "
                f"{_fmt(r['dact_loop_no_halting']['median_ms'])} | "
                f"{_fmt(r['ratio_loop_no_halting_vs_keras_hub'], 3)} "
                f"({_fmt(r['paired_ratio_loop_no_halting_vs_keras_hub'], 3)}) | "
                f"{_ok(r['ratio_full_depth_vs_keras_hub'] <= lim)} / "
                f"{_ok(r['ratio_loop_no_halting_vs_keras_hub'] <= lim)} |"
            )
        lines += [
            "",
            f"Warm-up: {cfg['small_warmup']} calls per function at batch "
            f"{cfg['small_batch']}, {cfg['large_warmup']} at batch "
            f"{cfg['large_batch']}. "
            "Medians of per-call wall-clock times; rounds in random order "
            f"({cfg['small_rounds']} rounds x {cfg['small_calls_per_round']} "
            f"calls at batch {cfg['small_batch']}, {cfg['large_rounds']} x 1 "
            f"at batch {cfg['large_batch']}). Ratio: of the medians; "
            "(paired): median over rounds of the per-round ratio, robust to "
            "drifts of the machine's load.",
            "",
        ]
    if "training" in results:
        tr = results["training"]
        lines += [
            "| training step (batch "
            f"{tr['batch_size']}) | keras-hub ms | DACT ms | ratio (paired) | "
            "within target |",
            "|---|---:|---:|---:|:---:|",
            f"| `train_on_batch`, Adam(5e-5) | "
            f"{_fmt(tr['keras_hub']['median_ms'], 1)} | "
            f"{_fmt(tr['dact']['median_ms'], 1)} | "
            f"{_fmt(tr['ratio_dact_vs_keras_hub'], 3)} "
            f"({_fmt(tr['paired_ratio_dact_vs_keras_hub'], 3)}) | "
            f"{_ok(tr['ratio_dact_vs_keras_hub'] <= TARGETS['training_overhead'])} |",
            "",
            f"Medians of {cfg['train_rounds']} steps each (after "
            f"{cfg['train_warmup']} warm-up steps), interleaved. keras-hub: "
            "sparse cross-entropy on logits; DACT: NLL of a_N + tau * ponder "
            "cost, all blocks and heads.",
            "",
        ]
    if "early_exit" in results:
        ee = results["early_exit"]
        cal = results["calibration"]
        lines += [
            "### 2. Early exit against full depth "
            f"(target: measured/ideal >= {TARGETS['efficiency_small']} at "
            f"batch {cfg['small_batch']}, >= {TARGETS['efficiency_large']} at "
            f"batch {cfg['large_batch']})",
            "",
            "| batch | examples | mean blocks | blocks histogram (1..N) | "
            "ideal speedup N/mean | full depth ms | early exit ms | "
            "measured speedup | measured / ideal | within target | "
            "predictions = full depth |",
            "|---:|---:|---:|---|---:|---:|---:|---:|---:|:---:|---:|",
        ]
        for key, r in ee.items():
            batch = int(key.split("_")[1])
            lim = (
                TARGETS["efficiency_small"]
                if batch == cfg["small_batch"]
                else TARGETS["efficiency_large"]
            )
            lines.append(
                f"| {batch} | {r['examples']} | "
                f"{_fmt(r['mean_blocks_executed'], 3)} | "
                f"{' '.join(str(v) for v in r['blocks_histogram'])} | "
                f"{_fmt(r['ideal_speedup'], 3)} | "
                f"{_fmt(r['mean_latency_full_depth_ms'])} | "
                f"{_fmt(r['mean_latency_early_exit_ms'])} | "
                f"{_fmt(r['measured_speedup'], 3)} | "
                f"{_fmt(r['measured_over_ideal'], 3)} | "
                f"{_ok(r['measured_over_ideal'] >= lim)} | "
                f"{r['predictions_equal_full_depth']} |"
            )
        small = ee.get(f"batch_{cfg['small_batch']}", {})
        lines += [
            "",
            "Latency columns: mean over batches of each batch's median "
            "latency; measured speedup = sum of full-depth medians / sum of "
            "early-exit medians over the same batches. Batch "
            f"{cfg['small_batch']}: {cfg['pool_size']} different examples, "
            f"each timed {cfg['small_passes']} times per path (A/B order "
            f"random per example). Batch {cfg['large_batch']}: "
            f"{cfg['large_batches']} batches drawn from the same pool, "
            f"{cfg['large_reps']} timed calls per path each.",
            "",
            f"Heads (random weights): {cal['method']}; halting bias "
            f"{_fmt(cal['halting_bias'], 3)}, mean exit "
            f"{_fmt(cal['calibration_mean_exit'], 3)} on "
            f"{cal['calibration_size']} calibration examples (a set apart "
            "from the timed pool).",
            "",
        ]
        if "median_latency_ms_by_blocks" in small:
            by_k = small["median_latency_ms_by_blocks"]
            lines += [
                f"Batch {cfg['small_batch']} early-exit latency by blocks "
                "executed (median over examples): "
                + ", ".join(f"{k}: {_fmt(v)} ms" for k, v in by_k.items())
                + f". Linear fit: {_fmt(small['fit_intercept_ms'])} ms + "
                f"{_fmt(small['fit_ms_per_block'])} ms per block, against "
                f"{_fmt(small['full_depth_ms_per_block'])} ms per block for "
                "the full-depth graph (its total / N).",
                "",
            ]
        if "loop_path" in small:
            lp = small["loop_path"]
            lines += [
                f"Batch {cfg['small_batch']} runs the blocks as a chain of `tf.cond`s "
                "(`dact_tf.layers.early_exit.chain_forward`). The same rows through the compacting "
                "while loop (the path of larger batches, and of batch 1 before): "
                f"{_fmt(lp['mean_latency_early_exit_ms'])} ms against "
                f"{_fmt(lp['mean_latency_full_depth_ms'])} ms at full depth, measured "
                f"speedup {_fmt(lp['measured_speedup'], 3)}, "
                f"{_fmt(lp['measured_over_ideal'], 3)} of ideal (timed interleaved "
                "with full depth in the same run).",
                "",
            ]
    if "overhead" in results:
        lines += [
            "### 3. The loop's own cost per iteration",
            "",
            "| batch | (loop, halting off - unrolled full depth) / N, ms | "
            "as a fraction of one full-depth block |",
            "|---:|---:|---:|",
        ]
        for key, r in results["overhead"].items():
            lines.append(
                f"| {key.split('_')[1]} | "
                f"{_fmt(r['loop_overhead_per_iteration_ms'], 3)} | "
                f"{_fmt(r['loop_overhead_per_iteration_fraction_of_block'], 3)} |"
            )
        lines.append("")
    lines.append(END_MARK)
    return "\n".join(lines) + "\n"


def write_markdown(path, block):
    header = (
        "# dact_tf benchmarks\n\n"
        "## Overhead and early-exit speedup (`benchmarks/overhead_benchmark.py`)"
        "\n\n"
    )
    text = header + block
    if os.path.exists(path):
        old = open(path).read()
        if BEGIN_MARK in old and END_MARK in old:
            before = old.split(BEGIN_MARK)[0]
            after = old.split(END_MARK, 1)[1]
            text = before + block.rstrip("\n") + after
            if not text.endswith("\n"):
                text += "\n"
    with open(path, "w") as f:
        f.write(text)


# -------------------------------------------------------------------- main


def _apply_quick():
    bench_utils.apply_quick(
        FLAGS,
        small_rounds=4, small_calls_per_round=2, large_rounds=2, train_rounds=2,
        train_warmup=1, pool_size=48, small_passes=1, large_batches=2,
        large_reps=1, calibration_size=64, small_warmup=2, large_warmup=1,
    )


def main(argv):
    del argv
    if FLAGS.quick:
        _apply_quick()
    import tensorflow as tf

    if FLAGS.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(
            FLAGS.intra_op_threads)
    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(
            FLAGS.inter_op_threads)
    started = time.time()
    rng = np.random.default_rng(FLAGS.seed)
    n_layers = FLAGS.num_layers
    target = (
        FLAGS.target_mean_exit
        if FLAGS.target_mean_exit is not None
        else n_layers / 2.0
    )
    if FLAGS.pool_size < FLAGS.large_batch:
        raise app.UsageError("--pool_size must be >= --large_batch.")
    results = {
        "command": "PYTHONPATH=. .venv/bin/python -m benchmarks.overhead_benchmark"
        + "".join(" " + shlex.quote(a) for a in sys.argv[1:]),
        "environment": environment(),
        "config": {
            k: getattr(FLAGS, k)
            for k in (
                "num_layers", "hidden_dim", "num_heads", "intermediate_dim",
                "vocabulary_size", "max_sequence_length", "seq_len",
                "num_classes", "seed", "small_batch", "large_batch",
                "halting_kernel_scale", "calibration_size", "halting_rule",
                "small_warmup", "large_warmup", "small_rounds", "small_calls_per_round",
                "large_rounds", "train_rounds", "train_warmup", "pool_size",
                "small_passes", "large_batches", "large_reps", "quick",
            )
        },
        "targets": TARGETS,
    }
    results["config"]["target_mean_exit"] = target

    dact, plain, _ = build_models()
    calibration_inputs = make_inputs(
        rng, FLAGS.calibration_size, FLAGS.seq_len, FLAGS.vocabulary_size)
    pool = make_inputs(rng, FLAGS.pool_size, FLAGS.seq_len,
                       FLAGS.vocabulary_size)
    results["calibration"] = calibrate_heads(
        dact, calibration_inputs, target, FLAGS.halting_kernel_scale)
    logging.info("calibration: %s", results["calibration"])
    fns = make_functions(dact, plain, FLAGS.seq_len)

    sections = set(FLAGS.sections)
    if "overhead" in sections:
        results["overhead"] = section_overhead(fns, pool, rng)
        logging.info("overhead: %s", results["overhead"])
    if "early_exit" in sections:
        results["early_exit"] = section_early_exit(fns, pool, rng)
        logging.info("early exit: %s", results["early_exit"])
    if "training" in sections:
        # Last: compiling and stepping the models changes their weights.
        results["training"] = section_training(dact, plain, pool, rng)
        logging.info("training: %s", results["training"])

    results["load_average_at_end"] = list(os.getloadavg())
    results["wall_seconds"] = time.time() - started
    if FLAGS.output_json:
        os.makedirs(os.path.dirname(FLAGS.output_json) or ".", exist_ok=True)
        with open(FLAGS.output_json, "w") as f:
            json.dump(results, f, indent=2, sort_keys=False)
            f.write("\n")
    block = render_markdown(results)
    if FLAGS.results_md:
        write_markdown(FLAGS.results_md, block)
    print(block)


if __name__ == "__main__":
    app.run(main)
