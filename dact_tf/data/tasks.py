"""The data of a `DataConfig`: its task's labels, and its train, validation and held-out splits."""

import dataclasses
import hashlib
import os

import numpy as np
import tensorflow as tf

from dact_tf import data as dact_data

CUSTOM_TASKS = ("tsv", "csv")


def _column(value):
    if value is None:
        return None
    value = str(value)
    return int(value) if value.lstrip("-").isdigit() else value


def _custom_examples(data_config, path, label_names=None):
    return dact_data.read_text_file(
        path,
        text_column=_column(data_config.text_column),
        text_pair_column=_column(data_config.text_pair_column),
        label_column=_column(data_config.label_column),
        header=data_config.header,
        delimiter="," if data_config.task == "csv" else "\t",
        quoting=data_config.task == "csv",
        label_names=label_names,
    )


def task_info(data_config, label_names=None):
    """`(num_classes, is_regression, label_names, metric_task)` of the data."""
    if data_config.task in CUSTOM_TASKS:
        if label_names is None:
            if not data_config.train_file:
                raise ValueError(f"--task={data_config.task} needs --train_file.")
            label_names = list(_custom_examples(data_config, data_config.train_file).label_names)
        return len(label_names), False, list(label_names), "custom"
    task = dact_data.glue_task(data_config.task)
    names = None if task.is_regression else list(task.label_names)
    return task.num_classes, task.is_regression, names, task.name


def make_datasets(data_config, preprocessor, label_names=None, splits=("train", "validation")):
    """Tokenized, batched datasets for the requested splits.

    Args:
        data_config: a `DataConfig`.
        preprocessor: a keras-hub BERT text classifier preprocessor.
        label_names: custom data only: the label order to use (from a
            trained model), None to derive it from the training file.
        splits: any of `"train"`, `"holdout"` (the training rows held out,
            see `DataConfig.holdout_fraction`; `"train"` then excludes them)
            and `"validation"` (the evaluation set).

    Returns:
        A dict split -> `tf.data.Dataset` of `(features, labels)`; the
        train and holdout datasets' row counts are in
        `dataset_sizes(data_config)`.
    """
    out = {}
    train_padding = data_config.padding
    eval_padding = "max_length" if train_padding == "max_length" else "batch"
    common = dict(batch_size=data_config.batch_size, seed=data_config.seed)
    for split in splits:
        if split == "calibration" and data_config.calibration_file:
            out[split] = dact_data.make_dataset_from_examples(
                calibration_examples(data_config, label_names), preprocessor, shuffle=False,
                padding=eval_padding, **common)
            continue
        train = split in TRAINING_SPLITS
        limit = data_config.max_train_examples if train else data_config.max_eval_examples
        shuffle = split == "train"
        padding = train_padding if shuffle else eval_padding
        if data_config.task in CUSTOM_TASKS:
            path = data_config.train_file if train else data_config.eval_file
            if not path:
                flag = "--train_file" if train else "--eval_file"
                raise ValueError(f"--task={data_config.task} needs {flag}.")
            examples = _custom_examples(data_config, path, label_names)
            if train:
                examples = _select_rows(examples, limit, data_config, split)
                limit = None
            out[split] = dact_data.make_dataset_from_examples(
                examples, preprocessor, shuffle=shuffle, max_examples=limit,
                padding=padding, **common
            )
        else:
            task = dact_data.glue_task(data_config.task)
            features = dact_data.load_glue(
                task, "train" if train else "validation", glue_dir=data_config.data_dir
            )
            if train:
                features = _select_features(features, limit, data_config, split)
                limit = None
            out[split] = dact_data.make_dataset_from_features(
                features, preprocessor, text_key=task.text_feature,
                pair_key=task.pair_feature, regression=task.is_regression,
                shuffle=shuffle, max_examples=limit, padding=padding, **common
            )
    if "calibration" in out and getattr(data_config, "calibration_min_tokens", 0):
        out["calibration"] = _long_rows(out["calibration"], data_config)
    return out


def check_min_tokens(data_config):
    """Refuses, in one line, a `calibration_min_tokens` that cannot choose rows."""
    n = getattr(data_config, "calibration_min_tokens", 0) or 0
    if not n:
        return
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"--calibration_min_tokens must be an integer >= 0, got {n!r}.")
    if n > data_config.sequence_length:
        raise ValueError(f"--calibration_min_tokens={n} is above --sequence_length="
                         f"{data_config.sequence_length}: no row is that long.")
    if not (data_config.calibration_file or data_config.calibration_share):
        raise ValueError("--calibration_min_tokens chooses among the calibration rows kept "
                         "apart, and --calibration_share=0 keeps none apart: the model's "
                         "selection rows would certify it.")


def _long_rows(dataset, data_config):
    """`dataset` (the calibration rows) cut to its rows of at least `calibration_min_tokens`
    tokens, or a one-line refusal when none is that long."""
    check_min_tokens(data_config)
    n = int(data_config.calibration_min_tokens)
    lengths = dact_data.token_counts(dataset)
    if not (lengths >= n).any():
        raise ValueError(f"--calibration_min_tokens={n}: none of the {len(lengths)} calibration "
                         f"rows is that long (the longest has {int(lengths.max())} tokens).")
    return dact_data.keep_min_tokens(dataset, n)


#: Fixed seed of the holdout split: every method and seed holds out the same rows.
_HOLDOUT_SEED = 20211

