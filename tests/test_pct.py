"""Picard Consistency Training: loss gradients, Phi at lambda = 0, resumable data, smoke run, exactness."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pcm_policy.data import ReplayBuffer
from pcm_policy.io import read_safetensors, recorded_path
from pcm_policy.lora import add_lora, has_lora, lora_parameters
from pcm_policy.paper import full_copy_of
from pcm_policy.pusht.checkpoint import load_adapter_folder, load_policy, save_policy
from pcm_policy.pusht.normalizer import NormalizerDict
from pcm_policy.pusht.pct_data import TrajDataConfig, collect_conditions
from pcm_policy.pusht.policy import DiffusionPolicy, PolicyConfig
from pcm_policy.pusht.task import make_task
from pcm_policy.sampling import SamplerSpec, Switch, sample_pcm, sample_sequential, step_grid
from pcm_policy.sampling.picard import _bound
from pcm_policy.training.pct import (
    JumpBatches,
    add_draws,
    choose_schedule,
    jump_loss,
    phi,
)
from pcm_policy.training.pct_data import PCTDataError as TrajDataError
from pcm_policy.training.pct_data import load as load_trajectories
from pcm_policy.training.pct_data import make


def ddim_grid(policy, T):
    return step_grid(policy.noise_scheduler, T, solver="ddim")

ROOT = Path(__file__).resolve().parents[1]
TINY = TrajDataConfig(n=6, num_steps=8, iterates=4, chunk=3, val_fraction=0.34, rollout_fraction=0.5,
                      per_episode=2, rollout_batch=2, max_steps=16, safeguard=None)


def generate(policy, path, cfg, demos=None, rollout_cache=None, **kw):
    """The PushT task's PCT store: its conditions through the generic store (``training.pct_data.make``)."""
    task = make_task(policy, data=cfg, demos=demos, num_steps=cfg.num_steps, progress=False,
                     rollout_cache=rollout_cache)
    return make(task, cfg.pct_data(), path, progress=False, **kw)


def _policy(seed=0):
    torch.manual_seed(seed)
    p = DiffusionPolicy(PolicyConfig(unet_size="small", unet={"down_dims": [16, 32, 64]}))
    rng = np.random.default_rng(0)
    p.normalizer.load_state_dict(NormalizerDict.fit({"obs": rng.uniform(0, 512, (64, 20)),
                                                     "action": rng.uniform(0, 512, (64, 2))}).state_dict())
    return p.eval()


def assert_pcm_is_ddim(policy, spec, T=8):
    """PCM with ``spec`` at tol 0 converges to sequential DDIM-T (1e-5) on seeded random inputs."""
    g = torch.Generator().manual_seed(3)
    x_T, cond = torch.randn(3, 16, 2, generator=g), torch.randn(3, 40, generator=g)
    grid = step_grid(policy.noise_scheduler, T, solver="ddim")
    ref, _ = sample_sequential(policy.model_fn, x_T, cond, grid=grid)
    x, st = sample_pcm(policy.model_fn, x_T, cond, grid=grid, schedule=spec.switch, taa=spec.taa, jump=spec.jump,
                       init=spec.init, safeguard=spec.safeguard, tol=0.0)
    assert st.converged and torch.allclose(x, ref, atol=1e-5)


def _randomise_lora(model, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(scale * torch.randn(p.shape, generator=g))


def tiny_demos(path) -> None:
    """A 4-episode demonstration store of random PushT-shaped rows (12 steps each) at ``path``."""
    buf, rng = ReplayBuffer.create(path), np.random.default_rng(0)
    for _ in range(4):
        buf.add_episode({"state": rng.uniform(50, 450, (12, 5)).astype(np.float32),
                         "keypoint": rng.uniform(50, 450, (12, 9, 2)).astype(np.float32),
                         "action": rng.uniform(50, 450, (12, 2)).astype(np.float32)})


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny random policy checkpoint, a 4-episode demonstration store and a trajectory store."""
    tmp = tmp_path_factory.mktemp("pct")
    save_policy(_policy(), tmp / "base")
    tiny_demos(tmp / "demos.zarr")
    generate(load_policy(tmp / "base"), tmp / "traj", TINY, tmp / "demos.zarr")
    return tmp


def test_store_layout(env):
    d = load_trajectories(env / "traj")
    T, K, N = TINY.num_steps, TINY.iterates, TINY.n
    assert d["x_star"].shape == (N, T + 1, 16, 2) and d["iterates"].shape == (N, K, T + 1, 16, 2)
    assert d["cond"].shape == (N, 40) and d["var_k"].shape == (K,) and set(d["split"].tolist()) == {0, 1}
    c = collect_conditions(load_policy(env / "base"), TINY, env / "demos.zarr", progress=False)
    assert set(c["source"].tolist()) == {0, 1} and c["split"].tolist() == d["split"].tolist()
    assert all(s >= 400_000 for s in c["origin"][c["source"] == 1].tolist())  # never evaluation seeds
    assert not set(c["rollout_seeds"]["train"]) & set(c["rollout_seeds"]["val"])
    assert torch.equal(d["iterates"][:, :, 0], d["x_star"][:, None, 0].expand(-1, K, -1, -1))  # X^k_0 = x_T
    assert torch.allclose(d["iterates"][:, -1, K - 1], d["x_star"][:, K - 1], atol=1e-5)  # triangular exactness


def test_jump_loss_is_the_one_call_x0_error_and_the_extra_draws_are_ddim_outputs(env, tmp_path):
    """pct.objective=jump: the loss is ||x0 predicted at (x_T, t_0) with the adapter - X*[T]||^2 (unclipped),
    its gradient reaches every LoRA tensor; add_draws gives seeded x_T per training condition with their
    sequential DDIM outputs, cached and reused."""
    d, policy = load_trajectories(env / "traj"), load_policy(env / "base")
    grid = ddim_grid(policy, TINY.num_steps)
    extra = add_draws(policy.model_fn, grid, d, 2, seed=5, path=tmp_path / "draws.pt")
    n_train = int((d["split"] == 0).sum())
    assert extra["x_T"].shape == (2 * n_train, 16, 2) and extra["rows"].shape == (2 * n_train,)
    assert bool((d["split"][extra["rows"]] == 0).all())  # training conditions only, each `draws` times
    ref, _ = sample_sequential(policy.model_fn, extra["x_T"][:3], d["cond"][extra["rows"][:3]], grid=grid)
    assert torch.allclose(extra["target"][:3], ref, atol=1e-6)
    again = add_draws(None, grid, d, 2, seed=5, path=tmp_path / "draws.pt")  # from the cache: no model needed
    assert torch.equal(again["target"], extra["target"])
    add_lora(policy.model, rank=4, alpha=8)
    _randomise_lora(policy.model)
    batch = next(JumpBatches(d, 4, extra))
    loss = jump_loss(policy.model_fn, batch, grid)
    a = grid.alpha[0]
    eps = policy.model_fn(batch["x_T"], grid.timesteps[:1].expand(4), batch["cond"], lora_scale=1.0)
    want = ((batch["x_T"] - (1 - a).sqrt() * eps) / a.sqrt() - batch["target"]).pow(2).mean()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=0)
    loss.backward()
    lora = {id(p) for p in lora_parameters(policy.model)}
    for name, p in policy.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) if id(p) in lora else p.grad is None, name


@pytest.mark.parametrize("safeguard", [None, 1.0])
def test_phi_at_lambda_zero_is_the_base_picard_update(env, tmp_path, safeguard):
    policy = load_policy(env / "base")
    cfg = TrajDataConfig(**{**TINY.__dict__, "safeguard": safeguard, "n": 3, "rollout_fraction": 1.0})
    d = load_trajectories(env / "traj") if safeguard is None else \
        load_trajectories(generate(policy, tmp_path / "t", cfg))
    add_lora(policy.model, rank=4, alpha=8)
    _randomise_lora(policy.model, scale=0.5)
    grid = ddim_grid(policy, TINY.num_steps)
    bound = None if safeguard is None else _bound(grid, d["x_T"], safeguard)
    with torch.no_grad():
        for k in range(TINY.iterates - 1):
            X, nxt = d["iterates"][:, k].transpose(0, 1), d["iterates"][:, k + 1].transpose(0, 1)
            out = phi(policy.model_fn, X, d["cond"], grid, lora_scale=0.0)
            tol = 1e-5 * (1 + nxt.abs().max())
            if bound is None:
                assert (out - nxt).abs().max() <= tol
            else:  # the safeguard clamps positions after the anchor: each entry is Phi or clamp(Phi)
                clamped = torch.maximum(torch.minimum(out, bound), -bound)
                assert torch.minimum((out - nxt).abs(), (clamped - nxt).abs()).max() <= tol
            adapted = phi(policy.model_fn, X, d["cond"], grid, lora_scale=1.0)
            assert (adapted - out).abs().max() > 1e-4  # the adapter acts


def test_generation_resumes_after_a_chunk(env, tmp_path, capsys):
    policy = load_policy(env / "base")
    generate(policy, tmp_path / "a", TINY, env / "demos.zarr", max_chunks=1)
    with pytest.raises(TrajDataError, match="incomplete"):
        load_trajectories(tmp_path / "a")
    capsys.readouterr()
    generate(policy, tmp_path / "a", TINY, env / "demos.zarr")
    assert f"PCT trajectories: resuming {tmp_path / 'a'} at chunk 1/2" in capsys.readouterr().out  # said, not silent
    a, b = load_trajectories(tmp_path / "a"), load_trajectories(env / "traj")
    for k in ("cond", "x_T", "x_star", "iterates", "split", "var_k"):
        assert torch.equal(a[k], b[k]), k
    other = TrajDataConfig(**{**TINY.__dict__, "iterates": 5})
    with pytest.raises(TrajDataError, match="iterates"):
        generate(policy, tmp_path / "a", other, env / "demos.zarr")


def test_rollout_conditions_resume_where_they_stopped(env, tmp_path, monkeypatch, capsys):
    """The first stage interrupted between two rollout batches: the rerun reads the finished batch back (and says
    so), makes the same store as an uninterrupted run, and removes what it kept for the resume."""
    import pcm_policy.pusht.pct_data as D

    policy, real, calls = load_policy(env / "base"), D._rollout_batch, []

    def stop_on_second(*a, **kw):
        calls.append(a[2])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(D, "_rollout_batch", stop_on_second)
    cache = tmp_path / ".a.rollouts"
    with pytest.raises(KeyboardInterrupt):
        generate(policy, tmp_path / "a", TINY, env / "demos.zarr", rollout_cache=cache)
    monkeypatch.setattr(D, "_rollout_batch", real)
    generate(policy, tmp_path / "a", TINY, env / "demos.zarr", rollout_cache=cache)
    assert "rollout conditions: all 2 read from" in capsys.readouterr().out  # the training split's batch
    a, b = load_trajectories(tmp_path / "a"), load_trajectories(env / "traj")
    for k in ("cond", "x_T", "x_star", "iterates", "split", "var_k"):
        assert torch.equal(a[k], b[k]), k
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_choose_schedule_rule():
    def spec(k_on, k_off, space="weight"):
        return SamplerSpec.named("pcm", switch=Switch(k_on, k_off, space))

    r = [{"spec": spec(1, 1), "distance": [5.0, 0.9, 0.1]}, {"spec": spec(2, 2), "distance": [4.0, 0.5, 0.2]},
         {"spec": spec(0, 3), "distance": [3.0, 2.0, 1.5]}]
    assert choose_schedule(r) is r[1] and r[0]["k_match"] == 2 and r[2]["k_match"] is None
    assert choose_schedule([r[2]]) is r[2]  # none reaches the threshold: the smallest final distance
    tie = [{"spec": spec(3, 3), "distance": [2.0, 0.500001]}, {"spec": spec(0, 2, "feature"), "distance": [2.0, 0.5]},
           {"spec": spec(0, 2), "distance": [2.0, 0.5]}]
    assert choose_schedule(tie) is tie[2]  # equal to the resolution: fewest adapted iterations, weight space


def compose(overrides: list[str]) -> dict:
    """The resolved train_pct config for ``overrides``, as the script builds it (hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return OmegaConf.to_container(hydra_compose("train_pct", overrides=overrides), resolve=True)


SMOKE = ["pct.data.n=6", "pct.data.num_steps=8", "pct.data.iterates=2", "pct.data.chunk=3",
         "pct.data.val_fraction=0.34",
         "pct.data.per_episode=2", "pct.data.rollout_batch=2", "pct.data.max_steps=16", "++pct.jump.draws=1",
         "pct.batch_size=4", "pct.training.steps=2", "pct.training.warmup_steps=1", "pct.training.val_every=1",
         "pct.training.log_every=1", "pct.val.n=2", "pct.val.k_max=1", "pct.tune.k_max=2",
         "++pct.tune.jump_positions=[2,5]"]


def test_default_config_on_a_smoke_budget_is_the_shipped_recipe_and_retunes(env, tmp_path, monkeypatch):
    """``train_pct.py task=pusht`` with its default pct config, on a smoke budget, through the one driver: the
    adapter.json records the default config's objective and the sampler is exact (PCM at tol 0 == DDIM). Then
    ``retune=`` that folder: no training, the same tensors, a schedule at least as close as its base at every k."""
    from pcm_policy.pusht.task import pct_task
    from pcm_policy.training.pct import run_pct

    cfg = compose(["task=pusht", f"base={env / 'base'}", f"task.dataset={env / 'demos.zarr'}",
                   f"work_dir={tmp_path / 'w'}", f"out={tmp_path / 'out'}", *SMOKE])
    default = compose(["task=pusht"])["pct"]
    task, data, extra = pct_task(cfg, ROOT)
    monkeypatch.chdir(tmp_path)  # the data record names the store relative to the working directory
    run_pct(task, cfg["pct"], data, out=tmp_path / "out", run_dir=tmp_path / "w/train", data_path=tmp_path / "w/d",
            config=cfg, extra=extra)
    a = json.loads((tmp_path / "out/adapter.json").read_text())
    assert a["tuned"] and a["config"]["pct"]["objective"] == default["objective"]
    assert a["metrics"]["data"]["path"] == str(Path("w/d")) and recorded_path("/elsewhere/d") == "/elsewhere/d"
    assert a["config"]["pct"]["lora"] == default["lora"] and a["config"]["pct"]["name"] == default["name"]
    policy = load_policy(env / "base")
    spec, _ = load_adapter_folder(policy, tmp_path / "out")
    assert_pcm_is_ddim(policy, spec)

    # retune=: the same tensors, no training, the schedule tuned afresh with another base (plain Picard rows here)
    plain = {**cfg["pct"], "jump": {**cfg["pct"]["jump"], "schedule": {**cfg["pct"]["jump"]["schedule"], "taa": None}}}
    task, data, extra = pct_task(cfg, ROOT)
    m = run_pct(task, plain, data, out=tmp_path / "re", run_dir=tmp_path / "w2/train", data_path=tmp_path / "w/d",
                config=cfg, extra=extra, retune=tmp_path / "out")
    b = json.loads((tmp_path / "re/adapter.json").read_text())
    assert b["retuned_from"]["folder"] == str(tmp_path / "out") and b["steps"] == a["steps"]
    assert a["sampler"]["taa"] is not None and b["sampler"]["taa"] is None
    assert not [p.name for p in (tmp_path / "w2/train").iterdir() if p.name != ".lock"]  # nothing trained
    assert all(c <= p + 1e-9 for c, p in zip(m["chosen"]["distance"], m["picard_taa"], strict=True))
    old, new = (read_safetensors(tmp_path / f / "adapter.safetensors") for f in ("out", "re"))
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    assert json.loads((tmp_path / "re/train_log.json").read_text()) == json.loads(
        (tmp_path / "out/train_log.json").read_text())
    policy = load_policy(env / "base")
    assert_pcm_is_ddim(policy, load_adapter_folder(policy, tmp_path / "re")[0])
    for folder, out, msg in ((tmp_path / "out", tmp_path / "out", "another folder"),
                             (tmp_path / "w", tmp_path / "x", "not an adapter folder")):
        with pytest.raises(ValueError, match=msg):
            run_pct(task, plain, data, out=out, run_dir=tmp_path / "w3", data_path=tmp_path / "w/d", retune=folder)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_smoke_run_writes_an_exact_adapter(env, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts/train_pct.py"), "task=pusht", "pct=smoke", f"base={env / 'base'}",
           f"out={out}", f"work_dir={tmp_path / 'work'}", f"task.dataset={env / 'demos.zarr'}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((out / "adapter.json").read_text())
    assert cfg["sampler"]["name"] == "pcm" and cfg["tuned"]
    assert {"candidates", "picard", "chosen", "timing"} <= set(cfg["metrics"]) and "train_pct.py" in cfg["command"]
    assert (tmp_path / "work/train/log.jsonl").exists()
    policy = load_policy(env / "base")
    spec, _ = load_adapter_folder(policy, out)
    assert any(p.abs().sum() > 0 for n, p in policy.model.named_parameters() if "lora_B" in n)  # it trained
    g = torch.Generator().manual_seed(3)
    x_T, cond = torch.randn(3, 16, 2, generator=g), torch.randn(3, 40, generator=g)
    kw = dict(grid=step_grid(policy.noise_scheduler, 10, solver="ddim"))
    ref, _ = sample_sequential(policy.model_fn, x_T, cond, **kw)
    x, st = sample_pcm(policy.model_fn, x_T, cond, schedule=spec.switch, taa=spec.taa, tol=0.0, **kw)
    assert st.converged and torch.allclose(x, ref, atol=1e-5)  # exactness: PCM at tol 0 == sequential DDIM
    full = [*cmd[:-3], f"out={tmp_path / 'out_full'}", f"work_dir={tmp_path / 'work'}", cmd[-1], "pct.finetune=full",
            "pct.tune.spaces=[feature]", f"run_dir={tmp_path / 'full'}"]  # the paper's full copy, same store
    r = subprocess.run(full, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    policy = load_policy(env / "base")
    spec, cfg = load_adapter_folder(policy, tmp_path / "out_full")
    assert cfg["finetune"] == "full" and full_copy_of(policy) is not None and not has_lora(policy.model)
    base_w, copy_w = dict(policy.model.named_parameters()), dict(full_copy_of(policy).named_parameters())
    assert any(not torch.equal(base_w[n], p) for n, p in copy_w.items())  # the copy trained, the base did not
    assert all(torch.equal(base_w[n], p) for n, p in load_policy(env / "base").model.named_parameters())
    ramp = Switch(0, 2, "feature")  # lambda 1, 0.5, 0: the copy and the base per row, outputs mixed
    x, st = sample_pcm(policy.model_fn, x_T, cond, schedule=ramp, tol=0.0, **kw)
    assert st.converged and torch.allclose(x, ref, atol=1e-5) and any(0 < lam < 1 for lam in st.lambdas)
    with pytest.raises(ValueError, match="feature-space"):  # a copy has no weight-space lambda = 0.5
        sample_pcm(policy.model_fn, x_T, cond, schedule=Switch(0, 2, "weight"), tol=0.0, **kw)
    policy.freeze()  # frozen graphs of the base and the copy give the eager outputs
    assert torch.allclose(sample_pcm(policy.model_fn, x_T, cond, schedule=ramp, tol=0.0, **kw)[0], x, atol=1e-6)
    save_policy(policy, tmp_path / "resaved")  # the base checkpoint never takes the copy's weights
    assert full_copy_of(load_policy(tmp_path / "resaved")) is None
    missing = subprocess.run(cmd[:3] + [f"base={tmp_path / 'nope'}", f"work_dir={tmp_path / 'w2'}"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "nope" in missing.stderr and "train_policy.py" in missing.stderr


@pytest.mark.slow
def test_anytime_run_ships_a_tuned_jump_that_keeps_exactness(env, tmp_path):
    """pct=anytime end to end on the tiny store: the adapter.json spec is Picard + TAA on the base model with
    the jump's steps kept only where they were closer than Picard + TAA on held-out conditions, and the
    sampler converges to sequential DDIM exactly."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts/train_pct.py"), "task=pusht", "pct=anytime", f"base={env / 'base'}",
           f"out={out}", f"work_dir={tmp_path / 'work'}", f"task.dataset={env / 'demos.zarr'}", "pct.data.n=6",
           "pct.data.num_steps=8", "pct.data.chunk=3", "pct.data.val_fraction=0.34", "pct.data.per_episode=2",
           "pct.data.rollout_batch=2", "pct.data.max_steps=16", "pct.jump.draws=2", "pct.batch_size=4",
           "pct.training.steps=3", "pct.training.warmup_steps=1", "pct.training.val_every=1", "pct.val.n=2",
           "pct.tune.k_max=3", "pct.tune.jump_positions=[2,5]"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((out / "adapter.json").read_text())
    m = cfg["metrics"]
    assert cfg["sampler"]["switch"] == {"k_on": 0, "k_off": 0, "space": "weight"} and cfg["sampler"]["taa"]
    picard, chosen, steps = m["picard_taa"], m["chosen"]["distance"], m["steps"]
    jump = cfg["sampler"].get("jump")
    n = len(jump["positions"]) + jump.get("hold", 0) if jump else 0  # one step per call or held iteration
    assert all(min(st["candidates"].values()) < st["picard"] for st in steps[:n])  # kept only where closer
    assert len(steps) == n or min(steps[n]["candidates"].values()) >= steps[n]["picard"]  # stopped where not
    assert all(abs(chosen[k] - picard[k]) < 1e-6 for k in range(n, len(picard)))  # Picard's from then on
    policy = load_policy(env / "base")
    spec, _ = load_adapter_folder(policy, out)
    assert spec.jump == (SamplerSpec.from_dict(cfg["sampler"]).jump)
    assert_pcm_is_ddim(policy, spec)


def test_tune_taa_reports_every_variant_and_picks_by_the_pct_rule(env, tmp_path, capsys):
    from pcm_policy.pusht.taa_tuning import tune_taa

    out = tmp_path / "taa.json"
    grid = [(2, 1.0, 0.8), (2, 1.0, 1.0), (3, 1.0, 0.8), (3, 1.0, 1.0)]
    ret = tune_taa(env / "traj", env / "base", grid, safeguard=1.0, n=200, k_max=4, json_out=out)
    res = json.loads(out.read_text())
    got = [(r["spec"]["taa"]["memory"], r["spec"]["taa"]["mixing"]) for r in res["results"]]
    assert got == [(2, 0.8), (2, 1.0), (3, 0.8), (3, 1.0)]
    rows = [{**r, "spec": SamplerSpec.from_dict(r["spec"])} for r in res["results"]]
    assert res["chosen"]["spec"] == choose_schedule(rows)["spec"].to_dict() and len(res["results"][0]["distance"]) == 4
    assert ret["chosen"]["spec"].to_dict() == res["chosen"]["spec"] and ret["conditions"] == res["conditions"]
    assert "chosen: m =" in capsys.readouterr().out
    with pytest.raises(TrajDataError):
        tune_taa(tmp_path / "none", env / "base", grid)
    with pytest.raises(ValueError, match="mixings"):
        tune_taa(env / "traj", env / "base", [(2, 1.0, 1.5)])


@pytest.mark.slow
def test_tune_taa_script_exit_codes(env, tmp_path):
    script = [sys.executable, str(ROOT / "scripts/tune_taa.py")]
    r = subprocess.run([*script, "--mixings", "1.5"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: ")
    r = subprocess.run([*script, "--store", str(tmp_path / "none"), "--checkpoint", str(env / "base")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def _compose(overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return OmegaConf.to_container(compose("train_pct", overrides=overrides), resolve=True)


def _flat(d: dict, path: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{path}{k}.") if isinstance(v, dict) else {f"{path}{k}": v})
    return out


@pytest.mark.parametrize("task,shipped", [("pusht", "checkpoints/pusht_pcm"),
                                          ("celeba", "checkpoints/vision/ldm_mnist_pcm"),
                                          ("sd", "checkpoints/vision/sd_mnist_pcm")])
def test_the_default_config_is_the_shipped_adapters_recipe(task, shipped):
    """``train_pct.py task=...`` with no pct= trains what made the shipped adapter: every setting of the
    default equals the one recorded in its adapter.json; the recorded config has only settings the jump
    objective never reads besides (the removed unrolled objective's, the switching schedules' tuning)."""
    paths = ("out", "work_dir", "data_path", "run_dir", "threads", "force")
    got = _flat({k: v for k, v in _compose([f"task={task}"]).items() if k not in paths})
    cfg = json.loads((ROOT / shipped / "adapter.json").read_text())["config"]
    want = _flat({k: v for k, v in cfg.items() if k not in paths})
    assert got["pct.objective"] == "jump" and {k: want.get(k) for k in got} == got
    unread = {"pct.k_max", "pct.val.schedule.", "pct.tune.hard", "pct.tune.ramps", "pct.tune.spaces",
              "pct.tune.anderson", "pct.unroll."}
    assert all(any(k.startswith(u) for u in unread) for k in set(want) - set(got))
