"""Scripted PushT expert: simulated push primitives with replanning (docs/pusht.md, the expert).

Each plan scores 168 candidate pushes (a contact point on the T's outline, a push direction) by
running them in a second copy of the physics (the *planning world*), picks the one whose pose cost
J falls fastest, executes it open-loop, and plans again.

Glossary:
    J        pose cost in px^2: centroid offset^2 + rotation term, ~0 at the goal
    C0, C    J now / J at an outcome (floored at 0.25; 0.25 for a success)
    rate     (ln C0 - ln C) / T, the log-convergence rate of an outcome reached after T steps
    n_app    approach steps before the push starts at p0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import geometry as G
from .env import K_P, K_V, PushTEnv

R = G.AGENT_RADIUS
CENTROID = np.array([0.0, 40.714])
GOAL_CENTROID = np.array(G.GOAL_POSE[:2]) + G.rotation(G.GOAL_POSE[2]) @ CENTROID
POLAR = 1931.6
HULL = np.array([(-60, 0), (60, 0), (60, 30), (15, 120), (-15, 120), (-60, 30)], dtype=float)
DETOUR_CENTER = np.array([0.0, 50.0])
BOXES = ((-60.0, 60.0, 0.0, 30.0), (-15.0, 15.0, 30.0, 120.0))  # x0, x1, y0, y1 in the body frame
PROFILES = ((10.0, 10), (3.0, 8))  # (max speed px/step, push steps K): fast, slow
C_FLOOR = 0.25


def pose_cost(x: float, y: float, theta: float) -> float:
    """J: mean squared displacement over the T's area between block and goal."""
    c, s = math.cos(theta), math.sin(theta)
    cx = x - s * CENTROID[1] - GOAL_CENTROID[0]
    cy = y + c * CENTROID[1] - GOAL_CENTROID[1]
    return cx * cx + cy * cy + 2.0 * (1.0 - math.cos(theta - G.GOAL_POSE[2])) * POLAR


def dist_to_t(p) -> float:
    """Distance from a body-frame point to the T (0 inside)."""
    best = math.inf
    for x0, x1, y0, y1 in BOXES:
        dx = max(x0 - p[0], 0.0, p[0] - x1)
        dy = max(y0 - p[1], 0.0, p[1] - y1)
        best = min(best, math.hypot(dx, dy))
    return best


def _dist_to_hull(p) -> float:
    inside, best = True, math.inf
    n = len(HULL)
    for i in range(n):
        a, b = HULL[i], HULL[(i + 1) % n]
        ab, ap = b - a, p - a
        t = min(1.0, max(0.0, float(ap @ ab) / float(ab @ ab)))
        best = min(best, float(np.hypot(*(ap - t * ab))))
        if ab[0] * ap[1] - ab[1] * ap[0] < 0:
            inside = False
    return 0.0 if inside else best


def _rho_table(n_bins: int = 72, clearance: float = R + 8) -> np.ndarray:
    """rho(phi): radius from O along phi where the hull distance reaches `clearance`."""
    out = np.empty(n_bins + 1)
    for i in range(n_bins):
        u = np.array([math.cos(2 * math.pi * i / n_bins), math.sin(2 * math.pi * i / n_bins)])
        lo, hi = 0.0, 300.0
        for _ in range(40):  # bisection: the hull distance grows monotonically along the ray
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _dist_to_hull(DETOUR_CENTER + mid * u) < clearance else (lo, mid)
        out[i] = hi
    out[n_bins] = out[0]
    return out


def _candidates():
    """The 168 candidate pushes in the body frame: (start point p0, unit push direction d)."""
    edges = [  # (start, end, outward normal)
        ((-60, 0), (60, 0), (0, -1)),
        ((60, 0), (60, 30), (1, 0)), ((-60, 0), (-60, 30), (-1, 0)),
        ((15, 30), (60, 30), (0, 1)), ((-60, 30), (-15, 30), (0, 1)),
        ((15, 30), (15, 120), (1, 0)), ((-15, 30), (-15, 120), (-1, 0)),
        ((-15, 120), (15, 120), (0, 1)),
    ]
    out = []
    for a, b, n in edges:
        a, b, n = np.array(a, float), np.array(b, float), np.array(n, float)
        length = float(np.hypot(*(b - a)))
        n_int = round((length - 6) / 7.5)
        e = (b - a) / length
        for t in np.linspace(3, length - 3, n_int + 1):
            contact = a + e * t
            for deg in (-30, 0, 30):
                d = G.rotation(math.radians(deg)) @ -n
                p0 = contact - d * (R + 4)
                if dist_to_t(p0) >= R + 1:
                    out.append((p0, d))
    return out


