"""Checkpoints are data: ``config.json`` + ``model.safetensors`` (normaliser inside), optionally
``adapter.safetensors`` (LoRA only) + ``adapter.json``. Loading never unpickles anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..io import atomic_path, write_json
from ..sampling import SamplerSpec
from .policy import DiffusionPolicy, PolicyConfig

CONFIG, WEIGHTS = "config.json", "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or does not match the code."""


def save_policy(policy: DiffusionPolicy, folder: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (base weights only; adapters are saved apart)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items() if "lora_" not in k}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_json(folder / CONFIG, {"policy": policy.cfg.to_dict(), **(extra or {})})
    return folder


def load_policy(folder: str | os.PathLike, device: str | torch.device = "cpu") -> DiffusionPolicy:
    """Rebuild a policy from a checkpoint folder alone."""
    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: missing {name}; a policy checkpoint folder holds {CONFIG} and "
                                  f"{WEIGHTS} (train one with scripts/train_policy.py)")
    try:
        cfg = PolicyConfig(**json.loads((folder / CONFIG).read_text())["policy"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG}: not a policy config this version understands ({e})") from e
    policy = DiffusionPolicy(cfg)
    state = load_file(str(folder / WEIGHTS))
    try:
        missing, unexpected = policy.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise CheckpointError(f"{folder / WEIGHTS} does not match {CONFIG}: {str(e).splitlines()[-1].strip()}; "
                              "the two files come from different runs") from e
    if missing or unexpected:
        raise CheckpointError(f"{folder / WEIGHTS} does not match {CONFIG}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}; the two files come from different runs")
    return policy.to(device).eval()


def read_config(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / CONFIG).read_text())


ADAPTER, ADAPTER_CONFIG = "adapter.safetensors", "adapter.json"


def save_adapter_folder(policy: DiffusionPolicy, folder: str | os.PathLike, spec: SamplerSpec,
                        extra: dict | None = None) -> Path:
    """Write the PCM adapter (LoRA weights only, ``adapter.safetensors``) and ``adapter.json`` with the
    sampler it was tuned for (key ``sampler``: ``spec.to_dict()``) plus ``extra`` to ``folder``."""
    from ..lora import save_adapter

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_adapter(policy.model, folder / ADAPTER)
    write_json(folder / ADAPTER_CONFIG, {"sampler": spec.to_dict(), **(extra or {})})
    return folder


def load_adapter_folder(policy: DiffusionPolicy, folder: str | os.PathLike) -> tuple[SamplerSpec, dict]:
    """Attach the adapter of ``folder`` to ``policy`` (base weights untouched).

    Returns:
        ``(spec, config)``: the sampler the adapter was tuned for and the whole ``adapter.json``.
        Folders written before sampler specs (a ``schedule`` dict) are read through
        ``SamplerSpec.from_dict``'s conversion.
    Raises:
        CheckpointError: a missing file, an adapter that does not fit the policy, a bad sampler entry.
    """
    from ..lora import load_adapter

    folder = Path(folder)
    for name in (ADAPTER, ADAPTER_CONFIG):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: missing {name}; a PCM adapter folder holds {ADAPTER} and "
                                  f"{ADAPTER_CONFIG} (train one with python scripts/train_pct.py task=pusht)")
    try:
        load_adapter(policy.model, folder / ADAPTER)
    except ValueError as e:
        raise CheckpointError(f"{folder / ADAPTER} does not fit this policy: {e}") from e
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    try:
        spec = SamplerSpec.from_dict(config["sampler"] if "sampler" in config else config["schedule"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / ADAPTER_CONFIG}: no valid sampler entry ({e})") from e
    return spec, config
