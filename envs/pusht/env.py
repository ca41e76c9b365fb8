"""PushT: push a T-shaped block onto a fixed goal pose with a round pusher.

A gymnasium re-implementation of the Diffusion Policy reference environment (Chi et al. 2023), with
its physics, goal, reward, reset distribution and quirks (Chi et al. 2023; docs/pusht.md).

Action Space
    ``Box(0, 512, (2,), float64)``: the absolute target position of the pusher. A PD controller
    (k_p = 100, k_v = 20) drives the kinematic pusher toward it for 10 substeps of 0.01 s per step.
    Actions outside the box are applied as given, unclipped, as the reference does (its scripted demos
    command targets up to ~90 px outside); NaN or infinite actions raise ``ValueError``.

Observation Space (``obs_type``)
    - ``"state"``: ``[agent_x, agent_y, block_x, block_y, block_angle mod 2pi]`` (float64); block x, y
      is the body origin (the middle of the bar's outer edge), not the centre of gravity.
    - ``"keypoints"``: the 9 block keypoints then the agent position, 20 values (float64), the layout
      of the reference low-dimensional dataset.
    - ``"pixels"``: a (96, 96, 3) uint8 image, without the action marker.
    - ``"pixels_agent_pos"``: ``{"pixels": ..., "agent_pos": (2,)}``.

    Bounds (the true ones, nothing is clipped, so the values are the reference's): the pusher stays in
    [0, 512] (its PD response to a target is a convex combination of past targets); block points (keypoints,
    the body origin) can be pushed into and through the walls, up to ``BLOCK_REACH`` = 170 px past the window:
    [-170, 682]. Every observation lies in ``observation_space`` as long as the actions lie in
    ``action_space``; after actions outside it, or a ``set_physics_state`` with an unreachable state, they
    may not.

Rewards
    ``clip(coverage / 0.95, 0, 1)``, coverage = area(goal T & block T) / area(T).

Starting State
    Legacy recipe of the reference, NOT gymnasium's RNG: ``np.random.RandomState(seed)`` draws agent x, y
    in [50, 450), block x, y in [100, 400) and the angle ``randn() * 2pi - pi``. ``legacy=True`` (the
    reference evaluation setting) sets the block position before its angle, so pymunk's rotation about
    the centre of gravity (0, 45) moves the origin; ``legacy=False`` sets the angle first. Then one
    physics step of 0.01 s. ``options={"reset_to_state": [ax, ay, bx, by, angle]}`` goes through the same
    path (positions in [0, 512], the angle any finite number). Unseeded resets continue the legacy stream
    of the last seed (or of a seed drawn from the env's ``np_random`` when none was ever given), so
    successive resets differ, as gymnasium expects.

Episode End
    Terminated when coverage > 0.95 (strict). Never truncated by the env itself; wrap with a time
    limit (``gymnasium.make`` registers ``max_episode_steps=300``).

Arguments
    ``obs_type``, ``legacy`` (True), ``render_mode`` ("rgb_array" | "human" | None), ``render_size``
    (96, size of ``render()`` frames), ``render_action`` (True: red cross at the last action in
    rendered frames only), ``damping`` and ``block_cog`` (override the reference quirks).
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pymunk
import shapely.geometry as sg
from gymnasium import spaces

from . import geometry as G

OBS_TYPES = ("state", "keypoints", "pixels", "pixels_agent_pos")
SIM_HZ, CONTROL_HZ, K_P, K_V = 100, 10, 100.0, 20.0


def flatten_state(state: tuple) -> np.ndarray:
    """``get_physics_state()`` -> 10 float64: agent x, y, vx, vy, block x, y, angle, vx, vy, angular v."""
    (ax, ay), (avx, avy), (bx, by), angle, (bvx, bvy), w = state
    return np.array([ax, ay, avx, avy, bx, by, angle, bvx, bvy, w], dtype=np.float64)


def unflatten_state(v) -> tuple:
    """Inverse of ``flatten_state``: the arguments of ``set_physics_state``."""
    v = [float(x) for x in v]
    return (v[0], v[1]), (v[2], v[3]), (v[4], v[5]), v[6], (v[7], v[8]), v[9]


class PushTEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": CONTROL_HZ}
    track_contacts = True  # count contact points for info["n_contacts"]
    record_history = True  # keep what was done to the world since it was built: pickling replays it

    def __init__(
        self,
        obs_type: str = "state",
        legacy: bool = True,
        render_mode: str | None = "rgb_array",
        render_size: int = 96,
        observation_size: int = 96,
        render_action: bool = True,
        damping: float | None = None,
        block_cog: tuple[float, float] | None = None,
    ):
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None, 'rgb_array' or 'human', got {render_mode!r}")
        self._kwargs = dict(
            obs_type=obs_type, legacy=legacy, render_mode=render_mode, render_size=render_size,
            observation_size=observation_size, render_action=render_action, damping=damping,
            block_cog=block_cog,
        )
        self.obs_type, self.legacy, self.render_mode = obs_type, legacy, render_mode
        self.render_size, self.observation_size = render_size, observation_size
        self.render_action = render_action
        self.damping = 0.0 if damping is None else damping
        self.block_cog = G.BLOCK_COG if block_cog is None else tuple(block_cog)
        self.dt = 1.0 / SIM_HZ
        self.n_substeps = SIM_HZ // CONTROL_HZ

        self.action_space = spaces.Box(0.0, float(G.WINDOW_SIZE), shape=(2,), dtype=np.float64)
        self.observation_space = self._make_observation_space()
        self._legacy_rng: np.random.RandomState | None = None
        self.last_action = None
        self._renderer = None
        self._build_world()

    # ------------------------------------------------------------------ spaces
    def _make_observation_space(self):
        ws, reach = float(G.WINDOW_SIZE), G.BLOCK_REACH
        lo_b, hi_b = -reach, ws + reach  # block points: pushed into and through the walls (module doc)
        if self.obs_type == "state":
            return spaces.Box(np.array([0.0, 0.0, lo_b, lo_b, 0.0]), np.array([ws, ws, hi_b, hi_b, 2 * math.pi]),
                              dtype=np.float64)
        if self.obs_type == "keypoints":
            return spaces.Box(np.r_[np.full(18, lo_b), 0.0, 0.0], np.r_[np.full(18, hi_b), ws, ws], dtype=np.float64)
        size = self.observation_size
        pixels = spaces.Box(0, 255, shape=(size, size, 3), dtype=np.uint8)
        if self.obs_type == "pixels":
            return pixels
        return spaces.Dict({"pixels": pixels, "agent_pos": spaces.Box(0.0, ws, shape=(2,), dtype=np.float64)})

    # ------------------------------------------------------------------ physics
    def _build_world(self):
        self.space = space = pymunk.Space()
        space.gravity = (0, 0)
        space.damping = self.damping
        for a, b in G.WALLS:
            wall = pymunk.Segment(space.static_body, a, b, 2)
            space.add(wall)
        self.agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        self.agent.position = (256, 400)
        space.add(self.agent, pymunk.Circle(self.agent, G.AGENT_RADIUS))
        self.block = pymunk.Body(1.0, G.BLOCK_MOMENT)
        self.block.center_of_gravity = self.block_cog
        self.block.position = (256, 300)
        self.block.angle = 0.0
        shapes = [pymunk.Poly(self.block, verts) for verts in (G.BAR, G.STEM)]
        for s in shapes:
            s.filter = pymunk.ShapeFilter(mask=pymunk.ShapeFilter.ALL_MASKS())
        space.add(self.block, *shapes)
        self._n_contact_points = 0
        # (kind, values) since this world was built: "state" (_set_state), "physics" (set_physics_state),
        # "action" (a simulated step); None when the world is also changed behind the env's back.
        self._history = [] if self.record_history else None
        if not self.track_contacts:
            return
        if hasattr(space, "on_collision"):  # pymunk >= 7
            space.on_collision(None, None, post_solve=self._count_contacts)
        else:  # pymunk 6
            space.add_collision_handler(0, 0).post_solve = self._count_contacts

    def _count_contacts(self, arbiter, space, data):
        self._n_contact_points += len(arbiter.contact_point_set.points)

    def _set_state(self, state):
        """Place agent and block, then one physics step (the reference's `_set_state`)."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (5,) or not np.all(np.isfinite(state)) or np.any(state[:4] < 0) \
                or np.any(state[:4] > G.WINDOW_SIZE):
            raise ValueError(f"reset_to_state must be 5 finite numbers [ax, ay, bx, by, angle] with positions in "
                             f"[0, {G.WINDOW_SIZE}], got {state.tolist()}")
        self.agent.position = tuple(state[:2])
        if self.legacy:  # position first: pymunk then rotates about the CoG and moves the origin
            self.block.position = tuple(state[2:4])
            self.block.angle = float(state[4])
        else:
            self.block.angle = float(state[4])
            self.block.position = tuple(state[2:4])
        self.space.step(self.dt)
        self._record("state", tuple(float(v) for v in state))

    def set_physics_state(self, agent_pos, agent_vel, block_pos, block_angle, block_vel=(0, 0), block_ang_vel=0.0):
        """Write the full 10-number state directly (angle before position); no physics step."""
        self.agent.position, self.agent.velocity = tuple(agent_pos), tuple(agent_vel)
        self.block.angle = float(block_angle)
        self.block.position = tuple(block_pos)
        self.block.velocity, self.block.angular_velocity = tuple(block_vel), float(block_ang_vel)
        self._record("physics", (tuple(agent_pos), tuple(agent_vel), tuple(block_pos), float(block_angle),
                                 tuple(block_vel), float(block_ang_vel)))

    def _record(self, kind: str, values) -> None:
        if self._history is not None:
            self._history.append((kind, values))

    def get_physics_state(self) -> tuple:
        a, b = self.agent, self.block
        return (tuple(a.position), tuple(a.velocity), tuple(b.position), b.angle, tuple(b.velocity),
                b.angular_velocity)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._legacy_rng = np.random.RandomState(seed)
        elif self._legacy_rng is None:
            self._legacy_rng = np.random.RandomState(int(self.np_random.integers(0, 2**31 - 1)))
        self._build_world()
        self.last_action = None
        options = options or {}
        state = options.get("reset_to_state")
        if state is None:
            rs = self._legacy_rng
            state = [rs.randint(50, 450), rs.randint(50, 450), rs.randint(100, 400), rs.randint(100, 400),
                     rs.randn() * 2 * math.pi - math.pi]
        self._set_state(state)
        coverage = self.coverage()
        return self._get_obs(), self._get_info(coverage)

    def step(self, action):
        self._n_contact_points = 0
        if action is not None:
            action = np.asarray(action, dtype=np.float64)
            if action.shape != (2,):
                raise ValueError(f"action must have shape (2,), got {action.shape}")
            if not np.all(np.isfinite(action)):
                raise ValueError(f"action must be 2 finite numbers (the pusher's target x, y in px; the action "
                                 f"space is [0, 512]^2, values outside are applied unclipped), got {action}")
            self.last_action = action
            self._simulate(action)
        coverage = self.coverage()
        reward = float(np.clip(coverage / G.SUCCESS_THRESHOLD, 0.0, 1.0))
        terminated = bool(coverage > G.SUCCESS_THRESHOLD)
        obs, info = self._get_obs(), self._get_info(coverage)
        if self.render_mode == "human":
            self.render()
        return obs, reward, terminated, False, info

    def _simulate(self, action: np.ndarray) -> None:
        target = pymunk.Vec2d(float(action[0]), float(action[1]))
        for _ in range(self.n_substeps):
            # PD law, integrated into the kinematic body's velocity, then one physics substep.
            acc = K_P * (target - self.agent.position) + K_V * (pymunk.Vec2d(0, 0) - self.agent.velocity)
            self.agent.velocity += acc * self.dt
            self.space.step(self.dt)
        self._record("action", (float(action[0]), float(action[1])))

    # ------------------------------------------------------------------ observations
    @property
    def block_pose(self) -> tuple[float, float, float]:
        return (self.block.position.x, self.block.position.y, self.block.angle)

    def coverage(self) -> float:
        """area(goal & block) / area(goal) with shapely, as the reference computes it."""
        goal = _shapely_t(G.GOAL_POSE)
        return goal.intersection(_shapely_t(self.block_pose)).area / goal.area

    def _get_obs(self):
        agent = np.array(self.agent.position, dtype=np.float64)
        if self.obs_type == "state":
            x, y, th = self.block_pose
            return np.array([agent[0], agent[1], x, y, th % (2 * math.pi)], dtype=np.float64)
        if self.obs_type == "keypoints":
            return np.concatenate([G.keypoints(self.block_pose).reshape(-1), agent])
        pixels = self._draw(self.observation_size, marker=False)
        if self.obs_type == "pixels":
            return pixels
        return {"pixels": pixels, "agent_pos": agent}

    def _get_info(self, coverage: float) -> dict:
        return {
            "pos_agent": np.array(self.agent.position),
            "vel_agent": np.array(self.agent.velocity),
            "block_pose": np.array(self.block_pose),  # raw angle, not wrapped
            "goal_pose": np.array(G.GOAL_POSE),
            "n_contacts": int(math.ceil(self._n_contact_points / self.n_substeps)),
            "coverage": float(coverage),
            "is_success": bool(coverage > G.SUCCESS_THRESHOLD),
        }

    # ------------------------------------------------------------------ rendering
    def _draw(self, size: int, marker: bool) -> np.ndarray:
        if self._renderer is None:
            from .render import Renderer  # pygame is imported only when something is drawn

            self._renderer = Renderer()
        action = self.last_action if (marker and self.render_action) else None
        return self._renderer.draw(self.agent.position, self.block_pose, size, action)

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array'.")
            return None
        frame = self._draw(self.render_size, marker=True)
        if self.render_mode == "human":
            self._renderer.show(self._draw(G.WINDOW_SIZE, marker=True), self.metadata["render_fps"])
            return None
        return frame

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ pickling
    # A copy must continue exactly as the original, also while the pusher touches the block. The world's
    # positions and velocities are not enough: the solver keeps hidden state between steps (cached contact
    # impulses for its warm start, the bias velocities of its position correction, the order of its contact
    # pairs), which pymunk neither exposes nor fully pickles (pymunk issue 181). The env is deterministic, so
    # it pickles what was done to the world since it was built (the reset state, set_physics_state calls and
    # the actions) and the copy replays it: bit-identical continuation. A world also changed directly (the
    # expert's planning world, ``record_history = False``) falls back to its 10-number physics state.
    def __getstate__(self):
        return {"kwargs": self._kwargs, "history": self._history, "physics": self.get_physics_state(),
                "n_contact_points": self._n_contact_points, "last_action": self.last_action,
                "legacy_rng": self._legacy_rng, "np_random": self._np_random}

    def __setstate__(self, state):
        self.__init__(**state["kwargs"])
        if state["history"] is None:
            self.set_physics_state(*state["physics"])
        for kind, values in state["history"] or []:
            if kind == "state":
                self._set_state(values)
            elif kind == "physics":
                self.set_physics_state(*values)
            else:
                self._simulate(np.asarray(values, dtype=np.float64))
        self._n_contact_points = state["n_contact_points"]
        self.last_action = state["last_action"]
        self._legacy_rng, self._np_random = state["legacy_rng"], state["np_random"]

def _shapely_t(pose) -> sg.MultiPolygon:
    return sg.MultiPolygon([sg.Polygon(G.to_world(s, pose)) for s in (G.BAR, G.STEM)])
