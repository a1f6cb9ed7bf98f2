"""Tests of the fit callbacks: tau schedules and the ponder-cost logger."""

import csv
import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dact_tf.callbacks import ConstantTau
from dact_tf.callbacks import LinearTauWarmup
from dact_tf.callbacks import PonderCostLogger
from dact_tf.callbacks import TauScheduler
from dact_tf.callbacks import halting_statistics
from dact_tf.models import DactClassifier
from tests.testing import dataset
from tests.testing import synthetic_task
from tests.testing import tiny_backbone


def make_model(tau=0.0, seed=0):
    model = DactClassifier(tiny_backbone(seed=seed), num_classes=2, tau=tau, halting_bias=0.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def test_schedules():
    assert ConstantTau(0.01)(123) == 0.01
    warm = LinearTauWarmup(0.1, warmup_steps=10, initial=0.02)
    np.testing.assert_allclose([warm(0), warm(5), warm(10), warm(99)], [0.02, 0.06, 0.1, 0.1])
    assert LinearTauWarmup(0.1, 0)(0) == 0.1
    for schedule in (ConstantTau(0.3), warm):
        clone = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(schedule)
        )
        assert clone.get_config() == schedule.get_config()
    with pytest.raises(ValueError, match="value"):
        ConstantTau(-1)
    with pytest.raises(ValueError, match="warmup_steps"):
        LinearTauWarmup(0.1, -3)
    with pytest.raises(ValueError, match="schedule"):
        TauScheduler("fast")
    with pytest.raises(ValueError, match="update"):
        TauScheduler(0.1, update="hourly")


