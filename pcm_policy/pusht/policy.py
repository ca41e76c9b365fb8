"""DiffusionPolicy: normalise observations -> sample an action chunk -> unnormalise.

Receding horizon (Diffusion Policy, Chi et al. 2023): the policy sees the last ``n_obs_steps``
observations, predicts ``horizon`` actions aligned so that index 0 is the older observed step, and
the caller executes ``n_action_steps`` of them starting at index ``n_obs_steps - 1``.

The policy is wrapped ONCE into the sampler protocol (``self.model_fn``); which sampler runs is the
caller's choice (``pcm_policy.sampling.make_sampler``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..lora import LoraScale
from .frozen import FrozenGraphs
from .normalizer import NormalizerDict
from .unet1d import UNET_PRESETS, ConditionalUnet1D

OBS_DIMS = {"keypoints": 20, "state": 5}


@dataclass
class PolicyConfig:
    obs_type: str = "keypoints"
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    action_dim: int = 2
    unet_size: str = "small"
    unet: dict = field(default_factory=dict)  # overrides of the preset (down_dims, ...)
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True
    prediction_type: str = "epsilon"

    def __post_init__(self):
        if self.obs_type not in OBS_DIMS:
            raise ValueError(f"obs_type must be one of {sorted(OBS_DIMS)}, got {self.obs_type!r}")
        if self.unet_size not in UNET_PRESETS:
            raise ValueError(f"unet_size must be one of {sorted(UNET_PRESETS)}, got {self.unet_size!r}")
        if not (self.n_obs_steps >= 1 and self.n_obs_steps - 1 + self.n_action_steps <= self.horizon):
            raise ValueError("need n_obs_steps >= 1 and n_obs_steps - 1 + n_action_steps <= horizon")

    @property
    def obs_dim(self) -> int:
        return OBS_DIMS[self.obs_type]

    def unet_kwargs(self) -> dict:
        kw = {**UNET_PRESETS[self.unet_size], **self.unet}
        kw["down_dims"] = tuple(kw["down_dims"])
        kw["attn_levels"] = tuple(kw.get("attn_levels", ()))
        return dict(input_dim=self.action_dim, global_cond_dim=self.obs_dim * self.n_obs_steps, **kw)

    def to_dict(self) -> dict:
        return asdict(self)


class DiffusionPolicy(nn.Module):
    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        from diffusers import DDPMScheduler  # the schedule's single source of truth

        self.cfg = cfg
        self._frozen: FrozenGraphs | None = None  # see freeze()
        self._cuda_graphs = None  # see cuda_graphs()
        self.model = ConditionalUnet1D(**cfg.unet_kwargs())
        self.model_wrapper: nn.Module | None = None  # sees every model_fn call first (set_model_wrapper)
        self._lora_fn = LoraScale(self.model, self.model)  # lora_scale -> W_0 + lambda dW (or the base model)
        self.normalizer = NormalizerDict.from_dims({"obs": cfg.obs_dim, "action": cfg.action_dim})
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
            clip_sample=cfg.clip_sample, prediction_type=cfg.prediction_type, variance_type="fixed_small")

    # ------------------------------------------------------------------ sampler protocol
    def model_fn(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, lora_scale=None) -> torch.Tensor:
        """The UNet's eps(x, t, cond) in the sampler protocol: x (N, horizon, action_dim) normalised
        actions, t (N,) training timesteps, cond (N, n_obs_steps * obs_dim) from ``condition``.
        ``lora_scale`` (float or (N,) per row; ``lora.LoraScale``) sets W = W_0 + lora_scale * dW
        when an adapter is attached; None is the base model. A model wrapper (``set_model_wrapper``) sees
        the call first. After ``freeze()`` the calls a frozen graph computes exactly go to it (``frozen.py``);
        after ``cuda_graphs()`` CUDA calls replay captured graphs (``sampling.graphs``).
        """
        if self._cuda_graphs is not None:
            return self._cuda_graphs(x, t, cond, lora_scale=lora_scale)
        return self._inner_fn(x, t, cond, lora_scale=lora_scale)

    def _inner_fn(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, lora_scale=None) -> torch.Tensor:
        if self.model_wrapper is not None:
            return self.model_wrapper(self._base_fn, x, t, cond, lora_scale=lora_scale)
        return self._base_fn(x, t, cond, lora_scale=lora_scale)

    def _base_fn(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, lora_scale=None) -> torch.Tensor:
        graph = self._frozen.graph(x, t, cond, lora_scale) if self._frozen is not None else None
        if graph is not None:
            return graph(x, t, cond)
        if self._frozen is not None and torch.is_tensor(lora_scale) and lora_scale.shape == x.shape[:1]:
            on = lora_scale == 1  # rows at 0 or 1 only (a Jump's adapted row beside base Picard rows): two graphs
            if bool((on | (lora_scale == 0)).all()):
                out = torch.empty_like(x)
                for rows, lam in ((~on, 0.0), (on, 1.0)):
                    if bool(rows.any()):
                        out[rows] = self._base_fn(x[rows], t[rows], cond[rows], lora_scale=lam)
                return out
        return self._lora_fn(x, t, cond, lora_scale=lora_scale)

    def set_model_wrapper(self, wrapper: nn.Module | None) -> DiffusionPolicy:
        """Route every ``model_fn`` call through ``wrapper(base_fn, x, t, cond, lora_scale=...)``, a module (so
        its weights move, train and average with the policy's; e.g. ``paper.FullCopy``); None removes it.
        Drops the frozen graphs (call ``freeze`` again)."""
        self.model_wrapper, self._frozen = wrapper, None
        if self._cuda_graphs is not None:  # they recorded the old path
            self._cuda_graphs.reset()
        return self

    def freeze(self, enabled: bool = True) -> DiffusionPolicy:
        """Trace the UNet into frozen inference graphs (base and, with an adapter, lambda = 1) that
        ``model_fn`` then uses where they apply; same outputs, less per-call overhead. A model wrapper with a
        ``freeze(make_graphs)`` method traces its own networks the same way. Call it after loading the adapter
        and moving the policy; ``freeze(False)`` drops the graphs."""
        self.eval()
        shape, cond_dim = (self.cfg.horizon, self.cfg.action_dim), self.cfg.obs_dim * self.cfg.n_obs_steps
        self._frozen = FrozenGraphs(self.model, shape, cond_dim) if enabled else None
        if self._cuda_graphs is not None:  # they recorded the old path
            self._cuda_graphs.reset()
        if hasattr(self.model_wrapper, "freeze"):
            self.model_wrapper.freeze((lambda net: FrozenGraphs(net, shape, cond_dim)) if enabled else None)
        return self

    def cuda_graphs(self, enabled: bool = True, buckets: list[int] | None = None) -> DiffusionPolicy:
        """Replay ``model_fn``'s CUDA calls from captured CUDA graphs (``sampling.CudaGraphs``: the Picard window
        and sequential calls alike, widths padded to ``buckets``); a no-op on a CPU. Call it after loading the
        adapter, moving the policy and ``freeze`` (the graphs record what ``model_fn`` then runs; the eager UNet,
        ``freeze(False)``, is the tested path). ``enabled=False`` drops the graphs."""
        from ..sampling import CudaGraphs

        self.eval()
        self._cuda_graphs = CudaGraphs(self._inner_fn, buckets=buckets) if enabled else None
        return self

    def condition(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw observations (B, >= n_obs_steps, obs_dim) -> normalised, flattened FiLM condition."""
        if obs.ndim != 3 or obs.shape[-1] != self.cfg.obs_dim or obs.shape[1] < self.cfg.n_obs_steps:
            raise ValueError(f"obs must be (B, >= {self.cfg.n_obs_steps}, {self.cfg.obs_dim}), got {tuple(obs.shape)}")
        obs = obs[:, : self.cfg.n_obs_steps].to(self.device, torch.float32)
        return self.normalizer.normalize("obs", obs).flatten(1)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_action(self, obs: torch.Tensor, sampler, *, noise: torch.Tensor | None = None,
                       generator: torch.Generator | Sequence[torch.Generator] | None = None,
                       **sampler_kwargs) -> dict:
        """Sample an action chunk with ``sampler(model_fn, x_T, cond, **kw) -> (x_0, stats)`` (e.g. from
        ``pcm_policy.sampling.make_sampler``).

        Args:
            obs: (B, >= n_obs_steps, obs_dim) raw observations.
            noise: x_T, (B, horizon, action_dim); drawn from ``generator`` if None.
            generator: every random draw comes from it: x_T (unless ``noise`` gives it) and, passed on to
                the sampler, a stochastic solver's step noise (DDPM). A list holds one generator per row,
                so a row's draws do not depend on the other rows. None: torch's global generator.
        Returns:
            ``action`` (B, n_action_steps, action_dim) in env units, ``action_pred`` (B, horizon,
            action_dim), ``action_pred_norm``, ``x_T`` and the sampler's ``stats``.
        """
        cond = self.condition(torch.as_tensor(obs))
        shape = (cond.shape[0], self.cfg.horizon, self.cfg.action_dim)
        per_row = isinstance(generator, (list, tuple))
        if per_row and len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}; pass one per row")
        if noise is None and per_row:
            noise = torch.stack([torch.randn(shape[1:], generator=g, device=g.device) for g in generator])
        elif noise is None:
            noise = torch.randn(shape, generator=generator, device=self.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        if generator is not None:
            sampler_kwargs["generator"] = generator
        x0, stats = sampler(self.model_fn, noise.to(self.device), cond, **sampler_kwargs)
        pred = self.normalizer.unnormalize("action", x0)
        start = self.cfg.n_obs_steps - 1  # reference oa_step_convention: execute from the current step
        return {"action": pred[:, start : start + self.cfg.n_action_steps], "action_pred": pred,
                "action_pred_norm": x0, "x_T": noise, "stats": stats}

    # ------------------------------------------------------------------ training
    def draw_noise(self, batch: dict, generator: torch.Generator | None = None, device=None) -> dict:
        """``batch`` with the DDPM loss's draws added: ``noise`` (B, H, action_dim) standard normal, then
        ``timesteps`` (B,) uniform in 0..num_train_timesteps-1, on ``device`` (default: the policy's)."""
        device = self.device if device is None else device
        noise = torch.randn(batch["action"].shape, generator=generator, device=device)
        t = torch.randint(0, self.cfg.num_train_timesteps, (noise.shape[0],), generator=generator, device=device)
        return {**batch, "noise": noise, "timesteps": t}

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """DDPM epsilon loss on a batch {"obs": (B, H, obs_dim), "action": (B, H, action_dim)} (raw units).

        The noise (B, H, action_dim) and timesteps (B,) are the batch's ``noise`` and ``timesteps`` when it
        carries them (``draw_noise``: drawn with the whole batch, so a data-parallel rank's rows keep theirs),
        else drawn here in the same order (``generator``, or torch's global RNG)."""
        action = self.normalizer.normalize("action", batch["action"].to(self.device))
        cond = self.condition(batch["obs"])
        drawn = batch if "noise" in batch else self.draw_noise(batch, generator)
        noise, t = drawn["noise"].to(self.device), drawn["timesteps"].to(self.device)
        noisy = self.noise_scheduler.add_noise(action, noise, t)
        target = {"epsilon": noise, "sample": action}.get(self.cfg.prediction_type)
        if target is None:
            raise ValueError(f"prediction_type {self.cfg.prediction_type!r} is not supported for training")
        return F.mse_loss(self.model(noisy, t, cond), target)
