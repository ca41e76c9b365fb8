"""Conditional 1-D temporal UNet (Diffusion Policy's ``ConditionalUnet1D``) with self-attention.

Reference design (the Diffusion Policy reference, Chi et al. 2023): Conv1d + GroupNorm + Mish residual
blocks whose features are modulated by FiLM (per-channel scale and bias) computed from
``concat(timestep embedding, global_cond)``; a down path that keeps a skip per level, a mid block,
an up path with ConvTranspose upsampling at every level, and a conv head.

Changes from the reference:

- The first down level's skip, which the reference stores but never reads, is not kept.
- Pre-norm transformer blocks (self-attention over horizon positions + feed-forward, both
  residual) sit between the two mid residual blocks and, for each level in ``attn_levels``, after
  that level's residual blocks on the down path and on the matching up stage. Their projections
  are plain ``nn.Linear`` modules named ``to_q``, ``to_k``, ``to_v``, ``to_out``: the layers LoRA
  targets (``pcm_policy.lora``). Attention is written as matmul + softmax, so forward-mode AD
  (``torch.func.jvp``) works on every backend.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ConditionalUnet1D", "UNET_PRESETS", "build_unet", "count_parameters"]

# Named sizes (parameter counts for input_dim 2, global_cond_dim 40). `reference` is the Diffusion
# Policy PushT lowdim UNet (65.78M) plus its mid transformer block: 78.38M; medium 5.60M; small 1.44M.
UNET_PRESETS: dict[str, dict] = {
    "reference": dict(diffusion_step_embed_dim=256, down_dims=(256, 512, 1024), attn_levels=()),
    "medium": dict(diffusion_step_embed_dim=128, down_dims=(64, 128, 256), attn_levels=(1,)),
    "small": dict(diffusion_step_embed_dim=64, down_dims=(32, 64, 128), attn_levels=(1,)),
}


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


class SinusoidalPosEmb(nn.Module):
    """Timestep -> [sin(t f_i), cos(t f_i)], f_i = exp(-ln(10000) i / (half - 1))."""

    def __init__(self, dim: int):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"timestep embedding dim must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * (-math.log(10000.0) / (half - 1)))
        arg = t[:, None] * freqs.to(t.dtype)[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class Conv1dBlock(nn.Sequential):
    """Conv1d (same padding) -> GroupNorm -> Mish."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int = 8):
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, c_out),
            nn.Mish(),
        )


class ConditionalResidualBlock1D(nn.Module):
    """Conv block -> FiLM(cond) -> conv block, plus a (1x1 conv) residual."""

    def __init__(self, c_in, c_out, cond_dim, kernel_size=5, n_groups=8, cond_predict_scale=True):
        super().__init__()
        self.block1 = Conv1dBlock(c_in, c_out, kernel_size, n_groups)
        self.block2 = Conv1dBlock(c_out, c_out, kernel_size, n_groups)
        self.cond_predict_scale = cond_predict_scale
        self.cond_encoder = nn.Sequential(
            nn.Mish(), nn.Linear(cond_dim, 2 * c_out if cond_predict_scale else c_out)
        )
        self.residual_conv = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        film = self.cond_encoder(cond).unsqueeze(-1)  # (B, [2*]C, 1)
        if self.cond_predict_scale:
            scale, bias = film.chunk(2, dim=1)
            h = scale * h + bias
        else:
            h = h + film
        return self.block2(h) + self.residual_conv(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over sequence positions, with explicit matmul + softmax."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"attention width {dim} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, D)
        b, t, d = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, H, T, Dh)

        q, k, v = heads(self.to_q(x)), heads(self.to_k(x)), heads(self.to_v(x))
        attn = torch.softmax(q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5), dim=-1)
        return self.to_out((attn @ v).transpose(1, 2).reshape(b, t, d))