class _RecordTau(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(self.model.tau)


def test_tau_scheduler_warms_up_per_step_and_resumes():
    feats, labels = synthetic_task(64, seed=1)
    model = make_model()
    record = _RecordTau()
    schedule = LinearTauWarmup(0.08, warmup_steps=8)
    history = model.fit(
        dataset(feats, labels, batch_size=16),
        epochs=2,
        verbose=0,
        callbacks=[TauScheduler(schedule), record],
    )
    # The tau used by step k is schedule(k): 0, 0.01, ..., then 0.08.
    np.testing.assert_allclose(record.seen, [schedule(k) for k in range(8)], rtol=1e-6)
    assert history.history["tau"] == pytest.approx([0.03, 0.07], rel=1e-5)
    # A resumed run continues from the optimizer's step count.
    record.seen.clear()
    model.fit(
        dataset(feats, labels, batch_size=16), epochs=1, verbose=0,
        callbacks=[TauScheduler(LinearTauWarmup(0.16, warmup_steps=16)), record],
    )
    np.testing.assert_allclose(record.seen, [0.08, 0.09, 0.10, 0.11], rtol=1e-5)


def test_tau_scheduler_per_epoch():
    feats, labels = synthetic_task(32, seed=2)
    model = make_model()
    history = model.fit(
        dataset(feats, labels), epochs=3, verbose=0,
        callbacks=[TauScheduler(lambda epoch: 0.01 * epoch, update="epoch")],
    )
    np.testing.assert_allclose(history.history["tau"], [0.0, 0.01, 0.02], atol=1e-7)


def _read_events(log_dir):
    scalars, histograms = {}, {}
    for path in glob.glob(os.path.join(log_dir, "validation", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                if tensor.ndim == 0:
                    scalars.setdefault(value.tag, []).append(float(tensor))
                else:
                    histograms.setdefault(value.tag, []).append(tensor)
    return scalars, histograms


def test_ponder_cost_logger_writes_tensorboard_and_csv(tmp_path):
    feats, labels = synthetic_task(96, seed=3)
    val = dataset(*synthetic_task(64, seed=4))
    model = make_model(tau=0.05)
    log_dir, csv_path = str(tmp_path / "tb"), str(tmp_path / "ponder.csv")
    logger = PonderCostLogger(val, log_dir=log_dir, csv_path=csv_path)
    csv_logger = keras.callbacks.CSVLogger(str(tmp_path / "fit.csv"))
    history = model.fit(
        dataset(feats, labels), epochs=2, verbose=0, callbacks=[logger, csv_logger]
    )
    n = model.num_layers
    stats = logger.history[-1]
    # The logger's exits are exactly those of the early-exit loop.
    preds = model.predict(val, verbose=0)
    np.testing.assert_array_equal(
        stats["layers_histogram"], np.bincount(preds["layers_executed"], minlength=n + 1)[1:]
    )
    np.testing.assert_allclose(stats["mean_layers_executed"], preds["layers_executed"].mean())
    np.testing.assert_allclose(sum(stats["exit_rate"]), 1.0)
    assert len(stats["halting_mean"]) == n
    assert all(0 < h < 1 for h in stats["halting_mean"])
    # Logs reach later callbacks and the History.
    assert history.history["val_mean_layers_executed"][-1] == stats["mean_layers_executed"]
    with open(tmp_path / "fit.csv") as f:
        assert "mean_layers_executed" in f.readline()
    # CSV: a header and one row per epoch.
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[1]["mean_layers_executed"]) == pytest.approx(stats["mean_layers_executed"])
    assert float(rows[1]["train_ponder_cost"]) == pytest.approx(history.history["ponder_cost"][1])
    assert {f"exit_rate_{i}" for i in range(1, n + 1)} <= set(rows[0])
    # TensorBoard: scalars per epoch, per-block curves and the histogram.
    scalars, histograms = _read_events(log_dir)
    assert len(scalars["dact/ponder_cost"]) == 2
    assert scalars["dact/mean_layers_executed"][-1] == pytest.approx(stats["mean_layers_executed"])
    assert scalars[f"dact/exit_rate/block_{n:02d}"][-1] == pytest.approx(stats["exit_rate"][-1])
    assert "dact/layers_executed" in histograms
    # A resumed run appends to the same CSV without a second header.
    model.fit(dataset(feats, labels), epochs=1, verbose=0,
              callbacks=[PonderCostLogger(val, csv_path=csv_path)])
    with open(csv_path) as f:
        lines = f.read().splitlines()
    assert len(lines) == 4 and lines[0].startswith("epoch")


def test_halting_statistics_ponder_matches_trace_and_rejects_empty():
    model = make_model()
    feats, labels = synthetic_task(40, seed=5)
    stats = halting_statistics(model, dataset(feats, labels, batch_size=16))
    trace = model.trace(feats)
    np.testing.assert_allclose(stats["ponder_cost"], trace["ponder_cost"].numpy().mean(), rtol=1e-5)
    np.testing.assert_allclose(stats["halting_mean"], trace["halting"].numpy().mean(1), rtol=1e-5)
    assert stats["num_examples"] == 40
    with pytest.raises(ValueError, match="no data"):
        halting_statistics(model, [])


class _FakeDact:
    """Just what TargetBlocksTau reads and writes on a model."""

    def __init__(self):
        import types

        self.tau = 0.0
        self.num_layers = 6
        self.optimizer = types.SimpleNamespace(iterations=tf.Variable(0, dtype=tf.int64))
        self.layers_executed_tracker = keras.metrics.Mean()


def test_target_blocks_tau_ramps_then_steers_towards_the_target():
    from dact_tf.callbacks import TargetBlocksTau

    model = _FakeDact()
    cb = TargetBlocksTau(3.0, initial_tau=0.1, warmup_steps=10, interval=1, gain=0.5)
    cb.set_model(model)
    cb.on_epoch_begin(0)
    taus = []
    for step in range(40):
        model.optimizer.iterations.assign(step)
        cb.on_train_batch_begin(step)
        # The model exits after 5 blocks: too many, tau must grow.
        model.layers_executed_tracker.update_state([5.0, 5.0])
        cb.on_train_batch_end(step)
        taus.append(model.tau)
    np.testing.assert_allclose(taus[:10], np.arange(10) / 10 * 0.1, rtol=1e-6)  # warm-up
    assert all(b > a for a, b in zip(taus[10:20], taus[11:21]))  # then up, step by step
    assert max(taus) <= 10.0  # bounded
    high = model.tau
    for step in range(40, 200):
        model.optimizer.iterations.assign(step)
        model.layers_executed_tracker.update_state([1.0, 1.0])  # too few: down
        cb.on_train_batch_end(step)
    assert model.tau < high
    logs = {}
    cb.on_epoch_end(0, logs)
    assert logs["tau"] == model.tau
    with pytest.raises(ValueError, match="initial_tau"):
        TargetBlocksTau(3.0, initial_tau=0.0, warmup_steps=1)
