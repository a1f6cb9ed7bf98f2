"""A stack of Transformer blocks with DACT heads and guaranteed early exit."""

import keras
import tensorflow as tf

from dact_tf import config as config_lib
from dact_tf import exits
from dact_tf import ops
from dact_tf.layers import early_exit
from dact_tf.layers.dact_heads import DactHeads


#: What the heads can read from each block's output.
POOLINGS = ("cls", "mean")


def _check_rank(tensor, rank, name):
    if tensor.shape.rank is not None and tensor.shape.rank != rank:
        raise ValueError(
            f"`{name}` must have rank {rank}, got shape {tensor.shape}."
        )


@keras.saving.register_keras_serializable(package="dact_tf")
class DactEncoder(keras.layers.Layer):
    """Runs Transformer blocks, halting each example once its answer is safe.

    After every block a `DactHeads` head gives an answer `y_n` and a halting
    value `h_n`; `dact_tf.ops.accumulate` mixes the answers into `a_n` with a
    shrinking budget `p_n`.

    - `training=True`: every block runs (so every head gets gradients); the
      layer returns the final accumulated answer `a_N` and adds
      `tau * mean(sum_n p_n)` (the ponder cost) with `add_loss`.
    - Inference: a `tf.while_loop` runs one block per iteration and stops
      **per example** as soon as the halting rule proves the remaining blocks
      cannot change its prediction (`dact_tf.ops.should_halt`). Finished rows
      leave the computation: the loop keeps only the active rows (a gather)
      and scatters finished rows' answers into the output, so easy examples
      cost nothing after they halt. Block n is picked by a balanced tree of
      `tf.cond` (a Case op would not be a TFLite builtin); no variable is
      created in the loop.
    - `full_depth=True` at inference runs every block (for checks and
      benchmarks) as a plain, unrolled graph.

    What stops a row, and what it answers, is an exit criterion
    (`method`, a `dact_tf.exits.ExitCriterion`): DACT by default, or an
    early-exit baseline on the same heads, loop, outputs and exports:
    `"pabee"` exits once the prediction has held for `patience` blocks,
    `"deebert"` once the prediction's entropy is below `entropy_threshold`,
    `"static"` never exits early; the baselines answer with the exit
    block's own head (`y_n`) and pay no ponder cost. The loop never tests a
    method's name: it calls the criterion's `initial_state` and `step`.

    Args:
        blocks: list of Keras layers called as
            `block(x, padding_mask=mask, training=training)`, mapping
            `[batch, seq, hidden]` to the same shape (e.g. keras-hub
            `TransformerEncoder`s).
        num_outputs: int, the number of classes (1 for regression).
        task: `"classification"` or `"regression"`.
        output_range: `(lo, hi)`, the score range for regression.
        method: the exit criterion: a name from `dact_tf.exits.names()`
            (`"dact"`; `"pabee"`, `"deebert"`, `"static"`), an
            `ExitCriterion` object, or its serialized config; None:
            `config.method`.
        config: a `dact_tf.config.ModelConfig`, where every setting below
            not given takes its value (None: the default recipe's).
        **kwargs: the settings below (each None or left out: `config`'s
            value), and base layer arguments (`name`, `dtype`, ...).

    Settings (keyword arguments):
        head_hidden_dim: int or None, the hidden width of the heads.
        head_activation: the heads' hidden activation.
        shared_heads: bool, one head for all blocks.
        halting_bias: float, initial bias of the halting units.
        halting_confidence: float, classification only: 0 (the paper's
            halting units) or the initial weight with which each halting
            unit also reads its answer's confidence (see `DactHeads`).
            Left out: the recipe's value where the method and task use it
            (DACT classification), else 0.
        dropout: float, dropout on the pooled vector the heads read, in
            training (the model's `dropout`).
        tau: float >= 0, the weight of the ponder cost. Stored in a
            non-trainable variable so callbacks can change it during `fit`.
        ponder: the ponder cost training adds (times `tau`): `"budget"`
            (the paper's `sum_n p_n`) or `"blocks"` (a smooth count of the
            blocks the tight halting rule runs, `dact_tf.ops.expected_blocks`,
            which does not push the first halting values to zero). The
            `"ponder_cost"` output is `sum_n p_n` either way.
        regression_tolerance: float > 0, the largest change of a regression
            score that halting may cause (PABEE: scores closer than this
            count as the same prediction).
        pooling: what each head reads: `"cls"` (the first token, as in the
            paper) or `"mean"` (the mean over real tokens; right for
            backbones trained with mean pooling, such as sentence-transformer
            MiniLMs, whose early-block first-token vectors barely vary).
        halting_rule, halting_margin, halting_epsilon, halting_slack,
        patience, entropy_threshold: knobs of a `method` given by name
            (None: `config`'s, else the method's default); see
            `dact_tf.exits.Dact`, `Pabee` and `DeeBert`. A knob of another
            method is refused.

    Call arguments:
        inputs: float `[batch, seq, hidden]`, the embedded tokens.
        padding_mask: bool or int `[batch, seq]`, 1 for real tokens; None
            means no padding.
        training: bool.
        full_depth: bool, run every block at inference.

    Returns:
        A dict. Classification: `"probabilities"` float32
        `[batch, num_outputs]`, `"predictions"` int32 `[batch]`. Regression:
        `"scores"` float32 `[batch]`. Both: `"layers_executed"` int32
        `[batch]` and `"ponder_cost"` float32 `[batch]` (`sum p_n` over the
        blocks executed). With `training=True` every block runs, and
        `"layers_executed"` is where the exit rule would stop each example;
        also `"block_answers"` `[num_layers, batch, num_outputs]`, every
        block's own answer `y_n`, and for DACT `"block_accumulated"`, the
        `a_n`.

    Example:
    >>> import keras_hub
    >>> blocks = [keras_hub.layers.TransformerEncoder(32, 2) for _ in range(3)]
    >>> encoder = DactEncoder(blocks, num_outputs=2)
    >>> out = encoder(tf.random.normal([4, 8, 16]))
    >>> sorted(out)
    ['layers_executed', 'ponder_cost', 'predictions', 'probabilities']

    References:
        Eyzaguirre et al. DACT-BERT, arXiv:2109.11745.
    """

    def __init__(self, blocks, num_outputs, task="classification", output_range=None,
                 method=None, config=None, **kwargs):
        self.exit_criterion = exits.from_arguments(method, kwargs, config)
        given_confidence = kwargs.get("halting_confidence")
        s = config_lib.settings(kwargs, ENCODER_SETTINGS, config)
        if given_confidence is None:  # what the method and task use of the recipe's
            s["halting_confidence"] = self.exit_criterion.recipe_settings(
                config or config_lib.ModelConfig(), task)["halting_confidence"]
        super().__init__(**kwargs)
        blocks = list(blocks)
        (head_hidden_dim, head_activation, shared_heads, halting_bias, halting_confidence,
         dropout, tau, regression_tolerance, pooling, ponder) = (s[k] for k in ENCODER_SETTINGS)
        self.exit_criterion.check(task=task, shared_heads=bool(shared_heads))
        if pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {POOLINGS}, got {pooling!r}.")
        if not blocks:
            raise ValueError("`blocks` must hold at least one layer.")
        _check_range("tau", tau, 0.0, None)
        if ponder not in ops.PONDER_COSTS:
            raise ValueError(f"`ponder` must be one of {ops.PONDER_COSTS}, got {ponder!r}.")
        if not float(regression_tolerance) > 0.0:
            raise ValueError(
                "`regression_tolerance` must be > 0, got "
                f"{regression_tolerance}."
            )
        self.blocks = blocks
        self.num_outputs = int(num_outputs)
        self.task = task
        self.output_range = (
            None if output_range is None else tuple(float(v) for v in output_range)
        )
        self.head_hidden_dim = head_hidden_dim
        self.head_activation = head_activation
        self.shared_heads = bool(shared_heads)
        self.halting_bias = float(halting_bias)
        self.halting_confidence = float(halting_confidence)
        self.dropout = float(dropout)
        self.initial_tau = float(tau)
        self.regression_tolerance = float(regression_tolerance)
        self.pooling = pooling
        self.ponder = ponder
        # Created here (not in build) so that heads-argument errors surface
        # at construction; its weights are still created in build().
        self.heads = DactHeads(
            num_layers=len(blocks),
            num_outputs=num_outputs,
            hidden_dim=head_hidden_dim,
            activation=head_activation,
            shared=shared_heads,
            task=task,
            output_range=output_range,
            halting_bias=halting_bias,
            halting_confidence=halting_confidence,
            dropout=self.dropout,
            name="heads",
        )

    @property
    def num_layers(self):
        """The number of blocks."""
        return len(self.blocks)

    @property
    def method(self):
        """The exit criterion's name (`"dact"`, `"pabee"`, ...)."""
        return self.exit_criterion.name

    @property
    def exit_context(self):
        """What the exit criterion needs to know about this model."""
        return exits.ExitContext(task=self.task, output_range=self.output_range or (0.0, 1.0),
                                 tolerance=self.regression_tolerance)

    def build(self, inputs_shape, padding_mask_shape=None):
        for block in self.blocks:
            if not block.built:
                block.build(inputs_shape)
        self.heads.build((inputs_shape[0], inputs_shape[-1]))
        self.tau = self.add_weight(
            name="tau",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_tau),
            trainable=False,
        )

    # ------------------------------------------------------------------ call

    def call(self, inputs, padding_mask=None, training=None, full_depth=False,
             max_layers=None):
        _check_rank(inputs, 3, "inputs")
        if padding_mask is None:
            padding_mask = tf.ones(tf.shape(inputs)[:2], tf.bool)
        _check_rank(padding_mask, 2, "padding_mask")
        if (
            inputs.shape[:2].is_fully_defined()
            and padding_mask.shape.is_fully_defined()
            and inputs.shape[:2] != padding_mask.shape
        ):
            raise ValueError(
                "`padding_mask` must have shape [batch, seq] matching "
                f"`inputs` {inputs.shape}, got {padding_mask.shape}."
            )
        if inputs.shape[0] == 0:
            raise ValueError("Got an empty batch (batch size 0).")
        if max_layers is not None and (training or full_depth):
            raise ValueError("`max_layers` caps the early exit at inference; it cannot be "
                             "combined with training or full_depth.")
        if training or full_depth:
            # Training runs every block; its `layers_executed` is where the
            # exit rule would stop each training example (what the progress
            # bar and `dact_tf.callbacks.TargetBlocksTau` read).
            trace = self.trace(
                inputs, padding_mask, training=bool(training), exit_layers=bool(training)
            )
            criterion = self.exit_criterion
            layers = (
                trace["exit_layers"]
                if training
                else tf.fill(tf.shape(trace["ponder_cost"]),
                             tf.constant(self.num_layers, tf.int32))
            )
            out = self._outputs(criterion.answers_in(trace)[-1], layers,
                                criterion.reported_ponder_cost(trace))
            if training:
                ponder = criterion.ponder_loss(trace, self.ponder, self.exit_context)
                if ponder is not None:
                    self.add_loss(tf.cast(self.tau, tf.float32) * tf.reduce_mean(ponder))
                # Each block's own answer (and what else the method's loss
                # reads: DACT's accumulated answers).
                out["block_answers"] = trace["answers"]
                out.update(criterion.training_outputs(trace))
            return out
        return self.adaptive_forward(inputs, padding_mask, max_layers=max_layers)

    def _outputs(self, answer, layers_executed, ponder):
        out = {"layers_executed": layers_executed, "ponder_cost": ponder}
        if self.task == "regression":
            out["scores"] = answer[:, 0]
        else:
            out["probabilities"] = answer
            out["predictions"] = tf.argmax(answer, axis=-1, output_type=tf.int32)
        return out

    def _pool(self, hidden, padding_mask):
        """`[batch, seq, hidden]` -> `[batch, hidden]`, what the heads read."""
        if self.pooling == "cls":
            return hidden[:, 0, :]
        # expand_dims, not [:, :, None]: that strided slice is no TFLite builtin.
        mask = tf.expand_dims(tf.cast(padding_mask, hidden.dtype), -1)
        total = tf.reduce_sum(hidden * mask, axis=1)
        return total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)

    # -------------------------------------------------------- unrolled path

    def trace(self, inputs, padding_mask=None, training=False, exit_layers=True):
        """Runs every block and returns the whole DACT trajectory.

        Args:
            inputs: float `[batch, seq, hidden]`.
            padding_mask: `[batch, seq]` or None.
            training: bool.
            exit_layers: bool, whether to apply the halting rule after every
                block (skip it where only the trajectory is needed).

        Returns:
            A dict of float32 tensors, with N the number of blocks:
            `"answers"` `[N, batch, num_outputs]` (the `y_n`),
            `"halting"` `[N, batch]` (the `h_n`), `"budgets"` `[N, batch]`
            (the `p_n`), `"accumulated"` `[N, batch, num_outputs]` (the
            `a_n`), `"ponder_cost"` `[batch]`, and (with `exit_layers`)
            `"exit_layers"` int32 `[batch]`: the block after which the
            exit criterion's test stops each
            example (what the early-exit loop executes).
        """
        if padding_mask is None:
            padding_mask = tf.ones(tf.shape(inputs)[:2], tf.bool)
        x = inputs
        pooled = []
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask, training=training)
            pooled.append(self._pool(x, padding_mask))
        answers, halting = self.heads(tf.stack(pooled), training=training)
        answer, budget = ops.initial_state(tf.shape(inputs)[0], self.num_outputs)
        accumulated, budgets, halts = [], [], []
        criterion, context = self.exit_criterion, self.exit_context
        exit_answer, state = answer, criterion.initial_state(tf.shape(inputs)[0], context)
        for n in range(self.num_layers):
            answer, budget = ops.accumulate(answer, budget, answers[n], halting[n])
            accumulated.append(answer)
            budgets.append(budget)
            if exit_layers:
                exit_answer, state, done = criterion.step(
                    answers[n], halting[n], exit_answer, state, self.num_layers - 1 - n, context)
                halts.append(done)
        budgets = tf.stack(budgets)
        result = {
            "answers": answers,
            "halting": halting,
            "budgets": budgets,
            "accumulated": tf.stack(accumulated),
            "ponder_cost": ops.ponder_cost(budgets),
        }
        if exit_layers:
            result["exit_layers"] = ops.first_halting_layer(tf.stack(halts))
        return result

    # ---------------------------------------------------- early-exit loop

    def adaptive_forward(self, inputs, padding_mask=None, halting=True, max_layers=None):
        """Inference with per-example early exit.

        A batch of several rows runs a `tf.while_loop` that compacts the
        batch as rows finish (`early_exit.loop_forward`); a batch of one row runs the
        blocks as a chain of `tf.cond`s (`early_exit.chain_forward`), which skips the
        loop's machinery. Both give the same answers; where the batch size
        is only known at run time (exported signatures) the graph picks one
        with a `tf.cond` on it.

        Args:
            inputs: float `[batch, seq, hidden]`.
            padding_mask: `[batch, seq]` or None.
            halting: bool; False runs the loop to full depth (for checks: it
                must equal the unrolled path).
            max_layers: None, or int `[batch]` (>= 1): a per-row cap on the
                blocks (anytime inference under a latency budget). A row cut
                by its cap answers with what it has: DACT's accumulated
                `a_n` (a valid answer after any block), a baseline's last
                `y_n`. Adds `exact`, bool `[batch]`: True where the row
                finished by the exit rule (or at the last block) before or
                at its cap, so its answer is the uncapped one (for DACT the
                full-depth prediction, by the guarantee).

        Returns:
            The dict described in the class docstring.
        """
        if padding_mask is None:
            padding_mask = tf.ones(tf.shape(inputs)[:2], tf.bool)
        # One dtype for the hidden states: the blocks' compute dtype (a model
        # loaded under mixed precision can get float32 embeddings).
        inputs = tf.cast(inputs, self.blocks[0].compute_dtype)
        if max_layers is not None:
            max_layers = self._checked_cap(max_layers, tf.shape(inputs)[0])
        if not halting:
            return self._loop_forward(inputs, padding_mask, False, max_layers)
        batch = inputs.shape[0]
        if batch == 1:
            return self._chain_forward(inputs, padding_mask, max_layers)
        if batch is not None:
            return self._loop_forward(inputs, padding_mask, True, max_layers)
        return tf.cond(
            tf.equal(tf.shape(inputs)[0], 1),
            lambda: self._chain_forward(inputs, padding_mask, max_layers),
            lambda: self._loop_forward(inputs, padding_mask, True, max_layers),
        )

    @staticmethod
    def _checked_cap(max_layers, batch_size):
        """`max_layers` as int32 `[batch]`, checked in the graph."""
        max_layers = tf.convert_to_tensor(max_layers)
        if max_layers.dtype not in (tf.int32, tf.int64):
            raise TypeError(f"`max_layers` must be int32, got {max_layers.dtype.name}.")
        # Caps above the blocks mean "no cap": clip them before int32 can wrap them.
        max_layers = tf.cast(tf.minimum(max_layers, tf.cast(2 ** 30, max_layers.dtype)), tf.int32)
        _check_rank(max_layers, 1, "max_layers")
        checks = [
            tf.debugging.assert_equal(
                tf.shape(max_layers)[0], batch_size,
                message="`max_layers` must have one entry per row of the batch."),
            tf.debugging.assert_greater_equal(
                max_layers, 1, message="`max_layers` must be >= 1 for every row."),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(max_layers)

    def _chain_forward(self, inputs, padding_mask, max_layers=None):
        """Early exit for a batch of one row (`early_exit.chain_forward`)."""
        return early_exit.chain_forward(self, inputs, padding_mask, max_layers)

    def _loop_forward(self, inputs, padding_mask, halting, max_layers):
        """Early exit for a batch of rows (`early_exit.loop_forward`)."""
        return early_exit.loop_forward(self, inputs, padding_mask, halting, max_layers)

    # --------------------------------------------------------------- config

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "blocks": [keras.layers.serialize(b) for b in self.blocks],
                "num_outputs": self.num_outputs,
                "task": self.task,
                "output_range": self.output_range,
                "head_hidden_dim": self.head_hidden_dim,
                "head_activation": self.head_activation,
                "shared_heads": self.shared_heads,
                "halting_bias": self.halting_bias,
                "halting_confidence": self.halting_confidence,
                "dropout": self.dropout,
                "tau": self.initial_tau,
                "regression_tolerance": self.regression_tolerance,
                "pooling": self.pooling,
                "method": exits.serialize(self.exit_criterion),
                "ponder": self.ponder,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["blocks"] = [keras.layers.deserialize(b) for b in config["blocks"]]
        if "head_dropout" in config:  # the name before one name per concept
            config["dropout"] = config.pop("head_dropout")
        for key, value in _PRE_RECIPE_DEFAULTS.items():
            config.setdefault(key, value)  # what an older file left out meant then
        return cls(**exits.legacy_config(config))


def _check_range(name, value, lo, hi):
    value = float(value)
    if value < lo or (hi is not None and value > hi):
        bounds = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"`{name}` must be {bounds}, got {value}.")


#: The defaults before they came from `dact_tf.config.ModelConfig` (dact_tf
#: < 0.10): what a saved config that lacks a setting meant.
_PRE_RECIPE_DEFAULTS = {"halting_bias": 2.0, "halting_confidence": 0.0, "dropout": 0.0,
                        "tau": 1e-3, "pooling": "cls", "ponder": "budget"}

#: The `ModelConfig` fields a `DactEncoder` reads (its keyword arguments).
ENCODER_SETTINGS = ("head_hidden_dim", "head_activation", "shared_heads", "halting_bias",
                    "halting_confidence", "dropout", "tau", "regression_tolerance", "pooling",
                    "ponder")
