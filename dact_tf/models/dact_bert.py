"""The keras-hub BERT classes dact_tf loads checkpoints into.

GELU. keras-hub's `BertBackbone` hard-codes the tanh approximation of GELU.
That matches the checkpoints that were trained with it (Google's original TF
BERT, hence keras-hub's own `bert_*` presets), but not Hugging Face BERTs
whose `config.json` says `"hidden_act": "gelu"` (exact, erf-based): there the
approximation moves the encoder output by about 3e-3. `DactBertBackbone`
therefore takes a `gelu_approximate` argument, and `load_backbone` sets it from
the checkpoint's own activation unless told otherwise.
"""

import importlib.metadata

import keras
import keras_hub



# ----------------------------------------------------------------------------
# The backbone class.
# ----------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="dact_tf")
class DactBertBackbone(keras_hub.models.BertBackbone):
    """A keras-hub `BertBackbone` whose feed-forward GELU can be exact.

    Identical to `keras_hub.models.BertBackbone` (same layers, weights, names
    and inputs/outputs; it *is* one by `isinstance`) except for the
    activation of the feed-forward network in every transformer block:
    keras-hub always uses the tanh approximation of GELU, which is right for
    checkpoints trained with it (Google's original BERT) but moves the output
    of checkpoints trained with exact GELU (most Hugging Face BERTs) by about
    3e-3. The choice is a constructor argument, so it survives
    `get_config()`/`from_config()` and `keras.saving` round trips.

    Args:
        vocabulary_size: int. Number of token ids.
        num_layers: int. Number of transformer blocks.
        num_heads: int. Attention heads per block.
        hidden_dim: int. Width of the encoder.
        intermediate_dim: int. Width of the feed-forward layer.
        dropout: float. Dropout rate inside the encoder.
        max_sequence_length: int. Number of position embeddings.
        num_segments: int. Number of segment (token type) ids.
        gelu_approximate: bool. `True` for the tanh approximation (keras-hub's
            default), `False` for exact (erf) GELU.
        **kwargs: passed to `keras_hub.models.BertBackbone` (`dtype`,
            `name`, ...).

    Call arguments:
        inputs: dict with `"token_ids"` int `[batch_size, seq_length]`,
            `"segment_ids"` int `[batch_size, seq_length]` and
            `"padding_mask"` bool/int `[batch_size, seq_length]`.

    Returns:
        A dict with `"sequence_output"` float
        `[batch_size, seq_length, hidden_dim]` and `"pooled_output"` float
        `[batch_size, hidden_dim]`.

    Example:
    ```python
    backbone = DactBertBackbone(
        vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=16, gelu_approximate=False)
    out = backbone({
        "token_ids": np.ones((1, 8), "int32"),
        "segment_ids": np.zeros((1, 8), "int32"),
        "padding_mask": np.ones((1, 8), "bool"),
    })
    out["sequence_output"].shape  # (1, 8, 32)
    ```

    References:
        - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805)
        - [Hendrycks and Gimpel, GELU](https://arxiv.org/abs/1606.08415)
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        dropout=0.1,
        max_sequence_length=512,
        num_segments=2,
        gelu_approximate=True,
        **kwargs,
    ):
        super().__init__(
            vocabulary_size=vocabulary_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            dropout=dropout,
            max_sequence_length=max_sequence_length,
            num_segments=num_segments,
            **kwargs,
        )
        self.gelu_approximate = bool(gelu_approximate)
        if not self.gelu_approximate:
            # The functional graph calls each layer again at run time, and
            # `Dense.call` reads `self.activation` then, so swapping the
            # function after construction changes the computation. Setting
            # `TransformerEncoder.activation` too keeps the block's own
            # `get_config()` truthful ("gelu") for code that clones blocks.
            for block in self.transformer_layers:
                block.activation = keras.activations.gelu
                block._feedforward_intermediate_dense.activation = (
                    keras.activations.gelu
                )

    def get_config(self):
        config = super().get_config()
        config["gelu_approximate"] = self.gelu_approximate
        return config


@keras.saving.register_keras_serializable(package="dact_tf")
class DactBertTokenizer(keras_hub.models.BertTokenizer):
    """`BertTokenizer` paired with `DactBertBackbone` for keras-hub presets.

    keras-hub's `from_preset` picks the tokenizer class whose `backbone_cls`
    matches the preset's backbone. This subclass (identical behaviour) makes
    `keras_hub.models.BertTokenizer.from_preset(folder)` work for folders
    written by `DactBertBackbone.save_to_preset`. `load_backbone` itself
    returns plain `BertTokenizer`s.

    Args:
        vocabulary: list of str or a vocabulary file path.
        lowercase: bool.
        **kwargs: passed to `keras_hub.models.BertTokenizer`.

    Example:
    ```python
    backbone, tokenizer = tiny_backbone()
    backbone.save_to_preset("preset"); tokenizer.save_to_preset("preset")
    keras_hub.models.BertTokenizer.from_preset("preset")
    ```
    """

    backbone_cls = DactBertBackbone


@keras.saving.register_keras_serializable(package="dact_tf")
class DactBertTextClassifierPreprocessor(
    keras_hub.models.BertTextClassifierPreprocessor
):
    """`BertTextClassifierPreprocessor` paired with `DactBertBackbone`.

    Like `DactBertTokenizer`: it lets keras-hub's `from_preset` find a
    preprocessor for presets saved from a `DactBertBackbone`. Behaviour is
    keras-hub's; see `make_preprocessor`.

    Args:
        tokenizer: a `BertTokenizer`.
        sequence_length: int.
        truncate: str.
        **kwargs: passed to the keras-hub class.

    Example:
    ```python
    preprocessor = DactBertTextClassifierPreprocessor(tiny_tokenizer(), 16)
    ```
    """

    backbone_cls = DactBertBackbone
    tokenizer_cls = DactBertTokenizer
