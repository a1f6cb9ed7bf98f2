"""Early-exit methods as objects: DACT and the baselines behind one interface.

`dact_tf.layers.DactEncoder` runs any `ExitCriterion` in its early-exit
loop; `DactClassifier(method=...)` takes a registered name or an object:

>>> from dact_tf import exits
>>> exits.names()
('dact', 'pabee', 'deebert', 'static')
>>> exits.get("deebert", entropy_threshold=0.2)
DeeBert(entropy_threshold=0.2)

To add a method, subclass `ExitCriterion` in a new module, decorate it
with `@exits.register` and import the module here.
"""

from dact_tf.exits.base import ExitContext
from dact_tf.exits.base import ExitCriterion
from dact_tf.exits.base import LossParts
from dact_tf.exits.registry import from_arguments
from dact_tf.exits.registry import from_options
from dact_tf.exits.registry import knob_names
from dact_tf.exits.registry import legacy_config
from dact_tf.exits.registry import get
from dact_tf.exits.registry import names
from dact_tf.exits.base import register
from dact_tf.exits.registry import serialize
# The methods, in the order `names()` lists them.
from dact_tf.exits.dact import Dact
from dact_tf.exits.pabee import Pabee
from dact_tf.exits.deebert import DeeBert
from dact_tf.exits.static import Static

__all__ = ["Dact", "DeeBert", "ExitContext", "ExitCriterion", "LossParts", "Pabee", "Static",
           "from_arguments", "from_options", "get", "knob_names", "legacy_config", "names",
           "register", "serialize"]
