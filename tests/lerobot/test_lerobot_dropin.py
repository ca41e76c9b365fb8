"""The drop-in: ``accelerate(policy, ...)`` makes lerobot's own ``select_action`` sample with the core's samplers;
at tol 0 it gives lerobot's own actions on the same seed (and leaves torch's RNG where lerobot leaves it)."""

import pytest

pytest.importorskip("lerobot.policies.diffusion")  # not "lerobot": tests/lerobot/ itself is a namespace "lerobot"

import torch  # noqa: E402
from lerobot_build import build_policy, obs_batch  # noqa: E402

from pcm_policy import adapters, lora  # noqa: E402
from pcm_policy.lerobot.adapter import LerobotDiffusion, PolicyFolderError  # noqa: E402
from pcm_policy.lerobot.dropin import HOOK, accelerate  # noqa: E402
from pcm_policy.sampling import SamplerSpec, Switch  # noqa: E402

TOL = 1e-5


def run(policy, steps=10, seed=0):
    """lerobot's rollout pattern: reset, then one select_action per step on fresh observations (B=2, one
    observation step each, normalised); returns the actions (steps, B, 2) and the next global RNG draw."""
    policy.reset()
    obs = [obs_batch(policy, 2, seed=100 + i, steps=False) for i in range(steps)]
    torch.manual_seed(seed)
    actions = torch.stack([policy.select_action(o) for o in obs])
    return actions, torch.randn(4)


@pytest.mark.parametrize("scheduler,steps,image,name", [("DDIM", 10, False, "taa"), ("DDPM", 20, False, "picard"),
                                                         ("DDIM", 10, True, "taa")])
def test_select_action_at_tol_0_is_lerobots_own(scheduler, steps, image, name):
    policy = build_policy(scheduler, 16, steps, image, n_action_steps=4)
    ref, ref_next = run(policy)
    handle = accelerate(policy, name, tol=0.0)
    assert handle.active and HOOK in vars(policy.diffusion) and handle.spec.num_steps == steps
    got, got_next = run(policy)
    assert handle.chunks == 3 and handle.last_stats.converged  # 10 steps, 4 actions a chunk
    assert (got - ref).abs().max().item() <= TOL and torch.equal(got_next, ref_next)
    assert accelerate(policy, None) is None and not handle.active and HOOK not in vars(policy.diffusion)
    again, _ = run(policy)
    assert torch.equal(again, ref)


def test_handle_restores_and_does_not_stack():
    policy = build_policy("DDIM", 16, 10, n_action_steps=4)
    ref, _ = run(policy, steps=4)
    first = accelerate(policy, "picard", tol=0.0)
    with accelerate(policy, SamplerSpec.named("taa", num_steps=10, k=2)) as second:
        assert not first.active and second.active
        run(policy, steps=4)
        assert second.last_stats.iterations == 2 and not second.last_stats.converged  # a 2-call budget
    assert not second.active and HOOK not in vars(policy.diffusion)
    assert torch.equal(run(policy, steps=4)[0], ref)
    ddpm = build_policy("DDPM", 16, 20)
    assert accelerate(ddpm, "picard").sampler.grid.solver == "ddpm"  # the policy's own, ancestral DDPM
    solved = accelerate(ddpm, "picard", solver="ddim")  # DDIM on the DDPM policy's schedule
    assert solved.sampler.grid.solver == "ddim" and not solved.sampler.grid.stochastic
    solved.restore()


def test_adapter_folder(tmp_path):
    """A PCM adapter folder: its LoRA goes on the UNet, its spec is used; tol 0 is still lerobot's own; restoring
    takes the adapter off again."""
    policy = build_policy("DDIM", 16, 10, n_action_steps=4)
    keys = set(policy.state_dict())
    ref, _ = run(policy)
    a = LerobotDiffusion(policy)
    lora.add_lora(a.network, rank=4, target_modules=a.lora_targets)
    with torch.no_grad():
        for p in lora.lora_parameters(a.network):
            p.normal_(0, 0.2)
    spec = SamplerSpec("pcm", num_steps=10, tol=0.1, switch=Switch(1, 3))
    adapters.save_adapter_folder(a.network, tmp_path / "pcm", spec)
    lora.remove_lora(a.network)
    assert set(policy.state_dict()) == keys

    handle = accelerate(policy, tmp_path / "pcm", tol=0.0)
    assert handle.spec.name == "pcm" and handle.spec.switch == Switch(1, 3) and lora.has_lora(a.network)
    got, _ = run(policy)
    assert handle.last_stats.lambdas[0] == 1.0 and (got - ref).abs().max().item() <= TOL
    handle.restore()
    assert not lora.has_lora(policy.diffusion.unet) and set(policy.state_dict()) == keys
    assert torch.equal(run(policy)[0], ref)
    ddpm = build_policy("DDPM", 16, 20)  # an adapter runs on the grid it was trained on (DDIM) unless told
    for solver, want in ((None, "ddim"), ("own", "ddpm")):
        with accelerate(ddpm, tmp_path / "pcm", solver=solver) as h:
            assert h.sampler.grid.solver == want
        assert not lora.has_lora(ddpm.diffusion.unet)


