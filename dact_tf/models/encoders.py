"""How DACT reads a keras-hub encoder: its embeddings and its list of blocks.

DACT runs an encoder's Transformer blocks one at a time, with a head after
each, so it needs the encoder taken apart: an *embedding function* (token
inputs to the first block's input) and the *blocks* in the order they run.
An `EncoderAdapter` gives both for one family of keras-hub backbones; each
family's module in `dact_tf.models.families` registers its adapter:

| backbone | inputs | notes |
|---|---|---|
| `BertBackbone` (and dact_tf's `DactBertBackbone`) | token_ids, segment_ids, padding_mask | |
| `ElectraBackbone` | token_ids, segment_ids, padding_mask | embedding projection |
| `AlbertBackbone` | token_ids, segment_ids, padding_mask | one shared block group run `num_layers` times: DACT halts over the iterations |
| `RobertaBackbone`, `XLMRobertaBackbone` | token_ids, padding_mask | |
| `DistilBertBackbone` | token_ids, padding_mask | |

To wrap your own encoder from Python, subclass `EncoderAdapter` (an embedding function
and a list of blocks, each called as `block(x, padding_mask=mask,
training=training)`) and register it for your backbone class:

```python
class MyAdapter(dact_tf.models.encoders.EncoderAdapter):
    input_keys = ("token_ids", "padding_mask")

    def embed(self, backbone, inputs, training):
        return backbone.my_embeddings(inputs["token_ids"], training=training)

    def blocks(self, backbone):
        return list(backbone.my_blocks)

dact_tf.models.encoders.register(MyBackbone, MyAdapter())
model = dact_tf.DactClassifier(MyBackbone(...), num_classes=2)
```

To make `--backbone` and `from_preset` load it too, write an
`EncoderFamily` module instead (`dact_tf.models.families.base`).

DeBERTa-v3 is not supported: its blocks take relative position embeddings
computed outside them, which this interface does not carry.
"""

_REGISTRY = []  # (backbone class, adapter), most specific first


class EncoderAdapter:
    """Takes one family of encoders apart for DACT.

    Attributes:
        input_keys: the token-input keys the encoder reads, `token_ids`
            first; `padding_mask` is always among them.
    """

    input_keys = ("token_ids", "segment_ids", "padding_mask")

    def embed(self, backbone, inputs, training):
        """The first block's input.

        Args:
            backbone: the keras-hub backbone.
            inputs: dict of int32 `[batch, seq]` tensors (`input_keys`).
            training: bool.

        Returns:
            float `[batch, seq, hidden_dim]`.
        """
        raise NotImplementedError

    def blocks(self, backbone):
        """The blocks in the order they run (a block may repeat).

        Args:
            backbone: the keras-hub backbone.

        Returns:
            list of layers called as `block(x, padding_mask=m, training=t)`.
        """
        return list(backbone.transformer_layers)

    def vocabulary_size(self, backbone):
        """int, the number of token ids."""
        return int(getattr(backbone, "vocabulary_size", None) or backbone.vocab_size)

    def num_segments(self, backbone):
        """int, the number of segment ids (None: the encoder has none)."""
        return int(backbone.num_segments) if "segment_ids" in self.input_keys else None


class TokenAndPositionAdapter(EncoderAdapter):
    """RoBERTa, XLM-RoBERTa, DistilBERT: one token-and-position embedding."""

    input_keys = ("token_ids", "padding_mask")

    def embed(self, backbone, inputs, training):
        x = backbone.embeddings(inputs["token_ids"])
        return backbone.embeddings_dropout(backbone.embeddings_layer_norm(x), training=training)


def register(backbone_cls, adapter):
    """Makes DACT models accept `backbone_cls` through `adapter`.

    Args:
        backbone_cls: a backbone class; its subclasses match too, unless a
            more specific class is registered.
        adapter: an `EncoderAdapter`.
    """
    if not isinstance(adapter, EncoderAdapter):
        raise TypeError(f"`adapter` must be an EncoderAdapter, got {type(adapter).__name__}.")
    # Registering a class again replaces its adapter (a family module re-imported).
    _REGISTRY[:] = [item for item in _REGISTRY if item[0] is not backbone_cls]
    _REGISTRY.insert(0, (backbone_cls, adapter))
    # Most specific classes first, so a subclass's own adapter wins.
    _REGISTRY.sort(key=lambda item: -len(item[0].__mro__))


def adapter_for(backbone):
    """The `EncoderAdapter` registered for `backbone`'s class.

    Raises:
        TypeError: no adapter is registered for it.
    """
    from dact_tf.models import families  # noqa: F401  (registers the built-in adapters)

    for cls, adapter in _REGISTRY:
        if isinstance(backbone, cls):
            return adapter
    supported = sorted({cls.__name__ for cls, _ in _REGISTRY})
    raise TypeError(
        f"dact_tf cannot take {type(backbone).__name__} apart into blocks; supported: "
        f"{supported}. Register an EncoderAdapter (see dact_tf.models.encoders) to add it."
    )

