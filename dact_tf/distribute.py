"""tf.distribute strategies and mixed precision for dact_tf training.

DactClassifier is a plain `keras.Model`, so it trains under any
`tf.distribute` strategy the usual Keras way: build and compile it inside
`strategy.scope()` and call `fit` with the *global* batch size, which the
strategy splits across replicas. This module turns the command line's
names into strategies and dtype policies.

Example:

```python
strategy = dact_tf.distribute.get_strategy("mirrored")
dact_tf.distribute.set_mixed_precision("auto")
with strategy.scope():
    model = dact_tf.DactClassifier(backbone, num_classes=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
model.fit(dataset_with_global_batches, epochs=3)
```
"""

import json
import os

import keras
import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
PRECISIONS = ("none", "auto", "mixed_float16", "mixed_bfloat16")


def get_strategy(name="default", tpu_address=None):
    """A `tf.distribute.Strategy` from its command-line name.

    Args:
        name: `"default"` (no strategy: TensorFlow's default placement),
            `"one_device"` (the first GPU, else the CPU), `"mirrored"` (all
            local GPUs, or all logical CPU devices when there is no GPU),
            `"multi_worker_mirrored"` (reads the cluster from the
            `TF_CONFIG` environment variable) or `"tpu"`.
        tpu_address: `"tpu"` only: the TPU's name or `grpc://` address
            (None: the local TPU, or the one the environment names).

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: an unknown name, a malformed `TF_CONFIG`, or a TPU that
            cannot be found.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown distribution strategy {name!r}; expected one of {STRATEGIES}.")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker_mirrored":
        check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as e:
        raise ValueError(f"No TPU found ({tpu_address or 'local'}): {e}") from None
    return tf.distribute.TPUStrategy(resolver)


def check_tf_config():
    """Validates `TF_CONFIG` for multi-worker training; returns it parsed.

    An unset `TF_CONFIG` means one worker (a valid, if pointless, cluster).

    Raises:
        ValueError: `TF_CONFIG` is not JSON or lacks `cluster`/`task`.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}).") from None
    if "cluster" not in config or "task" not in config:
        raise ValueError('TF_CONFIG needs "cluster" and "task" (type and index).')
    task = config["task"]
    jobs = config["cluster"].get(task.get("type"), [])
    if not isinstance(task.get("index"), int) or not 0 <= task["index"] < len(jobs):
        raise ValueError(f"TF_CONFIG task {task} is not in the cluster {config['cluster']}.")
    return config


def is_chief(strategy=None):
    """Whether this process writes the shared outputs (model, logs).

    True for single-process strategies and for the chief (or worker 0 when
    there is no chief) of a multi-worker cluster.
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def worker_id(strategy=None):
    """`"<type>_<index>"` of this process in a cluster, or None."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return None
    return f"{resolver.task_type}_{resolver.task_id}"


def mixed_precision_policy(name="auto"):
    """The Keras dtype policy name for a `--mixed_precision` value.

    Args:
        name: `"none"` (float32), `"mixed_float16"`, `"mixed_bfloat16"`, or
            `"auto"`: mixed_float16 where a GPU is visible, mixed_bfloat16
            otherwise (CPU, TPU).

    Returns:
        `"float32"`, `"mixed_float16"` or `"mixed_bfloat16"`.
    """
    if name not in PRECISIONS:
        raise ValueError(f"Unknown mixed precision {name!r}; expected one of {PRECISIONS}.")
    if name == "none":
        return "float32"
    if name == "auto":
        return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
    return name


def set_mixed_precision(name="auto"):
    """Sets Keras' global dtype policy; returns the policy name.

    Models built afterwards compute in 16 bits and keep float32 variables.
    The DACT heads' outputs, the accumulation and the halting test stay in
    float32 whatever the policy (see `DactHeads` and `dact_tf.ops`), so the
    early-exit guarantee is unchanged. Keras wraps the optimizer in a
    `LossScaleOptimizer` for mixed_float16.
    """
    policy = mixed_precision_policy(name)
    keras.config.set_dtype_policy(policy)
    return policy


def _patch_keras_multi_worker_reduce():
    """Works around Keras 3 failing every `fit` under MultiWorkerMirroredStrategy.

    Keras 3's `reduce_per_replica` averages the step's logs with
    `strategy.reduce("MEAN", v, axis=0)`, which raises "Invalid reduction
    dimension 0 for input with 0 dimensions" for the scalar logs every model
    returns (tensorflow/tensorflow#72388). Scalars are averaged across
    workers with `axis=None` instead, as tf.keras 2 did; every other case
    goes to Keras unchanged.
    """
    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer

        original = tf_trainer.reduce_per_replica
        is_multi_worker = tf_trainer._collective_all_reduce_multi_worker
    except (ImportError, AttributeError):  # another Keras: leave it alone
        return
    if getattr(original, "_dact_tf_patched", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        mean = reduction == "mean" or (
            reduction == "auto" and not isinstance(strategy, tf.distribute.TPUStrategy)
        )
        if mean and is_multi_worker(strategy):
            return tf.nest.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None if v.shape.rank == 0 else 0),
                values,
            )
        return original(values, strategy, reduction)

    reduce_per_replica._dact_tf_patched = True
    tf_trainer.reduce_per_replica = reduce_per_replica


_patch_keras_multi_worker_reduce()
