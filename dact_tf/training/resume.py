"""Exact resume: training continues at the batch after the last backup.

`Backup` saves the training state (weights, optimizer, metric totals, the
random generators and how many rows of the CSV logs belong to it) every
`BACKUP_EVERY` batches and at every epoch end; `fit_resumably` runs one
`fit` per epoch on that epoch's data (its order a function of the run's
seed and the epoch only, `epoch_seed`) and skips the batches a resumed
epoch already trained, so an interrupted run takes the same optimizer steps
and writes the same logs as an uninterrupted one.
"""

import csv
import itertools
import json
import os

import keras
import numpy as np

from dact_tf.utils import files

#: Batches between two backups of the training state (and one at every epoch end).
BACKUP_EVERY = 50


def stage_suffix(stage):
    """The suffix of a training stage's backup, checkpoint and best folders."""
    return "" if stage == 1 else f"_stage{stage}"


def epoch_seed(seed, epoch):
    """The shuffling seed of one epoch: a function of the run's seed and the epoch only."""
    if seed is None:
        return None
    return (int(seed) + 1_000_003 * int(epoch)) % (2**31 - 1)


def _csv_rows(path):
    """The data rows (lines after the header) of a CSV log; 0 if there is none."""
    if not os.path.exists(path):
        return 0
    with open(path, newline="") as f:
        return max(0, sum(1 for _ in csv.reader(f)) - 1)


def _trim_csv(path, rows):
    """Keeps a CSV log's header and its first `rows` data rows (drops the others)."""
    if not os.path.exists(path) or _csv_rows(path) <= rows:
        return
    with open(path, newline="") as f:
        kept = list(itertools.islice(csv.reader(f), rows + 1))

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    files.atomic_write(path, write)


