"""Training DACT models and the baselines: what `dact-tf train`, the examples and the benchmarks call.

`train` writes a model directory (its layout: `dact_tf.models.model_dir`),
resumably (`dact_tf.training.resume`): DACT's default recipe runs its full-depth
stage 1 first, DeeBERT its two stages; the best epoch on the held-out rows
is kept, and with `target_blocks` the halting is calibrated on them. The
run itself, step by step, is a `dact_tf.training.training_run.TrainingRun`.
"""

import contextlib
import dataclasses
import os

from dact_tf.calibration import calibration_run
from dact_tf.data import tasks
from dact_tf.utils import files
from dact_tf.training import training_run

# The configs (one source of defaults) live in `dact_tf.config`.
from dact_tf.config import DataConfig  # noqa: F401
from dact_tf.config import ModelConfig  # noqa: F401
from dact_tf.config import TrainConfig  # noqa: F401

# What other modules now hold keeps its name here, for the CLI, the
# benchmarks and existing user code: model directories (`dact_tf.models.model_dir`),
# the task data (`dact_tf.data.tasks`), evaluation (`dact_tf.evaluation.scoring`), the
# per-block analysis (`dact_tf.evaluation.analysis`) and JSON files (`dact_tf.utils.files`).
from dact_tf.data.tasks import CUSTOM_TASKS  # noqa: F401
from dact_tf.data.tasks import dataset_sizes  # noqa: F401
from dact_tf.data.tasks import is_pair_task  # noqa: F401
from dact_tf.data.tasks import make_datasets  # noqa: F401
from dact_tf.data.tasks import task_info  # noqa: F401
from dact_tf.evaluation.scoring import evaluate  # noqa: F401
from dact_tf.evaluation.scoring import measure_speedup  # noqa: F401
from dact_tf.evaluation.scoring import predict_dataset  # noqa: F401
from dact_tf.evaluation.scoring import results_from_outputs  # noqa: F401
from dact_tf.utils.files import write_json  # noqa: F401
from dact_tf.models.model_dir import CONFIG_FILE  # noqa: F401
from dact_tf.models.model_dir import MODEL_FILE  # noqa: F401
from dact_tf.models.model_dir import VOCAB_FILE  # noqa: F401
from dact_tf.models.model_dir import copy_vocabulary  # noqa: F401
from dact_tf.models.model_dir import load_model_dir  # noqa: F401
from dact_tf.models.model_dir import read_config  # noqa: F401
from dact_tf.models.model_dir import save_model_dir  # noqa: F401
from dact_tf.evaluation.analysis import format_per_block  # noqa: F401
from dact_tf.evaluation.analysis import per_block_from_trace  # noqa: F401
from dact_tf.evaluation.analysis import per_block_report  # noqa: F401
from dact_tf.evaluation.analysis import trace_dataset  # noqa: F401

from dact_tf.calibration.calibration_run import CALIBRATION_FILE  # noqa: E402,F401

# The run's steps and helpers live in `dact_tf.training.training_run`.
from dact_tf.training.training_run import STAGE1_DIR  # noqa: F401
from dact_tf.training.training_run import TrainingRun  # noqa: F401
from dact_tf.training.training_run import full_depth_config  # noqa: F401
from dact_tf.training.training_run import parse_pass_through  # noqa: F401
from dact_tf.training.training_run import compile_model as _compile  # noqa: F401


#: TrainConfig fields a resumed run may change: they do not change what is
#: trained (output, logging, where it runs).
_RESUME_FREE = ("verbose", "keep_checkpoints", "log_every_steps", "distribution_strategy",
                "tpu_address", "jit_compile", "worker_timeout")


def _check_same_run(model_dir, data_config, model_config, train_config):
    """Refuses a re-run whose flags change what the directory's run trains.

    Returns True when the directory holds this run, finished.
    """
    if not os.path.exists(os.path.join(model_dir, CONFIG_FILE)):
        return False
    # Fields an older dact_tf did not store are not compared.
    old = read_config(model_dir, defaults=False)
    new = {"data": dataclasses.asdict(data_config),
           "model": dataclasses.asdict(training_run.stored_model_config(model_config)),
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
    is training into is refused too (`dact_tf.utils.files.ModelDirLock`).
    See `dact_tf.training.training_run.TrainingRun` for what training does.

    Args:
        model_dir: str, the model directory (see `dact_tf.models.model_dir`).
        data_config: `DataConfig`.
        model_config: `ModelConfig`.
        train_config: `TrainConfig`.
        extra_callbacks: more Keras callbacks.

    Returns:
        `(model, preprocessor, history)`; history is a dict of lists (and,
        with `target_blocks`, `"calibration"`: the result of
        `dact_tf.calibration.halting_bias.calibrate_halting_bias`).
    """
    # The pass-through is checked before any stage trains (its range once
    # the model is built).
    passed = parse_pass_through(model_config.pass_through)
    if passed not in ("auto", 0):
        if model_config.shared_heads:
            raise ValueError("--pass_through needs a halting unit per block: not with "
                             "--shared_heads.")
        if not training_run.criterion(model_config).calibrates_to_target(model_config):
            raise ValueError("--pass_through is part of DACT's calibration to --target_blocks: "
                             "it needs --method=dact and a target (not --target_blocks=0).")
    _check_certified(data_config, model_config)
    if _check_same_run(model_dir, data_config, model_config, train_config):
        if train_config.verbose:
            print(f"{model_dir} already holds this finished run: nothing to train "
                  "(delete the folder to train again).")
        model, preprocessor, _ = load_model_dir(model_dir)
        return model, preprocessor, {}
    created = not os.path.exists(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    # The workers of one cluster share the directory by design (only the
    # chief writes it): no lock between them.
    lock = (contextlib.nullcontext()
            if train_config.distribution_strategy == "multi_worker_mirrored"
            else files.ModelDirLock(model_dir))
    try:
        with lock:
            # DACT's full-depth stage 1 is a `train` of its own (checked, locked).
            return TrainingRun(model_dir, data_config, model_config, train_config,
                               extra_callbacks, train_fn=train).run()
    except BaseException:
        if created:  # a run that failed before writing anything leaves no empty folders
            files.remove_empty_dirs(model_dir)
        raise


def _check_certified(data_config, model_config):
    """`check_certified_flags` for a training run, and its held-out rows."""
    calibration_run.check_flags(model_config.method, model_config.halting_rule,
                          model_config.max_disagreement, model_config.calibration_max_drop,
                          model_config.calibration_confidence, model_config.certified_risk)
    if model_config.halting_rule == "certified" and not data_config.holdout_fraction:
        raise ValueError("--halting_rule=certified is certified on held-out rows: set "
                         "--holdout_fraction > 0.")
    tasks.check_min_tokens(data_config)
    if data_config.calibration_file:
        if not data_config.holdout_fraction:
            raise ValueError("--calibration_file: the exit is still fitted on held-out rows "
                             "(selection rows): set --holdout_fraction > 0.")
        # A bad file (or a label training lacks) is refused before training.
        tasks.calibration_examples(data_config, tasks.task_info(data_config)[2])
