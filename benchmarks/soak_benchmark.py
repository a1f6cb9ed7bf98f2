r"""Soak: the exported SavedModel under concurrent requests, early exit vs full depth.

One loaded SavedModel (`tf.saved_model.load`) is called from `--threads`
Python threads issuing requests back to back, as a threaded server would.
Two configurations share the run: the `serving_default` signature (per-example
early exit) and `full_depth` (every block). They alternate in interleaved time
slices of `--slice_s` seconds (each round runs one slice of each, in a random
order) until each has had `--duration_s` seconds, so both see the same machine
load. Reported per configuration: throughput (requests/s and examples/s over
the slices' wall time), latency percentiles (p50/p90/p99/max of every
request's own wall time, from the call to the outputs as numpy arrays), the
mean blocks executed, answers that differ from the single-threaded reference
(must be 0), and the process RSS at the start and end of the configuration's
slices (memory flat?); then early/full ratios.

The model, one of (first that is set):

- `--saved_model`: an exported version folder (`.../<version>`), as is.
- `--model_dir`: a trained dact_tf model directory (`dact-tf train`),
  exported with `dact_tf.export.export_saved_model` to a temporary folder.
- otherwise `--backbone` (default `minilm_l6`, pretrained encoder) with
  untrained DACT heads: one halting bias shared by all heads is bisected so
  that the mean exit on 64 dev sentences is (N + 1) / 2 blocks. Untrained
  heads see nearly the same features for every sentence, so most exits
  bunch at one or two blocks; a target between two integers puts the bias
  where they split, and the exits vary (the predictions are meaningless,
  which does not matter for timing). `tiny` is a random 4-block BERT for
  smoke runs.

Requests: `--num_requests` distinct requests of `--batch_size` SST-2 dev
sentences (`dact_tf/resources/sst2/dev/tsv`, drawn with `--seed`), tokenized
and truncated to `--seq_len` tokens by the model's tokenizer (an export's
`assets.extra/vocab.txt` if it has one, else `--backbone`'s), then padded to
the request's longest sentence (`--pad=longest`, what `serve_text` and a
sensible client do) or to `--seq_len` (`--pad=fixed`). Both configurations
cycle through the same requests in the same order. The reference answers
come from one single-threaded pass over the pool before the soak.

Timing hygiene: a warm-up of `--warmup_s` per configuration with all threads
first; Python's garbage collector runs between slices only
(`bench_utils.NoGC` per slice), so no slice pays for another's garbage and
memory is still collected. Time is bounded: about `2 * (warmup_s +
duration_s)` seconds of soak, plus loading, export (and calibration) and
the reference pass.

Usage (from the repository root):
    PYTHONPATH=. .venv/bin/python -m benchmarks.soak_benchmark \
        --model_dir=runs/glue_study/sst2/dact_tau0.15
    # a smoke run (a tiny random model, seconds):
    PYTHONPATH=. .venv/bin/python -m benchmarks.soak_benchmark --quick \
        --backbone=tiny --results_md=/tmp/soak.md --results_json=/tmp/soak.json

Writes `--results_json` and `--results_md` (the whole file: generated, do not
edit by hand).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import concurrent.futures  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks import bench_utils  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SIGNATURES = ("serving_default", "full_depth")
INPUT_KEYS = ("token_ids", "padding_mask", "segment_ids")
MAX_DURATION_S = 600.0

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "saved_model", None, "An exported SavedModel version folder (.../<version>).")
flags.DEFINE_string(
    "model_dir", None,
    "A trained dact_tf model directory, exported to a temporary folder "
    "(ignored with --saved_model).")
flags.DEFINE_string(
    "backbone", "minilm_l6",
    "Without --saved_model and --model_dir: the backbone spec of an untrained "
    "DactClassifier with calibrated halting ('tiny' for a smoke run). With "
    "--saved_model and no vocabulary in the export: the tokenizer to use.")
flags.DEFINE_integer("threads", 8, "Concurrent client threads.")
flags.DEFINE_float(
    "duration_s", 30.0,
    f"Soak seconds per configuration (at most {MAX_DURATION_S:.0f}).")
flags.DEFINE_float("slice_s", 2.0, "Length of one interleaved time slice.")
flags.DEFINE_float("warmup_s", 5.0, "Warm-up seconds per configuration.")
flags.DEFINE_integer("batch_size", 1, "Sentences per request.")
flags.DEFINE_integer(
    "seq_len", 64, "Tokens per sentence: truncation length (and width with "
    "--pad=fixed). At most the model's max_sequence_length.")
flags.DEFINE_enum(
    "pad", "longest", ["longest", "fixed"],
    "Pad each request to its longest sentence, or to --seq_len.")
flags.DEFINE_integer("num_requests", 200, "Distinct requests in the pool.")
flags.DEFINE_integer("seed", 0, "Seed: sentences, request order, slice order.")
flags.DEFINE_bool(
    "quick", False,
    "A smoke run: 4 s per configuration in 1 s slices, 1 s warm-up, 24 "
    "requests.")
flags.DEFINE_string(
    "results_md", os.path.join(HERE, "SOAK_RESULTS.md"),
    "Markdown output ('' to skip).")
flags.DEFINE_string(
    "results_json", os.path.join(HERE, "results", "soak_benchmark.json"),
    "JSON output ('' to skip).")


# -------------------------------------------------------------------- memory


def memory_mb():
    """`(rss, peak_rss)` of this process in MB (VmRSS, VmHWM of /proc)."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024 / 1e6  # kB -> MB
    return values["VmRSS"], values["VmHWM"]


