"""A model directory is never retrained silently, changed flags and second writers are refused,
and what is written honours the umask."""

import json
import os
import stat
import subprocess
import sys

import pytest

from dact_tf import files
from dact_tf import train_lib
from dact_tf.data import builtin_sst2_dir


def _configs(**train):
    data = train_lib.DataConfig(task="sst2", data_dir=builtin_sst2_dir(), sequence_length=16,
                                max_train_examples=48, max_eval_examples=16, batch_size=16)
    model = train_lib.ModelConfig(backbone="tiny", method="static")
    values = dict(epochs=1, verbose=0, learning_rate=1e-3)
    values.update(train)
    return data, model, train_lib.TrainConfig(**values)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("finished") / "run"
    old = os.umask(0o022)
    try:
        train_lib.train(str(model_dir), *_configs())
    finally:
        os.umask(old)
    return model_dir


def test_a_finished_run_is_reused_not_retrained(finished):
    mtime = os.path.getmtime(finished / "model.keras")
    with open(finished / "history.csv") as f:
        rows = f.read().splitlines()
    model, _, history = train_lib.train(str(finished), *_configs(verbose=1, keep_checkpoints=0))
    assert history == {} and model.num_layers == 4
    assert os.path.getmtime(finished / "model.keras") == mtime
    with open(finished / "history.csv") as f:
        assert f.read().splitlines() == rows  # no second "epoch 0"


@pytest.mark.parametrize("change, flag", [
    (dict(learning_rate=5e-4), "--learning_rate=0.0005"),
    (dict(epochs=2), "--epochs=2"),
    (dict(optimizer="adam"), "--optimizer=adam"),
])
def test_a_changed_training_flag_is_refused_with_its_name(finished, change, flag):
    with pytest.raises(ValueError, match=flag):
        train_lib.train(str(finished), *_configs(**change))


def test_extending_a_finished_run_points_to_a_warm_start(finished):
    with pytest.raises(ValueError, match="--init_from"):
        train_lib.train(str(finished), *_configs(epochs=3))


def test_written_files_honour_the_umask(finished):
    for name in ("model.keras", "vocab.txt", "dact_config.json"):
        mode = stat.S_IMODE(os.stat(finished / name).st_mode)
        assert mode == 0o644, (name, oct(mode))


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    # A live process (this test's parent shell stand-in) holds the lock.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (model_dir / ".lock").write_text(
            json.dumps({"host": socket.gethostname(), "pid": sleeper.pid}))
        with pytest.raises(ValueError, match=f"process {sleeper.pid}"):
            train_lib.train(str(model_dir), *_configs())
        assert not (model_dir / "model.keras").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # Its process is gone: the lock is stale and the run goes ahead.
    train_lib.train(str(model_dir), *_configs())
    assert (model_dir / "model.keras").exists() and not (model_dir / ".lock").exists()


def test_the_lock_is_released_when_training_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with files.ModelDirLock(str(tmp_path)):
            assert (tmp_path / ".lock").exists()
            raise RuntimeError("boom")
    assert not (tmp_path / ".lock").exists()


def test_a_model_file_with_another_label_order_is_refused(finished, tmp_path):
    """Same class count, labels swapped: every answer would come out under the wrong label."""
    import shutil

    copy = tmp_path / "swapped"
    shutil.copytree(finished, copy)
    config = json.loads((copy / "dact_config.json").read_text())
    assert config["label_names"] == ["negative", "positive"]
    config["label_names"] = ["positive", "negative"]
    (copy / "dact_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"does not belong.*labels \['negative', 'positive'\]"):
        train_lib.load_model_dir(str(copy))


def test_caps_above_the_blocks_do_not_wrap(finished):
    import numpy as np
    import tensorflow as tf

    model, preprocessor, _ = train_lib.load_model_dir(str(finished))
    features = preprocessor(x=tf.constant(["a fine film", "a dull mess"]))
    capped = model(features, max_layers=tf.constant([2 ** 32 + 1, 2 ** 40], tf.int64))
    full = model(features, full_depth=True)
    np.testing.assert_array_equal(capped["layers_executed"].numpy(), [model.num_layers] * 2)
    np.testing.assert_array_equal(capped["predictions"].numpy(), full["predictions"].numpy())
