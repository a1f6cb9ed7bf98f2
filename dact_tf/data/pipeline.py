"""tf.data input pipelines: text (or text pairs) and labels -> model batches.

Whatever the source (in-memory lists, `TextExamples`, or the feature-dict
datasets that tensorflow-datasets returns for GLUE), batches look the same:

    ({"token_ids": int32 [B, S],
      "segment_ids": int32 [B, S],
      "padding_mask": bool [B, S]},
     labels)            # int32 [B] class ids, or float32 [B] for regression

Tokenization runs inside the pipeline (`Dataset.map` over batches of
strings) with keras-hub's BERT preprocessor, so the same preprocessor can
later be put in front of an exported model.

Order of operations: `take(max_examples)` (the first examples, in file
order), then `shuffle` (re-shuffled each epoch, seeded), `batch`, tokenize,
`prefetch`.

Padding (`padding=`): `"max_length"` pads every batch to the preprocessor's
`sequence_length` S; `"batch"` (dynamic padding) cuts each batch to its
longest example, in the same order; `"bucket"` also groups examples of
similar length into the same batch (length bucketing: tokenize, then
`group_by_window` on the length, then cut), which changes the order of the
examples and the make-up of the batches, so it is for training. A BERT's
output for an example does not depend on the padding after it (attention and
mean pooling are masked), so all three give the same model outputs per
example; `"batch"` and `"bucket"` just compute far fewer padded positions
(SST-2's training phrases average about 13 tokens against S = 64).
"""

import numpy as np
import tensorflow as tf

from dact_tf.data import glue as glue_lib

_DEFAULT_SHUFFLE_BUFFER = 100_000
#: Accepted values of the `padding` argument.
PADDINGS = ("max_length", "batch", "bucket")
# "bucket": upper bounds (tokens) of the length buckets below S.
_BUCKET_BOUNDARIES = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384)


def make_dataset(
    texts,
    labels,
    preprocessor,
    *,
    pairs=None,
    regression=False,
    batch_size=32,
    shuffle=False,
    seed=None,
    shuffle_buffer_size=None,
    max_examples=None,
    drop_remainder=False,
    padding="max_length",
):
    """Builds batched model inputs from texts (or text pairs) and labels.

    Args:
        texts: sequence of str (or a string array/tensor) `[num_examples]`.
        labels: sequence of int class ids, or of float targets when
            `regression`, `[num_examples]`.
        preprocessor: a keras-hub text classifier preprocessor, e.g. from
            `dact_tf.models.backbones.make_preprocessor`; its
            `sequence_length` sets `S`.
        pairs: sequence of str or None. Second segments `[num_examples]`.
        regression: bool. float32 labels instead of int32.
        batch_size: int.
        shuffle: bool. Shuffle examples (re-shuffled every epoch).
        seed: int or None. Shuffle seed; with a seed the order of every epoch
            is reproducible.
        shuffle_buffer_size: int or None. Default: the whole dataset (up to
            100,000 examples), i.e. a uniform shuffle.
        max_examples: int or None. Keep only the first `max_examples`.
        drop_remainder: bool. Drop a last, smaller batch.
        padding: one of `PADDINGS`: `"max_length"` (every batch `[B, S]`),
            `"batch"` (each batch cut to its longest example) or `"bucket"`
            (examples grouped by length, then cut; reorders examples: for
            training). See the module docstring.

    Returns:
        `tf.data.Dataset` of `(inputs, labels)` as described in the module
        docstring.

    Example:
    ```python
    backbone, tokenizer = load_backbone("tiny")
    preprocessor = make_preprocessor(tokenizer, sequence_length=32)
    ds = make_dataset(["good film", "dull"], [1, 0], preprocessor,
                      batch_size=2)
    x, y = next(iter(ds))
    x["token_ids"].shape, y.dtype  # (2, 32), tf.int32
    ```
    """
    texts = _as_string_tensor(texts, "texts")
    columns = [texts]
    if pairs is not None:
        pairs = _as_string_tensor(pairs, "pairs")
        columns.append(pairs)
    labels = tf.convert_to_tensor(
        labels, dtype=tf.float32 if regression else tf.int32
    )
    for column in columns[1:] + [labels]:
        if column.shape[0] != texts.shape[0]:
            raise ValueError(
                f"Got {texts.shape[0]} texts but a column of "
                f"{column.shape[0]} values."
            )
    dataset = tf.data.Dataset.from_tensor_slices((*columns, labels))
    return _finish(
        dataset,
        preprocessor,
        has_pairs=pairs is not None,
        regression=regression,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        shuffle_buffer_size=shuffle_buffer_size,
        max_examples=max_examples,
        drop_remainder=drop_remainder,
        prefetch=True,
        padding=padding,
    )


