"""Side-by-side latency of sequential DDIM, Picard, TAA and PCM on a PushT policy (``scripts/bench_samplers.py``).

The PushT part of the benchmark: the policy (a checkpoint, or random weights of a UNet preset), the PCM
adapter (a folder, or a random LoRA), conditions drawn from the demonstrations, the sampler variants
as ``SamplerSpec`` values. The measuring is ``pcm_policy.evaluation.latency`` (generic). Sequential DDIM
and Picard use the base policy; PCM a copy with the adapter attached (peft's LoRA branch runs even at
lambda = 0, a cost PCM really pays). Every call goes through a ``ThreadPolicy``. Accuracy is
max |x_0 - DDIM-T's x_0| in normalised action units and in pixels (normalised / the normaliser's scale).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..adapters import load_sampler
from ..device import pick_device
from ..evaluation.latency import benchmark, format_report, load_average, machine_info
from ..io import write_text
from ..lora import add_lora
from ..sampling import DEFAULTS, TAA, SamplerSpec, Switch, ThreadPolicy, make_sampler
from .checkpoint import load_adapter_folder, load_policy, read_config
from .unet1d import count_parameters

__all__ = ["SEQ", "BenchConfig", "bench_samplers", "build_samplers", "draw_conditions", "run_bench"]

SEQ = "ddim_sequential"  # the reference sampler's name


@dataclass
class BenchConfig:
    """Settings of ``bench_samplers`` (the CLI flags of ``scripts/bench_samplers.py``, typed).

    ``checkpoint``: a policy folder, or None with ``size`` (a UNet preset with random weights: timing
    only). ``adapter``: a PCM adapter folder or ``"random"``. ``safeguards``: kappas, None = off.
    ``anderson``: TAA memories (init prior). ``ddim_ks``: re-discretised DDIM step counts. ``pcm_ks``: the
    adapter's PCM with exactly k iterations (tol 0; the anytime comparison with DDIM-k).
    ``pcm_spaces``: None for the adapter's own. ``k_on``/``k_off``: override the adapter's switch.
    ``threads``/``window_threads``/``switch_rows``: the ThreadPolicy. ``device``: ``cpu`` or ``cuda[:N]``.
    ``batches``: several batch sizes (episodes in lockstep), one run each, side by side (``run_bench``;
    ``bench_batches``); empty: one run at ``batch``.
    """

    checkpoint: str | None = None
    size: str | None = None
    adapter: str = "random"
    dataset: str = "data/pusht_expert.zarr"
    conds: int = 4
    batch: int = 1
    num_steps: int = 50
    windows: tuple[int, ...] = (50, 25, 10)
    tols: tuple[float, ...] = (0.1, 0.01)
    safeguards: tuple[float | None, ...] = (None, 1.0)
    pcm_windows: tuple[int, ...] = (50,)
    inits: tuple[str, ...] = ("noise", "prior")
    anderson: tuple[int, ...] = (DEFAULTS["taa"]["taa"].memory,)
    ddim_ks: tuple[int, ...] = (5,)
    pcm_ks: tuple[int, ...] = ()
    pcm_spaces: tuple[str, ...] | None = None
    k_on: int | None = None
    k_off: int | None = None
    repeats: int = 3
    curve: tuple[int, ...] = (1, 2, 4, 8, 16, 25, 32, 50)
    curve_threads: tuple[int, ...] = (1, 2)
    curve_repeats: int = 10
    threads: int = 1
    window_threads: int = 1
    switch_rows: int = 4
    seed: int = 0
    device: str = "cpu"
    eager: bool = False
    batches: tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("conds", "batch", "num_steps", "repeats", "curve_repeats", "threads", "window_threads",
                     "switch_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.checkpoint is not None and self.size is not None:
            raise ValueError("give a checkpoint folder or a UNet preset (size), not both")
        if any(b < 1 for b in self.batches):
            raise ValueError(f"--batch sizes must be >= 1, got {list(self.batches)}")


def load_base(cfg: BenchConfig, dataset) -> tuple:
    """(policy on ``cfg.device``, description): the checkpoint, or random weights of preset ``cfg.size``
    with a normaliser fitted on ``dataset(obs_type)``. Raises CheckpointError for a bad folder."""
    if cfg.size:
        from .normalizer import NormalizerDict
        from .policy import DiffusionPolicy, PolicyConfig

        torch.manual_seed(cfg.seed)
        policy = DiffusionPolicy(PolicyConfig(unet_size=cfg.size)).eval()
        ds = dataset(policy.cfg.obs_type)
        policy.normalizer = NormalizerDict.fit({"obs": ds.get_all_obs(), "action": ds.get_all_actions()})
        return policy.to(cfg.device), {"source": f"random weights, UNet preset {cfg.size!r} (timing only)"}
    if cfg.checkpoint is None:
        raise ValueError("no policy: give a checkpoint folder or a UNet preset (size)")
    policy = load_policy(cfg.checkpoint, cfg.device)
    conf = read_config(cfg.checkpoint)
    return policy, {"source": str(cfg.checkpoint), "step": conf.get("step"), "command": conf.get("command")}


def load_pcm(cfg: BenchConfig, policy) -> tuple:
    """(adapted copy of ``policy``, its PCM SamplerSpec with ``k_on``/``k_off`` applied, description)."""
    pcm = copy.deepcopy(policy)
    if cfg.adapter == "random":
        add_lora(pcm.model)
        g = torch.Generator().manual_seed(cfg.seed + 1)
        with torch.no_grad():  # lora_B starts at zero: give the adapter weights so it changes the model
            for n, p in pcm.model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g).to(p.device) * 0.05)
        spec, info = SamplerSpec.named("pcm", switch=Switch(2, 6)), {"source": "random (timing only)"}
    else:
        spec, conf = load_adapter_folder(pcm, cfg.adapter)
        info = {"source": cfg.adapter, **{k: v for k, v in conf.items()
                                          if k not in ("schedule", "sampler") and _small(v)}}
    spec = load_sampler(spec, pcm.noise_scheduler, switch_k_on=cfg.k_on, switch_k_off=cfg.k_off).spec
    return pcm.eval(), spec, info


def _small(v) -> bool:
    return len(json.dumps(v, default=str)) < 2000


def draw_conditions(policy, ds, n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """``n`` observation windows of ``n_obs_steps`` consecutive steps of one episode.

    Args:
        policy: gives ``n_obs_steps`` and ``condition``; ds: a ``PushTLowdimDataset``.
        n: windows (drawn with replacement only if there are fewer valid starts); seed: of the draw.
    Returns:
        (conditions ``(n, cond_dim)`` on the policy's device, the window start steps).
    """
    obs, ends, k = ds.get_all_obs(), np.asarray(ds.episode_ends), policy.cfg.n_obs_steps
    starts = np.concatenate([[0], ends[:-1]])
    valid = np.concatenate([np.arange(s, e - k + 1) for s, e in zip(starts, ends, strict=True) if e - s >= k])
    idx = np.random.default_rng(seed).choice(valid, size=n, replace=len(valid) < n)
    windows = torch.from_numpy(np.stack([obs[i:i + k] for i in idx]))
    return policy.condition(windows), [int(i) for i in idx]


def build_samplers(cfg: BenchConfig, spec: SamplerSpec, sched, base_d, pcm_d) -> dict:
    """Every sampler variant of ``cfg`` as ``{name: fn(x_T, cond) -> (x_0, stats)}``, ``SEQ`` first.

    Args:
        cfg: the variants (windows x tols x safeguards per Picard init / TAA memory / PCM space).
        spec: the adapter's PCM spec; sched: the policy's noise scheduler.
        base_d, pcm_d: model functions of the base and the adapted policy.
    Returns:
        names like ``ddim_k5``, ``picard_w50_tol0.1_sg1_prior``, ``taa3_w50_tol0.1``, ``pcm_weight_w50_tol0.1``.
    """
    T = cfg.num_steps

    def tag(sg):
        return "" if sg is None else f"_sg{sg:g}"

    def run(s: SamplerSpec, model_fn):
        sampler = make_sampler(s, sched)
        return lambda x, c: sampler(model_fn, x, c)

    runs = {SEQ: run(SamplerSpec.named("ddim", num_steps=T), base_d)}
    for k in cfg.ddim_ks:
        runs[f"ddim_k{k}"] = run(SamplerSpec.named("ddim-k", k=k), base_d)
    variants = [("picard", "" if init == "noise" else f"_{init}", {"init": init}) for init in cfg.inits]
    variants += [(f"taa{m}", "", {"init": "prior", "taa": TAA(memory=m)}) for m in cfg.anderson]
    for prefix, suffix, extra in variants:
        for w in cfg.windows:
            for tol in cfg.tols:
                for sg in cfg.safeguards:
                    s = SamplerSpec(name="picard", num_steps=T, window=w, tol=tol, safeguard=sg, **extra)
                    runs[f"{prefix}_w{w}_tol{tol:g}{tag(sg)}{suffix}"] = run(s, base_d)
    for space in cfg.pcm_spaces or [spec.switch.space]:
        for w in cfg.pcm_windows:
            for tol in cfg.tols:
                for sg in cfg.safeguards:
                    sw = Switch(spec.switch.k_on, spec.switch.k_off, space)
                    s = spec.replace(num_steps=T, window=w, tol=tol, safeguard=sg, switch=sw)
                    runs[f"pcm_{space}_w{w}_tol{tol:g}{tag(sg)}"] = run(s, pcm_d)
    for k in cfg.pcm_ks:
        runs[f"pcm_k{k}"] = run(spec.replace(num_steps=T, tol=0.0, k=k), pcm_d)
    return runs


def bench_samplers(cfg: BenchConfig, command: str, keep_times: bool = False) -> dict:
    """The benchmark: load, draw conditions, then ``evaluation.latency.benchmark``.

    Args:
        cfg: the settings; command: recorded in ``settings.command``; keep_times: also return every timed
            run (``times_ms``).
    Returns:
        ``{"machine", "settings", "batch_cost_curve", "derived", "samplers"}`` (the JSON of
        ``scripts/bench_samplers.py``; times in ms, overheads in us, distances as in the module doc).
    Raises:
        ValueError: a bad device; CheckpointError / FileNotFoundError: a bad checkpoint, adapter or dataset.
    """
    device = pick_device(cfg.device)
    cfg = BenchConfig(**{**vars(cfg), "device": device})
    load_start = load_average()
    torch.set_num_threads(cfg.threads)  # the process default; ThreadPolicy switches wide calls from here
    from .dataset import PushTLowdimDataset

    datasets = {}

    def dataset(obs_type):
        if obs_type not in datasets:
            datasets[obs_type] = PushTLowdimDataset(cfg.dataset, obs_type=obs_type)
        return datasets[obs_type]

    policy, base_info = load_base(cfg, dataset)
    pcm, spec, adapter_info = load_pcm(cfg, policy)
    pc, B, T = policy.cfg, cfg.batch, cfg.num_steps
    with torch.no_grad():
        conds, obs_idx = draw_conditions(policy, dataset(pc.obs_type), cfg.conds * B, cfg.seed)
    conds = conds.view(cfg.conds, B, -1)
    g = torch.Generator().manual_seed(cfg.seed)
    noises = torch.randn(cfg.conds, B, pc.horizon, pc.action_dim, generator=g).to(device)
    px_scale = policy.normalizer["action"].scale.detach()  # pixels = normalised / scale

    eager = None if cfg.eager else copy.deepcopy(policy)  # the curve times eager calls beside frozen ones
    policy.freeze(not cfg.eager)
    pcm.freeze(not cfg.eager)
    base_d = ThreadPolicy(policy.model_fn, cfg.threads, cfg.window_threads, cfg.switch_rows)
    pcm_d = ThreadPolicy(pcm.model_fn, cfg.threads, cfg.window_threads, cfg.switch_rows)

    # batch-cost curve: fixed thread counts, then through the ThreadPolicy (base and adapted model);
    # always holds width 1 and the full window (T * B rows), and the two thread counts in use
    widths = sorted({1, T * B, *cfg.curve})
    fixed = sorted({cfg.threads, cfg.window_threads, *cfg.curve_threads})
    rows = {f"threads={th}": (policy.model_fn, th, {}) for th in fixed}
    rows["thread_policy"] = (base_d, cfg.threads, {})
    rows["thread_policy_pcm_adapter_lambda1"] = (pcm_d, cfg.threads, {"lora_scale": 1.0})
    if eager is not None:
        rows.update({f"eager threads={th}": (eager.model_fn, th, {}) for th in fixed})
    runs = build_samplers(cfg, spec, policy.noise_scheduler, base_d, pcm_d)
    res = benchmark(runs, noises, conds, reference=SEQ, curve_rows=rows, widths=widths, full_rows=T * B,
                    sample_shape=(pc.horizon, pc.action_dim), n_train=pc.num_train_timesteps,
                    floor_model=(eager or policy).model, threads=cfg.threads, window_threads=cfg.window_threads,
                    switch_rows=cfg.switch_rows, repeats=cfg.repeats, curve_repeats=cfg.curve_repeats,
                    seed=cfg.seed, units={"norm": 1.0, "px": px_scale}, keep_times=keep_times)
    settings = {
        "command": command,
        "policy": {**base_info, "unet_size": pc.unet_size, "unet": pc.unet, "parameters": count_parameters(
            policy.model), "obs_type": pc.obs_type, "horizon": pc.horizon, "n_obs_steps": pc.n_obs_steps},
        "adapter": {**adapter_info, "sampler": spec.to_dict(), "parameters_with_adapter": count_parameters(pcm.model)},
        "dataset": cfg.dataset, "observation_start_steps": obs_idx, "conds": cfg.conds, "batch": B,
        "num_steps": T, "solver": "ddim", "repeats": cfg.repeats, "threads": cfg.threads,
        "window_threads": cfg.window_threads, "switch_rows": cfg.switch_rows, "curve_widths": widths,
        "curve_repeats": cfg.curve_repeats, "seed": cfg.seed, "unet": "eager" if cfg.eager else "frozen graphs",
        "px_per_normalised_unit": [round(float(1 / s), 4) for s in px_scale],
    }
    return {"machine": machine_info(device, load_start, load_average()), "settings": settings, **res}


def run_bench(cfg: BenchConfig, command: str, out: str | Path | None = None) -> dict:
    """``bench_samplers``, then print its table and write its JSON to ``out`` (atomically), or print the
    JSON when ``out`` is None. With ``cfg.batches``: one run per batch size, each run's table, then the
    side by side table of ``bench_batches`` (JSON ``{"command", "machine", "settings", "by_batch": [{batch_rows...,
    "run": the run's result}]}``). Returns the result; raises as ``bench_samplers``."""
    if cfg.batches:
        result = _run_batches(cfg, command)
    else:
        result = bench_samplers(cfg, command)
        print(format_report(result))
    text = json.dumps(result, indent=1)
    if out:
        print(f"\nwrote {write_text(out, text)}")
    else:
        print(text)
    return result


def _run_batches(cfg: BenchConfig, command: str) -> dict:
    from .bench_batches import batch_rows, format_batches, per_batch

    load_start, entries = load_average(), []
    for c in per_batch(cfg, list(cfg.batches)):
        run = bench_samplers(c, command, keep_times=True)
        print(f"== batch {c.batch} ==\n{format_report(run)}\n", flush=True)
        entries.append({**batch_rows(run, run["times_ms"], SEQ), "run": run})
    print(format_batches(entries))
    machine = machine_info(torch.device(entries[0]["run"]["machine"]["device"]), load_start, load_average())
    settings = {"command": command, "batches": list(cfg.batches), "reference": SEQ,
                "best_ms": "per condition the fastest of the repeats, averaged over the conditions"}
    return {"command": f"python scripts/{command}", "machine": machine, "settings": settings, "by_batch": entries}
