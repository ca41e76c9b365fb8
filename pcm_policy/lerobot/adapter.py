"""A loaded lerobot ``DiffusionPolicy`` on the sampler core: model function, step grid, noise, processors.

lerobot 0.6 (``lerobot.policies.diffusion.modeling_diffusion``) samples a chunk in
``DiffusionModel.generate_actions``: ``global_cond = _prepare_global_conditioning(batch)`` (state, environment
state and image features over ``n_obs_steps``, flattened; computed once per chunk), then
``conditional_sample``: ``x_T = randn(B, horizon, action_dim)`` and, for each ``t`` of its diffusers scheduler's
``timesteps``, ``x = scheduler.step(unet(x, t, global_cond=global_cond), t, x).prev_sample``. Here that becomes

    model_fn(x, t, cond, lora_scale=None) = unet(x, t, global_cond=cond)     (eps; ``denoiser.py`` protocol)
    grid = step_grid(policy.diffusion.noise_scheduler, T)                   (its own DDPM or DDIM schedule)

so every sampler of the core runs on the policy's own network and schedule. Nothing of lerobot's network code
is copied: the UNet, the observation encoders (ResNet18 for images) and the conditioning are lerobot's own
modules and methods. Normalisation stays in lerobot's own processors (``policy_preprocessor.json`` /
``policy_postprocessor.json``); samplers work in the normalised action space lerobot's UNet sees.

Randomness as lerobot draws it: ``draw_x_T`` is ``conditional_sample``'s prior draw, and ``draw_step_noise``
draws DDPM's per-step noise exactly where diffusers' ``DDPMScheduler.step`` draws it (``randn_tensor`` of the
sample's shape, with the caller's generator, for every step with ``t > 0``; none at ``t = 0``; DDIM with lerobot's
eta = 0 draws nothing). The draws happen before the first model call instead of between calls; lerobot's UNet
draws no random numbers in eval mode, so the generator (or torch's global RNG) ends in the same state.

Errors: ``PolicyFolderError`` (a ValueError) for a folder that is not a lerobot diffusion policy, ImportError
(with what to install) when lerobot is missing.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..lora import LoraScale
from ..sampling import Grid, Sampler, SamplerSpec, SampleStats, make_sampler, step_grid
from . import LerobotMissingError, require  # noqa: F401 (LerobotMissingError: what a missing lerobot raises)

__all__ = ["LORA_TYPES", "LerobotDiffusion", "PolicyFolderError", "load_policy", "require_lerobot",
           "resolve_policy_folder", "unnormalised_inputs"]

LORA_TYPES = (nn.Conv1d, nn.Linear)  # lerobot's UNet has no attention: LoRA on its convolutions and FiLM layers
TRAJECTORY_SAMPLERS = ("ddim", "picard", "taa", "pcm", "newton")  # solved on the grid ``solver`` chooses

class PolicyFolderError(ValueError):
    """A folder or object that is not a lerobot diffusion policy (the message says what to pass instead)."""


def require_lerobot():
    """lerobot's ``DiffusionPolicy`` class, or ``LerobotMissingError`` (an ImportError) saying how to install it."""
    return require("lerobot.policies.diffusion.modeling_diffusion", "DiffusionPolicy")


def resolve_policy_folder(folder: str | os.PathLike) -> Path:
    """The folder holding a lerobot diffusion policy's ``config.json`` and ``model.safetensors``.

    Accepts the policy folder itself, a checkpoint folder holding ``pretrained_model/``, or a ``lerobot-train``
    output folder (``checkpoints/last/pretrained_model``). Local folders only (nothing is fetched from a hub).
    Raises ``PolicyFolderError`` for anything else, or a policy of another type.
    """
    root = Path(folder)
    if not root.is_dir():
        raise PolicyFolderError(f"{root} is not a folder; pass a lerobot policy folder (config.json + "
                                f"model.safetensors, e.g. OUTPUT_DIR/checkpoints/last/pretrained_model; hub ids "
                                f"are not fetched)")
    for cand in (root, root / "pretrained_model", root / "checkpoints" / "last" / "pretrained_model"):
        if (cand / "config.json").is_file():
            break
    else:
        raise PolicyFolderError(f"{root} is not a lerobot policy folder (no config.json); pass the folder lerobot's "
                                f"save_pretrained / lerobot-train wrote (OUTPUT_DIR/checkpoints/last/pretrained_model)")
    try:
        kind = json.loads((cand / "config.json").read_text()).get("type")
    except (OSError, ValueError, AttributeError) as e:
        raise PolicyFolderError(f"{cand / 'config.json'} is not a lerobot policy config ({e})") from e
    if kind != "diffusion":
        raise PolicyFolderError(f"{cand} holds a lerobot {kind!r} policy; only diffusion policies "
                                f"(lerobot's DiffusionPolicy, type 'diffusion') can be accelerated")
    if not (cand / "model.safetensors").is_file():
        raise PolicyFolderError(f"{cand} has no model.safetensors; pass a folder written by lerobot's save_pretrained")
    return cand


