"""Tests of dact_tf.calibration.halting_bias: halting-bias calibration to a compute target."""

import numpy as np
import pytest

from dact_tf.evaluation import analysis
from dact_tf.calibration import halting_bias as calibration
from dact_tf.training import train_lib
from dact_tf.models.dact_classifier import DactClassifier
from tests.testing import dataset
from tests.testing import synthetic_task
from tests.testing import tiny_backbone


@pytest.mark.parametrize("target", [1.5, 2.0, 3.0])
def test_calibration_lands_on_the_target_and_keeps_the_guarantee(target):
    feats, labels = synthetic_task(96, seed=2)
    model = DactClassifier(tiny_backbone(seed=2), num_classes=3, tau=0.0, dropout=0.0,
                           halting_bias=1.0)
    data = dataset(feats, labels % 3, batch_size=32)
    before = train_lib.evaluate(model, data, "classification")["mean_layers_executed"]
    result = calibration.calibrate_halting_bias(model, data, target, max_metric_drop=None)
    assert not result["limited"]
    assert result["before"] == pytest.approx(before)
    # What the early-exit loop really runs after the shift.
    after = train_lib.evaluate(model, data, "classification")
    assert abs(after["mean_layers_executed"] - target) <= 0.5
    assert after["mean_layers_executed"] == pytest.approx(result["mean_layers_executed"], abs=0.02)
    early, _ = train_lib.predict_dataset(model, data)
    full, _ = train_lib.predict_dataset(model, data, full_depth=True)
    np.testing.assert_array_equal(early["predictions"], full["predictions"])


def test_simulated_exits_equal_the_loop_for_any_shift():
    feats, labels = synthetic_task(64, seed=5)
    model = DactClassifier(tiny_backbone(seed=5), num_classes=2, dropout=0.0, halting_bias=0.5)
    data = dataset(feats, labels)
    trace, _ = analysis.trace_dataset(model, data)
    answers, halting = trace["answers"], trace["halting"]
    logits = np.log(halting) - np.log1p(-halting)
    for shift in (-3.0, 0.0, 2.0):
        simulated = calibration.exit_layers_for_shift(model, answers, logits, shift)
        model.encoder.heads.shift_halting_bias(shift)
        real, _ = train_lib.predict_dataset(model, data)
        model.encoder.heads.shift_halting_bias(-shift)
        np.testing.assert_array_equal(simulated, real["layers_executed"])


def test_bad_targets_and_methods_are_refused():
    feats, labels = synthetic_task(8, seed=1)
    data = dataset(feats, labels)
    model = DactClassifier(tiny_backbone(), num_classes=2)
    with pytest.raises(ValueError, match=r"target_blocks.*\[1, 4\]"):
        calibration.calibrate_halting_bias(model, data, 5.0)
    static = DactClassifier(tiny_backbone(), num_classes=2, method="static")
    with pytest.raises(ValueError, match="method='static'"):
        calibration.calibrate_halting_bias(static, data, 2.0)


def _own_answers(model, feats, regression):
    """Labels equal to the model's own (full-depth) answers: its metric is perfect
    before any shift, and every answer a shift changes costs some of it."""
    out = model(feats, full_depth=True)
    return out["scores"].numpy() if regression else out["predictions"].numpy()


@pytest.mark.parametrize("regression, task, bound", [(False, "classification", 0.0),
                                                     (True, "regression", 0.05)])
def test_the_metric_bound_stops_the_shift_short_of_the_target(regression, task, bound):
    feats, _ = synthetic_task(96, seed=4)
    kwargs = dict(task="regression", output_range=(0.0, 5.0)) if regression else dict(
        num_classes=3)
    model = DactClassifier(tiny_backbone(seed=4), tau=0.0, dropout=0.0, halting_bias=4.0,
                           **kwargs)
    data = dataset(feats, _own_answers(model, feats, regression))
    free = calibration.calibrate_halting_bias(model, data, 1.0, max_metric_drop=None,
                                              apply=False)
    assert free["mean_layers_executed"] <= 1.5 and not free["limited"]
    assert "metric" not in free  # no bound, no metric computed
    result = calibration.calibrate_halting_bias(model, data, 1.0, max_metric_drop=bound,
                                                metric_task=task)
    metric = "pearson" if regression else "accuracy"
    assert result["limited"] and result["metric_name"] == metric
    assert result["metric_before"] == pytest.approx(1.0)
    # The model as shifted: what it really answers and runs on these rows.
    after = train_lib.evaluate(model, data, task)
    assert after[metric] >= 1.0 - bound - 1e-6
    assert after[metric] == pytest.approx(result["metric"], abs=1e-5)
    assert after["mean_layers_executed"] == pytest.approx(result["mean_layers_executed"])
    assert after["mean_layers_executed"] > free["mean_layers_executed"]
    early, _ = train_lib.predict_dataset(model, data)
    full, _ = train_lib.predict_dataset(model, data, full_depth=True)
    key = "scores" if regression else "predictions"
    np.testing.assert_allclose(early[key], full[key], atol=1e-5)