# --------------------------------------------------------------------- model


def _sst2_dev_texts():
    from dact_tf.data import builtin_sst2_dir
    from dact_tf.data import read_glue

    return list(read_glue("sst2", "dev", builtin_sst2_dir()).texts)


def _calibrate_halting_bias(model, features, target_mean_exit, steps=20):
    """Bisects one halting bias shared by all heads to `target_mean_exit`.

    For untrained heads only: the mean exit of the model's own early exit on
    `features` grows with the bias. Returns a dict describing the result.
    """
    heads = model.encoder.heads

    def exits(bias):
        heads.halting_bias_weight.assign(
            np.full([heads.num_heads], bias, np.float32))
        return model(features, training=False)["layers_executed"].numpy()

    lo, hi = -12.0, 12.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if exits(mid).mean() < target_mean_exit:
            lo = mid
        else:
            hi = mid
    bias = 0.5 * (lo + hi)
    layers = exits(bias)
    return {
        "method": "untrained heads; one halting bias shared by all heads, "
        "bisected to the target mean exit on the first 64 dev sentences",
        "halting_bias": bias,
        "target_mean_exit": target_mean_exit,
        "mean_exit": float(layers.mean()),
        "layers_histogram": np.bincount(
            layers, minlength=model.num_layers + 1)[1:].tolist(),
    }


