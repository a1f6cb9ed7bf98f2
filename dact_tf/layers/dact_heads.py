"""DACT heads: after each block, an answer and a halting value."""

import keras
import tensorflow as tf

from dact_tf import config
from dact_tf.ops import TASKS


#: A halting logit raised this much makes `h_n` exactly 1 in float32: the
#: block passes its whole budget on (`DactHeads.pass_budget_through`).
PASS_THROUGH_BIAS = 1e4

#: The key of the pass-through mask in a saved model's weights (named, so that
#: files saved before it existed, without the key, stay readable).
_PASS_KEY = "pass_through"


def _leading(flags):
    """How many of `flags` are true before the first false one."""
    count = 0
    while count < len(flags) and flags[count]:
        count += 1
    return count


@keras.saving.register_keras_serializable(package="dact_tf")
class DactHeads(keras.layers.Layer):
    """The DACT heads of a stack of blocks: an answer and a halting value.

    After block n a small head reads the block's pooled vector `x` (the
    encoder pools: the first token, or the mean over real tokens):

        z_n = activation(W_z x + b_z)
        y_n = softmax(W_y z_n + b_y)            # classification
        y_n = lo + (hi - lo) * sigmoid(W_y z_n + b_y)   # bounded regression
        h_n = sigmoid(W_h z_n + b_h)

    The weights of all heads are stacked along a leading axis of size
    `num_layers` (or 1 when `shared=True`), so the head of block n is a
    slice of them, which keeps the early-exit loop free of per-block branches and
    converts to TFLite builtins. Outputs are float32 whatever the compute
    dtype, so the DACT math stays in float32 under mixed precision.

    Args:
        num_layers: int, the number of blocks the heads follow.
        num_outputs: int, the number of classes (1 for regression).
        hidden_dim: int or None, the width of `z_n`; None uses the input
            width.
        activation: the hidden activation (`"tanh"` by default).
        shared: bool, one head shared by all blocks instead of one per
            block (the paper uses one per block).
        task: `"classification"` or `"regression"`.
        output_range: `(lo, hi)` for regression scores.
        halting_bias: float, the initial bias of the halting unit. Positive
            values start the model trusting its deeper blocks (`h` near 1);
            the ponder cost then teaches it to halt. None:
            `ModelConfig.halting_bias`.
        dropout: float, dropout on the pooled vector during training (None:
            `ModelConfig.dropout`).
        kernel_initializer: initializer of the kernels.
        halting_confidence: float, classification only (0 for the paper's
            heads; None: `ModelConfig.halting_confidence` for
            classification, 0 for regression). When nonzero, each halting unit also reads its own
            answer's confidence `c_n = (max_c y_n[c] - 1/C) / (1 - 1/C)`:
            `h_n = sigmoid(W_h z_n + b_h + v_n c_n)`, with a trainable `v_n`
            per head starting at this value (negative: confident answers
            start halting). A linear `W_h z_n` cannot express "confident in
            either class" (`|logit difference|` is not linear in `z_n`);
            this term can. `c_n` enters as a constant (no gradient): the
            ponder cost trains the halting unit, never the answer's
            confidence. The recurrence, ponder cost and guarantee are
            unchanged.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[batch, hidden]` pooled vectors of one block, or
            `[num_layers, batch, hidden]` those of every block.
        layer_index: int or scalar int tensor, the 0-based block of
            `inputs` when they are of one block; None when they hold all.
        training: bool, whether dropout is active.

    Returns:
        `(answers, halting)`: float32 `[batch, num_outputs]` and `[batch]`
        for one block, or `[num_layers, batch, num_outputs]` and
        `[num_layers, batch]` for all blocks.

    Example:
    >>> heads = DactHeads(num_layers=4, num_outputs=3)
    >>> y, h = heads(tf.zeros([2, 8]), layer_index=1)
    >>> y.shape, h.shape
    (TensorShape([2, 3]), TensorShape([2]))

    References:
        Eyzaguirre et al. DACT-BERT, arXiv:2109.11745.
    """

    def __init__(
        self,
        num_layers,
        num_outputs,
        hidden_dim=None,
        activation="tanh",
        shared=False,
        task="classification",
        output_range=None,
        halting_bias=None,
        dropout=None,
        kernel_initializer="glorot_uniform",
        halting_confidence=None,
        **kwargs,
    ):
        if halting_confidence is None and task != "classification":
            halting_confidence = 0.0  # the answer of a regression has no confidence
        resolved = config.settings(
            {"halting_bias": halting_bias, "dropout": dropout,
             "halting_confidence": halting_confidence},
            ("halting_bias", "dropout", "halting_confidence"))
        halting_bias, dropout, halting_confidence = (
            resolved["halting_bias"], resolved["dropout"], resolved["halting_confidence"])
        super().__init__(**kwargs)
        if int(num_layers) < 1:
            raise ValueError(f"`num_layers` must be >= 1, got {num_layers}.")
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}, got {task!r}.")
        if task == "classification" and int(num_outputs) < 2:
            raise ValueError(
                f"Classification needs `num_outputs` >= 2, got {num_outputs}."
            )
        if task == "regression":
            if int(num_outputs) != 1:
                raise ValueError(
                    f"Regression needs `num_outputs` == 1, got {num_outputs}."
                )
            if output_range is None or len(output_range) != 2:
                raise ValueError(
                    "Regression needs `output_range=(lo, hi)`, got "
                    f"{output_range!r}."
                )
            if not float(output_range[0]) < float(output_range[1]):
                raise ValueError(
                    f"`output_range` must have lo < hi, got {output_range!r}."
                )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}.")
        if float(halting_confidence) != 0.0 and task != "classification":
            raise ValueError(
                "`halting_confidence` needs a classification task (an answer "
                f"with a confidence), got task={task!r}."
            )
        self.num_layers = int(num_layers)
        self.num_outputs = int(num_outputs)
        self.hidden_dim = None if hidden_dim is None else int(hidden_dim)
        self.activation = keras.activations.get(activation)
        self.shared = bool(shared)
        self.task = task
        self.output_range = (
            None if output_range is None else tuple(float(v) for v in output_range)
        )
        self.halting_bias = float(halting_bias)
        self.dropout = float(dropout)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.halting_confidence = float(halting_confidence)
        self._dropout_layer = keras.layers.Dropout(self.dropout)

    @property
    def num_heads(self):
        """How many distinct heads there are: 1 if shared, else num_layers."""
        return 1 if self.shared else self.num_layers

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError("The last dimension of the inputs must be known.")
        hidden_dim = self.hidden_dim or input_dim
        k = self.num_heads
        self.hidden_kernel = self.add_weight(
            name="hidden_kernel",
            shape=(k, input_dim, hidden_dim),
            initializer=self.kernel_initializer,
        )
        self.hidden_bias = self.add_weight(
            name="hidden_bias", shape=(k, hidden_dim), initializer="zeros"
        )
        self.answer_kernel = self.add_weight(
            name="answer_kernel",
            shape=(k, hidden_dim, self.num_outputs),
            initializer=self.kernel_initializer,
        )
        self.answer_bias = self.add_weight(
            name="answer_bias", shape=(k, self.num_outputs), initializer="zeros"
        )
        self.halting_kernel = self.add_weight(
            name="halting_kernel",
            shape=(k, hidden_dim),
            initializer=self.kernel_initializer,
        )
        self.halting_bias_weight = self.add_weight(
            name="halting_bias",
            shape=(k,),
            initializer=keras.initializers.Constant(self.halting_bias),
        )
        self.confidence_weight = None
        if self.halting_confidence:
            self.confidence_weight = self.add_weight(
                name="halting_confidence",
                shape=(k,),
                initializer=keras.initializers.Constant(self.halting_confidence),
            )
        # 1 where a block passes its budget on (`pass_budget_through`): kept
        # apart from the trained bias, so that undoing it restores the bias
        # bit for bit.
        self.pass_mask = self.add_weight(
            name="pass_through", shape=(k,), initializer="zeros", trainable=False)

    def _finish(self, logits, halting_logits, confidence_weight=None):
        logits = tf.cast(logits, tf.float32)
        halting_logits = tf.cast(halting_logits, tf.float32)
        if self.task == "regression":
            lo, hi = self.output_range
            answers = lo + (hi - lo) * tf.sigmoid(logits)
        else:
            answers = tf.nn.softmax(logits, axis=-1)
        if confidence_weight is not None:
            c = float(self.num_outputs)
            # The halting unit reads the confidence but cannot shape it: with
            # the gradient through it, the ponder cost made early heads
            # confidently wrong to halt sooner (chance accuracy on a small
            # training set).
            confidence = tf.stop_gradient(
                (tf.reduce_max(answers, axis=-1) - 1.0 / c) * (c / (c - 1.0)))
            halting_logits += tf.cast(confidence_weight, tf.float32) * confidence
        return answers, tf.sigmoid(halting_logits)

    def call(self, inputs, layer_index=None, training=None):
        x = self._dropout_layer(inputs, training=training)
        if layer_index is None:
            return self._call_all(x)
        # Slicing the leading axis reads the stacked weights in place (a
        # gather would copy them on every call, inside the early-exit loop).
        index = 0 if self.shared else layer_index
        z = self.activation(
            tf.matmul(x, self.hidden_kernel[index]) + self.hidden_bias[index]
        )
        logits = tf.matmul(z, self.answer_kernel[index]) + self.answer_bias[index]
        halting_logits = (
            tf.linalg.matvec(z, self.halting_kernel[index])
            + self.halting_bias_weight[index]
            + PASS_THROUGH_BIAS * self.pass_mask[index]
        )
        conf = None if self.confidence_weight is None else self.confidence_weight[index]
        return self._finish(logits, halting_logits, conf)

    def _call_all(self, x):
        weights = [
            self.hidden_kernel,
            self.hidden_bias,
            self.answer_kernel,
            self.answer_bias,
            self.halting_kernel,
            self.halting_bias_weight + PASS_THROUGH_BIAS * self.pass_mask,
        ]
        if self.confidence_weight is not None:
            weights.append(self.confidence_weight)
        if self.shared:
            # Every block uses head 0.
            weights = [tf.repeat(v, self.num_layers, axis=0) for v in weights]
        hk, hb, ak, ab, gk, gb = weights[:6]
        z = self.activation(tf.einsum("lbi,lih->lbh", x, hk) + hb[:, None, :])
        logits = tf.einsum("lbh,lho->lbo", z, ak) + ab[:, None, :]
        halting_logits = tf.einsum("lbh,lh->lb", z, gk) + gb[:, None]
        conf = weights[6][:, None] if len(weights) > 6 else None
        return self._finish(logits, halting_logits, conf)

    def shift_halting_bias(self, shift):
        """Adds `shift` to every halting unit's bias (negative: halt earlier).

        Used by `dact_tf.calibration.halting_bias.calibrate_halting_bias` to move a trained
        model to a compute budget; the halting guarantee is unaffected.
        """
        self.halting_bias_weight.assign(self.halting_bias_weight + float(shift))

    @property
    def passed_blocks(self):
        """How many leading blocks pass their whole budget on (`pass_budget_through`)."""
        if self.shared or not self.built:
            return 0
        return _leading(keras.ops.convert_to_numpy(self.pass_mask) > 0)

    def pass_budget_through(self, blocks):
        """Makes the first `blocks` blocks hand their whole budget on.

        Their halting values become exactly 1 (`PASS_THROUGH_BIAS` added to
        the halting logit; the trained bias is left as it is), so `p_n` stays 1 and
        `a_{blocks+1} = y_{blocks+1}`: those blocks' heads keep no weight in
        any answer, and no row stops before block `blocks + 1` (the halting
        test cannot pass while `p_n = 1`). The recurrence and the guarantee
        are unchanged. `0` restores the trained biases. Used by
        `dact_tf.calibration.halting_bias.calibrate_halting_bias` where the first heads
        are of little use (on CoLA the first two score an MCC near 0).

        Args:
            blocks: int in `[0, num_layers - 1]`.
        """
        blocks = int(blocks)
        if not 0 <= blocks < self.num_layers:
            raise ValueError(
                f"`blocks` must be in [0, {self.num_layers - 1}], got {blocks}.")
        if self.shared and blocks:
            raise ValueError("Shared heads have one halting unit: no block can pass its "
                             "budget through alone.")
        mask = [1.0 if n < blocks else 0.0 for n in range(self.num_heads)]
        self.pass_mask.assign(mask)

    def save_own_variables(self, store):
        for i, variable in enumerate(self._indexed_variables()):
            store[str(i)] = variable
        store[_PASS_KEY] = self.pass_mask

    def load_own_variables(self, store):
        keys = [key for key in store.keys() if key != _PASS_KEY]
        own = self._indexed_variables()
        if self.confidence_weight is not None and len(keys) == len(own) - 1:
            # Heads saved without the confidence term (e.g. a full-depth model
            # to warm-start from) load into heads with it; it keeps its
            # initial value.
            own = [v for v in own if v is not self.confidence_weight]
        if len(keys) != len(own):
            raise ValueError(
                f"Layer {self.name!r} expected {len(own)} saved weights, found "
                f"{len(keys)}: the file holds heads of another configuration.")
        for i, variable in enumerate(own):
            variable.assign(store[str(i)])
        if _PASS_KEY in store.keys():
            self.pass_mask.assign(store[_PASS_KEY])
            return
        # Saved before the mask existed: a passed block's bias held
        # `PASS_THROUGH_BIAS` on top of the trained one.
        bias = keras.ops.convert_to_numpy(self.halting_bias_weight).copy()
        passed = _leading(bias >= PASS_THROUGH_BIAS / 2)
        bias[:passed] -= PASS_THROUGH_BIAS
        self.halting_bias_weight.assign(bias)
        self.pass_budget_through(passed)

    def _indexed_variables(self):
        """The weights saved under `"0"`, `"1"`, ...: all but the mask, in Keras's order."""
        own = self._trainable_variables + self._non_trainable_variables
        return [v for v in own if v is not self.pass_mask]

    def compute_output_shape(self, input_shape, layer_index=None):
        return (
            tuple(input_shape[:-1]) + (self.num_outputs,),
            tuple(input_shape[:-1]),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_layers": self.num_layers,
                "num_outputs": self.num_outputs,
                "hidden_dim": self.hidden_dim,
                "activation": keras.activations.serialize(self.activation),
                "shared": self.shared,
                "task": self.task,
                "output_range": self.output_range,
                "halting_bias": self.halting_bias,
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "halting_confidence": self.halting_confidence,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # What an older file left out meant then (before `dact_tf.config`).
        config.setdefault("halting_confidence", 0.0)
        config.setdefault("halting_bias", 2.0)
        config.setdefault("dropout", 0.0)
        return cls(**config)