def make_dataset_from_examples(examples, preprocessor, **kwargs):
    """Like `make_dataset`, for a `TextExamples`.

    Args:
        examples: `dact_tf.data.TextExamples` (from `read_text_file` or
            `read_glue`).
        preprocessor: see `make_dataset`.
        **kwargs: other `make_dataset` arguments (`batch_size`, `shuffle`,
            `seed`, ...).

    Returns:
        `tf.data.Dataset` of `(inputs, labels)`.

    Example:
    ```python
    examples = read_text_file("reviews.csv", text_column=0, label_column=1)
    ds = make_dataset_from_examples(examples, preprocessor, batch_size=16)
    ```
    """
    return make_dataset(
        list(examples.texts),
        examples.labels,
        preprocessor,
        pairs=None if examples.pairs is None else list(examples.pairs),
        regression=examples.is_regression,
        **kwargs,
    )


def make_dataset_from_features(
    dataset,
    preprocessor,
    *,
    text_key,
    pair_key=None,
    label_key="label",
    regression=False,
    **kwargs,
):
    """Builds model batches from a dataset of feature dicts (e.g. tfds).

    Args:
        dataset: `tf.data.Dataset` of dicts with string features `text_key`
            (and `pair_key`) and a scalar `label_key`.
        preprocessor: see `make_dataset`.
        text_key: str. Feature with the first text.
        pair_key: str or None. Feature with the second text.
        label_key: str. Feature with the label.
        regression: bool. float32 labels instead of int32.
        **kwargs: other `make_dataset` arguments.

    Returns:
        `tf.data.Dataset` of `(inputs, labels)`.

    Example:
    ```python
    ds = load_glue("rte", "train", glue_dir="/data/glue")
    batches = make_dataset_from_features(ds, preprocessor,
                                         text_key="sentence1",
                                         pair_key="sentence2")
    ```
    """
    label_dtype = tf.float32 if regression else tf.int32

    def select(example):
        columns = [example[text_key]]
        if pair_key is not None:
            columns.append(example[pair_key])
        return (*columns, tf.cast(example[label_key], label_dtype))

    return _finish(
        dataset.map(select, num_parallel_calls=tf.data.AUTOTUNE),
        preprocessor,
        has_pairs=pair_key is not None,
        regression=regression,
        **kwargs,
    )


def glue_dataset(
    task,
    split,
    preprocessor,
    *,
    source="auto",
    glue_dir=None,
    data_dir=None,
    **kwargs,
):
    """Loads a GLUE split (tfds or local files) as model batches.

    Args:
        task: str or GlueTask. `"sst2"`, `"mrpc"`, `"rte"`, `"cola"`,
            `"stsb"` or `"qnli"`.
        split: str. `"train"` or `"validation"` (`"dev"`).
        preprocessor: see `make_dataset`.
        source: str. `"auto"`, `"local"` or `"tfds"`; see
            `dact_tf.data.load_glue`.
        glue_dir: str or None. Local GLUE folder (or a task folder).
        data_dir: str or None. tfds data folder.
        **kwargs: other `make_dataset` arguments (`batch_size`, `shuffle`,
            `seed`, `max_examples`, ...).

    Returns:
        `tf.data.Dataset` of `(inputs, labels)`.

    Example:
    ```python
    train = glue_dataset("sst2", "train", preprocessor,
                         glue_dir=builtin_sst2_dir(), batch_size=32,
                         shuffle=True, seed=0)
    ```
    """
    task = glue_lib.glue_task(task)
    features = glue_lib.load_glue(
        task, split, source=source, glue_dir=glue_dir, data_dir=data_dir
    )
    return make_dataset_from_features(
        features,
        preprocessor,
        text_key=task.text_feature,
        pair_key=task.pair_feature,
        regression=task.is_regression,
        **kwargs,
    )


