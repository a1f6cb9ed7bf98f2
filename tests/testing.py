"""Shared helpers for dact_tf tests: tiny models and a NumPy DACT reference."""

import math

import keras
import keras_hub
import numpy as np
import tensorflow as tf


def tiny_backbone(num_layers=4, hidden_dim=16, vocabulary_size=64, max_len=16, seed=0):
    """A small random BERT backbone (seconds to build and run)."""
    keras.utils.set_random_seed(seed)
    return keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        max_sequence_length=max_len,
        dropout=0.0,
    )


def random_features(num, seq_len=12, vocabulary_size=64, seed=0, min_len=2):
    """Random BERT inputs with varied lengths (padding after each sequence)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocabulary_size, size=(num, seq_len)).astype("int32")
    lengths = rng.integers(min_len, seq_len + 1, size=num)
    mask = np.arange(seq_len)[None, :] < lengths[:, None]
    ids = np.where(mask, ids, 0).astype("int32")
    return {
        "token_ids": ids,
        "padding_mask": mask,
        "segment_ids": np.zeros_like(ids),
    }


def slice_features(features, start, stop):
    return {k: v[start:stop] for k, v in features.items()}


def numpy_dact(answers, halting):
    """Reference recurrence: a_n = p_{n-1} y_n + (1 - p_{n-1}) a_{n-1}; p_n = p_{n-1} h_n.

    Args:
        answers: `[N, batch, C]`.
        halting: `[N, batch]`.

    Returns:
        `(accumulated [N, batch, C], budgets [N, batch])` in float64.
    """
    answers = np.asarray(answers, np.float64)
    halting = np.asarray(halting, np.float64)
    a = np.zeros(answers.shape[1:])
    p = np.ones(answers.shape[1])
    acc, bud = [], []
    for y, h in zip(answers, halting):
        a = p[:, None] * y + (1 - p[:, None]) * a
        p = p * h
        acc.append(a)
        bud.append(p)
    return np.stack(acc), np.stack(bud)


def synthetic_task(num, seq_len=12, vocabulary_size=64, seed=0):
    """A learnable task: label 1 iff token 1 appears in the sequence.

    Easy examples (the marker token right after [CLS]) and harder ones
    (marker elsewhere) let the model learn to halt early on some inputs.
    """
    feats = random_features(num, seq_len, vocabulary_size, seed, min_len=4)
    rng = np.random.default_rng(seed + 1)
    ids = feats["token_ids"]
    ids[ids == 1] = 2
    labels = rng.integers(0, 2, size=num).astype("int32")
    lengths = feats["padding_mask"].sum(axis=1)
    for i in np.nonzero(labels)[0]:
        ids[i, rng.integers(1, lengths[i])] = 1
    feats["token_ids"] = ids
    return feats, labels


def dataset(features, labels, batch_size=32):
    return tf.data.Dataset.from_tensor_slices((features, labels)).batch(batch_size)


def run_layer_test(layer, inputs, call_kwargs=None, num_trainable_weights=None):
    """Checks a layer the same way everywhere (like keras-hub's TestCase).

    Runs it eagerly and inside `tf.function` (same outputs), checks the
    trainable weight count, and round-trips it through `get_config` /
    `from_config` and `keras.saving.serialize_keras_object`, with weights
    copied, expecting the same outputs.

    Returns:
        The eager outputs.
    """
    call_kwargs = call_kwargs or {}
    out = layer(inputs, **call_kwargs)
    graph_out = tf.function(lambda x: layer(x, **call_kwargs))(inputs)
    tf.nest.map_structure(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        out,
        graph_out,
    )
    if num_trainable_weights is not None:
        assert len(layer.trainable_weights) == num_trainable_weights
    for clone in (
        layer.__class__.from_config(layer.get_config()),
        keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(layer)
        ),
    ):
        clone(inputs, **call_kwargs)
        clone.set_weights(layer.get_weights())
        assert clone.get_config() == layer.get_config()
        tf.nest.map_structure(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
            out,
            clone(inputs, **call_kwargs),
        )
    return out


def betting_log_capital(x, m, delta):
    """The betting capital against "the mean is at least m", one row at a time in plain
    Python (the reference `risk_bounds.mean_upper_bound` is checked against): its running
    maximum, with bets of at most 0.75, on the rows in the bet's order
    (`risk_bounds.betting_order`)."""
    from dact_tf.calibration import risk_bounds

    x = [float(v) for v in risk_bounds.betting_order(np.asarray(x, dtype=np.float64))]
    n, target = len(x), math.log(1 / delta)
    total, squares, variance, best, log_capital = 0.0, 0.0, 0.25, -math.inf, 0.0
    for i, value in enumerate(x, start=1):
        bet = min(math.sqrt(2 * target / (n * variance)), 0.75)
        log_capital += math.log(1 + bet * (m - value))
        best = max(best, log_capital)
        total += value
        mean = (0.5 + total) / (i + 1)
        squares += (value - mean) ** 2
        variance = (0.25 + squares) / (i + 1)
    return best


def assert_keras_round_trip_exits_alike(model, features, layers_executed, tmp_path):
    """Saves `model` as .keras, loads it, and checks its exit criterion and its exits on
    `features` (`layers_executed`, from the original) are unchanged."""
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.exit_criterion == model.exit_criterion
    np.testing.assert_array_equal(restored(features)["layers_executed"].numpy(),
                                  layers_executed)
