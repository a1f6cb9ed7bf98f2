"""Quiet console output for the `dact-tf` command line.

TensorFlow's C++ runtime writes start-up and device lines straight to the
process's stderr (file descriptor 2), before and regardless of Python's
logging settings: oneDNN notices, "Could not find cuda drivers", "failed
call to cuInit" on every CPU-only machine, tf.data buffer notes. At the
default verbosity the command line routes file descriptor 2 through a filter
that drops those lines and passes everything else (its own messages,
warnings in words, tracebacks) unchanged; Python-side INFO logs (absl,
tensorflow-datasets) are switched off and Python warnings from TensorFlow
and Keras are hidden. `--verbosity=0` or higher shows everything.

Progress bars (`dact_tf.utils.progress.Progress`) write to the terminal's real
stderr, so the filter never holds them back.
"""

import atexit
import contextlib
import logging as py_logging
import os
import re
import sys
import tempfile
import threading
import warnings

from dact_tf.utils import progress

#: Lines written by TensorFlow's C++ logging (absl before InitializeLog).
_CPP_LOG = re.compile(rb"^[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\]]+\] ")
_NOISE = (
    re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(rb"^To enable the following instructions: "),
    _CPP_LOG,
)
_state = {"real_fd": None, "thread": None, "write_fd": None}


def is_noise(line):
    """Whether one stderr line (bytes) is TensorFlow start-up or runtime noise."""
    return any(p.match(line) for p in _NOISE)


def _could_become_noise(fragment):
    """Whether an unfinished line may still turn out to be noise."""
    if not fragment:
        return False
    prefixes = (b"WARNING: All log messages", b"To enable the following")
    if any(p.startswith(fragment[: len(p)]) or fragment.startswith(p) for p in prefixes):
        return True
    return re.match(rb"^[IWE]\d{0,4}( [\d:.]*( +\d*( [^\]\n]*)?)?)?$", fragment) is not None


def _pump(read_fd, real_fd):
    pending = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        out = b"".join(line + b"\n" for line in lines if not is_noise(line))
        if pending and not _could_become_noise(pending):
            out, pending = out + pending, b""
        if out:
            os.write(real_fd, out)
    if pending and not is_noise(pending):
        os.write(real_fd, pending)
    os.close(read_fd)


def _flush_stderr():
    """Flushes Python's stderr buffer; a closed or broken stderr is left alone."""
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def restore():
    """Flushes the filter and gives fd 2 back to the real stderr (idempotent)."""
    thread = _state["thread"]
    if thread is None:
        return
    _flush_stderr()
    os.dup2(_state["real_fd"], 2)
    os.close(_state["write_fd"])
    thread.join(timeout=5)
    _state["thread"] = None



def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings that reach the user (dact_tf's own) as one line in words."""
    del category, filename, lineno, line
    print(f"dact-tf: warning: {message}", file=file or sys.stderr)


class _NoRetracingAdvice(py_logging.Filter):
    """Drops TensorFlow's retracing advice (a warning about our own deliberate traces)."""

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


def install():
    """Filters TensorFlow's noise out of this process's stderr (idempotent).

    Call it before TensorFlow is imported. Python INFO logs are switched off,
    Python warnings from TensorFlow, Keras, keras-hub and tensorflow-datasets
    are hidden, and the others (dact_tf's own) print as one line each.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for module in ("tensorflow", "keras", "keras_hub", "tensorflow_datasets", "tf_keras",
                   "google.protobuf", "absl"):
        warnings.filterwarnings("ignore", module=module + r"(\.|$)")
    warnings.showwarning = _show_warning
    # tf.function's "... triggered tf.function retracing" advice: each cap of
    # `evaluate --max_layers` is a new trace on purpose.
    tf_logger = py_logging.getLogger("tensorflow")
    if not any(isinstance(f, _NoRetracingAdvice) for f in tf_logger.filters):
        tf_logger.addFilter(_NoRetracingAdvice())
    try:
        from absl import logging

        logging.set_verbosity(logging.WARNING)
    except ImportError:  # pragma: no cover - absl is a dependency
        pass
    if _state["thread"] is not None:
        return
    try:
        sys.stderr.flush()
        real_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
    except OSError:  # no usable stderr: leave it alone
        return
    try:  # Room for bursts written while the thread waits for the GIL.
        import fcntl

        fcntl.fcntl(write_fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass
    thread = threading.Thread(target=_pump, args=(read_fd, real_fd), daemon=True,
                              name="dact-tf-stderr-filter")
    thread.start()
    _state.update(real_fd=real_fd, thread=thread, write_fd=write_fd)
    atexit.register(restore)
    progress.set_default_stream(real_stderr)


@contextlib.contextmanager
def native_output_to_file():
    """Sends fd 2 to a temporary file for a C++ call that holds the GIL.

    The filter's thread needs the GIL to drain its pipe. A native call that
    holds the GIL and writes more than the pipe holds (the TFLite converter
    logs per function it lowers) would block forever on the full pipe while
    the thread waits for the GIL. Inside this context fd 2 is a file; what
    was written goes through the filter afterwards, in order. Without the
    filter it does nothing.

    Example:
    ```python
    with native_output_to_file():
        content = converter.convert()
    ```
    """
    if _state["thread"] is None:
        yield
        return
    _flush_stderr()
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            _flush_stderr()
            os.dup2(_state["write_fd"], 2)
            held.seek(0)
            while True:  # os.write releases the GIL: the thread drains as we go.
                chunk = held.read(1 << 16)
                if not chunk:
                    break
                os.write(2, chunk)


def real_stderr_fd():
    """The terminal's stderr file descriptor past the filter; None without a filter.

    For child processes whose last words must reach the terminal even when
    this process is killed (the filter thread dies with it).
    """
    return _state["real_fd"] if _state["thread"] is not None else None


def real_stderr():
    """A writable text stream on the terminal's stderr, past the filter."""
    if _state["thread"] is None:
        return sys.stderr
    if "stream" not in _state:
        _state["stream"] = os.fdopen(os.dup(_state["real_fd"]), "w", buffering=1)
    return _state["stream"]


def is_command_line(argv=None, environ=None):
    """Whether this process is the `dact-tf` command (or asks to be quiet).

    True for the `dact-tf` console script and `python -m dact_tf`, and when
    the environment sets `DACT_TF_QUIET=1` (the demo does); false when it sets
    `DACT_TF_QUIET=0` or argv asks for logs (`--verbosity`, `-v`).
    """
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    if environ.get("DACT_TF_QUIET") == "0" or wants_logs(argv[1:]):
        return False
    if environ.get("DACT_TF_QUIET") == "1":
        return True
    name = os.path.basename(argv[0]) if argv else ""
    if name in ("dact-tf", "dact-tf.exe"):
        return True
    orig = list(getattr(sys, "orig_argv", []))
    return "-m" in orig and orig[orig.index("-m") + 1:][:1] in (["dact_tf"], ["dact_tf.cli.main"])


def wants_logs(argv):
    """Whether argv asks for TensorFlow's logs (`--verbosity` or `-v` given)."""
    for arg in argv:
        if arg.startswith("--verbosity") or arg == "-v" or arg.startswith("-v="):
            return True
        if arg.startswith("-v") and arg[2:].lstrip("-").isdigit():
            return True
    return False
