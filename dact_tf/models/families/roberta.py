"""The RoBERTa family (and XLM-RoBERTa, a subclass): token-and-position embeddings, no segments.

Python only: give `DactClassifier` a `RobertaBackbone` or `XLMRobertaBackbone`
you built (their byte-pair / SentencePiece tokenizers are not rebuilt from a
model directory's vocab.txt).
"""

import keras_hub

from dact_tf.models import encoders
from dact_tf.models.families import base


class RobertaFamily(base.EncoderFamily):
    name = "roberta"
    backbone_cls = keras_hub.models.RobertaBackbone
    adapter = encoders.TokenAndPositionAdapter()
    loads_specs = False


base.register(RobertaFamily())
