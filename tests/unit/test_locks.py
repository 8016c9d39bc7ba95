"""locks.FileLock / is_locked across processes, and extract.adopt_checkpoint's use of them.

POSIX record locks (fcntl.lockf) belong to a *process*: a second acquire of the same file from the
same process succeeds (the kernel merges the locks), so exclusivity is only meaningful, and only
tested, between processes. Every test runs the other holder in a small subprocess that imports
nothing but layerwise.core.locks.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from layerwise.core import schema  # noqa: E402
from layerwise.core.errors import LayerwiseError  # noqa: E402
from layerwise.core.locks import FileLock, describe_owner, is_locked  # noqa: E402

HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from layerwise.core.locks import FileLock
    lock = FileLock(sys.argv[1])
    assert lock.try_acquire(), "the lock was already taken"
    print("locked", flush=True)
    for line in sys.stdin:          # "release" drops the lock and keeps the process alive
        if line.strip() == "release":
            lock.release()
            print("released", flush=True)
    time.sleep(3600)
""")

PROBE = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from layerwise.core.locks import is_locked
    print("locked" if is_locked(sys.argv[1]) else "free", flush=True)
""")


@contextmanager
def holder(path: Path):
    """A live process holding the lock at `path` (killed at the end)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(ROOT)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line == "locked", (line, proc.stderr.read() if proc.poll() is not None else "")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def probe_from_another_process(path: Path) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE, str(path), str(ROOT)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def kill_and_wait(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_lock_is_exclusive_across_processes(tmp_path):
    path = tmp_path / "scratch" / "unit.lock"
    with holder(path) as proc:
        other = FileLock(path)
        assert other.try_acquire() is False
        assert is_locked(path)
        info = json.loads(path.read_text())
        assert info["pid"] == proc.pid and info["host"] == socket.gethostname()
    # (a second FileLock on the same file in *this* process would succeed: POSIX locks are per process,
    # so an in-process double acquire says nothing about exclusivity and is not tested here)


def test_wait_timeout_names_the_owner(tmp_path):
    path = tmp_path / "unit.lock"
    with holder(path) as proc:
        lock = FileLock(path, wait_s=0.6, what="the scratch of unit L0_english_s0", poll_s=0.1)
        started = time.monotonic()
        with pytest.raises(LayerwiseError) as err:
            lock.acquire()
        waited = time.monotonic() - started
        msg = str(err.value)
        assert f"pid {proc.pid} on {socket.gethostname()}" in msg
        assert "the scratch of unit L0_english_s0 is in use by" in msg and str(path) in msg
        assert 0.6 <= waited < 10
        assert describe_owner(path).startswith(f"pid {proc.pid} on {socket.gethostname()}")


def test_slurm_job_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "424242")
    path = tmp_path / "unit.lock"
    with holder(path) as proc:
        with pytest.raises(LayerwiseError, match=rf"pid {proc.pid} on .*, SLURM job 424242"):
            FileLock(path).acquire()


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    path = tmp_path / "unit.lock"
    with holder(path) as proc:
        assert is_locked(path)
        kill_and_wait(proc)  # SIGKILL: no cleanup code runs; the kernel drops the lock
        assert not is_locked(path)
        with FileLock(path, wait_s=5, poll_s=0.05) as mine:
            # (do not open the lock file here: closing *any* fd of it drops this process's POSIX lock)
            assert probe_from_another_process(path) == "locked"
        assert mine._fd is None
    assert probe_from_another_process(path) == "free"
    assert path.exists()  # the file stays (harmless, reused)


