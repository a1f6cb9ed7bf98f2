"""A callback that keeps the model of the best epoch, resumably."""

import json
import math
import os

import keras

from dact_tf.utils import files


class KeepBestEpoch(keras.callbacks.Callback):
    """Restores, at the end of training, the weights of the best epoch.

    Like `keras.callbacks.EarlyStopping(restore_best_weights=True)` without
    stopping, but the best weights and score live in files, so a run that is
    interrupted and resumed (`BackupAndRestore`) still ends with the best
    epoch of the whole run, not of the resumed part. Monitor a metric on rows
    held out of the training data, never on the evaluation set.

    Args:
        monitor: the log key to compare, e.g. `"val_accuracy"`.
        mode: `"max"` or `"min"`.
        directory: where `best.weights.h5` and `best_epoch.json` go.
        min_delta: float >= 0, how much better a score must be to count.

    Example:
    ```python
    model.fit(train, validation_data=holdout, epochs=3,
              callbacks=[KeepBestEpoch("val_accuracy", "max", "runs/x")])
    ```
    """

    WEIGHTS = "best.weights.h5"
    STATE = "best_epoch.json"

    def __init__(self, monitor, mode, directory, min_delta=0.0):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"`mode` must be 'max' or 'min', got {mode!r}.")
        self.monitor = monitor
        self.mode = mode
        self.directory = directory
        self.min_delta = float(min_delta)
        self.best = None
        self.best_epoch = None

    @property
    def _state_path(self):
        return os.path.join(self.directory, self.STATE)

    @property
    def _weights_path(self):
        return os.path.join(self.directory, self.WEIGHTS)

    def on_train_begin(self, logs=None):
        self.best, self.best_epoch = None, None
        if os.path.exists(self._state_path) and os.path.exists(self._weights_path):
            with open(self._state_path) as f:
                state = json.load(f)
            if state.get("monitor") == self.monitor:
                self.best, self.best_epoch = state["best"], state["epoch"]

    def _better(self, value):
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(
                f"KeepBestEpoch monitors {self.monitor!r}, which the logs lack "
                f"(they have {sorted(logs or {})}); pass validation_data to fit."
            )
        value = float(value)
        if math.isnan(value) or not self._better(value):
            return
        files.atomic_write(self._weights_path, self.model.save_weights)
        self.best, self.best_epoch = value, int(epoch)
        files.write_json(self._state_path,
                         {"monitor": self.monitor, "best": value, "epoch": int(epoch)})

    def on_train_end(self, logs=None):
        if self.best_epoch is not None:
            self.model.load_weights(self._weights_path)
