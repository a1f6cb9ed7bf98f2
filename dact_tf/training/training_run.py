"""One training run, as a small object whose methods are its named steps.

`dact_tf.training.train_lib.train` checks the flags and the model directory, then
runs a `TrainingRun`: `check` (the refusals that need no model), the
`full_depth_stage` (DACT's default recipe: a plain full-depth model in
`model_dir/stage1/` to warm-start from), `build` (the model, compiled and
warm-started under the distribution strategy), `data` (the held-out,
calibration and validation sets; each epoch's training data), then
`write_config`, `train_stages` (one stage, or a two-stage method's: each a
resumable `fit` with its `callbacks`), `calibrate` (`target_blocks` or the
certified halting) and `save`.
"""

import contextlib
import dataclasses
import math
import os
import shutil
import warnings

import keras
import tensorflow as tf

from dact_tf.calibration import calibration_run
from dact_tf import callbacks as dact_callbacks
from dact_tf.training import distribute
from dact_tf import exits
from dact_tf.utils import files
from dact_tf.models import model_dir as model_dir_lib
from dact_tf.models import optimization
from dact_tf.utils import progress
from dact_tf.training import resume
from dact_tf.data.tasks import dataset_sizes
from dact_tf.data.tasks import make_datasets
from dact_tf.data.tasks import task_info
from dact_tf.models import builder
from dact_tf.models import teacher
from dact_tf.version import __version__

STAGE1_DIR = "stage1"


def criterion(model_config):
    """The exit criterion `model_config` describes: its method, with that method's knobs."""
    return exits.from_options(model_config.method, model_config)


def stored_model_config(model_config):
    """The model config `train` stores (DACT's stage 1 is not the user's init_from)."""
    if criterion(model_config).uses_full_depth_stage(model_config):
        return dataclasses.replace(model_config, init_from=None)
    return model_config


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
        halting_rule="tight", distill_teacher="self",
    )


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


def compile_model(model, train_config, total_steps):
    """Compiles `model` with `train_config`'s optimizer (warm-up and decay over `total_steps`)."""
    model.compile(
        optimizer=optimization.make_optimizer(
            train_config.optimizer, train_config.learning_rate, total_steps=total_steps,
            warmup_fraction=train_config.warmup_fraction,
            weight_decay=train_config.weight_decay,
        ),
        jit_compile=train_config.jit_compile,
    )


