"""Training, evaluation and prediction for DACT models: what the CLI and the examples call.

A *model directory* holds everything a trained model needs:

    model_dir/
      dact_config.json     what was trained: task, labels, backbone spec, flags
      vocab.txt            the tokenizer's vocabulary (predict/export need no backbone)
      model.keras          the final model (written atomically)
      backup/              the training state every 50 batches and epoch: an interrupted
                           run resumes at the batch after it (`_Backup`)
      checkpoints/         the last --keep_checkpoints epochs' `.weights.h5`
      best/                the best epoch on the held-out rows (its weights only
                           while training: then they are model.keras's)
      stage1/              DACT's default recipe: the full-depth stage-1 model dir
      calibration.json     with --target_blocks: the halting-bias shift and blocks
      tensorboard/         TensorBoard: train/ (every --log_every_steps steps) and
                           validation/ (held-out rows, with dact/ halting curves)
      history.csv          per-epoch fit logs (appended across resumed runs)
      ponder.csv           per-epoch halting statistics (PonderCostLogger)
"""

import contextlib
import csv
import dataclasses
import itertools
import json
import os
import shutil
import tempfile
import time
import warnings

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from dact_tf import analysis
from dact_tf import calibration
from dact_tf import callbacks as dact_callbacks
from dact_tf import data as dact_data
from dact_tf import distribute
from dact_tf import exits
from dact_tf import files
from dact_tf import optimization
from dact_tf import progress
from dact_tf.models import backbones as backbones_lib
from dact_tf.models.dact_classifier import DactClassifier
from dact_tf.version import __version__

# The configs (one source of defaults) live in `dact_tf.config`.
from dact_tf.config import DataConfig  # noqa: F401
from dact_tf.config import ModelConfig  # noqa: F401
from dact_tf.config import TrainConfig  # noqa: F401

# The per-block analysis lives in `dact_tf.analysis`; these names stay here.
from dact_tf.analysis import format_per_block  # noqa: F401
from dact_tf.analysis import per_block_from_trace  # noqa: F401
from dact_tf.analysis import per_block_report  # noqa: F401
from dact_tf.analysis import trace_dataset  # noqa: F401

CONFIG_FILE = "dact_config.json"
MODEL_FILE = "model.keras"
VOCAB_FILE = "vocab.txt"
STAGE1_DIR = "stage1"
CUSTOM_TASKS = ("tsv", "csv")


# ----------------------------------------------------------------- data


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
        train = split in ("train", "holdout")
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
    return out


#: Fixed seed of the holdout split: every method and seed holds out the same rows.
_HOLDOUT_SEED = 20211

def _holdout_mask(num_rows, data_config):
    """`[num_rows]` bool, True for the rows held out of training."""
    count = int(round(num_rows * float(data_config.holdout_fraction)))
    count = min(count, int(data_config.max_holdout_examples or 0))
    if data_config.holdout_fraction > 0 and count < 1 and num_rows > 1:
        count = 1
    mask = np.zeros(num_rows, bool)
    if count:
        if count >= num_rows:
            raise ValueError(
                f"--holdout_fraction={data_config.holdout_fraction} would hold out all "
                f"{num_rows} training rows."
            )
        mask[np.random.default_rng(_HOLDOUT_SEED).permutation(num_rows)[:count]] = True
    return mask


def _select_rows(examples, limit, data_config, split):
    count = len(examples) if limit is None else min(limit, len(examples))
    mask = _holdout_mask(count, data_config)
    keep = np.flatnonzero(mask if split == "holdout" else ~mask)
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
    mask = tf.constant(_holdout_mask(count, data_config))
    if split == "holdout":
        if not bool(tf.reduce_any(mask)):
            raise ValueError("No rows are held out (--holdout_fraction=0).")
        keep = lambda i, _: mask[i]  # noqa: E731
    else:
        keep = lambda i, _: tf.logical_not(mask[i])  # noqa: E731
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


# --------------------------------------------------------------- model dir


