import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "PCM_POLICY_CACHE" not in os.environ:  # caches shared across runs (reference features) go to a temporary folder
    import tempfile

    os.environ["PCM_POLICY_CACHE"] = tempfile.mkdtemp(prefix="pcm_policy_test_cache_")

import torch  # noqa: E402

torch.set_num_threads(1)


import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("checkpoints", "data", "results", "envs", "pcm_policy", "configs", "scripts")


def _tree_state() -> set[str] | None:
    """Changed, new and (in the shipped folders) ignored files of the work tree, caches aside; None without git."""
    def status(*args):
        r = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", *args], capture_output=True, text=True)
        return set(r.stdout.splitlines()) if r.returncode == 0 else None

    every, shipped = status("--untracked-files=all"), status("--untracked-files=all", "--ignored", "--", *SHIPPED)
    if every is None or shipped is None:
        return None
    return {s for s in every | shipped if "__pycache__" not in s and "_cache" not in s}


@pytest.fixture(scope="session", autouse=True)
def nothing_written_into_the_source_tree():
    """No test (nor a default command it runs) writes into a shipped folder or the source tree: hydra's empty
    train_policy.log in checkpoints/pusht_base, generate's default --out in the repository root, ..."""
    before = _tree_state()
    yield
    after = _tree_state()
    if before is not None and after is not None:
        new = sorted(after - before)
        assert not new, f"the tests wrote into the source tree / shipped folders: {new[:10]}"
