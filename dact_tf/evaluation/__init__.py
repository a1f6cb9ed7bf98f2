"""Evaluation: metrics and timing (`scoring`), predictions on texts (`prediction`),
the per-block analysis replayed on a trace (`analysis`) and plots (`plots`)."""
