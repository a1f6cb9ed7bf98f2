"""DactClassifier: a keras-hub encoder backbone with DACT heads and early exit."""

import keras
import tensorflow as tf

from dact_tf import config as config_lib
from dact_tf import exits
from dact_tf import ops
from dact_tf.layers.dact_encoder import ENCODER_SETTINGS
from dact_tf.layers.dact_encoder import DactEncoder
from dact_tf.models import encoders
from dact_tf.models import inputs as inputs_lib
from dact_tf.models import optimization
from dact_tf.models import teacher as teacher_lib
from dact_tf.models.trainer_fixes import TrainerFixes


@keras.saving.register_keras_serializable(package="dact_tf")
class DactClassifier(TrainerFixes, keras.Model):
    """A Transformer classifier (or bounded regressor) that thinks only as long as needed.

    The keras-hub backbone's embeddings and Transformer blocks run
    inside a `DactEncoder`: after every block a head answers and says how
    much later blocks may still matter, and at inference each example stops
    as soon as the remaining blocks provably cannot change its prediction.

    The building block: it takes token inputs only. Every setting left
    out takes its value from `config` (a `dact_tf.config.ModelConfig`;
    None: dact_tf's default recipe, the one `dact-tf train` uses: mean
    pooling, tau 0.06, per-block and self-distillation losses, halting
    units that read their answer's confidence). The paper's pure form is
    the named recipe `config=ModelConfig.paper()`.
    `dact_tf.DactTextClassifier` is the same model as a keras-hub Task,
    with a preprocessor (raw strings) and `from_preset`.

    Trained with `model.fit` on `(features, labels)` data, where features are
    the dict a keras-hub BERT preprocessor produces (`token_ids`,
    `segment_ids`, `padding_mask`). `fit()` runs every block and minimises
    `task_loss(a_N) + tau * ponder_cost`; its logs show `ponder_cost`.
    `evaluate()` and `predict()` exit early per example: `evaluate()`
    reports the task metric and `layers_executed`, the mean number of blocks
    executed; `predict()` returns a dict with `probabilities` and
    `predictions` (or `scores` for regression), `layers_executed` and
    `ponder_cost`.

    Args:
        backbone: a keras-hub encoder backbone, pretrained or not: BERT,
            RoBERTa, XLM-RoBERTa, DistilBERT, ELECTRA or ALBERT (whose
            shared blocks DACT halts over), or any encoder with a
            registered `dact_tf.models.encoders.EncoderAdapter`.
        num_classes: int >= 2, the number of classes (ignored for
            regression).
        task: `"classification"` or `"regression"` (a bounded score).
        output_range: `(lo, hi)`, the score range, for regression.
        label_names: optional list of class names, stored with the model.
        method: the exit criterion (`dact_tf.exits`): `"dact"` or an
            early-exit baseline on the same heads, loop and exports:
            `"pabee"` (trained with the index-weighted mean of every
            block's loss; exits when the prediction held for `patience`
            blocks), `"deebert"` (two-stage training, see
            `start_second_stage`; exits when the entropy of the current
            block's prediction is below `entropy_threshold`) or `"static"`
            (a classifier on the last kept block; no early exit). A name, or
            an object such as `dact_tf.exits.Pabee(patience=3)`; None:
            `config.method`.
        num_layers: int or None, keep only the backbone's first
            `num_layers` blocks (static truncation; None keeps all). The
            dropped blocks' weights stay in the backbone, frozen.
        config: a `dact_tf.config.ModelConfig`: the value of every setting
            below that is not given (None: `ModelConfig()`).
        **kwargs: the settings below, and `keras.Model` arguments (`name`,
            ...). A setting given as None takes `config`'s value.

    Settings (keyword arguments; defaults from `config`):
        head_hidden_dim: int or None, the heads' hidden width (None: the
            backbone's hidden size).
        head_activation: the heads' hidden activation.
        shared_heads: bool, share one head across blocks.
        halting_bias: float, initial bias of the halting units.
        halting_confidence: float, classification with `method="dact"`: 0
            (the paper's halting units) or the initial weight with which each
            halting unit also reads its own answer's confidence, e.g. -4:
            confident answers start halting (see `DactHeads`). Left out:
            the recipe's value where the method uses it, else 0.
        dropout: float, dropout on the pooled vector before each head.
        tau: float >= 0, the ponder-cost weight (change it with `model.tau`
            or `dact_tf.callbacks.TauScheduler`).
        ponder: the ponder cost: `"budget"` (the paper's `sum_n p_n`) or
            `"blocks"` (a smooth count of the blocks the halting rule runs;
            see `DactEncoder`).
        halting_rule, halting_margin, halting_epsilon, halting_slack: DACT's
            knobs (default: the guaranteed `"tight"` rule); see
            `dact_tf.ops.should_halt`.
        regression_tolerance: float, the largest score change that halting
            may cause (regression).
        head_loss_weight: float >= 0, weight of an auxiliary loss that
            trains every block's answer `y_n` on the label directly (the
            mean over blocks of the task loss of `y_n`). 0 is pure DACT. In
            the DACT mixture early answers carry little weight, so their
            heads barely learn and the model cannot exit early; this
            deep-supervision term (a "heads first" warm-up when scheduled)
            fixes that. Settable during training with `model.head_loss_weight`.
        distill_weight: float >= 0, DACT only: weight of a self-distillation
            loss that pulls every block's answer `y_n` (n < N) and every
            accumulated answer `a_n` (n = 1..N) towards the deepest head's
            answer `y_N` (held fixed: no gradient flows into the teacher),
            as FastBERT trains its exits: the mean KL divergence
            `KL(y_N || .)` for classification, the mean squared difference
            for regression (see `distillation_loss`). It keeps `a_n` close
            to the full-depth answer at every block, which is what an early
            exit returns. 0 (the paper's form) turns it off. Left out: the
            recipe's value for DACT, 0 for the baselines.
        pooling: what the heads read from each block: `"cls"` (first token,
            the paper's choice) or `"mean"` (mean over real tokens, for
            backbones pretrained with mean pooling like all-MiniLM-L6-v2).
        patience: int >= 1, `"pabee"`'s patience.
        entropy_threshold: float >= 0, `"deebert"`'s threshold (nats).

    Call arguments:
        inputs: a dict with `token_ids` (int `[batch, seq]`) and optional
            `padding_mask` (`[batch, seq]`, default `token_ids != 0`) and,
            for encoders with segments (BERT, ELECTRA, ALBERT; see
            `input_keys`), `segment_ids` (int `[batch, seq]`, default
            zeros); or the `token_ids` tensor alone.
        training: bool.
        full_depth: bool, at inference run every block (no early exit).
        max_layers: None, or int32 `[batch]`: at inference, cap each row at
            this many blocks (anytime answers under a latency budget; see
            `DactEncoder.adaptive_forward`); adds the bool output `exact`.

    Returns:
        The dict of `DactEncoder`.

    Example:
    >>> import keras_hub
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=100, num_layers=3, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=16)
    >>> model = DactClassifier(backbone, num_classes=2, tau=1e-2)
    >>> out = model({"token_ids": tf.ones([2, 8], tf.int32)})
    >>> out["probabilities"].shape, out["layers_executed"].shape
    (TensorShape([2, 2]), TensorShape([2]))

    References:
        Eyzaguirre et al. DACT-BERT, arXiv:2109.11745.
    """

    #: What the last calibration certified (`dact_tf.calibration.certify`): a dict with
    #: `compute_target` and/or `halting` certificates, saved with the model
    #: and written into its exports' metadata; None when nothing is.
    certificates = None

    def __init__(self, backbone, num_classes=2, task="classification", output_range=None,
                 label_names=None, method=None, num_layers=None, config=None, **kwargs):
        criterion = exits.from_arguments(method, kwargs, config)
        given_distill = kwargs.get("distill_weight")
        losses = config_lib.settings(kwargs, ("head_loss_weight", "distill_weight"), config)
        if given_distill is None:  # what the method uses of the recipe's
            losses["distill_weight"] = criterion.recipe_settings(
                config or config_lib.ModelConfig(), task)["distill_weight"]
        encoder_settings = {k: kwargs.pop(k) for k in ENCODER_SETTINGS if k in kwargs}
        super().__init__(**kwargs)
        # How to embed tokens and which blocks to run (`dact_tf.models.encoders`).
        self._adapter = encoders.adapter_for(backbone)
        if task not in ops.TASKS:
            raise ValueError(f"`task` must be one of {ops.TASKS}, got {task!r}.")
        blocks = self._adapter.blocks(backbone)
        if num_layers is not None:
            if int(num_layers) != num_layers or not 1 <= num_layers <= len(blocks):
                raise ValueError(
                    f"`num_layers` must be an integer in [1, {len(blocks)}] (the "
                    f"backbone's blocks), got {num_layers}."
                )
            for block in blocks[num_layers:]:
                block.trainable = False  # dropped: no gradients, no updates
            blocks = blocks[:num_layers]
        num_outputs = 1 if task == "regression" else int(num_classes)
        if label_names is not None:
            label_names = [str(n) for n in label_names]
            if task == "classification" and len(label_names) != num_outputs:
                raise ValueError(
                    f"`label_names` has {len(label_names)} names for "
                    f"{num_outputs} classes."
                )
        # The heads pool the blocks' own outputs: BERT's pooler is unused,
        # so keep it out of training (no "gradients do not exist" warnings).
        if hasattr(backbone, "pooled_dense"):
            backbone.pooled_dense.trainable = False
        self.backbone = backbone
        self.num_classes = num_outputs
        self.task = task
        self.output_range = (
            None if output_range is None else tuple(float(v) for v in output_range)
        )
        self.label_names = label_names
        self.encoder = DactEncoder(
            blocks=blocks, num_outputs=num_outputs, task=task, output_range=output_range,
            method=criterion, config=config, name="dact_encoder", **encoder_settings)
        self.kept_layers = None if num_layers is None else int(num_layers)
        # DeeBERT trains in two stages; see `start_second_stage`.
        self.training_stage = 1
        self.dropout = self.encoder.dropout
        self.initial_head_loss_weight = _non_negative("head_loss_weight",
                                                      losses["head_loss_weight"])
        self.distill_weight = _non_negative("distill_weight", losses["distill_weight"])
        self.exit_criterion.check_distill_weight(self.distill_weight)
        self._head_loss_weight = self.add_weight(
            name="head_loss_weight",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_head_loss_weight),
            trainable=False,
        )
        self.layers_executed_tracker = keras.metrics.Mean(name="layers_executed")
        self.ponder_cost_tracker = keras.metrics.Mean(name="ponder_cost")
        # Built at construction, like keras-hub's functional tasks, so that
        # weights exist for `model.tau`, checkpoints and `.keras` loading.
        self.encoder.build((None, None, backbone.hidden_dim))
        if not self.exit_criterion.trains_halting_units:
            # The baselines never read the halting units: keep them out of
            # training (no "gradients do not exist" warnings).
            heads = self.encoder.heads
            for variable in (heads.halting_kernel, heads.halting_bias_weight):
                variable.trainable = False
        self.built = True

    # ---------------------------------------------------------- properties

    @property
    def num_layers(self):
        """The number of Transformer blocks."""
        return self.encoder.num_layers

    @property
    def tau(self):
        """The current ponder-cost weight, a Python float."""
        return float(keras.ops.convert_to_numpy(self.encoder.tau))

    @tau.setter
    def tau(self, value):
        self.encoder.tau.assign(_non_negative("tau", value))

    @property
    def exit_criterion(self):
        """The `dact_tf.exits.ExitCriterion` this model runs."""
        return self.encoder.exit_criterion

    @property
    def method(self):
        """The exit criterion's name: `"dact"` or the baseline this model runs."""
        return self.encoder.method

    def configure_exit(self, **settings):
        """Changes the exit criterion's knobs after training (no retraining).

        Args:
            **settings: knobs of this model's method (None: unchanged).
                DACT: `halting_rule` (`"tight"`, `"paper"`, `"relaxed"`,
                `"never"`; only the first two keep the guarantee),
                `halting_epsilon` (the `"relaxed"` rule's budget threshold:
                exit once `p_n < halting_epsilon`), `halting_margin`,
                `halting_slack`. PABEE: `patience`. DeeBERT:
                `entropy_threshold`. A knob of another method is refused.

        Example:
        >>> model.configure_exit(patience=3)  # doctest: +SKIP
        """
        self.exit_criterion.configure(
            **{k: v for k, v in settings.items() if v is not None})
        # The compiled functions baked the old values in.
        self.predict_function = self.test_function = None

    def start_second_stage(self):
        """DeeBERT's second stage: freeze the backbone; train the exit heads.

        After the first stage (the whole model trained on the last block's
        loss), this freezes the backbone, and from then on `fit` minimises
        the mean loss of the intermediate blocks' heads only: the last
        block's head gets no gradient, so with a freshly compiled optimizer
        (call `compile` again, as Keras requires after changing
        `trainable`) the final classifier stays exactly as stage 1 left it.
        """
        self.exit_criterion.start_stage(self, 2)

    @property
    def head_loss_weight(self):
        """The current weight of the per-block auxiliary loss, a float."""
        return float(keras.ops.convert_to_numpy(self._head_loss_weight))

    @head_loss_weight.setter
    def head_loss_weight(self, value):
        self._head_loss_weight.assign(_non_negative("head_loss_weight", value))

    # ---------------------------------------------------------------- call

    @property
    def vocabulary_size(self):
        """int, the number of token ids the backbone embeds."""
        return self._adapter.vocabulary_size(self.backbone)

    @property
    def num_segments(self):
        """int, the segment ids the backbone embeds (None: it has none)."""
        return self._adapter.num_segments(self.backbone)

    @property
    def input_keys(self):
        """The token-input keys the backbone reads (`token_ids` first)."""
        return self._adapter.input_keys

    def _standardize_inputs(self, inputs):
        """Validates the inputs; returns `(inputs dict, padding_mask)` (see
        `dact_tf.models.inputs.standardize_inputs`)."""
        return inputs_lib.standardize_inputs(
            inputs, input_keys=self.input_keys, backbone_name=type(self.backbone).__name__,
            max_length=self.backbone.max_sequence_length,
            vocabulary_size=self.vocabulary_size, num_segments=self.num_segments)

    def _embed(self, inputs, training):
        return self._adapter.embed(self.backbone, inputs, training)

    def call(self, inputs, training=None, full_depth=False, max_layers=None):
        inputs, padding_mask = self._standardize_inputs(inputs)
        x = self._embed(inputs, training)
        kwargs = {} if max_layers is None else {"max_layers": max_layers}
        return self.encoder(
            x, padding_mask=padding_mask, training=training, full_depth=full_depth, **kwargs
        )

    def trace(self, inputs):
        """Runs every block at inference and returns the DACT trajectory.

        Args:
            inputs: as for `call`.

        Returns:
            The dict of `DactEncoder.trace`: per-block answers, halting
            values, budgets, accumulated answers, the ponder cost and
            `exit_layers`, the block where the halting rule stops each
            example.
        """
        inputs, padding_mask = self._standardize_inputs(inputs)
        x = self._embed(inputs, training=False)
        return self.encoder.trace(x, padding_mask, training=False)

    # ------------------------------------------------------------- training

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """Configures the model; `"auto"` picks sensible defaults.

        Args:
            optimizer: `"auto"` is the recipe's (`optimization.recipe_optimizer`:
                AdamW at `TrainConfig.learning_rate`, warm-up then linear
                decay over each `fit` call's steps), as `dact-tf train`.
            loss: `"auto"` is the negative log-likelihood of the accumulated
                answer `a_N` for classification (it is already a
                distribution: `SparseCategoricalCrossentropy(from_logits=
                False)`), or the mean squared error for regression. The
                ponder cost is added by the model itself.
            metrics: `"auto"` is accuracy (classification) or mean absolute
                error (regression).
            **kwargs: `keras.Model.compile` arguments. `jit_compile` applies
                to the training step only: the early-exit loop has
                data-dependent shapes, which XLA cannot compile.
        """
        if optimizer == "auto":
            optimizer = optimization.recipe_optimizer()
        regression = self.task == "regression"
        if loss == "auto":
            loss = (keras.losses.MeanSquaredError() if regression
                    else keras.losses.SparseCategoricalCrossentropy(from_logits=False))
        if metrics == "auto":
            metrics = ([keras.metrics.MeanAbsoluteError(name="mae")] if regression
                       else [keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, **kwargs):
        """`keras.Model.fit`; the default optimizer's schedule is planned over this call."""
        optimization.plan_fit(self, x, batch_size, epochs, kwargs)
        return super().fit(x=x, y=y, batch_size=batch_size, epochs=epochs, **kwargs)

    def get_compile_config(self):
        # `compile` is overridden with the same arguments, so Keras' stored
        # compile config round-trips through it unchanged.
        return super().get_compile_config()

    def compile_from_config(self, config):
        # Keras' own version refuses to run for an overridden `compile`.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            # Create the optimizer's variables so its state can be loaded.
            self.optimizer.build(self.trainable_variables)

    def _main_output(self, y_pred):
        return y_pred["scores"] if self.task == "regression" else y_pred["probabilities"]

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        block_answers = block_accumulated = None
        if isinstance(y_pred, dict):
            block_answers = y_pred.get("block_answers")
            block_accumulated = y_pred.get("block_accumulated")
            y_pred = self._main_output(y_pred)
        loss = super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )
        if block_answers is None or y is None:
            return loss  # evaluation
        # Keras scales its own losses by 1 / replicas (gradients are summed
        # across replicas); the per-block losses must be scaled the same way.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return self.exit_criterion.loss(exits.LossParts(
            main=loss,
            block_losses=lambda: self._block_losses(y, block_answers) / float(replicas),
            block_answers=block_answers,
            block_accumulated=block_accumulated,
            head_loss_weight=self._head_loss_weight,
            distill_weight=self.distill_weight,
            replicas=replicas,
            stage=self.training_stage,
            num_layers=self.num_layers,
            context=self.encoder.exit_context,
            teacher=teacher_lib.answers(self, x),
        ))

    def _block_losses(self, y, block_answers):
        """`[num_layers]`: each block's own task loss, mean over examples."""
        if self.task == "regression":
            target = tf.cast(tf.reshape(y, [1, -1]), tf.float32)
            return tf.reduce_mean(tf.square(block_answers[..., 0] - target), axis=1)
        target = tf.cast(tf.reshape(y, [-1]), tf.int32)
        target = tf.broadcast_to(target[None, :], tf.shape(block_answers)[:2])
        return tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(target, block_answers), axis=1
        )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.layers_executed_tracker.update_state(
            tf.cast(y_pred["layers_executed"], tf.float32)
        )
        self.ponder_cost_tracker.update_state(y_pred["ponder_cost"])
        return super().compute_metrics(x, y, self._main_output(y_pred),
                                       sample_weight=sample_weight)

    # --------------------------------------------------------------- config

    def get_config(self):
        enc = self.encoder
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.layers.serialize(self.backbone),
            "num_classes": self.num_classes,
            "task": self.task,
            "output_range": self.output_range,
            "label_names": self.label_names,
            "head_hidden_dim": enc.head_hidden_dim,
            "head_activation": enc.head_activation,
            "shared_heads": enc.shared_heads,
            "halting_bias": enc.halting_bias,
            "halting_confidence": enc.halting_confidence,
            "dropout": self.dropout,
            "tau": enc.initial_tau,
            "regression_tolerance": enc.regression_tolerance,
            "head_loss_weight": self.initial_head_loss_weight,
            "distill_weight": self.distill_weight,
            "pooling": enc.pooling,
            "method": exits.serialize(enc.exit_criterion),
            "num_layers": self.kept_layers,
            "ponder": enc.ponder,
            **({"certificates": self.certificates} if self.certificates else {}),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        certificates = config.pop("certificates", None)
        for key, value in PRE_RECIPE_DEFAULTS.items():
            config.setdefault(key, value)  # what an older file left out meant then
        model = cls(**exits.legacy_config(config))
        model.certificates = certificates
        return model


#: The defaults of `DactClassifier`'s arguments before they came from
#: `dact_tf.config.ModelConfig` (dact_tf < 0.10: the paper's form): what a
#: saved config that lacks one of them meant.
PRE_RECIPE_DEFAULTS = {"halting_bias": 2.0, "halting_confidence": 0.0, "dropout": 0.1,
                       "tau": 1e-3, "head_loss_weight": 0.0, "distill_weight": 0.0,
                       "pooling": "cls", "shared_heads": False, "head_activation": "tanh",
                       "regression_tolerance": 0.05, "ponder": "budget"}


def _non_negative(name, value):
    value = float(value)
    if not value >= 0.0:
        raise ValueError(f"`{name}` must be >= 0, got {value}.")
    return value
