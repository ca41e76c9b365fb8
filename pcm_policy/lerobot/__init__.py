"""A stock lerobot Diffusion Policy on the sampler core (runs in the lerobot environment, ``.venv-lerobot``).

    adapter.py   ``LerobotDiffusion``: a loaded lerobot ``DiffusionPolicy`` as a model function (its UNet,
                 conditioned on lerobot's own global conditioning), its own noise scheduler as the step grid,
                 its own pre/post-processors; ``load_policy`` reads a policy folder offline
    dropin.py    ``accelerate(policy, spec_or_adapter)``: lerobot's ``select_action`` / ``predict_action_chunk``
                 sample with any sampler of the core (one documented hook)
    task.py      the Task for the generic drivers (PCT, sweep, report): conditions from a LeRobotDataset
    dataset.py   this package's PushT demonstrations written as a LeRobotDataset (gym-pusht's keypoints)
    replay.py    the written episodes replayed in gym-pusht, compared frame by frame
    envpolicy.py ``EnvPolicy``: a state-only lerobot PushT policy driven by this package's PushT env (rollouts, sweep)

Nothing of lerobot is imported here, so ``import pcm_policy.lerobot`` works without it; ``require`` raises an
ImportError (``LerobotMissingError``) that says what to install when lerobot is missing.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

INSTALL_HINT = ("run it in the lerobot environment: `make lerobot` creates .venv-lerobot (lerobot 0.6.1, "
                "Python >= 3.12); then use .venv-lerobot/bin/python")


class LerobotMissingError(ImportError):
    """lerobot (and gym-pusht) are not installed in this Python; the message says how to install them."""


def require(module: str, name: str):
    """``module.name`` from lerobot (e.g. ``require("lerobot.datasets.lerobot_dataset", "LeRobotDataset")``), or
    ``LerobotMissingError`` saying how to install lerobot."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise LerobotMissingError(f"lerobot is not installed in this Python ({e}); {INSTALL_HINT}") from None


def is_policy_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is meant as a lerobot policy (no lerobot import): it, its ``pretrained_model/`` or its
    ``checkpoints/last/pretrained_model/`` holds a ``config.json`` with lerobot's top-level ``"type"`` key (any
    policy type: ``adapter.resolve_policy_folder`` then refuses other types with a message). This package's own
    PushT checkpoints (``"policy"`` key) are not."""
    root = Path(folder)
    for cand in (root, root / "pretrained_model", root / "checkpoints" / "last" / "pretrained_model"):
        try:
            cfg = json.loads((cand / "config.json").read_text())
        except (OSError, ValueError):
            continue
        return isinstance(cfg, dict) and "type" in cfg
    return False


PCM_FOLDER = "pcm"  # a policy's own PCM adapter, shipped beside it: <folder>/pcm (checkpoints/lerobot_pusht/pcm)


def adapter_beside(folder: str | os.PathLike) -> Path | None:
    """The PCM adapter folder shipped beside a lerobot policy (no lerobot import): ``<folder>/pcm``, or, when
    ``folder`` is itself the ``pretrained_model`` folder, ``<folder>/../pcm``, if it holds an ``adapter.json``;
    else None. An adapter is tied to the weights it was trained on, so one is looked for only beside them."""
    root = Path(folder)
    for cand in (root / PCM_FOLDER, root.parent / PCM_FOLDER if root.name == "pretrained_model" else None):
        if cand is not None and (cand / "adapter.json").is_file():
            return cand
    return None

