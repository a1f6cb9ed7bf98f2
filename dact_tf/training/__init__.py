"""Training: `train_lib.train` (the CLI's `train`), the `TrainingRun` steps, the
optimizer and its schedule, distribution strategies and exact resume."""

from dact_tf.training import optimization  # registers WarmupLinearDecay for loading
