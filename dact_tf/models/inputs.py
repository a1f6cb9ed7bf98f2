"""Checks and completes a model's token inputs (`DactClassifier`)."""

import tensorflow as tf


def standardize_inputs(inputs, *, input_keys, backbone_name, max_length, vocabulary_size,
                       num_segments):
    """Validates a model's token inputs; returns `(inputs dict, padding_mask)`.

    Shapes, dtypes and keys are checked when the graph is built (one-line
    `ValueError`s); values (ids in the vocabulary, lengths, empty batches)
    inside the graph, so the checks survive export: the embedding lookups
    wait for them (on GPU a bad id would silently read zeros).

    Args:
        inputs: a `token_ids` tensor, or a dict with `token_ids` and
            optionally `padding_mask` and `segment_ids`.
        input_keys: the keys the backbone reads (`token_ids` first).
        backbone_name: for messages.
        max_length: the backbone's maximum sequence length.
        vocabulary_size: ids must be below it.
        num_segments: segment ids must be below it; None: the backbone
            reads none.

    Returns:
        `(ids, padding_mask)`: int32 tensors for every key in `input_keys`
        (missing `padding_mask`: `token_ids != 0`; missing `segment_ids`:
        zeros), and the padding mask.

    Example:
    >>> ids, mask = standardize_inputs(
    ...     tf.constant([[101, 7, 102, 0]]), input_keys=("token_ids", "padding_mask"),
    ...     backbone_name="RobertaBackbone", max_length=8, vocabulary_size=200,
    ...     num_segments=None)
    >>> mask.numpy().tolist()
    [[True, True, True, False]]
    """
    if not isinstance(inputs, dict):
        inputs = {"token_ids": inputs}
    token_ids = _checked_token_ids(inputs, input_keys, backbone_name, max_length)
    padding_mask = inputs.get("padding_mask")
    if padding_mask is None:
        padding_mask = tf.not_equal(token_ids, 0)
    others = {"padding_mask": tf.convert_to_tensor(padding_mask)}
    if num_segments is not None:
        segment_ids = inputs.get("segment_ids")
        if segment_ids is None:
            segment_ids = tf.zeros_like(token_ids)
        segment_ids = tf.convert_to_tensor(segment_ids)
        if not segment_ids.dtype.is_integer:
            raise ValueError(
                f"`segment_ids` must be integers, got {segment_ids.dtype.name}.")
        others["segment_ids"] = segment_ids
    for name, t in others.items():
        if t.shape.rank != 2 or not t.shape.is_compatible_with(token_ids.shape):
            raise ValueError(
                f"`{name}` must have the shape of `token_ids` {token_ids.shape}, got {t.shape}.")
    checks = _value_checks(token_ids, others, max_length, vocabulary_size, num_segments)
    # The gathers wait for the checks (on GPU a bad id would silently
    # read zeros).
    with tf.control_dependencies(checks):
        ids = {"token_ids": tf.identity(tf.cast(token_ids, tf.int32))}
        if num_segments is not None:
            ids["segment_ids"] = tf.identity(tf.cast(others["segment_ids"], tf.int32))
    ids["padding_mask"] = others["padding_mask"]
    return ids, others["padding_mask"]


def _checked_token_ids(inputs, keys, backbone_name, max_length):
    """`token_ids` as a tensor, after the checks a graph can make when it is built."""
    unknown = sorted(set(inputs) - set(keys))
    if unknown:
        raise ValueError(f"Unknown input keys {unknown}; {backbone_name} reads some of {keys}.")
    if "token_ids" not in inputs:
        raise ValueError(f"The inputs need `token_ids`; got keys {sorted(inputs)}.")
    token_ids = tf.convert_to_tensor(inputs["token_ids"])
    if not token_ids.dtype.is_integer:
        raise ValueError(f"`token_ids` must be integers, got dtype {token_ids.dtype.name}.")
    if token_ids.shape.rank != 2:
        raise ValueError(f"`token_ids` must have shape [batch, seq], got {token_ids.shape}.")
    if token_ids.shape[0] == 0:
        raise ValueError("Got an empty batch (batch size 0).")
    if token_ids.shape[1] == 0:
        raise ValueError("Got sequences of length 0: every row needs at least one token.")
    if token_ids.shape[1] is not None and token_ids.shape[1] > max_length:
        raise ValueError(
            f"Sequences of length {token_ids.shape[1]} are longer than the "
            f"backbone's maximum, {max_length}.")
    return token_ids


def _value_checks(token_ids, others, max_length, vocabulary_size, num_segments):
    """The checks that need values; they run inside graphs too (SavedModel)."""
    checks = [
        tf.debugging.assert_equal(tf.shape(t), tf.shape(token_ids),
                                  message=f"{name} and token_ids must have the same shape")
        for name, t in others.items()
    ] + [
        tf.debugging.assert_less_equal(
            tf.shape(token_ids)[1], max_length,
            message=f"sequence longer than the model's maximum {max_length}"),
        tf.debugging.assert_greater(tf.shape(token_ids)[0], 0, message="empty batch"),
        tf.debugging.assert_greater(tf.shape(token_ids)[1], 0,
                                    message="sequences of length 0 (no token)"),
        tf.debugging.assert_non_negative(token_ids, message="token_ids must be >= 0"),
        tf.debugging.assert_less(
            token_ids, tf.cast(vocabulary_size, token_ids.dtype),
            message=f"token_ids must be < the vocabulary size {vocabulary_size}"),
    ]
    if num_segments is not None:
        segment_ids = others["segment_ids"]
        checks += [
            tf.debugging.assert_non_negative(segment_ids, message="segment_ids must be >= 0"),
            tf.debugging.assert_less(
                segment_ids, tf.cast(num_segments, segment_ids.dtype),
                message=f"segment_ids must be < the number of segments {num_segments}"),
        ]
    return checks
