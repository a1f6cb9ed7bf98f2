"""Tests of dact_tf.calibration: halting-bias calibration to a compute target."""

import numpy as np
import pytest

from dact_tf import analysis
from dact_tf import calibration
from dact_tf import train_lib
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
    result = calibration.calibrate_halting_bias(model, data, target)
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
