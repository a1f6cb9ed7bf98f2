"""Schedules for the ponder-cost weight tau, and the callback that applies them."""

import keras


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
    ponder cost pushes them to halt (one of the training variants DACT.md
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

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["tau"] = self.model.tau
