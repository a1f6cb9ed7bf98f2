"""Files others can read, and one writer per model directory.

Atomic writes go through private temporary files and folders (`mkstemp`
makes files 0600, `mkdtemp` folders 0700). Before they are renamed into
place, `publish` gives them the permissions a plain `open`/`mkdir` would
have under the process's umask (0644 files, 0755 folders under umask 022),
so that a TF Serving container running as another user can read an export.
`ModelDirLock` keeps a second process from training into a directory that
another one is writing.
"""

import fcntl
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


def atomic_write(path, write, overwrite=True):
    """Calls `write(tmp_path)` then moves tmp_path to path, in one step.

    Args:
        path: the file to write.
        write: a function writing the content to the path it is given.
        overwrite: False: never replace an existing `path`, even one another
            process creates meanwhile (the file is linked into place, which
            fails where the name exists): `FileExistsError`, naming it.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        publish(tmp)  # mkstemp's 0600 -> what the umask gives (0644)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(
                    f"{path} exists; exports never overwrite: use another folder or "
                    "delete it.") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_empty_dirs(path):
    """Removes `path` and the folders below it that hold no file (bottom-up)."""
    for root, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        try:
            os.rmdir(root)  # only succeeds on an empty folder
        except OSError:
            pass


def write_vocabulary(tokenizer, path):
    """Writes `tokenizer`'s vocabulary to `path`, one token a line (`vocab.txt`)."""
    vocab = tokenizer.get_vocabulary()
    bad = [t for t in vocab if "\n" in t or "\r" in t]
    if bad:
        raise ValueError(f"Tokens with line breaks cannot be written: {bad[:3]}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")


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

    The lock is a file, `MODEL_DIR/.lock`, holding the owner's host and pid,
    and locked with `fcntl.flock` while the owner runs: two processes that
    start at the same instant cannot both take it (the kernel decides), and
    a lock whose process died (even by `kill -9`) is free again. A lock file
    naming a live process on this host that does not hold the flock (written
    by an older dact_tf) is respected too; one whose process is gone is
    taken over. A live owner makes `__enter__` raise `ValueError` naming it.
    The same process may enter the lock again (nested `train` calls).

    Example:
    ```python
    with ModelDirLock("runs/sst2"):
        ...  # train
    ```
    """

    NAME = ".lock"
    _held = {}  # path -> nesting depth, in this process

    def __init__(self, model_dir):
        self.path = os.path.abspath(os.path.join(model_dir, self.NAME))
        self._fd = None

    @staticmethod
    def _read(fd):
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            owner = json.loads(os.read(fd, 4096).decode() or "null")
            return owner if isinstance(owner, dict) else None
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(owner):
        if not owner or owner.get("host") != socket.gethostname():
            return bool(owner)  # another host's lock: assume it is live
        return process_alive(owner.get("pid"))

    def _refuse(self, owner):
        who = (f"process {owner.get('pid')} on {owner.get('host')}" if owner
               else "another process")
        raise ValueError(
            f"{os.path.dirname(self.path)} is being trained by {who} (lock {self.path}); "
            "wait for it to finish, or delete the lock if that process is gone.")

    def _open_locked(self):
        """An fd of the lock file, flock-ed; raises where another process holds it."""
        for _ in range(10):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = self._read(fd)
                os.close(fd)
                self._refuse(owner)
            try:  # the file we locked may have been removed by its last owner
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
        raise ValueError(f"Could not take the lock {self.path}.")

    def __enter__(self):
        if self._held.get(self.path):
            self._held[self.path] += 1  # re-entered by the same process
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = self._open_locked()
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        owner = self._read(fd)
        if owner and owner != me and self._alive(owner):
            os.close(fd)  # written by a live process that does not flock
            self._refuse(owner)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
        self._fd = fd
        self._held[self.path] = 1
        return self

    def __exit__(self, *exc):
        depth = self._held.get(self.path, 0)
        if depth > 1:
            self._held[self.path] = depth - 1
        elif self._fd is not None:
            try:  # removed while still locked: a waiter re-checks the inode
                os.remove(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
            self._held.pop(self.path, None)
        return False
