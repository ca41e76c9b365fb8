r"""Picard Consistency Training of a LoRA adapter, then schedule tuning: PushT, or an image model.

    python scripts/train_pct.py task=pusht      # the shipped recipe (pct=anytime): checkpoints/pusht_pcm
    python scripts/train_pct.py task=pusht base=runs/pusht_small_default/checkpoint out=/tmp/pcm
    python scripts/train_pct.py task=pusht pct=paper_full   # the paper's recipe (pcm_policy.paper): pusht_pcm_paper
    python scripts/train_pct.py task=pusht pct=smoke work_dir=/tmp/pct  # tiny end to end run
    python scripts/train_pct.py task=celeba     # pct=image_anytime on the LDM-CelebA layout (default: ldm_mnist)
    python scripts/train_pct.py task=sd task.model=/path/to/stable-diffusion-v1-4   # a user's real SD v1.4
    python scripts/train_pct.py task=celeba pct=image_anytime_taa retune=checkpoints/vision/ldm_mnist_pcm \
        out=runs/ldm_mnist_pcm_taa   # no training: the shipped adapter's schedule re-tuned with Picard + TAA rows
    torchrun --standalone --nproc_per_node=N scripts/train_pct.py task=pusht   # data-parallel, N processes (CPU)

Three stages under ``work_dir`` (re-running the same command continues where it stopped):
1. the trajectory store (``data_path``; ``pcm_policy.training.pct_data``): the task's N conditions and x_T,
   X* and the base Picard iterates (made per batch instead where they would not fit, e.g. real SD);
2. PCT with the one training loop (``run_dir``: state.pt, log.jsonl, the EMA adapter in ``adapter/``);
3. schedule tuning on the held-out split; the EMA adapter, the chosen schedule, the metrics, the
   command and the config are written to ``out`` (adapter.safetensors + adapter.json), by default
   ``work_dir/adapter_tuned``.

A resume is announced; one under another config (``run_dir/config.json``; ``pct.tune`` and the output paths
aside) is refused. Nothing is written into files git tracks (the shipped ``checkpoints/pusht_pcm``)
unless ``force=true``.

Under ``torchrun`` the N processes (gloo, CPU) share out the store's chunks and train data-parallel:
``pct.batch_size`` is the whole batch (it must be divisible by N), rank 0 alone writes; a stopped run resumes
with any number of processes (``training.distributed``).
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
from pcm_policy.training.distributed import check_divisible, env_world_size, init_from_env  # noqa: E402

TASKS = {"pusht": "pcm_policy.pusht.task", "celeba": "pcm_policy.vision.task", "sd": "pcm_policy.vision.task",
         "lerobot": "pcm_policy.lerobot.task"}


def run(cfg: dict, command: str, root: Path = ROOT) -> dict:
    """The task's ``pct_task(cfg, root)`` then the one driver, ``training.pct.run_pct``; returns its metrics. A
    ``pct.objective`` the core does not know (the paper's ``picard``) is looked up in ``pcm_policy.paper.pct``."""
    import importlib

    from pcm_policy.training.pct import OBJECTIVES, run_pct

    if cfg["pct"].get("objective") not in OBJECTIVES:  # the paper's one-update objective, "picard", registers itself
        importlib.import_module("pcm_policy.paper.pct")
    if cfg["task"]["name"] not in TASKS:
        raise ValueError(f"task must be {', '.join(TASKS)}, got {cfg['task']['name']!r}")
    check_divisible(cfg["pct"]["batch_size"], "pct.batch_size", env_world_size())  # before any work
    init_from_env("cpu")  # torchrun: join the process group (one process: nothing)
    kw = {}
    if cfg["task"]["name"] == "lerobot":  # its rollout states (if its config asks for them) come from PushT's env
        from pcm_policy.pusht.pct_data import rollout_windows

        kw["rollout_windows"] = rollout_windows
    task, data, extra = importlib.import_module(TASKS[cfg["task"]["name"]]).pct_task(cfg, root, **kw)

    def resolve(p):
        return Path(p) if Path(p).is_absolute() else root / p

    return run_pct(task, cfg["pct"], data, out=resolve(cfg["out"]), data_path=resolve(cfg["data_path"]),
                   run_dir=resolve(cfg.get("run_dir") or Path(cfg["work_dir"]) / "train"), command=command,
                   config=cfg, extra=extra, force=bool(cfg.get("force")),
                   retune=resolve(cfg["retune"]) if cfg.get("retune") else None)


@hydra.main(config_path="../configs", config_name="train_pct", version_base="1.3")
def main(cfg: DictConfig) -> None:
    cfg = OmegaConf.to_container(cfg, resolve=True)

    def job(command):
        torch.set_num_threads(check_threads(cfg["threads"], "threads"))
        run(cfg, command)

    run_job("train_pct.py", job, "interrupted; what each stage finished is kept (trajectory store, finished rollout "
                                 "batches)")


if __name__ == "__main__":
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        print(__doc__)
    main()
