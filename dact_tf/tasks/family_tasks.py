"""One `DactTextClassifier` class per encoder family that loads by spec.

keras-hub's `Task.from_preset` picks the Task class of a saved preset by its
backbone class (as `BertTextClassifier` serves `BertBackbone`). dact_tf's
Task serves BERT; for every other registered family
(`dact_tf.models.families`) a registered subclass, named by the family
(`DactDistilBertTextClassifier`), serves its backbone with its preprocessor.
They are made here, from the family objects: a new family needs no Task code.
"""

import keras

from dact_tf.models import families
from dact_tf.tasks.text_classifier import DactTextClassifier

_TASKS = {}


def task_class(family):
    """The `DactTextClassifier` class serving `family`'s backbones (made once)."""
    if not family.task_class_name or family.task_class_name == DactTextClassifier.__name__:
        return DactTextClassifier
    if family.name not in _TASKS:
        task = type(family.task_class_name, (DactTextClassifier,), {
            "__module__": __name__,
            "__doc__": f"`DactTextClassifier` for {family.name} backbones "
                       f"({family.backbone_cls.__name__}).",
            "backbone_cls": family.backbone_cls,
            "preprocessor_cls": family.preprocessor_cls,
        })
        _TASKS[family.name] = keras.saving.register_keras_serializable(package="dact_tf")(task)
        globals()[family.task_class_name] = task
    return _TASKS[family.name]


def for_backbone(cls, backbone):
    """`cls` if it serves `backbone`'s class, else the Task class of its family."""
    if isinstance(backbone, cls.backbone_cls):
        return cls
    return task_class(families.of_backbone(backbone))


def define_all():
    """Makes the Task class of every registered family that loads by spec."""
    for family in families.families():
        if family.loads_specs:
            task_class(family)


define_all()
