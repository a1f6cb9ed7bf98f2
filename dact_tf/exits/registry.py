"""The registry of early-exit methods: names, configs and the arguments of layers."""

import dataclasses

import keras

from dact_tf import config as config_lib
from dact_tf.exits.base import _REGISTRY
from dact_tf.exits.base import ExitCriterion
from dact_tf.exits.base import register  # noqa: F401  (re-exported)


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


def knob_names():
    """Every registered method's knobs (`halting_rule`, `patience`, ...), in order."""
    names_ = []
    for cls in _REGISTRY.values():
        names_ += [k for k in cls.settings if k not in names_]
    return tuple(names_)


def from_arguments(method, given, config=None):
    """The criterion a layer's or model's arguments describe; takes its knobs out of `given`.

    Args:
        method: a registered name, an `ExitCriterion` or its serialized
            config; None: `config`'s method (default `ModelConfig.method`).
        given: dict of keyword arguments: the exit knobs (`halting_rule`,
            `patience`, ...) are removed from it; a knob of another method
            (not None) is refused.
        config: a `dact_tf.config.ModelConfig` whose knobs a method given by
            name takes where `given` has none; None: the method's defaults
            (which are `ModelConfig`'s).
    """
    if config is not None and not isinstance(config, config_lib.ModelConfig):
        raise TypeError(f"`config` must be a dact_tf.config.ModelConfig, got "
                        f"{type(config).__name__}.")
    knobs = {k: given.pop(k) for k in knob_names() if k in given}
    if method is None:
        method = (config or config_lib.ModelConfig()).method
    if config is not None and isinstance(method, str) and method in _REGISTRY:
        defaults = from_options(method, config).get_config()
        knobs = {**defaults, **{k: v for k, v in knobs.items() if v is not None}}
    return get(method, **knobs)


def legacy_config(config):
    """A saved layer or model `config` with a flat, older exit configuration as `method`.

    Configs written before exit methods were objects store `method` as a
    name next to every method's knobs; the knobs of the model's own method
    are kept, the others dropped.
    """
    config = dict(config)
    legacy = {k: config.pop(k) for k in knob_names() if k in config}
    if legacy:
        config["method"] = from_options(config.get("method", "dact"), legacy)
    return config


def serialize(criterion):
    """A JSON-able config of `criterion`, for `get` (and Keras configs)."""
    return keras.saving.serialize_keras_object(criterion)
