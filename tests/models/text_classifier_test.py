"""DactTextClassifier: the keras-hub Task on raw strings."""

import json
import os
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

import dact_tf
from dact_tf import config
from dact_tf.models import optimization
from dact_tf.models.dact_classifier import DactClassifier

TEXTS = ["a fine film", "a dull film", "great fun", "an awful mess", "fine acting",
         "a boring plot"] * 2
LABELS = [1, 0, 1, 0, 1, 0] * 2
SEQ = 16


def _model(**kwargs):
    return dact_tf.DactTextClassifier.from_preset(
        "tiny", num_classes=kwargs.pop("num_classes", 2), sequence_length=SEQ, **kwargs)


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    model = _model()
    model.fit(x=TEXTS, y=LABELS, batch_size=4, epochs=2, verbose=0)
    return model


def test_is_a_keras_hub_task_with_the_recipe_defaults():
    model = _model()
    assert isinstance(model, keras_hub.models.TextClassifier)
    assert isinstance(model, DactClassifier)
    defaults = config.ModelConfig()
    cfg = model.get_config()
    for name in ("tau", "halting_bias", "halting_confidence", "head_loss_weight",
                 "distill_weight", "pooling", "dropout"):
        assert cfg[name] == pytest.approx(getattr(defaults, name)), name
    assert model.method == defaults.method
    assert model.exit_criterion.halting_rule == defaults.halting_rule
    # The baselines get the recipe without DACT-only terms, and their knobs.
    pabee = _model(method="pabee")
    assert pabee.distill_weight == 0.0 and pabee.encoder.halting_confidence == 0.0
    assert pabee.exit_criterion.patience == defaults.patience
    with pytest.raises(ValueError, match="`patience` is a setting of pabee"):
        _model(patience=3)  # a DACT model


def test_fit_on_strings_plans_the_learning_rate_over_each_fit(trained):
    schedule = trained.optimizer._learning_rate
    assert isinstance(schedule, optimization.FitPlannedDecay)
    # 12 rows in batches of 4, 2 epochs: 6 steps, warm-up 10%.
    assert int(trained.optimizer.iterations) == 6
    assert (schedule.start_step, schedule.warmup_steps, schedule.total_steps) == (0, 1, 6)
    model = _model()
    # `validation_split` holds out the last rows: 9 training rows, 3 steps.
    history = model.fit(x=TEXTS, y=LABELS, batch_size=3, epochs=1, verbose=0,
                        validation_split=0.25)
    assert "val_accuracy" in history.history
    assert int(model.optimizer.iterations) == 3
    model.fit(tf.data.Dataset.from_tensor_slices((TEXTS, LABELS)).batch(6), epochs=2,
              verbose=0)
    schedule = model.optimizer._learning_rate
    assert int(model.optimizer.iterations) == 3 + 4
    assert (schedule.start_step, schedule.total_steps) == (3, 4)
    # The second fit warms up again instead of training at a rate of 0.
    assert float(schedule(3 + 4)) == 0.0 and float(schedule(3 + 1)) > 0.0


