"""Training DACT models and the baselines: what `dact-tf train`, the examples and the benchmarks call.

`train` writes a model directory (its layout: `dact_tf.model_dir`),
resumably (`dact_tf.resume`): DACT's default recipe runs its full-depth
stage 1 first, DeeBERT its two stages; the best epoch on the held-out rows
is kept, and with `target_blocks` the halting is calibrated on them.
"""

import contextlib
import dataclasses
import math
import os
import shutil
import sys
import warnings

import keras
import tensorflow as tf

from dact_tf import calibration_run
from dact_tf import callbacks as dact_callbacks
from dact_tf import distribute
from dact_tf import exits
from dact_tf import files
from dact_tf import optimization
from dact_tf import model_dir as model_dir_lib
from dact_tf import progress
from dact_tf import resume
from dact_tf.models import backbones as backbones_lib
from dact_tf.models.dact_classifier import DactClassifier
from dact_tf.version import __version__

# The configs (one source of defaults) live in `dact_tf.config`.
from dact_tf.config import DataConfig  # noqa: F401
from dact_tf.config import ModelConfig  # noqa: F401
from dact_tf.config import TrainConfig  # noqa: F401

# What other modules now hold keeps its name here, for the CLI, the
# benchmarks and existing user code: model directories (`dact_tf.model_dir`),
# the task data (`dact_tf.data.tasks`), evaluation (`dact_tf.evaluation`), the
# per-block analysis (`dact_tf.analysis`) and JSON files (`dact_tf.files`).
from dact_tf.data.tasks import CUSTOM_TASKS  # noqa: F401
from dact_tf.data.tasks import dataset_sizes  # noqa: F401
from dact_tf.data.tasks import is_pair_task  # noqa: F401
from dact_tf.data.tasks import make_datasets  # noqa: F401
from dact_tf.data.tasks import task_info  # noqa: F401
from dact_tf.evaluation import evaluate  # noqa: F401
from dact_tf.evaluation import measure_speedup  # noqa: F401
from dact_tf.evaluation import predict_dataset  # noqa: F401
from dact_tf.evaluation import results_from_outputs  # noqa: F401
from dact_tf.files import write_json  # noqa: F401
from dact_tf.model_dir import CONFIG_FILE  # noqa: F401
from dact_tf.model_dir import MODEL_FILE  # noqa: F401
from dact_tf.model_dir import VOCAB_FILE  # noqa: F401
from dact_tf.model_dir import copy_vocabulary  # noqa: F401
from dact_tf.model_dir import load_model_dir  # noqa: F401
from dact_tf.model_dir import read_config  # noqa: F401
from dact_tf.model_dir import save_model_dir  # noqa: F401
from dact_tf.analysis import format_per_block  # noqa: F401
from dact_tf.analysis import per_block_from_trace  # noqa: F401
from dact_tf.analysis import per_block_report  # noqa: F401
from dact_tf.analysis import trace_dataset  # noqa: F401

from dact_tf.calibration_run import CALIBRATION_FILE  # noqa: E402,F401

STAGE1_DIR = "stage1"