def unnormalised_inputs(config) -> list[str]:
    """Input features of a lerobot policy config that its normaliser passes through RAW: their feature type has no
    mode (or IDENTITY) in ``config.normalization_mapping`` (lerobot's ``NormalizerProcessorStep`` skips them).
    lerobot 0.6.1's ``DiffusionConfig`` maps VISUAL, STATE and ACTION only, so ``observation.environment_state``
    (type ENV) stays in its raw units unless the training added ``"ENV": "MIN_MAX"`` (``scripts/lerobot/train.sh``)."""
    mapping = {str(getattr(k, "value", k)): str(getattr(v, "value", v))
               for k, v in config.normalization_mapping.items()}
    return sorted(key for key, ft in config.input_features.items()
                  if mapping.get(str(getattr(ft.type, "value", ft.type)), "IDENTITY") == "IDENTITY")


def load_policy(folder: str | os.PathLike, device: str = "cpu"):
    """Load a lerobot diffusion policy folder offline: ``(policy, preprocessor, postprocessor)``.

    ``DiffusionPolicy.from_pretrained`` alone would build the vision backbone with the ImageNet weights its
    config names (a download, which fails offline) before loading ``model.safetensors`` over them, so the config
    is read first and built with ``pretrained_backbone_weights=None``; ``model.safetensors`` then sets every
    weight (strict: a file that does not fit the config is an error). The processors are lerobot's own
    (``make_pre_post_processors(config, pretrained_path=folder)``) with their device set to ``device``.

    Raises:
        PolicyFolderError: not a lerobot diffusion policy folder, weights that do not fit its config, or no
            saved processors.
        ImportError: lerobot is not installed.
    """
    DiffusionPolicy = require_lerobot()
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors

    path = resolve_policy_folder(folder)
    for name in ("policy_preprocessor.json", "policy_postprocessor.json"):
        if not (path / name).is_file():
            raise PolicyFolderError(f"{path} has no {name}; save the policy with lerobot >= 0.4 (lerobot-train writes "
                                    f"its processors beside model.safetensors)")
    try:
        config = PreTrainedConfig.from_pretrained(path)
    except Exception as e:  # draccus' parse errors have no common base class
        raise PolicyFolderError(f"{path / 'config.json'} is not a config this lerobot can read ({e})") from e
    config.pretrained_backbone_weights = None  # model.safetensors sets the backbone; None avoids a download
    config.device = device
    try:
        policy = DiffusionPolicy.from_pretrained(path, config=config, strict=True)
    except RuntimeError as e:
        raise PolicyFolderError(f"{path / 'model.safetensors'} does not fit its config.json ({e})") from e
    raw = unnormalised_inputs(config)
    if raw:
        warnings.warn(f"{path}: input(s) {', '.join(raw)} are fed to the network unnormalised (its "
                      f"normalization_mapping has no mode for their type); a policy trained so can ignore its other "
                      f"inputs (docs/lerobot.md); train with '--policy.normalization_mapping=...' adding "
                      f"\"ENV\": \"MIN_MAX\" (scripts/lerobot/train.sh)",
                      stacklevel=2)
    pre, post = make_pre_post_processors(config, pretrained_path=str(path),
                                         preprocessor_overrides={"device_processor": {"device": device}})
    return policy, pre, post


