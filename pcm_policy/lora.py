"""LoRA adapters for the policy UNet: the one place peft is applied.

PCM (PCM paper; docs/pusht.md, Picard Consistency Training) trains low-rank adapters on the attention projections
(``to_q``, ``to_k``, ``to_v``, ``to_out``) of a frozen base model and, at inference, mixes in weight
space with a run-time scale lambda: ``W = W_0 + lambda * (alpha / r) * B A``. At lambda = 0 the
adapted layers add an exact zero, so the model IS the base model.

The adapters are injected in place with ``peft.inject_adapter_in_model``, so the model keeps its own
class and ``forward`` signature. Lambda is either one float for the whole batch, or a tensor of shape
(B,) giving each batch row its own scale (PCM's sampler batches positions that sit at different
iterations); the per-row form multiplies the adapter branch's output row by row. ``LoraScale`` makes a model
function of an adapted module take that lambda as ``lora_scale=`` (the sampler protocol's keyword).

Adapter files are safetensors holding only the adapter tensors, with the LoRA hyper-parameters in the
file's metadata, so ``load_adapter`` can inject the adapters into a fresh base model. The adapter FOLDER
(these weights + the sampler spec they were tuned for) is ``pcm_policy.adapters``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .io import read_safetensors
from .sampling.denoiser import Cond, ModelFn

__all__ = [
    "DEFAULT_TARGETS",
    "LoraScale",
    "add_lora",
    "remove_lora",
    "has_lora",
    "set_lora_scale",
    "get_lora_scale",
    "lora_scale",
    "lora_bypassed",
    "lora_disabled",
    "lora_parameters",
    "lora_state_dict",
    "save_adapter",
    "load_adapter",
]

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out")
ADAPTER = "default"  # peft adapter name; one adapter per model
_FORMAT = "pcm_policy.lora/1"


def _lora_layers(model: nn.Module) -> list[nn.Module]:
    if "peft" not in sys.modules:  # no layer can be peft's before peft is imported: skip its ~3 s import
        return []
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def _require_lora(model: nn.Module) -> list[nn.Module]:
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA adapters; call pcm_policy.lora.add_lora(model) first")
    return layers


_SWAPS = "_pcm_lora_swaps"  # cached on the model by _base_swaps; dropped by add_lora / remove_lora


def _base_swaps(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module, nn.Module]]:
    """(parent, child name, peft's LoRA wrapper, the base layer it wraps) for every adapted layer of ``model``,
    found once and cached on it (a walk over the modules costs about 1 ms on lerobot's UNet)."""
    swaps = model.__dict__.get(_SWAPS)
    if swaps is None:
        layers = {id(m) for m in _lora_layers(model)}
        swaps = [(parent, name, child, child.get_base_layer()) for parent in model.modules()
                 for name, child in parent._modules.items() if id(child) in layers]
        model.__dict__[_SWAPS] = swaps
    return swaps


@contextmanager
def lora_bypassed(model: nn.Module) -> Iterator[nn.Module]:
    """Context: the base model exactly and at its own cost. Every adapted layer's base layer (the original module,
    shared, weights untouched) is put back in its parent for the duration, so calls skip peft's wrappers, whose
    per-layer Python cost doubled a 1-row call of lerobot's 4.5M UNet on a CPU (24.3 against 13.0 ms); the
    wrappers are put back on exit, also after an error. Not thread-safe: the module tree is shared. Raises
    ValueError when ``model`` has no adapters."""
    swaps = _base_swaps(model)
    if not swaps:
        raise ValueError("model has no LoRA adapters; call pcm_policy.lora.add_lora(model) first")
    for parent, name, _, base in swaps:
        parent._modules[name] = base
    try:
        yield model
    finally:
        for parent, name, wrapper, _ in swaps:
            parent._modules[name] = wrapper


def _row_scale_hook(module: nn.Module, args, out: torch.Tensor) -> torch.Tensor | None:
    """Forward hook on each ``lora_B``: multiply the adapter branch by the per-row lambda, if set."""
    rows = getattr(module, "_pcm_row_scale", None)
    if rows is None:
        return None
    if out.shape[0] != rows.shape[0]:
        raise ValueError(
            f"set_lora_scale was given {rows.shape[0]} per-row scales but the model was called "
            f"with batch size {out.shape[0]}"
        )
    return out * rows.to(out.dtype).reshape(-1, *([1] * (out.ndim - 1)))


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` carries LoRA adapters."""
    return bool(_lora_layers(model))


def add_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float = 16,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
    dropout: float = 0.0,
) -> nn.Module:
    """Inject LoRA adapters (rank ``rank``, scale ``alpha / rank``) into every module whose name is
    or ends with one of ``target_modules``; freeze every base parameter. Modifies ``model`` in place
    and returns it. The adapters start as an exact no-op (peft initialises ``lora_B`` to zero)."""
    from peft import LoraConfig, inject_adapter_in_model

    if has_lora(model):
        raise ValueError("model already has LoRA adapters")
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    names = [n for n, _ in model.named_modules()]
    if not any(n == t or n.endswith("." + t) for n in names for t in targets):
        raise ValueError(f"no module of the model is named like any of {targets}")
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=dropout, bias="none"
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    for layer in _lora_layers(model):
        layer.lora_B[ADAPTER].register_forward_hook(_row_scale_hook)
    model.__dict__.pop(_SWAPS, None)  # _base_swaps finds the new wrappers on its next call
    model._pcm_lora_scale = 1.0
    return model


def remove_lora(model: nn.Module) -> nn.Module:
    """Undo ``add_lora``: every adapted layer is replaced by the base layer peft wrapped (the original module
    object, weights untouched), the injected peft config is dropped and the base parameters' ``requires_grad``
    is set back to True. In place; returns ``model``. Raises ValueError when ``model`` has no adapters."""
    layers = _require_lora(model)
    names = {id(m): n for n, m in model.named_modules()}
    for layer in layers:
        parent, _, attr = names[id(layer)].rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, layer.base_layer)
    for attr in ("peft_config", "_pcm_lora_scale", _SWAPS):
        if attr in model.__dict__:
            delattr(model, attr)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def set_lora_scale(model: nn.Module, lam: float | torch.Tensor) -> None:
    """Set lambda in ``W = W_0 + lambda * dW``: a float (or 0-d tensor) for the whole batch, or a
    tensor of shape (B,) with one lambda per batch row of the next forward calls."""
    layers = _require_lora(model)
    rows = None
    if isinstance(lam, torch.Tensor) and lam.ndim > 0:
        if lam.ndim != 1:
            raise ValueError(f"per-row lambda must have shape (B,), got {tuple(lam.shape)}")
        rows, scale = lam.detach(), 1.0
    else:
        scale = float(lam)
    for layer in layers:
        layer.set_scale(ADAPTER, scale)
        layer.lora_B[ADAPTER]._pcm_row_scale = rows
    model._pcm_lora_scale = scale if rows is None else rows


def get_lora_scale(model: nn.Module) -> float | torch.Tensor:
    """The lambda last set with ``set_lora_scale`` (1.0 after ``add_lora``)."""
    _require_lora(model)
    return model._pcm_lora_scale


@contextmanager
def lora_scale(model: nn.Module, lam: float | torch.Tensor) -> Iterator[nn.Module]:
    """Context: run with lambda ``lam``, then restore the previous lambda."""
    previous = get_lora_scale(model)
    set_lora_scale(model, lam)
    try:
        yield model
    finally:
        set_lora_scale(model, previous)


@contextmanager
def lora_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Context: run the base model alone (adapter branches skipped), then re-enable them with their
    previous ``requires_grad`` flags."""
    layers = _require_lora(model)
    flags = [(p, p.requires_grad) for p in lora_parameters(model)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for p, flag in flags:
            p.requires_grad_(flag)


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (the only ones an optimiser should see)."""
    _require_lora(model)
    return [p for n, p in model.named_parameters() if "lora_" in n]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the adapter tensors only, keyed by their names in ``model.state_dict()``."""
    _require_lora(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def _lora_config(model: nn.Module) -> dict:
    cfg = model.peft_config[ADAPTER]
    return dict(
        rank=int(cfg.r),
        alpha=float(cfg.lora_alpha),
        target_modules=sorted(cfg.target_modules),
        dropout=float(cfg.lora_dropout),
    )


def save_adapter(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the adapter weights alone (safetensors, LoRA config in the metadata), atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.cpu().contiguous() for k, v in lora_state_dict(model).items()}
    from .io import atomic_path

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": _FORMAT, "lora": json.dumps(_lora_config(model))})


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load adapter weights saved by ``save_adapter`` into ``model`` (in place; returned). A model
    without adapters gets them injected from the file's config first."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file not found: {path}")
    meta = read_safetensors(path, metadata_only=True)
    if meta.get("format") != _FORMAT:
        raise ValueError(
            f"{path} is not a pcm_policy LoRA adapter file (metadata format {meta.get('format')!r})"
        )
    cfg = json.loads(meta["lora"])
    if not has_lora(model):
        add_lora(model, **cfg)
    elif _lora_config(model) != cfg:
        raise ValueError(
            f"adapter config in {path} ({cfg}) differs from the model's ({_lora_config(model)})"
        )
    tensors = read_safetensors(path)
    own = {k: v for k, v in model.state_dict().items() if "lora_" in k}  # views of the parameters
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"adapter file {path} does not match the model: "
            f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]} (first 3 of each shown)"
        )
    for k, v in tensors.items():
        if v.shape != own[k].shape:
            raise ValueError(
                f"adapter tensor {k}: shape {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
            )
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v)
    return model


class LoraScale:
    """A model function of a peft-adapted module with ``lora_scale=lambda``: W = W_0 + lambda dW.

    ``model_fn(x, t, cond)`` calls the network; ``module`` is the ``nn.Module`` carrying the adapters
    (``add_lora``). ``lora_scale``: None or 0 runs the base model exactly (adapter
    branches skipped), a float scales every row, a tensor ``(N,)`` scales each row. A module without
    adapters accepts only None / 0 (ValueError otherwise).
    """

    def __init__(self, model_fn: ModelFn, module: torch.nn.Module):
        self.model_fn, self.module = model_fn, module

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond, lora_scale=None, **kwargs) -> torch.Tensor:
        zero = lora_scale is None or (not torch.is_tensor(lora_scale) or lora_scale.ndim == 0) and lora_scale == 0
        if not _base_swaps(self.module):
            if not zero and (torch.as_tensor(lora_scale) != 0).any():
                raise ValueError("lora_scale != 0 needs a LoRA adapter; load one (adapters.load_adapter_folder)")
            return self.model_fn(x, t, cond, **kwargs)
        if zero:
            with lora_bypassed(self.module):  # the base model exactly, without the adapter's cost
                return self.model_fn(x, t, cond, **kwargs)
        set_lora_scale(self.module, lora_scale)
        return self.model_fn(x, t, cond, **kwargs)
