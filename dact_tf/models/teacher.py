"""A frozen reference model whose answers DACT's distillation loss teaches.

By default DACT distills towards its own deepest head (FastBERT's
self-distillation, `dact_tf.ops.distillation_loss`). A certified accuracy
drop is measured against another model, though: the plain fine-tuned
full-depth model a user would otherwise ship (`dact_tf.calibration.
certified_drop`). Every row where DACT's answer differs from that model's
widens the certificate's bound, whichever of the two is right. With
`distill_teacher="reference"` the heads and the accumulated answers learn
that model's answers instead, so DACT tracks it at every block.

The teacher is kept beside the model, not in it (a table keyed by the model,
holding no reference to it): Keras's saver walks a model's attributes, so an
attribute would write the teacher into every weights file and checkpoint.
Its weights are not the student's, are never trained, saved, checkpointed or
exported, and the student's `get_config` does not change. A training run
attaches it again when it resumes.
"""

import weakref

import tensorflow as tf

_TEACHERS = weakref.WeakKeyDictionary()  # student model -> its teacher

#: The values of `ModelConfig.distill_teacher`.
CHOICES = ("self", "reference")


def check_request(choice, distill_weight, init_from, init_from_holds_model, has_stage1):
    """Refuses, in one line, a `distill_teacher` that training could not honour.

    Args:
        choice: `ModelConfig.distill_teacher`.
        distill_weight: the distillation weight the method uses (0: none).
        init_from: the model training starts from, or None.
        init_from_holds_model: whether `init_from` is a model directory or
            `.keras` file (`model_dir.holds_model`), not a weights file.
        has_stage1: whether training first fine-tunes a full-depth stage 1.

    Raises:
        ValueError: an unknown choice; `"reference"` without a distillation
            loss, or with nothing to learn from (no stage 1, and no model
            directory or `.keras` file as `init_from`).
    """
    if choice not in CHOICES:
        raise ValueError(f"--distill_teacher must be one of {', '.join(CHOICES)}, got {choice!r}.")
    if choice != "reference":
        return
    if not distill_weight:
        raise ValueError("--distill_teacher=reference needs DACT's distillation loss: "
                         "--method=dact with --distill_weight above 0.")
    if init_from:
        if not init_from_holds_model:
            raise ValueError("--distill_teacher=reference learns from a model directory or "
                             f".keras file; --init_from={init_from} is neither.")
    elif not has_stage1:
        raise ValueError("--distill_teacher=reference learns the answers of the full-depth "
                         "model DACT starts from: keep --full_depth_stage or give --init_from.")


def attach(model, teacher):
    """Makes `teacher` the distillation teacher of `model` (frozen; not saved with it).

    Args:
        model: the `DactClassifier` being trained (DACT, with a
            `distill_weight` above 0 for the teacher to matter).
        teacher: a trained `DactClassifier` of the same task, number of
            outputs and tokenizer inputs, e.g. DACT's stage-1 full-depth
            model.

    Raises:
        ValueError: no teacher (None), a method that does not distill, or
            a teacher that answers another task or another number of
            outputs, or reads other inputs.

    Example:
    ```python
    reference = dact_tf.models.model_dir.load_model_dir("runs/m/stage1")[0]
    teacher.attach(model, reference)
    model.fit(train_ds, epochs=2)   # distills towards the reference's answers
    ```
    """
    if teacher is None:
        raise ValueError("The distillation teacher must be a trained model (a model directory "
                         "or .keras file; a weights file holds no model).")
    model.exit_criterion.check_distill_weight(1.0)  # a method that distills
    mine = (model.task, model.encoder.num_outputs, tuple(model.input_keys))
    theirs = (teacher.task, teacher.encoder.num_outputs, tuple(teacher.input_keys))
    if mine != theirs:
        raise ValueError(f"The distillation teacher answers (task, outputs, inputs) {theirs}; "
                         f"the model being trained answers {mine}.")
    teacher.trainable = False
    _TEACHERS[model] = teacher
    model.train_function = None  # a step traced before would not see the teacher


def detach(model):
    """Removes `model`'s distillation teacher (back to self-distillation).

    Args:
        model: a `DactClassifier`, with a teacher or without.
    """
    _TEACHERS.pop(model, None)
    model.train_function = None  # nor forget it


def of(model):
    """The teacher attached to `model`.

    Args:
        model: a `DactClassifier`.

    Returns:
        The teacher `DactClassifier`, or None.
    """
    return _TEACHERS.get(model)


def answers(model, x):
    """The teacher's full-depth answers to a training batch, for the distillation loss.

    Args:
        model: the `DactClassifier` being trained.
        x: its input batch (what `model` itself takes).

    Returns:
        float32 `[batch, outputs]`: probabilities for classification, the
        score as `[batch, 1]` for regression; None where no teacher is
        attached or the model does not distill (`distill_weight` 0).

    Raises:
        ValueError: a teacher is attached but `x` is None.
    """
    teacher = of(model)
    if teacher is None or not model.distill_weight:
        return None
    if x is None:
        raise ValueError("A model with a distillation teacher needs its inputs `x` in "
                         "`compute_loss`, for the teacher's answers.")
    outputs = teacher(x, training=False, full_depth=True)
    if teacher.task == "regression":
        return tf.reshape(tf.cast(outputs["scores"], tf.float32), [-1, 1])
    return tf.cast(outputs["probabilities"], tf.float32)
