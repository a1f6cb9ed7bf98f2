"""Tests of the training recipe: distillation, AdamW schedule, best epoch, holdout, two stages."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dact_tf import ops
from dact_tf.models import optimization
from dact_tf.calibration import risk_bounds
from dact_tf.training import train_lib
from dact_tf.callbacks import KeepBestEpoch
from dact_tf.data import builtin_sst2_dir
from dact_tf.models.dact_classifier import DactClassifier
from tests.testing import synthetic_task
from tests.testing import tiny_backbone


def numpy_distillation(answers, accumulated, regression=False, span=1.0):
    answers = np.asarray(answers, np.float64)
    accumulated = np.asarray(accumulated, np.float64)
    teacher = answers[-1]

    def div(x):
        if regression:
            return (((teacher - x) / span) ** 2).sum(-1)
        return (teacher * (np.log(teacher + 1e-7) - np.log(x + 1e-7))).sum(-1)

    heads = np.mean([div(a).mean() for a in answers[:-1]]) if len(answers) > 1 else 0.0
    return (heads + np.mean([div(a).mean() for a in accumulated])) / 2


def test_distillation_loss_matches_its_formula():
    rng = np.random.default_rng(0)
    answers = rng.dirichlet(np.ones(3), size=(4, 5)).astype("float32")
    accumulated = rng.dirichlet(np.ones(3), size=(4, 5)).astype("float32")
    got = float(ops.distillation_loss(answers, accumulated))
    np.testing.assert_allclose(got, numpy_distillation(answers, accumulated), rtol=1e-5)
    # Regression: squared differences scaled by the range.
    scores = rng.uniform(0, 5, size=(3, 5, 1)).astype("float32")
    acc = rng.uniform(0, 5, size=(3, 5, 1)).astype("float32")
    got = float(ops.distillation_loss(scores, acc, task="regression", output_range=(0, 5)))
    np.testing.assert_allclose(got, numpy_distillation(scores, acc, True, 5.0), rtol=1e-5)
    # One block: only a_1 against y_1; identical answers cost nothing.
    same = answers[:1]
    assert abs(float(ops.distillation_loss(same, same))) < 1e-6


def test_distillation_gradient_does_not_reach_the_teacher():
    rng = np.random.default_rng(1)
    answers = tf.Variable(rng.dirichlet(np.ones(2), size=(3, 4)), dtype=tf.float32)
    accumulated = tf.Variable(rng.dirichlet(np.ones(2), size=(3, 4)), dtype=tf.float32)
    with tf.GradientTape() as tape:
        loss = ops.distillation_loss(answers, accumulated)
    grad_answers, grad_accumulated = tape.gradient(loss, [answers, accumulated])
    np.testing.assert_array_equal(grad_answers.numpy()[-1], 0.0)  # the teacher y_N
    assert np.abs(grad_answers.numpy()[:-1]).min() > 0  # students y_1..y_{N-1}
    assert np.abs(grad_accumulated.numpy()).min() > 0  # every a_n


def test_model_adds_the_weighted_distillation_loss():
    feats, labels = synthetic_task(16, seed=4)
    model = DactClassifier(tiny_backbone(seed=4), num_classes=2, tau=0.0, dropout=0.0,
                           distill_weight=0.0)
    model.compile()
    y_pred = model(feats, training=True)
    base = float(model.compute_loss(y=labels, y_pred=y_pred))
    distilled = DactClassifier(tiny_backbone(seed=4), num_classes=2, tau=0.0, dropout=0.0,
                               distill_weight=0.7)
    distilled.set_weights(model.get_weights())
    distilled.compile()
    y_pred = distilled(feats, training=True)
    got = float(distilled.compute_loss(y=labels, y_pred=y_pred))
    expected = 0.7 * numpy_distillation(y_pred["block_answers"], y_pred["block_accumulated"])
    np.testing.assert_allclose(got - base, expected, rtol=1e-4)
    assert distilled.get_config()["distill_weight"] == 0.7
    with pytest.raises(ValueError, match="distill_weight"):
        DactClassifier(tiny_backbone(), num_classes=2, method="pabee", distill_weight=1.0)


def test_warmup_linear_decay_schedule():
    schedule = optimization.WarmupLinearDecay(1e-3, warmup_steps=10, total_steps=110)
    values = [float(schedule(s)) for s in (0, 5, 10, 60, 110, 200)]
    np.testing.assert_allclose(values, [0.0, 5e-4, 1e-3, 5e-4, 0.0, 0.0], atol=1e-9)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert clone.get_config() == schedule.get_config()
    with pytest.raises(ValueError, match="warmup_steps"):
        optimization.WarmupLinearDecay(1e-3, warmup_steps=20, total_steps=10)
    with pytest.raises(ValueError, match="optimizer"):
        optimization.make_optimizer("sgd", 1e-3)


def test_adamw_decays_kernels_but_not_biases_or_layer_norms():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.LayerNormalization()])
    optimizer = optimization.make_optimizer("adamw", 0.1, total_steps=2, warmup_fraction=0.0,
                                            weight_decay=0.5)
    before = [v.numpy().copy() for v in model.trainable_variables]
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
    after = {v.path: v.numpy() for v in model.trainable_variables}
    for v, old in zip(model.trainable_variables, before):
        if "kernel" in v.path:
            assert np.abs(after[v.path] - old).max() > 1e-3, v.path  # decayed
        else:
            np.testing.assert_array_equal(after[v.path], old)  # bias, gamma, beta


def _tiny_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_keep_best_epoch_restores_the_best_weights_across_a_resume(tmp_path):
    model = _tiny_model()
    cb = KeepBestEpoch("val_accuracy", "max", str(tmp_path))
    cb.set_model(model)
    cb.on_train_begin()
    snapshots = []
    for epoch, score in enumerate([0.5, 0.7, 0.6]):
        model.set_weights([w + 1.0 for w in model.get_weights()])
        snapshots.append(model.get_weights())
        cb.on_epoch_end(epoch, {"val_accuracy": score})
    # Interrupted here; a resumed run with a new callback keeps the record.
    resumed = KeepBestEpoch("val_accuracy", "max", str(tmp_path))
    resumed.set_model(model)
    resumed.on_train_begin()
    assert resumed.best == 0.7 and resumed.best_epoch == 1
    model.set_weights([w + 1.0 for w in model.get_weights()])
    resumed.on_epoch_end(3, {"val_accuracy": 0.65})
    resumed.on_train_end()
    for got, want in zip(model.get_weights(), snapshots[1]):
        np.testing.assert_array_equal(got, want)
    with open(tmp_path / "best_epoch.json") as f:
        assert json.load(f)["epoch"] == 1
    with pytest.raises(ValueError, match="val_missing"):
        bad = KeepBestEpoch("val_missing", "max", str(tmp_path / "x"))
        bad.set_model(model)
        bad.on_epoch_end(0, {"val_accuracy": 1.0})


def _data_config(**kwargs):
    values = dict(task="sst2", data_dir=builtin_sst2_dir(), sequence_length=16,
                  max_train_examples=120, max_eval_examples=40, batch_size=16)
    values.update(kwargs)
    return train_lib.DataConfig(**values)


def _rows(dataset, tokenizer_vocab=None):
    rows = []
    for x, y in dataset:
        for ids, mask, label in zip(x["token_ids"].numpy(), x["padding_mask"].numpy(), y.numpy()):
            rows.append((tuple(ids[mask]), int(label)))
    return rows


def test_held_out_rows_split_into_selection_and_calibration_the_same_for_every_seed():
    from dact_tf.models import backbones

    pre = backbones.make_preprocessor(backbones.tiny_tokenizer(), 16)
    splits = {}
    for seed in (0, 1):
        ds = train_lib.make_datasets(_data_config(seed=seed), pre,
                                     splits=("train", "holdout", "calibration"))
        splits[seed] = {k: _rows(v) for k, v in ds.items()}
    everything = train_lib.make_datasets(_data_config(holdout_fraction=0.0, padding="batch"), pre,
                                         splits=("train",))["train"]
    allrows = sorted(_rows(everything))
    train, selection, calibration = (splits[0][k] for k in ("train", "holdout", "calibration"))
    # 20 % of 120 held out; 60 % of those kept apart for the certificates.
    assert (len(train), len(selection), len(calibration)) == (96, 10, 14)
    assert sorted(train + selection + calibration) == allrows  # a partition
    for split in ("holdout", "calibration"):
        assert sorted(splits[1][split]) == sorted(splits[0][split])  # seed-independent
    assert train_lib.dataset_sizes(_data_config()) == (96, 24)
    # calibration_share=0: the calibration shares the selection rows (older models).
    shared = train_lib.make_datasets(_data_config(calibration_share=0.0), pre,
                                     splits=("holdout", "calibration"))
    assert sorted(_rows(shared["holdout"])) == sorted(_rows(shared["calibration"]))
    assert sorted(_rows(shared["holdout"])) == sorted(selection + calibration)


def test_calibration_min_tokens_keeps_exactly_the_long_calibration_rows():
    from dact_tf.calibration import calibration_run
    from dact_tf.models import backbones

    pre = backbones.make_preprocessor(backbones.tiny_tokenizer(), 16)
    every = _rows(train_lib.make_datasets(_data_config(), pre, splits=("calibration",))
                  ["calibration"])
    lengths = sorted(len(ids) for ids, _ in every)
    n = lengths[len(lengths) // 2]  # the median length: some rows go, some stay
    config = _data_config(calibration_min_tokens=n)
    ds = train_lib.make_datasets(config, pre, splits=("holdout", "calibration"))
    long = [row for row in every if len(row[0]) >= n]
    assert 0 < len(long) < len(every)
    assert _rows(ds["calibration"]) == long  # the same rows, in the same order
    assert len(_rows(ds["holdout"])) == 10  # the selection rows are untouched
    # The certificates say which rows they were made on.
    assert calibration_run.rows_source(config) == f"kept apart, the rows of at least {n} tokens"
    # Untruncated rows: one token more than the longest is too long.
    wide = backbones.make_preprocessor(backbones.tiny_tokenizer(), 128)
    longest = max(len(ids) for ids, _ in _rows(train_lib.make_datasets(
        _data_config(sequence_length=128), wide, splits=("calibration",))["calibration"]))
    assert longest < 128
    with pytest.raises(ValueError, match=rf"^--calibration_min_tokens={longest + 1}: none of "
                       rf"the 14 calibration rows is that long \(the longest has {longest} "
                       r"tokens\)\.$"):
        train_lib.make_datasets(
            _data_config(sequence_length=128, calibration_min_tokens=longest + 1), wide,
            splits=("calibration",))
    with pytest.raises(ValueError, match="above --sequence_length=16"):
        train_lib.make_datasets(_data_config(calibration_min_tokens=17), pre,
                                splits=("calibration",))
    with pytest.raises(ValueError, match="--calibration_share=0 keeps none apart"):
        train_lib.make_datasets(_data_config(calibration_min_tokens=n, calibration_share=0.0),
                                pre, splits=("calibration",))


def test_train_runs_both_stages_keeps_the_best_epoch_and_lands_on_target_blocks(tmp_path):
    model_dir = tmp_path / "run"
    data = _data_config()
    model, pre, history = train_lib.train(
        str(model_dir), data,
        # 12 held-out rows: any changed answer costs 8 points; this test is
        # about landing on the target (the bound has its own tests).
        train_lib.ModelConfig(backbone="tiny", target_blocks=2.0, calibration_max_drop=None),
        train_lib.TrainConfig(epochs=2, learning_rate=1e-3, verbose=0),
    )
    assert (model_dir / "stage1" / "model.keras").exists()  # stage 1 kept
    # The kept epoch is recorded; its weights copy goes once model.keras has them.
    assert (model_dir / "best" / "best_epoch.json").exists()
    assert not (model_dir / "best" / "best.weights.h5").exists()
    stage1 = train_lib.read_config(str(model_dir / "stage1"))
    assert stage1["method"] == "static" and stage1["model"]["head_loss_weight"] == 0.0
    config = train_lib.read_config(str(model_dir))
    assert config["model"]["init_from"] is None  # the stored config is the user's
    cal = history["calibration"]
    holdout = train_lib.make_datasets(data, pre, splits=("holdout",))["holdout"]
    reloaded, _, _ = train_lib.load_model_dir(str(model_dir))
    blocks = train_lib.evaluate(reloaded, holdout, "sst2")["mean_layers_executed"]
    assert abs(blocks - 2.0) <= 0.5, (blocks, cal)
    assert abs(cal["holdout_layers_executed"] - blocks) < 1e-6
    # The calibrated model keeps the guarantee.
    early, _ = train_lib.predict_dataset(reloaded, holdout)
    full, _ = train_lib.predict_dataset(reloaded, holdout, full_depth=True)
    np.testing.assert_array_equal(early["predictions"], full["predictions"])
    # A re-run resumes nothing and trains no stage 1 again.
    mtime = os.path.getmtime(model_dir / "stage1" / "model.keras")
    with pytest.raises(ValueError, match="target_blocks"):
        train_lib.train(str(tmp_path / "bad"), data,
                        train_lib.ModelConfig(backbone="tiny", method="pabee", target_blocks=2.0),
                        train_lib.TrainConfig(epochs=1, verbose=0))
    # A malformed pass-through is refused before any training.
    with pytest.raises(ValueError, match="pass_through"):
        train_lib.train(str(tmp_path / "bad2"), data,
                        train_lib.ModelConfig(backbone="tiny", target_blocks=2.0,
                                              pass_through="two"),
                        train_lib.TrainConfig(epochs=1, verbose=0))
    assert not (tmp_path / "bad2" / "stage1").exists()
    for config in (dict(target_blocks=0, pass_through="1"),
                   dict(method="pabee", pass_through="1"),
                   dict(shared_heads=True, pass_through="1")):
        with pytest.raises(ValueError, match="pass_through"):
            train_lib.train(str(tmp_path / "bad3"), data,
                            train_lib.ModelConfig(backbone="tiny", **config),
                            train_lib.TrainConfig(epochs=1, verbose=0))
    assert not (tmp_path / "bad3" / "stage1").exists()
    assert os.path.getmtime(model_dir / "stage1" / "model.keras") == mtime
    assert 0 <= cal["pass_through"] <= 3


def test_pass_through_setting_is_checked():
    assert train_lib.parse_pass_through("auto", 6) == "auto"
    assert train_lib.parse_pass_through("2", 6) == 2
    assert train_lib.parse_pass_through(5, 6) == 5
    assert train_lib.parse_pass_through("7") == 7  # the blocks are not known yet
    for bad, layers in (("6", 6), ("x", 6), ("-1", 6), ("1.5", 6), ("x", None)):
        with pytest.raises(ValueError, match="pass_through"):
            train_lib.parse_pass_through(bad, layers)


def test_train_certifies_what_the_calibration_costs_and_says_so(tmp_path, capsys):
    model_dir = tmp_path / "run"
    data = _data_config(max_train_examples=400, holdout_fraction=0.5)
    model, pre, history = train_lib.train(
        str(model_dir), data,
        train_lib.ModelConfig(backbone="tiny", target_blocks=1.0, calibration_max_drop=0.05),
        train_lib.TrainConfig(epochs=1, learning_rate=1e-3, verbose=0),
    )
    cal = history["calibration"]
    with open(model_dir / train_lib.CALIBRATION_FILE) as f:
        assert json.load(f) == json.loads(json.dumps(cal))
    certificate = cal["certificate"]
    assert certificate["kind"] == "compute_target"
    assert certificate["reference"] == "the full-depth model"  # stage 1
    assert certificate["rows"] == 120 and certificate["calibration_rows"] == "kept apart"
    assert certificate["epsilon"] == 0.05 and certificate["confidence"] == pytest.approx(0.95)
    # The certificate's own arithmetic: the bound of the rows it counted.
    assert certificate["bound"] == pytest.approx(risk_bounds.difference_upper_bound(
        certificate["at_risk"], certificate["better"], 120, 0.05))
    assert certificate["certified"] == (certificate["bound"] <= 0.05)
    # What the saved model does on the calibration rows is what was certified.
    rows = train_lib.make_datasets(data, pre, splits=("calibration",))["calibration"]
    reloaded, _, _ = train_lib.load_model_dir(str(model_dir))
    after = train_lib.evaluate(reloaded, rows, "sst2")
    assert after["accuracy"] == pytest.approx(cal["metric"])
    assert after["mean_layers_executed"] == pytest.approx(cal["mean_layers_executed"])
    assert reloaded.certificates["compute_target"] == certificate
    # Counted against stage 1's own answers on those rows.
    stage1, _, _ = train_lib.load_model_dir(str(model_dir / "stage1"))
    ref, labels = train_lib.predict_dataset(stage1, rows, full_depth=True)
    mine, _ = train_lib.predict_dataset(reloaded, rows)
    right, ref_right = mine["predictions"] == labels, ref["predictions"] == labels
    assert int((~right & ref_right).sum()) == certificate["at_risk"]
    assert int((right & ~ref_right).sum()) == certificate["better"]
    err = capsys.readouterr().err
    if cal["limited"] or not certificate["certified"]:  # training says so, even quiet
        assert "calibration rows" in err
    else:
        assert "Calibrated" not in err


def test_the_recipe_pieces_compose_in_a_plain_keras_fit(tmp_path):
    """The Python recipe of `docs/python.md`, on a tiny model."""
    import dact_tf

    feats, labels = synthetic_task(192, seed=6)
    train = tf.data.Dataset.from_tensor_slices((feats, labels)).batch(32)
    heldout = tf.data.Dataset.from_tensor_slices(
        synthetic_task(64, seed=7)).batch(32)
    model = dact_tf.DactClassifier(tiny_backbone(seed=6), num_classes=2, pooling="mean",
                                   head_loss_weight=1.0, distill_weight=1.0,
                                   halting_confidence=-4.0, tau=0.06)
    epochs, steps = 3, 3 * 6
    model.compile(optimizer=dact_tf.models.optimization.make_optimizer("adamw", 1e-3, total_steps=steps))
    model.fit(train, validation_data=heldout, epochs=epochs, verbose=0, callbacks=[
        dact_tf.callbacks.TargetBlocksTau(2.0, initial_tau=0.06, warmup_steps=steps // 10,
                                          data=heldout.take(1), interval=2),
        dact_tf.callbacks.KeepBestEpoch("val_accuracy", "max", str(tmp_path / "best")),
    ])
    result = dact_tf.calibration.halting_bias.calibrate_halting_bias(model, heldout, target_blocks=2.0,
                                                        max_metric_drop=None)
    blocks = train_lib.evaluate(model, heldout, "classification")["mean_layers_executed"]
    assert abs(blocks - 2.0) <= 0.5 and blocks == pytest.approx(result["mean_layers_executed"])
    assert (tmp_path / "best" / "best.weights.h5").exists()


def numpy_expected_blocks(accumulated, budgets, regression=False, span=5.0, tol=0.05, temp=0.25):
    accumulated = np.asarray(accumulated, np.float64)
    budgets = np.asarray(budgets, np.float64)
    n = budgets.shape[0]
    cost, alive = 1.0, 1.0
    for i in range(n - 1):  # after blocks 1..N-1
        q = (1.0 - budgets[i]) ** (n - 1 - i)
        if regression:
            gap = (tol - (1.0 - q) * span) / tol
        else:
            top = np.sort(accumulated[i], axis=-1)
            gap = q * (1.0 + top[:, -1] - top[:, -2]) - 1.0
        alive = alive / (1.0 + np.exp(gap / temp))
        cost = cost + alive
    return cost


def test_expected_blocks_matches_its_formula_and_counts_blocks():
    rng = np.random.default_rng(2)
    accumulated = rng.dirichlet(np.ones(3), size=(5, 6)).astype("float32")
    budgets = np.cumprod(rng.uniform(0.05, 0.95, size=(5, 6)), axis=0).astype("float32")
    got = ops.expected_blocks(accumulated, budgets).numpy()
    np.testing.assert_allclose(got, numpy_expected_blocks(accumulated, budgets), rtol=1e-5)
    scores = rng.uniform(0, 5, size=(5, 6, 1)).astype("float32")
    got = ops.expected_blocks(scores, budgets, task="regression", output_range=(0, 5)).numpy()
    np.testing.assert_allclose(got, numpy_expected_blocks(scores, budgets, True), rtol=1e-5)
    # A row that keeps its whole budget runs (nearly) every block; a sure
    # answer with the budget spent stops after the first.
    sure = np.tile(np.array([[1.0, 0.0, 0.0]], "float32"), (5, 1, 1))
    assert ops.expected_blocks(sure, np.ones((5, 1), "float32")).numpy()[0] > 4.5
    assert ops.expected_blocks(sure, np.zeros((5, 1), "float32")).numpy()[0] < 1.1
    assert ops.expected_blocks(sure[:1], np.ones((1, 1), "float32")).numpy()[0] == 1.0
    # A regressor whose budget is spent stops after block 1 too.
    assert ops.expected_blocks(scores[:, :1], np.zeros((5, 1), "float32"), task="regression",
                               output_range=(0, 5)).numpy()[0] < 1.1
    with pytest.raises(ValueError, match="temperature"):
        ops.expected_blocks(sure, np.ones((5, 1), "float32"), temperature=0.0)


def test_expected_blocks_trains_the_budgets_not_the_answers():
    rng = np.random.default_rng(3)
    halting = tf.Variable(rng.uniform(0.2, 0.9, size=(4, 5)), dtype=tf.float32)
    answers = tf.Variable(rng.dirichlet(np.ones(2), size=(4, 5)), dtype=tf.float32)
    with tf.GradientTape() as tape:
        answer, budget = ops.initial_state(5, 2)
        accumulated, budgets = [], []
        for n in range(4):
            answer, budget = ops.accumulate(answer, budget, answers[n], halting[n])
            accumulated.append(answer)
            budgets.append(budget)
        cost = tf.reduce_sum(ops.expected_blocks(tf.stack(accumulated), tf.stack(budgets)))
    grad_halting, grad_answers = tape.gradient(cost, [halting, answers])
    assert grad_answers is None  # the answers' margins enter as constants
    # More halting weight kept means more blocks: every h_n but the last's
    # (p_N is never tested) has a positive gradient.
    assert grad_halting.numpy()[:-1].min() > 0
    np.testing.assert_array_equal(grad_halting.numpy()[-1], 0.0)


def test_model_pays_the_chosen_ponder_cost():
    feats, labels = synthetic_task(16, seed=5)
    model = DactClassifier(tiny_backbone(seed=5), num_classes=2, tau=0.0, dropout=0.0)
    model.compile()
    base = float(model.compute_loss(y=labels, y_pred=model(feats, training=True)))
    blocks = DactClassifier(tiny_backbone(seed=5), num_classes=2, tau=0.3, dropout=0.0,
                            ponder="blocks")
    blocks.set_weights(model.get_weights())
    blocks.tau = 0.3
    blocks.compile()
    y_pred = blocks(feats, training=True)
    got = float(blocks.compute_loss(y=labels, y_pred=y_pred))
    trace = blocks.trace(feats)  # no dropout anywhere: the training pass's trajectory
    expected = 0.3 * float(tf.reduce_mean(ops.expected_blocks(trace["accumulated"],
                                                              trace["budgets"])))
    np.testing.assert_allclose(got - base, expected, rtol=1e-4)
    # The reported ponder cost is still sum p_n; the config round-trips.
    np.testing.assert_allclose(y_pred["ponder_cost"], trace["ponder_cost"], rtol=1e-5)
    restored = DactClassifier.from_config(blocks.get_config())
    assert restored.encoder.ponder == "blocks" and model.encoder.ponder == "budget"
    with pytest.raises(ValueError, match="ponder"):
        DactClassifier(tiny_backbone(), num_classes=2, ponder="steps")
