"""Helpers shared by the benchmark scripts: timing hygiene and run metadata."""

import gc
import subprocess

import numpy as np


class NoGC:
    """Keeps Python's garbage collector off while timing."""

    def __enter__(self):
        gc.collect()
        self._was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        if self._was_enabled:
            gc.enable()


def median(values):
    return float(np.median(np.asarray(values, np.float64)))


def git(*args):
    """Read-only git query; '' when git is unavailable."""
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
