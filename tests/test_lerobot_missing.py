"""Without lerobot (the main environment), the lerobot task says what to install instead of failing obscurely."""

import importlib.util

import pytest

from pcm_policy.lerobot.adapter import PolicyFolderError, load_policy


@pytest.mark.skipif(importlib.util.find_spec("lerobot.policies") is not None, reason="lerobot is installed here")
def test_missing_lerobot_is_an_import_error_saying_what_to_do(tmp_path):
    with pytest.raises(ImportError, match="make lerobot"):
        load_policy(tmp_path)
    assert issubclass(PolicyFolderError, ValueError)
