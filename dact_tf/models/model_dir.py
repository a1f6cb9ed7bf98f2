"""Model directories: what a trained model is on disk, written atomically and read with checks.

A *model directory* holds everything a trained model needs:

    model_dir/
      dact_config.json     what was trained: task, labels, backbone spec, flags
      vocab.txt            the tokenizer's vocabulary (predict/export need no backbone)
      model.keras          the final model (written atomically)
      backup/              the training state every 50 batches and epoch: an interrupted
                           run resumes at the batch after it (`dact_tf.training.resume`)
      checkpoints/         the last --keep_checkpoints epochs' `.weights.h5`
      best/                the best epoch on the held-out rows (its weights only
                           while training: then they are model.keras's)
      stage1/              DACT's default recipe: the full-depth stage-1 model dir
      calibration.json     with --target_blocks and/or --halting_rule=certified: the
                           halting-bias shift, the blocks, the metrics before and
                           after, and the certificates (`limited`: the certified
                           bound stopped it short of the target)
      tensorboard/         TensorBoard: train/ (every --log_every_steps steps) and
                           validation/ (held-out rows, with dact/ halting curves)
      history.csv          per-epoch fit logs (appended across resumed runs)
      ponder.csv           per-epoch halting statistics (PonderCostLogger)

A directory is data, not instructions: its config is validated key by key,
the model is loaded in Keras' `safe_mode`, and a model file of another kind
than the config describes is refused.
"""

import dataclasses
import json
import os
import shutil
import warnings

import keras

from dact_tf import exits
from dact_tf.utils import files
from dact_tf.config import DataConfig
from dact_tf.config import ModelConfig
from dact_tf.config import TrainConfig
from dact_tf.models import families
from dact_tf.models.dact_classifier import DactClassifier
from dact_tf.version import __version__

CONFIG_FILE = "dact_config.json"


MODEL_FILE = "model.keras"


VOCAB_FILE = "vocab.txt"


def save_model_dir(model_dir, model, tokenizer, config):
    """Writes the final model, the vocabulary and the config, each atomically."""
    files.atomic_write(os.path.join(model_dir, MODEL_FILE), model.save)
    files.atomic_write(os.path.join(model_dir, VOCAB_FILE),
                       lambda path: files.write_vocabulary(tokenizer, path))
    write_config(model_dir, config)


def write_config(model_dir, config):
    def write(path):
        with open(path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)

    files.atomic_write(os.path.join(model_dir, CONFIG_FILE), write)


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
_REQUIRED_KEYS = ("lowercase", "label_names", "data", "data.task", "data.sequence_length")


_FIELD_MINIMUM = {"data.sequence_length": 1, "data.batch_size": 1, "data.calibration_share": 0,
                  "data.calibration_min_tokens": 0, "model.calibration_max_drop": 0}
#: Keys with a value by default that may also be null.
_NULLABLE_KEYS = ("model.calibration_max_drop",)

#: What a field an older version did not store meant then, where that is not
#: today's default: models trained before calibration rows were kept apart
#: calibrated on their selection rows.
_LEGACY_DEFAULTS = {"data.calibration_share": 0.0}

#: Keys that older versions stored under another name: `(section, old, new)`.
_RENAMED_KEYS = (("data", "max_seq_length", "sequence_length"),)


def _migrated(config):
    """`config` with keys of older versions under their current names."""
    for section, old, new in _RENAMED_KEYS:
        holder = config.get(section)
        if isinstance(holder, dict) and old in holder:
            holder = dict(holder)
            value = holder.pop(old)
            holder.setdefault(new, value)
            config[section] = holder
    return config


def _checked_config(config, path, defaults):
    """`read_config`'s key and type checks (and defaults) of a parsed config."""
    config = _migrated(dict(config))

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
                    stored[field.name] = _LEGACY_DEFAULTS.get(key, field.default)
                continue
            value = stored[field.name]
            nullable = field.default is None or key in _NULLABLE_KEYS
            if not (value is None and nullable or value is not None and _has_type(value, field)):
                kind = getattr(field.type, "__name__", str(field.type))
                refuse(key, f"needs {'a' if kind != 'int' else 'an'} {kind}"
                       + (" (or null)" if nullable else "") + " at")
            if key in _FIELD_MINIMUM and value is not None and value < _FIELD_MINIMUM[key]:
                refuse(key, f"needs a value >= {_FIELD_MINIMUM[key]} at")
        config[section] = stored
    return config