def test_fit_learns_a_separable_task():
    keras.utils.set_random_seed(1)
    model = _model(tau=0.0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    texts = ["good"] * 16 + ["bad"] * 16
    labels = [1] * 16 + [0] * 16
    model.fit(x=texts, y=labels, batch_size=8, epochs=4, verbose=0)
    assert model.evaluate(texts, labels, verbose=0, return_dict=True)["accuracy"] == 1.0


def test_predict_on_strings_and_the_early_exit_guarantee(trained):
    out = trained.predict(TEXTS, verbose=0)
    assert set(out) >= {"probabilities", "predictions", "layers_executed"}
    assert out["probabilities"].shape == (len(TEXTS), 2)
    features = trained.preprocessor(x=tf.constant(TEXTS))
    full = trained(features, full_depth=True)
    np.testing.assert_array_equal(out["predictions"], full["predictions"])
    np.testing.assert_array_equal(full["layers_executed"], 4)


def test_direct_calls_need_token_inputs(trained):
    with pytest.raises(ValueError, match="preprocess"):
        trained(tf.constant(["a fine film"]))


def test_keras_file_round_trip(trained, tmp_path):
    path = str(tmp_path / "model.keras")
    trained.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is dact_tf.DactTextClassifier
    np.testing.assert_allclose(loaded.predict(TEXTS, verbose=0)["probabilities"],
                               trained.predict(TEXTS, verbose=0)["probabilities"], atol=1e-6)


def test_preset_round_trip_and_new_heads(trained, tmp_path):
    preset = str(tmp_path / "preset")
    trained.save_to_preset(preset)
    with open(os.path.join(preset, "task.json")) as f:
        assert json.load(f)["class_name"] == "DactTextClassifier"
    loaded = dact_tf.DactTextClassifier.from_preset(preset)
    np.testing.assert_allclose(loaded.predict(TEXTS, verbose=0)["probabilities"],
                               trained.predict(TEXTS, verbose=0)["probabilities"], atol=1e-6)
    assert loaded.preprocessor.sequence_length == SEQ
    # `num_classes` on a saved Task: its backbone, new heads.
    three = dact_tf.DactTextClassifier.from_preset(preset, num_classes=3)
    assert three.predict(TEXTS[:2], verbose=0)["probabilities"].shape == (2, 3)
    np.testing.assert_allclose(three.backbone.get_weights()[0],
                               trained.backbone.get_weights()[0])


def test_string_pairs(tmp_path):
    keras.utils.set_random_seed(2)
    model = _model(num_classes=3)
    pairs = (TEXTS, TEXTS[::-1])
    labels = [0, 1, 2] * 4
    ds = tf.data.Dataset.from_tensor_slices((pairs, labels)).batch(4)
    model.fit(ds, epochs=1, verbose=0)
    out = model.predict(pairs, verbose=0)
    features = model.preprocessor(x=tuple(tf.constant(v) for v in pairs))
    assert int(tf.reduce_max(features["segment_ids"])) == 1
    np.testing.assert_array_equal(out["predictions"], model(features, full_depth=True)[
        "predictions"])


def test_calibrate_reaches_the_target():
    keras.utils.set_random_seed(3)
    model = _model()
    result = model.calibrate(TEXTS, target_blocks=2.0)
    assert result["mean_layers_executed"] == pytest.approx(2.0, abs=0.5)
    out = model.predict(TEXTS, verbose=0)
    assert np.mean(out["layers_executed"]) == pytest.approx(result["mean_layers_executed"])
    features = model.preprocessor(x=tf.constant(TEXTS))
    np.testing.assert_array_equal(out["predictions"],
                                  model(features, full_depth=True)["predictions"])


def test_calibrate_with_labels_certifies_the_accuracy_it_costs(tmp_path):
    keras.utils.set_random_seed(3)
    model = _model(halting_bias=4.0)
    own = model.predict(TEXTS, verbose=0)["predictions"]  # accuracy 1 before any shift
    free = model.calibrate(TEXTS, 1.0, y=own, max_metric_drop=None)
    assert free["certificate"] is None
    model.encoder.heads.shift_halting_bias(-free["shift"])  # back to the trained model
    model.predict_function = None
    # 12 rows cannot certify a drop of 5 %: the model runs at the safest shift and says so.
    bounded = model.calibrate(TEXTS, 1.0, y=own, max_metric_drop=0.05)
    out = model.predict(TEXTS, verbose=0)
    np.testing.assert_array_equal(out["predictions"], own)  # no answer changed
    assert not bounded["certificate"]["certified"] and bounded["limited"]
    assert bounded["certificate"]["rows"] == 12
    assert bounded["certificate"]["calibration_rows"] == "shared with the selection rows"
    assert np.mean(out["layers_executed"]) == pytest.approx(bounded["mean_layers_executed"])
    assert bounded["mean_layers_executed"] > free["mean_layers_executed"]
    assert model.certificates["compute_target"] == bounded["certificate"]
    # The same through a dataset of (texts, labels), and a certified halting mode.
    again = model.calibrate(tf.data.Dataset.from_tensor_slices((TEXTS, own)).batch(4), 1.0,
                            max_metric_drop=0.05, max_disagreement=0.5)
    assert again["metric"] == 1.0 and again["halting"]["certificate"]["rows"] == 12
    assert set(model.certificates) == {"compute_target", "halting"}
    # The calibrated Task round-trips, certificates and all.
    path = str(tmp_path / "calibrated.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert loaded.certificates == json.loads(json.dumps(model.certificates))
    np.testing.assert_array_equal(loaded.predict(TEXTS, verbose=0)["layers_executed"],
                                  model.predict(TEXTS, verbose=0)["layers_executed"])
    with pytest.raises(ValueError, match="rows"):
        model.calibrate(TEXTS, 1.0, y=own[:3])
    with pytest.raises(ValueError, match="max_disagreement"):
        model.calibrate(TEXTS)


def test_calibrate_with_selection_rows_certifies_a_learned_score_on_the_other_rows():
    keras.utils.set_random_seed(4)
    model = _model(halting_bias=-1.0)
    # Rows of the same kind: the selection rows fit the consistency score, `x` certifies.
    selection, rows = TEXTS * 4, [t + " !" for t in TEXTS] * 4
    result = model.calibrate(rows, max_disagreement=0.5, selection_x=selection)
    certificate = result["halting"]["certificate"]
    assert result["halting"]["knob"] == "halting_threshold"
    assert certificate["fit_rows"] == len(selection) and certificate["rows"] == len(rows)
    assert certificate["calibration_rows"] == "kept apart"
    assert len(model.exit_criterion.consistency_weights) == 5 + model.num_layers
    # What the model now does on `x` is what was counted.
    early = model.predict(rows, verbose=0)
    full = model(model.preprocessor(x=tf.constant(rows)), full_depth=True)
    assert int((early["predictions"] != full["predictions"].numpy()).sum()) == \
        certificate["at_risk"]
    with pytest.raises(ValueError, match="selection_y"):
        model.calibrate(rows, 2.0, y=[1, 0] * 24, selection_x=selection)


def test_calibrate_a_certified_drop_against_a_reference():
    keras.utils.set_random_seed(4)
    model, reference = _model(halting_bias=-1.0), _model()
    selection, rows = TEXTS * 4, [t + " !" for t in TEXTS] * 4
    labels = [1, 0] * (len(rows) // 2)
    result = model.calibrate(rows, y=labels, selection_x=selection, selection_y=labels,
                             reference=reference, max_metric_drop=0.5, certified_drop=True)
    cert = result["certificate"]
    assert cert["knob"] == "halting_bias_shift+halting_threshold"
    assert cert["rows"] == len(rows) and cert["fit_rows"] == len(selection)
    assert model.certificates == {"compute_target": cert}
    # The Task now runs, on `x`, the blocks that were certified.
    early = model.predict(rows, verbose=0)
    assert early["layers_executed"].mean() == pytest.approx(result["mean_layers_executed"])
    with pytest.raises(ValueError, match="or else `certified_drop=True`"):
        model.calibrate(rows, 2.0, y=labels, certified_drop=True)
    with pytest.raises(ValueError, match="needs its bound"):
        model.calibrate(rows, certified_drop=True)


def test_user_mistakes_are_refused():
    with pytest.raises(ValueError, match="num_classes"):
        dact_tf.DactTextClassifier.from_preset("tiny")
    with pytest.raises(ValueError, match="Unknown backbone spec"):
        dact_tf.DactTextClassifier.from_preset("no_such_preset", num_classes=2)
    with pytest.raises(ValueError, match="halting"):
        _model(method="pabee").calibrate(TEXTS, 2.0)
    with pytest.raises(ValueError, match="target_blocks"):
        _model().calibrate(TEXTS, 9.0)
    with pytest.raises(ValueError, match="validation"):
        _model().fit(x=TEXTS[:1], y=LABELS[:1], validation_split=0.5, verbose=0)


def test_fit_refuses_labels_it_would_silently_mistrain_on():
    model = _model()
    for y, error, message in (
            ([0.5] * 12, ValueError, "fractional"),
            ([0, 1, 2] * 4, ValueError, r"integers in \[0, 2\)"),
            ([-1] * 12, ValueError, r"integers in \[0, 2\)"),
            (LABELS[:5], ValueError, "one label per row"),
            (None, ValueError, "needs labels"),
            (["good", "bad"] * 6, ValueError, "not one of the model's label names")):
        with pytest.raises(error, match=message):
            model.fit(x=TEXTS, y=y, verbose=0)
    with pytest.raises(ValueError, match="needs `x`"):
        model.fit(x=None, y=LABELS, verbose=0)
    for bad in (0, 1, 2.5, True):
        with pytest.raises(ValueError, match="num_classes"):
            dact_tf.DactTextClassifier.from_preset("tiny", num_classes=bad)
    # Label names are mapped as the command line maps them.
    named = _model(label_names=["negative", "positive"])
    history = named.fit(x=TEXTS, y=["positive" if v else "negative" for v in LABELS], verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_saved_model_export_serves_text_in_a_fresh_process(trained, tmp_path):
    from dact_tf.export import saved_model

    path = saved_model.export_saved_model(trained, str(tmp_path / "export"))
    expected = trained.predict(TEXTS[:3], verbose=0)["predictions"].tolist()
    script = (
        "import sys, json, tensorflow as tf, tensorflow_text\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "out = m.signatures['serve_text'](text=tf.constant(json.loads(sys.argv[2])))\n"
        "print(json.dumps(out['predictions'].numpy().tolist()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, path, json.dumps(TEXTS[:3])],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


def test_a_pair_model_refuses_single_texts_and_the_other_way_round(tmp_path):
    pairs = (TEXTS, list(reversed(TEXTS)))
    model = _model()
    model.fit(x=pairs, y=LABELS, epochs=1, verbose=0)
    assert model.text_input == "pair"
    out = model.predict(pairs, verbose=0)
    assert out["predictions"].shape == (len(TEXTS),)
    with pytest.raises(ValueError, match=r"fit on \(texts, text_pairs\); got single texts"):
        model.predict(TEXTS, verbose=0)
    with pytest.raises(ValueError, match="got single texts"):
        model.evaluate(tf.data.Dataset.from_tensor_slices((TEXTS, LABELS)).batch(4), verbose=0)
    with pytest.raises(ValueError, match="got single texts"):
        model.calibrate(TEXTS, target_blocks=2.0)
    # The kind is saved with the model.
    path = str(tmp_path / "pairs.keras")
    model.save(path)
    assert keras.models.load_model(path, safe_mode=True).text_input == "pair"
    single = _model()
    single.fit(x=TEXTS, y=LABELS, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="fit on single texts; got \\(texts, text_pairs\\)"):
        single.predict(pairs, verbose=0)
    assert single.predict(TEXTS[:2], verbose=0)["predictions"].shape == (2,)
