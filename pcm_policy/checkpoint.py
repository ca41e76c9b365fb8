"""Checkpoints are data: ``config.json`` + ``model.safetensors`` (normaliser inside), optionally
``adapter.safetensors`` (LoRA only) + ``adapter.json``. Loading never unpickles anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .policy import DiffusionPolicy, PolicyConfig

CONFIG, WEIGHTS = "config.json", "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or does not match the code."""


def save_policy(policy: DiffusionPolicy, folder: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (base weights only; adapters are saved apart)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items() if "lora_" not in k}
    _atomic(folder / WEIGHTS, lambda p: save_file(state, str(p)))
    config = {"policy": policy.cfg.to_dict(), **(extra or {})}
    _atomic(folder / CONFIG, lambda p: p.write_text(json.dumps(config, indent=1)))
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


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


ADAPTER, ADAPTER_CONFIG = "adapter.safetensors", "adapter.json"


def save_adapter_folder(policy: DiffusionPolicy, folder: str | os.PathLike, schedule: dict,
                        extra: dict | None = None) -> Path:
    """Write the PCM adapter (LoRA weights only) and its switching schedule
    (``{"k_on": int, "k_off": int, "space": "weight"|"feature"}``) to ``folder``."""
    from .lora import save_adapter

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_adapter(policy.model, folder / ADAPTER)
    config = {"schedule": schedule, **(extra or {})}
    _atomic(folder / ADAPTER_CONFIG, lambda p: p.write_text(json.dumps(config, indent=1)))
    return folder


def load_adapter_folder(policy: DiffusionPolicy, folder: str | os.PathLike) -> dict:
    """Attach the adapter of ``folder`` to ``policy`` (base weights untouched); returns its config."""
    from .lora import load_adapter

    folder = Path(folder)
    for name in (ADAPTER, ADAPTER_CONFIG):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: missing {name}; a PCM adapter folder holds {ADAPTER} and "
                                  f"{ADAPTER_CONFIG} (train one with scripts/train_pct.py task=pusht)")
    try:
        load_adapter(policy.model, folder / ADAPTER)
    except ValueError as e:
        raise CheckpointError(f"{folder / ADAPTER} does not fit this policy: {e}") from e
    return json.loads((folder / ADAPTER_CONFIG).read_text())


def tracked_files(path: str | os.PathLike) -> list[str]:
    """Files at or under ``path`` that git tracks (shipped artifacts: checkpoints/, data/, results/ of the
    repository); [] outside a git work tree or without git."""
    import subprocess

    path = Path(path).resolve()
    probe = path
    while not probe.is_dir():
        probe = probe.parent
    try:
        r = subprocess.run(["git", "-C", str(probe), "ls-files", "--full-name", "--", str(path)],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return r.stdout.split() if r.returncode == 0 else []


def check_not_shipped(path: str | os.PathLike, force: bool, flag: str, what: str = "output") -> None:
    """Refuse (ValueError) to write into files git tracks unless ``force``: a shipped artifact changes only
    when asked explicitly. ``flag`` names the switch that allows it (``--force``, ``force=true``)."""
    files = [] if force else tracked_files(path)
    if files:
        raise ValueError(f"{what} {path} holds {len(files)} file(s) tracked by git (a shipped artifact, e.g. "
                         f"{files[0]}); write elsewhere, or pass {flag} to replace it")
