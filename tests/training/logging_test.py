"""Tests of what training leaves on disk: checkpoints kept, TensorBoard scalars."""

import glob
import os

import tensorflow as tf

from dact_tf.training import train_lib
from dact_tf.data import builtin_sst2_dir


def _tags(directory):
    tags = {}
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_only_the_newest_checkpoints_are_kept_and_scalars_are_logged_per_step(tmp_path):
    model_dir = tmp_path / "run"
    data = train_lib.DataConfig(task="sst2", data_dir=builtin_sst2_dir(), sequence_length=16,
                                max_train_examples=96, max_eval_examples=16, batch_size=16)
    train_lib.train(
        str(model_dir), data,
        train_lib.ModelConfig(backbone="tiny", tau=0.01, full_depth_stage=False,
                              target_blocks=0),
        train_lib.TrainConfig(epochs=3, learning_rate=1e-3, verbose=0, keep_checkpoints=1,
                              log_every_steps=2),
    )
    kept = sorted(os.listdir(model_dir / "checkpoints"))
    assert kept == ["epoch_03.weights.h5"]
    board = model_dir / "tensorboard"
    train_tags = _tags(board / "train")
    # 96 rows, 10% held out: 6 steps an epoch (the last one short), 18 in all.
    assert len(train_tags["batch_loss"]) >= 8
    assert "batch_tau" in train_tags
    validation_tags = _tags(board / "validation")
    assert "epoch_mean_layers_executed" in validation_tags  # held-out blocks
    assert "dact/ponder_cost" in validation_tags
    # Nothing measured on held-out rows is filed under train/.
    assert not [t for t in train_tags if "mean_layers_executed" in t or "ideal_speedup" in t]


def test_keep_checkpoints_zero_writes_none(tmp_path):
    model_dir = tmp_path / "run"
    data = train_lib.DataConfig(task="sst2", data_dir=builtin_sst2_dir(), sequence_length=16,
                                max_train_examples=48, max_eval_examples=16, batch_size=16)
    train_lib.train(str(model_dir), data,
                    train_lib.ModelConfig(backbone="tiny", method="static"),
                    train_lib.TrainConfig(epochs=1, verbose=0, keep_checkpoints=0))
    assert not (model_dir / "checkpoints").exists() or not os.listdir(model_dir / "checkpoints")
    assert (model_dir / "model.keras").exists()
