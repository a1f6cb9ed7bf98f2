"""The fine-tuning recipe: AdamW with warm-up and linear decay.

Standard BERT fine-tuning practice (Devlin et al., 2019): AdamW with
decoupled weight decay (not on biases and LayerNorm scales), the learning
rate rising linearly from 0 over the first steps, then falling linearly to 0
at the end of training. A constant learning rate, the first recipe dact_tf
used, lost full depth up to 2.4 points in its second epoch.
"""

import keras
import tensorflow as tf

from dact_tf import config

#: Optimizers `make_optimizer` builds.
OPTIMIZERS = ("adamw", "adam")
# Variables whose names contain these get no weight decay.
_NO_DECAY = ("bias", "gamma", "beta", "layer_norm", "layernorm", "embeddings_layer_norm")


@keras.saving.register_keras_serializable(package="dact_tf")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """A learning rate that rises linearly to `peak`, then falls linearly to 0.

        lr(step) = peak * step / warmup_steps                 step < warmup_steps
        lr(step) = peak * (total - step) / (total - warmup)   after, never < 0

    Args:
        peak: float >= 0, the learning rate at the end of the warm-up.
        warmup_steps: int >= 0, the steps of the linear warm-up.
        total_steps: int >= 1, the steps of the whole training run.

    Example:
    >>> schedule = WarmupLinearDecay(1e-4, warmup_steps=10, total_steps=100)
    >>> float(schedule(5)), float(schedule(10)), float(schedule(100))
    (5e-05, 0.0001, 0.0)
    """

    def __init__(self, peak, warmup_steps, total_steps):
        if not float(peak) >= 0.0:
            raise ValueError(f"`peak` must be >= 0, got {peak}.")
        if int(total_steps) < 1 or not 0 <= int(warmup_steps) <= int(total_steps):
            raise ValueError(
                "Need 0 <= warmup_steps <= total_steps and total_steps >= 1, got "
                f"warmup_steps={warmup_steps}, total_steps={total_steps}."
            )
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = float(max(self.warmup_steps, 1))
        rising = self.peak * step / warmup
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        falling = self.peak * (float(self.total_steps) - step) / decay_steps
        lr = keras.ops.where(step < float(self.warmup_steps), rising, falling)
        return keras.ops.maximum(lr, 0.0)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


@keras.saving.register_keras_serializable(package="dact_tf")
class FitPlannedDecay(WarmupLinearDecay):
    """`WarmupLinearDecay` whose steps each `fit` call plans (see `plan`).

    `DactTextClassifier.compile()`'s default optimizer uses it: `compile`
    cannot know how long training will be, so every `fit` call re-plans the
    schedule over its own steps, starting at the optimizer's current step:
    a warm-up over the first `warmup_fraction` of them, then a linear decay
    to 0 at the end of that `fit`. A second `fit` (more epochs, new data)
    warms up and decays again instead of training at a learning rate of 0.

    Args:
        peak: float >= 0, the learning rate at the end of each warm-up.
        warmup_fraction: float in [0, 1), the fraction of a fit's steps
            spent warming up.
        start_step: int >= 0, the optimizer step where the planned fit
            starts.
        warmup_steps, total_steps: the planned fit's steps (set by `plan`).

    Example:
    >>> schedule = FitPlannedDecay(1e-4)
    >>> schedule.plan(start_step=100, steps=50)
    True
    >>> float(schedule(100)), float(schedule(105)), float(schedule(150))
    (0.0, 0.0001, 0.0)
    """

    def __init__(self, peak, warmup_fraction=0.1, start_step=0, warmup_steps=0, total_steps=1):
        super().__init__(peak, warmup_steps, total_steps)
        if not 0.0 <= float(warmup_fraction) < 1.0:
            raise ValueError(f"`warmup_fraction` must be in [0, 1), got {warmup_fraction}.")
        self.warmup_fraction = float(warmup_fraction)
        self.start_step = int(start_step)

    def plan(self, start_step, steps):
        """Plans the schedule over the `steps` optimizer steps from `start_step`.

        Args:
            start_step: int, the optimizer's step when the fit starts.
            steps: int >= 1, the fit's optimizer steps.

        Returns:
            bool, whether the plan changed (a traced training step must then
            be traced again: the schedule's numbers are constants in it).
        """
        steps = max(int(steps), 1)
        new = (int(start_step), int(round(self.warmup_fraction * steps)), steps)
        old = (self.start_step, self.warmup_steps, self.total_steps)
        self.start_step, self.warmup_steps, self.total_steps = new
        return new != old

    def __call__(self, step):
        step = keras.ops.cast(step, "float32") - float(self.start_step)
        return super().__call__(keras.ops.maximum(step, 0.0))

    def get_config(self):
        return {**super().get_config(), "warmup_fraction": self.warmup_fraction,
                "start_step": self.start_step}