def prepare_model(export_base, texts):
    """Returns `(saved_model_dir, tokenizer, info)` for the chosen source."""
    import keras
    import keras_hub
    import tensorflow as tf

    from dact_tf.export import export_saved_model
    from dact_tf.export import read_metadata
    from dact_tf.models import backbones

    if FLAGS.saved_model:
        path = FLAGS.saved_model
        info = {"source": "saved_model", "path": path}
        meta = read_metadata(path)
        info["metadata"] = meta
        vocab = os.path.join(path, "assets.extra", "vocab.txt")
        if os.path.isfile(vocab):
            tokenizer = keras_hub.models.BertTokenizer(
                vocabulary=vocab,
                lowercase=meta.get("text", {}).get("lowercase", True))
            info["tokenizer"] = vocab
        else:
            tokenizer = backbones.load_tokenizer(FLAGS.backbone)
            info["tokenizer"] = FLAGS.backbone
        if tokenizer.vocabulary_size() > meta["vocabulary_size"]:
            raise app.UsageError(
                f"The tokenizer ({info['tokenizer']}) has "
                f"{tokenizer.vocabulary_size()} tokens; the export embeds "
                f"{meta['vocabulary_size']}. Pass the right --backbone.")
        return path, tokenizer, info

    if FLAGS.model_dir:
        from dact_tf.training import train_lib

        model, preprocessor, config = train_lib.load_model_dir(FLAGS.model_dir)
        tokenizer = preprocessor.tokenizer
        info = {"source": "model_dir", "path": FLAGS.model_dir,
                "config": config}
    else:
        keras.utils.set_random_seed(FLAGS.seed)
        backbone, tokenizer = backbones.load_backbone(
            FLAGS.backbone, max_sequence_length=FLAGS.seq_len, dropout=0.0)
        from dact_tf.models import DactClassifier

        model = DactClassifier(backbone, num_classes=2, dropout=0.0,
                               pooling="mean")
        sample = backbones.make_preprocessor(
            tokenizer, sequence_length=FLAGS.seq_len)(tf.constant(texts[:64]))
        info = {"source": "backbone", "backbone": FLAGS.backbone,
                "calibration": _calibrate_halting_bias(
                    model, sample, (model.num_layers + 1) / 2.0)}
        logging.info("Calibration: %s", info["calibration"])
    t0 = time.perf_counter()
    path = export_saved_model(model, export_base)
    info["export_seconds"] = time.perf_counter() - t0
    info["metadata"] = read_metadata(path)
    return path, tokenizer, info


# ------------------------------------------------------------------ requests


def make_requests(tokenizer, texts, rng):
    """The request pool: a list of dicts of int32 numpy arrays."""
    import tensorflow as tf

    from dact_tf.models import backbones

    preprocessor = backbones.make_preprocessor(
        tokenizer, sequence_length=FLAGS.seq_len)
    picks = rng.choice(len(texts), size=(FLAGS.num_requests, FLAGS.batch_size))
    tokens = preprocessor(tf.constant([texts[i] for i in picks.ravel()]))
    tokens = {k: tf.cast(tokens[k], tf.int32).numpy() for k in INPUT_KEYS}
    requests = []
    for r in range(FLAGS.num_requests):
        rows = slice(r * FLAGS.batch_size, (r + 1) * FLAGS.batch_size)
        request = {k: v[rows] for k, v in tokens.items()}
        if FLAGS.pad == "longest":
            width = int(request["padding_mask"].sum(axis=1).max())
            request = {k: np.ascontiguousarray(v[:, :width])
                       for k, v in request.items()}
        requests.append(request)
    return requests


# --------------------------------------------------------------------- soak


class Client:
    """Calls the loaded signatures and checks answers against the reference."""

    def __init__(self, saved_model_dir, requests):
        import tensorflow as tf

        self.loaded = tf.saved_model.load(saved_model_dir)
        self.fns = {s: self.loaded.signatures[s] for s in SIGNATURES}
        self.requests = [
            {k: tf.constant(v) for k, v in r.items()} for r in requests]
        self.reference = {
            s: [self.call(s, i) for i in range(len(requests))]
            for s in SIGNATURES
        }

    def call(self, signature, index):
        out = self.fns[signature](**self.requests[index])
        return {k: v.numpy() for k, v in out.items()}

    def matches(self, signature, index, outputs):
        want = self.reference[signature][index]
        return all(np.array_equal(outputs[k], want[k]) for k in want)


def run_slice(client, pool, signature, seconds, cursor, order):
    """`--threads` workers call `signature` back to back for `seconds`.

    Returns a dict: wall seconds (start to the last answer), per-request
    latencies (seconds), request indices, and answers that differed from
    the reference.
    """
    def worker(deadline):
        latencies, indices, mismatches = [], [], 0
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                break
            index = order[next(cursor) % len(order)]
            out = client.call(signature, index)
            latencies.append(time.perf_counter() - t0)
            indices.append(index)
            mismatches += not client.matches(signature, index, out)
        return latencies, indices, mismatches

    start = time.perf_counter()
    futures = [pool.submit(worker, start + seconds)
               for _ in range(FLAGS.threads)]
    parts = [f.result() for f in futures]
    wall = time.perf_counter() - start
    return {
        "wall": wall,
        "latencies": [x for p in parts for x in p[0]],
        "indices": [x for p in parts for x in p[1]],
        "mismatches": sum(p[2] for p in parts),
    }