def test_a_waiting_acquire_gets_the_lock_when_the_holder_releases_it(tmp_path):
    path = tmp_path / "unit.lock"
    with holder(path) as proc:
        lock = FileLock(path, wait_s=30, poll_s=0.05)
        assert not lock.try_acquire()
        proc.stdin.write("release\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "released"
        started = time.monotonic()
        lock.acquire()  # the holder is still alive, but no longer holds the lock
        assert time.monotonic() - started < 10 and proc.poll() is None
        assert probe_from_another_process(path) == "locked"
        lock.release()


def test_is_locked(tmp_path):
    path = tmp_path / "x.lock"
    assert not is_locked(path)        # missing file: nobody holds it
    assert not path.exists()          # ... and probing does not create it
    path.write_text("{}")
    assert not is_locked(path)        # a file left by a dead owner
    with holder(path):
        assert is_locked(path)
    assert not is_locked(path)


def test_probing_a_lock_this_process_holds_keeps_it(tmp_path):
    path = tmp_path / "x.lock"
    with FileLock(path):
        assert is_locked(path)  # returns False: the probe "acquires" our own lock ...
        assert probe_from_another_process(path) == "locked"  # ... and closing it released the real one


# -- extract.adopt_checkpoint ---------------------------------------------------------------
def make_previous_attempt(prev: Path, layers=(0, 3), language="english") -> None:
    from layerwise.extract.unit import LOCK_FILE, PARTIAL_DIR, PROGRESS_FILE

    (prev / PARTIAL_DIR).mkdir(parents=True)
    (prev / PARTIAL_DIR / PROGRESS_FILE).write_text(json.dumps({"fingerprint": "f", "done": 4, "writers": {}}))
    (prev / PARTIAL_DIR / LOCK_FILE).write_text("{}")
    for layer in layers:
        (prev / (schema.layer_filename(layer, language) + ".partial")).write_bytes(b"partial bytes %d" % layer)


def test_adopt_checkpoint_refuses_a_scratch_a_live_process_holds(tmp_path):
    from layerwise.extract.unit import LOCK_FILE, PARTIAL_DIR, PROGRESS_FILE, adopt_checkpoint

    prev, out = tmp_path / "attempt1" / "L0.3_english_s0", tmp_path / "attempt2" / "L0.3_english_s0"
    make_previous_attempt(prev)
    out.mkdir(parents=True)
    before = sorted(p.relative_to(prev).as_posix() for p in prev.rglob("*"))
    with holder(prev / PARTIAL_DIR / LOCK_FILE) as orphan:
        assert adopt_checkpoint(prev, out, [0, 3], "english") is False
        assert sorted(p.relative_to(prev).as_posix() for p in prev.rglob("*")) == before  # left alone
        assert list(out.iterdir()) == []
        kill_and_wait(orphan)
        # its owner is dead: the checkpoint is continued
        assert adopt_checkpoint(prev, out, [0, 3], "english") is True
    assert json.loads((out / PARTIAL_DIR / PROGRESS_FILE).read_text())["done"] == 4
    for layer in (0, 3):
        name = schema.layer_filename(layer, "english") + ".partial"
        assert (out / name).read_bytes() == b"partial bytes %d" % layer and not (prev / name).exists()
    assert not (prev / PARTIAL_DIR / PROGRESS_FILE).exists()  # moved, so no second adopter can take it too


def test_adopt_checkpoint_without_a_checkpoint_does_nothing(tmp_path):
    from layerwise.extract.unit import adopt_checkpoint

    (tmp_path / "prev").mkdir()
    assert adopt_checkpoint(tmp_path / "prev", tmp_path / "out", [0], "english") is False
    assert adopt_checkpoint(tmp_path / "missing", tmp_path / "out", [0], "english") is False


def test_adopting_keeps_the_adopters_scratch_locked(tmp_path):
    """As run_unit does: take the scratch lock of out_dir, then adopt the previous attempt's checkpoint.
    Another process must still find out_dir's scratch locked afterwards."""
    from layerwise.extract.unit import LOCK_FILE, PARTIAL_DIR, PROGRESS_FILE, adopt_checkpoint

    prev, out = tmp_path / "attempt1" / "u", tmp_path / "attempt2" / "u"
    make_previous_attempt(prev)
    out.mkdir(parents=True)
    with FileLock(out / PARTIAL_DIR / LOCK_FILE):
        assert adopt_checkpoint(prev, out, [0, 3], "english") is True
        assert probe_from_another_process(out / PARTIAL_DIR / LOCK_FILE) == "locked"
        assert (out / PARTIAL_DIR / PROGRESS_FILE).is_file()
        # a third attempt cannot adopt the same checkpoint again: it has moved
        assert adopt_checkpoint(prev, tmp_path / "attempt3" / "u", [0, 3], "english") is False
        # ... and cannot adopt this attempt's: its owner (this process) is alive
        assert probe_from_another_process(out / PARTIAL_DIR / LOCK_FILE) == "locked"
