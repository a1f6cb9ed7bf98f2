r"""TFLite float32: early exit vs full depth, batch 32 with and without XNNPACK, and batch 1.

Exports a trained model to a float32 `.tflite` file and times its
`serving_default` (the compacting `WHILE` loop) against its `full_depth` on
dev batches of 32, interleaved, first with LiteRT's default XNNPACK delegate,
then with the delegate's newest features on
(`experimental_default_delegate_latest_features`), then with the builtin
kernels only. If the ratio to the ideal speedup is
near 0.9 without the delegate and lower with it, the loop's extra cost comes
from how the delegate runs a loop body whose batch size changes. Then, at
batch 1 with XNNPACK, `serving_default`, `serve_one` and `full_depth` are
timed interleaved in one phase on `--sentences` dev sentences.

Usage (from the repository root, on a trained model directory):
    PYTHONPATH=. .venv/bin/python -m benchmarks.tflite_delegate_check \
        --model_dir=runs/study/sst2/seed2/dact
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import export_benchmark  # noqa: E402  (its --model_dir, data flags)

flags.DEFINE_integer("batches", 4, "Dev batches of 32 timed.")
flags.DEFINE_integer("reps", 2, "Timed calls per batch and signature.")
flags.DEFINE_integer("sentences", 100, "Batch 1: dev sentences timed (0: skip), 3 calls each.")
FLAGS = flags.FLAGS


def time_file(path, batches, xnnpack):
    """`(full_depth s, early exit s, mean blocks)` summed over the batches."""
    runners = export_benchmark.TFLiteBackend(path, "none", 2, xnnpack=xnnpack).runners
    for runner in runners.values():  # warm-up
        runner(**batches[0])
    seconds, blocks = {s: 0.0 for s in runners}, []
    for rep in range(FLAGS.reps):
        for batch in batches:
            for s, runner in runners.items():
                t0 = time.perf_counter()
                out = runner(**batch)
                seconds[s] += time.perf_counter() - t0
                if s == "serving_default" and rep == 0:
                    blocks.append(float(np.mean(out["layers_executed"])))
    return seconds["full_depth"], seconds["serving_default"], float(np.mean(blocks))


def time_batch1(path, arrays):
    """Batch 1 with XNNPACK: `serving_default`, `serve_one`, `full_depth` interleaved.

    Returns `({signature: mean over sentences of the median ms}, mean blocks)`.
    """
    interpreter = export_benchmark.TFLiteBackend(path, "none", 2).interpreter
    names = ("serving_default", "serve_one", "full_depth")
    runners = {s: interpreter.get_signature_runner(s) for s in names}
    rng = np.random.default_rng(0)
    rows = rng.choice(len(arrays["token_ids"]), FLAGS.sentences, replace=False)
    singles = [{k: np.ascontiguousarray(a[i:i + 1], np.int32) for k, a in arrays.items()}
               for i in rows]
    for x in singles[:20]:  # warm-up
        for runner in runners.values():
            runner(**x)
    medians, blocks = {s: [] for s in names}, []
    for x in singles:
        times = {s: [] for s in names}
        for _ in range(3):
            for j in rng.permutation(len(names)):
                t0 = time.perf_counter()
                out = runners[names[j]](**x)
                times[names[j]].append(time.perf_counter() - t0)
                if names[j] == "serve_one":
                    layers = int(out["layers_executed"][0])
        for s in names:
            medians[s].append(1000 * float(np.median(times[s])))
        blocks.append(layers)
    return {s: float(np.mean(v)) for s, v in medians.items()}, float(np.mean(blocks))


def main(argv):
    del argv
    from dact_tf.export import export_saved_model
    from dact_tf.export.tflite import export_tflite

    model, _, _, arrays, _ = export_benchmark.load_dev_set(FLAGS.model_dir)
    batches = [{k: np.ascontiguousarray(a[i * 32:(i + 1) * 32], np.int32)
                for k, a in arrays.items()} for i in range(FLAGS.batches)]
    with tempfile.TemporaryDirectory() as tmp:
        saved = export_saved_model(model, os.path.join(tmp, "saved"), text_signatures=False)
        path = os.path.join(tmp, "model.tflite")
        export_tflite(saved, path, quantize="none")
        for xnnpack in (True, "latest", False):
            full, early, mean_blocks = time_file(path, batches, xnnpack)
            speedup = full / early
            ideal = model.num_layers / mean_blocks
            mode = {True: "on", "latest": "on, latest features", False: "off"}[xnnpack]
            print(f"XNNPACK {mode}: full depth {1000 * full / len(batches) / FLAGS.reps:.1f} ms, "
                  f"early exit {1000 * early / len(batches) / FLAGS.reps:.1f} ms a batch, "
                  f"{mean_blocks:.2f} mean blocks, speedup {speedup:.3f}, "
                  f"{speedup / ideal:.3f} of ideal", flush=True)
        if FLAGS.sentences:
            ms, mean_blocks = time_batch1(path, arrays)
            ideal = model.num_layers / mean_blocks
            print(f"Batch 1, XNNPACK on, {FLAGS.sentences} sentences, {mean_blocks:.2f} mean "
                  f"blocks (ideal {ideal:.3f}): full depth {ms['full_depth']:.2f} ms; "
                  + "; ".join(f"{s} {ms[s]:.2f} ms, {ms['full_depth'] / ms[s] / ideal:.3f} of ideal"
                              for s in ("serving_default", "serve_one")), flush=True)


if __name__ == "__main__":
    flags.mark_flag_as_required("model_dir")
    app.run(main)
