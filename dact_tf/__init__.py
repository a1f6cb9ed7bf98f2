"""dact_tf: Differentiable Adaptive Computation Time for Transformer encoders.

DACT-BERT (Eyzaguirre et al., arXiv:2109.11745) for Keras 3 and TensorFlow:
a small head after every Transformer block gives an answer and a halting
value, a differentiable recurrence mixes the answers, a ponder cost teaches
the model to stop early, and inference skips the remaining blocks as soon as
they provably cannot change the prediction.
"""

import os

from dact_tf.utils import quiet as _quiet

# The `dact-tf` command (and the demo) hide TensorFlow's start-up noise; this
# must happen before TensorFlow is imported. Library users are not affected.
if _quiet.is_command_line():
    _quiet.install()

# dact_tf builds TensorFlow graphs (tf.while_loop, SavedModel, TFLite): it
# needs Keras on the TensorFlow backend.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "dact_tf needs the TensorFlow Keras backend, but KERAS_BACKEND is "
        f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow."
    )

from dact_tf import config  # noqa: E402
from dact_tf import exits  # noqa: E402
from dact_tf import ops  # noqa: E402
from dact_tf.layers import DactEncoder  # noqa: E402
from dact_tf.layers import DactHeads  # noqa: E402
from dact_tf.version import __version__  # noqa: E402
from dact_tf import callbacks  # noqa: E402
from dact_tf.models import DactClassifier  # noqa: E402
from dact_tf.models import load_backbone  # noqa: E402
from dact_tf.models import make_preprocessor  # noqa: E402
from dact_tf import calibration  # noqa: E402
from dact_tf import training  # noqa: E402  (registers WarmupLinearDecay for loading)
from dact_tf.tasks import DactTextClassifier  # noqa: E402

# Where the modules that once lay at the top of the package live now (the
# rooms: utils, models, training, calibration, evaluation, tasks). Old imports
# (`from dact_tf import train_lib`) keep working, with a DeprecationWarning.
_MOVED = {
    "analysis": "dact_tf.evaluation.analysis",
    "calibration_run": "dact_tf.calibration.calibration_run",
    "certify": "dact_tf.calibration.certify",
    "distribute": "dact_tf.training.distribute",
    "files": "dact_tf.utils.files",
    "model_dir": "dact_tf.models.model_dir",
    "optimization": "dact_tf.models.optimization",
    "plots": "dact_tf.evaluation.plots",
    "prediction": "dact_tf.evaluation.prediction",
    "progress": "dact_tf.utils.progress",
    "resume": "dact_tf.training.resume",
    "risk_bounds": "dact_tf.calibration.risk_bounds",
    "train_lib": "dact_tf.training.train_lib",
    "training_run": "dact_tf.training.training_run",
}


def __getattr__(name):
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(f"dact_tf.{name} moved to {_MOVED[name]}; import it from there.",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(_MOVED[name])
    raise AttributeError(f"module 'dact_tf' has no attribute {name!r}")
