"""The interface of an early-exit method, and the registry of methods.

An early-exit method decides, after every Transformer block, which answer a
row would give and whether it can stop. DACT and the baselines share the
heads, the early-exit loop of `dact_tf.layers.DactEncoder`, the model's
losses and the exports; an `ExitCriterion` object is all that differs:

- its **loop state**: named float32 columns per row (`state_fields`, any
  number), carried from block to block (`initial_state`);
- its **step**: after block n, from the block's own answer `y_n` and
  halting value `h_n`, the answer the row would give if it stopped here,
  the new state and whether it stops (`step`);
- its **training loss**, from the loss on the final answer and the
  per-block losses (`loss`);
- its **knobs**: settings that may change after training
  (`configure`), and the sweep `dact_tf.evaluation.analysis.exit_curve` replays.

Adding a method is one new module with a subclass decorated with
`@register`, imported in `dact_tf/exits/__init__.py`.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf


_REGISTRY = {}


@dataclasses.dataclass(frozen=True)
class ExitContext:
    """What an exit criterion needs to know about the model it runs in.

    Attributes:
        task: `"classification"` or `"regression"`.
        output_range: `(lo, hi)`, the score range of a regression model.
        tolerance: float > 0, regression: the largest change of a score an
            exit may cause (DACT) or that counts as "the same prediction"
            (PABEE).
    """

    task: str = "classification"
    output_range: tuple = (0.0, 1.0)
    tolerance: float = 0.05


@dataclasses.dataclass
class LossParts:
    """What `ExitCriterion.loss` may combine.

    Attributes:
        main: scalar, the compiled loss on the model's final answer (the
            answer of the last block: `a_N` for DACT, `y_N` otherwise), plus
            the losses layers added (DACT's `tau` times the ponder cost).
        block_losses: a function returning `[num_layers]`, each block's own
            answer's loss (already scaled for the replicas); computed only
            when called.
        block_answers: `[num_layers, batch, outputs]`, the `y_n`.
        block_accumulated: `[num_layers, batch, outputs]`, DACT's `a_n`, or
            None.
        head_loss_weight: scalar, the weight of the mean per-block loss.
        distill_weight: float, the weight of the self-distillation loss.
        replicas: int, the replicas in sync (to scale added losses).
        stage: int, the training stage (1, or 2 for two-stage methods).
        num_layers: int, the blocks.
        context: the `ExitContext`.
        teacher: `[batch, outputs]`, a reference model's answers that the
            distillation loss teaches (`distill_teacher="reference"`), or
            None: the model's own deepest head.
    """

    main: object
    block_losses: object
    block_answers: object
    block_accumulated: object
    head_loss_weight: object
    distill_weight: float
    replicas: int
    stage: int
    num_layers: int
    context: ExitContext
    teacher: object = None


class ExitCriterion:
    """Base class of the early-exit methods (see the module docstring).

    Subclasses set `name` (the registry key and the CLI's `--method`),
    `display_name`, `settings` (the constructor arguments that are knobs,
    stored by `get_config`) and override `step` and `loss`.

    Beyond the loop, a method owns what differs between methods elsewhere:
    which answers a trace holds for it (`answers_in`), the extra per-block
    columns `evaluate --per_block` reports (`per_block_columns`), how a
    replay shifts its halting (`replay_halting`), its recipe's settings
    (`recipe_settings`, `uses_full_depth_stage`, `check_distill_weight`),
    its compute target (`check_target_blocks`, `calibrates_to_target`),
    its training stages (`training_stages`, `start_stage`) and its proven
    setting (`proven_form`). Nothing outside `dact_tf/exits/` asks which
    method it holds.

    Class attributes:
        training_stages: 1, or 2 for a method trained in two stages
            (`start_stage`).
        trains_halting_units: True where the method reads the halting
            units (then they are trained; otherwise they are frozen).
        certifies_drop: True where a certified drop can choose the method's
            halting shift and learned score together
            (`dact_tf.calibration.certified_drop`; the method then has
            `certified_form(weights, threshold)`).
    """

    name = None
    display_name = None
    settings = ()
    #: The names of the loop state's columns (`initial_state`, `step`).
    state_fields = ()
    training_stages = 1
    trains_halting_units = False
    certifies_drop = False

    # ------------------------------------------------------------ checks

    def check(self, task, shared_heads):
        """Raises ValueError where the method cannot run on such a model."""
        del task, shared_heads

    # -------------------------------------------------------------- loop

    def initial_state(self, batch_size, context):
        """The state before block 1: a tuple of `[batch]` float32 columns, one per
        name in `state_fields` (default: zeros)."""
        del context
        zeros = tf.zeros(tf.reshape(batch_size, [1]), tf.float32)
        return tuple(zeros for _ in self.state_fields)

    def step(self, y, h, answer, state, remaining, context):
        """One block: the answer so far, the new state, and who stops.

        Args:
            y: float `[batch, outputs]`, this block's own answer `y_n`.
            h: float `[batch]`, this block's halting value `h_n`.
            answer: float `[batch, outputs]`, the answer after the previous
                block (before block 1: zeros).
            state: the tuple of `[batch]` state columns (`state_fields`).
            remaining: int (tensor or Python), the blocks after this one.
            context: the `ExitContext`.

        Returns:
            `(answer, state, stops)`: the row's answer if it stopped here,
            the new state columns and bool `[batch]`.
        """
        raise NotImplementedError

    def proven(self, answer, state, remaining, context, stops):
        """Where a row that stops here provably gives the answer it would give uncapped.

        The early-exit loop reports it as `exact` under a cap on the
        blocks (`serve_budget`). Default: every row the method stops (its
        uncapped answer is, by definition, the one it stops with). A rule
        certified on data rather than proven (DACT's `"certified"`) answers
        the proof alone.

        Args:
            answer, state, remaining, context: as `step` got and returned.
            stops: bool `[batch]`, what `step` returned.

        Returns:
            bool `[batch]`.
        """
        del answer, state, remaining, context
        return stops

    def certified_grid(self, num_layers, fit_trace=None, context=None):
        """The settings a halting certificate tests, safest first.

        `dact_tf.calibration.certify.certify_halting` tests them in this order on
        held-out rows and keeps the most aggressive one whose disagreement
        with full depth it can bound (fixed-sequence testing). The first
        setting should agree with full depth on every row.

        Args:
            num_layers: int, the model's blocks.
            fit_trace: a trace (`dact_tf.evaluation.analysis.trace_dataset`)
                of rows the certificate does not use, on which a method may
                fit its grid (DACT: a learned consistency score), or None.
            context: the model's `ExitContext`, or None.

        Returns:
            A list of `(knob, value, criterion)`; empty for a method without
            a knob (static truncation).
        """
        del num_layers, fit_trace, context
        return []

    def ponder_cost(self, state, answer):
        """`[batch]`, the ponder cost reported for rows in `state` (default: 0).

        Args:
            state: the state columns; answer: `[batch, outputs]`, the rows'
                answers.
        """
        del state
        return tf.zeros(tf.shape(answer)[:1], tf.float32)

    # ---------------------------------------------------------- training

    def loss(self, parts):
        """The training loss, from `LossParts` (default: the main loss)."""
        return parts.main

    def training_callbacks(self, model_config, target_blocks, steps_per_epoch, total_steps,
                           selection):
        """Keras callbacks the method's training needs (default: none).

        Args:
            model_config: the `ModelConfig` being trained.
            target_blocks: the compute target, or None.
            steps_per_epoch, total_steps: ints.
            selection: the held-out selection dataset.
        """
        del model_config, target_blocks, steps_per_epoch, total_steps, selection
        return []

    def start_stage(self, model, stage):
        """Prepares `model` (a `DactClassifier`) for training stage `stage` (2).

        Default: a one-stage method refuses.
        """
        del model
        raise ValueError(f"`method={self.name!r}` trains in one stage, not in two stages "
                         f"(no stage {stage}).")

    def recipe_settings(self, model_config, task="classification"):
        """The recipe's settings this method uses, from a `ModelConfig`.

        Returns:
            A dict with `distill_weight` and `halting_confidence`: the
            config's values where the method uses them, else 0.
        """
        del model_config, task
        return {"distill_weight": 0.0, "halting_confidence": 0.0}

    def check_distill_weight(self, weight):
        """Refuses a self-distillation weight the method cannot use."""
        if weight:
            raise ValueError(
                f"`distill_weight` trains DACT's accumulated answers; `method={self.name!r}` "
                "has none (use 0).")

    def uses_full_depth_stage(self, model_config):
        """Whether `train` first fine-tunes a plain full-depth model (stage 1)."""
        del model_config
        return False

    # ---------------------------------------------------- compute target

    def calibrates_to_target(self, model_config):
        """Whether training calibrates this method to `model_config.target_blocks`."""
        del model_config
        return False

    def check_target_blocks(self, target_blocks, num_layers):
        """Refuses a compute target (mean blocks) the method cannot be calibrated to."""
        del target_blocks, num_layers
        raise ValueError(f"`target_blocks` calibrates DACT's halting units; "
                         f"`method={self.name!r}` has none.")

    # ------------------------------------------------------------ traces

    def answers_in(self, trace):
        """`[N, batch, outputs]`: the answer a row gives when it stops after each block.

        From a trace (`DactEncoder.trace` or `dact_tf.evaluation.analysis.trace_dataset`):
        the blocks' own answers `y_n` (DACT: the accumulated `a_n`). The last
        is the model's full-depth answer.
        """
        return trace["answers"]

    def reported_ponder_cost(self, trace):
        """`[batch]`, the `"ponder_cost"` output for a full-depth trace (default: 0)."""
        return tf.zeros_like(trace["ponder_cost"])

    def ponder_loss(self, trace, ponder, context):
        """`[batch]`, the cost training adds times `tau`, or None (default: none).

        Args:
            trace: a training trace (`DactEncoder.trace`).
            ponder: the encoder's `ponder` setting.
            context: the `ExitContext`.
        """
        del trace, ponder, context
        return None

    def training_outputs(self, trace):
        """Extra outputs of a training call that the method's `loss` reads."""
        del trace
        return {}

    def replay_halting(self, trace, shift):
        """The halting values a replay reads, `[N, rows]` (numpy or tensor).

        `shift` is DACT's calibration knob (added to the halting logits);
        the other methods never read the halting values.
        """
        del shift
        halting = trace.get("halting")
        if halting is None:
            answers = trace["answers"]
            return np.zeros(answers.shape[:2], np.float32)
        return halting

    def per_block_columns(self, trace, index, score):
        """Extra columns of `evaluate --per_block`'s row for block `index` (0-based).

        `score(answers)` gives the task metrics of `[rows, outputs]` answers.
        """
        del trace, index, score
        return {}

    def proven_form(self):
        """A copy of this criterion set to its proven setting (default: itself)."""
        return self.copy()

    # ------------------------------------------------------------- knobs

    def configure(self, **settings):
        """Changes knobs after training; a knob of another method is refused.

        Every setting is checked before any is applied: a refused call
        changes nothing.
        """
        for key in settings:
            if key not in self.settings:
                owners = [n for n, c in _REGISTRY.items() if key in c.settings]
                raise ValueError(
                    f"`{key}` is a setting of {' or '.join(owners) or 'no method'}; "
                    f"this model's method is {self.name!r}"
                    + (f" (its settings: {', '.join(self.settings)})." if self.settings
                       else ", which has none."))
        probe = self.copy()
        for key, value in settings.items():
            probe._set(key, value)  # raises on a bad value
        for key in settings:
            setattr(self, key, getattr(probe, key))

    def _set(self, key, value):
        """Checks and sets one knob (subclasses validate here)."""
        setattr(self, key, value)

    def copy(self):
        """An independent criterion with the same settings."""
        return type(self).from_config(self.get_config())

    def sweep(self, num_layers):
        """The settings `dact_tf.evaluation.analysis.exit_curve` replays.

        Returns:
            A list of `(knob, value, criterion, halting_shift)`: the knob's
            name and value, a criterion with that value, and a shift added
            to every halting unit's logit (DACT's calibration knob; 0 for
            the others). Empty for a method without a knob.
        """
        del num_layers
        return []

    def summary(self):
        """The settings an evaluation report names (default: all knobs)."""
        return self.get_config()

    def get_config(self):
        return {key: getattr(self, key) for key in self.settings}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.get_config().items()))))


