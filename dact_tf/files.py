"""Files others can read, and one writer per model directory.

Atomic writes go through private temporary files and folders (`mkstemp`
makes files 0600, `mkdtemp` folders 0700). Before they are renamed into
place, `publish` gives them the permissions a plain `open`/`mkdir` would
have under the process's umask (0644 files, 0755 folders under umask 022),
so that a TF Serving container running as another user can read an export.
`ModelDirLock` keeps a second process from training into a directory that
another one is writing.
"""

import json
import os
import socket
import tempfile


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish(path):
    """Gives `path` (a file, or a folder and everything in it) umask permissions."""
    mask = _umask()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def atomic_write(path, write):
    """Calls `write(tmp_path)` then renames tmp_path to path."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        publish(tmp)  # mkstemp's 0600 -> what the umask gives (0644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, results):
    """Writes results as JSON, atomically."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)

    atomic_write(path, write)


def process_alive(pid):
    """Whether process `pid` runs on this host (another user's counts as alive)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


class ModelDirLock:
    """An exclusive lock on a model directory while a process trains into it.

    The lock is a file, `MODEL_DIR/.lock`, holding the owner's host and pid.
    A lock left by a process that no longer runs (on this host) is taken
    over; a live owner makes `__enter__` raise `ValueError` naming it.

    Example:
    ```python
    with ModelDirLock("runs/sst2"):
        ...  # train
    ```
    """

    NAME = ".lock"

    def __init__(self, model_dir):
        self.path = os.path.join(model_dir, self.NAME)

    def _owner(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(owner):
        if not owner or owner.get("host") != socket.gethostname():
            return bool(owner)  # another host's lock: assume it is live
        return process_alive(owner.get("pid"))

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner == me:
                    return self  # re-entered by the same process
                if self._alive(owner):
                    raise ValueError(
                        f"{os.path.dirname(self.path)} is being trained by process "
                        f"{owner.get('pid')} on {owner.get('host')} (lock {self.path}); "
                        "wait for it to finish, or delete the lock if that process is gone."
                    ) from None
                os.remove(self.path)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._mine = True
            return self
        raise ValueError(f"Could not take the lock {self.path}.")

    def __exit__(self, *exc):
        if getattr(self, "_mine", False):
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            self._mine = False
        return False
