"""DAgger relabelling: `collect_demos.py --relabel` (pcm_policy/relabel.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.pusht import PushTEnv
from envs.pusht import geometry as G
from pcm_policy.data.replay_buffer import ReplayBuffer
from pcm_policy.pusht.checkpoint import load_policy, save_policy
from pcm_policy.pusht.normalizer import NormalizerDict
from pcm_policy.pusht.policy import DiffusionPolicy, PolicyConfig
from pcm_policy.pusht.relabel import flatten_state, policy_prefix, takeover_chunks, unflatten_state
from pcm_policy.sampling import make_sampler

ROOT = Path(__file__).resolve().parents[1]
SEED, MAX_CHUNKS = 7, 2
SCHEMA = {"state": (5,), "keypoint": (9, 2), "action": (2,), "n_contacts": (1,)}


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("relabel")
    torch.manual_seed(0)
    policy = DiffusionPolicy(PolicyConfig(unet_size="small", unet={"down_dims": [16, 32, 64]}))
    lo, hi = np.zeros((1, 20)), np.full((1, 20), 512.0)  # untrained, but acting inside the workspace
    policy.normalizer = NormalizerDict.fit({"obs": np.concatenate([lo, hi]), "action": np.array([[0, 0], [512, 512]])})
    ckpt = save_policy(policy, tmp / "tiny")
    out = tmp / "dagger.zarr"
    cmd = [sys.executable, str(ROOT / "scripts/collect_demos.py"), "--relabel", str(ckpt), "--out", str(out),
           "--workers", "1", "--seed-start", str(SEED), "--max-chunks", str(MAX_CHUNKS)]
    for n in (1, 2):  # the second run resumes the first
        r = subprocess.run([*cmd, "--episodes", str(n)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
    return ckpt, out


@pytest.mark.slow
def test_relabel_store_has_the_demo_schema(collected):
    _, out = collected
    buf = ReplayBuffer.open(out)
    assert buf.n_episodes == 2 and set(buf.keys()) == set(SCHEMA)
    for key, shape in SCHEMA.items():
        assert buf[key][:].dtype == np.float32 and buf[key][:].shape == (buf.n_steps, *shape)
    assert {"seed", "takeover_step", "takeover_state"} <= set(buf.meta_keys())
    assert buf.episode_meta("takeover_state").shape == (2, 10)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["episodes"] == 2 and summary["steps"] == buf.n_steps and summary["max_chunks"] == MAX_CHUNKS


@pytest.mark.slow
def test_resume_does_not_duplicate_seeds(collected):
    _, out = collected
    seeds = ReplayBuffer.open(out).episode_meta("seed").tolist()
    failed = json.loads(out.with_suffix(".attempts.json").read_text())["failed"]
    assert len(set(seeds)) == 2 and not set(seeds) & set(failed)
    assert sorted(seeds) == seeds and seeds[0] == SEED  # in order from --seed-start


@pytest.mark.slow
def test_segment_starts_at_takeover_and_replays_to_success(collected):
    ckpt, out = collected
    buf = ReplayBuffer.open(out)
    policy = load_policy(ckpt)
    sampler = make_sampler("ddim-k", policy.noise_scheduler, k=10)
    for i, seed in enumerate(buf.episode_meta("seed").tolist()):
        ep = buf.get_episode(i)
        # the policy prefix is deterministic: recompute the takeover state
        pre = policy_prefix(policy, sampler, seed, takeover_chunks(seed, MAX_CHUNKS))
        assert pre["steps"] == buf.episode_meta("takeover_step")[i] >= 1
        np.testing.assert_array_equal(buf.episode_meta("takeover_state")[i], flatten_state(pre["physics_state"]))
        env = pre["env"]
        x, y, th = env.block_pose
        np.testing.assert_array_equal(ep["state"][0], np.float32([*env.agent.position, x, y, th]))
        np.testing.assert_allclose(ep["keypoint"][0], G.keypoints(env.block_pose), rtol=1e-6)
        assert ep["n_contacts"][0, 0] == pre["n_contacts"]
        # replay the stored float32 actions from the takeover state in a fresh env
        env = PushTEnv(legacy=False, render_mode=None)
        env.reset(seed=seed)
        env.set_physics_state(*unflatten_state(buf.episode_meta("takeover_state")[i]))
        for row, a in zip(ep["state"], ep["action"], strict=True):
            np.testing.assert_allclose(row, np.float32([*env.agent.position, *env.block_pose]), rtol=1e-6)
            *_, info = env.step(a.astype(np.float64))
        assert info["coverage"] >= 0.97
