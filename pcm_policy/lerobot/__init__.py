"""A stock lerobot Diffusion Policy on the sampler core (runs in the lerobot environment, ``.venv-lerobot``).

    adapter.py   ``LerobotDiffusion``: a loaded lerobot ``DiffusionPolicy`` as a model function (its UNet,
                 conditioned on lerobot's own global conditioning), its own noise scheduler as the step grid,
                 its own pre/post-processors; ``load_policy`` reads a policy folder offline
    dropin.py    ``accelerate(policy, spec_or_adapter)``: lerobot's ``select_action`` / ``predict_action_chunk``
                 sample with any sampler of the core (one documented hook)

Nothing is imported here, so ``import pcm_policy.lerobot`` works without lerobot; the submodules raise an
ImportError that says what to install when lerobot is missing.
"""
