"""tf.distribute strategies and mixed precision for dact_tf training.

DactClassifier is a plain `keras.Model`, so it trains under any
`tf.distribute` strategy the usual Keras way: build and compile it inside
`strategy.scope()` and call `fit` with the *global* batch size, which the
strategy splits across replicas. This module turns the command line's
names into strategies and dtype policies.

Example:

```python
strategy = dact_tf.training.distribute.get_strategy("mirrored")
dact_tf.training.distribute.set_mixed_precision("auto")
with strategy.scope():
    model = dact_tf.DactClassifier(backbone, num_classes=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
model.fit(dataset_with_global_batches, epochs=3)
```
"""

import contextlib
import json
import os
import subprocess
import sys

import keras
import tensorflow as tf

from dact_tf.utils import quiet

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
PRECISIONS = ("none", "auto", "mixed_float16", "mixed_bfloat16")
#: Seconds a multi-worker cluster may take to come together, unless
#: `$DACT_TF_WORKER_TIMEOUT` or `get_strategy(worker_timeout=...)` says otherwise.
DEFAULT_WORKER_TIMEOUT = 300.0
WORKER_TIMEOUT_ENV = "DACT_TF_WORKER_TIMEOUT"

#: The cluster strategies made in this process, by name and cluster: one
#: process holds one of each (see `get_strategy`).
_CLUSTER_STRATEGIES = {}


def get_strategy(name="default", tpu_address=None, worker_timeout=None):
    """A `tf.distribute.Strategy` from its command-line name.

    Args:
        name: `"default"` (no strategy: TensorFlow's default placement),
            `"one_device"` (the first GPU, else the CPU), `"mirrored"` (all
            local GPUs, or all logical CPU devices when there is no GPU),
            `"multi_worker_mirrored"` (reads the cluster from the
            `TF_CONFIG` environment variable) or `"tpu"`.
        tpu_address: `"tpu"` only: the TPU's name or `grpc://` address
            (None: the local TPU, or the one the environment names).
        worker_timeout: `"multi_worker_mirrored"` only: seconds to wait for
            every other task of `TF_CONFIG`'s cluster to join (None:
            `$DACT_TF_WORKER_TIMEOUT`, else `DEFAULT_WORKER_TIMEOUT`).
            TensorFlow's join cannot be interrupted: past it, the process
            prints one line naming the tasks whose address does not answer
            and exits with status 1 (see `join_watchdog`).

    Returns:
        A `tf.distribute.Strategy`. `"multi_worker_mirrored"` and `"tpu"`
        give the same object on every call for the same cluster: a second
        `MultiWorkerMirroredStrategy` in one process would start its
        collective keys over and collide with the first one's (the two
        stages of `dact-tf train` both train under it), and a TPU system
        is initialized once.

    Raises:
        ValueError: an unknown name, a malformed `TF_CONFIG` or worker
            timeout, or a TPU that cannot be found.
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
        config = check_tf_config()
        key = (name, json.dumps(config, sort_keys=True))
        if key not in _CLUSTER_STRATEGIES:
            with join_watchdog(config, resolve_worker_timeout(worker_timeout)):
                _CLUSTER_STRATEGIES[key] = tf.distribute.MultiWorkerMirroredStrategy()
        return _CLUSTER_STRATEGIES[key]
    key = (name, tpu_address)
    if key not in _CLUSTER_STRATEGIES:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError, RuntimeError) as e:
            raise ValueError(f"No TPU found ({tpu_address or 'local'}): {e}") from None
        _CLUSTER_STRATEGIES[key] = tf.distribute.TPUStrategy(resolver)
    return _CLUSTER_STRATEGIES[key]


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
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) or (
            not isinstance(config.get("task"), dict)):
        raise ValueError('TF_CONFIG needs "cluster" and "task" (type and index).')
    for job, addresses in config["cluster"].items():
        if not isinstance(addresses, list) or not all(
                isinstance(a, str) and ":" in a for a in addresses):
            raise ValueError(f'TF_CONFIG cluster job "{job}" needs a list of "host:port" '
                             f"addresses, got {addresses!r}.")
    task = config["task"]
    jobs = config["cluster"].get(task.get("type"), [])
    if not isinstance(task.get("index"), int) or not 0 <= task["index"] < len(jobs):
        raise ValueError(f"TF_CONFIG task {task} is not in the cluster {config['cluster']}.")
    return config


def resolve_worker_timeout(value=None):
    """The seconds a multi-worker cluster may take to come together.

    Args:
        value: float seconds > 0, or None: `$DACT_TF_WORKER_TIMEOUT` if set,
            else `DEFAULT_WORKER_TIMEOUT`.

    Returns:
        A float > 0.

    Raises:
        ValueError: not a positive number of seconds.
    """
    where = "worker_timeout"
    if value is None:
        raw = os.environ.get(WORKER_TIMEOUT_ENV, "").strip()
        if not raw:
            return DEFAULT_WORKER_TIMEOUT
        where, value = WORKER_TIMEOUT_ENV, raw
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{where} must be a number of seconds > 0, got {value!r}.")
    return seconds


def cluster_peers(config):
    """The other tasks of a `TF_CONFIG` that a multi-worker join waits for.

    Args:
        config: the parsed `TF_CONFIG` (see `check_tf_config`).

    Returns:
        A list of `(name, address)`, e.g. `("worker 1", "10.0.0.2:2222")`,
        for every chief and worker task but this process's own.
    """
    if not config:
        return []
    me = (config["task"].get("type"), config["task"].get("index"))
    return [(f"{job} {index}", str(address))
            for job in ("chief", "worker")
            for index, address in enumerate(config["cluster"].get(job) or [])
            if (job, index) != me]


# The watchdog process (standard library only: it starts in milliseconds).
# It waits `timeout` seconds for its stdin to close (the join finished, or
# the process it watches is gone); else it probes every other task's address,
# writes one line naming those that accept no connection and kills the
# process it watches.
_WATCHDOG = r"""
import json, os, select, signal, socket, sys, threading