class LerobotDiffusion:
    """A lerobot ``DiffusionPolicy`` as the core's model function and step grid (module doc).

    Attributes:
        policy, preprocessor, postprocessor: lerobot's objects (processors may be None).
        network: the UNet module LoRA adapters go on (``pcm_policy.lora.add_lora(adapter.network,
            target_modules=adapter.lora_targets)``).
        model_fn: ``model_fn(x (N, horizon, action_dim), t (N,) long, cond (N, cond_dim), lora_scale=None) -> eps``;
            ``lora_scale`` a float or one value per row (``wrappers.LoraScale``).
        scheduler: the policy's own diffusers DDPMScheduler / DDIMScheduler (read, never stepped).
        num_steps: the policy's own inference steps (``num_inference_steps``; None in its config means all).
        solver: "ddpm" or "ddim", the policy's own scheduler type.
        lora_targets: full names (in ``network``) of every Conv1d and Linear of the UNet (FiLM ``cond_encoder``
            included); the ConvTranspose1d upsamplers are left out.
    """

    def __init__(self, policy, preprocessor=None, postprocessor=None):
        DiffusionPolicy = require_lerobot()
        if not isinstance(policy, DiffusionPolicy):
            raise PolicyFolderError(f"expected a lerobot DiffusionPolicy, got {type(policy).__name__}; only diffusion "
                                    f"policies can be accelerated")
        self.policy, self.preprocessor, self.postprocessor = policy, preprocessor, postprocessor
        self.config, self.diffusion = policy.config, policy.diffusion
        self.network = getattr(self.diffusion.unet, "_orig_mod", self.diffusion.unet)  # under torch.compile too
        self.scheduler = self.diffusion.noise_scheduler
        self.num_steps = int(self.diffusion.num_inference_steps)
        self.solver = "ddpm" if self.config.noise_scheduler_type == "DDPM" else "ddim"
        self.model_fn = LoraScale(self._unet, self.network)
        self.lora_targets = sorted({n.removesuffix(".base_layer") for n, m in self.network.named_modules()
                                    if isinstance(m, LORA_TYPES) and ".lora_" not in n})

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, device: str = "cpu") -> LerobotDiffusion:
        """``LerobotDiffusion(*load_policy(folder, device))``."""
        return cls(*load_policy(folder, device))

    def _unet(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        # lerobot's call: long timesteps. Its sinusoidal embedding computes in the timestep's dtype (float32 for
        # long), so a float64 model (``policy.double()``) gets float64 timesteps (integers, exact) to run in float64
        return self.diffusion.unet(x, t.to(torch.float64) if x.dtype == torch.float64 else t.long(), global_cond=cond)

    @property
    def sample_shape(self) -> tuple[int, int]:
        """(horizon, action_dim): one action chunk, the shape of a sample's x."""
        return (int(self.config.horizon), int(self.config.action_feature.shape[0]))

    @property
    def action_slice(self) -> slice:
        """The actions of a chunk lerobot executes: ``n_action_steps`` from the current observation on."""
        start = self.config.n_obs_steps - 1
        return slice(start, start + self.config.n_action_steps)

    @torch.no_grad()
    def condition(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """lerobot's global conditioning ``(B, cond_dim)`` of a NORMALISED observation batch.

        ``batch``: ``observation.state`` ``(B, n_obs_steps, state_dim)`` and ``observation.environment_state``
        ``(B, n_obs_steps, env_dim)`` and/or each image key ``(B, n_obs_steps, C, H, W)``, as the preprocessor and
        a dataset with lerobot's delta timestamps give them. Image keys are stacked into ``observation.images`` as
        ``predict_action_chunk`` does for a batch, then ``DiffusionModel._prepare_global_conditioning`` encodes
        them (ResNet18 features, state and environment state over the observation steps, flattened).
        Raises ValueError for a missing key or a wrong number of observation steps.
        """
        from lerobot.utils.constants import OBS_ENV_STATE, OBS_IMAGES, OBS_STATE

        cfg = self.config
        need = [OBS_STATE, *cfg.image_features, *([OBS_ENV_STATE] if cfg.env_state_feature else [])]
        missing = [k for k in need if k not in batch]
        if missing:
            raise ValueError(f"the observation batch lacks {missing}; this policy reads {need}")
        state = batch[OBS_STATE]
        if state.ndim != 3 or state.shape[1] != cfg.n_obs_steps:
            raise ValueError(f"{OBS_STATE} must be (B, n_obs_steps={cfg.n_obs_steps}, dim), got {tuple(state.shape)}")
        batch = dict(batch)
        if cfg.image_features:
            batch[OBS_IMAGES] = torch.stack([batch[k] for k in cfg.image_features], dim=-4)
        return self.diffusion._prepare_global_conditioning(batch)

    def draw_x_T(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The prior draw of lerobot's ``conditional_sample``: ``randn((B, horizon, action_dim))`` in the model's
        dtype and device, from ``generator`` (None: torch's global RNG, as ``select_action`` draws it)."""
        p = next(self.diffusion.parameters())
        return torch.randn(size=(batch_size, *self.sample_shape), dtype=p.dtype, device=p.device, generator=generator)

    def draw_step_noise(self, grid: Grid, x_T: torch.Tensor,
                        generator: torch.Generator | list | None = None) -> torch.Tensor | None:
        """Standard normal step noise ``(T, *x_T.shape)`` drawn as diffusers' schedulers draw it (module doc), or
        None for a deterministic grid. DDPM: ``randn_tensor(x.shape, generator, device, dtype)`` per step with
        ``t > 0`` (zeros at ``t = 0``, where ``DDPMScheduler.step`` draws nothing); DDIM with eta > 0: every step."""
        if not grid.stochastic:
            return None
        from diffusers.utils.torch_utils import randn_tensor

        draws = []
        for t in grid.timesteps.tolist():
            if grid.solver == "ddim" or t > 0:
                draws.append(randn_tensor(x_T.shape, generator=generator, device=x_T.device, dtype=x_T.dtype))
            else:
                draws.append(torch.zeros_like(x_T))
        return torch.stack(draws)

    def spec(self, spec: SamplerSpec | str, **overrides) -> SamplerSpec:
        """``spec`` as a ``SamplerSpec``; a sampler name takes the policy's own T (``num_steps``) unless
        ``overrides`` set it."""
        if isinstance(spec, SamplerSpec):
            return spec.replace(**overrides) if overrides else spec
        if not isinstance(spec, str):
            raise ValueError(f"spec must be a SamplerSpec or a sampler name, got {spec!r}")
        return SamplerSpec.named(spec, **{"num_steps": self.num_steps, **overrides})

    def sampler(self, spec: SamplerSpec | str, *, solver: str = "own", **overrides) -> Sampler:
        """The core's sampler of ``spec`` on this policy's noise schedule.

        Args:
            spec: a ``SamplerSpec`` or a sampler name (then T is the policy's own, ``self.spec``).
            solver: the grid of the trajectory samplers (ddim = sequential, picard, taa, pcm, newton): "own"
                (default) solves the policy's own scheduler type (DDPM-100 stays ancestral DDPM, with
                ``draw_step_noise``), so tol 0 reproduces lerobot's own actions; "ddim" solves DDIM on its
                schedule (what ``make_sampler`` does); "ddpm" ancestral DDPM. ddpm, ddim-k and dpmsolver are
                solved as ``make_sampler`` solves them.
        Raises:
            ValueError: a bad spec or solver, or T outside 1..num_train_timesteps.
        """
        spec = self.spec(spec, **overrides)
        if solver not in ("own", "ddim", "ddpm"):
            raise ValueError(f"solver must be 'own', 'ddim' or 'ddpm', got {solver!r}")
        if spec.name == "dpmsolver":
            from diffusers import DPMSolverMultistepScheduler

            return make_sampler(spec, self.scheduler,
                                solver_scheduler=DPMSolverMultistepScheduler.from_config(self.scheduler.config))
        if spec.name not in TRAJECTORY_SAMPLERS:
            return make_sampler(spec, self.scheduler)
        solver = self.solver if solver == "own" else solver
        return Sampler(spec, step_grid(self.scheduler, spec.num_steps or self.scheduler.config.num_train_timesteps,
                                       solver=solver))

    @torch.no_grad()
    def sample(self, sampler: Sampler, cond: torch.Tensor, x_T: torch.Tensor | None = None,
               generator: torch.Generator | None = None, **kw) -> tuple[torch.Tensor, SampleStats]:
        """One action chunk per row of ``cond`` (``condition``), normalised: ``((B, horizon, action_dim), stats)``.

        ``x_T`` and the step noise are drawn as lerobot draws them (``draw_x_T``, ``draw_step_noise``) from
        ``generator`` unless ``x_T`` / ``noise=`` are given; ``kw`` go to the sampler (``k``-budgets, ``init``...).
        """
        if x_T is None:
            x_T = self.draw_x_T(cond.shape[0], generator)
        if sampler.grid is not None and "noise" not in kw:
            kw["noise"] = self.draw_step_noise(sampler.grid, x_T, generator)
        elif sampler.grid is None:
            kw.setdefault("generator", generator)
        return sampler(self.model_fn, x_T, cond, **kw)
