"""A damaged `--init_from` file or a hand-edited `dact_config.json` ends in one ValueError
naming the file (and the key), never a KeyError or a stack trace from deep inside."""

import dataclasses
import json
import os

import numpy as np
import pytest

from dact_tf.models import model_dir as model_dir_lib
from dact_tf.training import train_lib
from dact_tf.models import backbones
from dact_tf.models.dact_classifier import DactClassifier
from dact_tf.version import __version__


# ------------------------------------------------------------ --init_from


@pytest.fixture(scope="module")
def tiny_model():
    backbone, _ = backbones.load_backbone("tiny", max_sequence_length=16, seed=0)
    model = DactClassifier(backbone, num_classes=2, method="static")
    model({"token_ids": np.ones((2, 16), "int32"), "segment_ids": np.zeros((2, 16), "int32"),
           "padding_mask": np.ones((2, 16), bool)})
    train_lib._compile(model, train_lib.TrainConfig(), total_steps=10)
    return model


def _truncated(source, target):
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def test_a_truncated_or_corrupt_init_from_names_the_file(tiny_model, tmp_path):
    tiny_model.save_weights(str(tmp_path / "good.weights.h5"))
    tiny_model.save(str(tmp_path / "good.keras"))
    (tmp_path / "dir").mkdir()
    cases = {
        "weights": _truncated(tmp_path / "good.weights.h5", tmp_path / "cut.weights.h5"),
        "keras": _truncated(tmp_path / "good.keras", tmp_path / "cut.keras"),
        "model dir": _truncated(tmp_path / "good.keras", tmp_path / "dir" / "model.keras"),
        "empty": tmp_path / "empty.weights.h5",
    }
    cases["empty"].write_bytes(b"")
    for what, path in cases.items():
        source = tmp_path / "dir" if what == "model dir" else path
        with pytest.raises(ValueError, match="not a readable model file") as error:
            model_dir_lib.warm_start(tiny_model, str(source))
        assert str(path) in str(error.value), what
        assert len(str(error.value).splitlines()) == 1
    # The intact files still load.
    for name in ("good.weights.h5", "good.keras"):
        model_dir_lib.warm_start(tiny_model, str(tmp_path / name))


def test_an_init_from_of_another_kind_is_refused_by_name(tiny_model, tmp_path):
    other = tmp_path / "weights.txt"
    other.write_text("not weights")
    with pytest.raises(ValueError, match=r"weights\.txt: expected a model directory"):
        model_dir_lib.warm_start(tiny_model, str(other))


# ------------------------------------------------------------ dact_config.json


def _config():
    return {
        "format": "dact_tf.model_dir", "dact_tf_version": __version__, "method": "static",
        "lowercase": True, "label_names": ["negative", "positive"],
        "data": dataclasses.asdict(train_lib.DataConfig()),
        "model": dataclasses.asdict(train_lib.ModelConfig(method="static")),
        "train": dataclasses.asdict(train_lib.TrainConfig()),
    }


def _write(model_dir, config):
    model_dir.mkdir(exist_ok=True)
    (model_dir / "dact_config.json").write_text(json.dumps(config))
    return str(model_dir)


def test_an_older_config_takes_the_defaults_of_the_newer_fields(tmp_path):
    config = _config()
    # Fields added after the first dact_tf: absent from its configs.
    for section, key in (("data", "padding"), ("data", "holdout_fraction"),
                         ("model", "target_blocks"), ("model", "distill_weight"),
                         ("train", "optimizer")):
        del config[section][key]
    del config["method"]
    config["model"]["tau_warmup_steps"] = 100  # a field since removed: ignored
    model_dir = _write(tmp_path / "old", config)
    loaded = train_lib.read_config(model_dir)
    assert loaded["method"] == "dact"  # configs before the baselines were DACT's
    assert loaded["data"]["padding"] == train_lib.DataConfig().padding
    assert loaded["data"]["holdout_fraction"] == train_lib.DataConfig().holdout_fraction
    assert loaded["model"]["distill_weight"] == train_lib.ModelConfig().distill_weight
    assert loaded["train"]["optimizer"] == train_lib.TrainConfig().optimizer
    # A resumed run compares only the fields that were stored.
    raw = train_lib.read_config(model_dir, defaults=False)
    assert "padding" not in raw["data"] and "optimizer" not in raw["train"]
    assert raw["data"]["task"] == "sst2"


@pytest.mark.parametrize("edit, key, problem", [
    (lambda c: c.pop("lowercase"), "lowercase", "lacks the key"),
    (lambda c: c.pop("label_names"), "label_names", "lacks the key"),
    (lambda c: c.pop("data"), "data", "lacks the key"),
    (lambda c: c["data"].pop("task"), "data.task", "lacks the key"),
    (lambda c: c["data"].pop("sequence_length"), "data.sequence_length", "lacks the key"),
    (lambda c: c["data"].update(sequence_length="128"), "data.sequence_length", "needs an int"),
    (lambda c: c["data"].update(sequence_length=0), "data.sequence_length", ">= 1"),
    (lambda c: c["data"].update(header="yes"), "data.header", "needs a bool"),
    (lambda c: c["data"].update(task=None), "data.task", "needs a str"),
    (lambda c: c.update(lowercase="true"), "lowercase", "true or false"),
    (lambda c: c.update(label_names="negative,positive"), "label_names", "list of label"),
    (lambda c: c.update(label_names=[]), "label_names", "list of label"),
    (lambda c: c.update(model=[1, 2]), "model", "needs an object"),
    (lambda c: c["train"].update(learning_rate="fast"), "train.learning_rate", "needs a float"),
    (lambda c: c["model"].update(calibration_max_drop="x"), "model.calibration_max_drop",
     "needs a float (or null)"),
    (lambda c: c["model"].update(calibration_max_drop=-1), "model.calibration_max_drop", ">= 0"),
])
def test_a_missing_or_wrongly_typed_key_is_named(tmp_path, edit, key, problem):
    config = _config()
    edit(config)
    model_dir = _write(tmp_path / "edited", config)
    path = os.path.join(model_dir, "dact_config.json")
    for defaults in (True, False):
        with pytest.raises(ValueError) as error:
            train_lib.read_config(model_dir, defaults=defaults)
        message = str(error.value)
        assert path in message and repr(key) in message and problem in message, message
        assert len(message.splitlines()) == 1


@pytest.mark.parametrize("edit, problem", [
    (lambda c: c.update(dact_tf_version="abc"), "dact_tf_version"),
    (lambda c: c.update(method=["dact"]), "does not know"),
    (lambda c: c.clear(), "not a dact_tf model directory config"),
])
def test_a_malformed_header_is_named(tmp_path, edit, problem):
    config = _config()
    edit(config)
    with pytest.raises(ValueError, match=problem):
        train_lib.read_config(_write(tmp_path / "edited", config))


def test_a_null_calibration_bound_is_read_as_no_bound(tmp_path):
    config = _config()
    config["model"]["calibration_max_drop"] = None
    loaded = train_lib.read_config(_write(tmp_path / "unbounded", config))
    assert loaded["model"]["calibration_max_drop"] is None
    del config["model"]["calibration_max_drop"]  # a config from before the bound
    loaded = train_lib.read_config(_write(tmp_path / "older", config))
    assert loaded["model"]["calibration_max_drop"] == 0.01


def test_a_column_stored_as_its_index_is_accepted(tmp_path):
    config = _config()
    config["data"].update(task="tsv", text_column=0, label_column=1)
    loaded = train_lib.read_config(_write(tmp_path / "columns", config))
    assert loaded["data"]["text_column"] == 0
