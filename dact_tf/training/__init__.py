"""Training: `train_lib.train` (the CLI's `train`), the `TrainingRun` steps,
distribution strategies and exact resume."""