def _chaikin(pts: np.ndarray, iters: int = 2) -> np.ndarray:
    for _ in range(iters):
        if len(pts) < 3:
            return pts
        q = 0.75 * pts[:-1] + 0.25 * pts[1:]
        r = 0.25 * pts[:-1] + 0.75 * pts[1:]
        pts = np.vstack([pts[:1], np.stack([q, r], 1).reshape(-1, 2), pts[-1:]])
    return pts


class _PlanningWorld(PushTEnv):
    track_contacts = False  # the planner never reads contacts; the callback costs 25% of plan time
    record_history = False  # the planner steps the space directly (and sets states thousands of times)


@dataclass
class Plan:
    targets: list  # world-frame targets, executed open-loop
    rate: float
    n_app: int
    success: bool


@dataclass
class ScriptedExpert:
    """Plans in its own PushTEnv copy. `success_coverage` is where the expert considers the job done
    (default 0.97: a margin above the env's 0.95, so demonstrations teach finishing)."""

    success_coverage: float = 0.97
    tie_band: float = 0.9
    planner: PushTEnv = field(default_factory=lambda: _PlanningWorld(obs_type="state", render_mode=None))

    def __post_init__(self):
        self.cands = _candidates()
        self.rho = _rho_table()
        self.dt, self.n_sub = self.planner.dt, self.planner.n_substeps

    # ---------------------------------------------------------------- planning world
    def _sim(self, target) -> None:
        """One control step in the planning world, with the env's exact arithmetic."""
        agent, space, dt = self.planner.agent, self.planner.space, self.dt
        tx, ty = target
        for _ in range(self.n_sub):
            (px, py), (vx, vy) = agent.position, agent.velocity
            agent.velocity = (vx + (K_P * (tx - px) + K_V * (0 - vx)) * dt,
                              vy + (K_P * (ty - py) + K_V * (0 - vy)) * dt)
            space.step(dt)

    def _outcome(self) -> tuple[float, bool]:
        """(C, success) at the planning world's current state."""
        pose = self.planner.block_pose
        j = pose_cost(*pose)
        if j < 12 and G.coverage_fast(pose) > self.success_coverage:
            return C_FLOOR, True
        return max(j, C_FLOOR), False

    # ---------------------------------------------------------------- paths
    def _approach(self, a: np.ndarray, p0: np.ndarray) -> np.ndarray:
        """Body-frame targets from agent position a to push start p0."""
        seg = a + np.linspace(0, 1, 25)[1:-1, None] * (p0 - a)
        if all(dist_to_t(p) >= R + 3 for p in seg):
            path = np.stack([a, p0])
        else:
            path = min((self._detour(a, p0, sign) for sign in (1, -1)), key=_length)
        path = _chaikin(path)
        cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))])
        length, out, v, s = cum[-1], [], 0.0, 0.0
        if length < 1e-9:
            return np.zeros((0, 2))
        while s < length:
            v = max(1.0, min(v + 5.0, 15.0, math.sqrt(25.0 + 10.0 * (length - s))))
            s = min(s + v, length)
            out.append([np.interp(s, cum, path[:, 0]), np.interp(s, cum, path[:, 1])])
        return np.array(out)

    def _rho(self, phi: float) -> float:
        x = (phi % (2 * math.pi)) / (2 * math.pi) * (len(self.rho) - 1)
        i = int(x)
        return float(self.rho[i] + (x - i) * (self.rho[min(i + 1, len(self.rho) - 1)] - self.rho[i]))

    def _detour(self, a, p0, sign: int) -> np.ndarray:
        o = DETOUR_CENTER
        ra, rb = float(np.hypot(*(a - o))), float(np.hypot(*(p0 - o)))
        pa, pb = math.atan2(a[1] - o[1], a[0] - o[0]), math.atan2(p0[1] - o[1], p0[0] - o[0])
        delta = (sign * (pb - pa)) % (2 * math.pi) * sign
        n = max(1, math.ceil(abs(delta) / math.radians(10)))
        pts = [a]
        for j in range(n + 1):
            f = j / n
            phi = pa + f * delta
            rad = max(self._rho(phi), ra + f * (rb - ra))
            pts.append(o + rad * np.array([math.cos(phi), math.sin(phi)]))
        pts.append(p0)
        return np.array(pts)

    # ---------------------------------------------------------------- plan
    def plan(self, env: PushTEnv) -> Plan:
        state = env.get_physics_state()
        bx, by, th = env.block_pose
        rot, pos = G.rotation(th), np.array([bx, by])
        a_local = rot.T @ (np.array(state[0]) - pos)
        c0 = max(pose_cost(bx, by, th), C_FLOOR)
        results = []
        for p0, d in self.cands:
            app = self._approach(a_local, p0)
            app_w = app @ rot.T + pos
            self.planner.set_physics_state(*state)
            for t in app_w:
                self._sim(t)
            after = self.planner.get_physics_state()
            n_app = len(app_w)
            best = (-math.inf, None, False)
            for vmax, k_max in PROFILES:
                self.planner.set_physics_state(*after)
                v, s, pushes = (5.0 if n_app else 0.0), 0.0, []
                for k in range(1, k_max + 1):
                    v = min(v + 5.0, vmax)
                    s += v
                    target = np.clip(rot @ (p0 + d * s) + pos, 0.0, 512.0)
                    pushes.append(target)
                    self._sim(target)
                    c, ok = self._outcome()
                    if ok:
                        rate = (math.log(c0) - math.log(c)) / (n_app + k)
                        if rate > best[0]:
                            best = (rate, list(pushes), True)
                        break
                    saved = self.planner.get_physics_state()
                    self._sim(target)  # hold branch: repeat the last push target once
                    c, ok = self._outcome()
                    rate = (math.log(c0) - math.log(c)) / (n_app + k + 1)
                    if rate > best[0]:
                        best = (rate, [*pushes, target], ok)
                    self.planner.set_physics_state(*saved)
            results.append(Plan([*app_w, *best[1]], best[0], n_app, best[2]))
        r_star = max(p.rate for p in results)
        if r_star > 0:
            near = [p for p in results if p.rate >= self.tie_band * r_star]
            return min(near, key=lambda p: (p.n_app, -p.rate))
        return max(results, key=lambda p: p.rate)


