"""tf.distribute, mixed precision and XLA training (on CPU)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from dact_tf.training import distribute
from dact_tf.data import builtin_sst2_dir
from dact_tf.models import backbones
from dact_tf.models.dact_classifier import DactClassifier
from tests import testing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: How long the two-worker tests wait for their workers: only a hung cluster reaches it.
#: Generous, because a loaded 2-core machine ran a two-stage pair for over 400 s.
WORKER_DEADLINE_S = 900


def _run(args, env=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_mirrored_matches_one_device(tmp_path):
    # Two logical CPU devices need a fresh process.
    out = tmp_path / "report.json"
    proc = _run([sys.executable, os.path.join(REPO, "tests/distribute/mirrored_script.py"),
                 str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    # Same global batch, same seed and data order: the same loss curve.
    # Tolerance: float32 sums in another order (two replicas' gradients).
    np.testing.assert_allclose(r["losses_mirrored"], r["losses_one_device"], rtol=1e-5)
    assert r["weights_moved"] > 0.1  # it really trained
    assert r["weight_diff"] < 1e-5
    for key in ("accuracy", "layers_executed", "loss", "ponder_cost", "logged_mean_layers",
                "tau"):
        assert r["metrics_mirrored"][key] == pytest.approx(r["metrics_one_device"][key], rel=1e-5)
    assert r["metrics_one_device"]["layers_executed"] < 3  # early exit ran per replica
    assert r["metrics_mirrored"]["tau"] == pytest.approx(0.1)  # the scheduler ran
    # Checkpoints saved under one strategy load under the other.
    assert r["cross_load_one_device"] < 1e-6
    assert r["cross_load_mirrored"] < 1e-6


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.parametrize("full_depth_stage", [
    False,
    # The two-stage recipe under two workers failed at its stage-2 broadcast
    # ("Delete called on non-empty BufRendezvous") in a loaded full test run
    # (issue 15's open points): kept as a large test until that is fixed.
    pytest.param(True, marks=pytest.mark.large),
])
def test_multi_worker_mirrored_two_processes(tmp_path, full_depth_stage):
    model_dir = tmp_path / "model"
    args = [sys.executable, "-m", "dact_tf", "train", "--task=sst2",
            f"--data_dir={builtin_sst2_dir()}", f"--model_dir={model_dir}",
            "--backbone=tiny", "--sequence_length=16", "--max_train_examples=64",
            "--max_eval_examples=32", "--batch_size=16", "--epochs=1",
            "--distribution_strategy=multi_worker_mirrored",
            f"--full_depth_stage={str(full_depth_stage).lower()}"]
    procs = _start_workers(tmp_path, args, _free_ports(2))
    try:
        codes = _wait_for_exit(procs)
    finally:
        _stop(procs)
    logs = [(tmp_path / f"worker{i}.log").read_text()[-2000:] for i in range(2)]
    assert codes == [0, 0], logs
    # The chief (worker 0) writes model_dir, worker 1 its own copy.
    chief = keras.models.load_model(model_dir / "model.keras")
    other = keras.models.load_model(model_dir / "workers" / "worker_1" / "model.keras")
    w_chief, w_other = chief.get_weights(), other.get_weights()
    for a, b in zip(w_chief, w_other):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # Both start from the seeded "tiny" backbone, and training moved it.
    initial, _ = backbones.load_backbone("tiny", max_sequence_length=16, seed=0)
    moved = [np.abs(a - b).max() for a, b in
             zip(chief.backbone.get_weights(), initial.get_weights())]
    assert max(moved) > 1e-4
    assert (model_dir / "checkpoints" / "epoch_01.weights.h5").exists()


def _start_workers(tmp_path, args, ports):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(len(ports)):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        env = dict(os.environ, PYTHONPATH=REPO, TF_CONFIG=tf_config,
                   DACT_TF_CACHE=str(tmp_path / f"cache{index}"))
        procs.append(subprocess.Popen(
            args, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / f"worker{index}.log", "a"),
        ))
    return procs


def _wait_for_exit(procs):
    """The workers' exit codes (None: still running at the deadline)."""
    deadline = time.time() + WORKER_DEADLINE_S
    while time.time() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.5)
    return [p.poll() for p in procs]


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.large
def test_a_killed_cluster_resumes_together_where_the_chief_stopped(tmp_path):
    import signal

    model_dir = tmp_path / "model"
    args = [sys.executable, "-m", "dact_tf", "train", "--task=sst2",
            f"--data_dir={builtin_sst2_dir()}", f"--model_dir={model_dir}",
            "--backbone=tiny", "--sequence_length=16", "--max_train_examples=96",
            "--max_eval_examples=32", "--batch_size=16", "--epochs=3",
            "--full_depth_stage=false", "--distribution_strategy=multi_worker_mirrored"]
    history = model_dir / "history.csv"

    def epochs_logged():
        return history.read_text().count("\n") - 1 if history.exists() else 0

    procs = _start_workers(tmp_path, args, _free_ports(2))
    try:
        deadline = time.time() + WORKER_DEADLINE_S
        while epochs_logged() < 1 and time.time() < deadline and all(
                p.poll() is None for p in procs):
            time.sleep(0.1)
        assert epochs_logged() >= 1, "epoch 0 did not finish before the deadline"
        for p in procs:  # the whole cluster goes down
            p.send_signal(signal.SIGKILL)
            p.wait()
        assert not (model_dir / "model.keras").exists()  # really interrupted
        # Worker 1 lost its own backup (killed before it landed, or another
        # machine's disk): it must resume from the chief's, not from scratch,
        # or the two would train different steps and their collectives
        # would never meet.
        own_backup = model_dir / "workers" / "worker_1" / "backup"
        assert (model_dir / "backup").is_dir() and own_backup.is_dir()
        shutil.rmtree(own_backup)
        procs = _start_workers(tmp_path, args, _free_ports(2))
        codes = _wait_for_exit(procs)
    finally:
        _stop(procs)
    logs = [(tmp_path / f"worker{i}.log").read_text()[-2000:] for i in range(2)]
    assert codes == [0, 0], logs
    # Every epoch logged once, in order, and both workers end with the same weights.
    epochs = [line.split(",")[0] for line in history.read_text().splitlines()[1:]]
    assert epochs == ["0", "1", "2"], history.read_text()
    chief = keras.models.load_model(model_dir / "model.keras")
    other = keras.models.load_model(model_dir / "workers" / "worker_1" / "model.keras")
    for a, b in zip(chief.get_weights(), other.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.fixture
def bfloat16_policy():
    previous = keras.config.dtype_policy()
    yield distribute.set_mixed_precision("mixed_bfloat16")
    keras.config.set_dtype_policy(previous)


def test_mixed_precision_keeps_the_guarantee(bfloat16_policy):
    assert bfloat16_policy == "mixed_bfloat16"
    model = DactClassifier(testing.tiny_backbone(num_layers=4, seed=1), num_classes=3,
                           halting_bias=-1.0, tau=0.05)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    feats, labels = testing.synthetic_task(256, seed=5)
    model.fit(feats, labels, batch_size=32, epochs=1, verbose=0)
    assert model.encoder.blocks[0].compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    early = model.predict(feats, batch_size=32, verbose=0)
    full = model(feats, full_depth=True)
    assert early["probabilities"].dtype == np.float32
    layers = early["layers_executed"]
    assert layers.min() < model.num_layers  # some examples exit early
    _assert_equal_but_for_bfloat16_ties(early["predictions"], full)
    return model, feats, early


def _assert_equal_but_for_bfloat16_ties(predictions, full):
    """Early exit == full depth, except rows whose top two classes are within bfloat16's
    rounding: the loop runs the blocks on compacted batches, whose bfloat16 kernels
    round differently from the full batch's (seen: 3 of 256 rows, probabilities
    0.3991 vs 0.3994, every one run to the last block, so not an exit decision)."""
    probabilities = np.asarray(full["probabilities"])
    top2 = np.sort(probabilities, axis=-1)[:, -2:]
    differ = np.asarray(predictions) != np.asarray(full["predictions"])
    assert (top2[differ, 1] - top2[differ, 0] < 1e-2).all(), np.where(differ)[0]
    assert differ.mean() <= 0.02


def test_mixed_precision_model_reloads_and_exits_early(bfloat16_policy, tmp_path):
    # A reloaded mixed-precision model can feed float32 embeddings to bfloat16
    # blocks; the early-exit loop must still run and give the same answers.
    model, feats, early = test_mixed_precision_keeps_the_guarantee(bfloat16_policy)
    model.save(tmp_path / "m.keras")
    keras.config.set_dtype_policy("float32")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    again = loaded.predict(feats, batch_size=32, verbose=0)
    full = loaded(feats, full_depth=True)
    _assert_equal_but_for_bfloat16_ties(again["predictions"], full)
    # The reloaded model's float32 embeddings round into bfloat16 blocks differently: the
    # answers are the original's but for near-ties (seen: 2 of 256 rows on an AVX2 CPU).
    _assert_equal_but_for_bfloat16_ties(again["predictions"], early)
    # bfloat16 rounding may move a borderline exit by a block, no more.
    assert np.abs(again["layers_executed"] - early["layers_executed"]).max() <= 1


def test_policy_names():
    assert distribute.mixed_precision_policy("none") == "float32"
    expected = "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
    assert distribute.mixed_precision_policy("auto") == expected
    with pytest.raises(ValueError, match="Unknown mixed precision"):
        distribute.mixed_precision_policy("fp8")
    with pytest.raises(ValueError, match="Unknown distribution strategy"):
        distribute.get_strategy("horovod")
    assert distribute.is_chief(distribute.get_strategy("one_device"))


@pytest.mark.parametrize("raw, message", [
    ("{not json", "not valid JSON"),
    ('{"cluster": {}}', "needs"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}',
     "is not in the cluster"),
    ('{"cluster": ["localhost:1"], "task": {"type": "worker", "index": 0}}', "needs"),
    ('{"cluster": {"worker": "localhost:1"}, "task": {"type": "worker", "index": 0}}',
     'job "worker" needs a list'),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}',
     "host:port"),
    ('[1, 2]', "needs"),
])
def test_bad_tf_config(monkeypatch, raw, message):
    monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(ValueError, match=message):
        distribute.check_tf_config()


