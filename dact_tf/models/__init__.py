"""DACT models and the backbones they are built from."""

from dact_tf.models.backbones import DactBertBackbone
from dact_tf.models.backbones import load_backbone
from dact_tf.models.backbones import load_tokenizer
from dact_tf.models.backbones import make_preprocessor
from dact_tf.models.dact_classifier import DactClassifier
from dact_tf.models.text_classifier import DactTextClassifier
