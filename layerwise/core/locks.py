"""Exclusive file locks that name their owner (scratch of a work unit, the image-feature cache).

POSIX record locks (`fcntl.lockf`) are released by the kernel when the owning process dies, so a
lock that can be taken belongs to nobody alive; they work across nodes on NFS (NLM) and on Lustre
mounted with ``flock``. The lock file also records who holds it (host, pid, SLURM job), so that a
process that has to wait can say for whom.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from layerwise.core.errors import LayerwiseError

# POSIX record locks belong to the process, and closing ANY descriptor of the file drops them: this
# process must never probe (open/close) a lock file it holds. Held paths are remembered here.
_HELD: set[str] = set()


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S")}


def describe_owner(path: Path) -> str:
    if str(Path(path).absolute()) in _HELD:
        return "this process"
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "an unknown process"
    job = f", SLURM job {info['slurm_job']}" if info.get("slurm_job") else ""
    return f"pid {info.get('pid')} on {info.get('host')}{job} (since {info.get('since')})"


class FileLock:
    """`with FileLock(path, wait_s=...)`: exclusive lock on `path`, created if needed."""

    def __init__(self, path: str | os.PathLike, wait_s: float = 0.0, what: str = "this directory",
                 poll_s: float = 1.0):
        self.path = Path(path)
        self.wait_s = float(wait_s)
        self.what = what
        self.poll_s = poll_s
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if str(self.path.absolute()) in _HELD:
            return False                       # held by this process (probing would release it)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_owner()).encode())
        os.fsync(fd)
        self._fd = fd
        _HELD.add(str(self.path.absolute()))
        return True

    def acquire(self) -> FileLock:
        deadline = time.monotonic() + self.wait_s
        told = 0.0
        while not self.try_acquire():
            now = time.monotonic()
            if now >= deadline:
                raise LayerwiseError(
                    f"{self.what} is in use by {describe_owner(self.path)} (lock {self.path}); a second writer would "
                    f"corrupt it. If that process is an orphan of an earlier run (e.g. a SLURM job left running after "
                    f"the Nextflow head was killed), cancel it (scancel) or let it finish, then -resume.")
            if now - told >= 60:
                print(f"layerwise: waiting for {describe_owner(self.path)} to release {self.what}", file=sys.stderr)
                told = now
            time.sleep(min(self.poll_s, max(deadline - now, 0.01)))
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)     # closing drops the lock; the file stays (harmless, reused)
            self._fd = None
            _HELD.discard(str(self.path.absolute()))

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(path: str | os.PathLike) -> bool:
    """True when a live process holds the lock at `path` (a missing file is not locked)."""
    path = Path(path)
    if str(path.absolute()) in _HELD:
        return True
    if not path.exists():
        return False
    probe = FileLock(path)
    if probe.try_acquire():
        probe.release()
        return False
    return True
