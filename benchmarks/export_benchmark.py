r"""Exported DACT models on real data: size, accuracy and early-exit latency.

From a trained model directory (`dact-tf train --model_dir=...`), one run:

0. Exports the model as a SavedModel (`dact_tf.export.export_saved_model`)
   and converts it to three TFLite files (`export_tflite`, quantize `none`,
   `dynamic`, `float16`), each with the `serving_default` (early exit) and
   `full_depth` signatures.
1. **Size and accuracy** on the model's dev set (tokenized by the model's own
   preprocessor, padded to `sequence_length`): file size, accuracy, agreement
   of `predictions` and `layers_executed` with the SavedModel's
   `serving_default`, mean blocks executed, and whether each artefact's early
   exit answers like its own `full_depth` signature (the SavedModel must have
   0 mismatches). The Keras model (early exit) is the reference.
2. **Latency, early exit against full depth in the same run**, for the
   SavedModel (`tf.saved_model.load`, signatures called) and the float32 and
   dynamic-range TFLite files (`ai_edge_litert.interpreter.Interpreter`,
   signature runners, `--num_threads`): at batch 1 (`--batch1_examples` dev
   sentences, each timed `--batch1_reps` times per path) and at batch 32 (the
   dev set's full batches, `--batch32_reps` times each). Reported: mean
   blocks, ideal speedup N / mean blocks, measured speedup (full-depth time /
   early-exit time over the same inputs) and measured / ideal.

Timing: each backend is timed in its own phase (so TensorFlow's and LiteRT's
thread pools do not compete), after warm-up calls; inside a phase the two
paths alternate per input in a random order (interleaved A/B), and the
median of the repetitions is taken per input. Python's garbage collector is
off while timing. The SavedModel's outputs are converted to numpy inside the
timed call (LiteRT's runner returns numpy arrays).

Mean pooling and TFLite: if the library's own export does not convert to
TFLite (dact_tf 0.1.0 at the time of writing: mean pooling's `[:, :, None]`
becomes a `tf.StridedSlice` with `new_axis_mask` on a dynamic shape, which
has no TFLite builtin), `--pool_workaround=auto` records the error, replaces
`DactEncoder._pool` in this process by the same computation written with
`tf.expand_dims` (bit-for-bit the same results; checked against the Keras
model, which runs unpatched first), and re-exports; every artefact measured
then comes from the patched export. The results say whether this happened.

Usage:
    PYTHONPATH=. .venv/bin/python -m benchmarks.export_benchmark \
        --model_dir=/tmp/run_m7
    # a quick smoke run:
    PYTHONPATH=. .venv/bin/python -m benchmarks.export_benchmark \
        --model_dir=/tmp/run_m7 --quick --output_json=/tmp/e.json \
        --results_md=/tmp/e.md

Writes `--output_json` and the generated part of `--results_md` (between
the GENERATED markers; text outside them, such as notes, is kept).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gc  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from benchmarks import bench_utils  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("model_dir", None, "A trained dact_tf model directory.")
flags.DEFINE_string(
    "out_dir", None,
    "Where the exports go (kept). Default: a temporary folder, deleted at "
    "the end.")
flags.DEFINE_bool(
    "reuse_exports", False,
    "Reuse the exports already in --out_dir (from an earlier run of this "
    "script) instead of exporting again. For development only.")
flags.DEFINE_enum(
    "pool_workaround", "auto", ["auto", "on", "off"],
    "auto: patch DactEncoder._pool (expand_dims instead of [:, :, None]) only "
    "if the library's export fails to convert to TFLite; on: always; off: "
    "never (the run then fails if the conversion fails).")
flags.DEFINE_integer("num_threads", 2, "LiteRT interpreter threads.")
flags.DEFINE_integer("seed", 0, "Seed for the batch-1 sample and the orders.")
flags.DEFINE_integer("batch_size", 32, "The large batch (and evaluation).")
flags.DEFINE_integer("batch1_examples", 200, "Batch 1: dev sentences timed.")
flags.DEFINE_integer("batch1_reps", 3, "Batch 1: timed calls per sentence and path.")
flags.DEFINE_integer(
    "batch1_warmup", 100,
    "Batch 1: warm-up calls per path before timing (TF's executor needs "
    "~100 calls to reach steady state at small batches).")
flags.DEFINE_integer(
    "batch32_batches", 0, "Batch 32: full dev batches timed (0: all).")
flags.DEFINE_integer("batch32_reps", 2, "Batch 32: timed calls per batch and path.")
flags.DEFINE_integer("batch32_warmup", 2, "Batch 32: warm-up calls per path.")
flags.DEFINE_integer(
    "xnnpack_diagnostic", 24,
    "Batch-1 sentences timed again with and without LiteRT's default XNNPACK "
    "delegate (0: skip).")
flags.DEFINE_integer(
    "max_eval_examples", 0, "Evaluate on the first dev examples only (0: all).")
flags.DEFINE_bool("quick", False, "A smoke run with few examples and repetitions.")
flags.DEFINE_string(
    "output_json", "benchmarks/results/export.json", "Where the JSON goes.")
flags.DEFINE_string(
    "results_md", "benchmarks/EXPORT_RESULTS.md",
    "Markdown file whose GENERATED section is rewritten ('' to skip).")

BEGIN_MARK = "<!-- BEGIN GENERATED: benchmarks.export_benchmark -->"
END_MARK = "<!-- END GENERATED: benchmarks.export_benchmark -->"

# Measured / ideal speedup (issue 16): SavedModel batch 1 0.9, TFLite float32
# batch 1 0.85 (quantized files are reported without a target), batch 32 0.9.
TARGETS = {"batch_1": 0.9, "batch_1_tflite": 0.85, "batch_32": 0.9}


def _target(name, batch):
    if batch != 1:
        return TARGETS["batch_32"]
    if name.startswith("TFLite"):
        return TARGETS["batch_1_tflite"] if name.startswith("TFLite none") else None
    return TARGETS["batch_1"]
QUANTIZE = ("none", "dynamic", "float16")
TIMED_TFLITE = ("none", "dynamic")
SIGNATURES = ("serving_default", "full_depth")
INPUT_KEYS = ("token_ids", "padding_mask", "segment_ids")


# ------------------------------------------------------------------ helpers


def _mb(num_bytes):
    return num_bytes / 1e6


def _dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


def _diff_sha1():
    """sha1 of `git diff HEAD -- dact_tf` ('' when clean): which code ran."""
    import hashlib

    diff = bench_utils.git("diff", "HEAD", "--", "dact_tf")
    return hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else ""


def environment():
    import ai_edge_litert

    try:
        from importlib import metadata

        litert_version = metadata.version("ai-edge-litert")
    except Exception:  # pragma: no cover
        litert_version = getattr(ai_edge_litert, "__version__", "unknown")
    env = bench_utils.environment()
    env.update(ai_edge_litert=litert_version, dact_tf_diff_sha1=_diff_sha1())
    return env


# --------------------------------------------------------------------- data


def load_dev_set(model_dir):
    """`(model, config, arrays, labels)`: the dev set as int32 numpy arrays."""
    import tensorflow as tf

    from dact_tf.training import train_lib

    model, preprocessor, config = train_lib.load_model_dir(model_dir)
    data_config = train_lib.DataConfig(**config["data"])
    if FLAGS.max_eval_examples:
        data_config.max_eval_examples = FLAGS.max_eval_examples
    data_config.batch_size = FLAGS.batch_size
    # Every row padded to the model's sequence length: the arrays below are
    # stacked across batches, and a server usually sends fixed-shape input.
    data_config.padding = "max_length"
    dataset = train_lib.make_datasets(
        data_config, preprocessor, config.get("label_names"),
        splits=("validation",))["validation"]
    parts = {k: [] for k in INPUT_KEYS}
    labels = []
    for features, y in dataset:
        for k in INPUT_KEYS:
            parts[k].append(tf.cast(features[k], tf.int32).numpy())
        labels.append(y.numpy())
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return model, config, dataset, arrays, np.concatenate(labels)


def batches_of(arrays, batch_size, full_only=False):
    n = len(arrays["token_ids"])
    out = []
    for start in range(0, n, batch_size):
        if full_only and start + batch_size > n:
            break
        out.append({k: v[start:start + batch_size] for k, v in arrays.items()})
    return out


# ------------------------------------------------------------------ exports


def _pool_with_expand_dims(self, hidden, padding_mask):
    """`DactEncoder._pool` with `tf.expand_dims` instead of `[:, :, None]`."""
    import tensorflow as tf

    if self.pooling == "cls":
        return hidden[:, 0, :]
    mask = tf.expand_dims(tf.cast(padding_mask, hidden.dtype), -1)
    total = tf.reduce_sum(hidden * mask, axis=1)
    return total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def _apply_pool_workaround():
    from dact_tf.layers import dact_encoder

    dact_encoder.DactEncoder._pool = _pool_with_expand_dims


def export_all(model, out_dir):
    """Exports the SavedModel and the three TFLite files; returns info."""
    from dact_tf.export import export_saved_model
    from dact_tf.export import export_tflite
    from dact_tf.export import tflite_ops
    from dact_tf.export import tflite_signatures

    info_path = os.path.join(out_dir, "export_info.json")
    if FLAGS.reuse_exports and os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
        info["reused"] = True
        if info["pool_workaround_applied"]:
            _apply_pool_workaround()  # The Keras checks ran before this.
        return info

    info = {"reused": False, "library_tflite_error": None,
            "pool_workaround_applied": False, "seconds": {}}
    base = os.path.join(out_dir, "saved_model")
    tflite_paths = {q: os.path.join(out_dir, f"dact_{q}.tflite") for q in QUANTIZE}

    if FLAGS.pool_workaround == "on":
        _apply_pool_workaround()
        info["pool_workaround_applied"] = True
    t0 = time.perf_counter()
    saved = export_saved_model(model, base)
    info["seconds"]["saved_model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        export_tflite(saved, tflite_paths["none"], quantize="none")
        info["seconds"]["tflite_none"] = time.perf_counter() - t0
    except ValueError as e:
        if FLAGS.pool_workaround != "auto":
            raise
        message = str(e)
        info["library_tflite_error"] = message.split("\nConverter message")[0]
        logging.warning(
            "The library's export does not convert to TFLite (%s); patching "
            "DactEncoder._pool (expand_dims) and exporting again.",
            info["library_tflite_error"])
        _apply_pool_workaround()
        info["pool_workaround_applied"] = True
        info["unpatched_saved_model"] = saved
        t0 = time.perf_counter()
        saved = export_saved_model(model, base)
        info["seconds"]["saved_model"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        export_tflite(saved, tflite_paths["none"], quantize="none")
        info["seconds"]["tflite_none"] = time.perf_counter() - t0
    for q in QUANTIZE[1:]:
        t0 = time.perf_counter()
        export_tflite(saved, tflite_paths[q], quantize=q)
        info["seconds"][f"tflite_{q}"] = time.perf_counter() - t0
    info["saved_model"] = saved
    info["tflite"] = tflite_paths
    info["tflite_signatures"] = {q: tflite_signatures(p) for q, p in tflite_paths.items()}
    ops = tflite_ops(tflite_paths["none"])
    info["tflite_control_flow_ops"] = {k: ops[k] for k in ("WHILE", "IF")}
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2)
    return info


# ------------------------------------------------------------------ runners


class SavedModelBackend:
    name = "SavedModel"
    batch1_only = False

    def __init__(self, path, early_exit="serving_default"):
        import tensorflow as tf

        self._tf = tf
        self.loaded = tf.saved_model.load(path)
        self.fns = {s: self.loaded.signatures[s] for s in SIGNATURES}
        if early_exit != "serving_default":
            # Another early-exit signature (`serve_one`: the batch-1 graph),
            # timed against the same `full_depth`.
            self.fns["serving_default"] = self.loaded.signatures[early_exit]
            self.name = f"SavedModel `{early_exit}`"
            self.batch1_only = True

    def prepare(self, inputs):
        return {k: self._tf.constant(v) for k, v in inputs.items()}

    def call(self, signature, prepared):
        out = self.fns[signature](**prepared)
        return {k: v.numpy() for k, v in out.items()}


class TFLiteBackend:
    batch1_only = False

    def __init__(self, path, quantize, num_threads, xnnpack=True,
                 early_exit="serving_default"):
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_litert.interpreter import OpResolverType

        self.name = f"TFLite {quantize}" + {True: "", False: ", no XNNPACK",
                                             "latest": ", XNNPACK latest"}[xnnpack]
        kwargs = {}
        if xnnpack == "latest":  # the default delegate with its newest features switched on
            kwargs["experimental_default_delegate_latest_features"] = True
        if not xnnpack:  # LiteRT's own builtin kernels only.
            kwargs["experimental_op_resolver_type"] = (
                OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self.interpreter = Interpreter(
            model_path=path, num_threads=num_threads, **kwargs)
        self.runners = {s: self.interpreter.get_signature_runner(s) for s in SIGNATURES}
        if early_exit != "serving_default":
            # `serve_one`: the batch-1 IF chain, against the same `full_depth`.
            self.runners["serving_default"] = self.interpreter.get_signature_runner(early_exit)
            self.name += f" `{early_exit}`"
            self.batch1_only = True

    def prepare(self, inputs):
        return {k: np.ascontiguousarray(v, np.int32) for k, v in inputs.items()}

    def call(self, signature, prepared):
        # The runner resizes its inputs when the shape changes (checked: the
        # last, shorter dev batch runs and answers like the SavedModel).
        return self.runners[signature](**prepared)


def run_all(backend, signature, batches):
    outs = [backend.call(signature, backend.prepare(b)) for b in batches]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


# ----------------------------------------------------------------- accuracy


def accuracy_section(info, keras_out, labels, arrays, n_layers):
    """Sizes, accuracy and agreement of every artefact."""
    eval_batches = batches_of(arrays, FLAGS.batch_size)
    sm = SavedModelBackend(info["saved_model"])
    ref = run_all(sm, "serving_default", eval_batches)
    sm_full = run_all(sm, "full_depth", eval_batches)

    def row(name, size_bytes, early, full):
        r = {
            "artefact": name,
            "size_mb": None if size_bytes is None else _mb(size_bytes),
            "accuracy": float((early["predictions"] == labels).mean()),
            "mean_blocks": float(early["layers_executed"].mean()),
            "predictions_agree": int((early["predictions"] == ref["predictions"]).sum()),
            "layers_agree": int(
                (early["layers_executed"] == ref["layers_executed"]).sum()),
            "max_abs_prob_diff": float(
                np.abs(early["probabilities"] - ref["probabilities"]).max()),
            "num_examples": int(len(labels)),
        }
        if full is not None:
            r["early_vs_full_depth_mismatches"] = int(
                (early["predictions"] != full["predictions"]).sum())
            r["full_depth_accuracy"] = float((full["predictions"] == labels).mean())
        return r

    rows = [row("Keras model (`model.keras`)",
                os.path.getsize(os.path.join(FLAGS.model_dir, "model.keras")),
                keras_out, None)]
    rows.append(row("SavedModel", _dir_bytes(info["saved_model"]), ref, sm_full))
    for q in QUANTIZE:
        lite = TFLiteBackend(info["tflite"][q], q, FLAGS.num_threads)
        early = run_all(lite, "serving_default", eval_batches)
        full = run_all(lite, "full_depth", eval_batches)
        rows.append(row(f"TFLite `{q}`", os.path.getsize(info["tflite"][q]), early, full))
        del lite
    hist = np.bincount(ref["layers_executed"], minlength=n_layers + 1)[1:]
    return {
        "rows": rows,
        "saved_model_serving_vs_full_depth_mismatches": int(
            (ref["predictions"] != sm_full["predictions"]).sum()),
        "saved_model_layers_histogram": hist.tolist(),
        "eval_batches": len(eval_batches),
    }


# ------------------------------------------------------------------ latency


def time_backend(backend, inputs_list, reps, warmup, rng):
    """Per-input median seconds of both paths, interleaved A/B.

    Returns:
        `(times, layers)`: dict signature -> list of per-input median seconds,
        and the early-exit `layers_executed` per input (arrays).
    """
    prepared = [backend.prepare(x) for x in inputs_list]
    layers = [backend.call("serving_default", p)["layers_executed"] for p in prepared]
    for sig in SIGNATURES:  # Warm-up, cycling over the inputs.
        for i in range(warmup):
            backend.call(sig, prepared[i % len(prepared)])
    times = {s: [] for s in SIGNATURES}
    with bench_utils.NoGC():
        for p in prepared:
            per = {s: [] for s in SIGNATURES}
            for _ in range(reps):
                for j in rng.permutation(len(SIGNATURES)):
                    sig = SIGNATURES[j]
                    t0 = time.perf_counter()
                    backend.call(sig, p)
                    per[sig].append(time.perf_counter() - t0)
            for s in SIGNATURES:
                times[s].append(bench_utils.median(per[s]))
    return times, layers


def summarize_latency(name, batch, times, layers, n_layers):
    full = np.asarray(times["full_depth"])
    early = np.asarray(times["serving_default"])
    flat = np.concatenate(layers)
    mean_blocks = float(flat.mean())
    ideal = n_layers / mean_blocks
    measured = float(full.sum() / early.sum())
    out = {
        "backend": name,
        "batch": batch,
        "calls": len(early),
        "examples": int(len(flat)),
        "mean_blocks": mean_blocks,
        "ideal_speedup": ideal,
        "full_depth_ms": 1e3 * float(full.mean()),
        "early_exit_ms": 1e3 * float(early.mean()),
        "measured_speedup": measured,
        "measured_over_ideal": measured / ideal,
        "target": _target(name, batch),
    }
    out["within_target"] = (None if out["target"] is None
                            else out["measured_over_ideal"] >= out["target"])
    if batch == 1:
        # Early-exit latency against blocks executed: fixed cost + per block.
        blocks = flat.astype(np.float64)
        by_blocks = {
            int(b): 1e3 * bench_utils.median(early[blocks == b])
            for b in np.unique(flat)
        }
        out["early_exit_ms_by_blocks"] = by_blocks
        if len(by_blocks) >= 2:
            slope, intercept = np.polyfit(blocks, 1e3 * early, 1)
            out["fit_fixed_ms"] = float(intercept)
            out["fit_per_block_ms"] = float(slope)
        out["full_depth_per_block_ms"] = out["full_depth_ms"] / n_layers
        # What the loop adds per block run: early-exit time beyond the same
        # number of blocks at the full-depth graph's per-block cost.
        per_block_full = np.asarray(times["full_depth"]) / n_layers
        out["loop_overhead_per_block_ms"] = 1e3 * float(
            (early - blocks * per_block_full).sum() / blocks.sum())
    return out


def latency_section(info, arrays, n_layers, rng):
    n = len(arrays["token_ids"])
    pick = np.sort(rng.choice(n, size=min(FLAGS.batch1_examples, n), replace=False))
    singles = [{k: v[i:i + 1] for k, v in arrays.items()} for i in pick]
    large = batches_of(arrays, FLAGS.batch_size, full_only=True)
    if FLAGS.batch32_batches:
        large = large[:FLAGS.batch32_batches]
    backends = [("SavedModel", lambda: SavedModelBackend(info["saved_model"])),
                ("SavedModel `serve_one`",
                 lambda: SavedModelBackend(info["saved_model"], "serve_one"))]
    for q in TIMED_TFLITE:
        backends.append((
            f"TFLite {q}",
            lambda q=q: TFLiteBackend(info["tflite"][q], q, FLAGS.num_threads)))
        if "serve_one" in info["tflite_signatures"][q]:
            backends.append((
                f"TFLite {q} `serve_one`",
                lambda q=q: TFLiteBackend(info["tflite"][q], q, FLAGS.num_threads,
                                          early_exit="serve_one")))
    rows = []
    for name, make in backends:
        backend = make()
        for batch, inputs, reps, warmup in (
            (1, singles, FLAGS.batch1_reps, FLAGS.batch1_warmup),
            (FLAGS.batch_size, large, FLAGS.batch32_reps, FLAGS.batch32_warmup),
        ):
            if batch > 1 and getattr(backend, "batch1_only", False):
                continue
            t0 = time.perf_counter()
            times, layers = time_backend(backend, inputs, reps, warmup, rng)
            row = summarize_latency(name, batch, times, layers, n_layers)
            row["phase_seconds"] = time.perf_counter() - t0
            row["load_average_after"] = list(os.getloadavg())
            logging.info("%s", row)
            rows.append(row)
        del backend
        gc.collect()
    diagnostic = []
    if FLAGS.xnnpack_diagnostic:
        # The same TFLite files with LiteRT's builtin kernels only (no
        # XNNPACK), batch 1, on the first sentences of the sample: does the
        # loop's own cost depend on the delegate?
        few = singles[:FLAGS.xnnpack_diagnostic]
        for q in TIMED_TFLITE:
            for xnnpack in (True, False):
                backend = TFLiteBackend(
                    info["tflite"][q], q, FLAGS.num_threads, xnnpack=xnnpack)
                if xnnpack:
                    backend.name += " (diag)"
                times, layers = time_backend(backend, few, 2, 3, rng)
                row = summarize_latency(backend.name, 1, times, layers, n_layers)
                logging.info("%s", row)
                diagnostic.append(row)
                del backend
    return {"rows": rows, "batch1_indices": pick.tolist(),
            "batch32_batches": len(large), "xnnpack_diagnostic": diagnostic}


# ----------------------------------------------------------------- markdown


def _f(value, digits=3):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results):
    env = results["environment"]
    cfg = results["model"]
    ex = results["export"]
    acc = results["accuracy"]
    lat = results["latency"]
    n = cfg["num_layers"]
    lines = [
        "# Exported DACT model: size, accuracy and early-exit latency",
        "",
        "Generated by `benchmarks/export_benchmark.py` (do not edit by hand; "
        "rerun it).",
        "",
        f"Run: {env['date_utc']}. Command (from the repository root):",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"Machine: {env['cpu_model']} (`lscpu`), {env['cpu_cores']} cores, no "
        "GPU, shared with other jobs (load average 1/5/15 min at start "
        f"{', '.join(_f(v, 2) for v in env['load_average_at_start'])}, at end "
        f"{', '.join(_f(v, 2) for v in results['load_average_at_end'])}). "
        f"Python {env['python']}, TensorFlow {env['tensorflow']}, Keras "
        f"{env['keras']}, keras-hub {env['keras_hub']}, ai-edge-litert "
        f"{env['ai_edge_litert']}, NumPy {env['numpy']}. TF threads: intra "
        f"{env['intra_op_threads']} / inter {env['inter_op_threads']} "
        f"(0 = TF default); LiteRT `num_threads={results['flags']['num_threads']}` "
        "(default XNNPACK delegate). dact_tf at commit "
        f"`{env['git_commit'][:10]}`"
        + (" plus uncommitted changes under dact_tf/ ("
           f"{env['dact_tf_uncommitted_changes'].replace(chr(10), '; ')}; "
           f"sha1 of `git diff HEAD -- dact_tf`: {env['dact_tf_diff_sha1']})"
           if env["dact_tf_uncommitted_changes"] else "")
        + f". Total run time {_f(results['wall_seconds'] / 60, 1)} min.",
        "",
        f"Model: `{results['flags']['model_dir']}`: backbone "
        f"`{cfg['backbone']}`, {n} blocks, DACT tau {cfg['tau']}, halting rule "
        f"`{cfg['halting_rule']}`, pooling `{cfg['pooling']}`; task "
        f"`{cfg['task']}`, dev set {acc['rows'][0]['num_examples']} "
        f"sentences tokenized by the model's preprocessor (padded to "
        f"{cfg['sequence_length']} tokens).",
        "",
    ]
    if ex["pool_workaround_applied"]:
        lines += [
            "**TFLite conversion needed a workaround.** "
            + ("The library's own export did not convert: "
               f"`{ex['library_tflite_error']}`. " if ex["library_tflite_error"]
               else "")
            + "Mean pooling's `tf.cast(padding_mask, ...)[:, :, None]` "
            "(`DactEncoder._pool`) becomes a `tf.StridedSlice` with "
            "`new_axis_mask` on a `[?, ?]` tensor, which the converter cannot "
            "lower to a TFLite builtin, in both `serving_default` and "
            "`full_depth`. This run patched `DactEncoder._pool` in its own "
            "process to the same computation with `tf.expand_dims(..., -1)` "
            "and exported again; every artefact below comes from that export "
            "(its agreement with the unpatched Keras model is in the table).",
            "",
        ]
    secs = ex.get("seconds", {})
    if secs and not ex.get("reused"):
        lines += [
            "Export time: SavedModel "
            f"{_f(secs.get('saved_model'), 1)} s; TFLite conversion "
            + ", ".join(f"`{q}` {_f(secs.get('tflite_' + q), 1)} s" for q in QUANTIZE)
            + f". TFLite signatures: {', '.join(ex['tflite_signatures']['none'])}; "
            f"control flow ops: {ex['tflite_control_flow_ops']}.",
            "",
        ]
    lines += [
        "## 1. Size and accuracy",
        "",
        "Agreement columns: examples whose `predictions` / `layers_executed` "
        "equal the SavedModel's `serving_default`, out of "
        f"{acc['rows'][0]['num_examples']}. Early = full depth: mismatches "
        "between the artefact's own `serving_default` and `full_depth` "
        "predictions (the early exit's guarantee).",
        "",
        "| artefact | size MB | dev accuracy | mean blocks | predictions = SavedModel | "
        "layers_executed = SavedModel | max abs prob diff | early != full depth |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    total = acc["rows"][0]["num_examples"]
    for r in acc["rows"]:
        lines.append(
            f"| {r['artefact']} | {_f(r['size_mb'], 1)} | {_f(r['accuracy'], 4)} "
            f"| {_f(r['mean_blocks'], 3)} | {r['predictions_agree']}/{total} "
            f"| {r['layers_agree']}/{total} | {r['max_abs_prob_diff']:.2e} "
            f"| {r.get('early_vs_full_depth_mismatches', '-')} |")
    lines += [
        "",
        "SavedModel: `serving_default` vs `full_depth` prediction mismatches: "
        f"**{acc['saved_model_serving_vs_full_depth_mismatches']}** (must be 0). "
        "Blocks executed histogram (1..N): "
        f"{' '.join(str(c) for c in acc['saved_model_layers_histogram'])}. "
        "Size: SavedModel = its folder; MB = 10^6 bytes.",
        "",
        "## 2. Latency: early exit against full depth "
        f"(target: measured/ideal >= {TARGETS['batch_1']} at batch 1 for the "
        f"SavedModel, >= {TARGETS['batch_1_tflite']} for TFLite float32, "
        f">= {TARGETS['batch_32']} at batch {results['flags']['batch_size']}; "
        "none for quantized files)",
        "",
        "| backend | batch | inputs timed | mean blocks | ideal speedup N/mean "
        "| full depth ms | early exit ms | measured speedup | measured / ideal "
        "| within target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in lat["rows"]:
        lines.append(
            f"| {r['backend']} | {r['batch']} | {r['calls']} | "
            f"{_f(r['mean_blocks'])} | {_f(r['ideal_speedup'])} | "
            f"{_f(r['full_depth_ms'], 2)} | {_f(r['early_exit_ms'], 2)} | "
            f"{_f(r['measured_speedup'])} | {_f(r['measured_over_ideal'])} | "
            f"{'-' if r['within_target'] is None else 'yes' if r['within_target'] else '**no**'} |")
    flags_ = results["flags"]
    lines += [
        "",
        "Latency columns: mean over the timed inputs of each input's median "
        "call time; measured speedup = total full-depth time / total "
        "early-exit time over the same inputs. Batch 1: "
        f"{flags_['batch1_examples']} dev sentences drawn at random (seed "
        f"{flags_['seed']}), {flags_['batch1_reps']} timed calls per path each, "
        f"after {flags_['batch1_warmup']} warm-up calls per path. Batch "
        f"{flags_['batch_size']}: the dev set's {lat['batch32_batches']} full "
        f"batches (the last, partial batch is left out), "
        f"{flags_['batch32_reps']} timed calls per path each, after "
        f"{flags_['batch32_warmup']} warm-up calls. Each backend is timed in "
        "its own phase; within it the two paths alternate in random order. "
        "Mean blocks: of the timed inputs, from that backend's own early exit.",
        "",
        "Batch 1 early-exit latency by blocks executed (median ms over "
        "sentences) and a linear fit, against full depth / N:",
        "",
        "| backend | " + " | ".join(f"{b} block{'s' if b > 1 else ''}"
                                     for b in range(1, n + 1))
        + " | fit: fixed ms | fit: ms per block | full depth / N ms "
        "| loop overhead per block ms |",
        "|---|" + "---:|" * (n + 4),
    ]
    for r in lat["rows"] + lat.get("xnnpack_diagnostic", []):
        if r["batch"] != 1:
            continue
        by = {int(k): v for k, v in r["early_exit_ms_by_blocks"].items()}
        lines.append(
            f"| {r['backend']} | "
            + " | ".join(_f(by.get(b), 2) for b in range(1, n + 1))
            + f" | {_f(r.get('fit_fixed_ms'), 2)} | "
            f"{_f(r.get('fit_per_block_ms'), 2)} | "
            f"{_f(r['full_depth_per_block_ms'], 2)} | "
            f"{_f(r['loop_overhead_per_block_ms'], 2)} |")
    lines += [
        "",
        "Loop overhead per block: (early-exit time - blocks run x full-depth "
        "time / N) summed over the sentences, / blocks run. "
        + (f"The rows marked `no XNNPACK` and their XNNPACK twins (`(diag)`) "
           f"are a diagnostic on the first {flags_['xnnpack_diagnostic']} "
           "sentences of the batch-1 sample, 2 timed calls per path: the same "
           "files with LiteRT's builtin kernels only "
           "(`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`)."
           if lat.get("xnnpack_diagnostic") else ""),
        "",
    ]
    if lat.get("xnnpack_diagnostic"):
        lines += [
            "| diagnostic (batch 1) | sentences | mean blocks | full depth ms "
            "| early exit ms | measured / ideal | loop overhead per block ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in lat["xnnpack_diagnostic"]:
            lines.append(
                f"| {r['backend']} | {r['calls']} | {_f(r['mean_blocks'])} | "
                f"{_f(r['full_depth_ms'], 2)} | {_f(r['early_exit_ms'], 2)} | "
                f"{_f(r['measured_over_ideal'])} | "
                f"{_f(r['loop_overhead_per_block_ms'], 2)} |")
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(path, block):
    """Replaces the GENERATED block of `path` (or writes a new file)."""
    block = f"{BEGIN_MARK}\n\n{block}\n{END_MARK}\n"
    text = block
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if BEGIN_MARK in old and END_MARK in old:
            before = old.split(BEGIN_MARK)[0]
            after = old.split(END_MARK, 1)[1].lstrip("\n")
            text = before + block + ("\n" + after if after else "")
    with open(path, "w") as f:
        f.write(text)


# --------------------------------------------------------------------- main


def _apply_quick():
    for name, value in dict(
        batch1_examples=8, batch1_reps=1, batch1_warmup=3, batch32_batches=2,
        batch32_reps=1, batch32_warmup=1, max_eval_examples=80,
        xnnpack_diagnostic=4,
    ).items():
        setattr(FLAGS, name, value)


def main(argv):
    del argv
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required.")
    if FLAGS.quick:
        _apply_quick()
    started = time.time()
    rng = np.random.default_rng(FLAGS.seed)
    results = {
        "command": "PYTHONPATH=. .venv/bin/python -m benchmarks.export_benchmark"
        + "".join(" " + shlex.quote(a) for a in sys.argv[1:]),
        "environment": environment(),
        "flags": {k: getattr(FLAGS, k) for k in (
            "model_dir", "out_dir", "num_threads", "seed", "batch_size",
            "batch1_examples", "batch1_reps", "batch1_warmup",
            "batch32_batches", "batch32_reps", "batch32_warmup",
            "xnnpack_diagnostic",
            "max_eval_examples", "pool_workaround", "quick")},
        "targets": TARGETS,
    }
    model, config, dataset, arrays, labels = load_dev_set(FLAGS.model_dir)
    n_layers = int(model.num_layers)
    results["model"] = dict(
        num_layers=n_layers, task=config["data"]["task"],
        sequence_length=config["data"]["sequence_length"], **{
            k: config["model"].get(k)
            for k in ("backbone", "tau", "halting_rule", "pooling")})

    # The Keras reference, before any patching.
    from dact_tf.training import train_lib

    t0 = time.perf_counter()
    keras_out, keras_labels = train_lib.predict_dataset(model, dataset)
    np.testing.assert_array_equal(keras_labels, labels)
    results["keras_seconds"] = time.perf_counter() - t0

    out_dir = FLAGS.out_dir or tempfile.mkdtemp(prefix="dact_export_bench_")
    os.makedirs(out_dir, exist_ok=True)
    try:
        info = export_all(model, out_dir)
        results["export"] = info
        logging.info("Exports: %s", info)
        t0 = time.perf_counter()
        results["accuracy"] = accuracy_section(
            info, keras_out, labels, arrays, n_layers)
        results["accuracy_seconds"] = time.perf_counter() - t0
        logging.info("Accuracy: %s", results["accuracy"])
        results["latency"] = latency_section(info, arrays, n_layers, rng)
    finally:
        if not FLAGS.out_dir:
            shutil.rmtree(out_dir, ignore_errors=True)
    results["load_average_at_end"] = list(os.getloadavg())
    results["wall_seconds"] = time.time() - started
    results["cpu_seconds"] = time.process_time()

    if FLAGS.output_json:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output_json)), exist_ok=True)
        with open(FLAGS.output_json, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True, default=str)
    if FLAGS.results_md:
        write_markdown(FLAGS.results_md, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    app.run(main)
