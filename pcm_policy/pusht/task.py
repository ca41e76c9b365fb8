"""The PushT Task: the diffusion policy on the sampler core, for the generic drivers (``pcm_policy.task``).

  conditions "train"/"val": the PCT conditions of ``pct_data.collect_conditions`` (demonstration windows
             and states of base-policy rollouts on training seeds 400000+), normalised by the policy, with
             x_T ~ N(0, I) (H, A) drawn for all N at once from ``data.seed``; training rows first.
             "eval": every chunk's observation and initial noise of the reference DDIM-T rollouts on the
             evaluation seeds ``evaluation.seed``.. (100000..), evenly spaced down to n.
  distance   mean over the H actions of the Euclidean action distance in env pixels (``pixel_distance``).
  score      mean coverage score of rollouts on the evaluation seeds with the sampler held to k iterations
             (tol 0), plus success rate, mean iterations and median latency; ``score(None, None)``: the
             reference DDIM-T rollouts.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .. import paper
from ..adapters import load_sampler
from ..lora import DEFAULT_TARGETS
from ..sampling import K_STEPS, SamplerSpec, make_sampler
from ..task import Task
from ..training.pct_data import PCTData
from .checkpoint import save_adapter_folder
from .pct_data import TrajDataConfig, collect_conditions, pixel_distance
from .rollout import run_rollouts, summarize

__all__ = ["SWEEP_PEERS", "SWEEP_SAMPLERS", "PushTEval", "cd_task", "make_task", "pct_task", "sweep_task"]


@dataclass
class PushTEval:
    """The evaluation episodes: seeds ``seed``..``seed + episodes - 1`` (the env's reset seeds), ``max_steps``."""

    seed: int = 100000
    episodes: int = 50
    max_steps: int = 200


def _normalizer_hash(policy) -> str:
    h = hashlib.sha256()
    for k, v in sorted(policy.normalizer.state_dict().items()):
        h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def make_task(policy, *, data: TrajDataConfig | None = None, demos=None, evaluation: PushTEval | None = None,
              num_steps: int = 50, progress: bool = True, rollout_cache=None) -> Task:
    """The PushT Task of ``policy`` (a ``DiffusionPolicy``): ``data`` and ``demos`` (a demonstration store)
    define the PCT conditions ("train"/"val"), ``evaluation`` the "eval" ones and the score; T = ``num_steps``.
    ``rollout_cache``: a folder keeping each finished batch of condition rollouts until the conditions are
    complete, so an interrupted collection resumes there (``pct_data.collect_conditions``)."""
    memo, evaluation = {}, evaluation or PushTEval()
    shape = (policy.cfg.horizon, policy.cfg.action_dim)
    seeds = list(range(evaluation.seed, evaluation.seed + evaluation.episodes))

    def reference() -> dict:  # DDIM-T rollouts, every chunk's observation and noise recorded
        if "ref" not in memo:
            obs, noise = [], []

            def record(chunk, o, out):
                obs.append(o.clone())
                noise.append(out["x_T"].cpu().clone())

            sampler = make_sampler(SamplerSpec.named("ddim", num_steps=num_steps), policy.noise_scheduler)
            with torch.no_grad():
                eps = run_rollouts(policy, sampler, seeds, max_steps=evaluation.max_steps, on_chunk=record)["episodes"]
            memo["ref"] = {"summary": {**summarize(eps), "scores": [float(e["score"]) for e in eps]},
                           "obs": torch.cat(obs), "noise": torch.cat(noise)}
        return memo["ref"]

    def conditions(split: str, n: int):
        if split == "eval":
            ref = reference()
            idx = np.unique(np.linspace(0, len(ref["obs"]) - 1, min(n, len(ref["obs"]))).round().astype(int))
            with torch.no_grad():
                return policy.condition(ref["obs"][idx]), ref["noise"][idx].to(policy.device)
        if data is None:
            raise ValueError("the PushT task was built without PCT data settings (make_task(data=...))")
        if "pct" not in memo:
            c = collect_conditions(policy, data, demos, progress, rollout_cache)
            if rollout_cache is not None:  # complete: the caller's store keeps them from here on
                shutil.rmtree(rollout_cache, ignore_errors=True)
            with torch.no_grad():
                cond = policy.condition(torch.from_numpy(c["obs"])).cpu()
            x_T = torch.randn((len(c["obs"]), *shape), generator=torch.Generator().manual_seed(data.seed))
            memo["pct"] = (cond, x_T, torch.from_numpy(np.asarray(c["split"])))
        cond, x_T, s = memo["pct"]
        rows = (s == int(split == "val")).nonzero().flatten()[:n]
        return cond[rows], x_T[rows]

    def score(spec: SamplerSpec | None, k: int | None) -> dict:
        if spec is None:
            s = reference()["summary"]
        else:
            sampler = load_sampler(spec.replace(k=k), policy.noise_scheduler)
            with torch.no_grad():
                eps = run_rollouts(policy, sampler, seeds, max_steps=evaluation.max_steps)["episodes"]
            s = {**summarize(eps), "scores": [float(e["score"]) for e in eps]}
        return {"score": s["mean_score"], **{f: s[f] for f in ("success_rate", "mean_iterations", "median_latency_s")},
                "detail": s}

    key = {"normalizer": _normalizer_hash(policy), "evaluation": asdict(evaluation), "num_steps": num_steps,
           **({"data": asdict(data), "demos": str(demos)} if data is not None else {})}
    return Task(name="pusht", module=policy.model, model_fn=policy.model_fn, scheduler=policy.noise_scheduler,
                num_steps=num_steps, lora_targets=list(DEFAULT_TARGETS), distance=pixel_distance(policy), unit="px",
                conditions=conditions, score=score, key=key,
                full_copy=lambda: paper.add_full_copy(policy),
                save_adapter=lambda folder, spec, extra: save_adapter_folder(policy, folder, spec, extra))


def pct_task(cfg: dict, root) -> tuple[Task, PCTData, dict]:
    """(Task, store settings, adapter.json extras) of a resolved ``train_pct`` config for task=pusht (a plain
    dict: ``base``, ``task.dataset``, ``pct.data``); relative paths are under ``root``. Raises ValueError for a
    missing base checkpoint (naming how to make one) and CheckpointError / TrajDataError."""
    from pathlib import Path

    from ..training.pct_data import rollout_cache
    from .checkpoint import load_policy

    base = Path(cfg["base"]) if Path(cfg["base"]).is_absolute() else Path(root) / cfg["base"]
    if not (base / "config.json").is_file():
        raise ValueError(f"base checkpoint {base} not found; train it with python scripts/train_policy.py "
                         "task=pusht and copy its run_dir/checkpoint there, or pass base=FOLDER")
    data = TrajDataConfig(**cfg["pct"]["data"])
    demos = Path(cfg["task"]["dataset"])
    demos = demos if demos.is_absolute() else Path(root) / demos
    task = make_task(load_policy(base), data=data, demos=demos, num_steps=data.num_steps,
                     rollout_cache=rollout_cache(cfg["data_path"], root, [asdict(data), str(demos)]))
    return task, data.pct_data(), {"base": str(cfg["base"])}  # as given: no machine's root


def cd_task(cfg: dict, root) -> tuple[Task, dict, tuple]:
    """(Task, data, val) for consistency distillation (``training.consistency``) of a resolved
    ``train_consistency`` config (``base``, ``task``, ``cd.val.n``, ``cd.data_seed``): data = every training
    window of the demonstration store the base policy was trained on ({"cond": normalised condition rows, "x0":
    normalised action chunks}); val = the first ``cd.val.n`` windows of its held-out episodes with seeded x_T.
    Raises ValueError for a missing base checkpoint or store."""
    from pathlib import Path

    from .checkpoint import load_policy
    from .dataset import PushTLowdimDataset

    def resolve(p):
        return Path(p) if Path(p).is_absolute() else Path(root) / p

    base, store, t = resolve(cfg["base"]), resolve(cfg["task"]["dataset"]), cfg["task"]
    if not (base / "config.json").is_file():
        raise ValueError(f"base checkpoint {base} not found; pass base=FOLDER")
    if not store.exists():
        raise ValueError(f"demonstration store {store} not found; pass task.dataset=PATH")
    policy = load_policy(base)
    kw = dict(horizon=t["horizon"], pad_before=t["n_obs_steps"] - 1, pad_after=t["n_action_steps"] - 1,
              obs_type=t["obs_type"], val_ratio=t["val_ratio"], seed=t["split_seed"],
              max_train_episodes=t["max_train_episodes"])
    train_set = PushTLowdimDataset(str(store), split="train", **kw)

    def windows(ds, n=None):
        rows = [ds[i] for i in range(len(ds) if n is None else min(n, len(ds)))]
        obs, act = torch.stack([r["obs"] for r in rows]), torch.stack([r["action"] for r in rows])
        with torch.no_grad():
            return policy.condition(obs), policy.normalizer.normalize("action", act)

    cond, x0 = windows(train_set)
    n_val = int(cfg["cd"]["val"]["n"])
    vcond, vx0 = windows(train_set.get_validation_dataset(), n_val)
    x_T = torch.randn(vx0.shape, generator=torch.Generator().manual_seed(int(cfg["cd"]["data_seed"])))
    return make_task(policy, num_steps=int(cfg["cd"]["num_steps"])), {"cond": cond, "x0": x0}, (vcond, x_T)


SWEEP_SAMPLERS = ("ddim", "ddim-k", "picard", "taa", "pcm", "newton")  # what a PushT sweep compares by default
# on request: diffusers' k-step solvers (pcm_policy/solvers.py) and SRDS (sampling/srds.py, k batched calls)
SWEEP_PEERS = ("dpmsolver++", "unipc", "srds")


def sweep_task(checkpoint, adapter, samplers, *, num_steps: int = 50, init: str | None = None, device: str = "cpu",
               eager: bool = False, evaluation: PushTEval | None = None) -> tuple[Task, dict]:
    """(Task, {name: SamplerSpec}) of a PushT sweep: the base policy at ``checkpoint`` with the adapter of
    ``adapter`` attached when pcm is swept, frozen graphs unless ``eager``; the specs at T = ``num_steps``, tol 0,
    first iterate ``init`` for the iterative samplers (PCM: the adapter's unless given). Picklable as a
    ``functools.partial`` (the sweep's worker processes). Raises CheckpointError, ValueError, KeyError."""
    from ..device import pick_device
    from ..sampling import ITERATIVE
    from .checkpoint import load_adapter_folder, load_policy

    bad = [s for s in samplers if s not in SWEEP_SAMPLERS + SWEEP_PEERS]
    if bad:
        raise ValueError(f"unknown sampler(s) {', '.join(bad)}; choose from {', '.join(SWEEP_SAMPLERS + SWEEP_PEERS)}")
    policy = load_policy(checkpoint, pick_device(device))
    specs = {s: SamplerSpec.named(s, num_steps=num_steps, tol=0.0, init=init if s in ITERATIVE else None,
                                  k=1 if s in K_STEPS else None) for s in samplers if s != "pcm"}
    if "pcm" in samplers:
        spec, _ = load_adapter_folder(policy, adapter)
        specs["pcm"] = spec.replace(num_steps=num_steps, tol=0.0, **({"init": init} if init else {}))
    policy.freeze(not eager)
    task = make_task(policy, evaluation=evaluation, num_steps=num_steps)
    if policy.device.type != "cpu":  # GPU runs are cached apart
        task.key["device"] = policy.device.type
    return task, {s: specs[s] for s in samplers}
