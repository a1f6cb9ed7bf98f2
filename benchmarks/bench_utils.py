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


def cpu_model():
    """The CPU's model name from lscpu (or platform), for results tables."""
    import platform

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def environment():
    """What every results table records: machine, versions, load, commit."""
    import datetime
    import os
    import platform

    import keras
    import keras_hub
    import tensorflow as tf

    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_logical_devices("GPU")],
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "numpy": np.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_at_start": list(os.getloadavg()),
        "git_commit": git("rev-parse", "HEAD"),
        "dact_tf_uncommitted_changes": git("status", "--porcelain", "--", "dact_tf"),
    }


NOTES_HEADING = "\n## Notes"


def write_generated_markdown(path, text):
    """Writes a generated results file, keeping its hand-written notes.

    Everything from a `## Notes` heading on in the existing file is kept
    after the newly generated `text`, so rerunning a study never loses the
    analysis written under its table.
    """
    import os

    notes = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if NOTES_HEADING in old:
            notes = old[old.index(NOTES_HEADING):]
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n" + notes)


def apply_quick(flag_values, **values):
    """Sets `--quick` smoke-run values on absl `flag_values` (names are flags)."""
    for name, value in values.items():
        setattr(flag_values, name, value)


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None (with a warning) if missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from absl import logging

        logging.warning("matplotlib is not installed (pip install -e .[bench]): no plot.")
        return None
    return plt
