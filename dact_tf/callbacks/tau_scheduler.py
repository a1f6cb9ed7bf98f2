"""Schedules for the ponder-cost weight tau, and the callback that applies them."""

import keras
import numpy as np


def _check_tau(name, value):
    value = float(value)
    if not value >= 0.0:
        raise ValueError(f"`{name}` must be >= 0, got {value}.")
    return value


@keras.saving.register_keras_serializable(package="dact_tf")
class ConstantTau:
    """tau stays at `value`.

    Args:
        value: float >= 0.

    Example:
    >>> ConstantTau(1e-3)(100)
    0.001
    """

    def __init__(self, value):
        self.value = _check_tau("value", value)

    def __call__(self, step):
        return self.value

    def get_config(self):
        return {"value": self.value}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="dact_tf")
class LinearTauWarmup:
    """tau grows linearly from `initial` to `target` over `warmup_steps`.

    Starting with a small tau lets the heads learn to answer before the
    ponder cost pushes them to halt (one of the training variants the paper
    leaves open).

    Args:
        target: float >= 0, tau after the warm-up.
        warmup_steps: int >= 0, steps (or epochs, with `update="epoch"`)
            until `target` is reached.
        initial: float >= 0, tau at step 0.

    Example:
    >>> schedule = LinearTauWarmup(1e-2, warmup_steps=100)
    >>> schedule(0), schedule(50), schedule(500)
    (0.0, 0.005, 0.01)
    """

    def __init__(self, target, warmup_steps, initial=0.0):
        self.target = _check_tau("target", target)
        self.initial = _check_tau("initial", initial)
        if int(warmup_steps) < 0:
            raise ValueError(f"`warmup_steps` must be >= 0, got {warmup_steps}.")
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        if self.warmup_steps == 0 or step >= self.warmup_steps:
            return self.target
        frac = max(float(step), 0.0) / self.warmup_steps
        return self.initial + frac * (self.target - self.initial)

    def get_config(self):
        return {
            "target": self.target,
            "warmup_steps": self.warmup_steps,
            "initial": self.initial,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class TauScheduler(keras.callbacks.Callback):
    """Sets the model's ponder-cost weight tau from a schedule during `fit`.

    The step is read from the optimizer's iteration counter, so a run
    resumed from a checkpoint continues the schedule where it stopped.

    Args:
        schedule: a float (constant tau) or a callable `step -> tau`, e.g.
            `ConstantTau` or `LinearTauWarmup`.
        update: `"batch"` (step = optimizer iterations) or `"epoch"`
            (step = epoch index).
        verbose: int, 1 prints tau at each epoch start.

    Example:
    ```python
    model.fit(
        train_ds,
        epochs=3,
        callbacks=[TauScheduler(LinearTauWarmup(1e-2, warmup_steps=500))],
    )
    ```
    """

    def __init__(self, schedule, update="batch", verbose=0):
        super().__init__()
        if isinstance(schedule, (int, float)):
            schedule = ConstantTau(schedule)
        if not callable(schedule):
            raise ValueError(
                f"`schedule` must be a float or a callable, got {schedule!r}."
            )
        if update not in ("batch", "epoch"):
            raise ValueError(f"`update` must be 'batch' or 'epoch', got {update!r}.")
        self.schedule = schedule
        self.update = update
        self.verbose = verbose

    def _set(self, step):
        tau = _check_tau("tau from the schedule", self.schedule(step))
        if not hasattr(self.model, "tau"):
            raise ValueError(
                "TauScheduler needs a model with a `tau` attribute (a "
                f"dact_tf DactClassifier), got {type(self.model).__name__}."
            )
        self.model.tau = tau
        return tau

    def on_epoch_begin(self, epoch, logs=None):
        if self.update == "epoch":
            tau = self._set(epoch)
        else:
            tau = self._set(int(self.model.optimizer.iterations.numpy()))
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: tau = {tau:.6g}")

    def on_train_batch_begin(self, batch, logs=None):
        if self.update == "batch":
            self._set(int(self.model.optimizer.iterations.numpy()))

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None:  # per-step TensorBoard scalars see tau
            logs["tau"] = self.model.tau

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["tau"] = self.model.tau


class TargetBlocksTau(keras.callbacks.Callback):
    """Steers tau during training so that DACT exits after about `target_blocks`.

    Users think in compute, not in tau. During the warm-up tau grows
    linearly from 0 to `initial_tau` (as `LinearTauWarmup`); after it, every
    `interval` batches the mean number of blocks the early exit runs is
    measured and tau is multiplied by `exp(gain * (blocks - target) / N)`
    (N the model's blocks): too many blocks raise tau, too few lower it.
    With `data` (a few batches of held-out rows) the blocks are measured
    there, at inference, exactly as the exit will run; without, they are
    estimated from the training batches (where dropout makes exits later).
    A final `dact_tf.calibration.halting_bias.calibrate_halting_bias` pins the target.

    tau lives in the model's weights, so a resumed run continues from the
    tau it had reached.

    Args:
        target_blocks: float, the mean blocks to aim at.
        initial_tau: float > 0, tau at the end of the warm-up.
        warmup_steps: int >= 0, optimizer steps of the linear warm-up.
        data: None, or a small dataset of `(features, labels)` or features
            to measure the blocks on (e.g. 4 batches of held-out rows).
        gain: float > 0, how strongly tau reacts (per block of error,
            relative to N).
        interval: int >= 1, batches between two tau updates (default 50
            with `data`, 10 without).
        tau_range: `(lo, hi)`, the bounds of tau.

    Example:
    ```python
    model.fit(train, epochs=2, callbacks=[
        TargetBlocksTau(3.0, 0.06, warmup_steps=500, data=holdout.take(4))])
    ```
    """

    def __init__(self, target_blocks, initial_tau, warmup_steps, data=None, gain=None,
                 interval=None, tau_range=(1e-4, 10.0)):
        super().__init__()
        if not float(initial_tau) > 0:
            raise ValueError(f"`initial_tau` must be > 0, got {initial_tau}.")
        self.target_blocks = float(target_blocks)
        self.warmup = LinearTauWarmup(initial_tau, warmup_steps)
        self.data = data
        self.gain = float(gain or (2.0 if data is not None else 0.5))
        self.interval = int(interval or (50 if data is not None else 10))
        self.tau_range = tuple(float(v) for v in tau_range)
        self.blocks = None
        self._seen = (0.0, 0.0)

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_begin(self, batch, logs=None):
        step = self._step()
        if step < self.warmup.warmup_steps:
            self.model.tau = self.warmup(step)

    def _training_estimate(self):
        # The batch's own mean, from the running mean's total and count.
        tracker = self.model.layers_executed_tracker
        total = float(tracker.total.numpy())
        count = float(tracker.count.numpy())
        seen_total, seen_count = self._seen
        self._seen = (total, count)
        if count <= seen_count:
            return  # the tracker was reset (a new epoch)
        blocks = (total - seen_total) / (count - seen_count)
        self.blocks = blocks if self.blocks is None else 0.9 * self.blocks + 0.1 * blocks

    def on_train_batch_end(self, batch, logs=None):
        self._steer()
        if logs is not None:  # per-step TensorBoard scalars see tau
            logs["tau"] = self.model.tau

    def _steer(self):
        if self.data is None:
            self._training_estimate()
        step = self._step()
        if step < self.warmup.warmup_steps or step % self.interval:
            return
        if self.data is not None:
            from dact_tf.callbacks.ponder_logger import halting_statistics

            self.blocks = halting_statistics(self.model, self.data)["mean_layers_executed"]
        if self.blocks is None:
            return
        error = (self.blocks - self.target_blocks) / self.model.num_layers
        lo, hi = self.tau_range
        tau = max(self.model.tau, lo) * float(np.exp(self.gain * error))
        self.model.tau = min(max(tau, lo), hi)

    def on_epoch_begin(self, epoch, logs=None):
        self._seen = (0.0, 0.0)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["tau"] = self.model.tau
