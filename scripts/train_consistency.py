r"""Consistency distillation of the base policy into a one-step student (the peer of PCM's first call).

    python scripts/train_consistency.py task=pusht                       # the compute-matched run: runs/cd_pusht
    python scripts/train_consistency.py task=pusht cd.training.steps=4 work_dir=/tmp/cd   # a smoke run

Re-running the same command resumes (``run_dir``: the loop's state.pt and the target network's target.pt); Ctrl-C
(SIGINT) saves and exits. The adapter folder at ``out`` holds the student (sampler ``consistency``, k = 1):
``load_sampler(out, policy.noise_scheduler, module=policy.model, k=K)`` samples with K calls.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import hydra  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from pcm_policy.device import check_threads  # noqa: E402
from pcm_policy.training.cli import run_job  # noqa: E402


def run(cfg: dict, command: str, root: Path = ROOT) -> dict:
    """The task's ``cd_task(cfg, root)`` then ``training.consistency.run_consistency``; returns its metrics."""
    from pcm_policy.training.consistency import run_consistency

    if cfg["task"]["name"] != "pusht":
        raise ValueError(f"task must be pusht (the one task with a cd_task), got {cfg['task']['name']!r}")
    from pcm_policy.pusht.task import cd_task

    task, data, val = cd_task(cfg, root)

    def resolve(p):
        return Path(p) if Path(p).is_absolute() else root / p

    config = {k: v for k, v in cfg.items() if k not in ("threads", "force", "out", "run_dir", "work_dir")}
    return run_consistency(task, cfg["cd"], data, out=resolve(cfg["out"]), run_dir=resolve(cfg["run_dir"]),
                           command=command, config=config, force=bool(cfg.get("force")), val=val,
                           extra={"base": str(cfg["base"])})  # as given: no machine's root


@hydra.main(config_path="../configs", config_name="train_consistency", version_base="1.3")
def main(cfg: DictConfig) -> None:
    cfg = OmegaConf.to_container(cfg, resolve=True)

    def job(command):
        torch.set_num_threads(check_threads(cfg["threads"], "threads"))
        return run(cfg, command)

    m = run_job("train_consistency.py", job)
    print(f"student: {m['val']} ({m['distance']}, {m['val_conditions']} held-out windows)")


if __name__ == "__main__":
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        print(__doc__)
    main()