def test_a_looser_bound_comes_at_least_as_close_to_the_target():
    feats, _ = synthetic_task(96, seed=6)
    model = DactClassifier(tiny_backbone(seed=6), num_classes=3, tau=0.0, dropout=0.0,
                           halting_bias=4.0)
    data = dataset(feats, _own_answers(model, feats, False))
    distances = []
    for bound in (0.0, 0.05, 0.2, 1.0):
        result = calibration.calibrate_halting_bias(model, data, 1.0, max_metric_drop=bound,
                                                    apply=False)
        assert result["metric"] >= result["metric_before"] - bound - 1e-9
        distances.append(abs(result["mean_layers_executed"] - 1.0))
    assert distances == sorted(distances, reverse=True)
    assert distances[-1] <= 0.5  # a bound of 1 (all of accuracy) is no bound


def test_without_labels_there_is_no_bound():
    feats, labels = synthetic_task(64, seed=4)
    model = DactClassifier(tiny_backbone(seed=4), num_classes=2, tau=0.0, halting_bias=4.0)
    features_only = dataset(feats, labels).map(lambda x, y: x)
    result = calibration.calibrate_halting_bias(model, features_only, 1.0, apply=False)
    assert not result["limited"] and "metric" not in result
    with pytest.raises(ValueError, match="max_metric_drop"):
        calibration.calibrate_halting_bias(model, features_only, 1.0, max_metric_drop=-0.1)


def test_passing_the_budget_through_drops_the_first_heads_and_keeps_the_guarantee():
    feats, labels = synthetic_task(64, seed=7)
    model = DactClassifier(tiny_backbone(seed=7), num_classes=2, tau=0.0, dropout=0.0,
                           halting_bias=-1.0)
    data = dataset(feats, labels)
    heads = model.encoder.heads
    trained = heads.halting_bias_weight.numpy().copy()
    assert heads.passed_blocks == 0
    heads.pass_budget_through(2)
    assert heads.passed_blocks == 2
    trace = model.trace(feats)
    np.testing.assert_array_equal(trace["halting"][:2], 1.0)
    np.testing.assert_array_equal(trace["budgets"][:2], 1.0)
    # a_3 is block 3's own answer: blocks 1 and 2 keep no weight.
    np.testing.assert_allclose(trace["accumulated"][2], trace["answers"][2], atol=1e-6)
    early, _ = train_lib.predict_dataset(model, data)
    full, _ = train_lib.predict_dataset(model, data, full_depth=True)
    assert early["layers_executed"].min() >= 3
    np.testing.assert_array_equal(early["predictions"], full["predictions"])
    heads.pass_budget_through(0)
    np.testing.assert_array_equal(heads.halting_bias_weight.numpy(), trained)  # bit for bit
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        heads.pass_budget_through(4)
    shared = DactClassifier(tiny_backbone(), num_classes=2, shared_heads=True)
    shared(feats)
    with pytest.raises(ValueError, match="Shared heads"):
        shared.encoder.heads.pass_budget_through(1)


def test_useless_leading_blocks_counts_heads_below_half_the_best_gain():
    model = DactClassifier(tiny_backbone(), num_classes=2)
    labels = np.array([0, 0, 0, 1, 1, 0, 1, 0])
    truth = np.eye(2)[labels]
    constant = np.tile([0.9, 0.1], (8, 1))
    half = truth.copy()
    half[3] = half[4] = [1.0, 0.0]  # two of the three positives missed
    answers = np.stack([constant, half, truth, truth]).astype("float32")
    # Gains over always answering 0 (accuracy 5/8): 0, 1/8, 3/8, 3/8.
    assert calibration.useless_leading_blocks(model, answers, labels, "classification") == 2
    assert calibration.useless_leading_blocks(model, answers[2:], labels, "classification") == 0
    # No head above a constant answer: nothing to pass through.
    flat = np.stack([constant] * 3).astype("float32")
    assert calibration.useless_leading_blocks(model, flat, labels, "classification") == 0


