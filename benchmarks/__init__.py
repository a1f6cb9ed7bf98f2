"""Benchmarks of dact_tf (run as modules, e.g. `python -m benchmarks.overhead_benchmark`)."""
