"""A third task on the generic drivers: a conditional 2-D Gaussian mixture with an analytic eps model (plus a
small MLP the adapter trains) on a real diffusers DDIMScheduler. It gets PCT (``training.pct.run_pct``), the
sweep (``evaluation.sweep.run_sweep``) and the report (``evaluation.report.write_report``) with no driver
code of its own: all it supplies is the ``Task``."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler

from pcm_policy.adapters import load_adapter_folder
from pcm_policy.evaluation.report import write_report
from pcm_policy.evaluation.sweep import SweepConfig, run_sweep
from pcm_policy.lora import LoraScale
from pcm_policy.paper import pct as _paper_pct  # noqa: F401  (registers the objective "picard" PCT names)
from pcm_policy.sampling import SamplerSpec, Switch, make_sampler, sample_pcm, sample_sequential
from pcm_policy.task import Task
from pcm_policy.training.pct import run_pct
from pcm_policy.training.pct_data import PCTData, load, make

MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])  # mixture means, shifted by the condition
STD = 0.3
SEEDS = {"train": 1000, "val": 2000, "eval": 0}
T = 8


class EpsNet(torch.nn.Module):
    """eps(x_t, t | c) of the mixture sum_i N(mu_i + c, STD^2 I) / 3 under x_t = sqrt(abar) x_0 +
    sqrt(1 - abar) z, in closed form (eps = -sqrt(1 - abar) grad log p_t), plus an MLP (zero output at start)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.register_buffer("abar", alphas_cumprod.float())
        self.fc1, self.fc2 = torch.nn.Linear(4, 32), torch.nn.Linear(32, 2)
        torch.nn.init.zeros_(self.fc2.weight)
        torch.nn.init.zeros_(self.fc2.bias)

    def forward(self, x, t, cond):
        a = self.abar[t.long()].view(-1, 1, 1)
        mu = a.sqrt() * (MEANS[None] + cond[:, None, :])  # (B, 3, 2)
        var = a * STD ** 2 + 1 - a
        w = torch.softmax(-((x[:, None] - mu) ** 2).sum(-1) / (2 * var[..., 0]), dim=1)  # responsibilities
        score = (w[..., None] * (mu - x[:, None]) / var).sum(1)
        h = torch.tanh(self.fc1(torch.cat([x, cond[:, :1], t.float()[:, None] / 1000], 1)))
        return -(1 - a[:, 0]).sqrt() * score + self.fc2(h)


def gmm_task() -> Task:
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    torch.manual_seed(0)
    net = EpsNet(scheduler.alphas_cumprod)

    def conditions(split, n):
        g = torch.Generator().manual_seed(SEEDS[split])
        return torch.rand(n, 2, generator=g) - 0.5, torch.randn(n, 2, generator=g)

    def distance(out, ref):
        return (out - ref).norm(dim=-1)

    def score(spec, k):  # minus the mean distance of samples to their nearest mixture mode
        cond, x_T = conditions("eval", 32)
        spec = spec or SamplerSpec.named("ddim", num_steps=T)
        x = make_sampler(spec.replace(k=k) if k else spec, scheduler)(fn, x_T, cond)[0]
        return {"score": -float((x[:, None] - MEANS[None] - cond[:, None]).norm(dim=-1).min(1).values.mean())}

    fn = LoraScale(net, net)
    return Task(name="gmm", module=net, model_fn=fn, scheduler=scheduler, num_steps=T, lora_targets=["fc1", "fc2"],
                distance=distance, unit="units", conditions=conditions, score=score, key={"means": MEANS.tolist()})


PCT = {"objective": "picard", "lora": {"rank": 2, "alpha": 2}, "batch_size": 4, "k_max": None, "alpha_floor": 1e-12,
       "form": "paradigms",
       "training": {"steps": 3, "lr": 1e-2, "warmup_steps": 1, "log_every": 1, "val_every": 1, "ckpt_every": 2,
                    "snapshot_every": 0, "seed": 0},
       "val": {"schedule": {"name": "pcm", "switch": {"k_on": 1, "k_off": 1, "space": "weight"}}, "n": 2, "k_max": 2},
       "tune": {"hard": [1, 2], "ramps": [[0, 2]], "spaces": ["weight"], "anderson": [0], "k_max": 3, "n": None,
                "threshold": 0.05}}


def test_the_store_holds_ddim_trajectories_and_base_iterates(tmp_path):
    task = gmm_task()
    cfg = PCTData(n=8, num_steps=T, iterates=3, val_fraction=0.25, chunk=3)
    make(task, cfg, tmp_path / "s", max_chunks=1, progress=False)  # interrupted after one chunk, then resumed
    with pytest.raises(ValueError, match="incomplete"):
        load(tmp_path / "s")
    d = load(make(task, cfg, tmp_path / "s", progress=False))
    assert d["x_star"].shape == (8, T + 1, 2) and d["iterates"].shape == (8, 3, T + 1, 2)
    assert d["split"].tolist() == [0] * 6 + [1] * 2 and len(d["var_k"]) == 3
    cond, x_T = task.conditions("val", 2)
    assert torch.equal(d["x_T"][6:], x_T) and torch.equal(d["cond"][6:], cond)
    ref, _ = sample_sequential(task.model_fn, d["x_T"], d["cond"], grid=task.grid())
    assert torch.allclose(d["x_star"][:, -1], ref, atol=1e-6) and torch.equal(d["iterates"][:, 0, 0], d["x_T"])
    assert d["var_k"][0] > d["var_k"][-1]  # Picard iterates approach X*
    with pytest.raises(ValueError, match="other settings"):
        make(task, PCTData(n=9, num_steps=T, iterates=3), tmp_path / "s", progress=False)


