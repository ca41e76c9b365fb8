"""A lerobot PushT policy (state-only, gym-pusht's keypoints) seen as this package's PushT env expects a policy.

This package's PushT evaluation (``pcm_policy.pusht.rollout.run_rollouts``, the sweep's PushT Task) drives a policy
through ``predict_action(obs, sampler, noise=, generator=, **kw)``, ``condition(obs)``, ``cfg`` and ``device``, with
raw observations of our env's ``obs_type="state"``: ``(B, n_obs_steps, 5)`` = agent x, y, block origin x, y,
angle. ``EnvPolicy`` turns them into what the lerobot policy was trained on, exactly as
``pcm_policy.lerobot.dataset`` wrote the demonstrations:

    observation.state             = obs[..., 0:2]                          (agent position, px)
    observation.environment_state = dataset.environment_state(obs[..., 2:5])  (gym-pusht's 16 corner values)

then lerobot's own preprocessor (its normalisation), lerobot's global conditioning (``LerobotDiffusion.condition``),
the core sampler on the UNet, lerobot's own postprocessor (unnormalisation), and the ``n_action_steps`` actions from
the current observation on (``LerobotDiffusion.action_slice``; lerobot's own convention). Episode starts pad the
observation window with the first observation, as both lerobot's queue and ``run_rollouts`` do. Nothing here
imports the PushT task package: ``scripts/rollout.py`` and ``scripts/eval_sweep.py`` hand this object to it.

Raises ``PolicyFolderError`` for a policy that does not read exactly PushT's state-only features
(``observation.state`` (2,) + ``observation.environment_state`` (16,) -> ``action`` (2,)).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from .adapter import LerobotDiffusion, PolicyFolderError
from .dataset import ENV_STATE_DIM, environment_state

__all__ = ["OBS_DIM", "EnvPolicy", "lerobot_features"]

OBS_DIM = 5  # our env's obs_type="state": agent x, y, block origin x, y, angle
STATE, ENV_STATE, ACTION = "observation.state", "observation.environment_state", "action"


def lerobot_features(obs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Our env's raw state observations ``(..., 5)`` -> ``{observation.state (..., 2), observation.environment_state
    (..., 16)}`` float32, as the LeRobotDataset of the demonstrations holds them (``dataset.environment_state``)."""
    if obs.shape[-1] != OBS_DIM:
        raise ValueError(f"observations must end in {OBS_DIM} values (our env's obs_type='state'), "
                         f"got {tuple(obs.shape)}")
    pose = obs[..., 2:5].detach().cpu().double().numpy()
    env = torch.from_numpy(np.asarray(environment_state(pose), dtype=np.float32))
    return {STATE: obs[..., 0:2].detach().cpu().float(), ENV_STATE: env}


class _ActionScale:
    """``normalizer["action"].scale`` of a MIN_MAX action normaliser: normalised units per env pixel (2 / range)."""

    def __init__(self, scale: torch.Tensor, state: dict):
        self.scale, self._state = scale, state

    def __getitem__(self, key: str):
        if key != ACTION:
            raise KeyError(key)
        return self

    def state_dict(self) -> dict:
        return self._state


