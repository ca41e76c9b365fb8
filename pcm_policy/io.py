"""Atomic file writes, the shipped-artifact guard and folder locks.

Atomic writes: write to a temporary name in the same folder, then rename over the target; a reader never
sees a half-written file, and an interrupted write leaves the old file (or none). Locks (``exclusive``):
advisory ``flock`` locks that die with their process, so a killed job never leaves a stale one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["FolderInUseError", "atomic_path", "check_not_shipped", "check_out_arg", "check_writable", "exclusive",
           "read_json", "read_safetensors", "recorded_path", "run_folder_lock", "run_record", "tracked_files",
           "write_json", "write_text"]


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
    """The output-path guard every writer calls BEFORE its work (a refusal after an hour's run loses it).

    Refuses (ValueError, naming ``what``) to write into files git tracks unless ``force``: a shipped artifact
    changes only when asked explicitly; ``flag`` names the switch that allows it (``--force``, ``force=true``).
    Also refuses a path that cannot be written (``check_writable``). Creates nothing."""
    files = [] if force else tracked_files(path)
    if files:
        raise ValueError(f"{what} {path} holds {len(files)} file(s) tracked by git (a shipped artifact, e.g. "
                         f"{files[0]}); write elsewhere, or pass {flag} to replace it")
    check_writable(path, what)


def check_out_arg(parser, out: str | os.PathLike | None, force: bool) -> None:
    """A script's ``--out`` / ``--force`` pair checked at parse time: ``parser.exit(2, "error: ...")`` (one line)
    when ``out`` may not be written (``check_not_shipped``); nothing when ``out`` is None."""
    if out is None:
        return
    try:
        check_not_shipped(out, force, "--force", "--out")
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")


def run_record(script: str, argv: list[str]) -> dict:
    """What made a results file: {"command": "python scripts/NAME.py ARGS", "commit": short HEAD of this checkout
    ("" outside git), "date": "YYYY-MM-DD HH:MM"}."""
    import subprocess
    import time

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True)
    return {"command": " ".join([f"python {script}", *argv]), "commit": head.stdout.strip(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def check_writable(path: str | os.PathLike, what: str = "output") -> None:
    """ValueError (naming ``what``) unless ``path`` (a file or a folder) can be written, without creating
    anything: an existing path must be writable and so must its folder (writes go to a temporary name, then a
    rename); a new one needs its nearest existing ancestor to be a writable folder."""
    path = Path(path)
    probe = path if path.exists() else path.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() and probe != path:
        raise ValueError(f"{what} {path}: {probe} is a file, not a folder; choose another path")
    checks = [probe] if probe != path else [path, path.parent] if not path.is_dir() else [path]
    for p in checks:
        if not os.access(p, os.W_OK | (os.X_OK if p.is_dir() else 0)):
            raise ValueError(f"{what} {path}: {p} cannot be written (permission denied or a read-only file "
                             "system); choose another path")


class FolderInUseError(ValueError):
    """Another process holds the lock of a folder (a running training run, a writer of a store)."""


_HELD: dict[str, list] = {}  # lock file -> [fd, depth]: this process's locks (re-entrant)


def _flock(fd: int, wait: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform (Windows): nothing to coordinate with
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


@contextmanager
def exclusive(lock_file: str | os.PathLike, *, wait: bool = False, what: str = "folder") -> Iterator[Path]:
    """Hold an exclusive advisory lock (``flock``) on ``lock_file`` while the block runs; re-entrant within a
    process. The lock dies with its process (a killed run leaves no stale lock); the file is removed on release.

    ``wait``: block until the lock is free; else raise ``FolderInUseError`` at once, naming ``what`` and the
    holder (its pid, start time and command, which the holder writes into the file).
    """
    import datetime
    import sys

    path = Path(lock_file).resolve()
    key = str(path)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _flock(fd, wait):
            try:
                holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            finally:
                os.close(fd)
            raise FolderInUseError(f"{what} {path.parent} is in use by {holder}; wait for it to finish (or stop "
                                   f"it), or use another {what}")
        try:  # the holder before us may have removed the file between our open and our lock: start over
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} (since {stamp}: {' '.join(sys.argv)[:300]})".encode())
    _HELD[key] = [fd, 1]
    try:
        yield path
    finally:
        del _HELD[key]
        try:
            path.unlink(missing_ok=True)  # still under the lock: a waiter that opened it starts over
        finally:
            os.close(fd)


def run_folder_lock(folder: str | os.PathLike) -> contextlib.AbstractContextManager:
    """The lock that keeps a run folder to one running job (``folder/.lock``, ``exclusive``): taken before
    anything is written there; a second job in the folder gets ``FolderInUseError`` at once."""
    return exclusive(Path(folder) / ".lock", wait=False, what="run folder")


def recorded_path(path: str | os.PathLike) -> str:
    """``path`` as a record (adapter.json, metrics) should hold it: relative to the working directory when it lies
    under it, so a shipped file names no machine's root; otherwise as given."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_json(path: str | os.PathLike, what: str = "file"):
    """``json.loads`` of a file, with one ValueError naming the file when it is not valid JSON (a truncated or
    hand-edited file) instead of the parser's message alone."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: this {what} is not valid JSON ({e}); the file is damaged: restore it from a copy "
                         "(git checkout for a shipped one) or re-create it") from None


def read_safetensors(path: str | os.PathLike, *, metadata_only: bool = False):
    """The tensors of a safetensors file (or only its metadata dict), with one ValueError naming the file when it
    is truncated or not a safetensors file instead of safetensors' ``SafetensorError`` traceback."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        if metadata_only:
            with safe_open(str(path), framework="pt") as f:
                return f.metadata() or {}
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot read it as a safetensors file ({e}); it is truncated or damaged: restore "
                         "it from a copy (git checkout for a shipped one, git lfs pull for an LFS pointer) or "
                         "re-create it") from None
