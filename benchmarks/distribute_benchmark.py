r"""Training throughput (examples/s) under tf.distribute, mixed precision and XLA.

Builds one DactClassifier per configuration (MiniLM-L6 by default), all with
the same global batch and sequence length, then times `model.fit` on
synthetic token ids in interleaved rounds (config A, B, C, ..., then again)
so the ratios against `one_device` come from the same stretch of machine
time. Configurations:

- `one_device`: float32, one device (the GPU if there is one).
- `mirrored`: MirroredStrategy over every local GPU, or, without a GPU, over
  `--cpu_replicas` logical CPU devices that share the same cores (that
  measures the strategy's overhead, not a speedup).
- `mixed`: one device, mixed_float16 on GPU or mixed_bfloat16 on CPU.
- `xla`: one device, `jit_compile=True` training step.
- `mixed_xla`: both.

Writes `DISTRIBUTE_RESULTS.md` and `results/distribute_benchmark.json` next
to this file.

Usage (from the repository root):
    PYTHONPATH=. python -m benchmarks.distribute_benchmark
    PYTHONPATH=. python -m benchmarks.distribute_benchmark --configs=one_device,mixed --steps=5
"""

import json
import os
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks import bench_utils  # noqa: E402

CONFIGS = ("one_device", "mirrored", "mixed", "xla", "mixed_xla")
HERE = os.path.dirname(os.path.abspath(__file__))

flags.DEFINE_list("configs", list(CONFIGS), f"Configurations, from {CONFIGS}.")
flags.DEFINE_string("backbone", "minilm_l6", "Backbone spec (tiny for a smoke run).")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_integer("seq_len", 64, "Tokens per example.")
flags.DEFINE_integer("steps", 8, "Timed training steps per round and configuration.")
flags.DEFINE_integer("rounds", 3, "Interleaved timing rounds.")
flags.DEFINE_integer("cpu_replicas", 2, "Logical CPU devices for `mirrored` without a GPU.")
flags.DEFINE_string("results_md", os.path.join(HERE, "DISTRIBUTE_RESULTS.md"), "Markdown output.")
flags.DEFINE_string("results_json", os.path.join(HERE, "results", "distribute_benchmark.json"), "JSON output.")
FLAGS = flags.FLAGS


def _setup_devices():
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU") and FLAGS.cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.cpu_replicas
        )


def _build(config):
    import keras

    from dact_tf.training import distribute
    from dact_tf.models import backbones
    from dact_tf.models.dact_classifier import DactClassifier

    strategy = distribute.get_strategy("mirrored" if config == "mirrored" else "one_device")
    policy = distribute.mixed_precision_policy("auto" if "mixed" in config else "none")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        with strategy.scope():
            backbone, _ = backbones.load_backbone(FLAGS.backbone, max_sequence_length=FLAGS.seq_len)
            model = DactClassifier(backbone, num_classes=2, tau=0.06)
            model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile="xla" in config)
    finally:
        keras.config.set_dtype_policy(previous)
    return model, {
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "policy": policy,
        "jit_compile": "xla" in config,
    }


