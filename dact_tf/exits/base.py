"""The interface of an early-exit method, and the registry of methods.

An early-exit method decides, after every Transformer block, which answer a
row would give and whether it can stop. DACT and the baselines share the
heads, the early-exit loop of `dact_tf.layers.DactEncoder`, the model's
losses and the exports; an `ExitCriterion` object is all that differs:

- its **loop state**: two float32 columns per row, carried from block to
  block (`initial_state`);
- its **step**: after block n, from the block's own answer `y_n` and
  halting value `h_n`, the answer the row would give if it stopped here,
  the new state and whether it stops (`step`);
- its **training loss**, from the loss on the final answer and the
  per-block losses (`loss`);
- its **knobs**: settings that may change after training
  (`configure`), and the sweep `dact_tf.analysis.exit_curve` replays.

Adding a method is one new module with a subclass decorated with
`@register`, imported in `dact_tf/exits/__init__.py`.
"""

import dataclasses

import keras
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


class ExitCriterion:
    """Base class of the early-exit methods (see the module docstring).

    Subclasses set `name` (the registry key and the CLI's `--method`),
    `display_name`, `settings` (the constructor arguments that are knobs,
    stored by `get_config`) and override `step` and `loss`.

    Class attributes:
        accumulates: True where the method answers with DACT's accumulated
            `a_n`: it reads the halting units, pays a ponder cost (the
            `tau` term) and can be calibrated to a number of blocks.
        training_stages: 1, or 2 for a method trained in two stages
            (`DactClassifier.start_second_stage`).
    """

    name = None
    display_name = None
    settings = ()
    accumulates = False
    training_stages = 1

    # ------------------------------------------------------------ checks

    def check(self, task, shared_heads):
        """Raises ValueError where the method cannot run on such a model."""
        del task, shared_heads

    # -------------------------------------------------------------- loop

    def initial_state(self, batch_size, context):
        """The two `[batch]` float32 state columns before block 1."""
        del context
        zeros = tf.zeros(tf.reshape(batch_size, [1]), tf.float32)
        return zeros, zeros

    def step(self, y, h, answer, state, remaining, context):
        """One block: the answer so far, the new state, and who stops.

        Args:
            y: float `[batch, outputs]`, this block's own answer `y_n`.
            h: float `[batch]`, this block's halting value `h_n`.
            answer: float `[batch, outputs]`, the answer after the previous
                block (before block 1: zeros).
            state: the two `[batch]` state columns.
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

    def certified_grid(self, num_layers):
        """The settings a halting certificate tests, safest first.

        `dact_tf.certify.certify_halting` tests them in this order on
        held-out rows and keeps the most aggressive one whose disagreement
        with full depth it can bound (fixed-sequence testing). The first
        setting should agree with full depth on every row.

        Returns:
            A list of `(knob, value, criterion)`; empty for a method without
            a knob (static truncation).
        """
        del num_layers
        return []

    def ponder_cost(self, state):
        """`[batch]`, the ponder cost reported for rows in `state` (0)."""
        return tf.zeros_like(state[0])

    # ---------------------------------------------------------- training

    def loss(self, parts):
        """The training loss, from `LossParts` (default: the main loss)."""
        return parts.main

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
        """The settings `dact_tf.analysis.exit_curve` replays.

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


def names():
    """The registered methods' names, in registration order."""
    return tuple(_REGISTRY)


def get(method, **settings):
    """An `ExitCriterion` from a name, a serialized config or an object.

    Args:
        method: a registered name (`"dact"`, `"pabee"`, ...), a dict from
            `serialize`, or an `ExitCriterion` (returned as is).
        **settings: knobs for a method given by name (None: its default).
            A knob the method does not have is refused.

    Returns:
        An `ExitCriterion` (a copy, when given one).

    Example:
    >>> get("pabee", patience=3)
    Pabee(patience=3)
    """
    settings = {k: v for k, v in settings.items() if v is not None}
    if isinstance(method, ExitCriterion):
        if settings:
            raise ValueError(
                f"Give the settings {sorted(settings)} to the {type(method).__name__} "
                "object itself, not next to it.")
        # A copy: `configure_exit` on one model must not change another's.
        return method.copy()
    if isinstance(method, dict):
        if settings:
            raise ValueError(f"Got settings {sorted(settings)} next to a serialized method.")
        method = keras.saving.deserialize_keras_object(method)
        if not isinstance(method, ExitCriterion):
            raise ValueError(f"The serialized method is a {type(method).__name__}, "
                             "not an ExitCriterion.")
        return method
    if not isinstance(method, str) or method not in _REGISTRY:
        raise ValueError(f"`method` must be one of {names()} or an ExitCriterion, "
                         f"got {method!r}.")
    cls = _REGISTRY[method]
    unknown = sorted(set(settings) - set(cls.settings))
    if unknown:
        cls().configure(**{unknown[0]: settings[unknown[0]]})  # raises, naming the owner
    return cls(**settings)


def from_options(method, options):
    """`get(method, ...)` with the knobs of that method picked from `options`.

    For configs that hold every method's knobs (`dact_tf.config.ModelConfig`,
    configs of models saved before exit methods were objects): the knobs of
    other methods are ignored.

    Args:
        method: a registered name, or anything `get` takes.
        options: a mapping (or dataclass) holding knob values by name.
    """
    if dataclasses.is_dataclass(options):
        options = dataclasses.asdict(options)
    if isinstance(method, str) and method in _REGISTRY:
        return get(method, **{k: options.get(k) for k in _REGISTRY[method].settings})
    return get(method)


def serialize(criterion):
    """A JSON-able config of `criterion`, for `get` (and Keras configs)."""
    return keras.saving.serialize_keras_object(criterion)
