"""The early-exit baselines (PABEE, DeeBERT, static) on DACT's heads and loop."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dact_tf import exits
from dact_tf.config import ModelConfig
from dact_tf.models.dact_classifier import DactClassifier
from dact_tf.ops import exit_ops
from tests import testing

NUM_LAYERS = 4


#: The paper's heads (first token, no confidence input, no extra losses).
PAPER = ModelConfig.paper()


def _model(method, seed=0, task="classification", num_classes=3, **kwargs):
    return DactClassifier(
        testing.tiny_backbone(num_layers=NUM_LAYERS, seed=seed),
        num_classes=num_classes,
        task=task,
        output_range=(0.0, 5.0) if task == "regression" else None,
        method=method,
        dropout=0.0,
        config=kwargs.pop("config", PAPER),
        **kwargs,
    )


def _numpy_entropy(p):
    p = np.asarray(p, np.float64)
    return -(p * np.log(np.maximum(p, 1e-12))).sum(-1)


def _numpy_exits(method, answers, patience=None, threshold=None, tolerance=None,
                 regression=False):
    """Reference exit block (1-based) and answer per example, from `[N, b, C]` answers."""
    n_layers, batch = answers.shape[:2]
    exits = np.full(batch, n_layers)
    for i in range(batch):
        previous, count = None, 0
        for n in range(n_layers):
            y = answers[n, i]
            if method == "deebert" and _numpy_entropy(y) < threshold:
                exits[i] = n + 1
                break
            if method == "pabee":
                pred = y[0] if regression else int(np.argmax(y))
                same = previous is not None and (
                    abs(pred - previous) < tolerance if regression else pred == previous)
                count = count + 1 if same else 0
                previous = pred
                if count >= patience:
                    exits[i] = n + 1
                    break
    chosen = answers[exits - 1, np.arange(batch)]
    return exits, chosen


def test_entropy_and_pabee_ops_against_numpy():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=16).astype("float32")
    np.testing.assert_allclose(exit_ops.entropy(p).numpy(), _numpy_entropy(p), rtol=1e-5)
    np.testing.assert_array_equal(
        exit_ops.deebert_exits(p, 1.0).numpy(), _numpy_entropy(p) < 1.0)
    # Predictions 0, 0, 1, 1, 1 -> counts 0, 1, 0, 1, 2.
    seq = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9], [0.4, 0.6]]
    previous, count, counts = tf.constant([-1.0]), tf.constant([0.0]), []
    for y in seq:
        previous, count = exit_ops.pabee_update(tf.constant([y]), previous, count)
        counts.append(float(count[0]))
    assert counts == [0.0, 1.0, 0.0, 1.0, 2.0]
    assert exit_ops.pabee_exits(tf.constant([1.0, 2.0]), 2).numpy().tolist() == [False, True]


@pytest.mark.parametrize("method, knob", [
    ("pabee", {"patience": 1}),
    ("pabee", {"patience": 2}),
    ("deebert", None),
    ("static", {}),
])
def test_early_exit_loop_matches_numpy_reference(method, knob):
    model = _model(method, seed=1, halting_bias=0.0, num_classes=2)
    feats = testing.random_features(64, seq_len=12, seed=7)
    trace = model.trace(feats)
    answers = trace["answers"].numpy()
    if knob is None:  # DeeBERT: a threshold that splits the examples
        ent = _numpy_entropy(answers)
        knob = {"entropy_threshold": float(np.quantile(ent, 0.3))}
    model.configure_exit(**knob)
    out = model.predict(feats, batch_size=32, verbose=0)
    exits, chosen = _numpy_exits(method, answers, patience=knob.get("patience"),
                                 threshold=knob.get("entropy_threshold"))
    np.testing.assert_array_equal(out["layers_executed"], exits)
    np.testing.assert_allclose(out["probabilities"], chosen, atol=1e-5)
    np.testing.assert_array_equal(out["predictions"], chosen.argmax(-1))
    np.testing.assert_array_equal(out["ponder_cost"], 0.0)
    # The trace's exits are the loop's.
    np.testing.assert_array_equal(model.trace(feats)["exit_layers"].numpy(), exits)
    if method == "static":
        assert (exits == NUM_LAYERS).all()
    else:
        assert len(set(exits.tolist())) > 1, "the exits should vary in this test"
    # Full depth answers with the last block's head.
    full = model(feats, full_depth=True)
    np.testing.assert_allclose(full["probabilities"], answers[-1], atol=1e-6)


def test_pabee_regression_uses_the_tolerance():
    model = _model("pabee", task="regression", regression_tolerance=0.2, patience=1)
    feats = testing.random_features(48, seed=2)
    answers = model.trace(feats)["answers"].numpy()
    out = model.predict(feats, batch_size=16, verbose=0)
    exits, chosen = _numpy_exits("pabee", answers, patience=1, tolerance=0.2,
                                 regression=True)
    np.testing.assert_array_equal(out["layers_executed"], exits)
    np.testing.assert_allclose(out["scores"], chosen[:, 0], atol=1e-5)


def test_static_truncation_keeps_the_first_blocks():
    full = _model("dact", seed=4)
    truncated = _model("static", seed=4, num_layers=2)
    assert truncated.num_layers == 2
    feats = testing.random_features(8, seed=1)
    # The truncated model's blocks are the backbone's first two.
    assert truncated.encoder.blocks == list(truncated.backbone.transformer_layers[:2])
    out = truncated.predict(feats, verbose=0)
    assert (out["layers_executed"] == 2).all()
    trainable = {v.path for v in truncated.trainable_variables}
    assert not any("transformer_layer_3" in p for p in trainable)
    assert full.num_layers == NUM_LAYERS


def _fit_once(model, feats, labels, epochs=1):
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(feats, labels, batch_size=16, epochs=epochs, verbose=0, shuffle=False)


def test_pabee_loss_is_the_index_weighted_mean_of_block_losses():
    model = _model("pabee", num_classes=2)
    model.compile(optimizer="sgd")
    feats, labels = testing.synthetic_task(16, seed=1)
    y_pred = model(feats, training=True)
    loss = float(model.compute_loss(x=feats, y=labels, y_pred=y_pred))
    answers = y_pred["block_answers"].numpy()
    per_block = [-np.log(a[np.arange(16), labels]).mean() for a in answers]
    weights = np.arange(1, NUM_LAYERS + 1)
    assert loss == pytest.approx((weights * per_block).sum() / weights.sum(), rel=1e-4)


def test_deebert_second_stage_trains_only_the_exit_heads():
    model = _model("deebert", num_classes=2)
    feats, labels = testing.synthetic_task(64, seed=2)
    _fit_once(model, feats, labels)
    backbone_before = [w.copy() for w in model.backbone.get_weights()]
    heads = model.encoder.heads
    last_before = heads.answer_kernel.numpy()[-1].copy()
    inner_before = heads.answer_kernel.numpy()[:-1].copy()
    model.start_second_stage()
    _fit_once(model, feats, labels)
    for a, b in zip(backbone_before, model.backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(heads.answer_kernel.numpy()[-1], last_before)
    assert np.abs(heads.answer_kernel.numpy()[:-1] - inner_before).max() > 1e-4
    with pytest.raises(ValueError, match="two stages"):
        _model("pabee").start_second_stage()


@pytest.mark.parametrize("method, knobs", [
    ("pabee", {"patience": 3}), ("deebert", {"entropy_threshold": 0.5}), ("static", {})])
def test_keras_round_trip_keeps_the_method(method, knobs, tmp_path):
    model = _model(method, num_layers=3, **knobs)
    feats = testing.random_features(16, seed=9)
    before = model.predict(feats, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert loaded.method == method and loaded.num_layers == 3
    assert loaded.exit_criterion == exits.get(method, **knobs)
    after = loaded.predict(feats, verbose=0)
    for key in before:
        np.testing.assert_allclose(after[key], before[key], atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "early"}, "`method` must be one of"),
    ({"method": "deebert", "task": "regression"}, "classification only"),
    ({"method": "deebert", "shared_heads": True}, "per-block heads"),
    ({"method": "pabee", "patience": 0}, "`patience` must be an integer >= 1"),
    ({"method": "deebert", "entropy_threshold": -0.1}, "`entropy_threshold` must be >= 0"),
    ({"method": "static", "num_layers": 9}, r"`num_layers` must be an integer in \[1, 4\]"),
])
def test_bad_arguments_are_rejected(kwargs, message):
    kwargs = dict(kwargs)
    method = kwargs.pop("method")
    task = kwargs.pop("task", "classification")
    with pytest.raises(ValueError, match=message):
        _model(method, task=task, **kwargs)


def test_configure_exit_rejects_bad_values_and_other_methods_knobs():
    pabee, deebert, dact = _model("pabee"), _model("deebert"), _model("dact")
    with pytest.raises(ValueError, match="`patience` must be an integer >= 1"):
        pabee.configure_exit(patience=0)
    with pytest.raises(ValueError, match="`entropy_threshold` must be >= 0"):
        deebert.configure_exit(entropy_threshold=-1)
    with pytest.raises(ValueError, match="`halting_rule` must be one of"):
        dact.configure_exit(halting_rule="sometimes")
    with pytest.raises(ValueError, match="`halting_epsilon` must be in"):
        dact.configure_exit(halting_epsilon=1.5)
    # A knob of another method is refused, naming its owner, not ignored.
    with pytest.raises(ValueError, match="`entropy_threshold` is a setting of deebert; "
                                         "this model's method is 'pabee'"):
        pabee.configure_exit(entropy_threshold=0.1)
    with pytest.raises(ValueError, match="`patience` is a setting of pabee"):
        _model("dact", patience=3)
    with pytest.raises(ValueError, match="'static', which has none"):
        _model("static").configure_exit(halting_rule="paper")
    assert pabee.exit_criterion.patience == 2  # unchanged by the refusals


def test_models_saved_with_flat_exit_settings_still_load():
    # Configs before exit methods were objects: `method` a name, and every
    # method's knobs next to it.
    model = _model("pabee", patience=3)
    config = model.get_config()
    config.update(method="pabee", patience=3, entropy_threshold=0.3, halting_rule="tight",
                  halting_margin=1e-5, halting_epsilon=0.0, halting_slack=0.0)
    loaded = DactClassifier.from_config(config)
    assert loaded.exit_criterion == exits.Pabee(patience=3)
    config.update(method="dact")
    assert DactClassifier.from_config(config).exit_criterion == exits.Dact()


@exits.register
class _MaxProbability(exits.ExitCriterion):
    """A fifth method, as a user would add it: one class, registered.

    Exits once the block's own answer gives its class a probability above
    `threshold`; answers with that block's answer; trains every head on the
    mean of the block losses.
    """

    name = "test_max_probability"
    settings = ("threshold",)

    def __init__(self, threshold=0.6):
        self.threshold = float(threshold)

    def step(self, y, h, answer, state, remaining, context):
        return y, state, tf.reduce_max(y, axis=-1) > self.threshold

    def loss(self, parts):
        return tf.reduce_mean(parts.block_losses())

    def sweep(self, num_layers):
        return [("threshold", t, _MaxProbability(t), 0.0) for t in (0.4, 0.5, 0.6, 0.9)]


def test_a_new_method_is_one_registered_class(tmp_path):
    from dact_tf.evaluation import analysis

    assert "test_max_probability" in exits.names()
    model = _model("test_max_probability", seed=3, halting_bias=0.0, num_classes=2)
    feats = testing.random_features(48, seq_len=12, seed=5)
    answers = model.trace(feats)["answers"].numpy()
    threshold = float(np.quantile(answers.max(-1), 0.6))
    model.configure_exit(threshold=threshold)
    out = model.predict(feats, batch_size=16, verbose=0)
    above = answers.max(-1) > threshold  # [N, batch]
    expected = np.where(above.any(0), above.argmax(0) + 1, NUM_LAYERS)
    np.testing.assert_array_equal(out["layers_executed"], expected)
    np.testing.assert_allclose(out["probabilities"],
                               answers[expected - 1, np.arange(48)], atol=1e-5)
    assert len(set(expected.tolist())) > 1
    # Its loss trains every head; its sweep drives the exit curve.
    labels = np.arange(48) % 2
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    y_pred = model(feats, training=True)
    expected_loss = np.mean([
        keras.losses.sparse_categorical_crossentropy(labels, a).numpy().mean()
        for a in y_pred["block_answers"].numpy()])
    loss = model.compute_loss(x=feats, y=labels, y_pred=y_pred)
    assert float(loss) == pytest.approx(expected_loss, rel=1e-4)
    trace, _ = analysis.trace_dataset(
        model, tf.data.Dataset.from_tensor_slices((feats, labels)).batch(16))
    curve = analysis.exit_curve(model, trace, labels, "classification")
    assert curve and {p["knob"] for p in curve} == {"threshold"}
    # It round-trips through a .keras file like the built-in methods.
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert loaded.exit_criterion == exits.get("test_max_probability", threshold=threshold)
    np.testing.assert_array_equal(loaded.predict(feats, verbose=0)["layers_executed"],
                                  expected)


@exits.register
class _RisingConfidence(exits.ExitCriterion):
    """A sixth method with three named state columns and a loss term of its own.

    Exits once the top probability of the block's own answer rose `rises`
    blocks in a row. State: the previous top probability, the rises so far
    and the blocks seen (reported as its "ponder cost", so the third column
    is visible in the outputs). Loss: the last block's, plus
    `entropy_weight` times that answer's mean entropy.
    """

    name = "test_rising_confidence"
    settings = ("rises", "entropy_weight")
    state_fields = ("previous", "rises", "blocks")

    def __init__(self, rises=2, entropy_weight=0.1):
        self.rises, self.entropy_weight = int(rises), float(entropy_weight)

    def initial_state(self, batch_size, context):
        previous, rises, blocks = super().initial_state(batch_size, context)
        return previous - 1.0, rises, blocks

    def step(self, y, h, answer, state, remaining, context):
        previous, rises, blocks = state
        top = tf.reduce_max(y, axis=-1)
        rises = tf.where(top > previous, rises + 1.0, tf.zeros_like(rises))
        return y, (top, rises, blocks + 1.0), rises >= self.rises

    def ponder_cost(self, state, answer):
        return state[2]

    def loss(self, parts):
        last = tf.cast(parts.block_answers[-1], tf.float32)
        entropy = -tf.reduce_sum(last * tf.math.log(last + 1e-7), axis=-1)
        return parts.main + self.entropy_weight * tf.reduce_mean(entropy)


def test_a_method_with_three_state_fields_and_its_own_loss_is_one_class():
    model = _model("test_rising_confidence", seed=2, halting_bias=0.0, num_classes=3, rises=2)
    feats = testing.random_features(40, seq_len=12, seed=6)
    answers = model.trace(feats)["answers"].numpy()  # [N, batch, C]
    # NumPy replay of the rule: the first block after which the top
    # probability rose twice in a row (block 1 always rises from -1).
    top = answers.max(-1)
    rose = top > np.concatenate([np.full((1, 40), -1.0), top[:-1]])
    streak = np.zeros_like(top)
    for n in range(NUM_LAYERS):
        streak[n] = np.where(rose[n], (streak[n - 1] if n else 0) + 1, 0)
    stops = streak >= 2
    expected = np.where(stops.any(0), stops.argmax(0) + 1, NUM_LAYERS)
    for batch_size in (16, 1):  # the compacting loop, and the chain of batch 1
        out = model.predict(feats, batch_size=batch_size, verbose=0)
        np.testing.assert_array_equal(out["layers_executed"], expected)
        # The third state column travels through the loop and its compaction.
        np.testing.assert_array_equal(out["ponder_cost"], expected.astype(np.float32))
        np.testing.assert_allclose(out["probabilities"],
                                   answers[expected - 1, np.arange(40)], atol=1e-5)
    assert len(set(expected.tolist())) > 1
    # Its loss term is added to the last block's loss.
    labels = np.arange(40) % 3
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    y_pred = model(feats, training=True)
    last = y_pred["block_answers"].numpy()[-1]
    entropy = -(last * np.log(last + 1e-7)).sum(-1).mean()
    ce = keras.losses.sparse_categorical_crossentropy(labels, last).numpy().mean()
    loss = model.compute_loss(x=feats, y=labels, y_pred=y_pred)
    assert float(loss) == pytest.approx(ce + 0.1 * entropy, rel=1e-4)


def test_dact_relaxed_epsilon_exits_at_the_budget_threshold():
    model = _model("dact", halting_bias=0.0)
    feats = testing.random_features(32, seed=4)
    budgets = model.trace(feats)["budgets"].numpy()  # [N, batch], decreasing
    model.configure_exit(halting_rule="relaxed", halting_epsilon=0.3)
    out = model.predict(feats, verbose=0)
    expected = np.where((budgets < 0.3).any(0), (budgets < 0.3).argmax(0) + 1, NUM_LAYERS)
    np.testing.assert_array_equal(out["layers_executed"], expected)
    assert len(set(expected.tolist())) > 1


def test_criterion_objects_are_copied_and_refusals_change_nothing():
    shared = exits.Pabee(patience=2)
    first, second = _model(shared), _model(shared, seed=1)
    first.configure_exit(patience=4)
    assert (first.exit_criterion.patience, second.exit_criterion.patience, shared.patience) \
        == (4, 2, 2)
    dact = _model("dact")
    with pytest.raises(ValueError, match="halting_epsilon"):
        dact.configure_exit(halting_rule="relaxed", halting_epsilon=2.0)
    assert dact.exit_criterion == exits.Dact()  # the valid halting_rule was not applied