def test_calibration_passes_useless_first_blocks_through_and_undoes_it():
    feats, labels = synthetic_task(96, seed=8)
    model = DactClassifier(tiny_backbone(seed=8), num_classes=2, tau=0.0, dropout=0.0,
                           halting_bias=0.0)
    data = dataset(feats, labels)
    heads = model.encoder.heads
    trained = heads.halting_bias_weight.numpy().copy()
    result = calibration.calibrate_halting_bias(model, data, 3.0, max_metric_drop=None,
                                                pass_through=2)
    assert result["pass_through"] == 2 and heads.passed_blocks == 2
    after = train_lib.evaluate(model, data, "classification")
    assert after["mean_layers_executed"] >= 3.0
    assert after["mean_layers_executed"] == pytest.approx(result["mean_layers_executed"], abs=0.02)
    early, _ = train_lib.predict_dataset(model, data)
    full, _ = train_lib.predict_dataset(model, data, full_depth=True)
    np.testing.assert_array_equal(early["predictions"], full["predictions"])
    # A later calibration's reference is the model as it is now.
    check = calibration.calibrate_halting_bias(model, data, 3.0, max_metric_drop=0.0,
                                               pass_through=2, apply=False)
    assert check["before"] == pytest.approx(after["mean_layers_executed"])
    assert check["metric_before"] == pytest.approx(after["accuracy"])
    assert check["metric"] >= check["metric_before"] and check["pass_through"] == 2
    # Re-calibrating traces the halting values without the pass-through.
    again = calibration.calibrate_halting_bias(model, data, 3.0, max_metric_drop=None,
                                               pass_through=0, apply=False)
    assert again["pass_through"] == 0 and heads.passed_blocks == 2  # not applied
    calibration.calibrate_halting_bias(model, data, 3.0, max_metric_drop=None, pass_through=0)
    assert heads.passed_blocks == 0
    # Shifts add up; the pass-through is gone.
    np.testing.assert_allclose(heads.halting_bias_weight.numpy() - again["shift"]
                               - result["shift"], trained, atol=1e-6)
    # Without labels "auto" passes nothing; a pass-through above the target is refused.
    features_only = data.map(lambda x, y: x)
    assert calibration.calibrate_halting_bias(model, features_only, 3.0,
                                              apply=False)["pass_through"] == 0
    with pytest.raises(ValueError, match=r"pass_through.*\[0, 3\]"):
        calibration.calibrate_halting_bias(model, data, 2.0, pass_through=4)
    # Below the pass-through's reach, the target is not met and says so.
    short = calibration.calibrate_halting_bias(model, data, 2.0, max_metric_drop=None,
                                               pass_through=2, apply=False)
    assert short["limited"] and short["mean_layers_executed"] >= 3.0


def test_a_warm_start_from_a_calibrated_model_trains_its_halting_units(tmp_path):
    from dact_tf.models import model_dir as model_dir_lib

    feats, _ = synthetic_task(8, seed=9)
    source = DactClassifier(tiny_backbone(seed=9), num_classes=2)
    source(feats)
    source.encoder.heads.pass_budget_through(2)
    path = str(tmp_path / "source.weights.h5")
    source.save_weights(path)
    model = DactClassifier(tiny_backbone(seed=1), num_classes=2)
    model(feats)
    model_dir_lib.warm_start(model, path)
    # The pass-through (no gradient through h = 1) is not carried into training.
    assert model.encoder.heads.passed_blocks == 0
    np.testing.assert_array_equal(model.encoder.heads.halting_bias_weight.numpy(),
                                  source.encoder.heads.halting_bias_weight.numpy())


def test_a_calibration_file_replaces_the_calibration_rows_and_bad_ones_are_refused(tmp_path):
    from dact_tf import config
    from dact_tf.data import builtin_sst2_dir
    from dact_tf.data import tasks

    good = tmp_path / "served.tsv"
    good.write_text("sentence\tlabel\na fine film\t1\na dull one\t0\nsome plot\t1\n")
    data_config = config.DataConfig(task="sst2", data_dir=builtin_sst2_dir(),
                                    max_train_examples=100, calibration_file=str(good))
    # Every held-out row selects; the file's three rows calibrate.
    train, held = tasks.dataset_sizes(data_config)
    assert (train, held) == (80, 20) and tasks.calibration_rows(held, data_config) == 0
    examples = tasks.calibration_examples(data_config)
    assert list(examples.texts) == ["a fine film", "a dull one", "some plot"]
    assert list(examples.labels) == [1, 0, 1]
    assert tasks.calibration_source(data_config).startswith("from served.tsv (sha256 ")
    assert tasks.calibration_source(config.DataConfig()) is None

    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\na fine film\tseven\n")
    cases = ((dict(calibration_file=str(bad)), "bad.tsv:2"),
             (dict(calibration_file=str(tmp_path / "absent.tsv")), "no file at"),
             (dict(calibration_file=str(good), holdout_fraction=0.0), "--holdout_fraction > 0"))
    model_config, train_config = config.recipe("default")
    for change, message in cases:
        model_dir = tmp_path / "model"
        bad_config = config.DataConfig(task="sst2", data_dir=builtin_sst2_dir(), **change)
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            train_lib.train(str(model_dir), bad_config, model_config, train_config)
        assert not model_dir.exists()  # refused before any work