def _as_string_tensor(values, what):
    tensor = tf.convert_to_tensor(values)
    if tensor.dtype != tf.string or tensor.shape.rank != 1:
        raise ValueError(
            f"`{what}` must be a 1-D sequence of strings, got dtype "
            f"{tensor.dtype.name} and shape {tensor.shape}."
        )
    return tensor


def _finish(
    dataset,
    preprocessor,
    *,
    has_pairs,
    regression,
    batch_size=32,
    shuffle=False,
    seed=None,
    shuffle_buffer_size=None,
    max_examples=None,
    drop_remainder=False,
    prefetch=True,
    padding="max_length",
):
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if max_examples is not None:
        if max_examples < 1:
            raise ValueError(
                f"max_examples must be >= 1, got {max_examples}."
            )
        dataset = dataset.take(max_examples)
    if shuffle:
        if shuffle_buffer_size is None:
            size = int(dataset.cardinality())
            shuffle_buffer_size = (
                size if 0 < size <= _DEFAULT_SHUFFLE_BUFFER
                else _DEFAULT_SHUFFLE_BUFFER
            )
        dataset = dataset.shuffle(
            shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True
        )
    label_dtype = tf.float32 if regression else tf.int32

    def tokenize(*columns):
        *segments, labels = columns
        x = preprocessor(x=tuple(segments) if has_pairs else segments[0])
        inputs = {  # encoders without segments (DistilBERT) get no segment_ids
            key: tf.cast(x[key], tf.bool if key == "padding_mask" else tf.int32)
            for key in ("token_ids", "segment_ids", "padding_mask") if key in x
        }
        return inputs, tf.cast(labels, label_dtype)

    if padding == "bucket":
        # Tokenize in large batches (fast), then regroup single examples by
        # length into batches of `batch_size`.
        dataset = dataset.batch(max(256, batch_size))
        dataset = dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        dataset = dataset.unbatch()

        def bucket(inputs, labels):
            length = tf.reduce_sum(tf.cast(inputs["padding_mask"], tf.int32))
            bounds = tf.constant(_BUCKET_BOUNDARIES, tf.int32)
            return tf.reduce_sum(tf.cast(length > bounds, tf.int64))

        dataset = dataset.group_by_window(
            key_func=bucket,
            reduce_func=lambda _, window: window.batch(batch_size, drop_remainder=drop_remainder),
            window_size=batch_size,
        )
        dataset = dataset.map(_cut_to_longest, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        dataset = dataset.map(
            tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        if padding == "batch":
            dataset = dataset.map(
                _cut_to_longest, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
            )
    if prefetch:
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset


def _cut_to_longest(inputs, labels):
    """Cuts a batch's features to its longest example (right padding)."""
    length = tf.reduce_max(tf.reduce_sum(tf.cast(inputs["padding_mask"], tf.int32), axis=1))
    length = tf.maximum(length, 1)
    return {key: value[:, :length] for key, value in inputs.items()}, labels


def token_counts(dataset):
    """int `[rows]`: the tokens of each row of `dataset` (batches of `(features, labels)`),
    `[CLS]` and `[SEP]` counted."""
    return np.concatenate([inputs["padding_mask"].sum(axis=1)
                           for inputs, _ in dataset.as_numpy_iterator()])


def keep_min_tokens(dataset, min_tokens):
    """The rows of `dataset` with at least `min_tokens` tokens, still in batches.

    Args:
        dataset: batches of `(features, labels)` (keras-hub features with a
            `padding_mask`).
        min_tokens: int >= 1, counted with `[CLS]` and `[SEP]`.

    Returns:
        A `tf.data.Dataset` of the same structure; a batch left with no row
        is dropped. A choice made on the inputs alone: the rows kept are an
        independent sample of the longer rows' distribution.
    """

    def keep(inputs, labels):
        mask = tf.reduce_sum(tf.cast(inputs["padding_mask"], tf.int32), axis=1) >= min_tokens
        return ({key: tf.boolean_mask(value, mask) for key, value in inputs.items()},
                tf.boolean_mask(labels, mask))

    return dataset.map(keep).filter(lambda inputs, labels: tf.shape(labels)[0] > 0)
