"""Teleop recording logic, driven headless with synthetic mouse / key / tick events."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs.pusht import PushTEnv
from envs.pusht import geometry as G
from envs.pusht.expert import ScriptedExpert
from envs.pusht.teleop import TeleopRecorder, run_pygame
from pcm_policy.data.replay_buffer import ReplayBuffer
from pcm_policy.pusht.teleop_store import StoreSink

ROOT = Path(__file__).resolve().parents[1]
# Block 20 px right of the goal, agent beside it: a short push finishes the episode.
NEAR_GOAL = [330.0, 300.0, 276.0, 256.0, math.pi / 4]


def _recorder(seed=3, images=False):
    episodes = []
    rec = TeleopRecorder(PushTEnv(legacy=False, render_mode=None),
                         lambda ep, info: episodes.append((ep, info)), images=images)
    rec.start(seed)
    return rec, episodes


def _agent(rec):
    return np.array(rec.env.agent.position)


@pytest.fixture(scope="module")
def mouse_path():
    """Mouse targets that finish the NEAR_GOAL episode: the scripted expert's actions from there."""
    env = PushTEnv(legacy=False, render_mode=None)
    env.reset(options={"reset_to_state": NEAR_GOAL})
    expert, actions = ScriptedExpert(success_coverage=0.96), []
    while len(actions) < 80:
        for target in expert.plan(env).targets:
            actions.append(np.float32(target))
            *_, terminated, _, _ = env.step(actions[-1].astype(np.float64))
            if terminated:
                return np.array(actions)
    pytest.fail("the expert did not finish the near-goal episode")


def test_latches_only_within_30px_then_follows_anywhere():
    rec, _ = _recorder()
    start = rec.env.get_physics_state()
    assert rec.tick() == "waiting"  # no mouse yet
    rec.mouse(_agent(rec) + [30.5, 0.0])
    for _ in range(3):
        assert rec.tick() == "waiting"
    assert rec.n_rows == 0 and not rec.latched
    assert rec.env.get_physics_state() == start  # step(None) simulated nothing
    rec.mouse(_agent(rec) + [0.0, 29.0])
    assert rec.tick() == "recorded" and rec.latched and rec.n_rows == 1
    rec.mouse((40, 470))  # far away: still latched, the agent follows
    assert rec.tick() == "recorded" and rec.n_rows == 2
    assert np.allclose(rec.rows["action"][1], (40, 470))


def test_space_held_pauses_and_r_discards_and_restarts_same_seed():
    rec, episodes = _recorder(seed=5)
    start = rec.env.get_physics_state()
    rec.mouse(_agent(rec))
    for _ in range(3):
        rec.tick()
    rec.mouse((400, 100))
    rec.tick()
    moved = rec.env.get_physics_state()
    rec.press("space")
    assert [rec.tick() for _ in range(4)] == ["paused"] * 4
    assert rec.n_rows == 4 and rec.env.get_physics_state() == moved
    rec.release("space")
    assert rec.tick() == "recorded" and rec.n_rows == 5
    rec.press("r")
    assert rec.n_rows == 0 and not rec.latched and rec.discarded == 1 and rec.seed == 5
    assert rec.env.get_physics_state() == start and episodes == []
    rec.mouse((400, 100))  # retry needs a new hover before it latches
    assert rec.tick() == "waiting"


def test_q_quits_without_saving():
    rec, episodes = _recorder()
    rec.mouse(_agent(rec))
    rec.tick()
    rec.press("q")
    assert rec.tick() == "quit" and rec.quit and episodes == [] and rec.discarded == 1
    with pytest.raises(ValueError, match="unknown teleop key"):
        rec.press("x")


def test_completed_episode_rows_match_direct_replay(mouse_path, tmp_path):
    rec, episodes = _recorder(images=True)
    rec.start(options={"reset_to_state": NEAR_GOAL})
    rec.mouse(mouse_path[0])  # the expert's first target is 5 px from the agent: latches
    assert np.hypot(*(mouse_path[0] - _agent(rec))) < 30
    results = []
    for a in mouse_path:
        rec.mouse(a)
        results.append(rec.tick())
    assert results == ["recorded"] * (len(mouse_path) - 1) + ["done"]
    assert rec.saved == 1 and len(episodes) == 1 and rec.n_rows == 0  # the next episode began
    ep, info = episodes[0]
    n = len(mouse_path)
    assert info["steps"] == n and info["coverage"] > G.SUCCESS_THRESHOLD
    assert {k: v.shape for k, v in ep.items()} == {
        "state": (n, 5), "keypoint": (n, 9, 2), "action": (n, 2), "n_contacts": (n, 1), "img": (n, 96, 96, 3)}
    assert all(v.dtype == np.float32 for v in ep.values())

    # Each row = the observation BEFORE the step + the action taken (as the expert demos).
    env = PushTEnv(obs_type="pixels", legacy=False, render_mode=None)
    obs, info0 = env.reset(options={"reset_to_state": NEAR_GOAL})
    for t, a in enumerate(mouse_path):
        np.testing.assert_array_equal(ep["state"][t], np.float32([*env.agent.position, *env.block_pose]))
        np.testing.assert_array_equal(ep["keypoint"][t], np.float32(G.keypoints(env.block_pose)))
        np.testing.assert_array_equal(ep["img"][t], obs.astype(np.float32))
        np.testing.assert_array_equal(ep["n_contacts"][t], [info0["n_contacts"]])
        obs, _, term, _, info0 = env.step(a.astype(np.float64))
        assert term == (t == n - 1)
    np.testing.assert_array_equal(ep["action"], mouse_path)

    # The script's sink appends it to a zarr store with the episode seed, and picks unused seeds.
    sink = StoreSink(tmp_path / "human.zarr", seed_start=99999)
    assert sink.next_seed() == 99999
    sink({k: v for k, v in ep.items() if k != "img"}, {"seed": 99999, "steps": n, "coverage": 0.96})
    assert sink.next_seed() == 100050  # 99999 is used, 100000-100049 are evaluation seeds
    buf = ReplayBuffer.open(tmp_path / "human.zarr")
    assert buf.n_episodes == 1 and buf.episode_meta("seed").tolist() == [99999]
    got = buf.get_episode(0)
    for k in ("state", "keypoint", "action", "n_contacts"):
        np.testing.assert_array_equal(got[k], ep[k])
    assert (tmp_path / "human.json").exists()


def test_pygame_loop_headless_with_posted_events(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    import pygame

    rec, episodes = _recorder(seed=8)
    agent = tuple(int(v) for v in _agent(rec))

    def post(i):
        if i == 0:
            pygame.event.post(pygame.event.Event(pygame.MOUSEMOTION, pos=agent, rel=(0, 0),
                                                 buttons=(0, 0, 0)))
        if i == 2:
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_SPACE))
        if i == 4:
            pygame.event.post(pygame.event.Event(pygame.KEYUP, key=pygame.K_SPACE))
        if i == 6:
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_q))

    run_pygame(rec, fps=0, max_ticks=50, before_tick=post)
    # ticks 0, 1 record; 2, 3 paused; 4, 5 record; 6 quits.
    assert rec.quit and rec.discarded == 1 and episodes == [] and rec.n_rows == 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the display check is Linux's")
def test_script_without_a_display_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    r = subprocess.run([sys.executable, str(ROOT / "scripts/teleop.py"), "--out", str(tmp_path / "h.zarr")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "needs a display" in r.stderr and not (tmp_path / "h.zarr").exists()