class TrainingRun:
    """Fine-tunes a DACT model; resumes an interrupted run in the same dir.

    The default recipe (`ModelConfig`, `TrainConfig`): stage 1 fine-tunes
    the plain full-depth model (`model_dir/stage1/`), stage 2 trains DACT
    from it with self-distillation; both with AdamW, warm-up and linear
    decay, keeping the best epoch on rows held out of the training data.
    Every stage resumes from its own backup; a finished stage is not redone.

    The model is built and compiled under `train_config.distribution_strategy`
    (see `dact_tf.training.distribute.get_strategy`); `data_config.batch_size` is the
    global batch, split across replicas. In a multi-worker cluster the chief
    writes `model_dir` and every other worker writes its own copy under
    `model_dir/workers/<type>_<index>/`. Under `train_config.mixed_precision`
    the model computes in 16 bits with float32 variables, and the DACT math
    stays in float32.

    Args:
        model_dir: str, the model directory (see `dact_tf.models.model_dir`).
        data_config: `DataConfig`.
        model_config: `ModelConfig`.
        train_config: `TrainConfig`.
        extra_callbacks: more Keras callbacks.
        train_fn: what trains the full-depth stage 1 into `model_dir/stage1/`
            (`dact_tf.training.train_lib.train`: a run of its own, checked and locked).
    """

    def __init__(self, model_dir, data_config, model_config, train_config, extra_callbacks=(),
                 *, train_fn):
        # `model_dir` is this process's copy (a worker's own, see `build`);
        # `chief_dir` the chief's, which every worker resumes from and decides on.
        self.model_dir = self.chief_dir = model_dir
        self.data_config = data_config
        self.model_config = model_config
        self.stored_config = model_config  # what config.json records
        self.train_config = train_config
        self.extra_callbacks = extra_callbacks
        self.train_fn = train_fn
        self.criterion = criterion(model_config)
        self.calibrated = self.criterion.calibrates_to_target(model_config)
        # What the steps make: `run` sets the strategy, `build` the model (and
        # the task, the target, the steps), `data` the datasets, `write_config`
        # the config and the logs.
        self.strategy = self.model = self.preprocessor = self.target = self.rows_source = None
        self.regression = self.label_names = self.metric_task = self.pass_through = None
        self.steps_per_epoch = self.total_steps = self.batches_per_epoch = None
        self.datasets, self.selection, self.config, self.logs = {}, None, None, []

    def run(self):
        """Takes every step in order.

        Returns:
            `(model, preprocessor, history)`; history is a dict of lists (and,
            with `target_blocks`, `"calibration"`: the result of
            `dact_tf.calibration.halting_bias.calibrate_halting_bias`).
        """
        self.check()
        self.strategy = distribute.get_strategy(
            self.train_config.distribution_strategy, self.train_config.tpu_address,
            worker_timeout=self.train_config.worker_timeout,
        )  # one per process: stage 1's `train` gets this one too
        self.full_depth_stage()
        self.build()
        self.data()
        self.write_config()
        history = self.train_stages()
        calibration = self.calibrate()
        if calibration is not None:
            history["calibration"] = calibration
        self.save()
        return self.model, self.preprocessor, history

    @property
    def certified_drop(self):
        """Whether the halting mode is certified on the accuracy drop (`--certified_risk=drop`)."""
        return (self.model_config.halting_rule == "certified"
                and self.model_config.certified_risk == "drop")

    @property
    def distills_from_reference(self):
        """Whether the distillation teaches the full-depth reference's answers (`check`ed)."""
        return self.model_config.distill_teacher == "reference"

    def check(self):
        """Refuses a target without the calibration that reaches it, or without held-out rows,
        and a distillation teacher training could not load."""
        if self.model_config.target_blocks and not self.calibrated:
            raise ValueError("--target_blocks sets DACT's halting; it needs --method=dact.")
        if (self.model_config.certified_risk == "mean_deviation"
                and not task_info(self.data_config)[1]):
            raise ValueError("--certified_risk=mean_deviation bounds a regression score's "
                             "distance; a classifier certifies --certified_risk=disagreement.")
        config = self.model_config
        teacher.check_request(config.distill_teacher,
                              self.criterion.recipe_settings(config)["distill_weight"],
                              config.init_from, model_dir_lib.holds_model(config.init_from),
                              self.criterion.uses_full_depth_stage(config))
        if self.calibrated and not self.data_config.holdout_fraction:
            raise ValueError(
                "DACT's --target_blocks is calibrated on held-out rows: set --holdout_fraction > 0, "
                "or --target_blocks=0 to let tau alone decide."
            )

    def full_depth_stage(self):
        """Stage 1 of the default DACT recipe, unless it is done; then warm-starts from it.

        The stored config keeps the user's `init_from` (None): stage 1 is
        not part of what a re-run compares.
        """
        if not self.criterion.uses_full_depth_stage(self.model_config):
            return
        verbose = self.train_config.verbose
        stage1_dir = os.path.join(self.model_dir, STAGE1_DIR)
        if not os.path.exists(os.path.join(stage1_dir, model_dir_lib.MODEL_FILE)):
            if verbose:
                print(f"Stage 1 of 2: plain full-depth fine-tuning ({stage1_dir})")
            self.train_fn(stage1_dir, self.data_config, full_depth_config(self.model_config),
                          self.train_config, self.extra_callbacks)
            keras.backend.clear_session()
        if verbose:
            print("Stage 2 of 2: DACT, from the stage-1 model")
        self.stored_config = stored_model_config(self.model_config)
        stage1_model = stage1_dir
        if not distribute.is_chief(self.strategy):
            # A worker starts from its own stage-1 copy (the same weights):
            # the chief may still be writing its own.
            own = os.path.join(stage1_dir, "workers", distribute.worker_id(self.strategy))
            if os.path.exists(os.path.join(own, model_dir_lib.MODEL_FILE)):
                stage1_model = own
        self.model_config = dataclasses.replace(self.model_config, init_from=stage1_model)

    def build(self):
        """This process's directory; the model, compiled and warm-started; the target's range."""
        model_config, data_config = self.model_config, self.data_config
        num_classes, self.regression, self.label_names, self.metric_task = task_info(data_config)
        # A worker writes its own copy; it resumes from, and decides on, the chief's.
        if not distribute.is_chief(self.strategy):
            self.model_dir = os.path.join(self.chief_dir, "workers",
                                          distribute.worker_id(self.strategy))
        os.makedirs(self.model_dir, exist_ok=True)
        keras.utils.set_random_seed(data_config.seed)
        policy = distribute.mixed_precision_policy(self.train_config.mixed_precision)
        with self.strategy.scope(), _dtype_policy(policy):
            self.model, self.preprocessor = builder.build(
                model_config, num_classes=num_classes, regression=self.regression,
                label_names=self.label_names, sequence_length=data_config.sequence_length,
                seed=data_config.seed)
        num_layers = self.model.num_layers
        if self.calibrated:
            self.target = model_config.target_blocks or num_layers / 2.0
            try:
                self.criterion.check_target_blocks(self.target, num_layers)
            except ValueError:
                raise ValueError(
                    f"--target_blocks must be in [1, {num_layers}] (the model's blocks), "
                    f"got {self.target:g}.") from None
        self.pass_through = parse_pass_through(model_config.pass_through, num_layers)
        train_rows, _ = dataset_sizes(data_config, self.label_names)
        self.steps_per_epoch = max(1, -(-train_rows // data_config.batch_size))
        self.total_steps = self.steps_per_epoch * self.train_config.epochs
        with self.strategy.scope():
            compile_model(self.model, self.train_config, self.total_steps)
        resuming = any(resume.Backup.read_state(self._backup_dir(self.chief_dir, stage))
                       for stage in (1, 2))
        if model_config.init_from and not resuming:
            # (A resumed run restores every weight from its backup.)
            model_dir_lib.warm_start(self.model, model_config.init_from)
        if self.distills_from_reference:  # the frozen model DACT starts from
            with self.strategy.scope(), _dtype_policy(policy):
                teacher.attach(self.model, model_dir_lib.load_reference(model_config.init_from))

    def data(self):
        """The held-out, calibration and validation sets; the batches of an epoch."""
        holdout = bool(self.data_config.holdout_fraction)
        splits = ("holdout", "calibration", "validation") if holdout else ("validation",)
        self.datasets = {
            split: _shard_by_data(ds)
            for split, ds in make_datasets(self.data_config, self.preprocessor, self.label_names,
                                           splits).items()
        }
        self.rows_source = calibration_run.rows_source(self.data_config)  # digest as read
        first = self.epoch_data(0)
        if int(first.cardinality()) >= 0:
            self.batches_per_epoch = int(first.cardinality())
        elif not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Length buckets make the number of batches depend on the data (not
            # on the order): count it once, so every epoch's bar has an ETA.
            self.batches_per_epoch = sum(1 for _ in progress.iterate(
                first, self.train_config.verbose, "Preparing the training batches"))
        # Model selection and the halting logs read held-out training rows,
        # never the evaluation set.
        self.selection = self.datasets["holdout" if holdout else "validation"]

    def epoch_data(self, epoch):
        """The training data of `epoch` (from 0)."""
        # Every epoch has its own shuffling seed and a fresh dataset, so its
        # order is the same in a resumed process as in an uninterrupted one.
        config = dataclasses.replace(self.data_config,
                                     seed=resume.epoch_seed(self.data_config.seed, epoch))
        dataset = _shard_by_data(
            make_datasets(config, self.preprocessor, self.label_names, ("train",))["train"])
        if self.batches_per_epoch is not None:
            dataset = dataset.apply(
                tf.data.experimental.assert_cardinality(self.batches_per_epoch))
        return dataset

    def write_config(self):
        """Writes config.json, once a resumed directory is checked to hold this run."""
        self.config = {
            "format": "dact_tf.model_dir",
            "dact_tf_version": __version__,
            "method": self.model_config.method,
            "lowercase": bool(getattr(self.preprocessor.tokenizer, "lowercase", True)),
            "label_names": self.label_names,
            "data": dataclasses.asdict(self.data_config),
            "model": dataclasses.asdict(self.stored_config),
            "train": dataclasses.asdict(self.train_config),
        }
        model_dir_lib.check_resumable(self.model_dir, self.config)
        model_dir_lib.write_config(self.model_dir, self.config)
        self.logs = [os.path.join(self.model_dir, "history.csv"),
                     os.path.join(self.model_dir, "ponder.csv")]

    def callbacks(self, stage, backup):
        """The callbacks of training stage `stage`, `backup` last."""
        train_config, model_dir = self.train_config, self.model_dir
        suffix = resume.stage_suffix(stage)
        cbs = [
            dact_callbacks.PonderCostLogger(
                self.selection,
                log_dir=os.path.join(model_dir, "tensorboard"),
                csv_path=self.logs[1],
            ),
            keras.callbacks.TensorBoard(
                os.path.join(model_dir, "tensorboard" + suffix),
                update_freq=train_config.log_every_steps or "epoch"),
            keras.callbacks.CSVLogger(self.logs[0], append=True),
            *self.extra_callbacks,
        ]
        if train_config.keep_checkpoints:
            cbs[1:1] = _epoch_checkpoints(os.path.join(model_dir, "checkpoints"), suffix,
                                          train_config.keep_checkpoints)
        if train_config.keep_best_epoch:
            # After the checkpoint callbacks: they save the epoch as trained;
            # this restores the best one when training ends.
            monitor = ("val_mae", "min") if self.regression else ("val_accuracy", "max")
            cbs.append(dact_callbacks.KeepBestEpoch(
                *monitor, os.path.join(model_dir, "best" + suffix)))
        # The method's own (DACT: its tau schedule), first.
        cbs[:0] = self.criterion.training_callbacks(self.model_config, self.target,
                                                    self.steps_per_epoch, self.total_steps,
                                                    self.selection)
        # Last: an epoch's backup is written once every log of it is.
        cbs.append(backup)
        return cbs

    def fit(self, stage):
        """Trains stage `stage` (1 or 2) resumably; returns its history."""
        with warnings.catch_warnings():
            # Bucketed batches have no known count: Keras learns it in the
            # first epoch and warns that the data "ran out" (it did not).
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
            # One backup per stage (DeeBERT has two): a resumed run continues
            # the stage it was in, at the batch of its last backup.
            backup = resume.Backup(self._backup_dir(self.model_dir, stage),
                                   save_freq=resume.BACKUP_EVERY, logs=self.logs,
                                   restore_dir=self._backup_dir(self.chief_dir, stage))
            distribute.check_workers_agree(self.strategy, backup.position,
                                           f"where training stage {stage} resumes")
            return resume.fit_resumably(self.model, self.epoch_data, self.selection,
                                        self.train_config.epochs, self.callbacks(stage, backup),
                                        backup, self.batches_per_epoch, self.train_config.verbose)

    def train_stages(self):
        """The method's training: one stage, or a two-stage method's (`two_stages`)."""
        if self.model.exit_criterion.training_stages == 2:
            return self.two_stages()
        return self.fit(1)

    def two_stages(self):
        """A two-stage method's training (DeeBERT); a finished first stage is never redone.

        Stage 1 trains the whole model on the last block's loss and saves
        `<method>_stage1.weights.h5` (atomically); stage 2
        (`model.start_second_stage()`: DeeBERT freezes the backbone and trains
        the intermediate heads) runs with a fresh optimizer. In a multi-worker
        cluster the chief's file (in `chief_dir`) decides for every worker.
        """
        model = self.model
        name = f"{model.method}_stage1.weights.h5"
        stage1 = os.path.join(self.model_dir, name)
        chief_stage1 = os.path.join(self.chief_dir, name)
        history = {}
        if self.model_config.init_from:
            # DeeBERT's stage 1 is plain full-depth fine-tuning: a model to
            # warm-start from already is that stage.
            pass
        elif os.path.exists(chief_stage1):
            model.load_weights(chief_stage1)
        else:
            history = {f"stage1_{k}": v for k, v in self.fit(1).items()}
            files.atomic_write(stage1, model.save_weights)
        # Stage 1 is saved: its backup is no longer needed.
        shutil.rmtree(self._backup_dir(self.model_dir, 1), ignore_errors=True)
        model.start_second_stage()
        compile_model(model, self.train_config, self.total_steps)
        history.update({f"stage2_{k}": v for k, v in self.fit(2).items()})
        return history

    def calibrate(self):
        """Calibrates the halting to `target_blocks`, or certifies it; None when neither is asked.

        Writes calibration.json; returns what `dact_tf.calibration.calibration_run.calibrate` does.
        """
        model_config = self.model_config
        if self.target is None and model_config.halting_rule != "certified":
            return None
        reference = None
        if self.calibrated:  # the distillation teacher, where there is one, is that model
            reference = teacher.of(self.model)
            if reference is None:
                reference = model_dir_lib.load_reference(model_config.init_from)
        common = dict(
            metric_task=self.metric_task, reference=reference,
            max_drop=model_config.calibration_max_drop,
            confidence=model_config.calibration_confidence,
            rows_source=self.rows_source, verbose=self.train_config.verbose)
        rows = self.datasets["holdout"], self.datasets["calibration"]
        if self.certified_drop:  # one certificate over the shift and the score
            calibration = calibration_run.calibrate_drop(self.model, *rows, **common)
        else:
            calibration = calibration_run.calibrate(
                self.model, *rows, target_blocks=self.target, pass_through=self.pass_through,
                max_disagreement=(calibration_run.halting_risk(
                    model_config.max_disagreement, model_config.certified_risk)
                    if model_config.halting_rule == "certified" else None),
                **common)
        files.write_json(os.path.join(self.model_dir, calibration_run.CALIBRATION_FILE),
                         calibration)
        return calibration

    def save(self):
        """Saves the model directory, then removes what only a resume needed."""
        model_dir_lib.save_model_dir(self.model_dir, self.model, self.preprocessor.tokenizer,
                                     self.config)
        # The model is saved: the stages' backups are no longer needed.
        for stage in (1, 2):
            shutil.rmtree(self._backup_dir(self.model_dir, stage), ignore_errors=True)
        # The best epoch's weights are in model.keras now; their copy (kept for
        # a resume) would only double the directory's size.
        # (best*/best_epoch.json stays: which epoch was kept.)
        for name in os.listdir(self.model_dir):
            path = os.path.join(self.model_dir, name, "best.weights.h5")
            if (name == "best" or name.startswith("best_stage")) and os.path.exists(path):
                os.remove(path)
        # A cluster's workers leave together (a no-op in one process): none ends,
        # and takes its part of the cluster away, while another still writes.
        distribute.check_workers_agree(self.strategy, 0, "the end of training")

    @staticmethod
    def _backup_dir(directory, stage):
        return os.path.join(directory, "backup" + resume.stage_suffix(stage))


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
