r"""Picard Consistency Training of a LoRA adapter for the PushT base policy, then schedule tuning.

    python scripts/train_pct.py task=pusht
    python scripts/train_pct.py task=pusht base=runs/pusht_small_default/checkpoint out=/tmp/pcm
    python scripts/train_pct.py task=pusht out=checkpoints/pusht_pcm force=true   # replace the shipped adapter
    python scripts/train_pct.py task=pusht pct=paper    # the paper's recipe (plain Picard updates, K = 30)
    python scripts/train_pct.py task=pusht pct=smoke work_dir=/tmp/pct  # tiny end to end run

Three resumable stages under ``work_dir`` (re-running the same command continues where it stopped):
1. the trajectory store (``data_path``, zarr): N conditions, x_T, X* and the base Picard iterates;
2. PCT with the one training loop (``run_dir``: state.pt, log.jsonl, the EMA adapter in ``adapter/``);
3. schedule tuning on the held-out split; the EMA adapter, the chosen schedule, the metrics, the
   command and the config are written to ``out`` (adapter.safetensors + adapter.json), by default
   ``work_dir/adapter_tuned``.

A resume is announced; one under another config (``run_dir/config.json``; ``pct.tune`` and the output paths
aside) is refused. Nothing is written into files git tracks (the shipped ``checkpoints/pusht_pcm``)
unless ``force=true``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import hydra  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from pcm_policy.data import ReplayBufferError  # noqa: E402
from pcm_policy.io import check_not_shipped  # noqa: E402
from pcm_policy.lora import add_lora, lora_parameters  # noqa: E402
from pcm_policy.pusht.checkpoint import CheckpointError, load_policy, save_adapter_folder  # noqa: E402
from pcm_policy.pusht.pct_data import (  # noqa: E402
    TrajDataConfig,
    TrajDataError,
    action_distance,
    generate,
    load_trajectories,
    pixel_distance,
)
from pcm_policy.sampling import SamplerSpec, step_grid  # noqa: E402
from pcm_policy.training import LoopConfig, ResumeError, train  # noqa: E402
from pcm_policy.training import pct as P  # noqa: E402


def resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


def mean_s_per_step(log: Path) -> float | None:
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return sum(r["s_per_step"] for r in rows) / len(rows) if rows else None


@hydra.main(config_path="../configs", config_name="train_pct", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ReplayBufferError, ResumeError, ValueError) as e:  # one line, no traceback
        raise SystemExit(f"error: {e}") from None


def run(cfg: DictConfig) -> None:
    if int(cfg.threads) < 1:
        raise ValueError(f"threads must be >= 1, got {cfg.threads}")
    torch.set_num_threads(int(cfg.threads))
    pc = cfg.pct
    base, out = resolve(cfg.base), resolve(cfg.out)
    if not (base / "config.json").is_file():
        raise SystemExit(f"error: base checkpoint {base} not found; train it with python scripts/train_policy.py "
                         "task=pusht and copy its run_dir/checkpoint there, or pass base=FOLDER")
    try:
        policy = load_policy(base)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    command = "python scripts/train_pct.py " + " ".join(sys.argv[1:])
    dcfg = TrajDataConfig(**OmegaConf.to_container(pc.data))
    data_path = resolve(cfg.data_path)
    run_dir = resolve(cfg.run_dir or Path(cfg.work_dir) / "train")
    for name, path in (("out", out), ("run_dir", run_dir), ("data_path", data_path)):
        check_not_shipped(path, bool(cfg.force), "force=true", name)

    # 1. trajectory store
    try:
        generate(policy, data_path, dcfg, resolve(cfg.task.dataset))
        data = load_trajectories(data_path)
    except TrajDataError as e:
        raise SystemExit(f"error: {e}") from None
    tm = data["timing"]
    print(f"trajectories: {data_path} ({dcfg.n} conditions, {int((data['split'] == 1).sum())} held out); "
          f"{tm['chunks_s'] / max(1, tm.get('conditions', 0)):.3f} s/condition + {tm['conditions_s']:.0f} s "
          f"for the conditions (rollout seeds {data['rollout_seeds']['train'][:1]}...)")

    # 2. PCT
    add_lora(policy.model, rank=int(pc.lora.rank), alpha=float(pc.lora.alpha), target_modules=list(pc.lora.targets))
    grid, alpha = step_grid(policy.noise_scheduler, dcfg.num_steps, solver="ddim"), P.alpha_from_var(
        data["var_k"], float(pc.alpha_floor))
    batches = P.PCTBatches(data, int(pc.batch_size), k_max=pc.k_max)
    settings = dict(num_steps=dcfg.num_steps, safeguard=pc.tune.safeguard, init=dcfg.init)
    form = str(pc.get("form", "paradigms"))
    if pc.objective == "unrolled":  # through `iters` PCM iterations under the unroll spec (TAA included)
        ur = pc.unroll
        spec = SamplerSpec.from_dict(OmegaConf.to_container(ur.schedule)).replace(**settings)
        loss_fn = lambda b: P.unrolled_loss(policy.model_fn, b, grid, spec, int(ur.iters), int(ur.first),  # noqa: E731
                                            action_distance)
    elif pc.objective == "picard":
        spec = SamplerSpec.from_dict(OmegaConf.to_container(pc.val.schedule)).replace(**settings)
        loss_fn = lambda b: P.pct_loss(policy.model_fn, b, grid, alpha, form)  # noqa: E731
    else:
        raise SystemExit(f"error: pct.objective must be picard or unrolled, got {pc.objective!r}")
    px = pixel_distance(policy)
    val_fn = P.make_val_fn(lambda m: m.model_fn, grid, alpha, data, px, spec, int(pc.val.n), int(pc.val.k_max), form)
    config = OmegaConf.to_container(cfg, resolve=True)
    run_config = {k: v for k, v in config.items() if k not in ("threads", "force", "out", "run_dir", "work_dir")}
    run_config["pct"] = {k: v for k, v in config["pct"].items() if k != "tune"}

    def save_fn(model, step):  # the EMA adapter, with a provisional sampler spec until tuning
        save_adapter_folder(model, run_dir / "adapter", spec, extra={"step": abs(step), "tuned": False,
                                                                     "command": command, "config": config})

    loop = LoopConfig(**OmegaConf.to_container(pc.training))
    t0 = time.perf_counter()
    ema = train(policy, loss_fn, batches, loop, run_dir, save_fn, val_fn, params=lora_parameters(policy.model),
                desc="PCT", config=run_config)
    train_s = time.perf_counter() - t0

    # 3. schedule tuning on the held-out split
    val = (data["split"] == 1).nonzero().flatten()[: pc.tune.n]
    t0 = time.perf_counter()
    cands = P.candidates(list(pc.tune.hard), [list(r) for r in pc.tune.ramps], list(pc.tune.spaces),
                         list(pc.tune.get("anderson", [0])), **settings)
    chosen, metrics = P.tune_schedule(ema.model_fn, grid, data["cond"][val], data["x_T"][val],
                                      data["x_star"][val, -1], cands, int(pc.tune.k_max), px)
    metrics["timing"] = {"trajectories": tm, "train_s_this_call": train_s, "s_per_step": mean_s_per_step(
        run_dir / "log.jsonl"), "tune_s": time.perf_counter() - t0, "threads": int(cfg.threads)}
    metrics["data"] = {"path": str(data_path), "rollout_seeds": data["rollout_seeds"],
                       "held_out": len(val), "var_k": data["var_k"].tolist()}
    save_adapter_folder(ema, out, chosen, extra={"metrics": metrics, "command": command, "config": config,
                                                "base": str(base), "steps": loop.steps, "tuned": True})
    c, pic = metrics["chosen"], metrics["picard"]
    print(f"chosen {chosen.switch} taa={chosen.taa}: {c['distance'][0]:.2f} px at k=1, < 1 px at k={c['k_match']} "
          f"(Picard: k={pic['k_match']}); adapter at {out}")


if __name__ == "__main__":
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        print(__doc__)
    main()