class Backup(keras.callbacks.Callback):
    """Backs the training state up every `save_freq` batches and at every epoch end.

    What Keras' `BackupAndRestore` does not: a resumed run continues at the
    batch after the last backup, not at the start of its epoch (Keras 3
    restores the epoch only, so the batches of the interrupted epoch were
    trained twice), and a backup is either complete or absent. Each backup
    is a weights file (model and optimizer state) with a new name, then
    `state.json` (written atomically) naming it with the position reached,
    `{"epoch": e, "batches": k, "weights": ..., "rows": ..., "metrics": ...,
    "rng": ...}`: the first k batches of epoch e are trained. `rows` counts
    the lines of the CSV logs then (a resumed run drops the rows written
    after it: an epoch logged but not backed up is trained and logged
    again); `metrics` holds the epoch's running metric sums and `rng` the
    dropout generators' states, which the weights file lacks, so that a
    resumed run logs and trains what an uninterrupted one does.

    The caller feeds the data from `start_epoch`, skipping the first
    `start_batches` batches of that epoch (with that epoch's order), and
    deletes the folder once the stage's model is saved. Put it after the
    callbacks that log an epoch, so an epoch's backup follows its logs.

    Args:
        backup_dir: str, the folder of the backup (one per training stage).
        save_freq: int >= 1, batches between two backups.
        logs: paths of CSV logs appended once an epoch (history.csv, ...).
        restore_dir: str or None, the backup to resume from when it is not
            `backup_dir`'s own: a multi-worker cluster's workers resume from
            the chief's (its weights are theirs; their own backups could
            stop at another batch when the cluster was killed between two
            writes).
    """

    STATE = "state.json"

    def __init__(self, backup_dir, save_freq=BACKUP_EVERY, logs=(), restore_dir=None):
        super().__init__()
        self.backup_dir = backup_dir
        self.restore_dir = restore_dir or backup_dir
        self.save_freq = int(save_freq)
        self.logs = tuple(logs)
        self.state = self.read_state(self.restore_dir)
        self.start_epoch = self.state["epoch"] if self.state else 0
        self.start_batches = self.state["batches"] if self.state else 0
        self._epoch, self._batches, self._saved_at = self.start_epoch, self.start_batches, 0
        self._pending_metrics = {}

    @classmethod
    def read_state(cls, backup_dir):
        """The last complete backup's state (a dict), or None when there is none.

        Args:
            backup_dir: str, the backup folder.

        Returns:
            None, or a dict with `epoch`, `batches`, `weights` (a file name in
            `backup_dir`), `rows`, `metrics` and `rng` (see the class). A
            backup of an older dact_tf (Keras' `training_metadata.json` and
            `latest.weights.h5`) gives its epoch and batch.

        Raises:
            ValueError: the state is unreadable.
        """
        path = os.path.join(backup_dir, cls.STATE)
        legacy = os.path.join(backup_dir, "training_metadata.json")
        try:
            if os.path.exists(path):
                with open(path) as f:
                    state = json.load(f)
                epoch, batches = int(state["epoch"]), int(state["batches"])
                weights = str(state["weights"])
            elif os.path.exists(legacy) and os.path.exists(
                    os.path.join(backup_dir, "latest.weights.h5")):
                with open(legacy) as f:
                    state = json.load(f)
                epoch, batch = int(state["epoch"]), int(state.get("batch", 0))
                # Keras recorded the index of the last batch trained (0: an epoch end).
                batches, weights, state = (batch + 1 if batch else 0), "latest.weights.h5", {}
            else:
                return None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"{path}: the training backup is unreadable ({type(e).__name__}: {e}). "
                f"Delete {backup_dir} to restart this training stage.") from None
        if os.path.basename(weights) != weights or epoch < 0 or batches < 0:
            raise ValueError(f"{path}: not a dact_tf training backup. Delete {backup_dir} "
                             "to restart this training stage.")

        def part(key, kind):
            value = state.get(key)
            return value if isinstance(value, kind) else kind()

        return {"epoch": epoch, "batches": batches, "weights": weights,
                "rows": part("rows", dict), "metrics": part("metrics", dict),
                "rng": part("rng", list)}

    def restore_logs(self):
        """Drops the CSV log rows written after the backup (call before `fit`)."""
        if self.state:
            for path in self.logs:
                rows = self.state["rows"].get(os.path.basename(path))
                if isinstance(rows, int):
                    _trim_csv(path, rows)

    def _rng_variables(self):
        # Dropout's generators: model variables outside its weights.
        return [v for v in self.model.variables if v.path.endswith("seed_generator_state")]

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            # Its state is part of a backup, written or read.
            optimizer.build(self.model.trainable_variables)
        if not self.state:
            # The initial state: a run killed before its first backup
            # restarts from here (and drops any log row written since).
            self._save()
            return
        path = os.path.join(self.restore_dir, self.state["weights"])
        try:
            self.model.load_weights(path)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(
                f"{path}: the training backup is unreadable ({type(e).__name__}). "
                f"Delete {self.restore_dir} to restart this training stage.") from None
        variables, values = self._rng_variables(), self.state["rng"]
        if len(values) == len(variables):
            for variable, value in zip(variables, values):
                variable.assign(np.asarray(value, dtype=variable.dtype))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._batches = self.start_batches if epoch == self.start_epoch else 0
        self._saved_at = self._batches
        if self._batches:
            # `fit` has just reset the metrics: the resumed epoch's get back
            # the sums of the batches it already trained, so that its logs
            # cover the whole epoch. Metrics Keras builds at the first step
            # get theirs then.
            self._pending_metrics = dict(self.state["metrics"])
            self._restore_metrics(initial=True)

    def _restore_metrics(self, initial):
        for variable in self.model.metrics_variables:
            value = self._pending_metrics.pop(variable.path, None)
            if value is not None:
                value = np.asarray(value, dtype=variable.dtype)
                if initial:
                    variable.assign(value)
                else:
                    variable.assign_add(value)

    def on_train_batch_end(self, batch, logs=None):
        if self._pending_metrics:
            self._restore_metrics(initial=False)
            self._pending_metrics = {}
        # `batch` counts from 0 in every `fit` call; the resumed epoch's call
        # starts after the batches it skips.
        offset = self.start_batches if self._epoch == self.start_epoch else 0
        self._batches = offset + int(batch) + 1
        if self._batches - self._saved_at >= self.save_freq:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._epoch, self._batches = epoch + 1, 0
        self._save()

    def _save(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"epoch{self._epoch:03d}_batch{self._batches:07d}.weights.h5"
        files.atomic_write(os.path.join(self.backup_dir, name), self.model.save_weights)
        files.write_json(os.path.join(self.backup_dir, self.STATE), {
            "epoch": self._epoch, "batches": self._batches, "weights": name,
            "rows": {os.path.basename(path): _csv_rows(path) for path in self.logs},
            "metrics": {v.path: np.asarray(v.numpy()).tolist()
                        for v in self.model.metrics_variables},
            "rng": [np.asarray(v.numpy()).tolist() for v in self._rng_variables()],
        })
        self._saved_at = self._batches
        for old in os.listdir(self.backup_dir):
            if old.endswith(".weights.h5") and old != name and not old.startswith(".tmp-"):
                os.remove(os.path.join(self.backup_dir, old))


    @property
    def position(self):
        """Where training resumes, as one int: `epoch * 10**5 + batches`."""
        return self.start_epoch * 100_000 + self.start_batches


class _OneRunCallbacks(keras.callbacks.CallbackList):
    """The callbacks of one training run spread over one `fit` call per epoch.

    They see one `on_train_begin` (the first call's) and one `on_train_end`
    (once `last` is set), as in a single `fit`.
    """

    def __init__(self, callbacks, **kwargs):
        super().__init__(callbacks, **kwargs)
        self.last = False
        self._begun = False

    def on_train_begin(self, logs=None):
        if not self._begun:
            self._begun = True
            super().on_train_begin(logs)

    def on_train_end(self, logs=None):
        if self.last:
            super().on_train_end(logs)


def fit_resumably(model, epoch_data, validation_data, epochs, callbacks, backup,
                   batches_per_epoch=None, verbose=1):
    """Trains `epochs` epochs, continuing exactly where `backup`'s last backup left off.

    Keras' `fit` can only start an epoch at its first batch, so every epoch
    is one `fit` call on that epoch's data (the resumed epoch's without the
    batches already trained), with the callbacks of a single run.

    Args:
        model: a compiled model.
        epoch_data: `epoch -> tf.data.Dataset`, the batches of that epoch, in
            the same order in every process.
        validation_data: the data `fit` validates on after each epoch.
        epochs: int, the epochs of the stage.
        callbacks: list of Keras callbacks; `backup` among them (last).
        backup: the stage's `Backup`.
        batches_per_epoch: int or None (unknown), for the progress bar.
        verbose: 0 (silent) or 1 (a progress bar).

    Returns:
        The history, a dict of per-epoch lists (the epochs this call trained).
    """
    backup.restore_logs()
    history = keras.callbacks.History()
    run = _OneRunCallbacks([*callbacks, history], add_progbar=verbose != 0, model=model,
                           verbose=verbose, epochs=epochs, steps=batches_per_epoch)
    epoch, skip = backup.start_epoch, backup.start_batches
    if epoch >= epochs:
        # Trained, not yet saved: restore the state and end the run (no epoch).
        run.last = True
        model.fit(epoch_data(epochs - 1).take(1), initial_epoch=epochs, epochs=epochs,
                  callbacks=run, verbose=verbose)
        return history.history
    for epoch in range(epoch, epochs):
        data = epoch_data(epoch)
        steps = batches_per_epoch
        if skip:
            data, steps = data.skip(skip), (None if steps is None else steps - skip)
        run.set_params({**run.params, "steps": steps})
        run.last = epoch == epochs - 1
        model.fit(data, validation_data=validation_data, initial_epoch=epoch,
                  epochs=epoch + 1, callbacks=run, verbose=verbose)
        skip = 0
        if model.stop_training and not run.last:  # e.g. EarlyStopping
            run.last = True
            run.on_train_end()
            break
    return history.history
