"""Errors raised by the replay buffer and the datasets built on it.

Every message names the store, says what is wrong and what to do about it.
"""

from __future__ import annotations


class ReplayBufferError(ValueError):
    """A replay buffer store is missing, malformed or damaged, or an episode is invalid."""

    def __str__(self) -> str:  # KeyError subclasses would otherwise print the repr of the message
        return str(self.args[0]) if self.args else ""


class StoreNotFoundError(ReplayBufferError, FileNotFoundError):
    """The path given for a store does not exist (also a FileNotFoundError)."""


class MissingKeyError(ReplayBufferError, KeyError):
    """A requested `data/<key>` array is not in the store (also a KeyError)."""


class CorruptStoreError(ReplayBufferError):
    """A chunk or a metadata file of the store cannot be decoded."""
