"""One settings-keyed cache for an evaluation's JSON results and tensors: ``compute()`` runs once per key.

``Cache(folder).json(name, key, compute)`` keeps ``{"key", "value"}`` in ``folder/name.json``;
``.tensors(name, key, compute)`` keeps ``{"key", "value"}`` (tensors, dicts of them or None, tuples) in
``folder/name.pt``. A stored value is reused while its key (JSON-able, compared after a JSON round trip)
is the same; otherwise (or when the file is damaged) it is recomputed and replaced (written atomically).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..io import atomic_path, write_json

__all__ = ["Cache"]


def _norm(key: dict) -> dict:
    return json.loads(json.dumps(key, sort_keys=True, default=str))


class Cache:
    """A folder of keyed results (module doc)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def has(self, name: str, key: dict) -> bool:
        """Whether ``name.json`` holds a value for ``key``."""
        try:
            return json.loads((self.folder / f"{name}.json").read_text()).get("key") == _norm(key)
        except (OSError, ValueError):
            return False

    def json(self, name: str, key: dict, compute, label: str, t_start: float | None = None):
        """``compute()`` (a JSON-able value) once per key, kept in ``name.json``; prints what it did."""
        if self.has(name, key):
            print(f"{label}: cached ({name}.json)", flush=True)
            return json.loads((self.folder / f"{name}.json").read_text())["value"]
        t0 = time.perf_counter()
        value = compute()
        write_json(self.folder / f"{name}.json", {"key": _norm(key), "value": value})
        total = f" ({time.perf_counter() - t_start:.0f} s elapsed)" if t_start is not None else ""
        print(f"{label}: done in {time.perf_counter() - t0:.1f} s{total}", flush=True)
        return json.loads(json.dumps(value))  # as a cached read would give it

    def tensors(self, name: str, key: dict, compute, label: str):
        """``compute()`` (tensors, dicts/tuples of them, None) once per key, kept in ``name.pt``."""
        path, key = self.folder / f"{name}.pt", _norm(key)
        if path.is_file():
            try:
                stored = torch.load(path, weights_only=True)
            except Exception:  # noqa: BLE001 (a damaged or foreign file: recomputed and replaced)
                stored = {}
            if isinstance(stored, dict) and stored.get("key") == key:
                print(f"{label}: cached ({path.name})", flush=True)
                return stored["value"]
        value = compute()
        with atomic_path(path) as tmp:
            torch.save({"key": key, "value": value}, tmp)
        print(f"{label}: done", flush=True)
        return value
