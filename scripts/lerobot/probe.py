"""Does a lerobot policy act on its observations? Open-loop probe on dataset frames (lerobot environment, CPU).

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv-lerobot/bin/python scripts/lerobot/probe.py \\
        runs/lerobot/diffusion_pusht_keypoints/checkpoints/004000 [more checkpoints...] \\
        --dataset runs/lerobot/pusht_keypoints_dataset --frames 48

On ``--frames`` random frames of the dataset (lerobot's own delta timestamps, its own preprocessor), with the same
x_T for every checkpoint and the policy's own sampler (``DiffusionModel.generate_actions``), per checkpoint:

  error       mean over frames of the mean Euclidean distance (action units: px for PushT) between the policy's
              ``n_action_steps`` actions and the demonstration's actions at those steps;
  hold still  the same distance for the chunk that repeats the current ``observation.state`` (PushT: the agent
              position): the error of a policy that does not move;
  swap KEY    the mean change of the chunk when KEY is taken from another frame (rows rolled by one), the rest
              kept: how much the policy listens to KEY.

and the range of every input after the preprocessor (a raw, unnormalised input shows up here). A trained PushT
policy has an error well under "hold still" and a clear ``swap observation.state``. Prints a table; exit 2 with
one line for a bad folder or dataset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="lerobot diffusion policy folders (or checkpoints/<step>)")
    p.add_argument("--dataset", required=True, help="the LeRobotDataset folder the policies were trained on")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.frames < 2:
        p.error("--frames must be >= 2 (a swap takes another frame's input)")
    return a


@torch.no_grad()
def probe(folder, raw: dict, noise: torch.Tensor) -> dict:
    """Figures of one policy folder on ``raw`` (unnormalised dataset batch with ``action`` (B, horizon, A))."""
    from pcm_policy.lerobot.adapter import load_policy

    policy, pre, post = load_policy(folder)
    cfg = policy.config
    keys = list(cfg.input_features)
    batch = pre({k: v.clone() for k, v in raw.items()})
    start = cfg.n_obs_steps - 1
    truth = raw["action"][:, start:start + cfg.n_action_steps]

    def chunk(b):
        return post(policy.diffusion.generate_actions({k: b[k] for k in keys}, noise=noise.clone()))

    def dist(x, y):
        return float((x - y).norm(dim=-1).mean(-1).mean())

    a = chunk(batch)
    out = {"error": dist(a, truth), "ranges": {k: (float(batch[k].min()), float(batch[k].max())) for k in keys}}
    state = raw.get("observation.state")
    if state is not None and state.shape[-1] == truth.shape[-1]:
        out["hold still"] = dist(state[:, -1:].expand_as(truth), truth)
    roll = torch.roll(torch.arange(len(a)), 1)
    for k in keys:
        b = dict(batch)
        b[k] = batch[k][roll]
        out[f"swap {k}"] = dist(chunk(b), a)
    return out


def main(argv=None) -> int:
    a = parse(argv)
    torch.set_num_threads(1)
    try:
        from lerobot.datasets.factory import resolve_delta_timestamps
        from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

        from pcm_policy.lerobot.adapter import LerobotDiffusion, PolicyFolderError, load_policy, resolve_policy_folder
        from pcm_policy.lerobot.task import _check_features
    except ImportError as e:
        from pcm_policy.lerobot import INSTALL_HINT

        print(f"error: lerobot is not installed in this Python ({e}); {INSTALL_HINT}", file=sys.stderr)
        return 2
    try:
        folders = [resolve_policy_folder(c) for c in a.checkpoints]
        first, _, _ = load_policy(folders[0])
        root = Path(a.dataset)
        if not (root / "meta" / "info.json").is_file():
            raise ValueError(f"{root} is not a LeRobotDataset folder (no meta/info.json)")
        meta = LeRobotDatasetMetadata(f"local/{root.name}", root=root)
        _check_features(LerobotDiffusion(first), meta.features, root)
        ds = LeRobotDataset(f"local/{root.name}", root=root, delta_timestamps=resolve_delta_timestamps(first.config,
                                                                                                      meta))
    except (PolicyFolderError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    g = torch.Generator().manual_seed(a.seed)
    idx = torch.randint(0, len(ds), (a.frames,), generator=g)
    items = [ds[int(i)] for i in idx]
    raw = {k: torch.stack([it[k] for it in items]) for k in [*first.config.input_features, "action"]}
    horizon, adim = first.config.horizon, first.config.action_feature.shape[0]
    noise = torch.randn(a.frames, horizon, adim, generator=g)
    for folder in folders:
        r = probe(folder, raw, noise)
        print(f"{folder}:")
        print("  " + ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k != "ranges"))
        print("  inputs after the preprocessor: " + ", ".join(f"{k} [{lo:.2f}, {hi:.2f}]"
                                                            for k, (lo, hi) in r["ranges"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
