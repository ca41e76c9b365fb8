"""Human teleoperation of PushT: the recording logic, and a pygame window that drives it.

The keys and row semantics are the reference demo script's (Diffusion Policy reference; docs/pusht.md):

- hover the mouse within 30 px of the blue agent to start; from then on the mouse position is the
  action (the agent's target) every control step, 10 Hz;
- SPACE held pauses (no step, nothing recorded); R retries (the episode is discarded and the same
  start state comes again); Q (or closing the window, or Esc) quits, discarding the unfinished episode;
- an episode ends, and is handed to the sink, when coverage > 0.95;
- each row pairs the observation BEFORE the step with the action taken: `state` = agent position +
  raw block pose, `keypoint` = the 9 block keypoints, `action` = the mouse target, `n_contacts` from
  the previous step's info, all float32 (the expert demos' schema); optionally `img` = the 96x96
  frame before the step, without the action marker, float32 0..255 as the reference dataset stores it.

`TeleopRecorder` is pure Python + the env (no display): feed it `mouse`, `press`, `release` and
`tick` events. `run_pygame` is the event loop that turns pygame events into those calls; it is the
only code here that opens a window.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from . import geometry as G
from .env import PushTEnv

START_RADIUS = 30.0  # the mouse must come this close to the agent before teleop starts (then latches)
KEYS = ("space", "r", "q")
ROW_KEYS = ("state", "keypoint", "action", "n_contacts")

Sink = Callable[[dict, dict], None]  # (episode arrays, {"seed": s, "start_state": ...}) -> None


class TeleopRecorder:
    """The teleop state machine. Not latched -> latched (recording) -> episode done (sink) -> next.

    `sink(episode, info)` receives each completed episode: a dict of float32 arrays with one row per
    recorded step, and `{"seed": seed, "steps": n, "coverage": c}`. `next_seed()` gives the seed of
    each new episode (a retry keeps the current seed). `start(seed, options)` may also be called
    directly, e.g. with `options={"reset_to_state": [...]}`.

    `tick()` advances one control period and returns what happened: "quit", "paused", "waiting"
    (not latched yet: `env.step(None)`, nothing simulated or recorded), "recorded" (one row, one
    step) or "done" (coverage > 0.95: the episode went to the sink and the next one started).
    """

    def __init__(self, env: PushTEnv, sink: Sink, next_seed: Callable[[], int] | None = None, *,
                 images: bool = False, image_size: int = 96, start_radius: float = START_RADIUS):
        self.env, self.sink, self.next_seed = env, sink, next_seed
        self.images, self.image_size, self.start_radius = images, image_size, start_radius
        self._renderer = None
        self.mouse_pos: np.ndarray | None = None
        self.paused = self.quit = False
        self.saved = self.discarded = 0
        self.seed: int | None = None
        self.options: dict | None = None
        self.rows: dict[str, list] = {}
        self.latched = False
        self.info: dict = {}
        self.last_action: np.ndarray | None = None

    # ------------------------------------------------------------------ events
    def start(self, seed: int | None = None, options: dict | None = None) -> None:
        """Begin a new episode from the reset of `seed` (next_seed() when None) or `options`."""
        if seed is None and not (options and "reset_to_state" in options):
            if self.next_seed is None:
                raise ValueError("start() needs a seed (or options with reset_to_state) when the "
                                 "recorder has no next_seed function")
            seed = int(self.next_seed())
        self.seed, self.options = seed, options
        _, self.info = self.env.reset(seed=seed, options=options)
        self.rows = {k: [] for k in (*ROW_KEYS, *(("img",) if self.images else ()))}
        self.latched = False
        self.last_action = None

    def mouse(self, pos) -> None:
        """The mouse moved to `pos` (window pixels = world coordinates, y down)."""
        self.mouse_pos = np.asarray(pos, dtype=np.float64).reshape(2)

    def press(self, key: str) -> None:
        key = _key(key)
        if key == "space":
            self.paused = True
        elif key == "r":  # retry: discard and restart from the same start state
            if self.rows.get("action"):
                self.discarded += 1
            self.start(self.seed, self.options)
        elif key == "q":
            if self.rows.get("action"):
                self.discarded += 1
            self.quit = True

    def release(self, key: str) -> None:
        if _key(key) == "space":
            self.paused = False

    def tick(self) -> str:
        if self.quit:
            return "quit"
        if self.seed is None and self.options is None:
            self.start()
        if self.paused:
            return "paused"
        action = None
        if self.mouse_pos is not None and (self.latched or self.agent_distance() < self.start_radius):
            self.latched = True
            action = self.mouse_pos.astype(np.float32)
            self._record(action)
        self.last_action = action
        step_action = None if action is None else action.astype(np.float64)
        _, _, terminated, _, self.info = self.env.step(step_action)
        if action is None:
            return "waiting"
        if terminated:  # coverage > 0.95
            episode = {k: np.asarray(v, dtype=np.float32) for k, v in self.rows.items()}
            self.sink(episode, {"seed": self.seed, "steps": len(self.rows["action"]),
                                "coverage": float(self.info["coverage"])})
            self.saved += 1
            self.start(None if self.next_seed is not None else self.seed,
                       None if self.next_seed is not None else self.options)
            return "done"
        return "recorded"

    # ------------------------------------------------------------------ helpers
    def agent_distance(self) -> float:
        if self.mouse_pos is None:
            return math.inf
        return float(np.hypot(*(self.mouse_pos - np.asarray(self.env.agent.position))))

    @property
    def n_rows(self) -> int:
        return len(self.rows.get("action", ()))

    def _record(self, action: np.ndarray) -> None:
        env = self.env
        pose = env.block_pose
        self.rows["state"].append([*env.agent.position, *pose])
        self.rows["keypoint"].append(G.keypoints(pose))
        self.rows["action"].append(action)
        self.rows["n_contacts"].append([self.info["n_contacts"]])
        if self.images:
            self.rows["img"].append(self.frame(self.image_size, marker=False))

    def frame(self, size: int = G.WINDOW_SIZE, marker: bool = True) -> np.ndarray:
        """(size, size, 3) uint8 picture of the current state; the red cross marks the last action."""
        if self._renderer is None:
            from .render import Renderer

            self._renderer = Renderer()
        action = self.last_action if marker else None
        return self._renderer.draw(self.env.agent.position, self.env.block_pose, size, action)

    def status(self) -> str:
        """One line: seed, episodes saved, step, coverage and what the user should do."""
        state = "QUIT" if self.quit else "PAUSED" if self.paused else \
            "recording" if self.latched else "hover the mouse over the blue agent to start"
        return (f"seed {self.seed}  saved {self.saved}  step {self.n_rows}  "
                f"coverage {self.info.get('coverage', 0.0):.3f}\n{state}")


def _key(key: str) -> str:
    key = str(key).lower()
    if key == " ":
        key = "space"
    if key not in KEYS:
        raise ValueError(f"unknown teleop key {key!r}; the keys are {KEYS}")
    return key


def run_pygame(recorder: TeleopRecorder, *, fps: float = 10.0, max_ticks: int | None = None,
               before_tick: Callable[[int], None] | None = None) -> TeleopRecorder:
    """Open a 512x512 window and drive `recorder` with the mouse and keys until Q (or `max_ticks`).

    The mouse position is read from MOUSEMOTION events, so synthetic events posted by
    `before_tick(i)` (called before the events of tick i are read; tests) work like real ones.
    `fps <= 0` runs unpaced. Returns the recorder.
    """
    import os

    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError as e:  # pragma: no cover - pygame is a declared dependency
        raise ImportError("teleop needs pygame: pip install pygame") from e
    keymap = {pygame.K_SPACE: "space", pygame.K_r: "r", pygame.K_q: "q", pygame.K_ESCAPE: "q"}
    pygame.display.init()
    pygame.font.init()
    try:
        window = pygame.display.set_mode((G.WINDOW_SIZE, G.WINDOW_SIZE))
        font = pygame.font.Font(None, 20)
        clock = pygame.time.Clock()
        if recorder.seed is None and recorder.options is None:
            recorder.start()
        ticks = 0
        while not recorder.quit and (max_ticks is None or ticks < max_ticks):
            if before_tick is not None:
                before_tick(ticks)
            for ev in pygame.event.get():
                if ev.type == pygame.QUIT:
                    recorder.press("q")
                elif ev.type == pygame.MOUSEMOTION:
                    recorder.mouse(ev.pos)
                elif ev.type == pygame.KEYDOWN and ev.key in keymap:
                    recorder.press(keymap[ev.key])
                elif ev.type == pygame.KEYUP and ev.key in keymap:
                    recorder.release(keymap[ev.key])
            if recorder.quit:
                break
            recorder.tick()
            ticks += 1
            frame = recorder.frame(G.WINDOW_SIZE, marker=True)
            window.blit(pygame.surfarray.make_surface(frame.transpose(1, 0, 2)), (0, 0))
            lines = recorder.status().split("\n")
            for i, line in enumerate(lines):
                window.blit(font.render(line, True, (0, 0, 0)), (12, 12 + 18 * i))
            pygame.display.set_caption("PushT teleop - " + "  ".join(lines))
            pygame.display.flip()
            if fps > 0:
                clock.tick(fps)
    finally:
        pygame.display.quit()
    return recorder
