"""The `dact-tf` command line (absl flags)."""