#: The splits made of the training file's rows.
TRAINING_SPLITS = ("train", "holdout", "calibration")


def _row_roles(num_rows, data_config):
    """`[num_rows]` int: 0 a training row, 1 a selection row, 2 a calibration row.

    `holdout_fraction` of the rows (at most `max_holdout_examples`) are held
    out, the same ones for every seed; the last `calibration_share` of them
    (in the split's random order) are calibration rows, the others selection
    rows (best epoch, the tau controller, the pass-through). With
    `calibration_share=0` no row is kept apart: the calibration split is the
    selection rows (as in dact_tf < 0.12).
    """
    count = int(round(num_rows * float(data_config.holdout_fraction)))
    count = min(count, int(data_config.max_holdout_examples or 0))
    if data_config.holdout_fraction > 0 and count < 1 and num_rows > 1:
        count = 1
    roles = np.zeros(num_rows, np.int8)
    if count:
        if count >= num_rows:
            raise ValueError(
                f"--holdout_fraction={data_config.holdout_fraction} would hold out all "
                f"{num_rows} training rows."
            )
        held = np.random.default_rng(_HOLDOUT_SEED).permutation(num_rows)[:count]
        apart = calibration_rows(count, data_config)
        roles[held] = 1
        roles[held[count - apart:]] = 2
    return roles


def calibration_examples(data_config, label_names=None):
    """The rows of `data_config.calibration_file`, read as the training file's format."""
    path = data_config.calibration_file
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--calibration_file: no file at {path}.")
    if data_config.task in CUSTOM_TASKS:
        return _custom_examples(data_config, path, label_names)
    return dact_data.read_glue_file(data_config.task, path)  # refuses an empty file too


def calibration_source(data_config):
    """What the certificates were computed on: None (every held-out calibration row), or the
    file and its digest, and the rows' least length (`calibration_min_tokens`)."""
    path = data_config.calibration_file
    source = None
    if path:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        source = f"from {os.path.basename(path)} (sha256 {digest[:16]})"
    n = getattr(data_config, "calibration_min_tokens", 0)
    if n:
        source = f"{source or 'kept apart'}, the rows of at least {n} tokens"
    return source


def calibration_rows(held_out, data_config):
    """How many of `held_out` rows `data_config` keeps apart for calibration (none when
    a calibration file gives the calibration rows)."""
    if getattr(data_config, "calibration_file", None):
        return 0
    share = float(getattr(data_config, "calibration_share", 0.0) or 0.0)
    apart = int(round(held_out * share))
    if share > 0 and held_out >= 2:
        apart = min(max(apart, 1), held_out - 1)  # both parts keep a row
    return apart if held_out >= 2 else 0


def _split_mask(num_rows, data_config, split):
    """`[num_rows]` bool, True for the rows of `split` (one of `TRAINING_SPLITS`)."""
    roles = _row_roles(num_rows, data_config)
    if split == "train":
        return roles == 0
    if split == "holdout":
        return roles == 1 if (roles == 2).any() else roles > 0
    if (roles == 2).any():
        return roles == 2
    return roles == 1  # no rows kept apart: calibration shares the selection rows


def _holdout_mask(num_rows, data_config):
    """`[num_rows]` bool, True for every row held out of training."""
    return _row_roles(num_rows, data_config) > 0


def _select_rows(examples, limit, data_config, split):
    count = len(examples) if limit is None else min(limit, len(examples))
    keep = np.flatnonzero(_split_mask(count, data_config, split))
    if not len(keep):
        raise ValueError(f"No rows left for the {split!r} split.")
    pick = lambda column: None if column is None else tuple(column[i] for i in keep)  # noqa: E731
    return dataclasses.replace(
        examples, texts=pick(examples.texts), pairs=pick(examples.pairs),
        labels=np.asarray(examples.labels)[keep],
    )


def _select_features(features, limit, data_config, split):
    if limit is not None:
        features = features.take(limit)
    count = _count(features)
    mask = tf.constant(_split_mask(count, data_config, split))
    if split != "train" and not bool(tf.reduce_any(mask)):
        raise ValueError("No rows are held out (--holdout_fraction=0).")
    keep = lambda i, _: mask[i]  # noqa: E731
    return features.enumerate().filter(keep).map(lambda _, x: x)


def _count(dataset):
    """The number of elements of a dataset (counted once if unknown)."""
    count = int(dataset.cardinality())
    return count if count >= 0 else sum(1 for _ in dataset)


def dataset_sizes(data_config, label_names=None):
    """`(train_rows, holdout_rows)` of a data config (after the holdout split)."""
    if data_config.task in CUSTOM_TASKS:
        total = len(_custom_examples(data_config, data_config.train_file, label_names))
    else:
        features = dact_data.load_glue(data_config.task, "train", glue_dir=data_config.data_dir)
        total = _count(features)
    if data_config.max_train_examples is not None:
        total = min(total, data_config.max_train_examples)
    holdout = int(_holdout_mask(total, data_config).sum())
    return total - holdout, holdout


def is_pair_task(config):
    """Whether a trained model (its `dact_config.json`) reads text pairs."""
    data = config["data"]
    if data["task"] in CUSTOM_TASKS:
        return data.get("text_pair_column") is not None
    return dact_data.glue_task(data["task"]).pair_feature is not None
