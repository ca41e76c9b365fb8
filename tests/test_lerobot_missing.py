"""Without lerobot (the main environment): the lerobot task and the dataset CLI say what to install, exit
non-zero and write nothing, instead of failing obscurely."""

import importlib.util
import sys
from pathlib import Path

import pytest

from pcm_policy.lerobot.adapter import PolicyFolderError, load_policy

# Not find_spec("lerobot"): under pytest the folder tests/lerobot can pass for a namespace package "lerobot".
pytestmark = pytest.mark.skipif(importlib.util.find_spec("lerobot.policies") is not None,
                                reason="lerobot is installed here; this checks the environment without it")


def test_missing_lerobot_is_an_import_error_saying_what_to_do(tmp_path):
    with pytest.raises(ImportError, match="make lerobot"):
        load_policy(tmp_path)
    assert issubclass(PolicyFolderError, ValueError)


def test_make_dataset_without_lerobot(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "lerobot"))
    import make_dataset

    out = tmp_path / "ds"
    assert make_dataset.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lerobot is not installed" in err and "make lerobot" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []
