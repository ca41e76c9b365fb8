"""Collect PushT demonstrations with the scripted expert into a zarr replay buffer.

    python scripts/collect_demos.py --episodes 1000 --out data/pusht_expert.zarr --workers 2

DAgger relabelling (`pcm_policy/relabel.py`): with `--relabel CHECKPOINT` each seed is first driven by
the policy (DDIM re-discretised to `--ddim-k` steps, receding horizon) for a seeded random 1..`--max-chunks`
chunks from its reset; the expert then takes over from that exact physics state and only its segment is
stored (demo schema; meta `seed`, `takeover_step`, `takeover_state` = the 10-number physics state).

    python scripts/collect_demos.py --relabel checkpoints/pusht_base --episodes 400 \
        --out data/pusht_dagger.zarr --workers 2 --seed-start 500000

Resumable: re-running the same command continues where it stopped (seeds already stored or already
tried and failed are skipped). Only episodes that reach `--success-coverage` are kept. Seeds of the
evaluation set (100000-100049) are never used: a start inside it is refused, a range across it skips it.
Writes a JSON summary next to the store.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from envs.pusht.expert import ScriptedExpert, run_expert_episode  # noqa: E402
from pcm_policy.data.replay_buffer import ReplayBuffer  # noqa: E402

EVAL_SEEDS = range(100000, 100050)
_EXPERT = None
_POLICY = None  # (policy, sampler) in --relabel mode


def _init_worker(success_coverage, relabel=None, ddim_k=10):
    global _EXPERT, _POLICY
    _EXPERT = ScriptedExpert(success_coverage=success_coverage)
    if relabel is not None:  # load the policy once per worker
        import torch

        from pcm_policy.pusht.checkpoint import load_policy
        from pcm_policy.sampling import make_sampler

        torch.set_num_threads(1)
        policy = load_policy(relabel)
        _POLICY = (policy, make_sampler("ddim-k", policy.noise_scheduler, k=ddim_k))


def _work(job):
    seed, args = job
    t0 = time.perf_counter()
    if _POLICY is not None:
        from pcm_policy.pusht.relabel import relabel_episode

        ep = relabel_episode(*_POLICY, seed, max_chunks=args["max_chunks"], success_coverage=args["success_coverage"],
                             max_steps=args["max_steps"], legacy=args["legacy"], expert=_EXPERT)
    else:
        ep = run_expert_episode(seed, success_coverage=args["success_coverage"], max_steps=args["max_steps"],
                                legacy=args["legacy"], expert=_EXPERT)
    if ep["success"] and args["images"]:
        ep["img"] = replay_images(seed, ep["action"], args["legacy"])
    ep["wall_s"] = time.perf_counter() - t0
    return ep


def replay_images(seed: int, actions: np.ndarray, legacy: bool) -> np.ndarray:
    """96x96 frames of the observation before each action, by deterministic replay."""
    from envs.pusht import PushTEnv

    env = PushTEnv(obs_type="pixels", legacy=legacy, render_mode=None)
    obs, _ = env.reset(seed=seed)
    frames = []
    for a in actions:
        frames.append(obs)
        obs, *_ = env.step(a.astype(np.float64))
    return np.stack(frames).astype(np.float32)  # the reference schema stores float32 0..255


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv=None):
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, required=True, help="successful episodes wanted in the store")
    p.add_argument("--out", type=Path, required=True, help="zarr store to create or extend")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed-start", type=int, default=0)
    p.add_argument("--success-coverage", type=float, default=0.97,
                   help="the expert pushes on until this coverage (a margin above the env's 0.95)")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--legacy", action="store_true", help="legacy reset order (the demo script used False)")
    p.add_argument("--images", action="store_true", help="also store 96x96 img (re-rendered by replay)")
    p.add_argument("--relabel", type=Path, default=None, metavar="CHECKPOINT",
                   help="DAgger: the policy drives first, the expert's takeover segment is stored")
    p.add_argument("--max-chunks", type=int, default=20,
                   help="--relabel: policy chunks before the takeover, uniform in 1..N per seed")
    p.add_argument("--ddim-k", type=int, default=10, help="--relabel: the policy samples with DDIM in K steps")
    p.add_argument("--force", action="store_true", help="allow extending a store git tracks (a shipped data/ store)")
    args = p.parse_args(argv)
    if args.episodes < 1 or args.workers < 1 or args.max_steps < 1 or args.max_chunks < 1 or args.ddim_k < 1:
        p.error("--episodes, --workers, --max-steps, --max-chunks and --ddim-k must be >= 1")
    if args.images and args.relabel is not None:
        p.error("--images is not supported with --relabel (a segment starts from a written physics state)")
    if not 0.95 <= args.success_coverage < 1.0:
        p.error("--success-coverage must be in [0.95, 1)")
    if not 0 <= args.seed_start <= 2**32 - 1:
        p.error(f"--seed-start must be in 0..{2**32 - 1} (the env's reset seed), got {args.seed_start}")
    if args.ddim_k > 100:
        p.error(f"--ddim-k must be in 1..100 (the policy's training timesteps), got {args.ddim_k}")
    from pcm_policy.device import check_threads
    from pcm_policy.io import check_not_shipped

    try:
        args.workers = check_threads(args.workers, "--workers")  # processes, one per core at most
        check_not_shipped(args.out, args.force, "--force", "--out")
    except ValueError as e:
        p.error(str(e))
    if args.seed_start in EVAL_SEEDS:
        p.error(f"--seed-start {args.seed_start} is an evaluation seed (100000-100049); demonstrations must "
                "come from other seeds (collection skips the evaluation range)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    state_path = args.out.with_suffix(".attempts.json")
    summary_path = args.out.with_suffix(".json")
    if args.relabel is not None:  # a clear error now rather than in every worker
        import torch

        from pcm_policy.pusht.checkpoint import CheckpointError, load_policy

        torch.set_num_threads(1)  # workers are forked from here
        try:
            load_policy(args.relabel)
        except CheckpointError as e:
            raise SystemExit(f"error: --relabel: {e}") from e
    buf = ReplayBuffer.open_or_create(args.out)
    if buf.n_episodes and ("takeover_step" in buf.meta_keys()) != (args.relabel is not None):
        raise SystemExit(f"error: {args.out} holds {'relabelled' if args.relabel is None else 'expert'} episodes; "
                         f"{'add' if args.relabel is None else 'drop'} --relabel or choose another --out")
    done = set(buf.episode_meta("seed").tolist()) if buf.n_episodes else set()
    state = json.loads(state_path.read_text()) if state_path.exists() else {"failed": [], "wall_s": 0.0}
    tried = done | set(state["failed"])

    def seeds():  # never an evaluation seed: they are skipped
        s = args.seed_start
        while True:
            if s not in tried and s not in EVAL_SEEDS:
                yield s
            s += 1

    need = args.episodes - buf.n_episodes
    opts = dict(success_coverage=args.success_coverage, max_steps=args.max_steps, legacy=args.legacy,
                images=args.images, max_chunks=args.max_chunks)
    init = (args.success_coverage,) if args.relabel is None else (args.success_coverage, str(args.relabel),
                                                                   args.ddim_k)
    t0 = time.perf_counter()
    if need > 0:
        gen = seeds()
        with Pool(args.workers, _init_worker, init) as pool, \
                tqdm(total=args.episodes, initial=buf.n_episodes, desc="demos" if args.relabel is None
                     else "relabel") as bar:
            for ep in pool.imap(_work, ((next(gen), opts) for _ in iter(int, 1))):
                if ep["success"]:
                    data = {k: ep[k] for k in ("state", "keypoint", "action", "n_contacts", "img") if k in ep}
                    meta = {"seed": ep["seed"], "first_success_step":
                            -1 if ep["first_success_step"] is None else ep["first_success_step"]}
                    if args.relabel is not None:
                        meta.update(takeover_step=ep["takeover_step"], takeover_state=ep["takeover_state"])
                    buf.add_episode(data, meta=meta)
                    bar.update(1)
                else:
                    state["failed"].append(ep["seed"])
                    if args.relabel is not None:
                        state.setdefault("dropped", {})[str(ep["seed"])] = {
                            "reason": ep["reason"], "takeover_step": ep["takeover_step"],
                            "policy_coverage": round(ep["policy_coverage"], 4),
                            "max_coverage": round(ep["max_coverage"], 4)}
                bar.set_postfix(failed=len(state["failed"]), steps=ep["steps"])
                state["wall_s"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                _write_json(state_path, state)
                if buf.n_episodes >= args.episodes:
                    pool.terminate()
                    break
    lengths = buf.episode_lengths
    first = buf.episode_meta("first_success_step") if buf.n_episodes else np.zeros(0, np.int64)
    summary = {
        "episodes": int(buf.n_episodes), "steps": int(buf.n_steps),
        "attempts": int(buf.n_episodes + len(state["failed"])),
        "success_rate": buf.n_episodes / max(1, buf.n_episodes + len(state["failed"])),
        "mean_length": float(lengths.mean()) if buf.n_episodes else None,
        "median_length": float(np.median(lengths)) if buf.n_episodes else None,
        "max_length": int(lengths.max()) if buf.n_episodes else None,
        "mean_first_success_step": float(first[first >= 0].mean()) if (first >= 0).any() else None,
        "seeds": [int(buf.episode_meta("seed").min()), int(buf.episode_meta("seed").max())] if buf.n_episodes
        else None,
        "failed_seeds": state["failed"], "success_coverage": args.success_coverage,
        "max_steps": args.max_steps, "legacy": args.legacy, "images": args.images,
        "workers": args.workers, "wall_s": round(state["wall_s"], 1),
        "command": "python scripts/collect_demos.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    if args.relabel is not None:
        takeover = buf.episode_meta("takeover_step") if buf.n_episodes else np.zeros(0)
        summary.update(relabel=str(args.relabel), sampler=f"ddim-k k={args.ddim_k}", max_chunks=args.max_chunks,
                       mean_takeover_step=float(takeover.mean()) if len(takeover) else None,
                       dropped=state.get("dropped", {}))
    _write_json(summary_path, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "failed_seeds"}, indent=1))
    return 0


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
