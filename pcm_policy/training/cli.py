"""How a training script's hydra ``main`` runs its job: the same command line, errors and Ctrl-C everywhere."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from ..data import ReplayBufferError
from .distributed import DistributedError, shutdown
from .loop import ResumeError

__all__ = ["FAILURES", "run_job"]

T = TypeVar("T")
FAILURES = (ReplayBufferError, ResumeError, ValueError, DistributedError)  # reported in one line, no traceback


def run_job(script: str, job: Callable[[str], T], interrupted: str = "interrupted") -> T:
    """``job(command)`` for ``scripts/<script>``, where ``command`` is the command line that (re)starts it.

    A ``FAILURES`` error exits with one line, ``error: <message>`` (status 1); Ctrl-C prints what was saved (the
    KeyboardInterrupt's message, else ``interrupted``) and that the same command resumes, then exits 130 (as
    killed by SIGINT); torch.distributed's process group is shut down either way (``distributed.shutdown``).
    Returns what ``job`` returns."""
    command = f"python scripts/{script} " + " ".join(sys.argv[1:])
    try:
        return job(command)
    except FAILURES as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt as e:
        print(f"\n{str(e) or interrupted}; resume with the same command: {command}", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        shutdown()
