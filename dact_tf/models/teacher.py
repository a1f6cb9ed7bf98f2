"""A frozen reference model whose answers DACT's distillation loss teaches.

By default DACT distills towards its own deepest head (FastBERT's
self-distillation, `dact_tf.ops.distillation_loss`). A certified accuracy
drop is measured against another model, though: the plain fine-tuned
full-depth model a user would otherwise ship (`dact_tf.calibration.
certified_drop`). Every row where DACT's answer differs from that model's
widens the certificate's bound, whichever of the two is right. With
`distill_teacher="reference"` the heads and the accumulated answers learn
that model's answers instead, so DACT tracks it at every block.

The teacher is attached to the model without being tracked: its weights are
not the student's, are never trained, saved, checkpointed or exported, and
the student's `get_config` does not change. A training run attaches it again
when it resumes.
"""

_ATTRIBUTE = "_distill_teacher"


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
    mine = (model.task, _outputs(model), tuple(model.input_keys))
    theirs = (teacher.task, _outputs(teacher), tuple(teacher.input_keys))
    if mine != theirs:
        raise ValueError(f"The distillation teacher answers (task, outputs, inputs) {theirs}; "
                         f"the model being trained answers {mine}.")
    teacher.trainable = False
    object.__setattr__(model, _ATTRIBUTE, teacher)  # bypasses Keras tracking


def detach(model):
    """Removes `model`'s distillation teacher (back to self-distillation)."""
    object.__setattr__(model, _ATTRIBUTE, None)


def of(model):
    """`model`'s attached teacher, or None."""
    return getattr(model, _ATTRIBUTE, None)


def answers(model, x):
    """`[batch, outputs]` float32: the teacher's full-depth answers to `x`, or None.

    Probabilities for classification, scores for regression; None where no
    teacher is attached, there are no inputs or the model does not distill
    (`distill_weight` 0).
    """
    teacher = of(model)
    if teacher is None or x is None or not model.distill_weight:
        return None
    outputs = teacher(x, training=False, full_depth=True)
    key = "scores" if teacher.task == "regression" else "probabilities"
    return outputs[key]


def _outputs(model):
    return model.encoder.num_outputs
