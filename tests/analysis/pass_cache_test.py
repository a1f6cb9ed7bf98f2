"""Tests of benchmarks/pass_cache.py: a cached pass returns what the pass computes, and
nothing that changes the answers (a halting shift, a pass-through, another exit setting,
another split) reads another model's entry."""

import numpy as np
import pytest

from benchmarks import pass_cache
from dact_tf.calibration import certify
from dact_tf.evaluation import analysis
from dact_tf.evaluation import scoring
from dact_tf.models.dact_classifier import DactClassifier
from tests.testing import dataset
from tests.testing import synthetic_task
from tests.testing import tiny_backbone


def _model():
    return DactClassifier(tiny_backbone(seed=5), num_classes=2, dropout=0.0, halting_bias=0.5)


def _equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_cached_passes_equal_the_passes_and_change_with_the_model(tmp_path):
    feats, labels = synthetic_task(48, seed=7)
    rows, other = dataset(feats, labels, batch_size=16), dataset(feats, labels, batch_size=8)
    model = _model()
    trace, _ = analysis.trace_dataset(model, rows)
    full, _ = scoring.predict_dataset(model, rows, full_depth=True)
    with pass_cache.PassCache(str(tmp_path), {"calibration": rows}) as cache:
        for _ in range(2):  # computed, then read back from disk
            got, got_labels = analysis.trace_dataset(model, rows)
            _equal(got, trace)
            np.testing.assert_array_equal(got_labels, labels)
            _equal(scoring.predict_dataset(model, rows, full_depth=True)[0], full)
        # Through the calibration code, which calls the module functions.
        got, _ = certify.reference_predictions(model, rows)
        np.testing.assert_array_equal(got, full["predictions"])
        assert (cache.hits, cache.misses) == (3, 2)
        # Not cached: the early-exit loop, and rows not named.
        scoring.predict_dataset(model, rows)
        analysis.trace_dataset(model, other)
        assert (cache.hits, cache.misses) == (3, 2)
        # A shifted halting bias or a pass-through is another model: traced anew.
        model.encoder.heads.shift_halting_bias(-3.0)
        shifted, _ = analysis.trace_dataset(model, rows)
        assert cache.misses == 3
        assert not np.array_equal(shifted["exit_layers"], trace["exit_layers"])
        model.encoder.heads.shift_halting_bias(3.0)
        model.encoder.heads.pass_budget_through(1)
        analysis.trace_dataset(model, rows)
        assert cache.misses == 4
        model.encoder.heads.pass_budget_through(0)
        # Another exit setting changes a trace's key (its exits follow the rule), not a
        # full-depth pass's.
        model.configure_exit(halting_rule="never")
        analysis.trace_dataset(model, rows)
        assert cache.misses == 5
        _equal(scoring.predict_dataset(model, rows, full_depth=True)[0], full)
        assert (cache.hits, cache.misses) == (4, 5)
    # Outside the block the library's own functions are back.
    assert analysis.trace_dataset.__module__ == "dact_tf.evaluation.analysis"
    assert scoring.predict_dataset.__module__ == "dact_tf.evaluation.scoring"


@pytest.mark.parametrize("method,settings", [
    ("dact", [{"halting_rule": "tight"}, {"halting_rule": "relaxed", "halting_epsilon": 0.4}]),
    ("pabee", [{"patience": 1}, {"patience": 3}]),
    ("deebert", [{"entropy_threshold": 0.0}, {"entropy_threshold": 0.6}]),
])
def test_a_full_depth_pass_does_not_depend_on_the_exit_settings(method, settings):
    # What lets the cache share one full-depth pass between a model's calibrations.
    feats, labels = synthetic_task(40, seed=8)
    rows = dataset(feats, labels, batch_size=16)
    model = DactClassifier(tiny_backbone(seed=6), num_classes=2, dropout=0.0, method=method)
    passes, keys, trace_keys = [], set(), set()
    for setting in settings:
        model.configure_exit(**setting)
        passes.append(scoring.predict_dataset(model, rows, full_depth=True)[0])
        keys.add(pass_cache.model_fingerprint(model, exit_settings=False))
        trace_keys.add(pass_cache.model_fingerprint(model))
    _equal(*passes)
    assert len(keys) == 1 and len(trace_keys) == 2
