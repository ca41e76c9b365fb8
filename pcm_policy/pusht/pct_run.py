"""One PushT PCT run: the trajectory store, PCT with the one training loop, schedule tuning, the adapter.

Called by ``scripts/train_pct.py task=pusht`` with the resolved hydra config as a plain dict (the
library never sees hydra). Losses, batches and tuning are the task-agnostic ``training.pct``; the
trajectory store and the distances are PushT's (``pct_data``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import paper
from ..io import check_not_shipped
from ..lora import add_lora, lora_parameters
from ..sampling import step_grid
from ..training import LoopConfig, train
from ..training import pct as P
from .checkpoint import load_policy, save_adapter_folder
from .pct_data import TrajDataConfig, action_distance, generate, load_trajectories, pixel_distance

__all__ = ["run_pct"]


def mean_s_per_step(log: Path) -> float | None:
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return sum(r["s_per_step"] for r in rows) / len(rows) if rows else None


def run_pct(cfg: dict, command: str, root: Path) -> dict:
    """One PushT PCT run from a resolved config dict (``scripts/train_pct.py task=pusht``): the trajectory
    store, training with the one loop, schedule tuning on the held-out split, the adapter folder at
    ``cfg["out"]``. Returns the metrics written to ``adapter.json``.

    Raises ValueError for bad settings, a missing or mismatched checkpoint (``CheckpointError``), a bad
    trajectory store (``TrajDataError``) or a shipped output without force, and ``ResumeError``."""
    def resolve(p) -> Path:
        p = Path(p)
        return p if p.is_absolute() else root / p

    pc = cfg["pct"]
    finetune = pc.get("finetune", "lora")
    if finetune not in ("lora", "full"):
        raise ValueError(f"pct.finetune must be lora or full, got {finetune!r}")
    base, out = resolve(cfg["base"]), resolve(cfg["out"])
    if not (base / "config.json").is_file():
        raise ValueError(f"base checkpoint {base} not found; train it with python scripts/train_policy.py "
                         "task=pusht and copy its run_dir/checkpoint there, or pass base=FOLDER")
    policy = load_policy(base)
    dcfg = TrajDataConfig(**pc["data"])
    data_path = resolve(cfg["data_path"])
    run_dir = resolve(cfg.get("run_dir") or Path(cfg["work_dir"]) / "train")
    for name, path in (("out", out), ("run_dir", run_dir), ("data_path", data_path)):
        check_not_shipped(path, bool(cfg.get("force")), "force=true", name)

    # 1. trajectory store
    generate(policy, data_path, dcfg, resolve(cfg["task"]["dataset"]))
    data = load_trajectories(data_path)
    tm = data["timing"]
    print(f"trajectories: {data_path} ({dcfg.n} conditions, {int((data['split'] == 1).sum())} held out); "
          f"{tm['chunks_s'] / max(1, tm.get('conditions', 0)):.3f} s/condition + {tm['conditions_s']:.0f} s "
          f"for the conditions (rollout seeds {data['rollout_seeds']['train'][:1]}...)")

    # 2. PCT
    grid = step_grid(policy.noise_scheduler, dcfg.num_steps, solver="ddim")
    jump = pc["objective"] == "jump"
    if jump:  # more (condition, x_T) pairs for the one-step jump, from the base model before the adapter
        extra = P.jump_draws_from_config(pc, policy.model_fn, grid, data, run_dir.parent)
    if finetune == "full":  # the paper's feature-space PCM: a separately fine-tuned full copy of the UNet
        params = list(paper.add_full_copy(policy).parameters())
    else:
        lo = pc["lora"]
        add_lora(policy.model, rank=int(lo["rank"]), alpha=float(lo["alpha"]), target_modules=list(lo["targets"]))
        params = lora_parameters(policy.model)
    alpha = P.alpha_from_var(data["var_k"], float(pc["alpha_floor"]))
    batches = (P.JumpBatches(data, int(pc["batch_size"]), extra) if jump
               else P.PCTBatches(data, int(pc["batch_size"]), k_max=pc.get("k_max")))
    settings = dict(num_steps=dcfg.num_steps, safeguard=pc["tune"].get("safeguard"), init=dcfg.init,
                    form=pc.get("form", "paradigms"))  # the sampler uses the form PCT trained with
    spec, loss_fn = P.objective(pc, policy.model_fn, grid, alpha, settings, action_distance)
    px = pixel_distance(policy)
    val_fn = P.make_val_fn(lambda m: m.model_fn, grid, alpha, data, px, spec, int(pc["val"]["n"]),
                           int(pc["val"]["k_max"]), pc.get("form", "paradigms"))
    config = cfg

    def save_fn(model, step):  # the EMA adapter, with a provisional sampler spec until tuning
        save_adapter_folder(model, run_dir / "adapter", spec, extra={"step": abs(step), "tuned": False,
                                                                     "command": command, "config": config})

    loop = LoopConfig(**pc["training"])
    t0 = time.perf_counter()
    ema = train(policy, loss_fn, batches, loop, run_dir, save_fn, val_fn, params=params,
                desc="PCT", config=P.run_config(cfg))
    train_s = time.perf_counter() - t0

    # 3. schedule tuning on the held-out split
    tune = pc["tune"]
    val = (data["split"] == 1).nonzero().flatten()[: tune.get("n")]
    t0 = time.perf_counter()
    held_out = (ema.model_fn, grid, data["cond"][val], data["x_T"][val], data["x_star"][val, -1])
    chosen, metrics = P.tune_after_training(pc, spec, *held_out, settings, px)
    metrics["timing"] = {"trajectories": tm, "train_s_this_call": train_s, "s_per_step": mean_s_per_step(
        run_dir / "log.jsonl"), "tune_s": time.perf_counter() - t0, "threads": int(cfg.get("threads", 1))}
    metrics["data"] = {"path": str(data_path), "rollout_seeds": data["rollout_seeds"],
                       "held_out": len(val), "var_k": data["var_k"].tolist()}
    save_adapter_folder(ema, out, chosen, extra={"metrics": metrics, "command": command, "config": config,
                                                "base": str(base), "steps": loop.steps, "tuned": True})
    c, pic = metrics["chosen"], metrics["picard"]
    print(f"chosen {chosen.switch} taa={chosen.taa} jump={chosen.jump}: {c['distance'][0]:.2f} px at k=1, < 1 px at "
          f"k={c['k_match']} (Picard{' + TAA' if jump else ''}: k={pic['k_match']}); adapter at {out}")
    return metrics

