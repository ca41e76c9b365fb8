"""The consistency-distilled student (``training.consistency``, ``sampling.consistency``) on the toy Gaussian
mixture of ``test_task_gmm`` (an analytic eps model plus a small MLP the adapter trains, a real DDIMScheduler)."""
from __future__ import annotations

import json

import pytest
import torch
from test_task_gmm import T, gmm_task

from pcm_policy.adapters import load_sampler
from pcm_policy.lora import add_lora, lora_parameters
from pcm_policy.sampling import SamplerSpec, ddim_step, make_sampler, sample_sequential
from pcm_policy.sampling.consistency import consistency_fn, consistency_positions, sample_consistency
from pcm_policy.training.consistency import CDBatches, TargetNetwork, cd_loss, run_consistency, teacher_data

CD = {"num_steps": T, "mu": 0.9, "batch_size": 16, "lora": {"rank": 2, "alpha": 2, "targets": ["fc1", "fc2"]},
      "training": {"steps": 4, "lr": 1e-2, "warmup_steps": 1, "log_every": 1, "val_every": 2, "ckpt_every": 2,
                   "snapshot_every": 0, "seed": 0},
      "val": {"n": 6, "k_max": 2}}


def _randomise(module):
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.3)


def test_the_boundary_holds_at_the_last_position_and_k_calls_are_k_calls():
    task = gmm_task()
    add_lora(task.module, rank=2, alpha=2, target_modules=["fc1", "fc2"])
    _randomise(task.module)  # a student that is not the base
    grid = task.grid()
    cond, x_T = task.conditions("val", 5)
    x = torch.randn_like(x_T)
    idx = torch.full((5,), T - 1)
    out = task.model_fn(x, grid.timesteps[idx], cond, lora_scale=1.0)
    assert torch.allclose(consistency_fn(grid, x, out, idx)[0], ddim_step(grid, x, out, idx), atol=1e-6)
    assert consistency_positions(1, T) == [0] and consistency_positions(4, T) == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="1..T"):
        consistency_positions(T + 1, T)
    # one call at position 0 is the x0 the model predicts from x_T there (final abar 1), read with LoRA scale 1
    x1, st = sample_consistency(task.model_fn, x_T, cond, grid=grid, k=1)
    i0 = torch.zeros(5, dtype=torch.long)
    assert st.iterations == 1 and st.nfe == 1
    assert torch.allclose(x1, consistency_fn(grid, x_T, task.model_fn(x_T, grid.timesteps[i0], cond, lora_scale=1.0),
                                                   i0)[0])
    x3, st = sample_consistency(task.model_fn, x_T, cond, grid=grid, k=3)
    again, _ = sample_consistency(task.model_fn, x_T, cond, grid=grid, k=3)
    assert st.iterations == 3 and torch.equal(x3, again) and not torch.equal(x3, x1)  # deterministic re-noising
    z = torch.randn(2, *x_T.shape)
    fresh, _ = sample_consistency(task.model_fn, x_T, cond, grid=grid, k=3, noise=z)
    assert not torch.allclose(fresh, x3)
    with pytest.raises(ValueError, match="noise must be"):
        sample_consistency(task.model_fn, x_T, cond, grid=grid, k=3, noise=z[:1])
    # one generator per row (what closed-loop rollouts pass): each row's draws from its own generator
    rows, _ = sample_consistency(task.model_fn, x_T, cond, grid=grid, k=3,
                                 generator=[torch.Generator().manual_seed(s) for s in range(5)])
    alone, _ = sample_consistency(task.model_fn, x_T[2:3], cond[2:3], grid=grid, k=3,
                                  generator=[torch.Generator().manual_seed(2)])
    assert torch.allclose(rows[2:3], alone, atol=1e-6) and not torch.allclose(rows, x3)
    with pytest.raises(ValueError, match="one per row"):
        sample_consistency(task.model_fn, x_T, cond, grid=grid, k=3, generator=[torch.Generator()])
    s = make_sampler(SamplerSpec.named("consistency", num_steps=T, k=3), task.scheduler)
    assert torch.equal(s(task.model_fn, x_T, cond)[0], x3)
    with pytest.raises(ValueError, match="consistency calls"):
        SamplerSpec.named("consistency", num_steps=T, k=T + 1)


def test_cd_loss_is_zero_at_the_boundary_for_the_base_and_trains_only_the_adapter():
    task = gmm_task()
    grid = task.grid()
    data = teacher_data(task, 16)
    cond, x_T = task.split("train", 16)
    assert torch.equal(data["cond"], cond)
    assert torch.allclose(data["x0"], sample_sequential(task.model_fn, x_T, cond, grid=grid)[0])
    add_lora(task.module, rank=2, alpha=2, target_modules=["fc1", "fc2"])
    params = lora_parameters(task.module)
    target = TargetNetwork(params)
    batch = next(CDBatches(data, 16, T))
    last = {**batch, "n": torch.full((16,), T - 1)}
    assert cd_loss(task.model_fn, last, grid, target).item() < 1e-10  # f(x, T-1) = F_{T-1}(x) = the target there
    _randomise(task.module)
    loss = cd_loss(task.model_fn, batch, grid, target)
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in params)
    assert all(p.grad is None for n, p in task.module.named_parameters() if "lora_" not in n)
    kept = [p.detach().clone() for p in params]
    with target.applied():  # the target's values (the zero-initialised adapter) swapped in, then back
        assert all(not torch.equal(p, k) for p, k in zip(params, kept, strict=True) if k.abs().sum() > 0)
    assert all(torch.equal(p, k) for p, k in zip(params, kept, strict=True))
    before = [v.clone() for v in target.values]
    target.update(0.5)
    assert all(torch.allclose(v, 0.5 * b + 0.5 * p) for v, b, p in zip(target.values, before, kept, strict=True))


@pytest.mark.slow
def test_run_consistency_trains_resumes_and_writes_a_loadable_student(tmp_path):
    task = gmm_task()
    data = teacher_data(task, 32)

    def stopping(n):  # the batch stream of a run stopped (Ctrl-C) after n batches
        it = CDBatches(data, CD["batch_size"], T)
        for _ in range(n):
            yield next(it)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="at step 3"):
        run_consistency(task, CD, data, out=tmp_path / "a", run_dir=tmp_path / "run", config={"cd": CD},
                        batches=stopping(3))
    assert (tmp_path / "run/state.pt").exists() and (tmp_path / "run/target.pt").exists()
    resumed = gmm_task()  # the stopped run resumed (its target network too) equals one uninterrupted run
    m = run_consistency(resumed, CD, data, out=tmp_path / "a", run_dir=tmp_path / "run", config={"cd": CD})
    once = gmm_task()
    run_consistency(once, CD, data, out=tmp_path / "b", run_dir=tmp_path / "once", config={"cd": CD})
    for (n, p), (_, q) in zip(resumed.module.named_parameters(), once.module.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), n
    assert set(m["val"]) == {"val_distance_k1", "val_distance_k2"} and m["distance"] == "units"
    a = json.loads((tmp_path / "a/adapter.json").read_text())
    assert a["sampler"]["name"] == "consistency" and a["sampler"]["k"] == 1 and a["method"] == "cd"
    fresh = gmm_task()
    s = load_sampler(tmp_path / "a", fresh.scheduler, module=fresh.module, k=2)
    cond, x_T = fresh.conditions("val", 6)
    x, st = s(fresh.model_fn, x_T, cond)
    want, _ = sample_consistency(once.model_fn, x_T, cond, grid=once.grid(), k=2)
    assert st.iterations == 2 and torch.allclose(x, want, atol=1e-6)
