"""Encoder families: one module each, holding all dact_tf knows about one kind of encoder.

A family (`base.EncoderFamily`) is its adapter (how DACT takes the encoder
apart into blocks), its checkpoint loading (the backbone specs it answers),
its tokenizer and preprocessor, and so its export vocabulary. Every module
of this package is imported, and so registers its family, when
`dact_tf.models` is: a new family is one new module here, and `--backbone`,
`DactTextClassifier.from_preset`, model directories and exports then work
for it. Built in: `bert` and `distil_bert` (loadable by spec), `electra`,
`albert` and `roberta` (Python only: `DactClassifier(backbone)`).
"""

import importlib
import pkgutil

from dact_tf.models.families.base import EncoderFamily  # noqa: F401
from dact_tf.models.families.base import families  # noqa: F401
from dact_tf.models.families.base import for_spec  # noqa: F401
from dact_tf.models.families.base import named  # noqa: F401
from dact_tf.models.families.base import of_backbone  # noqa: F401
from dact_tf.models.families.base import of_tokenizer  # noqa: F401
from dact_tf.models.families.base import register  # noqa: F401

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")