def test_jit_compiled_training_step_matches_eager_graph():
    feats, labels = testing.synthetic_task(64, seed=2)
    results = []
    for jit in (False, True):
        model = DactClassifier(testing.tiny_backbone(num_layers=2, seed=4), num_classes=2,
                               dropout=0.0, tau=0.05)
        model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit)
        history = model.fit(feats, labels, batch_size=16, epochs=1, shuffle=False, verbose=0)
        results.append(history.history["loss"][-1])
    assert results[1] == pytest.approx(results[0], rel=1e-4)


def _listening_socket():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


def test_the_worker_timeout_comes_from_the_argument_the_environment_or_the_default(monkeypatch):
    monkeypatch.delenv(distribute.WORKER_TIMEOUT_ENV, raising=False)
    assert distribute.resolve_worker_timeout() == distribute.DEFAULT_WORKER_TIMEOUT
    assert distribute.resolve_worker_timeout(7) == 7.0
    monkeypatch.setenv(distribute.WORKER_TIMEOUT_ENV, "12.5")
    assert distribute.resolve_worker_timeout() == 12.5
    for bad in ("soon", "0", "-3", "inf"):
        monkeypatch.setenv(distribute.WORKER_TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=distribute.WORKER_TIMEOUT_ENV):
            distribute.resolve_worker_timeout()
    with pytest.raises(ValueError, match="worker_timeout"):
        distribute.resolve_worker_timeout(0)