def _atomic_write(path, write):
    """Calls `write(tmp_path)` then renames tmp_path to path."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        files.publish(tmp)  # mkstemp's 0600 -> what the umask gives (0644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_model_dir(model_dir, model, tokenizer, config):
    """Writes the final model, the vocabulary and the config, each atomically."""
    _atomic_write(os.path.join(model_dir, MODEL_FILE), model.save)

    def write_vocab(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(tokenizer.get_vocabulary()) + "\n")

    _atomic_write(os.path.join(model_dir, VOCAB_FILE), write_vocab)
    _write_config(model_dir, config)


def _write_config(model_dir, config):
    def write(path):
        with open(path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)

    _atomic_write(os.path.join(model_dir, CONFIG_FILE), write)


def read_config(model_dir, defaults=True):
    """The `dact_config.json` of a model directory, validated.

    Args:
        model_dir: str, the model directory.
        defaults: bool. True: the `data`, `model` and `train` fields a config
            of an older dact_tf lacks (added since) take their defaults from
            `DataConfig`, `ModelConfig` and `TrainConfig`; False: they stay
            absent (a resumed run compares only what was stored).

    Returns:
        The config, a dict.

    Raises:
        FileNotFoundError: there is no config.
        ValueError: the config is not valid JSON, is not a dact_tf model
            directory's, comes from a newer dact_tf or another method, or
            lacks a key every version writes, or a key has a wrong type;
            the message names the file and the key.
    """
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{model_dir} is not a dact_tf model directory (no {CONFIG_FILE}); "
            "train one with `dact-tf train --model_dir=...`."
        )
    with open(path) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}).") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a text file.") from None
    if not isinstance(config, dict) or config.get("format") != "dact_tf.model_dir":
        raise ValueError(f"{path}: not a dact_tf model directory config.")
    version = config.get("dact_tf_version", "0")
    major = str(version).split(".")[0]
    if not major.isdigit():
        raise ValueError(f"{path}: dact_tf_version must be a version like "
                         f"\"{__version__}\", got {version!r}.")
    if int(major) > int(__version__.split(".")[0]):
        raise ValueError(
            f"{model_dir} was written by dact_tf {version}, "
            f"newer than this dact_tf {__version__}."
        )
    method = config.get("method", "dact")
    if not isinstance(method, str) or method not in exits.names():
        raise ValueError(
            f"{model_dir} holds a {method!r} model, which this dact_tf "
            f"{__version__} does not know (it runs {', '.join(exits.names())})."
        )
    config = _checked_config(config, path, defaults)
    if defaults:
        config.setdefault("method", "dact")  # configs before the baselines
    return config


#: Keys every dact_tf version wrote: a config without one is refused.
_REQUIRED_KEYS = ("lowercase", "label_names", "data", "data.task", "data.max_seq_length")
_FIELD_MINIMUM = {"data.max_seq_length": 1, "data.batch_size": 1}


def _checked_config(config, path, defaults):
    """`read_config`'s key and type checks (and defaults) of a parsed config."""
    config = dict(config)

    def refuse(key, problem):
        raise ValueError(f"{path}: {problem} {key!r}; train the model again, or restore "
                         "the file.")

    for key in _REQUIRED_KEYS:
        section, _, name = key.rpartition(".")
        holder = config.get(section) if section else config
        if isinstance(holder, dict) and name not in holder:
            refuse(key, "lacks the key")
    if not isinstance(config["lowercase"], bool):
        refuse("lowercase", "needs true or false at")
    labels = config["label_names"]
    if labels is not None and not (
            isinstance(labels, list) and labels and all(isinstance(n, str) for n in labels)):
        refuse("label_names", "needs a list of label names (or null) at")
    for section, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
        stored = config.get(section, {})
        if not isinstance(stored, dict):
            refuse(section, "needs an object at")
        stored = dict(stored)
        for field in dataclasses.fields(cls):
            key = f"{section}.{field.name}"
            if field.name not in stored:
                if defaults:
                    stored[field.name] = field.default
                continue
            value = stored[field.name]
            if not _has_type(value, field):
                kind = getattr(field.type, "__name__", str(field.type))
                refuse(key, f"needs {'a' if kind != 'int' else 'an'} {kind}"
                       + (" (or null)" if field.default is None else "") + " at")
            if key in _FIELD_MINIMUM and value < _FIELD_MINIMUM[key]:
                refuse(key, f"needs a value >= {_FIELD_MINIMUM[key]} at")
        config[section] = stored
    return config


def _has_type(value, field):
    """Whether a stored config value fits its dataclass field's type."""
    if value is None:
        return field.default is None
    kind = field.type
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return isinstance(value, (int, float))
    if kind is str:
        # A column may be stored as its index.
        return isinstance(value, str) or (field.name.endswith("_column")
                                          and isinstance(value, int))
    return True


def load_model_dir(model_dir):
    """Loads `(model, preprocessor, config)` from a trained model directory."""
    config = read_config(model_dir)
    model_path = os.path.join(model_dir, MODEL_FILE)
    if not os.path.exists(model_path):
        raise FileNotFoundError(
            f"{model_path} is missing: training did not finish. Run the same "
            "`dact-tf train` command again to resume it."
        )
    try:
        model = keras.models.load_model(model_path, safe_mode=True)
    except Exception as e:  # a truncated or foreign file: zip, h5 or config errors
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"{model_path} is not a readable dact_tf model ({type(e).__name__}: {first}). "
            "Train it again (delete the folder), or restore the file."
        ) from None
    _check_model_matches(model, config, model_path)
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=os.path.join(model_dir, VOCAB_FILE), lowercase=config["lowercase"]
    )
    preprocessor = backbones_lib.make_preprocessor(
        tokenizer, sequence_length=config["data"]["max_seq_length"]
    )
    return model, preprocessor, config


def _check_model_matches(model, config, model_path):
    """Refuses a model file of another kind than its directory's config."""
    if not isinstance(model, DactClassifier):
        raise ValueError(f"{model_path} holds a {type(model).__name__}, not a dact_tf model.")
    method = config.get("method", "dact")
    labels = config.get("label_names")
    regression = (config.get("data", {}).get("task") == "stsb")
    problems = []
    if model.method != method:
        problems.append(f"method {model.method!r}, the config says {method!r}")
    if regression != (model.task == "regression"):
        problems.append(f"task {model.task!r}, the config's data is "
                        f"{'regression' if regression else 'classification'}")
    elif labels and model.task != "regression" and model.num_classes != len(labels):
        problems.append(f"{model.num_classes} classes, the config names {len(labels)} labels")
    if problems:
        raise ValueError(f"{model_path} does not belong to its directory: "
                         + "; ".join(problems) + ".")


# ------------------------------------------------------------------ train


#: TrainConfig fields a resumed run may change: they do not change what is
#: trained (output, logging, where it runs).
_RESUME_FREE = ("verbose", "keep_checkpoints", "log_every_steps", "distribution_strategy",
                "tpu_address", "jit_compile")


def _criterion(model_config):
    """The exit criterion `model_config` describes: its method, with that method's knobs."""
    return exits.from_options(model_config.method, model_config)


def _stored_model_config(model_config):
    """The model config `train` stores (DACT's stage 1 is not the user's init_from)."""
    if (_criterion(model_config).accumulates and model_config.full_depth_stage
            and not model_config.init_from):
        return dataclasses.replace(model_config, init_from=None)
    return model_config


