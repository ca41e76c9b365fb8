"""Atomic file writes: write to a temporary name in the same folder, then rename over the target.

A reader never sees a half-written file, and an interrupted write leaves the old file (or none).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "check_not_shipped", "tracked_files", "write_json", "write_text"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix, so format-sniffing writers work); on normal
    exit it replaces ``path``, on an exception it is removed. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; returns the path."""
    return write_text(path, json.dumps(obj, indent=indent))


def tracked_files(path: str | os.PathLike) -> list[str]:
    """Files at or under ``path`` that git tracks (shipped artifacts: checkpoints/, data/, results/ of the
    repository); [] outside a git work tree or without git."""
    import subprocess

    path = Path(path).resolve()
    probe = path
    while not probe.is_dir():
        probe = probe.parent
    try:
        r = subprocess.run(["git", "-C", str(probe), "ls-files", "--full-name", "--", str(path)],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return r.stdout.split() if r.returncode == 0 else []


def check_not_shipped(path: str | os.PathLike, force: bool, flag: str, what: str = "output") -> None:
    """Refuse (ValueError) to write into files git tracks unless ``force``: a shipped artifact changes only
    when asked explicitly. ``flag`` names the switch that allows it (``--force``, ``force=true``)."""
    files = [] if force else tracked_files(path)
    if files:
        raise ValueError(f"{what} {path} holds {len(files)} file(s) tracked by git (a shipped artifact, e.g. "
                         f"{files[0]}); write elsewhere, or pass {flag} to replace it")
