"""In-graph text packing for the text serving signatures.

keras-hub's `BertTextClassifierPreprocessor` truncates with tensorflow-text's
`RoundRobinTrimmer` / `WaterfallTrimmer`, i.e. the `TFText>RoundRobinTrim`
op family, which only recent TF Text releases register. TensorFlow Serving
builds embed an older TF Text (2.12.1 as of tensorflow/serving PR #4057,
open in 2025; issue #2267 shows a keras-hub BERT export failing to load with
"Op type not registered 'TFText>RoundRobinTrim'"). `TextPacker` produces the
same `token_ids` / `segment_ids` with core TensorFlow ragged ops, so the only
TF Text ops left in an export are the tokenizer's own
(`RegexSplitWithOffsets`, `FastWordpieceTokenizeWithOffsets`, plus
`NormalizeUTF8`/`CaseFoldUTF8` when lowercasing).
"""

import tensorflow as tf

from dact_tf.utils import files

TRUNCATE_MODES = ("round_robin", "waterfall")


class TextPacker:
    """Tokenizes strings and packs them as `[CLS] a [SEP] (b [SEP])`.

    Same output as keras-hub's `BertTextClassifierPreprocessor` with the same
    tokenizer, `sequence_length` and `truncate`, except that rows are padded
    only to the longest row of the batch (at most `sequence_length`), not to
    `sequence_length`: the extra padding columns would not change the model's
    answers, only its cost.

    Args:
        tokenizer: a `keras_hub.models.BertTokenizer` (anything callable on a
            string tensor `[batch]` returning a ragged `[batch, None]` of ids,
            with `cls_token_id`, `sep_token_id`, `pad_token_id`).
        sequence_length: int >= 3 (one segment) or >= 4 (pairs), the longest
            packed row.
        truncate: `"round_robin"` (cut the longer segment first, one token
            at a time, the first segment keeping the odd token) or
            `"waterfall"` (cut the last segment first).

    Call arguments:
        segments: a string tensor `[batch]`, or a tuple of one or two.

    Returns:
        A dict of int32 `[batch, width]` tensors: `token_ids`,
        `padding_mask` (1 real, 0 padding), `segment_ids` (0 for the first
        segment and its `[CLS]`/`[SEP]`, 1 for the second).

    Example:
    ```python
    packer = TextPacker(tokenizer, sequence_length=128)
    features = packer((tf.constant(["a question ?"]), tf.constant(["yes ."])))
    features["segment_ids"]  # [[0, 0, 0, 0, 0, 1, 1, 1]]
    ```
    """

    def __init__(self, tokenizer, sequence_length, truncate="round_robin"):
        if truncate not in TRUNCATE_MODES:
            raise ValueError(
                f"`truncate` must be one of {TRUNCATE_MODES}, got {truncate!r}."
            )
        sequence_length = int(sequence_length)
        if sequence_length < 3:
            raise ValueError(
                f"`sequence_length` must be >= 3, got {sequence_length}."
            )
        self.tokenizer = tokenizer
        self.sequence_length = sequence_length
        self.truncate = truncate
        self.cls_id = int(tokenizer.cls_token_id)
        self.sep_id = int(tokenizer.sep_token_id)
        self.pad_id = int(tokenizer.pad_token_id)
        self._graph_pack = None

    def __call__(self, segments):
        if not isinstance(segments, (tuple, list)):
            segments = (segments,)
        if len(segments) not in (1, 2):
            raise ValueError(f"Expected 1 or 2 segments, got {len(segments)}.")
        if len(segments) == 2 and self.sequence_length < 4:
            raise ValueError("Pairs need `sequence_length` >= 4.")
        segments = tuple(tf.convert_to_tensor(s, tf.string) for s in segments)
        if tf.executing_eagerly():
            # keras-hub tokenizers return Python lists in eager mode: pack in
            # a graph, as inside a serving signature.
            if self._graph_pack is None:
                self._graph_pack = tf.function(self._pack, reduce_retracing=True)
            return self._graph_pack(segments)
        return self._pack(segments)

    def _pack(self, segments):
        ids = [self._tokenize(s) for s in segments]
        budget = self.sequence_length - 1 - len(ids)
        kept = self._kept_lengths([t.row_lengths() for t in ids], budget)
        pieces, segment_pieces = [], []
        batch = ids[0].nrows()
        for index, (tokens, keep) in enumerate(zip(ids, kept)):
            mask = tf.ragged.range(
                tf.cast(tokens.row_lengths(), tf.int32)
            ) < keep[:, None]
            tokens = tf.ragged.boolean_mask(tokens, mask)
            if index == 0:
                tokens = tf.concat([self._column(batch, self.cls_id), tokens], 1)
            tokens = tf.concat([tokens, self._column(batch, self.sep_id)], 1)
            pieces.append(tokens)
            segment_pieces.append(tf.ones_like(tokens) * index)
        token_ids = tf.concat(pieces, axis=1)
        segment_ids = tf.concat(segment_pieces, axis=1)
        return {
            "token_ids": token_ids.to_tensor(default_value=self.pad_id),
            "padding_mask": tf.ones_like(token_ids).to_tensor(default_value=0),
            "segment_ids": segment_ids.to_tensor(default_value=0),
        }

    def _tokenize(self, text):
        tokens = self.tokenizer(text)
        if not isinstance(tokens, tf.RaggedTensor):
            tokens = tf.RaggedTensor.from_tensor(tokens, padding=self.pad_id)
        return tf.cast(tokens, tf.int32)

    def _column(self, batch, value):
        return tf.RaggedTensor.from_tensor(
            tf.fill(tf.stack([batch, 1]), tf.constant(value, tf.int32))
        )

    def _kept_lengths(self, lengths, budget):
        lengths = [tf.cast(n, tf.int32) for n in lengths]
        if len(lengths) == 1:
            return [tf.minimum(lengths[0], budget)]
        first, second = lengths
        if self.truncate == "waterfall":
            keep_first = tf.minimum(first, budget)
        else:
            # Round robin, first segment first: each gets half (the first the
            # odd token); a short segment leaves its unused half to the other.
            keep_first = tf.minimum(
                first, tf.maximum((budget + 1) // 2, budget - second)
            )
        return [keep_first, tf.minimum(second, budget - keep_first)]


def make_packer(model, tokenizer, sequence_length, truncate):
    """A `TextPacker` for `model` from a keras-hub tokenizer or preprocessor.

    Args:
        model: the `DactClassifier` being exported.
        tokenizer: a keras-hub `BertTokenizer`, or a
            `BertTextClassifierPreprocessor` (its tokenizer, sequence length
            and truncation are taken).
        sequence_length: int or None (the preprocessor's, else the
            backbone's `max_sequence_length`).
        truncate: one of `TRUNCATE_MODES`.

    Returns:
        A `TextPacker`.

    Raises:
        TypeError / ValueError: a tokenizer without a vocabulary and special
            tokens, a length outside [3, the backbone's positions], or more
            tokens than the backbone embeds.
    """
    max_len = int(model.backbone.max_sequence_length)
    if hasattr(tokenizer, "tokenizer") and hasattr(tokenizer, "sequence_length"):
        # A keras-hub preprocessor: take its tokenizer and settings.
        given = tokenizer
        tokenizer = given.tokenizer
        if sequence_length is not None and int(sequence_length) != int(
            given.sequence_length
        ):
            raise ValueError(
                f"`sequence_length` {sequence_length} differs from the "
                f"preprocessor's {given.sequence_length}."
            )
        sequence_length = given.sequence_length
        truncate = getattr(given, "truncate", truncate)
    needed = ("get_vocabulary", "cls_token_id", "sep_token_id", "pad_token_id")
    missing = [a for a in needed if not hasattr(tokenizer, a)]
    if missing:
        raise TypeError(
            "`tokenizer` must be a keras_hub BertTokenizer or a "
            f"BertTextClassifierPreprocessor; {type(tokenizer).__name__} "
            f"lacks {missing}."
        )
    length = int(sequence_length or max_len)
    if not 3 <= length <= max_len:
        raise ValueError(
            f"`sequence_length` must be in [3, {max_len}] (the backbone's "
            f"max_sequence_length), got {length}."
        )
    vocab_size = int(tokenizer.vocabulary_size())
    if vocab_size > model.vocabulary_size:
        raise ValueError(
            f"The tokenizer has {vocab_size} tokens but the backbone embeds "
            f"only {model.vocabulary_size}."
        )
    return TextPacker(tokenizer, length, truncate)


def write_vocabulary(tokenizer, path):
    """Writes `tokenizer`'s vocabulary to `path`, one token a line (TF Serving's asset)."""
    files.write_vocabulary(tokenizer, path)