def _has_type(value, field):
    """Whether a stored config value (not None) fits its dataclass field's type."""
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


def load_reference(path):
    """The full-depth reference model stored at `path`, or None.

    The model a certified drop is measured against and a
    `distill_teacher="reference"` run learns from.

    Args:
        path: a dact_tf model directory, a `.keras` file, or None (or a
            weights file, which holds no model: None).
    """
    if not holds_model(path):
        return None
    # Answers only: no optimizer state (it would double the memory it holds).
    if os.path.isdir(path):
        return load_model_dir(path, compile=False)[0]
    return keras.models.load_model(path, safe_mode=True, compile=False)


def holds_model(path):
    """Whether `path` is a model directory or a `.keras` file (not a weights file)."""
    return bool(path) and (os.path.isdir(path)
                           or (path.endswith(".keras") and os.path.isfile(path)))


def load_model_dir(model_dir, compile=True):
    """Loads `(model, preprocessor, config)` from a trained model directory.

    `compile=False` leaves the model uncompiled (no optimizer state): for a
    model that only answers, such as a reference or a distillation teacher.
    """
    config = read_config(model_dir)
    model_path = os.path.join(model_dir, MODEL_FILE)
    if not os.path.exists(model_path):
        raise FileNotFoundError(
            f"{model_path} is missing: training did not finish. Run the same "
            "`dact-tf train` command again to resume it."
        )
    try:
        model = keras.models.load_model(model_path, safe_mode=True, compile=compile)
    except Exception as e:  # a truncated or foreign file: zip, h5 or config errors
        raise ValueError(
            f"{model_path} is not a readable dact_tf model ({type(e).__name__}: "
            f"{_first_line(e)}). "
            "Train it again (delete the folder), or restore the file."
        ) from None
    _check_model_matches(model, config, model_path)
    family = families.of_backbone(model.backbone)
    tokenizer = family.tokenizer(_own_vocabulary(model_dir), lowercase=config["lowercase"])
    preprocessor = family.preprocessor(tokenizer, config["data"]["sequence_length"])
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
    elif labels and model.label_names and list(model.label_names) != list(labels):
        # Same count, another order: every answer would come out under the wrong label.
        problems.append(f"labels {list(model.label_names)}, the config names {list(labels)}")
    longest = getattr(model.backbone, "max_sequence_length", None)
    length = config.get("data", {}).get("sequence_length")
    if longest and isinstance(length, int) and length > longest:
        # (A crafted value would make the preprocessor pad every row that far.)
        problems.append(f"sequence_length {length} in the config, above the backbone's "
                        f"maximum {longest}")
    if problems:
        raise ValueError(f"{model_path} does not belong to its directory: "
                         + "; ".join(problems) + ".")


def check_resumable(model_dir, config):
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


def copy_vocabulary(model_dir, target, overwrite=True):
    """Copies a model directory's `vocab.txt` to `target` (a file, or a folder
    to hold `vocab.txt`), with the umask's permissions.

    With `overwrite=False` an existing `target` with the same vocabulary is
    kept (exports of one model share it); another one is refused.
    """
    if os.path.isdir(target):
        target = os.path.join(target, VOCAB_FILE)
    source = _own_vocabulary(model_dir)
    try:
        files.atomic_write(target, lambda tmp: shutil.copyfile(source, tmp), overwrite)
    except FileExistsError:
        with open(source, "rb") as mine, open(target, "rb") as theirs:
            if mine.read() != theirs.read():
                raise FileExistsError(
                    f"{target} exists and holds another vocabulary; exports never "
                    "overwrite: use another --export_dir or delete it.") from None


def _own_vocabulary(model_dir):
    """`model_dir`'s vocab.txt, refused where it is a link (it could point anywhere)."""
    path = os.path.join(model_dir, VOCAB_FILE)
    if os.path.islink(path):
        raise ValueError(f"{path} is a symbolic link: dact_tf reads and exports only the "
                         "model directory's own vocabulary file; copy the file there.")
    return path


def warm_start(model, source):
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
    # A calibrated source may pass its first blocks' budgets through (with
    # no gradient there): start training from its trained halting.
    model.encoder.heads.pass_budget_through(0)


def _first_line(error, limit=200):
    """The first line of an exception's message, at most `limit` characters."""
    return (str(error).strip().splitlines() or [""])[0][:limit]