def soak(client, rng):
    """Warm-up, then interleaved slices. Returns `(per_signature, slices)`."""
    order = rng.permutation(len(client.requests))
    cursors = {s: itertools.count() for s in SIGNATURES}
    acc = {s: {"wall": 0.0, "latencies": [], "indices": [], "mismatches": 0,
               "rss": []} for s in SIGNATURES}
    slices = []
    with concurrent.futures.ThreadPoolExecutor(FLAGS.threads) as pool:
        for s in SIGNATURES:
            logging.info("Warm-up: %s, %.1f s", s, FLAGS.warmup_s)
            run_slice(client, pool, s, FLAGS.warmup_s, itertools.count(), order)
        rounds = int(np.ceil(FLAGS.duration_s / FLAGS.slice_s))
        for r in range(rounds):
            for j in rng.permutation(len(SIGNATURES)):
                s = SIGNATURES[j]
                seconds = min(FLAGS.slice_s, FLAGS.duration_s - r * FLAGS.slice_s)
                with bench_utils.NoGC():  # Collects first, then stays off.
                    rss_start, _ = memory_mb()
                    part = run_slice(client, pool, s, seconds, cursors[s], order)
                    rss_end, _ = memory_mb()
                a = acc[s]
                a["wall"] += part["wall"]
                a["latencies"] += part["latencies"]
                a["indices"] += part["indices"]
                a["mismatches"] += part["mismatches"]
                a["rss"].append((rss_start, rss_end))
                slices.append({
                    "round": r, "signature": s,
                    "requests": len(part["latencies"]),
                    "wall_s": part["wall"],
                    "rss_mb_start": rss_start, "rss_mb_end": rss_end,
                    "load_average": list(os.getloadavg()),
                })
                logging.info("Slice %s", slices[-1])
    return acc, slices


def summarize(acc, client, num_layers):
    """Throughput, latency percentiles, blocks, memory and the ratios."""
    out = {}
    for s, a in acc.items():
        lat_ms = 1e3 * np.asarray(a["latencies"], np.float64)
        layers = np.concatenate(
            [client.reference["serving_default"][i]["layers_executed"]
             for i in a["indices"]])
        requests = len(lat_ms)
        examples = len(layers)
        rss = np.asarray(a["rss"])
        out[s] = {
            "requests": requests,
            "examples": examples,
            "wall_s": a["wall"],
            "requests_per_s": requests / a["wall"],
            "examples_per_s": examples / a["wall"],
            "latency_ms": {
                "mean": float(lat_ms.mean()),
                "p50": bench_utils.median(lat_ms),
                "p90": float(np.percentile(lat_ms, 90)),
                "p99": float(np.percentile(lat_ms, 99)),
                "max": float(lat_ms.max()),
            },
            "mean_blocks": (float(layers.mean()) if s == "serving_default"
                            else float(num_layers)),
            "answer_mismatches": a["mismatches"],
            "rss_mb_start": float(rss[0, 0]),
            "rss_mb_end": float(rss[-1, 1]),
            "rss_mb_max_slice_end": float(rss[:, 1].max()),
        }
    early, full = out["serving_default"], out["full_depth"]
    out["ratios_early_over_full"] = {
        "requests_per_s": early["requests_per_s"] / full["requests_per_s"],
        **{f"latency_{q}": early["latency_ms"][q] / full["latency_ms"][q]
           for q in ("p50", "p90", "p99", "max")},
        "ideal_latency": early["mean_blocks"] / num_layers,
    }
    return out


