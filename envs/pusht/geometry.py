"""Constants and pure geometry of PushT (no physics, no rendering).

Everything here is in the reference's pixel frame: a 512 x 512 square, y pointing down.
"""

from __future__ import annotations

import math

import numpy as np

WINDOW_SIZE = 512
AGENT_RADIUS = 15.0
GOAL_POSE = (256.0, 256.0, math.pi / 4)
SUCCESS_THRESHOLD = 0.95
T_AREA = 6300.0

# The T in its body frame: the bar on top (y in [0, 30]) and the stem hanging toward +y.
BAR = ((-60.0, 30.0), (60.0, 30.0), (60.0, 0.0), (-60.0, 0.0))
STEM = ((-15.0, 30.0), (-15.0, 120.0), (15.0, 120.0), (15.0, 30.0))
# The reference's quirks (Diffusion Policy reference): moment counts the bar twice, CoG is the
# unweighted mean of the two shape centroids.
BLOCK_MOMENT = 3000.0
BLOCK_COG = (0.0, 45.0)

# The 9 block keypoints in the body frame, in the reference order. The lowdim
# observation is [x0, y0, ..., x8, y8, agent_x, agent_y].
BLOCK_KEYPOINTS = np.array(
    [
        (9.269787, 90.040974),
        (-60.983472, -1.18673),
        (60.912756, -1.393364),
        (-0.270503, 25.543625),
        (-14.064928, 122.815854),
        (39.002739, 32.857404),
        (-39.966414, 32.729655),
        (-16.824344, 62.863179),
        (23.541461, -1.700288),
    ]
)

# How far past the 512 x 512 window a block point (keypoint or body origin) can be: the block moves only
# while the pusher (centre within the window for actions in the action space) touches it, so every block
# point is within AGENT_RADIUS + 143.4 (the largest keypoint/origin-to-T-vertex distance) of a pusher
# position, and the walls only push it further out until it clears them. 170 leaves slack for penetration.
# Pushing the block into a wall does drive it through (keypoints reached 143 px past the window in stress runs).
BLOCK_REACH = 170.0

WALLS = (((5, 506), (5, 5)), ((5, 5), (506, 5)), ((506, 5), (506, 506)), ((5, 506), (506, 506)))


def rotation(theta: float) -> np.ndarray:
    """2-D rotation matrix (same formula in y-down screen coordinates, as pymunk uses)."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def to_world(points, pose) -> np.ndarray:
    """Map body-frame points (N, 2) to world coordinates for pose (x, y, theta)."""
    x, y, theta = pose
    return np.asarray(points, dtype=np.float64) @ rotation(theta).T + np.array([x, y])


def keypoints(pose) -> np.ndarray:
    """World coordinates (9, 2) of the block keypoints at `pose`."""
    return to_world(BLOCK_KEYPOINTS, pose)


def _clip(subject: list, a, b) -> list:
    """One Sutherland-Hodgman pass: keep the part of `subject` left of edge a->b (clockwise boxes)."""
    out = []
    ex, ey = b[0] - a[0], b[1] - a[1]

    def side(p):
        return ex * (p[1] - a[1]) - ey * (p[0] - a[0])

    n = len(subject)
    for i in range(n):
        p, q = subject[i], subject[(i + 1) % n]
        sp, sq = side(p), side(q)
        if sp >= 0:
            out.append(p)
        if (sp >= 0) != (sq >= 0):
            t = sp / (sp - sq)
            out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
    return out


def _area(poly) -> float:
    s = 0.0
    for i in range(len(poly)):
        x0, y0 = poly[i]
        x1, y1 = poly[(i + 1) % len(poly)]
        s += x0 * y1 - x1 * y0
    return abs(s) / 2


def coverage_fast(pose, goal=GOAL_POSE) -> float:
    """Coverage area(goal & block) / area(T) by clipping the 2 x 2 box pairs.

    Equal to the env's shapely coverage to ~1e-12 and about 5x cheaper; the expert's planner uses it.
    """
    boxes_b = [to_world(s, pose).tolist() for s in (BAR, STEM)]
    boxes_g = [to_world(s, goal) for s in (BAR, STEM)]
    total = 0.0
    for g in boxes_g:
        # Orient each clip polygon consistently (positive signed area in y-down coordinates).
        gl = g.tolist()
        signed = sum(gl[i][0] * gl[(i + 1) % 4][1] - gl[(i + 1) % 4][0] * gl[i][1] for i in range(4))
        if signed < 0:
            gl = gl[::-1]
        for b in boxes_b:
            poly = b
            for i in range(4):
                poly = _clip(poly, gl[i], gl[(i + 1) % 4])
                if not poly:
                    break
            if len(poly) >= 3:
                total += _area(poly)
    return total / T_AREA