args = json.loads(sys.argv[1])


def closed(wait):
    ready, _, _ = select.select([sys.stdin], [], [], wait)
    return bool(ready) and not os.read(sys.stdin.fileno(), 1)


def answers(address):
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
        return True
    except (OSError, ValueError):
        return False


if not closed(args["timeout"]):
    peers = args["peers"]
    ok = [None] * len(peers)

    def probe(i):
        ok[i] = answers(peers[i][1])

    threads = [threading.Thread(target=probe, args=(i,)) for i in range(len(peers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    missing = [f"{name} ({address})" for (name, address), up in zip(peers, ok) if not up]
    if missing:
        problem = (", ".join(missing) + (" does" if len(missing) == 1 else " do")
                   + " not answer: is it started, with this TF_CONFIG?")
    else:
        problem = ("every other task answers, but the cluster did not form: do all tasks "
                   "share one TF_CONFIG cluster?")
    if not closed(0):
        print(f"dact-tf: error: multi_worker_mirrored: the cluster did not come together "
              f"within {args['timeout']:g} s: {problem} (${args['env']} sets the wait.)",
              file=sys.stderr, flush=True)
        os.kill(args["pid"], signal.SIGKILL)
"""


@contextlib.contextmanager
def join_watchdog(config, timeout, pid=None):
    """Kills this process if its body (a multi-worker join) outlasts `timeout`.

    TensorFlow waits without end for a task of the cluster that never
    starts, in C++ code that holds Python's lock: no exception, signal
    handler or thread of this process can end the wait. A small watchdog
    process does: past `timeout` seconds it writes one line to stderr
    naming the tasks whose address accepts no TCP connection (or, if all
    answer, saying the cluster still did not form), then kills the process
    (status 137 in a shell). Leaving the body in time ends the watchdog.

    Args:
        config: the parsed `TF_CONFIG` (a cluster without other tasks is
            not watched).
        timeout: float, seconds.
        pid: the process to kill (default: this one; tests pass another).

    Yields:
        Nothing.
    """
    peers = cluster_peers(config)
    if not peers or not sys.executable:
        yield
        return
    args = {"peers": peers, "timeout": float(timeout), "pid": pid or os.getpid(),
            "env": WORKER_TIMEOUT_ENV}
    read, write = os.pipe()
    try:
        # Straight to the terminal: the command line's stderr filter is a
        # thread of the process the watchdog kills, and would drop its line.
        watchdog = subprocess.Popen([sys.executable, "-I", "-c", _WATCHDOG, json.dumps(args)],
                                    stdin=read, stdout=subprocess.DEVNULL,
                                    stderr=quiet.real_stderr_fd())
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    try:
        yield
    finally:
        os.close(write)  # the watchdog sees its stdin close and ends
        try:
            watchdog.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()


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


def check_workers_agree(strategy, value, what):
    """Raises unless every worker of a multi-worker cluster holds the same `value`.

    A collective (every worker must call it, in the same order); a no-op for
    single-process strategies.

    Args:
        strategy: the `tf.distribute.Strategy`.
        value: a non-negative int below 10**7.
        what: str, what `value` is, for the message.

    Raises:
        ValueError: the workers disagree.
    """
    if worker_id(strategy) is None:
        return
    value = float(value)
    per_replica = strategy.run(lambda: tf.constant([value, value * value, 1.0], tf.float64))
    total, squares, count = strategy.reduce("SUM", per_replica, axis=None).numpy()
    # Equal values iff the variance is 0: count * sum(v^2) == sum(v)^2 (exact
    # in float64 for these integers).
    if count * squares != total * total:
        raise ValueError(
            f"The workers disagree on {what} (this {worker_id(strategy)}: {int(value)}, "
            f"mean over the cluster {total / count:g}): every worker must see the chief's "
            "--model_dir (a shared filesystem) to resume together.")


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
