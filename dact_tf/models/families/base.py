"""`EncoderFamily`: what dact_tf needs to know about one kind of keras-hub encoder.

A family is one object, defined in one module of `dact_tf.models.families`:

- `adapter`: how DACT takes the encoder apart (an `EncoderAdapter`: the
  embedding function and the blocks in the order they run);
- loading: which backbone *specs* it answers (`accepts`) and how it loads
  them (`load`): a random `tiny_spec` for tests, keras-hub preset names
  (online) and keras-hub preset folders, and whatever else the family adds
  (BERT: all-MiniLM-L6-v2 and Hugging Face folders);
- preprocessing: its tokenizer and text-classifier preprocessor, rebuilt
  from a model directory's `vocab.txt` (`tokenizer`, `preprocessor`);
- the export vocabulary: the tokenizer's vocabulary, one token a line, with
  `[CLS]`, `[SEP]` and `[PAD]` (a family whose tokenizer cannot be rebuilt
  from such a file sets `loads_specs = False`: Python only).

`register(family)` makes `--backbone`, `DactTextClassifier.from_preset`,
model directories and exports work for it; every module of this package is
imported (and so registered) when `dact_tf.models` is.
"""

import json
import os

import keras

from dact_tf.models import encoders
from dact_tf.models import online

_FAMILIES = {}


class EncoderFamily:
    """One family of keras-hub encoders (subclass it, then `register` an instance).

    Attributes:
        name: str, e.g. `"bert"`.
        backbone_cls: the keras-hub backbone class (subclasses match too).
        tokenizer_cls: its keras-hub tokenizer class (WordPiece).
        preprocessor_cls: its keras-hub text-classifier preprocessor class.
        adapter: the `EncoderAdapter` DACT reads the backbone through.
        tiny_spec: the spec of a small random backbone for tests, or None.
        loads_specs: False for a family usable from Python only (give
            `DactClassifier` a backbone you built).
        task_class_name: the name of the family's `DactTextClassifier`
            subclass (keras-hub finds a saved Task's class by its backbone).
    """

    name = None
    backbone_cls = None
    tokenizer_cls = None
    preprocessor_cls = None
    adapter = None
    tiny_spec = None
    loads_specs = True
    task_class_name = None

    # --------------------------------------------------------------- specs

    def accepts(self, spec):
        """bool: this family loads `spec` (a str)."""
        if not self.loads_specs:
            return False
        return (spec == self.tiny_spec or spec in self.backbone_cls.presets
                or (os.path.isdir(spec) and self._is_own_preset_dir(spec)))

    def spec_help(self):
        """str: the specs this family answers, for error messages and `--help`."""
        if not self.loads_specs:
            return f"{self.name}: from Python only (DactClassifier(backbone))"
        return (f"{self.name}: {self.tiny_spec!r} (random, tests), a keras-hub "
                f"{self.backbone_cls.__name__} preset folder or name (online)")

    def load(self, spec, max_sequence_length=None, dropout=None, gelu_approximate=None,
             seed=0):
        """`(backbone, tokenizer)` for `spec` (see `dact_tf.models.load_backbone`)."""
        if spec == self.tiny_spec:
            return self.tiny(seed, max_sequence_length, dropout)
        if not os.path.isdir(spec):
            online._require_online(spec)
        kwargs = {}
        if dropout is not None:
            kwargs["dropout"] = dropout
        backbone = self.backbone_cls.from_preset(spec, **kwargs)
        self._check_positions(backbone, max_sequence_length, spec)
        return backbone, self.tokenizer_cls.from_preset(spec)

    def load_tokenizer(self, spec):
        """The tokenizer `load(spec)` would return, without the weights."""
        if spec == self.tiny_spec:
            return self.tiny_tokenizer()
        if not os.path.isdir(spec):
            online._require_online(spec)
        return self.tokenizer_cls.from_preset(spec)

    def tiny(self, seed, max_sequence_length, dropout):
        """`(backbone, tokenizer)`: a small random backbone, deterministic given `seed`."""
        raise ValueError(f"The {self.name} family has no tiny random backbone.")

    def tiny_tokenizer(self):
        """The tokenizer of `tiny` (without building the backbone)."""
        raise ValueError(f"The {self.name} family has no tiny random backbone.")

    # -------------------------------------------------------- preprocessing

    def tokenizer(self, vocabulary, lowercase=True):
        """The family's tokenizer over `vocabulary` (a list, or a vocab.txt path)."""
        return self.tokenizer_cls(vocabulary=vocabulary, lowercase=lowercase)

    def preprocessor(self, tokenizer, sequence_length=128, truncate="round_robin"):
        """The family's text-classifier preprocessor (strings, or pairs, to inputs)."""
        return self.preprocessor_cls(tokenizer=tokenizer, sequence_length=sequence_length,
                                     truncate=truncate)

    # -------------------------------------------------------------- helpers

    def _is_own_preset_dir(self, path):
        cls = _preset_dir_backbone_class(path)
        return cls is not None and issubclass(cls, self.backbone_cls)

    @staticmethod
    def _check_positions(backbone, max_sequence_length, spec):
        limit = getattr(backbone, "max_sequence_length", None)
        if max_sequence_length is not None and limit and int(max_sequence_length) > limit:
            raise ValueError(
                f"--sequence_length={max_sequence_length}: the backbone {spec!r} has "
                f"{limit} positions.")