class EnvPolicy:
    """``LerobotDiffusion`` with our PushT env's policy interface (module doc).

    Attributes:
        adapter: the ``LerobotDiffusion`` (its policy, processors, UNet, schedule).
        cfg: ``obs_type`` ("state"), ``obs_dim``, ``n_obs_steps``, ``horizon``, ``action_dim``, ``n_action_steps``.
        model, model_fn, noise_scheduler: the UNet module, its model function and the policy's own scheduler.
        normalizer: ``normalizer["action"].scale`` (2 / (max - min) per action dimension) and ``state_dict()`` (the
            processors' statistics), what the PushT Task's pixel distance and cache key read.
    """

    def __init__(self, adapter: LerobotDiffusion):
        cfg = adapter.config
        want = {STATE: (2,), ENV_STATE: (ENV_STATE_DIM,)}
        have = {k: tuple(f.shape) for k, f in cfg.input_features.items()}
        if have != want or tuple(cfg.action_feature.shape) != (2,):
            raise PolicyFolderError(f"this lerobot policy reads {have} -> action {tuple(cfg.action_feature.shape)}; "
                                    f"our PushT env feeds state-only PushT policies ({want} -> action (2,)), as "
                                    f"scripts/lerobot/train.sh trains them")
        if adapter.preprocessor is None or adapter.postprocessor is None:
            raise PolicyFolderError("the policy has no processors; load it with LerobotDiffusion.from_folder")
        self.adapter = adapter
        horizon, action_dim = adapter.sample_shape
        self.cfg = SimpleNamespace(obs_type="state", obs_dim=OBS_DIM, n_obs_steps=int(cfg.n_obs_steps),
                                   horizon=horizon, action_dim=action_dim, n_action_steps=int(cfg.n_action_steps))
        self.model, self.model_fn, self.noise_scheduler = adapter.network, adapter.model_fn, adapter.scheduler
        self.normalizer = self._action_scale()

    @classmethod
    def from_folder(cls, folder, device: str = "cpu") -> EnvPolicy:
        """``EnvPolicy(LerobotDiffusion.from_folder(folder, device))`` (errors: ``load_policy``'s)."""
        return cls(LerobotDiffusion.from_folder(folder, device))

    def _action_scale(self) -> _ActionScale:
        lo = self.adapter.postprocessor(torch.full((1, 1, self.cfg.action_dim), -1.0))
        hi = self.adapter.postprocessor(torch.full((1, 1, self.cfg.action_dim), 1.0))
        scale = (2.0 / (hi - lo)).flatten().cpu()
        state = {f"pre.{k}": v for k, v in self.adapter.preprocessor.state_dict().items() if torch.is_tensor(v)}
        state |= {f"post.{k}": v for k, v in self.adapter.postprocessor.state_dict().items() if torch.is_tensor(v)}
        return _ActionScale(scale, state)

    @property
    def device(self) -> torch.device:
        return next(self.adapter.network.parameters()).device

    @torch.no_grad()
    def condition(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw env observations ``(B, >= n_obs_steps, 5)`` (the first ``n_obs_steps`` are used) -> lerobot's global
        conditioning ``(B, cond_dim)``: features (``lerobot_features``), lerobot's preprocessor, its encoder."""
        obs = torch.as_tensor(obs)
        if obs.ndim != 3 or obs.shape[1] < self.cfg.n_obs_steps:
            raise ValueError(f"obs must be (B, >= {self.cfg.n_obs_steps}, {OBS_DIM}), got {tuple(obs.shape)}")
        batch = self.adapter.preprocessor(lerobot_features(obs[:, : self.cfg.n_obs_steps]))
        return self.adapter.condition({k: batch[k].to(self.device) for k in (STATE, ENV_STATE)})

    @torch.no_grad()
    def predict_action(self, obs: torch.Tensor, sampler, *, noise: torch.Tensor | None = None,
                       generator=None, **sampler_kwargs) -> dict:
        """One action chunk per row of ``obs`` with ``sampler(model_fn, x_T, cond, **kw)``.

        Args:
            obs: ``(B, >= n_obs_steps, 5)`` raw observations of our env (``obs_type="state"``).
            noise: x_T ``(B, horizon, action_dim)``; drawn from ``generator`` (one per row, or one) if None.
            generator: passed on to the sampler too (step noise of DDPM).
        Returns:
            ``action`` (B, n_action_steps, 2) in env px, ``action_pred`` (B, horizon, 2) px, ``action_pred_norm``
            (lerobot's normalised actions), ``x_T`` and the sampler's ``stats``.
        """
        cond = self.condition(obs)
        shape = (cond.shape[0], self.cfg.horizon, self.cfg.action_dim)
        per_row = isinstance(generator, (list, tuple))
        if noise is None:
            noise = (torch.stack([torch.randn(shape[1:], generator=g) for g in generator]) if per_row
                     else torch.randn(shape, generator=generator))
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        if generator is not None:
            sampler_kwargs["generator"] = generator
        x0, stats = sampler(self.model_fn, noise.to(self.device), cond, **sampler_kwargs)
        pred = self.adapter.postprocessor(x0).to(x0.device)
        return {"action": pred[:, self.adapter.action_slice], "action_pred": pred, "action_pred_norm": x0,
                "x_T": noise, "stats": stats}
