"""Checkpoints are data: ``config.json`` + ``model.safetensors`` (normaliser inside), optionally
``adapter.safetensors`` + ``adapter.json``. The adapter file holds the LoRA tensors alone or, for the
paper's feature-space PCM with a fully fine-tuned copy (``paper.add_full_copy``), the copy's whole
UNet; its safetensors metadata says which. Loading never unpickles anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import adapters, paper
from ..io import atomic_path, read_json, read_safetensors, write_json
from ..sampling import SamplerSpec
from .policy import DiffusionPolicy, PolicyConfig

CONFIG, WEIGHTS = "config.json", "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or does not match the code."""


def save_policy(policy: DiffusionPolicy, folder: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (base weights only; adapters are saved apart)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()
             if "lora_" not in k and not k.startswith("model_wrapper.")}
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
        cfg = PolicyConfig(**read_json(folder / CONFIG, "policy config")["policy"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG}: not a policy config this version understands ({e})") from e
    policy = DiffusionPolicy(cfg)
    try:
        state = read_safetensors(folder / WEIGHTS)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
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


ADAPTER, ADAPTER_CONFIG = adapters.ADAPTER_WEIGHTS, adapters.ADAPTER_CONFIG


def save_adapter_folder(policy: DiffusionPolicy, folder: str | os.PathLike, spec: SamplerSpec,
                        extra: dict | None = None) -> Path:
    """``adapters.save_adapter_folder`` of the policy's adapter: the UNet's LoRA tensors, or with the paper's
    full copy (``paper.add_full_copy``) the copy's weights. Returns the folder."""
    copy = paper.full_copy_of(policy)
    if copy is None:
        return adapters.save_adapter_folder(policy.model, folder, spec, extra)
    return adapters.save_adapter_folder(copy, folder, spec, extra, full=True)


def load_adapter_folder(policy: DiffusionPolicy, folder: str | os.PathLike) -> tuple[SamplerSpec, dict]:
    """``adapters.load_adapter_folder`` onto the policy's UNet (or a full copy when the file holds one);
    returns ``(spec, meta)``. Raises CheckpointError for a missing file, an adapter that does not fit the
    policy or a bad sampler entry."""
    try:
        return adapters.load_adapter_folder(policy.model, folder, full_copy=lambda: paper.add_full_copy(policy))
    except ValueError as e:
        raise CheckpointError(str(e)) from e