def _check_same_run(model_dir, data_config, model_config, train_config):
    """Refuses a re-run whose flags change what the directory's run trains.

    Returns True when the directory holds this run, finished.
    """
    if not os.path.exists(os.path.join(model_dir, CONFIG_FILE)):
        return False
    # Fields an older dact_tf did not store are not compared.
    old = read_config(model_dir, defaults=False)
    new = {"data": dataclasses.asdict(data_config),
           "model": dataclasses.asdict(_stored_model_config(model_config)),
           "train": dataclasses.asdict(train_config)}
    for part in ("data", "model", "train"):
        stored = old.get(part) or {}
        for key, value in new[part].items():
            if part == "train" and key in _RESUME_FREE:
                continue
            if key in stored and stored[key] != value:
                finished = os.path.exists(os.path.join(model_dir, MODEL_FILE))
                hint = (" A finished run is not extended: train a new --model_dir with "
                        f"--init_from={model_dir}." if finished and key == "epochs" else
                        " Re-run with the stored value to resume, or use another --model_dir.")
                raise ValueError(
                    f"{model_dir} holds a different run: --{key}={value} differs "
                    f"(it was trained with {key}={stored[key]}).{hint}")
    return os.path.exists(os.path.join(model_dir, MODEL_FILE))


def train(model_dir, data_config, model_config, train_config, extra_callbacks=()):
    """Fine-tunes a model into `model_dir`, resuming or reusing what is there.

    A directory holding this same run, finished, is not trained again: its
    model is loaded and returned (with an empty history). A re-run whose
    data, model or training flags differ from the stored run is refused
    with a `ValueError` naming the flag; a directory another live process
    is training into is refused too (`dact_tf.files.ModelDirLock`).
    See `_train` for what training does.
    """
    if _check_same_run(model_dir, data_config, model_config, train_config):
        if train_config.verbose:
            print(f"{model_dir} already holds this finished run: nothing to train "
                  "(delete the folder to train again).")
        model, preprocessor, _ = load_model_dir(model_dir)
        return model, preprocessor, {}
    os.makedirs(model_dir, exist_ok=True)
    if train_config.distribution_strategy == "multi_worker_mirrored":
        # The workers of one cluster share the directory by design (only the
        # chief writes it): no lock between them.
        return _train(model_dir, data_config, model_config, train_config, extra_callbacks)
    with files.ModelDirLock(model_dir):
        return _train(model_dir, data_config, model_config, train_config, extra_callbacks)