def _dataset(vocabulary_size, steps):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    n = FLAGS.batch_size * steps
    ids = rng.integers(min(1000, vocabulary_size // 2), vocabulary_size, size=(n, FLAGS.seq_len)).astype("int32")
    lengths = rng.integers(FLAGS.seq_len // 4, FLAGS.seq_len + 1, size=n)
    mask = np.arange(FLAGS.seq_len)[None, :] < lengths[:, None]
    features = {
        "token_ids": np.where(mask, ids, 0).astype("int32"),
        "padding_mask": mask,
        "segment_ids": np.zeros_like(ids),
    }
    labels = rng.integers(0, 2, size=n).astype("int32")
    return tf.data.Dataset.from_tensor_slices((features, labels)).batch(FLAGS.batch_size).cache()


def _fit_seconds(model, dataset):
    start = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0)
    return time.perf_counter() - start


def render_markdown(results):
    env = results["environment"]
    device = ", ".join(env["gpus"]) if env["gpus"] else "no GPU"
    lines = [
        "# Training throughput: tf.distribute, mixed precision, XLA",
        "",
        f"Run: {env['date_utc']}. Command (from the repository root):",
        "",
        f"    {results['command']}",
        "",
        f"Machine: {env['cpu_model']}, {env['cpu_cores']} cores, {device}; load average at "
        f"start {', '.join(f'{v:.2f}' for v in env['load_average_at_start'])}. TensorFlow "
        f"{env['tensorflow']}, Keras {env['keras']}, keras-hub {env['keras_hub']}; commit "
        f"`{env['git_commit'][:10]}`.",
        "",
        f"Backbone `{results['backbone']}`, global batch {results['batch_size']}, sequence "
        f"length {results['seq_len']}. Each configuration trains {results['steps']} steps per "
        f"round; {results['rounds']} interleaved rounds; the table gives the median round. "
        "Ratios are against `one_device` from the same run.",
        "",
        "| config | strategy | replicas | dtype policy | XLA | examples/s (median) | rounds min-max | vs one_device |",
        "|---|---|---:|---|---|---:|---:|---:|",
    ]
    base = results["points"].get("one_device", {}).get("examples_per_second")
    for name, p in results["points"].items():
        ratio = f"{p['examples_per_second'] / base:.2f}x" if base else "n/a"
        per_round = [results["batch_size"] * results["steps"] / t for t in p["round_s"]]
        lines.append(
            f"| {name} | {p['strategy']} | {p['replicas']} | {p['policy']} | "
            f"{'yes' if p['jit_compile'] else 'no'} | {p['examples_per_second']:.1f} | "
            f"{min(per_round):.1f}-{max(per_round):.1f} | {ratio} |"
        )
    lines += ["", *results.get("notes", [])]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    unknown = set(FLAGS.configs) - set(CONFIGS)
    if unknown:
        raise app.UsageError(f"Unknown configs {sorted(unknown)}; expected {CONFIGS}.")
    _setup_devices()
    import keras

    from dact_tf.models import backbones

    env = bench_utils.environment()
    vocabulary_size = backbones.load_backbone(FLAGS.backbone)[0].vocabulary_size
    dataset = _dataset(vocabulary_size, FLAGS.steps)
    models, points = {}, {}
    for config in FLAGS.configs:
        logging.info("Building %s", config)
        keras.utils.set_random_seed(0)
        models[config], points[config] = _build(config)
        logging.info("Warm-up (tracing) %s", config)
        points[config]["first_fit_s"] = _fit_seconds(models[config], dataset.take(2))
        points[config]["round_s"] = []
    with bench_utils.NoGC():
        for r in range(FLAGS.rounds):
            for config in FLAGS.configs:
                seconds = _fit_seconds(models[config], dataset)
                points[config]["round_s"].append(seconds)
                logging.info("round %d %s: %.1f examples/s", r, config,
                             FLAGS.batch_size * FLAGS.steps / seconds)
    for p in points.values():
        p["examples_per_second"] = FLAGS.batch_size * FLAGS.steps / bench_utils.median(p["round_s"])
    notes = []
    if not env["gpus"]:
        notes.append(
            "No GPU on this machine: `mirrored` runs two replicas on logical CPU devices "
            "that share the same cores, so it shows the strategy's overhead, not a speedup; "
            "`mixed` is bfloat16. The single-GPU mixed precision and XLA figures need a "
            "machine with a GPU: run the same command there."
        )
    results = {
        "command": "PYTHONPATH=. python -m benchmarks.distribute_benchmark "
        + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "environment": env,
        "backbone": FLAGS.backbone,
        "batch_size": FLAGS.batch_size,
        "seq_len": FLAGS.seq_len,
        "steps": FLAGS.steps,
        "rounds": FLAGS.rounds,
        "points": points,
        "notes": notes,
    }
    os.makedirs(os.path.dirname(FLAGS.results_json), exist_ok=True)
    with open(FLAGS.results_json, "w") as f:
        json.dump(results, f, indent=2)
    with open(FLAGS.results_md, "w") as f:
        f.write(render_markdown(results))
    print(render_markdown(results))


if __name__ == "__main__":
    app.run(main)
