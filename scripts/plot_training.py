"""Plot a training run: loss and validation loss vs step, and (optionally) rollout scores of snapshots.

    python scripts/plot_training.py runs/pusht_small --evals results/snapshots/*.json --out results/training.png

`--evals` are `scripts/rollout.py --json` outputs of snapshot checkpoints; the step is read from the
checkpoint's config.json (`step`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_log(run: Path) -> list[dict]:
    rows = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[r["step"]] = r  # a resumed run may repeat steps: the last row wins
    return [rows[s] for s in sorted(rows)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--evals", type=Path, nargs="*", default=[])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--force", action="store_true", help="allow replacing files git tracks (results/)")
    a = p.parse_args(argv)
    from pcm_policy.io import check_not_shipped

    try:
        for _out in [a.out]:
            check_not_shipped(_out, a.force, "--force", "--out")
    except ValueError as _e:
        p.exit(2, f"error: {_e}\n")
    if not (a.run / "log.jsonl").exists():
        p.exit(2, f"error: {a.run / 'log.jsonl'} not found; pass a run folder of scripts/train_policy.py\n")
    rows = read_log(a.run)
    fig, axes = plt.subplots(1, 2 if a.evals else 1, figsize=(11 if a.evals else 6, 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss")
    val = [r for r in rows if "val_loss" in r]
    ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss (EMA)")
    ax.set(xlabel="step", ylabel="epsilon MSE", yscale="log", title=a.run.name)
    ax.legend()
    if a.evals:
        pts = []
        for f in a.evals:
            res = json.loads(f.read_text())
            ckpt = Path(res["args"]["checkpoint"]) / "config.json"
            pts.append((json.loads(ckpt.read_text())["step"], res["summary"]))
        pts.sort(key=lambda x: x[0])
        ax = axes[0, 1]
        ax.plot([s for s, _ in pts], [m["mean_score"] for _, m in pts], "o-", label="mean score")
        ax.plot([s for s, _ in pts], [m["success_rate"] for _, m in pts], "s-", label="success rate")
        ax.set(xlabel="step", ylim=(0, 1), title="rollouts (DDIM-50, validation seeds)")
        ax.legend()
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