#: TrainConfig fields a resumed run may change: they do not change what is
#: trained (output, logging, where it runs).
_RESUME_FREE = ("verbose", "keep_checkpoints", "log_every_steps", "distribution_strategy",
                "tpu_address", "jit_compile", "worker_timeout")


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
    # The pass-through is checked before any stage trains (its range once
    # the model is built).
    passed = parse_pass_through(model_config.pass_through)
    if passed not in ("auto", 0):
        if model_config.shared_heads:
            raise ValueError("--pass_through needs a halting unit per block: not with "
                             "--shared_heads.")
        if not _criterion(model_config).accumulates or model_config.target_blocks == 0:
            raise ValueError("--pass_through is part of DACT's calibration to --target_blocks: "
                             "it needs --method=dact and a target (not --target_blocks=0).")
    _check_certified(data_config, model_config)
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
    strategy = distribute.get_strategy(
        train_config.distribution_strategy, train_config.tpu_address,
        worker_timeout=train_config.worker_timeout,
    )  # one per process: stage 1's `train` gets this one too
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
        stage1_model = stage1_dir
        if not distribute.is_chief(strategy):
            # A worker starts from its own stage-1 copy (the same weights):
            # the chief may still be writing its own.
            own = os.path.join(stage1_dir, "workers", distribute.worker_id(strategy))
            if os.path.exists(os.path.join(own, MODEL_FILE)):
                stage1_model = own
        model_config = dataclasses.replace(model_config, init_from=stage1_model)
    else:
        stored = model_config
    num_classes, regression, label_names, metric_task = task_info(data_config)
    # A worker writes its own copy; it resumes from, and decides on, the chief's.
    chief_dir = model_dir
    if not distribute.is_chief(strategy):
        model_dir = os.path.join(model_dir, "workers", distribute.worker_id(strategy))
    os.makedirs(model_dir, exist_ok=True)
    keras.utils.set_random_seed(data_config.seed)
    policy = distribute.mixed_precision_policy(train_config.mixed_precision)
    with strategy.scope(), _dtype_policy(policy):
        backbone, tokenizer = backbones_lib.load_backbone(
            model_config.backbone, max_sequence_length=data_config.sequence_length,
            seed=data_config.seed,
        )
        preprocessor = backbones_lib.make_preprocessor(
            tokenizer, sequence_length=data_config.sequence_length
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
            ponder=model_config.ponder,
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
    pass_through = parse_pass_through(model_config.pass_through, model.num_layers)
    train_rows, _ = dataset_sizes(data_config, label_names)
    steps_per_epoch = max(1, -(-train_rows // data_config.batch_size))
    total_steps = steps_per_epoch * train_config.epochs
    with strategy.scope():
        _compile(model, train_config, total_steps)
    resuming = any(resume.Backup.read_state(os.path.join(chief_dir, "backup" + resume.stage_suffix(stage)))
                   for stage in (1, 2))
    if model_config.init_from and not resuming:
        # (A resumed run restores every weight from its backup.)
        model_dir_lib.warm_start(model, model_config.init_from)
    splits = ("holdout", "calibration", "validation") if holdout else ("validation",)
    datasets = {
        split: _shard_by_data(ds)
        for split, ds in make_datasets(data_config, preprocessor, label_names, splits).items()
    }
    batches_per_epoch = None

    def epoch_data(epoch):
        # Every epoch has its own shuffling seed and a fresh dataset, so its
        # order is the same in a resumed process as in an uninterrupted one.
        config = dataclasses.replace(data_config, seed=resume.epoch_seed(data_config.seed, epoch))
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
    model_dir_lib.check_resumable(model_dir, config)
    model_dir_lib.write_config(model_dir, config)
    monitor = ("val_mae", "min") if regression else ("val_accuracy", "max")

    logs = [os.path.join(model_dir, "history.csv"), os.path.join(model_dir, "ponder.csv")]

    def callbacks(stage, backup):
        suffix = resume.stage_suffix(stage)
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
        name = "backup" + resume.stage_suffix(stage)
        backup = resume.Backup(os.path.join(model_dir, name), save_freq=resume.BACKUP_EVERY,
                               logs=logs, restore_dir=os.path.join(chief_dir, name))
        distribute.check_workers_agree(strategy, backup.position,
                                       f"where training stage {stage} resumes")
        return resume.fit_resumably(model, epoch_data, selection, train_config.epochs,
                              callbacks(stage, backup), backup, batches_per_epoch,
                              train_config.verbose)

    if model.exit_criterion.training_stages == 2:
        # DeeBERT's stage 1 is plain full-depth fine-tuning: a model to
        # warm-start from already is that stage.
        history = _fit_two_stages(model, model_dir, train_config, fit, total_steps,
                                  stage1_done=bool(model_config.init_from), chief_dir=chief_dir)
    else:
        history = fit(1)
    if target is not None or model_config.halting_rule == "certified":
        history["calibration"] = calibration_run.calibrate(
            model, datasets["holdout"], datasets["calibration"], target_blocks=target,
            pass_through=pass_through, metric_task=metric_task,
            reference=calibration_run.reference_model(model_config.init_from) if dact else None,
            max_drop=model_config.calibration_max_drop,
            confidence=model_config.calibration_confidence,
            halting_rule=model_config.halting_rule,
            max_disagreement=model_config.max_disagreement,
            shared=not data_config.calibration_share, verbose=train_config.verbose)
        write_json(os.path.join(model_dir, CALIBRATION_FILE), history["calibration"])
    save_model_dir(model_dir, model, tokenizer, config)
    # The model is saved: the stages' backups are no longer needed.
    for stage in (1, 2):
        shutil.rmtree(os.path.join(model_dir, "backup" + resume.stage_suffix(stage)),
                      ignore_errors=True)
    # The best epoch's weights are in model.keras now; their copy (kept for
    # a resume) would only double the directory's size.
    # (best*/best_epoch.json stays: which epoch was kept.)
    for name in os.listdir(model_dir):
        path = os.path.join(model_dir, name, "best.weights.h5")
        if (name == "best" or name.startswith("best_stage")) and os.path.exists(path):
            os.remove(path)
    # A cluster's workers leave together (a no-op in one process): none ends,
    # and takes its part of the cluster away, while another still writes.
    distribute.check_workers_agree(strategy, 0, "the end of training")
    return model, preprocessor, history


def _check_certified(data_config, model_config):
    """`check_certified_flags` for a training run, and its held-out rows."""
    calibration_run.check_flags(model_config.method, model_config.halting_rule,
                          model_config.max_disagreement, model_config.calibration_max_drop,
                          model_config.calibration_confidence)
    if model_config.halting_rule == "certified" and not data_config.holdout_fraction:
        raise ValueError("--halting_rule=certified is certified on held-out rows: set "
                         "--holdout_fraction > 0.")


def parse_pass_through(value, num_layers=None):
    """`ModelConfig.pass_through` as `calibrate_halting_bias` takes it ("auto" or
    an int in `[0, num_layers - 1]`; None: the blocks are not known yet)."""
    if str(value) == "auto":
        return "auto"
    try:
        blocks = int(value)
    except (TypeError, ValueError):
        blocks = -1
    most = math.inf if num_layers is None else num_layers - 1
    if str(blocks) != str(value).strip() or not 0 <= blocks <= most:
        span = "an integer >= 0" if num_layers is None else f"an integer in [0, {most}]"
        raise ValueError(
            f"--pass_through must be 'auto' or {span} (leading blocks whose heads get no "
            f"weight), got {value!r}.")
    return blocks


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
        target_blocks=None, init_from=None, freeze_backbone=False, pass_through="auto",
        halting_rule="tight",
    )


def _compile(model, train_config, total_steps):
    model.compile(
        optimizer=optimization.make_optimizer(
            train_config.optimizer, train_config.learning_rate, total_steps=total_steps,
            warmup_fraction=train_config.warmup_fraction,
            weight_decay=train_config.weight_decay,
        ),
        jit_compile=train_config.jit_compile,
    )


def _fit_two_stages(model, model_dir, train_config, fit, total_steps, stage1_done=False,
                    chief_dir=None):
    """A two-stage method's training (DeeBERT); a finished first stage is never redone.

    Stage 1 trains the whole model on the last block's loss and saves
    `<method>_stage1.weights.h5` (atomically); stage 2
    (`model.start_second_stage()`: DeeBERT freezes the backbone and trains
    the intermediate heads) runs with a fresh optimizer. In a multi-worker
    cluster the chief's file (in `chief_dir`) decides for every worker.
    """
    name = f"{model.method}_stage1.weights.h5"
    stage1 = os.path.join(model_dir, name)
    chief_stage1 = os.path.join(chief_dir or model_dir, name)
    history = {}
    if stage1_done:
        pass  # warm-started from a fine-tuned full-depth model
    elif os.path.exists(chief_stage1):
        model.load_weights(chief_stage1)
    else:
        history = {f"stage1_{k}": v for k, v in fit(1).items()}
        files.atomic_write(stage1, model.save_weights)
    # Stage 1 is saved: its backup is no longer needed.
    shutil.rmtree(os.path.join(model_dir, "backup" + resume.stage_suffix(1)), ignore_errors=True)
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
