"""Min-max normaliser kept as module buffers, so it is saved with the policy.

Reference behaviour (the Diffusion Policy reference, Chi et al. 2023; Diffusion Policy's ``LinearNormalizer``
in ``limits`` mode): per last-dim feature, ``scale = 2 / (max - min)`` and
``offset = -1 - scale * min`` map [min, max] to [-1, 1]. A feature whose range is below
``range_eps`` (1e-4) gets ``scale = 1`` and ``offset = -min``, mapping its (constant) value to 0.
Normalise: ``x * scale + offset``; unnormalise: ``(y - offset) / scale``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["MinMaxNormalizer", "NormalizerDict"]

RANGE_EPS = 1e-4


class MinMaxNormalizer(nn.Module):
    """Per-feature affine map of the last dimension, [min, max] -> [-1, 1].

    ``MinMaxNormalizer(dim)`` is the identity (ready for ``load_state_dict``);
    ``MinMaxNormalizer.fit(data)`` fits it to an (N, ..., dim) array. Buffers: ``scale``,
    ``offset`` and the fitted ``input_min`` / ``input_max``, all float32 of shape (dim,).
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim < 1:
            raise ValueError(f"normaliser dim must be >= 1, got {dim}")
        self.dim = dim
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("offset", torch.zeros(dim))
        self.register_buffer("input_min", torch.full((dim,), -1.0))
        self.register_buffer("input_max", torch.ones(dim))

    @classmethod
    def fit(cls, data: np.ndarray | torch.Tensor, range_eps: float = RANGE_EPS) -> MinMaxNormalizer:
        """Fit to ``data`` of shape (N, ..., D): statistics over all but the last dimension."""
        x = torch.as_tensor(data).detach().to(torch.float64)
        if x.ndim < 2 or x.numel() == 0:
            raise ValueError(f"fit needs a non-empty array of shape (N, ..., D), got {tuple(x.shape)}")
        x = x.reshape(-1, x.shape[-1])
        if not torch.isfinite(x).all():
            raise ValueError("fit data contains NaN or inf")
        lo, hi = x.min(dim=0).values, x.max(dim=0).values
        flat = (hi - lo) < range_eps
        scale = torch.where(flat, torch.ones_like(lo), 2.0 / (hi - lo).clamp_min(range_eps))
        offset = torch.where(flat, -lo, -1.0 - scale * lo)
        norm = cls(x.shape[-1])
        for name, value in (("scale", scale), ("offset", offset), ("input_min", lo), ("input_max", hi)):
            getattr(norm, name).copy_(value.to(torch.float32))
        return norm

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"expected last dimension {self.dim}, got shape {tuple(x.shape)}")
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map raw values to the normalised space (``x * scale + offset``); keeps x's float dtype."""
        x = self._check(x)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return x.to(dtype) * self.scale.to(dtype) + self.offset.to(dtype)

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse of ``normalize``: ``(y - offset) / scale``."""
        y = self._check(y)
        dtype = y.dtype if y.is_floating_point() else torch.float32
        return (y.to(dtype) - self.offset.to(dtype)) / self.scale.to(dtype)

    forward = normalize

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class NormalizerDict(nn.ModuleDict):
    """Named normalisers (e.g. ``obs``, ``action``) saved together: ``norm.normalize("obs", x)``."""

    @classmethod
    def fit(cls, data: Mapping[str, np.ndarray | torch.Tensor], range_eps: float = RANGE_EPS):
        """One ``MinMaxNormalizer`` per key of ``data``."""
        return cls({k: MinMaxNormalizer.fit(v, range_eps) for k, v in data.items()})

    @classmethod
    def from_dims(cls, dims: Mapping[str, int]) -> NormalizerDict:
        """Identity normalisers of the given sizes, to be filled by ``load_state_dict``."""
        return cls({k: MinMaxNormalizer(d) for k, d in dims.items()})

    def dims(self) -> dict[str, int]:
        """Feature size per key (what ``from_dims`` needs to rebuild it)."""
        return {k: m.dim for k, m in self.items()}

    def _get(self, key: str) -> MinMaxNormalizer:
        if key not in self:
            raise KeyError(f"no normaliser for {key!r}; have {sorted(self.keys())}")
        return self[key]

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        return self._get(key).normalize(x)

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        return self._get(key).unnormalize(y)