def test_pct_sweep_and_report_run_on_a_toy_task_through_the_generic_drivers(tmp_path):
    task = gmm_task()
    data = PCTData(n=12, num_steps=T, iterates=4, val_fraction=0.25, chunk=6)
    m = run_pct(task, PCT, data, out=tmp_path / "adapter", run_dir=tmp_path / "w/train", data_path=tmp_path / "w/d")
    a = json.loads((tmp_path / "adapter/adapter.json").read_text())
    assert a["tuned"] and a["sampler"]["name"] == "pcm" and m["distance"] == "units" and m["data"]["held_out"] == 3
    assert any(p.abs().sum() > 0 for n, p in task.module.named_parameters() if "lora_B" in n)  # it trained

    fresh = gmm_task()  # the adapter folder alone rebuilds the tuned sampler; PCM at tol 0 is DDIM-T exactly
    spec, _ = load_adapter_folder(fresh.module, tmp_path / "adapter")
    cond, x_T = fresh.conditions("eval", 5)
    ref, _ = sample_sequential(fresh.model_fn, x_T, cond, grid=fresh.grid())
    x, st = sample_pcm(fresh.model_fn, x_T, cond, grid=fresh.grid(), schedule=spec.switch, taa=spec.taa, tol=0.0)
    assert st.converged and torch.allclose(x, ref, atol=1e-5)

    specs = {"ddim": SamplerSpec.named("ddim", num_steps=T),
             "picard": SamplerSpec.named("picard", num_steps=T, tol=0.0),
             "pcm": spec.replace(num_steps=T, tol=0.0, switch=Switch(1, 1))}
    cfg = SweepConfig(samplers=specs, ks=[1, 2, T], score_ks=[1, T], out=tmp_path / "sweep", conditions=6,
                      dist_tol=0.05, score_tol=0.05)
    res = run_sweep(fresh, cfg)
    by = {s: {r["k"]: r for r in rows} for s, rows in res["results"].items()}
    assert by["ddim"][T]["distance"] == 0 and by["picard"][T]["distance"] < 1e-5 and by["ddim"][1]["distance"] > 0.05
    assert by["ddim"][T]["score"] == res["reference"]["score"] and by["picard"][2]["score"] is None
    assert res["k_match"]["ddim"] == T and res["distance_unit"] == "units"
    write_report(tmp_path / "sweep", res, print_table=False)
    assert (tmp_path / "sweep/sweep.csv").read_text().startswith("sampler,k,score,distance")
    assert all((tmp_path / "sweep" / f).stat().st_size > 0 for f in ("table.md", "distance_vs_k.png", "pareto.png"))
    again = run_sweep(fresh, cfg)  # every row from the cache
    assert again["results"] == res["results"]


def test_k_match_can_hold_a_score_field_and_a_relative_score_tolerance(tmp_path):
    """``SweepConfig.match_field`` / ``score_tol_rel`` (the images' rule: FID within 1% of the reference's and the
    scored samples' uint8 difference < 1): k_match reads that field of the scored rows, the tolerance scales
    with |reference score|, and the settings record both."""
    task = gmm_task()
    base = task.score
    task.score = lambda spec, k: {**base(spec, k), "gap": 0.0 if k is None or k >= 3 else 1.0}
    specs = {"picard": SamplerSpec.named("picard", num_steps=T, tol=0.0)}

    def sweep(**kw):
        return run_sweep(task, SweepConfig(samplers=specs, ks=[1, 2, 3, T], out=tmp_path / "s", conditions=4,
                                           dist_tol=0.5, **kw))

    wide = sweep(score_tol=10.0, score_tol_rel=True, match_field="gap")
    assert wide["k_match"] == {"picard": 3}  # the gap rule alone decides (every score within 10x |ref|)
    assert wide["settings"]["match_field"] == "gap" and wide["settings"]["score_tol_rel"] is True
    ref, rows = wide["reference"]["score"], wide["results"]["picard"]
    tight = sweep(score_tol=0.0, score_tol_rel=True, match_field="gap")
    assert tight["k_match"]["picard"] == next(r["k"] for r in rows if r["k"] >= 3 and abs(r["score"] - ref) <= 1e-12)
    assert sweep(score_tol=10.0)["k_match"] == {"picard": next(r["k"] for r in rows if r["distance"] < 0.5)}
