"""The one builder: configs in, a model out.

`dact-tf train` (through `dact_tf.training.train_lib.train`), `DactTextClassifier.
from_preset`, the tests and the benchmarks build their models here, so a
`ModelConfig` means the same model wherever it is used.

Example:
>>> from dact_tf import config
>>> from dact_tf.models import builder
>>> model, preprocessor = builder.build(
...     config.ModelConfig(backbone="tiny"), num_classes=2, sequence_length=16)
>>> model.encoder.pooling, model.method
('mean', 'dact')
"""

from dact_tf import config as config_lib
from dact_tf import exits
from dact_tf.models import backbones
from dact_tf.models.dact_classifier import DactClassifier


def load(spec, sequence_length, seed=0):
    """`(backbone, preprocessor)` of a backbone spec (`dact_tf.models.backbones`).

    Args:
        spec: `"minilm_l6"`, `"tiny"`, a folder, or a keras-hub preset name.
        sequence_length: int, the preprocessor's tokens per example (and
            the backbone's, where it is built from scratch).
        seed: int, the seed of randomly initialised weights.
    """
    backbone, tokenizer = backbones.load_backbone(
        spec, max_sequence_length=sequence_length, seed=seed)
    return backbone, backbones.make_preprocessor(tokenizer, sequence_length=sequence_length)


def classifier(model_config, backbone, num_classes=2, regression=False, label_names=None,
               cls=DactClassifier, **kwargs):
    """The `DactClassifier` (or subclass `cls`) that `model_config` describes, on `backbone`.

    Args:
        model_config: a `dact_tf.config.ModelConfig`.
        backbone: a keras-hub encoder backbone.
        num_classes: int >= 2 (ignored for regression).
        regression: bool: a score in `config.REGRESSION_OUTPUT_RANGE`.
        label_names: the class names, or None.
        cls: `DactClassifier` or a subclass (`DactTextClassifier`).
        **kwargs: more constructor arguments (`preprocessor`, `name`, ...).

    Returns:
        The model, with `model_config.freeze_backbone` applied.
    """
    model = cls(
        backbone, num_classes=num_classes,
        task="regression" if regression else "classification",
        output_range=config_lib.REGRESSION_OUTPUT_RANGE if regression else None,
        label_names=label_names,
        method=exits.from_options(model_config.method, model_config),
        num_layers=model_config.num_layers, config=model_config, **kwargs)
    if model_config.freeze_backbone:
        # Train the heads only (e.g. on a warm-started, fine-tuned backbone).
        model.backbone.trainable = False
    return model


def build(model_config, num_classes=2, regression=False, label_names=None,
          sequence_length=128, seed=0):
    """`(model, preprocessor)`: `model_config`'s backbone loaded, and its classifier.

    Example:
    ```python
    model, preprocessor = build(ModelConfig(), num_classes=2)
    ```
    """
    backbone, preprocessor = load(model_config.backbone, sequence_length, seed)
    model = classifier(model_config, backbone, num_classes=num_classes, regression=regression,
                       label_names=label_names)
    return model, preprocessor
