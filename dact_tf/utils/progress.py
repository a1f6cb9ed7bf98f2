"""Progress counters for long steps (evaluation, timing, tracing, export)."""

import sys
import time

_default_stream = [lambda: sys.stderr]

#: Seconds between the lines a long step prints where the stream is not a terminal.
HEARTBEAT_S = 30.0


def set_default_stream(factory):
    """Sets the callable that returns the stream new `Progress` bars write to."""
    _default_stream[0] = factory


class Progress:
    """A one-line progress counter with rate and ETA on stderr.

    On a terminal the line is redrawn at most 10 times a second; elsewhere
    (logs, CI) a line is printed every `HEARTBEAT_S` seconds of a long step
    and when the work is done, so logs stay short but never fall silent.

    Args:
        label: str, what is being done ("Evaluating").
        total: int or None, the number of steps if known.
        unit: str, the name of a step ("batches").
        stream: a text stream (default: stderr; the command line's real terminal).

    Example:
    ```python
    bar = Progress("Evaluating", total=28, unit="batches")
    for batch in dataset:
        ...
        bar.update()
    bar.close()
    ```
    """

    def __init__(self, label, total=None, unit="batches", stream=None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or _default_stream[0]()
        self.count = 0
        self.start = self._last = time.monotonic()
        try:
            self.dynamic = self.stream.isatty()
        except (AttributeError, ValueError):
            self.dynamic = False

    def _line(self):
        elapsed = time.monotonic() - self.start
        if self.total:
            done = f"{self.count}/{self.total} {self.unit}"
            if 0 < self.count < self.total:
                eta = elapsed / self.count * (self.total - self.count)
                return f"{self.label}: {done}, ETA {_clock(eta)}"
        else:
            done = f"{self.count} {self.unit}"
        return f"{self.label}: {done} in {_clock(elapsed)}"

    def update(self, steps=1):
        """Counts `steps` more steps done."""
        self.count += steps
        now = time.monotonic()
        if self.dynamic and now - self._last >= 0.1:
            self._last = now
            self.stream.write("\r" + self._line() + "\033[K")
            self.stream.flush()
        elif not self.dynamic and now - self._last >= HEARTBEAT_S:
            self._last = now
            self.stream.write(self._line() + "\n")
            self.stream.flush()

    def close(self):
        """Prints the final line."""
        prefix = "\r" if self.dynamic else ""
        self.stream.write(prefix + self._line() + ("\033[K" if self.dynamic else "") + "\n")
        self.stream.flush()


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def iterate(dataset, verbose, label, unit="batches"):
    """Yields the elements of `dataset`, counting them on stderr when `verbose`.

    Args:
        dataset: a `tf.data.Dataset` (its cardinality, when known, is the
            total) or any iterable.
        verbose: falsy for silence.
        label: str, what is being done.
        unit: str, the name of one element.
    """
    if not verbose:
        yield from dataset
        return
    total = None
    if hasattr(dataset, "cardinality"):
        total = int(dataset.cardinality())
        total = total if total > 0 else None
    bar = Progress(label, total=total, unit=unit)
    for element in dataset:
        yield element
        bar.update()
    bar.close()