def quantile_grid(values, size=200, descending=True):
    """A threshold grid from rows a certificate does not see: `size + 1` quantiles, deduplicated.

    Fixed-sequence testing needs its grid fixed before the calibration rows
    are read; quantiles of a score on other rows (the selection rows) put
    the thresholds where rows actually are, so the grid is fine where it
    matters.

    Args:
        values: array of the score on those rows.
        size: int, the number of quantile steps.
        descending: bool, highest first (a score that stops rows at or above
            the threshold), else lowest first.

    Returns:
        A list of floats (rounded to 6 decimals), safest first.
    """
    values = np.asarray(values, np.float64).ravel()
    if not values.size:
        return []
    quantiles = np.round(np.quantile(values, np.linspace(0.0, 1.0, size + 1)), 6)
    return sorted({float(q) for q in quantiles}, reverse=descending)


def register(cls):
    """Class decorator: registers an `ExitCriterion` under `cls.name`.

    The class also becomes a Keras serializable (package `dact_tf`), so a
    model holding it round-trips through `.keras` files in `safe_mode`.
    """
    if not (isinstance(cls, type) and issubclass(cls, ExitCriterion)) or not cls.name:
        raise TypeError("@register needs an ExitCriterion subclass with a `name`.")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"An exit method named {cls.name!r} is already registered.")
    _REGISTRY[cls.name] = cls
    return keras.saving.register_keras_serializable(package="dact_tf")(cls)
