"""`"tiny"`: a small random BERT (and its vocabulary) for tests, deterministic given a seed."""

import importlib.metadata

import keras_hub
import numpy as np

from dact_tf.models.dact_bert import DactBertBackbone


# ----------------------------------------------------------------------------
# "tiny": a small random BERT for tests.
# ----------------------------------------------------------------------------

_TINY_WORDS = (
    "the a an and or but not no is are was were be been it its this that "
    "these those of to in on at for with from by as into about than then "
    "i you he she we they me him her us them my your his our their what "
    "who which how why when where there here all some any more most very "
    "too so just only also even still yet again ever never one two three "
    "do does did done have has had can could will would should may might "
    "must film movie story plot characters character director actors "
    "acting performance performances script scene scenes comedy drama "
    "audience time life love world people work way good great best "
    "better fine funny fun smart clever moving beautiful brilliant "
    "charming entertaining enjoyable engaging fresh solid powerful "
    "wonderful delightful touching warm original bad worst worse dull "
    "boring tedious flat stupid awful mess predictable lifeless bland "
    "tired weak silly pointless pretentious ugly cold thin question "
    "answer sentence same different yes maybe"
).split()
_TINY_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_TINY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
_TINY_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def tiny_vocabulary():
    """Returns the fixed word-piece vocabulary of the `"tiny"` backbone.

    Special tokens first (`[PAD]`=0, `[UNK]`=1, `[CLS]`=2, `[SEP]`=3,
    `[MASK]`=4), then single letters, digits and punctuation, their `##`
    continuations, and about 200 common English and review words. Any
    lowercase ASCII text tokenizes without `[UNK]` (unknown words fall back
    to letters).

    Returns:
        list of str.

    Example:
    ```python
    vocab = tiny_vocabulary()
    vocab[:3]  # ["[PAD]", "[UNK]", "[CLS]"]
    ```
    """
    vocab = list(_TINY_SPECIAL)
    vocab += list(_TINY_CHARS) + list(_TINY_PUNCT)
    vocab += ["##" + c for c in _TINY_CHARS]
    seen = set(vocab)
    for word in _TINY_WORDS:
        if word not in seen:
            vocab.append(word)
            seen.add(word)
    return vocab


def tiny_tokenizer():
    """Returns the lowercasing `BertTokenizer` of the `"tiny"` backbone.

    Returns:
        A `keras_hub.models.BertTokenizer` over `tiny_vocabulary()`.

    Example:
    ```python
    tiny_tokenizer()("a funny film")  # [5, ...]
    ```
    """
    return keras_hub.models.BertTokenizer(
        vocabulary=tiny_vocabulary(), lowercase=True, strip_accents=True
    )


def tiny_backbone(
    seed=0,
    num_layers=4,
    hidden_dim=32,
    num_heads=2,
    intermediate_dim=64,
    max_sequence_length=128,
    dropout=0.1,
    gelu_approximate=False,
):
    """Builds a small randomly initialised BERT and its tokenizer.

    Weights are drawn from a NumPy generator seeded with `seed` (truncated
    normal, stddev 0.02, like BERT; LayerNorm gamma 1, biases 0), so the same
    seed gives the same weights in any process, whatever Keras' global seed.

    Args:
        seed: int. Seed of the weights.
        num_layers: int. Transformer blocks.
        hidden_dim: int. Encoder width.
        num_heads: int. Attention heads.
        intermediate_dim: int. Feed-forward width.
        max_sequence_length: int. Position embeddings.
        dropout: float. Encoder dropout.
        gelu_approximate: bool. GELU flavour (see `DactBertBackbone`).

    Returns:
        A tuple `(DactBertBackbone, keras_hub.models.BertTokenizer)`.

    Example:
    ```python
    backbone, tokenizer = tiny_backbone(seed=1, num_layers=2)
    backbone.num_layers  # 2
    ```
    """
    tokenizer = tiny_tokenizer()
    backbone = DactBertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        dropout=dropout,
        max_sequence_length=max_sequence_length,
        gelu_approximate=gelu_approximate,
        name="tiny_bert_backbone",
    )
    seed_weights(backbone, seed)
    return backbone, tokenizer


def seed_weights(backbone, seed):
    """Sets `backbone`'s weights from a NumPy generator seeded with `seed`.

    Truncated normal with stddev 0.02 (BERT's initializer), LayerNorm gamma
    1, biases and betas 0: the same seed gives the same weights in any
    process, whatever Keras' global seed.
    """
    rng = np.random.default_rng(seed)
    values = []
    for weight in backbone.weights:
        leaf = weight.path.rsplit("/", 1)[-1]
        shape = tuple(weight.shape)
        if leaf == "gamma":
            values.append(np.ones(shape, "float32"))
        elif leaf in ("beta", "bias"):
            values.append(np.zeros(shape, "float32"))
        else:
            draw = rng.standard_normal(shape)
            values.append((0.02 * np.clip(draw, -2.0, 2.0)).astype("float32"))
    backbone.set_weights(values)
