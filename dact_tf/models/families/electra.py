"""The ELECTRA family: BERT's embeddings, projected when narrower than the blocks.

Python only: give `DactClassifier` an `ElectraBackbone` you built (keras-hub
has no ELECTRA text-classifier preprocessor for `--backbone` to pair it with).
"""

import keras_hub

from dact_tf.models.families import base
from dact_tf.models.families.bert import BertAdapter


class ElectraAdapter(BertAdapter):
    """ELECTRA: BERT's embeddings, projected when narrower than the blocks."""

    def _project(self, backbone, x):
        if backbone.embedding_dim != backbone.hidden_dim:
            return backbone.embeddings_projection(x)
        return x


class ElectraFamily(base.EncoderFamily):
    name = "electra"
    backbone_cls = keras_hub.models.ElectraBackbone
    adapter = ElectraAdapter()
    loads_specs = False


base.register(ElectraFamily())
