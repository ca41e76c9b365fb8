"""Benchmark the PushT env and the scripted expert; prints a JSON report.

    python scripts/bench_env.py                  # 50 expert episodes on seeds 200000-200049
    python scripts/bench_env.py --episodes 5     # quick run
    python scripts/bench_env.py --out outputs/bench_env.json

Measures, on one core (run it on an otherwise idle machine for figures to quote):
- env steps per second with the state observation and with the 96x96 pixels observation
  (random targets, a new one every 5 steps, so the agent moves and sometimes pushes the block);
- `render()` cost in ms at 96 px (the reference video size) and 512 px;
- the scripted expert on fresh seeds (200000.., disjoint from the demo seeds and the evaluation
  seeds 100000-100049): seconds per episode, success rate (the margin coverage reached within
  --max-steps, and coverage > 0.95 at some step), episode length mean / median / max.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from envs.pusht import PushTEnv  # noqa: E402
from envs.pusht.expert import ScriptedExpert, run_expert_episode  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv=None):
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=50, help="expert episodes (0 skips the expert)")
    p.add_argument("--seed-start", type=int, default=200000)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--success-coverage", type=float, default=0.97)
    p.add_argument("--legacy", action="store_true", help="legacy reset order (demos use False)")
    p.add_argument("--env-steps", type=int, default=3000, help="steps timed for the state observation")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--force", action="store_true", help="allow replacing files git tracks (results/)")
    args = p.parse_args(argv)
    from pcm_policy.io import check_not_shipped

    try:
        for _out in [args.out] if args.out else []:
            check_not_shipped(_out, args.force, "--force", "--out")
    except ValueError as _e:
        p.exit(2, f"error: {_e}\n")
    if args.episodes < 0 or args.env_steps < 10 or args.max_steps < 1:
        p.error("--episodes must be >= 0, --env-steps >= 10, --max-steps >= 1")
    if not 0 <= args.seed_start <= 2**32 - 1 - args.episodes:
        p.error(f"--seed-start must be in 0..2^32-1 for every episode (the env's reset seed), got {args.seed_start}")
    if not 0 < args.success_coverage <= 1:
        p.error(f"--success-coverage must be in (0, 1], got {args.success_coverage}")
    if args.seed_start < 100050 and args.seed_start + args.episodes > 100000:
        p.error("the seed range overlaps the evaluation seeds 100000-100049")
    return args


def _targets(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.repeat(rng.uniform(40, 472, size=(n // 5 + 1, 2)), 5, axis=0)[:n]


def steps_per_second(obs_type: str, n: int) -> float:
    env = PushTEnv(obs_type=obs_type, legacy=False, render_mode=None)
    env.reset(seed=0)
    targets = _targets(n)
    env.step(targets[0])  # warm-up (lazy imports, first draw)
    t0 = time.perf_counter()
    for a in targets:
        env.step(a)
    return n / (time.perf_counter() - t0)


def render_ms(size: int, n: int) -> float:
    env = PushTEnv(obs_type="state", legacy=False, render_mode="rgb_array", render_size=size)
    env.reset(seed=0)
    env.step(np.array([256.0, 256.0]))
    env.render()
    t0 = time.perf_counter()
    for _ in range(n):
        env.render()
    return 1000 * (time.perf_counter() - t0) / n


def _stats(x) -> dict:
    x = np.asarray(x, dtype=np.float64)
    if not len(x):
        return {}
    return {"mean": round(float(x.mean()), 3), "median": round(float(np.median(x)), 3),
            "max": round(float(x.max()), 3), "min": round(float(x.min()), 3)}


def bench_expert(args) -> dict:
    expert = ScriptedExpert(success_coverage=args.success_coverage)
    seeds = range(args.seed_start, args.seed_start + args.episodes)
    walls, steps, first, margin_ok, env_ok, failed = [], [], [], 0, 0, []
    for seed in tqdm(seeds, desc="expert", file=sys.stderr):
        t0 = time.perf_counter()
        ep = run_expert_episode(seed, success_coverage=args.success_coverage, max_steps=args.max_steps,
                                legacy=args.legacy, expert=expert)
        walls.append(time.perf_counter() - t0)
        steps.append(ep["steps"])
        margin_ok += ep["success"]
        if ep["first_success_step"] is not None:
            env_ok += 1
            first.append(ep["first_success_step"])
        if not ep["success"]:
            failed.append(seed)
    n = len(seeds)
    return {
        "seeds": [seeds.start, seeds.stop - 1], "episodes": n, "max_steps": args.max_steps,
        "success_coverage": args.success_coverage, "legacy": args.legacy,
        "success_rate": margin_ok / n, "success_rate_cov_gt_0.95": env_ok / n, "failed_seeds": failed,
        "steps": _stats(steps), "first_success_step": _stats(first),
        "seconds_per_episode": _stats(walls), "total_s": round(float(np.sum(walls)), 1),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    load0 = os.getloadavg()
    report = {
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                    **{name: _version(name) for name in ("pymunk", "pygame", "shapely")},
                    "loadavg_1m_start": round(load0[0], 2)},
        "env": {
            "state_steps_per_s": round(steps_per_second("state", args.env_steps), 1),
            "pixels_steps_per_s": round(steps_per_second("pixels", max(10, args.env_steps // 5)), 1),
            "render_ms_96": round(render_ms(96, 200), 3),
            "render_ms_512": round(render_ms(512, 50), 3),
        },
    }
    if args.episodes:
        report["expert"] = bench_expert(args)
    report["machine"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, args.out)
    return 0


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
