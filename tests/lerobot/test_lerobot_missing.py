"""Without lerobot (the main .venv): the dataset CLI says what to do, exits non-zero, writes nothing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

# Not find_spec("lerobot"): under pytest this folder itself (tests/lerobot) can pass for a namespace package.
if importlib.util.find_spec("lerobot.datasets") is not None:
    pytest.skip("lerobot is installed here; this checks the environment without it", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "lerobot"))
import make_dataset  # noqa: E402


def test_make_dataset_without_lerobot(tmp_path, capsys):
    out = tmp_path / "ds"
    assert make_dataset.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lerobot is not installed" in err and "make lerobot" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []
