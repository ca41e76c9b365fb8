"""The paper's recipe (``pcm_policy.paper``): the full copy as a model-function wrapper, its frozen graphs,
its adapter folder, and PCM over it (feature-space ramps) keeping exactness; the shipped paper adapter loads; the
one-update objective (``pcm_policy.paper.pct``) trains the adapter alone and registers itself in the PCT driver."""

from pathlib import Path

import pytest
import torch
from test_imports import PKG, imports
from test_pct import TINY, _randomise_lora, ddim_grid, env  # noqa: F401  (env, fixture: a tiny base checkpoint ...)
from vision_helpers import ldm_dir  # noqa: F401  (fixture: a tiny saved LDM)

from pcm_policy.lora import add_lora, lora_parameters
from pcm_policy.paper import FullCopy, add_full_copy, full_copy_of
from pcm_policy.paper.pct import PCTBatches
from pcm_policy.pusht.checkpoint import load_adapter_folder, load_policy, save_adapter_folder, save_policy
from pcm_policy.pusht.policy import DiffusionPolicy, PolicyConfig
from pcm_policy.sampling import SamplerSpec, Switch, sample_pcm, sample_sequential, step_grid
from pcm_policy.training import LoopConfig, train
from pcm_policy.training.pct import OBJECTIVES, Objective, alpha_from_var, get_objective, pct_loss
from pcm_policy.training.pct_data import load as load_trajectories

ROOT = Path(__file__).resolve().parents[1]


def _policy_with_copy(seed=0):
    torch.manual_seed(seed)
    p = DiffusionPolicy(PolicyConfig(unet={"down_dims": [8, 16, 32]})).eval()
    net = add_full_copy(p)
    with torch.no_grad():  # a copy that differs from the base
        for q in net.parameters():
            q.add_(0.05 * torch.randn_like(q))
    return p, net


def _inputs(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, 2, generator=g), torch.randint(0, 100, (n,), generator=g), torch.randn(n, 40, generator=g)


def test_full_copy_routes_lambda_per_row():
    p, net = _policy_with_copy()
    x, t, c = _inputs()
    assert full_copy_of(p) is net and isinstance(p.model_wrapper, FullCopy)
    assert all(not q.requires_grad for q in p.model.parameters()) and all(q.requires_grad for q in net.parameters())
    with torch.no_grad():
        base, copy = p.model(x, t, c), net(x, t, c)
        assert not torch.equal(base, copy)
        for lam in (None, 0, 0.0):
            assert torch.equal(p.model_fn(x, t, c, lora_scale=lam), base)
        assert torch.equal(p.model_fn(x, t, c, lora_scale=1.0), copy)
        rows = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])  # per row: the copy where 1, the base where 0
        on = rows.bool()
        want = torch.empty_like(x)  # each network on its own rows, in one call each
        want[on], want[~on] = net(x[on], t[on], c[on]), p.model(x[~on], t[~on], c[~on])
        assert torch.equal(p.model_fn(x, t, c, lora_scale=rows), want)
        with pytest.raises(ValueError, match="feature-space"):
            p.model_fn(x, t, c, lora_scale=0.5)
        with pytest.raises(ValueError, match="0 or 1"):
            p.model_fn(x, t, c, lora_scale=torch.full((5,), 0.5))
    with pytest.raises(ValueError, match="already has an adapter"):
        add_full_copy(p)
    q = DiffusionPolicy(PolicyConfig(unet={"down_dims": [8, 16, 32]}))
    add_lora(q.model, rank=2, alpha=2)
    with pytest.raises(ValueError, match="already has an adapter"):
        add_full_copy(q)


@pytest.mark.slow
def test_frozen_graphs_of_base_and_copy_give_the_eager_outputs():
    p, net = _policy_with_copy()
    x, t, c = _inputs()
    rows = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    lams = (None, 1, rows)
    with torch.no_grad():
        eager = [p.model_fn(x, t, c, lora_scale=lam) for lam in lams]
        p.freeze()  # traced base and copy: the eager outputs bit for bit
        assert p.model_wrapper._frozen is not None and p._frozen is not None
        assert all(torch.equal(p.model_fn(x, t, c, lora_scale=lam), e) for lam, e in zip(lams, eager, strict=True))
        p.freeze(False)
        assert p.model_wrapper._frozen is None and torch.equal(p.model_fn(x, t, c, lora_scale=1), eager[1])


def test_full_copy_folder_round_trip_and_base_checkpoint_without_it(tmp_path):
    p, net = _policy_with_copy()
    x, t, c = _inputs()
    spec = SamplerSpec.named("pcm", switch=Switch(0, 3, "feature"), num_steps=10)
    save_adapter_folder(p, tmp_path / "adapter", spec, extra={"note": 1})
    save_policy(p, tmp_path / "base")
    q = load_policy(tmp_path / "base")
    assert full_copy_of(q) is None and torch.equal(q.model(x, t, c), p.model(x, t, c))  # the base alone
    got, meta = load_adapter_folder(q, tmp_path / "adapter")
    assert got == spec and meta["finetune"] == "full" and meta["note"] == 1
    with torch.no_grad():
        assert torch.equal(q.model_fn(x, t, c, lora_scale=1), net(x, t, c))


def test_feature_space_ramp_over_a_full_copy_keeps_exactness():
    p, _ = _policy_with_copy()
    x_T, _, c = _inputs(3)
    grid = step_grid(p.noise_scheduler, 8, solver="ddim")
    ref, _ = sample_sequential(p.model_fn, x_T, c, grid=grid)
    x, st = sample_pcm(p.model_fn, x_T, c, grid=grid, schedule=Switch(0, 3, "feature"), tol=0.0)
    assert st.converged and torch.allclose(x, ref, atol=1e-5) and any(0 < lam < 1 for lam in st.lambdas)
    first, _ = sample_pcm(p.model_fn, x_T, c, grid=grid, schedule=Switch(1, 1), tol=0.0, max_iters=1)
    base, _ = sample_pcm(p.model_fn, x_T, c, grid=grid, schedule=Switch(0, 0), tol=0.0, max_iters=1)
    assert not torch.allclose(first, base)  # the copy is what the adapted iteration runs


def test_the_shipped_paper_adapter_loads_as_a_full_copy():
    folder = ROOT / "checkpoints/pusht_pcm_paper"
    p = load_policy(ROOT / "checkpoints/pusht_base")
    spec, meta = load_adapter_folder(p, folder)
    assert meta["finetune"] == "full" and full_copy_of(p) is not None and spec.switch == Switch(1, 1)
    assert meta["config"]["pct"]["objective"] == "picard" and meta["config"]["pct"]["name"] == "paper_full"


# ---------------------------------------------------------------- the paper's configs still run (smoke budgets)


@pytest.mark.slow
@pytest.mark.parametrize("pct,more", [("paper_cpu", []), ("paper", []), ("paper_full", []),
                                      ("paper_cpu", ["pct.form=chain"])])
def test_the_paper_configs_train_an_exact_adapter_on_a_smoke_budget(env, tmp_path, pct, more):  # noqa: F811
    """``train_pct.py task=pusht pct=paper_cpu|paper|paper_full`` (and the chain form) through the one driver on
    a smoke budget: the adapter folder records the paper's objective and its spec is exact (tol 0 == DDIM)."""
    from test_pct import SMOKE, compose

    from pcm_policy.pusht.task import pct_task
    from pcm_policy.sampling import make_sampler
    from pcm_policy.training.pct import run_pct

    cfg = compose(["task=pusht", f"pct={pct}", f"base={env / 'base'}", f"task.dataset={env / 'demos.zarr'}",
                   f"work_dir={tmp_path / 'w'}", f"out={tmp_path / 'out'}", *SMOKE, "pct.k_max=2", *more])
    task, data, extra = pct_task(cfg, ROOT)
    run_pct(task, cfg["pct"], data, out=tmp_path / "out", run_dir=tmp_path / "w/train", data_path=tmp_path / "w/d",
            config=cfg, extra=extra)
    policy = load_policy(env / "base")
    spec, meta = load_adapter_folder(policy, tmp_path / "out")
    assert meta["tuned"] and meta["config"]["pct"]["objective"] == "picard" and meta["config"]["pct"]["name"] == pct
    assert spec.form == cfg["pct"]["form"] and (full_copy_of(policy) is not None) == (pct == "paper_full")
    spaces = {c["spec"]["switch"]["space"] for c in meta["metrics"]["candidates"]}
    assert spaces == {"weight", *cfg["pct"]["tune"]["spaces"]}  # the paper's feature-space ramps were tuned
    x_T, _, c = _inputs(3)
    ref, _ = make_sampler("ddim", policy.noise_scheduler, num_steps=spec.num_steps)(policy.model_fn, x_T, c)
    x, st = make_sampler(spec.replace(tol=0.0, k=None), policy.noise_scheduler)(policy.model_fn, x_T, c)
    assert st.converged and torch.allclose(x, ref, atol=1e-5)


@pytest.mark.slow
def test_the_image_paper_config_trains_an_exact_adapter_on_a_smoke_budget(ldm_dir, tmp_path):  # noqa: F811
    """``train_pct.py task=celeba pct=image_paper`` (the paper's objective and feature-space ramps on images) on a
    tiny LDM and a smoke budget: a tuned adapter whose spec is exact (tol 0 == DDIM)."""
    from test_vision_pct import compose, make_data, run_pct

    from pcm_policy.adapters import load_adapter_folder as load_folder
    from pcm_policy.sampling import make_sampler
    from pcm_policy.vision import load_model, model_function

    out = tmp_path / "out"
    cfg = compose(["task=celeba", "pct=image_paper", f"task.model={ldm_dir}", "task.n=6", "task.num_steps=6",
                   "task.iterates=4", f"work_dir={tmp_path / 'w'}", f"out={out}", "pct.training.steps=2",
                   "pct.training.warmup_steps=1", "pct.training.val_every=1", "pct.training.log_every=1",
                   "pct.val.n=2", "pct.val.k_max=1", "pct.tune.k_max=2", "pct.tune.anderson=[0]"])
    run_pct(cfg, "test", ROOT)
    model = load_model(ldm_dir)
    spec, meta = load_folder(model.unet, out)
    assert meta["tuned"] and meta["config"]["pct"]["name"] == "image_paper"
    assert {c["spec"]["switch"]["space"] for c in meta["metrics"]["candidates"]} == {"weight", "feature"}
    fn, grid = model_function(model, 7.5), step_grid(model.scheduler, 6, solver="ddim")
    data = make_data(model, fn, grid, 2, 6, seed_base=7, path=tmp_path / "check")
    ref, _ = sample_sequential(fn, data["x_T"], data["cond"], grid=grid)
    x, st = make_sampler(spec.replace(tol=0.0, k=None), model.scheduler)(fn, data["x_T"], data["cond"])
    assert st.converged and torch.allclose(x, ref, atol=1e-4)


def test_pct_loss_trains_only_lora(env, tmp_path):  # noqa: F811
    d, policy = load_trajectories(env / "traj"), load_policy(env / "base")
    add_lora(policy.model, rank=4, alpha=8)
    _randomise_lora(policy.model)  # B != 0, so A gets gradients too
    grid, alpha = ddim_grid(policy, TINY.num_steps), alpha_from_var(d["var_k"])
    batch = next(PCTBatches(d, 3))
    pct_loss(policy.model_fn, batch, grid, alpha).backward()
    lora = {id(p) for p in lora_parameters(policy.model)}
    for name, p in policy.named_parameters():
        if id(p) in lora:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and not p.requires_grad, name
    policy.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    loop = LoopConfig(steps=1, warmup_steps=0, optimizer="adam", log_every=1, ckpt_every=1)
    train(policy, lambda b: pct_loss(policy.model_fn, b, grid, alpha), PCTBatches(d, 2), loop, tmp_path,
          lambda m, s: None,
          params=lora_parameters(policy.model))
    after = policy.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]) != ("lora_" in k), k  # base bit-identical, every adapter tensor moved


def test_the_paper_objective_registers_itself_and_the_core_does_not_import_it():
    """``objective: picard`` reaches the driver through ``training.pct.OBJECTIVES`` alone: importing
    ``pcm_policy.paper.pct`` registers it; the core's driver imports nothing of the paper (ast, also inside
    functions); an unknown name is a ValueError that says what to import."""
    assert isinstance(OBJECTIVES["picard"], Objective) and get_objective("jump") is OBJECTIVES["jump"]
    with pytest.raises(ValueError, match="jump, picard.*pcm_policy.paper.pct.*'unrolled'"):
        get_objective("unrolled")
    core = imports(PKG / "training/pct.py", "pcm_policy.training.pct")
    assert not {m for m in core if m.startswith("pcm_policy.paper")}, core