def test_the_join_watchdog_names_the_silent_tasks_and_kills_a_join_past_its_timeout(capfd):
    up = _listening_socket()
    me, closed = _free_ports(2)
    config = {"cluster": {"chief": [f"127.0.0.1:{me}"],
                          "worker": [f"127.0.0.1:{up.getsockname()[1]}", f"127.0.0.1:{closed}"]},
              "task": {"type": "chief", "index": 0}}
    assert [name for name, _ in distribute.cluster_peers(config)] == ["worker 0", "worker 1"]
    # A stand-in for this process (the watchdog kills the process it watches).
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = time.time()
        with distribute.join_watchdog(config, timeout=0.5, pid=target.pid):
            while target.poll() is None and time.time() < start + 20:
                time.sleep(0.05)  # a join that does not end
        assert target.poll() == -9
        err = capfd.readouterr().err
        assert f"worker 1 (127.0.0.1:{closed}) does not answer" in err, err
        assert "worker 0" not in err and len(err.strip().splitlines()) == 1
        # A join that ends in time leaves the process alone and says nothing.
        target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with distribute.join_watchdog(config, timeout=1.0, pid=target.pid):
            pass
        time.sleep(1.5)
        assert target.poll() is None and capfd.readouterr().err == ""
    finally:
        up.close()
        target.kill()
        target.wait()


def test_a_worker_that_never_starts_ends_the_join_with_its_name(tmp_path):
    me, missing = _free_ports(2)
    tf_config = json.dumps({"cluster": {"worker": [f"127.0.0.1:{me}", f"127.0.0.1:{missing}"]},
                            "task": {"type": "worker", "index": 0}})
    start = time.time()
    # Through the command line's --worker_timeout (TrainConfig.worker_timeout).
    proc = _run([sys.executable, "-m", "dact_tf", "train", f"--data_dir={builtin_sst2_dir()}",
                 "--task=sst2", f"--model_dir={tmp_path / 'model'}", "--backbone=tiny",
                 "--sequence_length=16", "--max_train_examples=32", "--epochs=1",
                 "--distribution_strategy=multi_worker_mirrored", "--worker_timeout=2"],
                env={"TF_CONFIG": tf_config, "DACT_TF_CACHE": str(tmp_path / "cache")},
                timeout=150)
    # TensorFlow alone waits here without end.
    assert proc.returncode == -9 and "Trained" not in proc.stdout, proc.stderr[-2000:]
    assert (f"worker 1 (127.0.0.1:{missing}) does not answer" in proc.stderr), proc.stderr[-2000:]
    assert "within 2 s" in proc.stderr and time.time() - start < 110
