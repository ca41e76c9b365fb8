"""lerobot's own evaluation loop on gym-pusht, with the policy sampling through this package's drop-in.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv-lerobot/bin/python scripts/lerobot/eval_accelerated.py \\
        checkpoints/lerobot_pusht --sampler pcm --k 2 \\
        --episodes 50 --out runs/lerobot/eval/pcm_k2

What ``lerobot-eval --env.type=pusht --env.obs_type=environment_state_agent_pos`` does (``scripts/lerobot/eval.sh``):
lerobot's ``make_env``, its processors, ``set_seed(--seed)`` and its ``eval_policy_all`` (episode i seeded
``--seed + i``, per-episode max reward and success), with one change: ``pcm_policy.lerobot.dropin.accelerate``
makes the policy's ``select_action`` sample every chunk with ``--sampler`` (``own``: lerobot's own sampler, no
drop-in). lerobot-eval's policy loading would fetch the vision backbone's ImageNet weights; this loads the folder
offline (``pcm_policy.lerobot.adapter.load_policy``). Writes OUT/eval_info.json (lerobot's dict, plus "sampler",
its "spec" and "calls_per_chunk", the mean batched model calls per chunk). At ``--tol 0`` a Picard / TAA / PCM
sampler gives the same episodes as ``own`` on the same seeds. Bad input: one line, exit 2, nothing written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pcm_policy.io import check_writable, write_json  # noqa: E402
from pcm_policy.sampling import SAMPLERS  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="lerobot diffusion policy folder (or checkpoints/<step>)")
    p.add_argument("--sampler", default="own", choices=["own", *SAMPLERS],
                   help="own: lerobot's own sampler; else a sampler of the core (pcm needs --adapter)")
    p.add_argument("--adapter", help="PCM adapter folder for --sampler pcm (default: CHECKPOINT/pcm, if shipped)")
    p.add_argument("--k", type=int, help="exactly k batched calls per chunk (steps for ddim-k / dpmsolver)")
    p.add_argument("--tol", type=float, help="Picard tolerance (the spec's default when not given)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=100000, help="first episode seed (lerobot-eval's --seed)")
    p.add_argument("--batch", type=int, help="vector envs (default min(episodes, 10), as eval.sh)")
    p.add_argument("--episode-length", type=int, default=300, help="steps (lerobot's PushT: 300)")
    p.add_argument("--out", required=True, help="output folder (must not exist)")
    a = p.parse_args(argv)
    problem = None
    if a.sampler == "pcm" and a.adapter is None:
        from pcm_policy.lerobot import adapter_beside

        found = adapter_beside(a.checkpoint)  # CHECKPOINT/pcm, shipped beside the policy
        a.adapter = None if found is None else str(found)
    if (a.sampler == "pcm") != (a.adapter is not None):
        problem = ("--adapter goes with --sampler pcm, and --sampler pcm needs --adapter (a PCM adapter folder; "
                   "none in CHECKPOINT/pcm)")
    elif a.sampler == "own" and (a.k is not None or a.tol is not None):
        problem = "--k / --tol set a sampler of the core; --sampler own is lerobot's own sampler"
    elif not 1 <= a.episodes <= 10_000 or a.episode_length < 1 or (a.batch is not None and a.batch < 1):
        problem = "--episodes must be in 1..10000, --episode-length and --batch >= 1"
    elif Path(a.out).exists():
        problem = f"{a.out} exists; remove it or pass another --out"
    if problem:
        p.exit(2, f"error: {problem}\n")
    a.batch = a.batch or min(a.episodes, 10)
    return a


def main(argv=None) -> int:
    a = parse(argv)
    import torch

    from pcm_policy.lerobot import require
    from pcm_policy.lerobot.adapter import PolicyFolderError, load_policy
    from pcm_policy.lerobot.dropin import accelerate

    check_writable(Path(a.out).parent, "--out's parent")
    try:
        PushtEnv = require("lerobot.envs.configs", "PushtEnv")
        policy, pre, post = load_policy(a.checkpoint)
    except (PolicyFolderError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from lerobot.envs.factory import make_env, make_env_pre_post_processors
    from lerobot.envs.utils import close_envs
    from lerobot.scripts.lerobot_eval import eval_policy_all
    from lerobot.utils.random_utils import set_seed

    overrides = {k: v for k, v in (("k", a.k), ("tol", a.tol)) if v is not None}
    try:
        handle = None if a.sampler == "own" else accelerate(policy, a.adapter or a.sampler, **overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    policy.eval()
    env_cfg = PushtEnv(obs_type="environment_state_agent_pos", episode_length=a.episode_length)
    envs = make_env(env_cfg, n_envs=a.batch)
    env_pre, env_post = make_env_pre_post_processors(env_cfg, policy.config)
    set_seed(a.seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        info = eval_policy_all(envs, policy, env_pre, env_post, pre, post, a.episodes, start_seed=a.seed)
    close_envs(envs)
    info["sampler"] = "own" if handle is None else handle.spec.label()
    info["spec"] = None if handle is None else handle.spec.to_dict()
    calls = handle is not None and handle.chunks > 0
    info["calls_per_chunk"] = handle.calls / handle.chunks if calls else None
    info["wall_s"] = time.perf_counter() - t0
    info["args"] = vars(a)
    write_json(Path(a.out) / "eval_info.json", info, indent=2)
    o = info["overall"]
    print(f"{info['sampler']}: mean max reward {o['avg_max_reward']:.3f}, success {o['pc_success']:.0f}%, "
          f"{a.episodes} episodes from seed {a.seed}, {info['wall_s']:.0f} s"
          + (f", {info['calls_per_chunk']:.2f} batched calls a chunk" if calls else ""))
    print(f"wrote {Path(a.out) / 'eval_info.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