def _train(model_dir, data_config, model_config, train_config, extra_callbacks=()):
    """Fine-tunes a DACT model; resumes an interrupted run in the same dir.

    The default recipe (`ModelConfig`, `TrainConfig`): stage 1 fine-tunes
    the plain full-depth model (`model_dir/stage1/`), stage 2 trains DACT
    from it with self-distillation; both with AdamW, warm-up and linear
    decay, keeping the best epoch on rows held out of the training data.
    Every stage resumes from its own backup; a finished stage is not redone.

    The model is built and compiled under `train_config.distribution_strategy`
    (see `dact_tf.distribute.get_strategy`); `data_config.batch_size` is the
    global batch, split across replicas. In a multi-worker cluster the chief
    writes `model_dir` and every other worker writes its own copy under
    `model_dir/workers/<type>_<index>/`. Under `train_config.mixed_precision`
    the model computes in 16 bits with float32 variables, and the DACT math
    stays in float32.

    Args:
        model_dir: str, the model directory (see the module docstring).
        data_config: `DataConfig`.
        model_config: `ModelConfig`.
        train_config: `TrainConfig`.
        extra_callbacks: more Keras callbacks.

    Returns:
        `(model, preprocessor, history)`; history is a dict of lists (and,
        with `target_blocks`, `"calibration"`: the result of
        `dact_tf.calibration.calibrate_halting_bias`).
    """
    criterion = _criterion(model_config)
    dact = criterion.accumulates  # DACT's recipe: stage 1, confidence, calibration
    if model_config.target_blocks and not dact:
        raise ValueError("--target_blocks sets DACT's halting; it needs --method=dact.")
    if dact and model_config.target_blocks != 0 and not data_config.holdout_fraction:
        raise ValueError(
            "DACT's --target_blocks is calibrated on held-out rows: set --holdout_fraction > 0, "
            "or --target_blocks=0 to let tau alone decide."
        )
    if dact and model_config.full_depth_stage and not model_config.init_from:
        stage1_dir = os.path.join(model_dir, STAGE1_DIR)
        if not os.path.exists(os.path.join(stage1_dir, MODEL_FILE)):
            if train_config.verbose:
                print(f"Stage 1 of 2: plain full-depth fine-tuning ({stage1_dir})")
            train(stage1_dir, data_config, full_depth_config(model_config), train_config,
                  extra_callbacks)
            keras.backend.clear_session()
        if train_config.verbose:
            print("Stage 2 of 2: DACT, from the stage-1 model")
        stored = _stored_model_config(model_config)
        model_config = dataclasses.replace(model_config, init_from=stage1_dir)
    else:
        stored = model_config
    num_classes, regression, label_names, _ = task_info(data_config)
    strategy = distribute.get_strategy(
        train_config.distribution_strategy, train_config.tpu_address
    )
    if not distribute.is_chief(strategy):
        model_dir = os.path.join(model_dir, "workers", distribute.worker_id(strategy))
    os.makedirs(model_dir, exist_ok=True)
    keras.utils.set_random_seed(data_config.seed)
    policy = distribute.mixed_precision_policy(train_config.mixed_precision)
    with strategy.scope(), _dtype_policy(policy):
        backbone, tokenizer = backbones_lib.load_backbone(
            model_config.backbone, max_sequence_length=data_config.max_seq_length,
            seed=data_config.seed,
        )
        preprocessor = backbones_lib.make_preprocessor(
            tokenizer, sequence_length=data_config.max_seq_length
        )
        model = DactClassifier(
            backbone,
            num_classes=num_classes,
            task="regression" if regression else "classification",
            output_range=(0.0, 5.0) if regression else None,
            label_names=label_names,
            tau=model_config.tau,
            halting_bias=model_config.halting_bias,
            # Confidence-reading halting units need a class distribution.
            halting_confidence=(
                model_config.halting_confidence if dact and not regression else 0.0),
            shared_heads=model_config.shared_heads,
            regression_tolerance=model_config.regression_tolerance,
            dropout=model_config.dropout,
            head_loss_weight=model_config.head_loss_weight,
            distill_weight=model_config.distill_weight if dact else 0.0,
            pooling=model_config.pooling,
            method=criterion,
            num_layers=model_config.num_layers,
        )
        if model_config.freeze_backbone:
            # Train the heads only (e.g. on a warm-started, fine-tuned backbone).
            model.backbone.trainable = False
    holdout = bool(data_config.holdout_fraction)
    target = None
    if dact and model_config.target_blocks != 0:
        target = model_config.target_blocks or model.num_layers / 2.0
        if not 1.0 <= target <= model.num_layers:
            raise ValueError(
                f"--target_blocks must be in [1, {model.num_layers}] (the model's blocks), "
                f"got {target:g}."
            )
    train_rows, _ = dataset_sizes(data_config, label_names)
    steps_per_epoch = max(1, -(-train_rows // data_config.batch_size))
    total_steps = steps_per_epoch * train_config.epochs
    with strategy.scope():
        _compile(model, train_config, total_steps)
    resuming = any(_Backup.read_state(os.path.join(model_dir, "backup" + _stage_suffix(stage)))
                   for stage in (1, 2))
    if model_config.init_from and not resuming:
        # (A resumed run restores every weight from its backup.)
        _warm_start(model, model_config.init_from)
    splits = ("holdout", "validation") if holdout else ("validation",)
    datasets = {
        split: _shard_by_data(ds)
        for split, ds in make_datasets(data_config, preprocessor, label_names, splits).items()
    }
    batches_per_epoch = None

    def epoch_data(epoch):
        # Every epoch has its own shuffling seed and a fresh dataset, so its
        # order is the same in a resumed process as in an uninterrupted one.
        config = dataclasses.replace(data_config, seed=_epoch_seed(data_config.seed, epoch))
        dataset = _shard_by_data(
            make_datasets(config, preprocessor, label_names, ("train",))["train"])
        if batches_per_epoch is not None:
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches_per_epoch))
        return dataset

    first = epoch_data(0)
    if int(first.cardinality()) >= 0:
        batches_per_epoch = int(first.cardinality())
    elif not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Length buckets make the number of batches depend on the data (not
        # on the order): count it once, so every epoch's bar has an ETA.
        batches_per_epoch = sum(1 for _ in progress.iterate(
            first, train_config.verbose, "Preparing the training batches"))
    # Model selection and the halting logs read held-out training rows,
    # never the evaluation set.
    selection = datasets["holdout" if holdout else "validation"]
    config = {
        "format": "dact_tf.model_dir",
        "dact_tf_version": __version__,
        "method": model_config.method,
        "lowercase": bool(getattr(tokenizer, "lowercase", True)),
        "label_names": label_names,
        "data": dataclasses.asdict(data_config),
        "model": dataclasses.asdict(stored),
        "train": dataclasses.asdict(train_config),
    }
    _check_resumable(model_dir, config)
    _write_config(model_dir, config)
    monitor = ("val_mae", "min") if regression else ("val_accuracy", "max")

    logs = [os.path.join(model_dir, "history.csv"), os.path.join(model_dir, "ponder.csv")]

    def callbacks(stage, backup):
        suffix = _stage_suffix(stage)
        cbs = [
            dact_callbacks.PonderCostLogger(
                selection,
                log_dir=os.path.join(model_dir, "tensorboard"),
                csv_path=logs[1],
            ),
            keras.callbacks.TensorBoard(
                os.path.join(model_dir, "tensorboard" + suffix),
                update_freq=train_config.log_every_steps or "epoch"),
            keras.callbacks.CSVLogger(logs[0], append=True),
            *extra_callbacks,
        ]
        if train_config.keep_checkpoints:
            cbs[1:1] = _epoch_checkpoints(os.path.join(model_dir, "checkpoints"), suffix,
                                          train_config.keep_checkpoints)
        if train_config.keep_best_epoch:
            # After the checkpoint callbacks: they save the epoch as trained;
            # this restores the best one when training ends.
            cbs.append(dact_callbacks.KeepBestEpoch(
                *monitor, os.path.join(model_dir, "best" + suffix)))
        if dact:
            # tau grows from 0 while the heads learn to answer: with untrained
            # heads the ponder cost alone would drive every example to halt
            # at block 1. With a compute target, tau is then steered towards it.
            warmup = int(round(model_config.tau_warmup_epochs * steps_per_epoch))
            if target is None:
                tau = dact_callbacks.TauScheduler(
                    dact_callbacks.LinearTauWarmup(model_config.tau, warmup))
            else:
                # About 40 measurements of the blocks (on 2 held-out batches)
                # after the warm-up, however short or long the run.
                # A small gain: tau may move about e^6 over a run at a
                # persistent half-depth error, smoothly (a sudden jump can
                # collapse every example onto block 1).
                # tau stays within [tau / 30, 3 tau]: on small data (2,000
                # SST-2 rows) an unbounded controller drove tau 10x up and
                # collapsed training accuracy to 0.61; the final calibration
                # reaches the target from wherever the bound leaves it.
                interval = max(1, (total_steps - warmup) // 40)
                tau = dact_callbacks.TargetBlocksTau(
                    target, model_config.tau, warmup, data=selection.take(2),
                    interval=interval, gain=0.3,
                    tau_range=(model_config.tau / 30, 3 * model_config.tau))
            cbs.insert(0, tau)
        # Last: an epoch's backup is written once every log of it is.
        cbs.append(backup)
        return cbs

    def fit(stage):
        with warnings.catch_warnings():
            # Bucketed batches have no known count: Keras learns it in the
            # first epoch and warns that the data "ran out" (it did not).
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
            return _fit(stage)

    def _fit(stage):
        # One backup per stage (DeeBERT has two): a resumed run continues
        # the stage it was in, at the batch of its last backup.
        backup = _Backup(os.path.join(model_dir, "backup" + _stage_suffix(stage)),
                         save_freq=_BACKUP_EVERY, logs=logs)
        return _fit_resumably(model, epoch_data, selection, train_config.epochs,
                              callbacks(stage, backup), backup, batches_per_epoch,
                              train_config.verbose)

    if model.exit_criterion.training_stages == 2:
        # DeeBERT's stage 1 is plain full-depth fine-tuning: a model to
        # warm-start from already is that stage.
        history = _fit_two_stages(model, model_dir, train_config, fit, total_steps,
                               stage1_done=bool(model_config.init_from))
    else:
        history = fit(1)
    if target is not None:
        result = calibration.calibrate_halting_bias(model, datasets["holdout"], target)
        result["holdout_layers_executed"] = float(
            dact_callbacks.halting_statistics(model, datasets["holdout"])["mean_layers_executed"]
        )
        history["calibration"] = result
        write_json(os.path.join(model_dir, "calibration.json"), result)
    save_model_dir(model_dir, model, tokenizer, config)
    # The model is saved: the stages' backups are no longer needed.
    for stage in (1, 2):
        shutil.rmtree(os.path.join(model_dir, "backup" + _stage_suffix(stage)),
                      ignore_errors=True)
    # The best epoch's weights are in model.keras now; their copy (kept for
    # a resume) would only double the directory's size.
    # (best*/best_epoch.json stays: which epoch was kept.)
    for name in os.listdir(model_dir):
        path = os.path.join(model_dir, name, "best.weights.h5")
        if (name == "best" or name.startswith("best_stage")) and os.path.exists(path):
            os.remove(path)
    return model, preprocessor, history


def _epoch_checkpoints(directory, suffix, keep):
    """A per-epoch weights checkpoint, and a callback keeping only the newest `keep`."""
    pattern = f"epoch{suffix}_{{epoch:02d}}.weights.h5"

    def prune(epoch, logs=None):
        del logs
        for old in range(epoch + 1 - keep):
            path = os.path.join(directory, pattern.format(epoch=old + 1))
            if os.path.exists(path):
                os.remove(path)

    return [keras.callbacks.ModelCheckpoint(os.path.join(directory, pattern),
                                            save_weights_only=True),
            keras.callbacks.LambdaCallback(on_epoch_end=prune)]


def full_depth_config(model_config):
    """The stage-1 model of the default DACT recipe: a plain full-depth fine-tune.

    The same backbone, pooling and dropout, trained on the last block's
    answer only (`method="static"` with every block): the "full depth"
    baseline of the study.
    """
    return dataclasses.replace(
        model_config, method="static", num_layers=None, head_loss_weight=0.0,
        distill_weight=0.0, halting_confidence=0.0, full_depth_stage=False,
        target_blocks=None, init_from=None, freeze_backbone=False,
    )


def _warm_start(model, source):
    """Loads the weights of another trained model with the same architecture.

    `source` is a model directory, a `.keras` file or a `.weights.h5` file,
    e.g. a `--method=static` full-depth model: a warm-up stage of plain
    fine-tuning before DACT training. Only a fresh run warm-starts; a
    resumed one continues from its own backup.

    Args:
        model: the built, compiled `DactClassifier` to load into.
        source: str, the `--init_from` path.

    Raises:
        FileNotFoundError: `source` does not exist.
        ValueError: `source` is of another kind, unreadable (truncated,
            corrupt) or from another architecture; the message names it.
    """
    if os.path.isdir(source):
        source = os.path.join(source, MODEL_FILE)
    if not os.path.exists(source):
        raise FileNotFoundError(f"--init_from {source} does not exist.")
    if not source.endswith((".keras", ".weights.h5")) or os.path.isdir(source):
        raise ValueError(f"--init_from {source}: expected a model directory, a .keras file or "
                         "a .weights.h5 file.")
    # tau and head_loss_weight are settings stored as variables: keep this
    # run's, not the source's.
    settings = (model.tau, model.head_loss_weight)
    try:
        with warnings.catch_warnings():
            # A `.keras` file carries its optimizer's state, which a warm
            # start does not want.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(source)
    except ValueError as e:
        raise ValueError(
            f"--init_from {source}: its weights do not fit this model ({_first_line(e)}). It "
            "must come from the same backbone, number of classes and blocks."
        ) from e
    except Exception as e:  # truncated or corrupt: zip, HDF5 and JSON errors of every kind
        raise ValueError(
            f"--init_from {source} is not a readable model file ({type(e).__name__}: "
            f"{_first_line(e)}); it may be truncated: copy or train it again."
        ) from e
    model.tau, model.head_loss_weight = settings


def _first_line(error, limit=200):
    """The first line of an exception's message, at most `limit` characters."""
    return (str(error).strip().splitlines() or [""])[0][:limit]


#: Batches between two backups of the training state (and one at every epoch end).
_BACKUP_EVERY = 50


def _stage_suffix(stage):
    """The suffix of a training stage's backup, checkpoint and best folders."""
    return "" if stage == 1 else f"_stage{stage}"


def _epoch_seed(seed, epoch):
    """The shuffling seed of one epoch: a function of the run's seed and the epoch only."""
    if seed is None:
        return None
    return (int(seed) + 1_000_003 * int(epoch)) % (2**31 - 1)


def _csv_rows(path):
    """The data rows (lines after the header) of a CSV log; 0 if there is none."""
    if not os.path.exists(path):
        return 0
    with open(path, newline="") as f:
        return max(0, sum(1 for _ in csv.reader(f)) - 1)


def _trim_csv(path, rows):
    """Keeps a CSV log's header and its first `rows` data rows (drops the others)."""
    if not os.path.exists(path) or _csv_rows(path) <= rows:
        return
    with open(path, newline="") as f:
        kept = list(itertools.islice(csv.reader(f), rows + 1))

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    _atomic_write(path, write)


class _Backup(keras.callbacks.Callback):
    """Backs the training state up every `save_freq` batches and at every epoch end.

    What Keras' `BackupAndRestore` does not: a resumed run continues at the
    batch after the last backup, not at the start of its epoch (Keras 3
    restores the epoch only, so the batches of the interrupted epoch were
    trained twice), and a backup is either complete or absent. Each backup
    is a weights file (model and optimizer state) with a new name, then
    `state.json` (written atomically) naming it with the position reached,
    `{"epoch": e, "batches": k, "weights": ..., "rows": ..., "metrics": ...,
    "rng": ...}`: the first k batches of epoch e are trained. `rows` counts
    the lines of the CSV logs then (a resumed run drops the rows written
    after it: an epoch logged but not backed up is trained and logged
    again); `metrics` holds the epoch's running metric sums and `rng` the
    dropout generators' states, which the weights file lacks, so that a
    resumed run logs and trains what an uninterrupted one does.

    The caller feeds the data from `start_epoch`, skipping the first
    `start_batches` batches of that epoch (with that epoch's order), and
    deletes the folder once the stage's model is saved. Put it after the
    callbacks that log an epoch, so an epoch's backup follows its logs.

    Args:
        backup_dir: str, the folder of the backup (one per training stage).
        save_freq: int >= 1, batches between two backups.
        logs: paths of CSV logs appended once an epoch (history.csv, ...).
    """

    STATE = "state.json"

    def __init__(self, backup_dir, save_freq=_BACKUP_EVERY, logs=()):
        super().__init__()
        self.backup_dir = backup_dir
        self.save_freq = int(save_freq)
        self.logs = tuple(logs)
        self.state = self.read_state(backup_dir)
        self.start_epoch = self.state["epoch"] if self.state else 0
        self.start_batches = self.state["batches"] if self.state else 0
        self._epoch, self._batches, self._saved_at = self.start_epoch, self.start_batches, 0
        self._pending_metrics = {}

    @classmethod
    def read_state(cls, backup_dir):
        """The last complete backup's state (a dict), or None when there is none.

        Args:
            backup_dir: str, the backup folder.

        Returns:
            None, or a dict with `epoch`, `batches`, `weights` (a file name in
            `backup_dir`), `rows`, `metrics` and `rng` (see the class). A
            backup of an older dact_tf (Keras' `training_metadata.json` and
            `latest.weights.h5`) gives its epoch and batch.

        Raises:
            ValueError: the state is unreadable.
        """
        path = os.path.join(backup_dir, cls.STATE)
        legacy = os.path.join(backup_dir, "training_metadata.json")
        try:
            if os.path.exists(path):
                with open(path) as f:
                    state = json.load(f)
                epoch, batches = int(state["epoch"]), int(state["batches"])
                weights = str(state["weights"])
            elif os.path.exists(legacy) and os.path.exists(
                    os.path.join(backup_dir, "latest.weights.h5")):
                with open(legacy) as f:
                    state = json.load(f)
                epoch, batch = int(state["epoch"]), int(state.get("batch", 0))
                # Keras recorded the index of the last batch trained (0: an epoch end).
                batches, weights, state = (batch + 1 if batch else 0), "latest.weights.h5", {}
            else:
                return None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"{path}: the training backup is unreadable ({type(e).__name__}: {e}). "
                f"Delete {backup_dir} to restart this training stage.") from None
        if os.path.basename(weights) != weights or epoch < 0 or batches < 0:
            raise ValueError(f"{path}: not a dact_tf training backup. Delete {backup_dir} "
                             "to restart this training stage.")

        def part(key, kind):
            value = state.get(key)
            return value if isinstance(value, kind) else kind()

        return {"epoch": epoch, "batches": batches, "weights": weights,
                "rows": part("rows", dict), "metrics": part("metrics", dict),
                "rng": part("rng", list)}

    def restore_logs(self):
        """Drops the CSV log rows written after the backup (call before `fit`)."""
        if self.state:
            for path in self.logs:
                rows = self.state["rows"].get(os.path.basename(path))
                if isinstance(rows, int):
                    _trim_csv(path, rows)

    def _rng_variables(self):
        # Dropout's generators: model variables outside its weights.
        return [v for v in self.model.variables if v.path.endswith("seed_generator_state")]

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            # Its state is part of a backup, written or read.
            optimizer.build(self.model.trainable_variables)
        if not self.state:
            # The initial state: a run killed before its first backup
            # restarts from here (and drops any log row written since).
            self._save()
            return
        path = os.path.join(self.backup_dir, self.state["weights"])
        try:
            self.model.load_weights(path)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(
                f"{path}: the training backup is unreadable ({type(e).__name__}). "
                f"Delete {self.backup_dir} to restart this training stage.") from None
        variables, values = self._rng_variables(), self.state["rng"]
        if len(values) == len(variables):
            for variable, value in zip(variables, values):
                variable.assign(np.asarray(value, dtype=variable.dtype))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._batches = self.start_batches if epoch == self.start_epoch else 0
        self._saved_at = self._batches
        if self._batches:
            # `fit` has just reset the metrics: the resumed epoch's get back
            # the sums of the batches it already trained, so that its logs
            # cover the whole epoch. Metrics Keras builds at the first step
            # get theirs then.
            self._pending_metrics = dict(self.state["metrics"])
            self._restore_metrics(initial=True)

    def _restore_metrics(self, initial):
        for variable in self.model.metrics_variables:
            value = self._pending_metrics.pop(variable.path, None)
            if value is not None:
                value = np.asarray(value, dtype=variable.dtype)
                if initial:
                    variable.assign(value)
                else:
                    variable.assign_add(value)

    def on_train_batch_end(self, batch, logs=None):
        if self._pending_metrics:
            self._restore_metrics(initial=False)
            self._pending_metrics = {}
        # `batch` counts from 0 in every `fit` call; the resumed epoch's call
        # starts after the batches it skips.
        offset = self.start_batches if self._epoch == self.start_epoch else 0
        self._batches = offset + int(batch) + 1
        if self._batches - self._saved_at >= self.save_freq:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._epoch, self._batches = epoch + 1, 0
        self._save()

    def _save(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"epoch{self._epoch:03d}_batch{self._batches:07d}.weights.h5"
        _atomic_write(os.path.join(self.backup_dir, name), self.model.save_weights)
        write_json(os.path.join(self.backup_dir, self.STATE), {
            "epoch": self._epoch, "batches": self._batches, "weights": name,
            "rows": {os.path.basename(path): _csv_rows(path) for path in self.logs},
            "metrics": {v.path: np.asarray(v.numpy()).tolist()
                        for v in self.model.metrics_variables},
            "rng": [np.asarray(v.numpy()).tolist() for v in self._rng_variables()],
        })
        self._saved_at = self._batches
        for old in os.listdir(self.backup_dir):
            if old.endswith(".weights.h5") and old != name and not old.startswith(".tmp-"):
                os.remove(os.path.join(self.backup_dir, old))


class _OneRunCallbacks(keras.callbacks.CallbackList):
    """The callbacks of one training run spread over one `fit` call per epoch.

    They see one `on_train_begin` (the first call's) and one `on_train_end`
    (once `last` is set), as in a single `fit`.
    """

    def __init__(self, callbacks, **kwargs):
        super().__init__(callbacks, **kwargs)
        self.last = False
        self._begun = False

    def on_train_begin(self, logs=None):
        if not self._begun:
            self._begun = True
            super().on_train_begin(logs)

    def on_train_end(self, logs=None):
        if self.last:
            super().on_train_end(logs)


def _fit_resumably(model, epoch_data, validation_data, epochs, callbacks, backup,
                   batches_per_epoch=None, verbose=1):
    """Trains `epochs` epochs, continuing exactly where `backup`'s last backup left off.

    Keras' `fit` can only start an epoch at its first batch, so every epoch
    is one `fit` call on that epoch's data (the resumed epoch's without the
    batches already trained), with the callbacks of a single run.

    Args:
        model: a compiled model.
        epoch_data: `epoch -> tf.data.Dataset`, the batches of that epoch, in
            the same order in every process.
        validation_data: the data `fit` validates on after each epoch.
        epochs: int, the epochs of the stage.
        callbacks: list of Keras callbacks; `backup` among them (last).
        backup: the stage's `_Backup`.
        batches_per_epoch: int or None (unknown), for the progress bar.
        verbose: 0 (silent) or 1 (a progress bar).

    Returns:
        The history, a dict of per-epoch lists (the epochs this call trained).
    """
    backup.restore_logs()
    history = keras.callbacks.History()
    run = _OneRunCallbacks([*callbacks, history], add_progbar=verbose != 0, model=model,
                           verbose=verbose, epochs=epochs, steps=batches_per_epoch)
    epoch, skip = backup.start_epoch, backup.start_batches
    if epoch >= epochs:
        # Trained, not yet saved: restore the state and end the run (no epoch).
        run.last = True
        model.fit(epoch_data(epochs - 1).take(1), initial_epoch=epochs, epochs=epochs,
                  callbacks=run, verbose=verbose)
        return history.history
    for epoch in range(epoch, epochs):
        data = epoch_data(epoch)
        steps = batches_per_epoch
        if skip:
            data, steps = data.skip(skip), (None if steps is None else steps - skip)
        run.set_params({**run.params, "steps": steps})
        run.last = epoch == epochs - 1
        model.fit(data, validation_data=validation_data, initial_epoch=epoch,
                  epochs=epoch + 1, callbacks=run, verbose=verbose)
        skip = 0
        if model.stop_training and not run.last:  # e.g. EarlyStopping
            run.last = True
            run.on_train_end()
            break
    return history.history


def _compile(model, train_config, total_steps):
    model.compile(
        optimizer=optimization.make_optimizer(
            train_config.optimizer, train_config.learning_rate, total_steps=total_steps,
            warmup_fraction=train_config.warmup_fraction,
            weight_decay=train_config.weight_decay,
        ),
        jit_compile=train_config.jit_compile,
    )


def _fit_two_stages(model, model_dir, train_config, fit, total_steps, stage1_done=False):
    """A two-stage method's training (DeeBERT); a finished first stage is never redone.

    Stage 1 trains the whole model on the last block's loss and saves
    `<method>_stage1.weights.h5` (atomically); stage 2
    (`model.start_second_stage()`: DeeBERT freezes the backbone and trains
    the intermediate heads) runs with a fresh optimizer.
    """
    stage1 = os.path.join(model_dir, f"{model.method}_stage1.weights.h5")
    history = {}
    if stage1_done:
        pass  # warm-started from a fine-tuned full-depth model
    elif os.path.exists(stage1):
        model.load_weights(stage1)
    else:
        history = {f"stage1_{k}": v for k, v in fit(1).items()}
        _atomic_write(stage1, model.save_weights)
    # Stage 1 is saved: its backup is no longer needed.
    shutil.rmtree(os.path.join(model_dir, "backup" + _stage_suffix(1)), ignore_errors=True)
    model.start_second_stage()
    _compile(model, train_config, total_steps)
    history.update({f"stage2_{k}": v for k, v in fit(2).items()})
    return history


@contextlib.contextmanager
def _dtype_policy(policy):
    """Builds layers under `policy`, then restores the global policy."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _shard_by_data(dataset):
    # The pipeline reads one file through tfds or from memory: multi-worker
    # training shards it by element rather than by file.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _check_resumable(model_dir, config):
    """Refuses to resume a run of a different model in the same dir."""
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    old = read_config(model_dir)
    for key in ("method", "data", "model"):
        if old.get(key) != config[key]:
            raise ValueError(
                f"{model_dir} holds a different run ({key} differs: "
                f"{old.get(key)} vs {config[key]}). Use another --model_dir, "
                "or delete this one to start over."
            )


# --------------------------------------------------------------- evaluate


def predict_dataset(model, dataset, full_depth=False, verbose=0, max_layers=None):
    """Runs the model over a dataset; returns `(outputs dict, labels)`.

    Args:
        model: a `DactClassifier`.
        dataset: `(features, labels)` batches.
        full_depth: bool, run every block (no early exit).
        verbose: 0 (silent) or 1 (a progress counter on stderr).
        max_layers: None, or int >= 1: cap every row at this many blocks
            (anytime answers; adds the output `exact`).
    """
    if max_layers is None:
        def call(f):
            return model(f, training=False, full_depth=full_depth)
    else:
        if int(max_layers) < 1:
            raise ValueError(f"max_layers must be >= 1, got {max_layers}.")

        def call(f):
            rows = tf.shape(f["token_ids"])[:1]
            return model(f, training=False, max_layers=tf.fill(rows, int(max_layers)))
    fn = tf.function(call, reduce_retracing=True)
    outputs, labels = {}, []
    label = "Predicting (full depth)" if full_depth else "Predicting"
    for features, y in progress.iterate(dataset, verbose, label):
        for key, value in fn(features).items():
            outputs.setdefault(key, []).append(value.numpy())
        labels.append(y.numpy())
    if not labels:
        raise ValueError("Got an empty dataset: nothing to predict.")
    return {k: np.concatenate(v) for k, v in outputs.items()}, np.concatenate(labels)


def evaluate(model, dataset, metric_task, verbose=0, max_layers=None):
    """The task metrics and the blocks executed of a model on a dataset.

    `verbose=1` shows a progress counter on stderr. With `max_layers=K`
    every row is capped at K blocks (anytime answers) and the results add
    `max_layers` and `exact_fraction`, the fraction of rows that finished
    by the exit rule within the cap (their answer is the uncapped one).

    Returns:
        A dict: the task metric(s), `mean_layers_executed`, `num_layers`,
        `layers_histogram` (examples per number of blocks 1..N),
        `ideal_speedup` and `num_examples`.
    """
    outputs, labels = predict_dataset(model, dataset, verbose=verbose, max_layers=max_layers)
    results = results_from_outputs(model, outputs, labels, metric_task)
    if max_layers is not None:
        results.update(max_layers=int(max_layers),
                       exact_fraction=float(outputs["exact"].mean()))
    return results


def results_from_outputs(model, outputs, labels, metric_task):
    """`evaluate`'s results from outputs of `predict_dataset` (early exit)."""
    preds = outputs["scores"] if model.task == "regression" else outputs["predictions"]
    results = analysis.task_metrics(metric_task, labels, preds)
    layers = outputs["layers_executed"]
    n = model.num_layers
    results.update(model.exit_criterion.summary())
    results.update(
        method=model.method,
        mean_layers_executed=float(layers.mean()),
        num_layers=n,
        layers_histogram=np.bincount(layers, minlength=n + 1)[1:].tolist(),
        ideal_speedup=float(n / layers.mean()),
        num_examples=int(len(layers)),
    )
    return results


def measure_speedup(model, dataset, repeats=3, verbose=0):
    """Wall-clock time of early exit vs full depth over a dataset (same run).

    Args:
        model: a `DactClassifier`.
        dataset: batches of `features` or `(features, labels)`.
        repeats: int, timed passes of each (after one warm-up pass each).
        verbose: 0 or 1 (a progress counter on stderr, one step a pass).

    Returns:
        A dict with `early_exit_s`, `full_depth_s` (best of `repeats`, both
        measured interleaved) and `speedup`.
    """
    batches = [b[0] if isinstance(b, tuple) else b for b in dataset]
    early = tf.function(lambda f: model(f, training=False), reduce_retracing=True)
    full = tf.function(lambda f: model(f, full_depth=True), reduce_retracing=True)
    bar = progress.Progress(f"Timing early exit vs full depth ({len(batches)} batches)",
                            total=2 * (repeats + 1), unit="passes") if verbose else None

    def run(fn):
        start = time.perf_counter()
        for features in batches:
            fn(features)["layers_executed"].numpy()
        if bar:
            bar.update()
        return time.perf_counter() - start

    run(early), run(full)  # trace and warm up
    times = {"early": [], "full": []}
    for _ in range(repeats):
        times["early"].append(run(early))
        times["full"].append(run(full))
    if bar:
        bar.close()
    e, f = min(times["early"]), min(times["full"])
    return {"early_exit_s": e, "full_depth_s": f, "speedup": f / e}


def write_json(path, results):
    """Writes results as JSON, atomically."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)

    _atomic_write(path, write)


def is_pair_task(config):
    """Whether a trained model (its `dact_config.json`) reads text pairs."""
    data = config["data"]
    if data["task"] in CUSTOM_TASKS:
        return data.get("text_pair_column") is not None
    return dact_data.glue_task(data["task"]).pair_feature is not None


def copy_vocabulary(model_dir, target):
    """Copies a model directory's `vocab.txt` to `target` (a file, or a folder
    to hold `vocab.txt`), with the umask's permissions."""
    if os.path.isdir(target):
        target = os.path.join(target, VOCAB_FILE)
    _atomic_write(target, lambda tmp: shutil.copyfile(os.path.join(model_dir, VOCAB_FILE), tmp))
