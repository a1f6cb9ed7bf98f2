"""Tests for dact_tf.data.pipeline: tokenized, batched tf.data datasets."""

import os

import numpy as np
import pytest
import tensorflow as tf

from dact_tf.data import glue
from dact_tf.data import pipeline
from dact_tf.data import tsv
from dact_tf.models import backbones

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata", "glue")
SEQ = 24
TEXTS = [f"film number {i} was good" for i in range(10)]
LABELS = [i % 2 for i in range(10)]


@pytest.fixture(scope="module")
def preprocessor():
    return backbones.make_preprocessor(backbones.tiny_tokenizer(), SEQ)


def test_batches_have_the_documented_structure(preprocessor):
    ds = pipeline.make_dataset(TEXTS, LABELS, preprocessor, batch_size=4)
    x, y = ds.element_spec
    assert set(x) == {"token_ids", "segment_ids", "padding_mask"}
    assert x["token_ids"].dtype == tf.int32
    assert x["segment_ids"].dtype == tf.int32
    assert x["padding_mask"].dtype == tf.bool
    assert x["token_ids"].shape.as_list() == [None, SEQ]
    assert y.dtype == tf.int32 and y.shape.as_list() == [None]
    batches = list(ds.as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(
        np.concatenate([b[1] for b in batches]), LABELS
    )


def test_tokens_equal_a_direct_preprocessor_call(preprocessor):
    ds = pipeline.make_dataset(TEXTS[:3], LABELS[:3], preprocessor,
                               batch_size=3)
    x, _ = next(ds.as_numpy_iterator())
    direct = preprocessor(tf.constant(TEXTS[:3]))
    for key in x:
        np.testing.assert_array_equal(x[key], np.asarray(direct[key]))
    tokenizer = backbones.tiny_tokenizer()
    ids = [int(i) for i in tokenizer("film number 0 was good")]
    row = x["token_ids"][0]
    assert row[0] == tokenizer.cls_token_id
    np.testing.assert_array_equal(row[1:1 + len(ids)], ids)
    assert row[1 + len(ids)] == tokenizer.sep_token_id
    np.testing.assert_array_equal(x["padding_mask"][0],
                                  np.arange(SEQ) < len(ids) + 2)


def test_pairs_get_segment_ids(preprocessor):
    ds = pipeline.make_dataset(["a question ?"], [1], preprocessor,
                               pairs=["yes ."], batch_size=1)
    x, _ = next(ds.as_numpy_iterator())
    # [CLS] a question ? [SEP] yes . [SEP] -> segments 0 x5, 1 x3, then pad.
    np.testing.assert_array_equal(
        x["segment_ids"][0], [0] * 5 + [1] * 3 + [0] * (SEQ - 8)
    )
    assert x["padding_mask"][0].sum() == 8


def test_long_pairs_are_truncated_to_sequence_length(preprocessor):
    long = " ".join(["good"] * 40)
    ds = pipeline.make_dataset([long], [0], preprocessor, pairs=[long],
                               batch_size=1)
    x, _ = next(ds.as_numpy_iterator())
    assert x["padding_mask"][0].all()
    assert x["segment_ids"][0].sum() == (SEQ - 3) // 2 + 1  # round robin


def test_regression_labels_are_float32(preprocessor):
    ds = pipeline.make_dataset(["a", "b"], [0.5, 4.25], preprocessor,
                               regression=True)
    _, y = next(ds.as_numpy_iterator())
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [0.5, 4.25])


def test_max_examples_keeps_the_first_rows(preprocessor):
    ds = pipeline.make_dataset(TEXTS, list(range(10)), preprocessor,
                               batch_size=4, max_examples=5, shuffle=True,
                               seed=0)
    labels = np.concatenate([y for _, y in ds.as_numpy_iterator()])
    assert sorted(labels) == [0, 1, 2, 3, 4]


def test_shuffle_is_seeded_and_reshuffles_each_epoch(preprocessor):
    texts = [f"{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    labels = list(range(26))

    def epochs(seed):
        ds = pipeline.make_dataset(texts, labels, preprocessor, batch_size=5,
                                   shuffle=True, seed=seed)
        return [np.concatenate([y for _, y in ds.as_numpy_iterator()])
                for _ in range(2)]

    a, b = epochs(7), epochs(7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])  # a new order every epoch
    assert sorted(a[0]) == labels  # a permutation
    unshuffled = pipeline.make_dataset(texts, labels, preprocessor)
    assert list(np.concatenate(
        [y for _, y in unshuffled.as_numpy_iterator()])) == labels


def test_drop_remainder(preprocessor):
    ds = pipeline.make_dataset(TEXTS, LABELS, preprocessor, batch_size=4,
                               drop_remainder=True)
    assert ds.element_spec[1].shape.as_list() == [4]
    assert len(list(ds)) == 2


def test_input_checks(preprocessor):
    with pytest.raises(ValueError, match="10 texts but a column of 3"):
        pipeline.make_dataset(TEXTS, [0, 1, 0], preprocessor)
    with pytest.raises(ValueError, match="1-D sequence of strings"):
        pipeline.make_dataset([1, 2], [0, 1], preprocessor)
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.make_dataset(TEXTS, LABELS, preprocessor, batch_size=0)


