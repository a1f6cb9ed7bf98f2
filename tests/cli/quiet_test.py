"""Tests of the command line's quiet output and progress counters."""

import io
import os
import subprocess
import sys
import textwrap

from dact_tf.utils import progress
from dact_tf.utils import quiet

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NOISE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1796195090.328948    3822 port.cc:153] oneDNN custom operations are on.",
    b"E0000 00:00:1796195097.342533    3822 cuda_platform.cc:52] failed call to cuInit: x",
    b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild",
    b"I1202 07:05:03.379818 140075019033472 dataset_info.py:711] Load dataset info from /x",
]
KEPT = [
    b"dact-tf train: error: --model_dir is required.",
    b"Traceback (most recent call last):",
    b"Epoch 1/2",
    b"I like this film",
    b"E: not a log line",
]


def test_noise_lines_are_recognised_and_user_lines_are_not():
    assert all(quiet.is_noise(line) for line in NOISE)
    assert not any(quiet.is_noise(line) for line in KEPT)


def test_the_filter_drops_noise_written_to_fd_2_and_keeps_the_rest_in_order():
    script = textwrap.dedent("""
        import os, sys
        from dact_tf.utils import quiet
        quiet.install()
        os.write(2, b"--start--\\n")  # importing TensorFlow above was not filtered yet
        for line in %r:
            os.write(2, line + b"\\n")  # as C++ writes: straight to fd 2
        print("a python line", file=sys.stderr)
        os.write(2, b"no newline at exit")
    """ % (NOISE + KEPT,))
    env = dict(os.environ, PYTHONPATH=REPO, DACT_TF_QUIET="0")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected = b"\n".join(KEPT) + b"\na python line\nno newline at exit"
    assert proc.stderr.split(b"--start--\n", 1)[1] == expected


def test_tensorflows_retracing_advice_is_dropped_and_its_other_warnings_kept():
    script = textwrap.dedent("""
        import logging, sys
        from dact_tf.utils import quiet
        quiet.install()
        quiet.install()  # idempotent: one filter
        logger = logging.getLogger("tensorflow")
        logger.addHandler(logging.StreamHandler(sys.stdout))
        logger.warning("5 out of the last 5 calls to <f> triggered tf.function retracing.")
        logger.warning("a warning that matters")
        print(len(logger.filters))
    """)
    env = dict(os.environ, PYTHONPATH=REPO, DACT_TF_QUIET="0")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env,
                          cwd=REPO, timeout=120, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["a warning that matters", "1"]


def test_verbosity_or_the_environment_turns_the_filter_off():
    assert quiet.is_command_line(["/venv/bin/dact-tf", "train"], {})
    assert not quiet.is_command_line(["/venv/bin/dact-tf", "train", "--verbosity=1"], {})
    assert not quiet.is_command_line(["/venv/bin/dact-tf", "train", "-v", "1"], {})
    assert not quiet.is_command_line(["/venv/bin/dact-tf"], {"DACT_TF_QUIET": "0"})
    assert quiet.is_command_line(["examples/demo.py"], {"DACT_TF_QUIET": "1"})
    assert not quiet.is_command_line(["my_script.py"], {})


def test_progress_prints_one_line_when_not_on_a_terminal():
    stream = io.StringIO()
    bar = progress.Progress("Evaluating", total=3, stream=stream)
    for _ in range(3):
        bar.update()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Evaluating: 3/3 batches in 0:0")
    stream = io.StringIO()
    assert list(progress.iterate([1, 2], verbose=1, label="Counting", unit="rows")) == [1, 2]
    assert list(progress.iterate([1, 2], verbose=0, label="x")) == [1, 2]


def test_a_long_step_off_a_terminal_prints_a_line_every_heartbeat(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    stream = io.StringIO()
    bar = progress.Progress("Tracing", total=10, stream=stream)
    for _ in range(10):
        clock[0] += 0.4 * progress.HEARTBEAT_S  # a line at steps 3, 6 and 9, then the last
        bar.update()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 + 1, lines
    assert lines[0].startswith("Tracing: 3/10 batches, ETA") and lines[-1].startswith(
        "Tracing: 10/10 batches in")


def test_native_output_written_while_holding_the_gil_does_not_hang():
    # A C call that holds the GIL (PyDLL) writes far more than a pipe holds,
    # as the TFLite converter does: inside native_output_to_file it lands in
    # a file and reaches the filter afterwards (noise dropped, order kept).
    script = textwrap.dedent("""
        import ctypes, os
        from dact_tf.utils import quiet
        quiet.install()
        os.write(2, b"--start--\\n")
        libc = ctypes.PyDLL(None)  # PyDLL: the GIL stays held during the call
        noise = %r + b"\\n"
        burst = (b"kept line\\n" + noise) * 200000  # about 30 MB
        with quiet.native_output_to_file():
            assert libc.write(2, burst, len(burst)) == len(burst)
        os.write(2, b"after")
    """ % (NOISE[0],))
    env = dict(os.environ, PYTHONPATH=REPO, DACT_TF_QUIET="0")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.split(b"--start--\n", 1)[1] == b"kept line\n" * 200000 + b"after"
