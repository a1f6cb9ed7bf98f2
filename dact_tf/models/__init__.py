"""DACT models and the backbones they are built from.

The Task (`DactTextClassifier`: backbone, preprocessor, training and
calibration in one model) sits above them, in `dact_tf.tasks`.
"""

from dact_tf.models.backbones import DactBertBackbone
from dact_tf.models.backbones import load_backbone
from dact_tf.models.backbones import load_tokenizer
from dact_tf.models.backbones import make_preprocessor
from dact_tf.models.dact_classifier import DactClassifier

