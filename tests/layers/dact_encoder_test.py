"""Tests of DactEncoder: the guarantee, the loop, compaction, config."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from dact_tf.config import ModelConfig
from dact_tf.layers import DactEncoder
from tests.testing import numpy_dact
from tests.testing import run_layer_test

HIDDEN, SEQ, LAYERS = 16, 8, 5


PAPER = ModelConfig.paper(dropout=0.0)


def make_encoder(seed=0, num_layers=LAYERS, **kwargs):
    keras.utils.set_random_seed(seed)
    blocks = [
        keras_hub.layers.TransformerEncoder(2 * HIDDEN, 2, dropout=0.0)
        for _ in range(num_layers)
    ]
    kwargs.setdefault("num_outputs", 3)
    # Random heads with this bias exit all over the stack.
    kwargs.setdefault("halting_bias", -0.5)
    # The paper's heads (first token, no confidence input), no dropout.
    kwargs.setdefault("config", PAPER)
    encoder = DactEncoder(blocks, **kwargs)
    encoder.build((None, None, HIDDEN))
    return encoder


def random_inputs(batch, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, SEQ, HIDDEN)).astype("float32") * 2
    lengths = rng.integers(1, SEQ + 1, size=batch)
    mask = np.arange(SEQ)[None, :] < lengths[:, None]
    return tf.constant(x), tf.constant(mask)


def compiled(encoder, **call_kwargs):
    return tf.function(
        lambda x, m: encoder(x, padding_mask=m, **call_kwargs),
        reduce_retracing=True,
    )


@pytest.mark.parametrize("seed, kwargs", [
    (0, {}), (1, {}), (2, {}),
    # Halting units that also read their answer's confidence.
    (3, {"halting_confidence": -2.0}),
])
def test_guarantee_early_exit_equals_full_depth(seed, kwargs):
    encoder = make_encoder(seed, **kwargs)
    early, full = compiled(encoder), compiled(encoder, full_depth=True)
    x, mask = random_inputs(2048, seed)
    ref = full(x, mask)
    layers = []
    # Batch 32: every prediction equals the full-depth one.
    for start in range(0, 2048, 32):
        out = early(x[start:start + 32], mask[start:start + 32])
        np.testing.assert_array_equal(
            out["predictions"], ref["predictions"][start:start + 32]
        )
        layers.append(out["layers_executed"].numpy())
    layers = np.concatenate(layers)
    # The test is meaningful: many examples exit early, some run to the end.
    assert (layers < LAYERS).mean() > 0.3
    assert (layers == LAYERS).any()
    # Batch 1.
    for i in range(400):
        out = early(x[i:i + 1], mask[i:i + 1])
        assert out["predictions"].numpy()[0] == ref["predictions"].numpy()[i]
        assert out["layers_executed"].numpy()[0] == layers[i]


def test_paper_rule_also_guaranteed_and_never_earlier():
    tight = make_encoder(3)
    paper = make_encoder(3, halting_rule="paper")
    x, mask = random_inputs(1024, 3)
    ref = tight(x, padding_mask=mask, full_depth=True)["predictions"]
    out_t, out_p = tight(x, padding_mask=mask), paper(x, padding_mask=mask)
    np.testing.assert_array_equal(out_p["predictions"], ref)
    assert (out_t["layers_executed"] <= out_p["layers_executed"]).numpy().all()
    assert out_t["layers_executed"].numpy().mean() < out_p["layers_executed"].numpy().mean()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_loop_without_halting_equals_unrolled_path(pooling):
    encoder = make_encoder(4, pooling=pooling)
    x, mask = random_inputs(64, 4)
    loop = tf.function(lambda x, m: encoder.adaptive_forward(x, m, halting=False))(
        x, mask
    )
    unrolled = encoder(x, padding_mask=mask, full_depth=True)
    np.testing.assert_allclose(loop["probabilities"], unrolled["probabilities"], atol=1e-5)
    np.testing.assert_allclose(loop["ponder_cost"], unrolled["ponder_cost"], atol=1e-5)
    np.testing.assert_array_equal(loop["layers_executed"], np.full(64, LAYERS))
    # The training path computes the same answer (dropout is 0 here).
    train = encoder(x, padding_mask=mask, training=True)
    np.testing.assert_allclose(train["probabilities"], unrolled["probabilities"], atol=1e-5)


def test_trace_matches_numpy_recurrence_and_loop_exits():
    encoder = make_encoder(5)
    x, mask = random_inputs(256, 5)
    trace = encoder.trace(x, mask)
    acc, bud = numpy_dact(trace["answers"], trace["halting"])
    np.testing.assert_allclose(trace["accumulated"], acc, atol=1e-5)
    np.testing.assert_allclose(trace["budgets"], bud, atol=1e-6)
    np.testing.assert_allclose(trace["ponder_cost"], bud.sum(0), atol=1e-5)
    out = encoder(x, padding_mask=mask)
    np.testing.assert_array_equal(trace["exit_layers"], out["layers_executed"])
    # A halted example reports a_n at its exit block and sum_{k<=n} p_k.
    rows = np.arange(256)
    n = out["layers_executed"].numpy() - 1
    np.testing.assert_allclose(out["probabilities"], acc[n, rows], atol=1e-5)
    np.testing.assert_allclose(
        out["ponder_cost"], np.cumsum(bud, 0)[n, rows], atol=1e-5
    )


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_batch_compaction_equals_running_each_example_alone(pooling):
    encoder = make_encoder(6, pooling=pooling)
    early = compiled(encoder)
    x, mask = random_inputs(32, 6)
    batch = early(x, mask)
    assert len(set(batch["layers_executed"].numpy())) > 1  # a mixed batch
    for i in range(32):
        alone = early(x[i:i + 1], mask[i:i + 1])
        for key in ("probabilities", "ponder_cost"):
            np.testing.assert_allclose(alone[key][0], batch[key][i], atol=1e-5)
        for key in ("predictions", "layers_executed"):
            assert alone[key].numpy()[0] == batch[key].numpy()[i]


def test_training_path_adds_tau_times_ponder_cost():
    encoder = make_encoder(7, tau=0.25)
    x, mask = random_inputs(16, 7)
    out = encoder(x, padding_mask=mask, training=True)
    assert len(encoder.losses) == 1
    expected = 0.25 * out["ponder_cost"].numpy().mean()
    np.testing.assert_allclose(encoder.losses[0], expected, rtol=1e-5)
    # Training runs every block; `layers_executed` is where the exit rule
    # would stop (dropout is 0 here, so exactly the inference exit).
    np.testing.assert_array_equal(
        out["layers_executed"], encoder(x, padding_mask=mask)["layers_executed"])
    full = encoder(x, padding_mask=mask, full_depth=True)
    np.testing.assert_array_equal(full["layers_executed"], np.full(16, LAYERS))
    encoder.tau.assign(0.0)
    encoder(x, padding_mask=mask, training=True)
    np.testing.assert_allclose(encoder.losses[0], 0.0)


def test_regression_early_exit_within_tolerance():
    encoder = make_encoder(
        8, num_outputs=1, task="regression", output_range=(0.0, 5.0),
        regression_tolerance=0.2, halting_bias=-2.0,
    )
    x, mask = random_inputs(512, 8)
    out = encoder(x, padding_mask=mask)
    full = encoder(x, padding_mask=mask, full_depth=True)
    assert set(out) == {"scores", "layers_executed", "ponder_cost"}
    assert (out["layers_executed"].numpy() < LAYERS).mean() > 0.3
    err = np.abs(out["scores"].numpy() - full["scores"].numpy())
    assert err.max() <= 0.2 + 1e-5


@pytest.mark.parametrize("shared", [False, True])
def test_serialization_round_trip(shared):
    encoder = make_encoder(9, shared_heads=shared, tau=0.01)
    x, mask = random_inputs(4, 9)
    # 16 weights per keras-hub block, 6 for the heads; tau is not trainable.
    run_layer_test(encoder, x, {"padding_mask": mask}, LAYERS * 16 + 6)
    config = encoder.get_config()
    assert config["shared_heads"] is shared and config["tau"] == 0.01
    assert len(config["blocks"]) == LAYERS


def test_a_config_written_with_the_old_head_dropout_name_loads():
    encoder = make_encoder(9, dropout=0.25)
    config = encoder.get_config()
    assert config["dropout"] == 0.25 and "head_dropout" not in config
    config["head_dropout"] = config.pop("dropout")  # as models saved before the rename
    restored = type(encoder).from_config(config)
    assert restored.dropout == 0.25 and restored.heads.dropout == 0.25


def test_bad_inputs_get_clear_errors():
    encoder = make_encoder(10)
    x, mask = random_inputs(4, 10)
    with pytest.raises(ValueError, match="rank 3"):
        encoder(x[:, :, 0])
    with pytest.raises(ValueError, match="rank 2"):
        encoder(x, padding_mask=mask[:, :, None])
    with pytest.raises(ValueError, match="padding_mask"):
        encoder(x, padding_mask=mask[:, :4])
    with pytest.raises(ValueError, match="empty batch"):
        encoder(x[:0], padding_mask=mask[:0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(halting_rule="maybe"), "halting_rule"),
        (dict(tau=-1.0), "tau"),
        (dict(halting_margin=2.0), "halting_margin"),
        (dict(regression_tolerance=0.0), "regression_tolerance"),
        (dict(pooling="max"), "pooling"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_encoder(0, **kwargs)
    with pytest.raises(ValueError, match="at least one"):
        DactEncoder([], num_outputs=2)


def test_mean_pooling_reads_only_real_tokens():
    encoder = make_encoder(11, pooling="mean")
    x, mask = random_inputs(8, 11)
    # Changing padded positions must not change anything.
    noise = tf.where(mask[:, :, None], 0.0, 100.0)
    a = encoder(x, padding_mask=mask, full_depth=True)["probabilities"]
    b = encoder(x + noise, padding_mask=mask, full_depth=True)["probabilities"]
    np.testing.assert_allclose(a, b, atol=1e-5)
    pooled = encoder._pool(x, mask).numpy()
    m = mask.numpy()[:, :, None]
    np.testing.assert_allclose(pooled, (x.numpy() * m).sum(1) / m.sum(1), atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    {},
    {"method": "pabee", "patience": 1},
    {"method": "deebert"},
    {"method": "static"},
    {"task": "regression", "num_outputs": 1, "output_range": (0.0, 5.0)},
])
def test_single_row_chain_equals_the_compacting_loop(kwargs):
    # Batch 1 runs the blocks as a chain of tf.conds; larger batches the
    # compacting while loop. Row by row, with and without a cap, they agree.
    encoder = make_encoder(7, **kwargs)
    x, mask = random_inputs(24, 7)
    if encoder.method == "deebert":  # a threshold that splits these rows
        p = encoder.trace(x, mask)["answers"].numpy()
        entropy = -(p * np.log(p)).sum(-1)
        encoder.exit_criterion.configure(entropy_threshold=float(np.quantile(entropy, 0.3)))
    caps = np.array([1, 2, 3, 4], np.int32)
    exits = []
    for i in range(24):
        row = (x[i:i + 1], mask[i:i + 1])
        for cap in (None, tf.constant(caps[i % 4:i % 4 + 1])):
            chain = encoder._chain_forward(*row, max_layers=cap)
            loop = encoder._loop_forward(*row, True, cap)
            assert sorted(chain) == sorted(loop)
            for key in chain:
                np.testing.assert_allclose(chain[key].numpy().astype(float),
                                           loop[key].numpy().astype(float), atol=1e-6,
                                           err_msg=f"row {i}, cap {cap}, {key}")
            if cap is None:
                exits.append(int(chain["layers_executed"][0]))
    if kwargs.get("method") != "static":
        assert len(set(exits)) > 1, "the rows should exit at different blocks"
    # An unknown batch size picks the path in the graph: the same answers.
    dynamic = tf.function(lambda x, m: encoder(x, padding_mask=m),
                          input_signature=[tf.TensorSpec([None, SEQ, HIDDEN]),
                                           tf.TensorSpec([None, SEQ], tf.bool)])
    for i in range(3):
        alone = dynamic(x[i:i + 1], mask[i:i + 1])
        chain = encoder._chain_forward(x[i:i + 1], mask[i:i + 1])
        for key in chain:
            np.testing.assert_allclose(alone[key], chain[key], atol=1e-6)
