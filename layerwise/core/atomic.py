"""Atomic, durable file writes: the one implementation every layerwise writer uses.

A file is written under a hidden temporary name beside its final one (``.NAME.tmp-PID``: unique per
process, and recognisable as a leftover), fsync'd, renamed over the final name with ``os.replace``
and the folder fsync'd, so that after a crash the final name holds either the old complete file or
the new complete file, never a part of one. Torch-free (``store.atomic_torch_save`` builds on it).
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary name a write of `path` goes through: hidden, beside it, unique to this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder (its entries: a rename into it); a file system that cannot is skipped quietly."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """os.replace(src, dst), then fsync dst's folder (src's bytes must already be durable)."""
    os.replace(src, dst)
    fsync_dir(Path(dst).resolve().parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields the temporary path to write; on success it is fsync'd and renamed to `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        fsync_file(tmp)
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> int:
    """Write `data` to `path` atomically and durably; returns the bytes written."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> int:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """How layerwise writes JSON files: indented, UTF-8 as is, one trailing newline."""
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> int:
    return atomic_write_text(path, json_text(obj))
