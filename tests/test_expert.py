"""Scripted expert and the demo collector."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs.pusht import PushTEnv
from envs.pusht import geometry as G
from envs.pusht.expert import ScriptedExpert, _candidates, pose_cost, run_expert_episode
from pcm_policy.data.replay_buffer import ReplayBuffer

ROOT = Path(__file__).resolve().parents[1]


def test_candidates_and_pose_cost():
    assert len(_candidates()) == 168
    assert pose_cost(*G.GOAL_POSE) == pytest.approx(0.0, abs=1e-9)
    assert pose_cost(G.GOAL_POSE[0] + 3, G.GOAL_POSE[1], G.GOAL_POSE[2]) == pytest.approx(9.0, abs=1e-3)


def test_expert_episode_succeeds_and_replays_exactly():
    ep = run_expert_episode(1, success_coverage=0.97, max_steps=250)
    assert ep["success"] and ep["max_coverage"] >= 0.97
    assert ep["action"].dtype == np.float32 and ep["keypoint"].shape == (ep["steps"], 9, 2)
    env = PushTEnv(legacy=False)
    obs, info = env.reset(seed=1)
    np.testing.assert_allclose(ep["state"][0], [*info["pos_agent"], *info["block_pose"]], rtol=1e-6)
    for a in ep["action"]:
        obs, r, term, trunc, info = env.step(a.astype(np.float64))
    assert info["coverage"] >= 0.97  # replaying the stored float32 actions reproduces the episode


def test_plan_is_deterministic():
    env = PushTEnv(legacy=False)
    env.reset(seed=4)
    a, b = ScriptedExpert().plan(env), ScriptedExpert().plan(env)
    np.testing.assert_array_equal(np.array(a.targets), np.array(b.targets))


@pytest.mark.slow
def test_collect_demos_resumes_without_duplicates(tmp_path):
    out = tmp_path / "demos.zarr"
    cmd = [sys.executable, str(ROOT / "scripts/collect_demos.py"), "--out", str(out), "--workers", "1",
           "--seed-start", "5"]
    subprocess.run([*cmd, "--episodes", "1"], check=True, capture_output=True)
    subprocess.run([*cmd, "--episodes", "2"], check=True, capture_output=True)
    buf = ReplayBuffer.open(out)
    assert buf.n_episodes == 2 and buf.episode_meta("seed").tolist() == [5, 6]
    assert set(buf.keys()) == {"state", "keypoint", "action", "n_contacts"}
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["episodes"] == 2 and summary["steps"] == buf.n_steps


@pytest.mark.slow
def test_collect_demos_refuses_evaluation_seeds(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts/collect_demos.py"), "--out", str(tmp_path / "x.zarr"),
                        "--episodes", "1", "--workers", "1", "--seed-start", "100000"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "evaluation seed" in r.stderr + r.stdout


@pytest.mark.slow
def test_collect_demos_skips_evaluation_seeds(tmp_path):
    out = tmp_path / "d.zarr"
    subprocess.run([sys.executable, str(ROOT / "scripts/collect_demos.py"), "--out", str(out), "--episodes", "2",
                    "--workers", "1", "--seed-start", "99999"], check=True, capture_output=True, timeout=120)
    assert ReplayBuffer.open(out).episode_meta("seed").tolist() == [99999, 100050]