# ------------------------------------------------------------------ markdown


def _f(value, digits=2):
    return f"{value:.{digits}f}"


def markdown(results):
    """The Markdown report of one run."""
    env = results["environment"]
    fl = results["flags"]
    model = results["model"]
    meta = model["metadata"]
    summary = results["summary"]
    ratios = summary["ratios_early_over_full"]
    n = meta["num_layers"]
    if model["source"] == "backbone":
        described = (
            f"`{model['backbone']}` backbone with untrained DACT heads (halting "
            f"bias {_f(model['calibration']['halting_bias'], 3)} bisected to a "
            f"mean exit of {(n + 1) / 2:g} blocks)")
    else:
        described = f"`{model['path']}` ({model['source']})"
    lines = [
        "# Soak: the exported model under concurrent requests",
        "",
        "Generated by `benchmarks/soak_benchmark.py` (do not edit by hand; "
        "rerun it).",
        "",
        f"Run: {env['date_utc']}. Command (from the repository root):",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"Machine: {env['cpu_model']}, {env['cpu_cores']} cores, GPUs "
        f"{env['gpus'] or 'none'}; load average 1/5/15 min at start "
        f"{', '.join(_f(v) for v in env['load_average_at_start'])}, at end "
        f"{', '.join(_f(v) for v in results['load_average_at_end'])}. "
        f"TensorFlow {env['tensorflow']}, Keras {env['keras']}, Python "
        f"{env['python']}; TF threads intra {env['intra_op_threads']} / inter "
        f"{env['inter_op_threads']} (0 = default). dact_tf at "
        f"`{env['git_commit'][:10]}`"
        + (" with uncommitted changes under dact_tf/"
           if env["dact_tf_uncommitted_changes"] else "") + ".",
        "",
        f"Model: {described}; {n} blocks, task `{meta['task']}`. Requests: "
        f"{fl['num_requests']} distinct requests of {fl['batch_size']} SST-2 "
        f"dev sentence(s), truncated to {fl['seq_len']} tokens, padded to "
        + ("each request's longest sentence" if fl["pad"] == "longest"
           else f"{fl['seq_len']} tokens")
        + f" (mean width {_f(results['mean_request_width'], 1)} tokens). "
        f"{fl['threads']} client threads calling one `tf.saved_model.load`ed "
        f"model back to back; {_f(fl['duration_s'], 0)} s per signature in "
        f"interleaved {_f(fl['slice_s'], 1)} s slices after a "
        f"{_f(fl['warmup_s'], 0)} s warm-up each.",
        "",
        "| signature | requests | requests/s | examples/s | mean blocks "
        "| p50 ms | p90 ms | p99 ms | max ms | answers != reference "
        "| RSS start MB | RSS end MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in SIGNATURES:
        r = summary[s]
        lat = r["latency_ms"]
        lines.append(
            f"| `{s}` | {r['requests']} | {_f(r['requests_per_s'], 1)} | "
            f"{_f(r['examples_per_s'], 1)} | {_f(r['mean_blocks'])} | "
            f"{_f(lat['p50'])} | {_f(lat['p90'])} | {_f(lat['p99'])} | "
            f"{_f(lat['max'])} | {r['answer_mismatches']} | "
            f"{_f(r['rss_mb_start'], 1)} | {_f(r['rss_mb_end'], 1)} |")
    lines += [
        "",
        "Blocks executed by the early exit over the request pool "
        f"(1..{n} blocks): {results['reference_layers_histogram']}.",
        "",
        "Early exit / full depth: throughput "
        f"{_f(ratios['requests_per_s'], 3)}x; latency p50 "
        f"{_f(ratios['latency_p50'], 3)}, p90 {_f(ratios['latency_p90'], 3)}, "
        f"p99 {_f(ratios['latency_p99'], 3)}, max "
        f"{_f(ratios['latency_max'], 3)} (ideal: mean blocks / N = "
        f"{_f(ratios['ideal_latency'], 3)}).",
        "",
        "Latency: each request's wall time from the call to its outputs as "
        "numpy arrays, while the other threads run; throughput: requests "
        "answered / the slices' wall time (start to the last answer). "
        "Answers != reference: requests whose outputs differ, bit for bit, "
        "from a single-threaded pass before the soak (must be 0). RSS: the "
        "process's resident memory at the start of the signature's first "
        "slice and the end of its last (after the warm-up; garbage collected "
        f"between slices); peak RSS of the run {_f(results['peak_rss_mb'], 1)}"
        f" MB. Total run time {_f(results['wall_seconds'], 0)} s.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------- main


def _apply_quick():
    bench_utils.apply_quick(
        FLAGS,
        duration_s=4.0, slice_s=1.0, warmup_s=1.0, num_requests=24,
    )


def main(argv):
    del argv
    if FLAGS.quick:
        _apply_quick()
    if not 0 < FLAGS.duration_s <= MAX_DURATION_S:
        raise app.UsageError(
            f"--duration_s must be in (0, {MAX_DURATION_S:.0f}].")
    if not 0 < FLAGS.slice_s <= FLAGS.duration_s:
        raise app.UsageError("--slice_s must be in (0, --duration_s].")
    if not 0 <= FLAGS.warmup_s <= MAX_DURATION_S:
        raise app.UsageError("--warmup_s must be in [0, 600].")
    if FLAGS.threads < 1 or FLAGS.batch_size < 1 or FLAGS.num_requests < 1:
        raise app.UsageError(
            "--threads, --batch_size and --num_requests must be >= 1.")
    started = time.time()
    rng = np.random.default_rng(FLAGS.seed)
    results = {
        "command": "PYTHONPATH=. .venv/bin/python -m benchmarks.soak_benchmark"
        + "".join(" " + shlex.quote(a) for a in sys.argv[1:]),
        "environment": bench_utils.environment(),
        "flags": {k: getattr(FLAGS, k) for k in (
            "saved_model", "model_dir", "backbone", "threads", "duration_s",
            "slice_s", "warmup_s", "batch_size", "seq_len", "pad",
            "num_requests", "seed", "quick")},
    }
    texts = _sst2_dev_texts()
    export_base = tempfile.mkdtemp(prefix="dact_soak_")
    try:
        path, tokenizer, info = prepare_model(export_base, texts)
        results["model"] = info
        max_len = info["metadata"]["max_sequence_length"]
        if FLAGS.seq_len > max_len:
            raise app.UsageError(
                f"--seq_len {FLAGS.seq_len} > the model's max_sequence_length "
                f"{max_len}.")
        requests = make_requests(tokenizer, texts, rng)
        results["mean_request_width"] = float(
            np.mean([r["token_ids"].shape[1] for r in requests]))
        t0 = time.perf_counter()
        client = Client(path, requests)
        results["load_and_reference_seconds"] = time.perf_counter() - t0
        acc, slices = soak(client, rng)
    finally:
        shutil.rmtree(export_base, ignore_errors=True)
    num_layers = info["metadata"]["num_layers"]
    results["summary"] = summarize(acc, client, num_layers)
    results["slices"] = slices
    results["reference_layers_histogram"] = np.bincount(
        np.concatenate([o["layers_executed"]
                        for o in client.reference["serving_default"]]),
        minlength=num_layers + 1)[1:].tolist()
    results["peak_rss_mb"] = memory_mb()[1]
    results["load_average_at_end"] = list(os.getloadavg())
    results["wall_seconds"] = time.time() - started
    report = markdown(results)
    if FLAGS.results_json:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.results_json)),
                    exist_ok=True)
        with open(FLAGS.results_json, "w") as f:
            json.dump(results, f, indent=2, default=str)
            f.write("\n")
    if FLAGS.results_md:
        with open(FLAGS.results_md, "w") as f:
            f.write(report)
    print(report)


if __name__ == "__main__":
    app.run(main)
