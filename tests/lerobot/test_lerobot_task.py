"""The lerobot Task's fields: episode-split, deterministic conditions from a LeRobotDataset folder, distances in
the dataset's action units."""

import pytest

pytest.importorskip("lerobot.policies.diffusion")  # not "lerobot": tests/lerobot/ itself is a namespace "lerobot"

import torch  # noqa: E402
from lerobot_build import ACTION, ENV, STATE, build_policy, save_policy  # noqa: E402

from pcm_policy.lerobot.task import episode_split, task_fields  # noqa: E402
from pcm_policy.sampling import make_sampler  # noqa: E402

EPISODES, FRAMES = 12, 5


def write_dataset(root, env_dim=16):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {STATE: {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
                ENV: {"dtype": "float32", "shape": (env_dim,), "names": [f"k{i}" for i in range(env_dim)]},
                ACTION: {"dtype": "float32", "shape": (2,), "names": ["x", "y"]}}
    ds = LeRobotDataset.create(repo_id="local/tiny", fps=10, root=root, features=features, use_videos=False)
    g = torch.Generator().manual_seed(0)
    for _ in range(EPISODES):
        for _ in range(FRAMES):
            ds.add_frame({STATE: torch.rand(2, generator=g).numpy(), ENV: torch.rand(env_dim, generator=g).numpy(),
                          ACTION: torch.rand(2, generator=g).numpy(), "task": "push"})
        ds.save_episode()
    ds.finalize()
    return root


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("task")
    policy = build_policy("DDIM", 16, 10)
    save_policy(policy, tmp / "policy")
    return task_fields(tmp / "policy", write_dataset(tmp / "data"), seed=1)


def test_episode_split():
    s = episode_split(list(range(25))[::-1] + [3])
    assert s["eval"] == [0, 10, 20] and s["val"] == [5, 15] and len(s["train"]) == 20
    assert episode_split(range(30))["eval"][:3] == s["eval"]  # appended episodes move nothing


def test_conditions_are_deterministic_and_split_by_episode(fields):
    cond, x_T = fields["conditions"]("eval", 100)
    assert cond.shape == (2 * FRAMES, 2 * (2 + 16)) and x_T.shape == (2 * FRAMES, 16, 2)  # episodes 0 and 10
    assert len(fields["conditions"]("val", 100)[0]) == FRAMES and len(fields["conditions"]("train", 100)[0]) == 45
    c3, x3 = fields["conditions"]("eval", 3)
    assert torch.equal(c3, cond[:3]) and torch.equal(x3, x_T[:3])  # the first n of a split, whatever n
    train, _ = fields["conditions"]("train", 100)
    assert not any(torch.equal(c, t) for c in cond for t in train)  # no eval frame in train
    assert fields["key"]["episodes"] == {"train": 9, "val": 1, "eval": 2}


def test_reference_and_distance(fields):
    cond, x_T = fields["conditions"]("val", 4)
    sampler = make_sampler("ddim", fields["scheduler"], num_steps=fields["num_steps"])
    ref, _ = sampler(fields["model_fn"], x_T, cond)
    d = fields["distance"](ref, ref)
    assert d.shape == (4,) and torch.equal(d, torch.zeros(4))
    out = ref.clone().requires_grad_(True)
    moved = out + torch.tensor([0.5, 0.0])  # half a normalised unit in x: 2 action units (min -3, max 5)
    dist = fields["distance"](moved, ref)
    assert torch.allclose(dist, torch.full((4,), 2.0), atol=1e-5)
    dist.sum().backward()
    assert out.grad is not None and out.grad.abs().sum() > 0
    assert fields["name"] == "lerobot" and "down_modules.0.0.cond_encoder.1" in fields["lora_targets"]


def test_bad_dataset(tmp_path):
    policy = build_policy("DDIM", 16, 10)
    save_policy(policy, tmp_path / "policy")
    with pytest.raises(ValueError, match="not a LeRobotDataset folder"):
        task_fields(tmp_path / "policy", tmp_path)
    write_dataset(tmp_path / "data", env_dim=18)
    with pytest.raises(ValueError, match="has shape \\(18,\\), the policy expects \\(16,\\)"):
        task_fields(tmp_path / "policy", tmp_path / "data")


def test_rollout_states_are_windows_of_the_policys_own_rollouts(tmp_path):
    from pcm_policy.lerobot.envpolicy import EnvPolicy
    from pcm_policy.lerobot.task import RolloutStates
    from pcm_policy.pusht.pct_data import rollout_windows
    from pcm_policy.pusht.rollout import run_rollouts

    save_policy(build_policy("DDIM", 16, 10), tmp_path / "policy")
    data = write_dataset(tmp_path / "data")
    ro = RolloutStates(fraction=0.5, per_episode=2, batch=2, max_steps=16)  # 2 chunks an episode, both kept
    with pytest.raises(ValueError, match="rollout states need a collector"):
        task_fields(tmp_path / "policy", data, rollouts=ro)
    f = task_fields(tmp_path / "policy", data, seed=1, rollouts=ro, rollout_windows=rollout_windows, progress=False)
    cond, x_T = f["conditions"]("train", 8)
    frames, fx = task_fields(tmp_path / "policy", data, seed=1)["conditions"]("train", 4)
    assert cond.shape == (8, frames.shape[1]) and torch.equal(cond[:4], frames) and torch.equal(x_T[:4], fx)
    env = EnvPolicy.from_folder(tmp_path / "policy")  # the rollouts the task ran: DDIM-T on seeds 400000, 400001
    seen = []
    run_rollouts(env, make_sampler("ddim", env.noise_scheduler, num_steps=10), [400000, 400001], max_steps=16,
                 on_chunk=lambda c, obs, out: seen.append(env.condition(obs)))
    seen = torch.cat(seen)
    assert len(seen) == 4 and all((seen - c).abs().amax(-1).min() < 1e-6 for c in cond[4:])
    assert not any(torch.equal(c, fr) for c in cond[4:] for fr in frames)
    val, _ = f["conditions"]("val", 4)  # its rollout rows come from seeds 450000 on
    assert not any((seen - c).abs().amax(-1).min() < 1e-6 for c in val[2:])
    again = task_fields(tmp_path / "policy", data, seed=1, rollouts=ro, rollout_windows=rollout_windows,
                        progress=False)
    assert torch.equal(again["conditions"]("train", 8)[0], cond) and f["key"]["rollouts"]["fraction"] == 0.5
    assert "rollouts" not in task_fields(tmp_path / "policy", data, seed=1)["key"]  # fraction 0: the old store key


def test_rollout_states_need_a_pushT_state_policy(tmp_path):
    from pcm_policy.lerobot.task import RolloutStates

    save_policy(build_policy("DDIM", 16, 10, image=True), tmp_path / "policy")
    with pytest.raises(ValueError, match="needs a state-only PushT policy.*task.rollouts.fraction=0"):
        task_fields(tmp_path / "policy", tmp_path, rollouts=RolloutStates(fraction=0.5))
    with pytest.raises(ValueError, match="must lie in"):
        RolloutStates(fraction=1.5)
