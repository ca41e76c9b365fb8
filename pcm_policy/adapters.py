"""The PCM adapter folder, read and written here only, and ``load_sampler``: a sampler from a name or an adapter.

An adapter folder holds two files:

    adapter.safetensors  the LoRA tensors alone (``lora.save_adapter``: LoRA hyper-parameters in the metadata),
                         or, for the paper's fully fine-tuned copy, that copy's whole state dict (metadata
                         ``format = FULL_COPY_FORMAT``)
    adapter.json         ``{"sampler": SamplerSpec.to_dict(), **meta}``: the spec the adapter was tuned for,
                         then whatever its trainer recorded (metrics, command, config, ...)

Spec keys of the paper's variants (one rule): a spec's ``form`` and ``switch.space`` are names the sampler core
looks up in ``sampling.FORMS`` / ``sampling.SPACES``; the core's own are "paradigms" and "weight", and this module
imports ``pcm_policy.paper``, which registers the paper's "chain" (``paper.chain_update``) and "feature"
(``paper.FeatureMix``), so every shipped ``adapter.json`` loads unchanged, whichever it names.

This module sits above ``sampling`` (the spec), ``lora`` (peft) and ``paper``; none of them imports it. A task picks the
module that carries the adapter (PushT: the policy's UNet; images: the diffusers UNet) and passes it in.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torch import nn

from . import paper  # noqa: F401  (registers the paper's spec names "chain" and "feature": module doc)
from .io import atomic_path, read_json, read_safetensors, write_json
from .sampling import SAMPLERS, Sampler, SamplerSpec, make_sampler, spec_with
from .solvers import SOLVERS
from .solvers import solver_scheduler as build_solver

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "FULL_COPY_FORMAT", "load_adapter_folder", "load_sampler",
           "read_adapter_config", "save_adapter_folder"]

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter.safetensors", "adapter.json"
FULL_COPY_FORMAT = "pcm_policy.full_copy/1"  # adapter.safetensors metadata of a fully fine-tuned copy
HOW_TO_TRAIN = "python scripts/train_pct.py task=pusht|celeba|sd"


def save_adapter_folder(module: nn.Module, folder: str | os.PathLike, spec: SamplerSpec, extra: dict | None = None,
                        *, full: bool = False) -> Path:
    """Write an adapter folder (module doc), each file atomically; returns the folder.

    Args:
        module: the module carrying the LoRA adapters (``lora.add_lora``), or with ``full=True`` a fully
            fine-tuned copy whose whole state dict is written (``adapter.json`` then also holds
            ``"finetune": "full"``).
        spec: the ``SamplerSpec`` the adapter was tuned for; ``extra``: more JSON-able entries for adapter.json.
    Raises:
        ValueError: ``module`` has no LoRA adapters (and ``full`` is False).
    """
    from safetensors.torch import save_file

    from .lora import save_adapter

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if full:
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        with atomic_path(folder / ADAPTER_WEIGHTS) as tmp:
            save_file(state, str(tmp), metadata={"format": FULL_COPY_FORMAT})
        extra = {"finetune": "full", **(extra or {})}
    else:
        save_adapter(module, folder / ADAPTER_WEIGHTS)
    write_json(folder / ADAPTER_CONFIG, {"sampler": spec.to_dict(), **(extra or {})})
    return folder


def read_adapter_config(folder: str | os.PathLike) -> tuple[SamplerSpec, dict]:
    """``(spec, meta)`` of an adapter folder's ``adapter.json``: the ``SamplerSpec`` of its ``"sampler"`` entry
    and the whole file as a dict. Touches no weights. Raises ValueError for a missing file or no valid
    sampler entry."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        raise ValueError(f"{Path(folder)}: missing {ADAPTER_CONFIG}; a PCM adapter folder holds {ADAPTER_WEIGHTS} "
                         f"and {ADAPTER_CONFIG} (train one with {HOW_TO_TRAIN})")
    meta = read_json(path, "adapter config")
    try:
        spec = SamplerSpec.from_dict(meta["sampler"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: no valid sampler entry ({type(e).__name__}: {e})") from e
    return spec, meta


def load_adapter_folder(module: nn.Module, folder: str | os.PathLike, *,
                        full_copy: Callable[[], nn.Module] | None = None) -> tuple[SamplerSpec, dict]:
    """Attach the adapter of ``folder`` to ``module`` (base weights untouched); returns ``read_adapter_config``'s
    ``(spec, meta)``.

    Args:
        module: the module the LoRA tensors belong to (a fresh one gets the adapters injected from the
            file's LoRA config; one with adapters must have the same config).
        full_copy: for a full-copy file (``FULL_COPY_FORMAT``), called once to make the module that
            receives its state dict (PushT: ``lambda: paper.add_full_copy(policy)``); None: such a file is refused.
    Raises:
        ValueError: a missing file, weights that do not fit ``module`` (or the copy), a full copy without
            ``full_copy``, or no valid sampler entry.
    """
    from .lora import load_adapter

    folder = Path(folder)
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        if not (folder / name).is_file():
            raise ValueError(f"{folder}: missing {name}; a PCM adapter folder holds {ADAPTER_WEIGHTS} and "
                             f"{ADAPTER_CONFIG} (train one with {HOW_TO_TRAIN})")
    path = folder / ADAPTER_WEIGHTS
    full = read_safetensors(path, metadata_only=True).get("format") == FULL_COPY_FORMAT
    if full:
        if full_copy is None:
            raise ValueError(f"{path} holds a fully fine-tuned copy (the paper's recipe), which this model "
                             "cannot take; use a LoRA adapter folder")
        try:
            full_copy().load_state_dict(read_safetensors(path))
        except RuntimeError as e:
            raise ValueError(f"{path} is a full copy that does not fit this model: "
                             f"{str(e).splitlines()[-1].strip()}") from e
    else:
        try:
            load_adapter(module, path)
        except ValueError as e:
            raise ValueError(f"{path} does not fit this model: {e}") from e
    return read_adapter_config(folder)


def load_sampler(source: str | os.PathLike | SamplerSpec, scheduler, *, module: nn.Module | None = None,
                 full_copy: Callable[[], nn.Module] | None = None, solver_scheduler=None, **overrides) -> Sampler:
    """The ready sampler of a sampler name, a spec or an adapter folder, with overrides applied by one rule.

    Args:
        source: a sampler name (``sampling.SAMPLERS``: its defaults), a ``SamplerSpec``, or an adapter folder
            (a path, or a string that is not a sampler name): its LoRA is attached to ``module``
            (``load_adapter_folder``) and its tuned spec is the base.
        scheduler: the configured diffusers DDIM/DDPM scheduler whose noise schedule the sampler runs on.
        module: the module an adapter folder's LoRA belongs to (needed for a folder, unused otherwise).
        full_copy: passed to ``load_adapter_folder`` (a folder holding the paper's full copy).
        solver_scheduler: the diffusers solver of ``dpmsolver`` (``make_sampler``); for ``dpmsolver++`` and
            ``unipc`` None builds it from ``scheduler`` (``solvers.solver_scheduler``).
        overrides: ``sampling.spec_with``'s rule: a ``SamplerSpec`` field (``num_steps``, ``k``, ``tol``,
            ``window``, ``init``, ``safeguard``, ``taa``, ``switch``, ``jump``, ``form``) or one field of its
            nested settings as ``<field>_<name>`` (``taa_memory``, ``taa_mixing``, ``switch_k_on``,
            ``switch_k_off``, ``switch_space``, ``jump_hold``, ...). A value of None keeps the base spec's
            value; an unknown key is a ValueError naming it. On an adapter's spec a new ``num_steps``
            rescales its jump (``SamplerSpec.replace``).
    Returns:
        a ``sampling.Sampler``; its ``spec`` is the final ``SamplerSpec``.
    Raises:
        ValueError: an unknown override, a nested override of a setting the spec does not have (e.g.
            ``taa_memory`` on a spec without TAA), a folder without ``module``, a bad adapter folder, or
            settings the spec or the scheduler refuse.

    Example (PushT; an image UNet passes ``module=model.unet``)::

        sampler = load_sampler("checkpoints/pusht_pcm", policy.noise_scheduler, module=policy.model,
                               full_copy=lambda: paper.add_full_copy(policy), k=2, tol=0.0, switch_k_off=None)
        x_0, stats = sampler(policy.model_fn, x_T, cond)   # sampler.spec: the adapter's spec, k=2, tol=0
    """
    if isinstance(source, SamplerSpec) or isinstance(source, str) and source in SAMPLERS:
        spec = spec_with(source, **overrides)
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such adapter folder, and not a sampler name ({', '.join(SAMPLERS)})")
        if module is None:
            raise ValueError(f"{folder}: an adapter folder needs the module its LoRA belongs to (module=)")
        spec_with(SamplerSpec.named("ddim"), **{k: None for k in overrides})  # unknown keys fail before loading
        base, _ = load_adapter_folder(module, folder, full_copy=full_copy)
        spec = spec_with(base, **overrides)
    if solver_scheduler is None and spec.name in SOLVERS:
        solver_scheduler = build_solver(spec.name, scheduler)
    return make_sampler(spec, scheduler, solver_scheduler=solver_scheduler)