def _length(path) -> float:
    return float(np.hypot(*np.diff(path, axis=0).T).sum())


def run_expert_episode(seed: int, *, success_coverage: float = 0.97, max_steps: int = 300, legacy: bool = False,
                       expert: ScriptedExpert | None = None, start_state: tuple | None = None) -> dict:
    """Run the expert from the reset of `seed` until coverage >= success_coverage or max_steps.

    Returns arrays in the reference dataset schema (each row: the observation before the step and the
    action taken) plus `success` (the margin was reached), `first_success_step` (first env step whose
    coverage > 0.95) and `max_coverage`.

    `start_state` (a `PushTEnv.get_physics_state()` tuple): after the reset, write it with
    `set_physics_state` and start from there (DAgger takeover). The contacts of the step that led to it
    are unknown, so row 0's `n_contacts` is 0 then.
    """
    expert = expert or ScriptedExpert(success_coverage=success_coverage)
    env = PushTEnv(obs_type="state", legacy=legacy, render_mode=None)
    obs, info = env.reset(seed=seed)
    if start_state is not None:
        env.set_physics_state(*start_state)
        info = {**info, "coverage": env.coverage(), "n_contacts": 0}
    rows = {"state": [], "keypoint": [], "action": [], "n_contacts": []}
    first_success, max_cov, done = None, info["coverage"], info["coverage"] >= success_coverage
    while not done and len(rows["action"]) < max_steps:
        for target in expert.plan(env).targets:
            rows["state"].append([*env.agent.position, *env.block_pose])
            rows["keypoint"].append(G.keypoints(env.block_pose))
            rows["action"].append(target)
            rows["n_contacts"].append([info["n_contacts"]])
            obs, reward, terminated, _, info = env.step(np.asarray(target, dtype=np.float32).astype(np.float64))
            max_cov = max(max_cov, info["coverage"])
            if terminated and first_success is None:
                first_success = len(rows["action"])
            if info["coverage"] >= success_coverage or len(rows["action"]) >= max_steps:
                done = info["coverage"] >= success_coverage or len(rows["action"]) >= max_steps
                break
    out = {k: np.asarray(v, dtype=np.float32) for k, v in rows.items()}
    out.update(success=bool(info["coverage"] >= success_coverage), first_success_step=first_success,
               max_coverage=float(max_cov), steps=len(rows["action"]), seed=seed)
    return out