class TransformerBlock1D(nn.Module):
    """Pre-norm transformer block on channels-first features (B, C, T)."""

    def __init__(self, dim: int, n_heads: int, ff_mult: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        h = h + self.attn(self.norm1(h))
        h = h + self.ff(self.norm2(h))
        return h.transpose(1, 2)


class ConditionalUnet1D(nn.Module):
    """Noise-prediction UNet over action sequences, FiLM-conditioned on timestep and observations.

    Args:
        input_dim: features per horizon step (PushT actions: 2).
        global_cond_dim: size of the flattened observation conditioning (PushT: 2 steps x 20 = 40);
            0 for an unconditional model.
        diffusion_step_embed_dim: sinusoidal timestep embedding width (MLP hidden = 4x).
        down_dims: channels per resolution level; the horizon halves between levels, so it must be
            divisible by ``2 ** (len(down_dims) - 1)``.
        kernel_size, n_groups: convolution kernel and GroupNorm groups of every conv block.
        attn_levels: level indices (0 = full horizon) that get a transformer block after their
            residual blocks, on the down path and (levels >= 1) on the up stage that reads their skip.
            The mid block always has one.
        n_heads: attention heads (every attention width must be divisible by it).
        cond_predict_scale: FiLM predicts scale and bias (True, reference) or bias only.
    """

    def __init__(
        self,
        input_dim: int = 2,
        global_cond_dim: int = 40,
        diffusion_step_embed_dim: int = 256,
        down_dims: tuple[int, ...] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        attn_levels: tuple[int, ...] = (),
        n_heads: int = 4,
        cond_predict_scale: bool = True,
    ):
        super().__init__()
        down_dims, attn_levels = tuple(int(d) for d in down_dims), tuple(int(a) for a in attn_levels)
        if not down_dims or any(d % n_groups for d in down_dims):
            raise ValueError(f"down_dims {down_dims} must be non-empty multiples of n_groups={n_groups}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the horizon length, got {kernel_size}")
        if any(not 0 <= a < len(down_dims) for a in attn_levels):
            raise ValueError(f"attn_levels {attn_levels} must index down_dims (0..{len(down_dims) - 1})")
        self._init_config = dict(
            input_dim=input_dim, global_cond_dim=global_cond_dim,
            diffusion_step_embed_dim=diffusion_step_embed_dim, down_dims=list(down_dims),
            kernel_size=kernel_size, n_groups=n_groups, attn_levels=list(attn_levels),
            n_heads=n_heads, cond_predict_scale=cond_predict_scale,
        )
        self.input_dim, self.global_cond_dim = input_dim, global_cond_dim
        self.horizon_multiple = 2 ** (len(down_dims) - 1)

        dsed = diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed), nn.Linear(dsed, 4 * dsed), nn.Mish(), nn.Linear(4 * dsed, dsed)
        )
        cond_dim = dsed + global_cond_dim

        def res(c_in: int, c_out: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(
                c_in, c_out, cond_dim, kernel_size, n_groups, cond_predict_scale
            )

        def attn(dim: int, level: int) -> nn.Module:
            return TransformerBlock1D(dim, n_heads) if level in attn_levels else nn.Identity()

        n = len(down_dims)
        dims_in = (input_dim, *down_dims[:-1])
        self.down_modules = nn.ModuleList(
            nn.ModuleList([
                res(c_in, c_out), res(c_out, c_out), attn(c_out, lvl),
                nn.Conv1d(c_out, c_out, 3, stride=2, padding=1) if lvl < n - 1 else nn.Identity(),
            ])
            for lvl, (c_in, c_out) in enumerate(zip(dims_in, down_dims, strict=True))
        )
        mid = down_dims[-1]
        self.mid_modules = nn.ModuleList([res(mid, mid), TransformerBlock1D(mid, n_heads), res(mid, mid)])
        # Up stage for level lvl = n-1 .. 1: concat(x, skip_lvl) -> dims[lvl-1], then upsample.
        self.up_modules = nn.ModuleList(
            nn.ModuleList([
                res(2 * down_dims[lvl], down_dims[lvl - 1]), res(down_dims[lvl - 1], down_dims[lvl - 1]),
                attn(down_dims[lvl - 1], lvl),
                nn.ConvTranspose1d(down_dims[lvl - 1], down_dims[lvl - 1], 4, stride=2, padding=1),
            ])
            for lvl in range(n - 1, 0, -1)
        )
        self.final_conv = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], input_dim, 1),
        )

    def get_config(self) -> dict:
        """Constructor arguments (JSON-serialisable): ``ConditionalUnet1D(**m.get_config())`` rebuilds."""
        return dict(self._init_config)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        global_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise of ``sample`` (B, T, input_dim) at ``timestep`` (B,) or scalar, given
        ``global_cond`` (B, global_cond_dim). Returns (B, T, input_dim)."""
        if sample.ndim != 3 or sample.shape[-1] != self.input_dim:
            raise ValueError(f"sample must be (B, T, {self.input_dim}), got {tuple(sample.shape)}")
        b, horizon = sample.shape[:2]
        if horizon % self.horizon_multiple:
            raise ValueError(
                f"horizon {horizon} must be divisible by {self.horizon_multiple} "
                f"(2 ** (len(down_dims) - 1)); pad or change the horizon"
            )
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, b)):
            raise ValueError(f"timestep must be a scalar or shape ({b},), got {tuple(t.shape)}")
        cond = self.diffusion_step_encoder(t.reshape(-1).expand(b).to(sample.dtype))
        if self.global_cond_dim:
            if global_cond is None or global_cond.shape != (b, self.global_cond_dim):
                got = None if global_cond is None else tuple(global_cond.shape)
                raise ValueError(f"global_cond must be ({b}, {self.global_cond_dim}), got {got}")
            cond = torch.cat([cond, global_cond.to(cond.dtype)], dim=-1)
        elif global_cond is not None:
            raise ValueError("this model has global_cond_dim=0 but global_cond was given")

        x = sample.transpose(1, 2)  # (B, C, T)
        skips = []
        for lvl, (res1, res2, attn, down) in enumerate(self.down_modules):
            x = attn(res2(res1(x, cond), cond))
            if lvl > 0:  # level 0's features are never concatenated back (reference quirk removed)
                skips.append(x)
            x = down(x)
        res1, attn, res2 = self.mid_modules
        x = res2(attn(res1(x, cond)), cond)
        for res1, res2, attn, up in self.up_modules:
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(attn(res2(res1(x, cond), cond)))
        return self.final_conv(x).transpose(1, 2)


def build_unet(size: str = "reference", input_dim: int = 2, global_cond_dim: int = 40, **overrides):
    """``ConditionalUnet1D`` from a named preset in ``UNET_PRESETS``, with keyword overrides."""
    if size not in UNET_PRESETS:
        raise ValueError(f"unknown UNet size {size!r}; choose one of {sorted(UNET_PRESETS)}")
    kwargs = {**UNET_PRESETS[size], **overrides}
    return ConditionalUnet1D(input_dim=input_dim, global_cond_dim=global_cond_dim, **kwargs)
