"""Tests of DactClassifier: training, inference, saving, bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dact_tf.config import ModelConfig
from dact_tf.models import DactClassifier
from tests.testing import dataset
from tests.testing import numpy_dact
from tests.testing import random_features
from tests.testing import slice_features
from tests.testing import synthetic_task
from tests.testing import tiny_backbone


#: These tests train the paper's pure DACT (loss on a_N plus the ponder cost).
PAPER = ModelConfig.paper()


def train(tau, epochs=4, seed=0, **kwargs):
    feats, labels = synthetic_task(768, seed=seed)
    model = DactClassifier(tiny_backbone(seed=seed), num_classes=2, tau=tau, config=PAPER,
                           **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    history = model.fit(dataset(feats, labels), epochs=epochs, verbose=0)
    return model, history


@pytest.fixture(scope="module")
def trained():
    """A small model trained with a real ponder pressure (shared by tests)."""
    model, history = train(tau=0.05, halting_bias=1.0)
    feats, labels = synthetic_task(256, seed=100)
    return model, history, feats, labels


def test_fit_lowers_loss_and_logs_ponder_cost(trained):
    model, history, feats, labels = trained
    logs = history.history
    assert {"loss", "accuracy", "ponder_cost", "layers_executed"} <= set(logs)
    assert logs["loss"][-1] < logs["loss"][0] - 0.1
    assert logs["ponder_cost"][-1] < logs["ponder_cost"][0]
    assert logs["accuracy"][-1] > 0.75


def test_evaluate_reports_metric_and_mean_blocks(trained):
    model, _, feats, labels = trained
    results = model.evaluate(dataset(feats, labels), return_dict=True, verbose=0)
    preds = model.predict(dataset(feats, labels), verbose=0)
    assert set(preds) == {"probabilities", "predictions", "layers_executed", "ponder_cost"}
    np.testing.assert_allclose(
        results["layers_executed"], preds["layers_executed"].mean(), rtol=1e-5
    )
    np.testing.assert_allclose(
        results["accuracy"], (preds["predictions"] == labels).mean(), rtol=1e-5
    )
    assert results["accuracy"] > 0.75
    # The model learned to exit early on at least part of the data.
    assert preds["layers_executed"].mean() < model.num_layers


def test_trained_model_early_exit_equals_full_depth(trained):
    model, _, feats, _ = trained
    early = model.predict(feats, batch_size=32, verbose=0)
    full = tf.function(lambda f: model(f, full_depth=True))(feats)
    np.testing.assert_array_equal(early["predictions"], full["predictions"])
    assert (early["layers_executed"] < model.num_layers).any()
    for i in range(0, 40):  # batch 1
        one = model(slice_features(feats, i, i + 1))
        assert one["predictions"].numpy()[0] == full["predictions"].numpy()[i]


def test_larger_tau_lowers_blocks_executed():
    feats, labels = synthetic_task(256, seed=7)
    layers = {}
    for tau in (0.0, 0.1):
        model, _ = train(tau=tau, epochs=3, seed=1)
        layers[tau] = model.evaluate(
            dataset(feats, labels), return_dict=True, verbose=0
        )["layers_executed"]
    assert layers[0.1] < layers[0.0] - 0.5, layers


def test_keras_save_load_round_trip(trained, tmp_path):
    model, _, feats, _ = trained
    model.tau = 0.07
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded, DactClassifier)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_allclose(loaded.tau, 0.07, rtol=1e-6)
    a, b = model.predict(feats, verbose=0), loaded.predict(feats, verbose=0)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)
    # The optimizer state came back too: training continues.
    loaded.fit(dataset(*synthetic_task(64, seed=3)), epochs=1, verbose=0)
    model.tau = 0.05


def test_get_config_round_trip():
    model = DactClassifier(
        tiny_backbone(), num_classes=3, label_names=["a", "b", "c"],
        shared_heads=True, tau=0.02, halting_rule="paper", pooling="mean",
        head_loss_weight=0.5,
    )
    clone = DactClassifier.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    assert clone.get_config() == model.get_config()
    assert clone.label_names == ["a", "b", "c"]
    feats = random_features(8)
    np.testing.assert_allclose(
        model(feats)["probabilities"], clone(feats)["probabilities"], atol=1e-6
    )


def test_jit_compiled_training_step():
    feats, labels = synthetic_task(128, seed=4)
    model = DactClassifier(tiny_backbone(seed=4), num_classes=2, tau=0.01)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    history = model.fit(dataset(feats, labels), epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    # evaluate/predict run the early-exit loop without XLA.
    out = model.predict(feats, verbose=0)
    assert out["predictions"].shape == (128,)
    assert model.jit_compile


def test_regression():
    rng = np.random.default_rng(0)
    feats = random_features(512, seed=5)
    scores = (feats["token_ids"][:, 1] % 6).astype("float32")  # 0..5
    model = DactClassifier(
        tiny_backbone(seed=5), task="regression", output_range=(0.0, 5.0),
        tau=0.01, regression_tolerance=0.1,
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    hist = model.fit(dataset(feats, scores), epochs=3, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    out = model.predict(feats, verbose=0)
    assert set(out) == {"scores", "layers_executed", "ponder_cost"}
    assert ((out["scores"] >= 0) & (out["scores"] <= 5)).all()
    full = model(feats, full_depth=True)["scores"].numpy()
    assert np.abs(out["scores"] - full).max() <= 0.1 + 1e-5
    del rng
    # The per-block report of a regression model: Pearson per block, and the
    # exits' mean absolute errors add up to the early-exit loop's.
    from dact_tf.training import train_lib

    blocks = train_lib.per_block_report(model, dataset(feats, scores), "regression")["blocks"]
    hist = np.bincount(out["layers_executed"], minlength=model.num_layers + 1)[1:]
    assert [b["exits"] for b in blocks] == hist.tolist()
    total = sum(b["exits"] * b["exit_mae"] for b in blocks if b["exits"])
    np.testing.assert_allclose(total / len(scores), np.abs(out["scores"] - scores).mean(),
                               rtol=1e-5)
    assert {"pearson", "spearman"} <= set(blocks[0]["head"]) and "mean_budget" in blocks[0]
    assert "exit mae" in train_lib.format_per_block({"blocks": blocks})


def test_inputs_default_mask_and_segments():
    model = DactClassifier(tiny_backbone(), num_classes=2)
    feats = random_features(6)
    full = model(feats)
    ids_only = model(feats["token_ids"])  # mask defaults to token_ids != 0
    np.testing.assert_allclose(full["probabilities"], ids_only["probabilities"], atol=1e-6)


@pytest.mark.parametrize(
    "mutate, error, message",
    [
        (lambda f: {**f, "token_ids": f["token_ids"].astype("float32")}, ValueError, "integers"),
        (lambda f: {**f, "token_ids": f["token_ids"][:, :, None]}, ValueError, r"\[batch, seq\]"),
        (lambda f: {**f, "padding_mask": f["padding_mask"][:, :5]}, ValueError, "padding_mask"),
        (lambda f: {**f, "segment_ids": f["segment_ids"][:2]}, ValueError, "segment_ids"),
        (lambda f: {k: v[:0] for k, v in f.items()}, ValueError, "empty batch"),
        (lambda f: {k: np.tile(v, (1, 2)) for k, v in f.items()}, ValueError, "longer than"),
        (lambda f: {**f, "tokens": f["token_ids"]}, ValueError, "Unknown input keys"),
        (lambda f: {"padding_mask": f["padding_mask"]}, ValueError, "need `token_ids`"),
        (lambda f: {**f, "token_ids": f["token_ids"] + 1000}, tf.errors.InvalidArgumentError, "vocabulary size"),
        (lambda f: {**f, "token_ids": f["token_ids"] - 1000}, tf.errors.InvalidArgumentError, ">= 0"),
    ],
)
def test_bad_inputs_are_rejected(mutate, error, message):
    model = DactClassifier(tiny_backbone(), num_classes=2)
    feats = random_features(4)
    with pytest.raises(error, match=message):
        model(mutate(feats))


def test_bad_inputs_rejected_inside_graphs():
    model = DactClassifier(tiny_backbone(), num_classes=2)
    fn = tf.function(
        lambda ids: model({"token_ids": ids}),
        input_signature=[tf.TensorSpec([None, None], tf.int32)],
    )
    fn(random_features(2)["token_ids"])  # fine
    with pytest.raises(tf.errors.InvalidArgumentError, match="vocabulary"):
        fn(np.full((2, 4), 64, "int32"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="maximum"):
        fn(np.ones((2, 17), "int32"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
        fn(np.ones((0, 4), "int32"))


def test_bad_construction_arguments():
    with pytest.raises(TypeError, match="BertBackbone"):
        DactClassifier(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="label_names"):
        DactClassifier(tiny_backbone(), num_classes=2, label_names=["a"])
    with pytest.raises(ValueError, match="task"):
        DactClassifier(tiny_backbone(), task="ranking")
    model = DactClassifier(tiny_backbone(), num_classes=2)
    with pytest.raises(ValueError, match="tau"):
        model.tau = -1.0


def test_head_loss_weight_adds_the_mean_block_nll():
    feats, labels = synthetic_task(16, seed=9)
    model = DactClassifier(tiny_backbone(seed=9), num_classes=2, tau=0.0, dropout=0.0,
                           config=PAPER)
    model.compile()
    y_pred = model(feats, training=True)
    base = float(model.compute_loss(y=labels, y_pred=y_pred))
    model.head_loss_weight = 0.5
    y_pred = model(feats, training=True)
    with_heads = float(model.compute_loss(y=labels, y_pred=y_pred))
    answers = y_pred["block_answers"].numpy()  # [N, batch, C]
    nll = -np.log(np.clip(answers[:, np.arange(16), labels], 1e-7, 1.0)).mean()
    np.testing.assert_allclose(with_heads - base, 0.5 * nll, rtol=1e-4)
    with pytest.raises(ValueError, match="head_loss_weight"):
        model.head_loss_weight = -1


def test_keras_int8_quantization_keeps_the_guarantee():
    model = DactClassifier(tiny_backbone(seed=3), num_classes=2, halting_bias=-0.5)
    feats = random_features(64, seed=3)
    before = model.predict(feats, verbose=0)
    model.quantize("int8")
    after = model.predict(feats, verbose=0)
    full = model(feats, full_depth=True)
    np.testing.assert_array_equal(after["predictions"], full["predictions"])
    np.testing.assert_allclose(after["probabilities"], before["probabilities"], atol=0.02)
    assert (after["layers_executed"] < model.num_layers).any()


def test_per_block_report_matches_the_loop_and_a_numpy_reference(trained):
    from dact_tf.training import train_lib

    model, _, feats, labels = trained
    data = dataset(feats, labels)
    report = train_lib.per_block_report(model, data, "classification")
    blocks = report["blocks"]
    assert report["num_examples"] == len(labels) and len(blocks) == model.num_layers
    # Exits are the early-exit loop's (an independent code path), and the
    # exit accuracies add up to its accuracy.
    preds = model.predict(data, verbose=0)
    hist = np.bincount(preds["layers_executed"], minlength=model.num_layers + 1)[1:]
    assert [b["exits"] for b in blocks] == hist.tolist()
    correct = sum(b["exits"] * b["exit_accuracy"] for b in blocks if b["exits"])
    np.testing.assert_allclose(correct / len(labels), (preds["predictions"] == labels).mean())
    # Heads, a_n and p_n against NumPy from the per-block answers and halting.
    trace = model.trace(feats)
    answers, halting = trace["answers"].numpy(), trace["halting"].numpy()
    accumulated, budgets = numpy_dact(answers, halting)
    full = tf.function(lambda f: model(f, full_depth=True))(feats)["predictions"].numpy()
    np.testing.assert_allclose(blocks[-1]["accumulated"]["accuracy"], (full == labels).mean())
    for i, b in enumerate(blocks):
        np.testing.assert_allclose(b["head"]["accuracy"],
                                   (answers[i].argmax(-1) == labels).mean())
        np.testing.assert_allclose(b["accumulated"]["accuracy"],
                                   (accumulated[i].argmax(-1) == labels).mean())
        np.testing.assert_allclose(b["mean_budget"], budgets[i].mean(), rtol=1e-5)
        np.testing.assert_allclose(b["mean_halting"], halting[i].mean(), rtol=1e-5)
    table = [line for line in train_lib.format_per_block(report).splitlines()
             if line.startswith("|")]  # the table, without its legend
    assert len(table) == 2 + model.num_layers and table[0].startswith("| block | head accuracy")


def test_per_block_report_of_a_baseline_and_bad_input():
    from dact_tf.training import train_lib

    feats, labels = synthetic_task(96, seed=3)
    model = DactClassifier(tiny_backbone(seed=3), num_classes=2, method="pabee", patience=1)
    report = train_lib.per_block_report(model, dataset(feats, labels), "classification")
    preds = model.predict(dataset(feats, labels), verbose=0)
    hist = np.bincount(preds["layers_executed"], minlength=model.num_layers + 1)[1:]
    assert [b["exits"] for b in report["blocks"]] == hist.tolist()
    assert "accumulated" not in report["blocks"][0]  # DACT only
    assert "a_n" not in train_lib.format_per_block(report)
    with pytest.raises(ValueError, match="empty dataset"):
        train_lib.per_block_report(model, dataset(feats, labels).take(0), "classification")