def make_optimizer(name, learning_rate, total_steps=None, warmup_fraction=0.1, weight_decay=0.01):
    """The optimizer of a fine-tuning run.

    Args:
        name: `"adamw"` (the recipe: AdamW, warm-up, linear decay) or
            `"adam"` (Adam at a constant learning rate, no decay: dact_tf's
            first recipe, kept to reproduce old results).
        learning_rate: float >= 0, the peak (adamw) or constant (adam) rate.
        total_steps: int, the run's optimizer steps (adamw); None: each
            `fit` call plans the schedule over its own steps
            (`FitPlannedDecay`, for `DactTextClassifier`).
        warmup_fraction: float in [0, 1), the fraction of `total_steps`
            spent warming up (adamw).
        weight_decay: float >= 0, AdamW's decoupled weight decay; biases and
            LayerNorm parameters are excluded.

    Returns:
        A `keras.optimizers.Optimizer`.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}, got {name!r}.")
    if not float(learning_rate) >= 0.0:
        raise ValueError(f"`learning_rate` must be >= 0, got {learning_rate}.")
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if not 0.0 <= float(warmup_fraction) < 1.0:
        raise ValueError(f"`warmup_fraction` must be in [0, 1), got {warmup_fraction}.")
    if not float(weight_decay) >= 0.0:
        raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}.")
    if total_steps is None:
        schedule = FitPlannedDecay(learning_rate, warmup_fraction)
    else:
        total_steps = max(int(total_steps), 1)
        schedule = WarmupLinearDecay(
            learning_rate, int(round(warmup_fraction * total_steps)), total_steps
        )
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=float(weight_decay))
    optimizer.exclude_from_weight_decay(var_names=list(_NO_DECAY))
    return optimizer


def recipe_optimizer():
    """`compile("auto")`'s optimizer: AdamW as `TrainConfig` says, planned by each `fit`.

    The learning rate (`TrainConfig.learning_rate`, 5e-5), warm-up fraction
    and weight decay are the recipe's, as for `dact-tf train`; the schedule
    is a `FitPlannedDecay` that `plan_fit` plans over every `fit` call.
    """
    train = config.TrainConfig()
    return make_optimizer("adamw", train.learning_rate, total_steps=None,
                          warmup_fraction=train.warmup_fraction, weight_decay=train.weight_decay)


def plan_fit(model, x, batch_size, epochs, kwargs):
    """Plans `model`'s `FitPlannedDecay` (if it has one) over a `fit` call's steps.

    The steps are `steps_per_epoch`, or counted from the data (a dataset's
    batches, or array rows over `batch_size` less `validation_split`),
    times the epochs this call runs; where they cannot be counted the
    schedule keeps its last plan.
    """
    schedule = getattr(getattr(model, "optimizer", None), "_learning_rate", None)
    if not isinstance(schedule, FitPlannedDecay):
        return
    steps = kwargs.get("steps_per_epoch") or _batches_per_epoch(x, batch_size, kwargs)
    if steps is None:
        return
    start = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    if schedule.plan(start, steps * (epochs - kwargs.get("initial_epoch", 0))):
        model.train_function = None  # traced with the old plan


def _batches_per_epoch(x, batch_size, kwargs):
    """Batches in one pass over `x` (a dataset, arrays or a dict of them), or None."""
    if isinstance(x, tf.data.Dataset):
        n = int(x.cardinality())
        if n == tf.data.INFINITE_CARDINALITY:
            return None
        if n == tf.data.UNKNOWN_CARDINALITY:
            n = int(x.reduce(0, lambda count, _: count + 1))
        return n
    first = next(iter(x.values())) if isinstance(x, dict) else x
    if not hasattr(first, "__len__"):
        return None
    rows = int(len(first) * (1.0 - (kwargs.get("validation_split") or 0.0)))
    return max(1, -(-rows // (batch_size or 32)))

