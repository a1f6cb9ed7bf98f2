"""The ALBERT family: projected embeddings; the shared block groups repeat to `num_layers`.

DACT halts over the iterations of the shared blocks. Python only: give
`DactClassifier` an `AlbertBackbone` you built (its SentencePiece tokenizer
is not rebuilt from a model directory's vocab.txt).
"""

import keras_hub

from dact_tf.models.families import base
from dact_tf.models.families.bert import BertAdapter


class AlbertAdapter(BertAdapter):
    """ALBERT: projected embeddings; the block groups repeat to `num_layers`."""

    def _project(self, backbone, x):
        return backbone.embeddings_projection(x)

    def blocks(self, backbone):
        calls_per_group = backbone.num_layers // backbone.num_groups
        return [layer for group in backbone.transformer_layers
                for _ in range(calls_per_group) for layer in group]


class AlbertFamily(base.EncoderFamily):
    name = "albert"
    backbone_cls = keras_hub.models.AlbertBackbone
    adapter = AlbertAdapter()
    loads_specs = False


base.register(AlbertFamily())
