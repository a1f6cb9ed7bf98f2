"""An interrupted `train` resumes exactly where its last backup left off: the same optimizer
steps, history rows and weights as an uninterrupted run, wherever it was killed."""

import csv
import json
import os

import keras
import numpy as np
import pytest

from dact_tf.training import resume
from dact_tf.training import train_lib
from dact_tf.data import builtin_sst2_dir


def _configs(**model):
    # 2-row batches: an epoch has more than the 50 batches between two
    # backups, so a mid-epoch backup exists (dact_tf's default, not patched).
    data = train_lib.DataConfig(task="sst2", data_dir=builtin_sst2_dir(), sequence_length=16,
                                max_train_examples=112, max_eval_examples=8, batch_size=2,
                                max_holdout_examples=8)
    model = train_lib.ModelConfig(**{"backbone": "tiny", "method": "static", **model})
    train = train_lib.TrainConfig(epochs=2, verbose=0, learning_rate=1e-3, keep_checkpoints=0,
                                  keep_best_epoch=False, log_every_steps=0)
    return data, model, train


class _Killed(Exception):
    pass


class _Kill(keras.callbacks.Callback):
    """Raises (as a kill would stop the process) at one point of training."""

    def __init__(self, before_step=None, at_epoch_end=None, at_train_end=False):
        super().__init__()
        self.before_step = before_step
        self.at_epoch_end = at_epoch_end
        self.at_train_end = at_train_end

    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.before_step:
            raise _Killed(f"before step {self.before_step}")

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch_end:
            raise _Killed(f"at the end of epoch {epoch}")

    def on_train_end(self, logs=None):
        if self.at_train_end:
            raise _Killed("at the end of training")


def _history(model_dir):
    with open(os.path.join(model_dir, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _state(model_dir, backup="backup"):
    with open(os.path.join(model_dir, backup, "state.json")) as f:
        return json.load(f)


def _killed(model_dir, kill, **model):
    keras.backend.clear_session()
    with pytest.raises(_Killed):
        train_lib.train(str(model_dir), *_configs(**model), extra_callbacks=[kill])


def _finish(model_dir, **model):
    keras.backend.clear_session()
    model, _, _ = train_lib.train(str(model_dir), *_configs(**model))
    return model


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    model = _finish(model_dir)
    return {"dir": model_dir, "steps": int(model.optimizer.iterations.numpy()),
            "weights": [w.numpy() for w in model.weights], "history": _history(model_dir)}


def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path):
    steps_per_epoch = uninterrupted["steps"] // 2
    assert steps_per_epoch > 50 and uninterrupted["steps"] == 2 * steps_per_epoch
    model_dir = tmp_path / "run"

    # 1. Killed after epoch 0 was logged, before its backup: the last backup
    # is mid-epoch 0; the resumed run drops the row and logs epoch 0 again.
    _killed(model_dir, _Kill(at_epoch_end=0))
    assert [r["epoch"] for r in _history(model_dir)] == ["0"]
    assert (_state(model_dir)["epoch"], _state(model_dir)["batches"]) == (0, 50)

    # 2. Killed in epoch 1 right after its mid-epoch backup (50 batches in).
    _killed(model_dir, _Kill(before_step=steps_per_epoch + 51))
    assert (_state(model_dir)["epoch"], _state(model_dir)["batches"]) == (1, 50)
    assert [r["epoch"] for r in _history(model_dir)] == ["0"]

    # 3. Killed once every epoch is trained, before the model was saved.
    _killed(model_dir, _Kill(at_train_end=True))
    assert (_state(model_dir)["epoch"], _state(model_dir)["batches"]) == (2, 0)
    assert not (model_dir / "model.keras").exists()

    model = _finish(model_dir)
    # The same optimizer steps (Keras 3 alone restarts epoch 1 from its first
    # batch: 50 steps more), the same history rows and the same weights.
    assert int(model.optimizer.iterations.numpy()) == uninterrupted["steps"]
    history = _history(model_dir)
    assert [r["epoch"] for r in history] == ["0", "1"]
    for got, want in zip(history, uninterrupted["history"]):
        for key, value in want.items():
            assert float(got[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-7), key
    for got, want in zip(model.weights, uninterrupted["weights"]):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    with open(model_dir / "ponder.csv") as f:
        assert len(f.read().splitlines()) == 1 + 2  # header, one row an epoch
    assert not (model_dir / "backup").exists()  # the model is saved


def test_every_epoch_has_its_own_order_in_every_process():
    data, _, _ = _configs()
    seeds = [resume.epoch_seed(data.seed, epoch) for epoch in range(3)]
    assert len(set(seeds)) == 3
    assert seeds == [resume.epoch_seed(data.seed, epoch) for epoch in range(3)]


def test_deebert_resumed_in_its_first_stage_trains_every_epoch_of_both(uninterrupted, tmp_path):
    steps_per_epoch = uninterrupted["steps"] // 2
    model_dir = tmp_path / "run"
    # Stage 1, epoch 1, after its mid-epoch backup. (Keras 3 alone also
    # carried the restored epoch over to stage 2, which skipped its epoch 0.)
    _killed(model_dir, _Kill(before_step=steps_per_epoch + 51), method="deebert")
    assert (_state(model_dir)["epoch"], _state(model_dir)["batches"]) == (1, 50)
    model = _finish(model_dir, method="deebert")
    assert [r["epoch"] for r in _history(model_dir)] == ["0", "1", "0", "1"]
    # Stage 2 has a fresh optimizer: two epochs' steps.
    assert int(model.optimizer.iterations.numpy()) == 2 * steps_per_epoch
    assert not (model_dir / "backup").exists() and not (model_dir / "backup_stage2").exists()