def test_from_examples_and_from_glue_agree(preprocessor, tmp_path):
    examples = glue.read_glue("mrpc", "dev", TESTDATA)
    from_examples = pipeline.make_dataset_from_examples(
        examples, preprocessor, batch_size=4
    )
    from_glue = pipeline.glue_dataset(
        "mrpc", "dev", preprocessor, glue_dir=TESTDATA,
        data_dir=str(tmp_path), batch_size=4,
    )
    for (xa, ya), (xb, yb) in zip(from_examples.as_numpy_iterator(),
                                  from_glue.as_numpy_iterator(), strict=True):
        np.testing.assert_array_equal(ya, yb)
        for key in xa:
            np.testing.assert_array_equal(xa[key], xb[key])
    x, y = next(from_glue.as_numpy_iterator())
    assert x["segment_ids"].max() == 1  # sentence pairs
    np.testing.assert_array_equal(y, examples.labels[:4])


def test_glue_regression_and_custom_features(preprocessor, tmp_path):
    stsb = pipeline.glue_dataset("stsb", "train", preprocessor,
                                 glue_dir=TESTDATA, data_dir=str(tmp_path))
    _, y = next(stsb.as_numpy_iterator())
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[:2], [5.0, 3.8])

    examples = tsv.TextExamples(texts=("good", "bad"),
                                labels=np.array([1, 0], np.int32),
                                label_names=("neg", "pos"))
    stored = glue.store_as_tfds(examples, name="custom", data_dir=str(tmp_path))
    ds = pipeline.make_dataset_from_features(stored, preprocessor,
                                             text_key="text")
    x, y = next(ds.as_numpy_iterator())
    assert y.dtype == np.int32 and list(y) == [1, 0]
    assert x["token_ids"].shape == (2, SEQ)


@pytest.mark.parametrize("padding", ["batch", "bucket"])
def test_dynamic_padding_keeps_every_example_and_cuts_batches(preprocessor, padding):
    texts = [" ".join(["word"] * (1 + i % 13)) + f" {i}" for i in range(70)]
    labels = [i % 2 for i in range(70)]
    fixed = pipeline.make_dataset(texts, labels, preprocessor, batch_size=8)
    cut = pipeline.make_dataset(texts, labels, preprocessor, batch_size=8, padding=padding,
                                shuffle=padding == "bucket", seed=3)

    def rows(ds):
        out = []
        for x, y in ds.as_numpy_iterator():
            for ids, seg, mask, label in zip(x["token_ids"], x["segment_ids"],
                                             x["padding_mask"], y):
                out.append((tuple(ids[mask]), tuple(seg[mask]), int(label)))
        return out

    assert sorted(rows(cut)) == sorted(rows(fixed))
    widths = []
    for x, _ in cut.as_numpy_iterator():
        lengths = x["padding_mask"].sum(axis=1)
        assert x["token_ids"].shape[1] == lengths.max()  # cut to the longest
        widths.append((x["token_ids"].shape[1] - lengths).mean())
    if padding == "batch":
        assert rows(cut) == rows(fixed)  # same order
    else:
        # Grouping by length leaves less padding than cutting alone.
        batch = pipeline.make_dataset(texts, labels, preprocessor, batch_size=8,
                                      padding="batch", shuffle=True, seed=3)
        cut_only = [(x["token_ids"].shape[1] - x["padding_mask"].sum(1)).mean()
                    for x, _ in batch.as_numpy_iterator()]
        assert np.mean(widths) < np.mean(cut_only)


def test_bucketed_training_data_give_the_same_metrics_as_padded():
    import keras

    from dact_tf.training import train_lib
    from dact_tf.data import builtin_sst2_dir
    from dact_tf.models.dact_classifier import DactClassifier

    backbone, tokenizer = backbones.load_backbone("tiny", max_sequence_length=32)
    pre = backbones.make_preprocessor(tokenizer, 32)
    keras.utils.set_random_seed(0)
    model = DactClassifier(backbone, num_classes=2, pooling="mean", dropout=0.0,
                           halting_bias=0.0)
    results = {}
    for padding in ("max_length", "bucket"):
        config = train_lib.DataConfig(task="sst2", data_dir=builtin_sst2_dir(), sequence_length=32,
                                      max_train_examples=96, max_eval_examples=96, padding=padding)
        # Training rows come shuffled and (bucket) regrouped; the others in order.
        ds = train_lib.make_datasets(config, pre, splits=("train", "holdout", "validation"))
        results[padding] = [train_lib.evaluate(model, d, "sst2") for d in ds.values()]
    for padded, bucketed in zip(results["max_length"], results["bucket"]):
        assert padded["accuracy"] == bucketed["accuracy"]
        assert padded["layers_histogram"] == bucketed["layers_histogram"]


def test_unknown_padding_is_refused(preprocessor):
    with pytest.raises(ValueError, match="padding"):
        pipeline.make_dataset(TEXTS, LABELS, preprocessor, padding="dynamic")
