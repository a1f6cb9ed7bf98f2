"""Distillation towards a frozen reference model (`distill_teacher="reference"`)."""

import numpy as np
import pytest
import tensorflow as tf

from dact_tf import ops
from dact_tf.data import builtin_sst2_dir
from dact_tf.models import teacher
from dact_tf.models.dact_classifier import DactClassifier
from dact_tf.training import train_lib
from tests.testing import synthetic_task
from tests.testing import tiny_backbone


def numpy_teacher_distillation(answers, accumulated, target=None, regression=False, span=1.0):
    """The loss in NumPy: towards `target`, or (None) towards the last head's own answer."""
    answers, accumulated = (np.asarray(a, np.float64) for a in (answers, accumulated))
    students = answers if target is not None else answers[:-1]
    target = np.asarray(target if target is not None else answers[-1], np.float64)

    def div(x):
        if regression:
            return (((target - x) / span) ** 2).sum(-1)
        return (target * (np.log(target + 1e-7) - np.log(x + 1e-7))).sum(-1)

    # With a teacher every head learns it, the last one too.
    return (np.mean([div(a).mean() for a in students])
            + np.mean([div(a).mean() for a in accumulated])) / 2


def test_teacher_distillation_matches_its_formula_and_leaves_the_teacher_alone():
    rng = np.random.default_rng(0)
    answers = rng.dirichlet(np.ones(3), size=(4, 5)).astype("float32")
    accumulated = rng.dirichlet(np.ones(3), size=(4, 5)).astype("float32")
    target = rng.dirichlet(np.ones(3), size=5).astype("float32")
    got = float(ops.distillation_loss(answers, accumulated, teacher=target))
    np.testing.assert_allclose(
        got, numpy_teacher_distillation(answers, accumulated, target), rtol=1e-5)
    scores = rng.uniform(0, 5, size=(3, 5, 1)).astype("float32")
    acc = rng.uniform(0, 5, size=(3, 5, 1)).astype("float32")
    reference = rng.uniform(0, 5, size=(5, 1)).astype("float32")
    got = float(ops.distillation_loss(scores, acc, task="regression", output_range=(0, 5),
                                      teacher=reference))
    np.testing.assert_allclose(
        got, numpy_teacher_distillation(scores, acc, reference, True, 5.0), rtol=1e-5)
    # Without a teacher: the deepest head's answer, as before.
    np.testing.assert_allclose(float(ops.distillation_loss(answers, accumulated)),
                               numpy_teacher_distillation(answers, accumulated), rtol=1e-5)
    # The last head is a student now; the teacher gets no gradient.
    answers_v, target_v = tf.Variable(answers), tf.Variable(target)
    with tf.GradientTape() as tape:
        loss = ops.distillation_loss(answers_v, accumulated, teacher=target_v)
    grad_answers, grad_target = tape.gradient(loss, [answers_v, target_v])
    assert np.abs(grad_answers.numpy()[-1]).min() > 0
    assert grad_target is None


def _pair(seed=4, distill_weight=0.7):
    model = DactClassifier(tiny_backbone(seed=seed), num_classes=2, tau=0.0, dropout=0.0,
                           distill_weight=distill_weight)
    reference = DactClassifier(tiny_backbone(seed=seed + 1), num_classes=2, dropout=0.0,
                               method="static")
    return model, reference


def test_the_model_learns_the_attached_teachers_answers_and_does_not_keep_them():
    feats, labels = synthetic_task(16, seed=4)
    model, reference = _pair()
    model.compile()
    weights, config = len(model.weights), model.get_config()
    y_pred = model(feats, training=True)
    own = float(model.compute_loss(x=feats, y=labels, y_pred=y_pred))
    teacher.attach(model, reference)
    assert teacher.of(model) is reference and not reference.trainable
    taught = float(model.compute_loss(x=feats, y=labels, y_pred=y_pred))
    target = reference(feats, training=False, full_depth=True)["probabilities"]
    blocks, accumulated = y_pred["block_answers"], y_pred["block_accumulated"]
    expected = 0.7 * (numpy_teacher_distillation(blocks, accumulated, target)
                      - numpy_teacher_distillation(blocks, accumulated))
    np.testing.assert_allclose(taught - own, expected, rtol=1e-4, atol=1e-6)
    # Not tracked: no weights, no config, nothing saved with the model.
    assert len(model.weights) == weights and model.get_config() == config
    with pytest.raises(ValueError, match="needs its inputs `x`"):
        model.compute_loss(y=labels, y_pred=y_pred)
    teacher.detach(model)
    assert float(model.compute_loss(x=feats, y=labels, y_pred=y_pred)) == pytest.approx(own)
    # A model that does not distill pays no forward pass for the teacher.
    # A training step traced before the teacher came is traced again.
    model.fit(feats, labels, epochs=1, verbose=0)
    assert model.train_function is not None
    teacher.attach(model, reference)
    assert model.train_function is None
    quiet, _ = _pair(distill_weight=0.0)
    teacher.attach(quiet, reference)
    assert teacher.answers(quiet, feats) is None


