"""The PushT task: the diffusion policy (1-D UNet, normaliser, frozen graphs), its checkpoints,
lockstep rollouts, DAgger relabelling, the demonstration dataset and the PCT condition store."""

from .checkpoint import CheckpointError, load_adapter_folder, load_policy, save_adapter_folder, save_policy
from .policy import OBS_DIMS, DiffusionPolicy, PolicyConfig
from .rollout import chunk_noise, run_rollouts, summarize

__all__ = ["OBS_DIMS", "CheckpointError", "DiffusionPolicy", "PolicyConfig", "chunk_noise", "load_adapter_folder",
           "load_policy", "run_rollouts", "save_adapter_folder", "save_policy", "summarize"]