def _preset_dir_backbone_class(path):
    """The backbone class a keras-hub preset folder's config.json names, or None."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        return None
    try:
        with open(config_path, encoding="utf-8") as f:
            name = json.load(f).get("registered_name")
    except (OSError, ValueError, AttributeError):
        return None
    return keras.saving.get_registered_object(name) if name else None


def register(family):
    """Registers `family` (an `EncoderFamily`) and its adapter.

    Raises:
        TypeError / ValueError: not a family, or its name is taken.
    """
    if not isinstance(family, EncoderFamily):
        raise TypeError(f"`family` must be an EncoderFamily, got {type(family).__name__}.")
    if family.name in _FAMILIES and type(_FAMILIES[family.name]) is not type(family):
        raise ValueError(f"An encoder family named {family.name!r} is already registered.")
    _FAMILIES[family.name] = family
    encoders.register(family.backbone_cls, family.adapter)
    return family


def named(name):
    """The registered family called `name`."""
    if name not in _FAMILIES:
        raise ValueError(f"Unknown encoder family {name!r}; registered: {sorted(_FAMILIES)}.")
    return _FAMILIES[name]


def families():
    """Every registered family, by name."""
    return [_FAMILIES[name] for name in sorted(_FAMILIES)]


def for_spec(spec):
    """The family that loads the backbone spec `spec`.

    Raises:
        ValueError: no family loads it (the message lists what each takes).
    """
    for family in families():
        if family.accepts(spec):
            return family
    raise ValueError(
        f"Unknown backbone spec {spec!r}. Each encoder family loads: "
        + "; ".join(f.spec_help() for f in families()) + ".")


def of_backbone(backbone):
    """The registered family whose backbone class `backbone` is (most specific first)."""
    family = _most_specific(backbone, "backbone_cls")
    if family is None:
        raise TypeError(f"No encoder family is registered for {type(backbone).__name__}.")
    return family


def of_tokenizer(tokenizer):
    """The registered family whose tokenizer class `tokenizer` is (most specific first)."""
    family = _most_specific(tokenizer, "tokenizer_cls")
    if family is None:
        raise TypeError(
            f"`tokenizer` must be the tokenizer of a registered encoder family "
            f"({', '.join(f.name for f in families())}), got {type(tokenizer).__name__}.")
    return family


def _most_specific(obj, attribute):
    """The family whose class `attribute` `obj` is an instance of, the most derived; or None."""
    matches = [f for f in families() if getattr(f, attribute) is not None
               and isinstance(obj, getattr(f, attribute))]
    return max(matches, key=lambda f: len(getattr(f, attribute).__mro__), default=None)
