"""The DistilBERT family: `DistilBertBackbone`, WordPiece, no segment ids.

Specs it loads: `"tiny_distil_bert"` (a small random 4-block DistilBERT over
the `"tiny"` vocabulary, for tests), a keras-hub DistilBERT preset folder
(`save_to_preset`), or a keras-hub DistilBERT preset name such as
`"distil_bert_base_en_uncased"` (online). Pairs are packed as BERT packs them
(`[CLS] a [SEP] b [SEP]`), without segment ids: the encoder has none.

This module is the whole family: dact_tf's command line, `from_preset`,
model directories and exports need no other edit to serve it.
"""

import keras_hub

from dact_tf.models import encoders
from dact_tf.models import tiny
from dact_tf.models.families import base


class DistilBertFamily(base.EncoderFamily):
    """DistilBERT: token-and-position embeddings, then the blocks."""

    name = "distil_bert"
    backbone_cls = keras_hub.models.DistilBertBackbone
    tokenizer_cls = keras_hub.models.DistilBertTokenizer
    preprocessor_cls = keras_hub.models.DistilBertTextClassifierPreprocessor
    adapter = encoders.TokenAndPositionAdapter()
    tiny_spec = "tiny_distil_bert"
    task_class_name = "DactDistilBertTextClassifier"

    def tiny(self, seed, max_sequence_length, dropout):
        if max_sequence_length is not None and not 1 <= int(max_sequence_length) <= 512:
            raise ValueError(
                f"--sequence_length={max_sequence_length}: the tiny backbone has at most 512 "
                "positions.")
        tokenizer = self.tiny_tokenizer()
        backbone = self.backbone_cls(
            vocabulary_size=tokenizer.vocabulary_size(), num_layers=4, num_heads=2,
            hidden_dim=32, intermediate_dim=64,
            dropout=0.1 if dropout is None else dropout,
            max_sequence_length=max_sequence_length or 128, name="tiny_distil_bert_backbone")
        tiny.seed_weights(backbone, seed)
        return backbone, tokenizer

    def tiny_tokenizer(self):
        return self.tokenizer(tiny.tiny_vocabulary(), lowercase=True)


base.register(DistilBertFamily())
