"""Trains one tiny DACT model on one device and under MirroredStrategy.

Run in a fresh process by `distribute_test.py`: the two logical CPU devices
must be configured before TensorFlow starts. Writes a JSON report to
argv[1]: per-step losses of both runs, their final weights' largest
difference, the evaluation metrics, and checkpoint round trips between the
two strategies.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from dact_tf import callbacks as dact_callbacks  # noqa: E402
from dact_tf.training import distribute  # noqa: E402
from dact_tf.models.dact_classifier import DactClassifier  # noqa: E402
from tests import testing  # noqa: E402

GLOBAL_BATCH = 8
STEPS = 12


class StepLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def build(strategy, weights=None):
    with strategy.scope():
        model = DactClassifier(
            testing.tiny_backbone(num_layers=3, seed=0), num_classes=2, tau=0.05,
            dropout=0.0, head_loss_weight=0.5, halting_bias=-3.0,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        model(testing.slice_features(FEATURES, 0, 2))
        if weights is not None:
            model.set_weights(weights)
    return model


def dataset():
    # Same order every time, global batches of GLOBAL_BATCH.
    return tf.data.Dataset.from_tensor_slices((FEATURES, LABELS)).batch(GLOBAL_BATCH)


def train(strategy, weights, log_dir):
    model = build(strategy, weights)
    losses = StepLosses()
    callbacks = [
        losses,
        # tau changes every step (a variable assigned from a callback), and
        # the halting statistics run the early-exit loop per replica.
        dact_callbacks.TauScheduler(dact_callbacks.LinearTauWarmup(0.1, STEPS // 2)),
        dact_callbacks.PonderCostLogger(dataset(), log_dir=log_dir),
    ]
    history = model.fit(dataset(), epochs=1, verbose=0, callbacks=callbacks)
    metrics = model.evaluate(dataset(), verbose=0, return_dict=True)
    metrics["logged_mean_layers"] = history.history["val_mean_layers_executed"][-1]
    metrics["tau"] = model.tau
    return model, losses.losses, metrics


FEATURES, LABELS = testing.synthetic_task(GLOBAL_BATCH * STEPS, seq_len=12, seed=3)


def main(out_path):
    one = distribute.get_strategy("one_device")
    mirrored = distribute.get_strategy("mirrored")
    assert mirrored.num_replicas_in_sync == 2, mirrored.num_replicas_in_sync
    initial = build(one).get_weights()
    tmp = os.path.dirname(out_path)
    m1, losses1, metrics1 = train(one, initial, os.path.join(tmp, "tb_one"))
    m2, losses2, metrics2 = train(mirrored, initial, os.path.join(tmp, "tb_mirrored"))
    w1, w2 = m1.get_weights(), m2.get_weights()
    weight_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(w1, w2))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(initial, w1))

    # Checkpoints cross strategies: mirrored -> one device and back.
    path = os.path.join(tmp, "mirrored.weights.h5")
    m2.save_weights(path)
    # Each loaded model against the model whose weights it loaded (the two trained
    # models themselves differ by float32 summation order: `weight_diff`).
    loaded = build(one)
    loaded.load_weights(path)
    probe = testing.slice_features(FEATURES, 0, 32)

    def gap(model, ref_model):
        ours = model.predict(probe, verbose=0)["probabilities"]
        return float(np.max(np.abs(ours - ref_model.predict(probe, verbose=0)["probabilities"])))

    cross_one = gap(loaded, m2)
    path = os.path.join(tmp, "one.weights.h5")
    m1.save_weights(path)
    loaded = build(mirrored)
    loaded.load_weights(path)
    cross_mirrored = gap(loaded, m1)
    report = {
        "losses_one_device": losses1,
        "losses_mirrored": losses2,
        "metrics_one_device": metrics1,
        "metrics_mirrored": metrics2,
        "weight_diff": weight_diff,
        "weights_moved": moved,
        "cross_load_one_device": cross_one,
        "cross_load_mirrored": cross_mirrored,
    }
    with open(out_path, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
