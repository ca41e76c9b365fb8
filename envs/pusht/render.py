"""Off-screen pygame drawing of PushT in the reference's style (Diffusion Policy reference; docs/pusht.md).

Import only when frames are needed; works headless (SDL dummy video driver).
"""

from __future__ import annotations

import os

import numpy as np

from . import geometry as G

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
try:
    import pygame
except ImportError as e:  # pragma: no cover - pygame is a hard dependency, kept optional here
    raise ImportError("Rendering PushT needs pygame: pip install pygame") from e

WHITE, GOAL = (255, 255, 255), (144, 238, 144)
AGENT, AGENT_LIGHT = (65, 105, 225), (78, 126, 255)
BLOCK, BLOCK_LIGHT = (119, 136, 153), (142, 163, 183)
WALL, MARKER = (211, 211, 211), (255, 0, 0)


class Renderer:
    def __init__(self):
        self.canvas = pygame.Surface((G.WINDOW_SIZE, G.WINDOW_SIZE))
        self.window = None
        self.clock = None

    def draw(self, agent_pos, block_pose, size: int, action=None) -> np.ndarray:
        """(size, size, 3) uint8 frame; a red cross marks `action` when given (videos only)."""
        c = self.canvas
        c.fill(WHITE)
        for s in (G.BAR, G.STEM):
            pygame.draw.polygon(c, GOAL, G.to_world(s, G.GOAL_POSE).tolist())
        for a, b in G.WALLS:
            _fat_segment(c, WALL, a, b, 2)
        for s in (G.BAR, G.STEM):
            pts = G.to_world(s, block_pose).tolist()
            pygame.draw.polygon(c, BLOCK_LIGHT, pts)
            for i in range(4):
                _fat_segment(c, BLOCK, pts[i], pts[(i + 1) % 4], 2)
        center = (float(agent_pos[0]), float(agent_pos[1]))
        pygame.draw.circle(c, AGENT, center, G.AGENT_RADIUS)
        pygame.draw.circle(c, AGENT_LIGHT, center, G.AGENT_RADIUS - 4)
        surf = c if size == G.WINDOW_SIZE else pygame.transform.smoothscale(c, (size, size))
        if action is not None:
            # Scaled by the actual frame size (the reference hard-codes 96, a bug at other sizes).
            x, y = (float(action[0]) * size / G.WINDOW_SIZE, float(action[1]) * size / G.WINDOW_SIZE)
            h = max(1, int(4 * size / 96))
            w = max(1, int(size / 96))
            pygame.draw.line(surf, MARKER, (x - h, y), (x + h, y), w)
            pygame.draw.line(surf, MARKER, (x, y - h), (x, y + h), w)
        return np.ascontiguousarray(pygame.surfarray.array3d(surf).transpose(1, 0, 2))

    def show(self, frame: np.ndarray, fps: int):
        if self.window is None:
            pygame.display.init()
            self.window = pygame.display.set_mode((G.WINDOW_SIZE, G.WINDOW_SIZE))
            self.clock = pygame.time.Clock()
        pygame.event.pump()
        self.window.blit(pygame.surfarray.make_surface(frame.transpose(1, 0, 2)), (0, 0))
        pygame.display.flip()
        self.clock.tick(fps)

    def close(self):
        if self.window is not None:
            pygame.display.quit()
            self.window = None


def _fat_segment(surf, color, a, b, radius):
    width = round(2 * radius)
    pygame.draw.line(surf, color, a, b, width)
    if width > 2:
        pygame.draw.circle(surf, color, a, radius)
        pygame.draw.circle(surf, color, b, radius)