def test_bad_input(tmp_path):
    policy = build_policy("DDIM", 16, 10)
    with pytest.raises(ValueError, match="neither a sampler name"):
        accelerate(policy, "fast-please")
    with pytest.raises(ValueError, match="uses a LoRA adapter"):
        accelerate(policy, "pcm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="missing adapter.safetensors"):
        accelerate(policy, tmp_path / "empty")
    with pytest.raises(PolicyFolderError, match="DiffusionPolicy"):
        accelerate(torch.nn.Linear(2, 2), "taa")
    assert HOOK not in vars(policy.diffusion) and not lora.has_lora(policy.diffusion.unet)


@pytest.mark.slow
def test_lerobots_own_eval_on_gym_pusht_gives_the_same_episodes():
    """lerobot's own ``eval_policy`` on gym-pusht (state + keypoints), unchanged: the accelerated policy at tol 0
    gives the same per-episode rewards as the policy's own sampler on the same seeds."""
    pytest.importorskip("gym_pusht")
    from lerobot.envs.configs import PushtEnv
    from lerobot.envs.factory import make_env, make_env_pre_post_processors
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.scripts.lerobot_eval import eval_policy

    policy = build_policy("DDIM", 16, 10, n_action_steps=8)
    stats = {k: {"min": torch.zeros(d), "max": torch.full((d,), 512.0)}
             for k, d in (("observation.state", 2), ("observation.environment_state", 16), ("action", 2))}
    pre, post = make_pre_post_processors(policy.config, dataset_stats=stats)
    env_cfg = PushtEnv(obs_type="environment_state_agent_pos", episode_length=40)
    env = next(iter(next(iter(make_env(env_cfg, n_envs=2).values())).values()))
    env_pre, env_post = make_env_pre_post_processors(env_cfg, policy.config)

    def evaluate():
        torch.manual_seed(0)
        with torch.no_grad():
            info = eval_policy(env, policy, env_pre, env_post, pre, post, n_episodes=4, start_seed=10)
        return [(e["seed"], e["sum_reward"], e["max_reward"]) for e in info["per_episode"]]

    ref = evaluate()
    with accelerate(policy, "taa", tol=0.0) as handle:
        got = evaluate()
        assert handle.chunks == 2 * 40 // 8  # 2 batches (of 2 envs each), 40 steps, a chunk every 8
    env.close()
    assert [s for s, *_ in got] == [s for s, *_ in ref] == [10, 11, 12, 13]
    for (_, r, m), (_, r_ref, m_ref) in zip(got, ref, strict=True):
        assert abs(r - r_ref) <= 1e-3 and abs(m - m_ref) <= 1e-4


def test_shipped_policy_and_adapter():
    """checkpoints/lerobot_pusht: lerobot's folder loads offline, its PCM adapter (pcm/) goes on it by the drop-in,
    and at tol 0 lerobot's own select_action gives the policy's own DDIM-50 actions (same seed); with one call
    (k=1) the adapter's jump is far closer to them than one Picard + TAA call (held out: 9.35 against 122.7 px,
    adapter.json; here on random observations)."""
    from pathlib import Path

    from pcm_policy.lerobot import adapter_beside
    from pcm_policy.lerobot.adapter import load_policy

    folder = Path(__file__).resolve().parents[2] / "checkpoints" / "lerobot_pusht"
    policy, _, post = load_policy(folder)
    assert sum(p.numel() for p in policy.parameters()) == 4_545_218 and adapter_beside(folder) == folder / "pcm"
    ref, _ = run(policy)
    with accelerate(policy, folder / "pcm", tol=0.0) as handle:
        assert handle.spec.name == "pcm" and handle.sampler.grid.solver == "ddim"
        got, _ = run(policy)
        assert handle.last_stats.converged
    assert (got - ref).abs().max().item() <= TOL
    with accelerate(policy, folder / "pcm", k=1) as handle:
        one, _ = run(policy)
        assert handle.calls == handle.chunks
    with accelerate(policy, "taa", k=1):
        taa_one, _ = run(policy)
    pcm_err, taa_err = ((x - ref).abs().mean().item() for x in (one, taa_one))
    assert 0 < pcm_err < taa_err, (pcm_err, taa_err)  # one call: the jump, closer than one Picard sweep