def test_the_teacher_is_not_written_with_the_model(tmp_path):
    import h5py

    def entries(path):
        names = []
        with h5py.File(path, "r") as f:
            f.visit(names.append)
        return sorted(names)

    model, reference = _pair()
    model.compile()
    model.save_weights(str(tmp_path / "alone.weights.h5"))
    teacher.attach(model, reference)
    model.save_weights(str(tmp_path / "taught.weights.h5"))
    model.save(str(tmp_path / "taught.keras"))
    assert entries(tmp_path / "taught.weights.h5") == entries(tmp_path / "alone.weights.h5")
    fresh, _ = _pair()
    fresh.compile()
    fresh.load_weights(str(tmp_path / "taught.weights.h5"))  # nothing extra to match
    import keras

    reloaded = keras.models.load_model(str(tmp_path / "taught.keras"), compile=False)
    assert teacher.of(reloaded) is None and len(reloaded.weights) == len(model.weights)


def test_a_regression_teacher_gives_one_score_per_row():
    feats, _ = synthetic_task(8, seed=2)
    student = DactClassifier(tiny_backbone(seed=2), task="regression", output_range=(0.0, 5.0),
                             distill_weight=1.0)
    reference = DactClassifier(tiny_backbone(seed=3), task="regression",
                               output_range=(0.0, 5.0), method="static")
    teacher.attach(student, reference)
    scores = teacher.answers(student, feats)
    assert scores.shape == (8, 1) and scores.dtype == tf.float32
    np.testing.assert_allclose(
        scores.numpy()[:, 0],
        reference(feats, training=False, full_depth=True)["scores"].numpy().reshape(-1),
        rtol=1e-6)
    with pytest.raises(ValueError, match=r"`teacher` must be \[batch, 1\] answers"):
        ops.distillation_loss(np.zeros((3, 8, 1), "float32"), np.zeros((3, 8, 1), "float32"),
                              task="regression", teacher=np.zeros((8,), "float32"))


def test_attach_refuses_a_teacher_that_cannot_teach():
    model, reference = _pair()
    with pytest.raises(ValueError, match="weights file holds no model"):
        teacher.attach(model, None)
    three = DactClassifier(tiny_backbone(seed=1), num_classes=3, method="static")
    with pytest.raises(ValueError, match=r"teacher answers \(task, outputs, inputs\)"):
        teacher.attach(model, three)
    pabee = DactClassifier(tiny_backbone(seed=1), num_classes=2, method="pabee")
    with pytest.raises(ValueError, match="distill_weight"):
        teacher.attach(pabee, reference)


def _data():
    return train_lib.DataConfig(task="sst2", data_dir=builtin_sst2_dir(), sequence_length=16,
                                max_train_examples=96, max_eval_examples=16, batch_size=16)


def test_training_distills_from_the_stage1_model_and_refuses_without_one(tmp_path):
    train_config = train_lib.TrainConfig(epochs=1, learning_rate=1e-3, verbose=0)
    with pytest.raises(ValueError, match="keep --full_depth_stage or give --init_from"):
        train_lib.train(str(tmp_path / "none"), _data(),
                        train_lib.ModelConfig(backbone="tiny", full_depth_stage=False,
                                              target_blocks=0, distill_teacher="reference"),
                        train_config)
    assert not (tmp_path / "none").exists()
    refusals = (
        ({"distill_teacher": "stage1"}, "--distill_teacher must be one of self, reference"),
        ({"distill_teacher": "reference", "method": "pabee"},
         "--distill_teacher=reference needs DACT's distillation loss"),
        ({"distill_teacher": "reference", "distill_weight": 0.0},
         "--distill_teacher=reference needs DACT's distillation loss"),
        ({"distill_teacher": "reference", "init_from": str(tmp_path / "w.weights.h5")},
         "learns from a model directory or .keras file; --init_from=.*w.weights.h5 is neither"),
    )
    for overrides, message in refusals:
        with pytest.raises(ValueError, match=message):
            train_lib.train(str(tmp_path / "bad"), _data(),
                            train_lib.ModelConfig(backbone="tiny", target_blocks=0,
                                                  **overrides), train_config)
        assert not (tmp_path / "bad").exists()
    model_dir = tmp_path / "run"
    model, _, history = train_lib.train(
        str(model_dir), _data(),
        train_lib.ModelConfig(backbone="tiny", target_blocks=0, distill_teacher="reference"),
        train_config)
    reference = teacher.of(model)
    assert reference is not None and reference.method == "static"  # stage 1, frozen
    stage1, _, _ = train_lib.load_model_dir(str(model_dir / "stage1"))
    for mine, theirs in zip(reference.get_weights(), stage1.get_weights()):
        np.testing.assert_array_equal(mine, theirs)  # never trained in stage 2
    assert train_lib.read_config(str(model_dir))["model"]["distill_teacher"] == "reference"
    reloaded, _, _ = train_lib.load_model_dir(str(model_dir))
    assert teacher.of(reloaded) is None and len(reloaded.weights) == len(model.weights)
