"""A model directory is never retrained silently, changed flags and second writers are refused,
and what is written honours the umask."""

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from dact_tf.utils import files
from dact_tf.training import train_lib
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


def test_a_crafted_sequence_length_is_refused_before_anything_is_allocated(finished, tmp_path):
    import shutil

    copy = tmp_path / "crafted"
    shutil.copytree(finished, copy)
    config = json.loads((copy / "dact_config.json").read_text())
    config["data"]["sequence_length"] = 2 ** 31
    (copy / "dact_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"sequence_length 2147483648 .*above the backbone"):
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


def _race_for_the_lock(model_dir, barrier, results):
    barrier.wait()
    try:
        with files.ModelDirLock(model_dir):
            results.put(1)
            time.sleep(0.3)
    except ValueError:
        results.put(0)


def test_two_writers_starting_at_once_never_both_get_the_lock(tmp_path):
    """Both read the lock at the same instant: exactly one may write the directory."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for trial in range(20):
        model_dir = str(tmp_path / f"run{trial}")
        barrier, results = context.Barrier(2), context.Queue()
        racers = [context.Process(target=_race_for_the_lock, args=(model_dir, barrier, results))
                  for _ in range(2)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(30)
        assert sorted([results.get(timeout=5), results.get(timeout=5)]) == [0, 1], trial
        assert not os.path.exists(os.path.join(model_dir, ".lock"))


def test_the_same_process_may_take_its_lock_again(tmp_path):
    with files.ModelDirLock(str(tmp_path)):
        with files.ModelDirLock(str(tmp_path)):
            assert (tmp_path / ".lock").exists()
        assert (tmp_path / ".lock").exists()  # the outer holder still runs
    assert not (tmp_path / ".lock").exists()


def test_a_model_dir_written_by_an_earlier_release_loads_and_answers_the_same(tmp_path):
    """Saved at commit eaf8379, before the layers' defaults came from ModelConfig."""
    import shutil

    import numpy as np

    source = os.path.join(os.path.dirname(os.path.dirname(__file__)), "testdata",
                          "model_dir_eaf8379")
    model_dir = tmp_path / "old"
    shutil.copytree(source, model_dir)
    expected = json.loads((model_dir / "expected_predictions.json").read_text())
    model, preprocessor, config = train_lib.load_model_dir(str(model_dir))
    assert model.method == expected["method"] == config["method"]
    exit_config = model.exit_criterion.get_config()
    assert {k: exit_config[k] for k in expected["exit"]} == expected["exit"]
    # Settings added since take their defaults (DACT's learned consistency score: none).
    added = {k: v for k, v in exit_config.items() if k not in expected["exit"]}
    assert added == {k: v for k, v in type(model.exit_criterion)().get_config().items()
                     if k in added}
    features = preprocessor(expected["texts"])
    out = model.predict(features, verbose=0)
    np.testing.assert_allclose(out["probabilities"], expected["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(out["layers_executed"], expected["layers_executed"])
    full = model(features, full_depth=True)
    np.testing.assert_allclose(full["probabilities"], expected["full_depth_probabilities"],
                               atol=1e-5)


def test_a_linked_vocabulary_is_refused_and_exports_never_overwrite(finished, tmp_path):
    import shutil

    copy = tmp_path / "linked"
    shutil.copytree(finished, copy)
    outside = tmp_path / "elsewhere.txt"
    outside.write_text((copy / "vocab.txt").read_text())
    (copy / "vocab.txt").unlink()
    (copy / "vocab.txt").symlink_to(outside)
    with pytest.raises(ValueError, match="vocab.txt is a symbolic link"):
        train_lib.load_model_dir(str(copy))
    with pytest.raises(ValueError, match="symbolic link"):
        train_lib.copy_vocabulary(str(copy), str(tmp_path / "v.txt"))
    # An export target that appears meanwhile is never replaced.
    target = tmp_path / "model.tflite"
    target.write_text("theirs")
    with pytest.raises(FileExistsError, match="never overwrite"):
        files.atomic_write(str(target), lambda tmp: open(tmp, "w").write("mine"),
                           overwrite=False)
    assert target.read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
    # The vocabulary of the same model is shared; another one is refused.
    shared = tmp_path / "shared_vocab.txt"
    train_lib.copy_vocabulary(str(finished), str(shared), overwrite=False)
    train_lib.copy_vocabulary(str(finished), str(shared), overwrite=False)
    shared.write_text("[PAD]\n")
    with pytest.raises(FileExistsError, match="another vocabulary"):
        train_lib.copy_vocabulary(str(finished), str(shared), overwrite=False)
