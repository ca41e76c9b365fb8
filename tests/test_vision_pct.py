"""PCT for images (scripts/train_pct.py task=celeba|sd): iterates on the fly, the one training loop, an
exact adapter, on tiny saved models of both real layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from vision_helpers import assert_close, dirs, ldm_dir, sd_dir  # noqa: F401

from pcm_policy.adapters import load_adapter_folder
from pcm_policy.paper.pct import PCTBatches  # (importing it registers the objective image_smoke names)
from pcm_policy.sampling import index_cond, sample_pcm, sample_picard, sample_sequential, step_grid
from pcm_policy.training import pct_data
from pcm_policy.training.pct import run_pct as run_driver
from pcm_policy.training.pct_data import PCTData, base_iterates
from pcm_policy.vision import load_model, model_function
from pcm_policy.vision.task import ImageData, make_task, pct_task


def make_data(model, fn, grid, n: int, num_steps: int, iterates: int = 4, seed_base: int = 1_000_000, prompts=(),
              path=None, cache_bytes: float = 2e9) -> dict:
    """The image task's PCT store (``training.pct_data``) of a small config, loaded."""
    task = make_task(model, num_steps=num_steps, data=ImageData(n=n, seed_base=seed_base, prompts=tuple(prompts)))
    store = PCTData(n=n, num_steps=num_steps, iterates=iterates, chunk=16, var_n=16, cache_bytes=cache_bytes)
    return pct_data.load(pct_data.make(task, store, path, progress=False))


def run_pct(cfg: dict, command: str, root) -> dict:
    """What ``scripts/train_pct.py`` does with a resolved config: the task's ``pct_task``, then the one driver."""
    task, data, extra = pct_task(cfg, root)
    work = Path(cfg["work_dir"])
    return run_driver(task, cfg["pct"], data, out=cfg["out"] if Path(cfg["out"]).is_absolute() else root / cfg["out"],
                      run_dir=work / "train", data_path=work / "d", command=command, config=cfg, extra=extra,
                      force=bool(cfg.get("force")))

ROOT = Path(__file__).resolve().parents[1]


def compose(overrides: list[str]) -> dict:
    """The resolved train_pct config for ``overrides``, as the script builds it (hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return OmegaConf.to_container(hydra_compose("train_pct", overrides=overrides), resolve=True)


@pytest.mark.parametrize("family", ["ldm", "sd"])
def test_iterates_on_the_fly_are_the_base_picard_iterates(dirs, family, tmp_path):  # noqa: F811
    model = load_model(dirs[family])
    fn = model_function(model, 7.5)
    grid = step_grid(model.scheduler, 6, solver="ddim")
    prompts = ("a", "b") if family == "sd" else ()
    data = make_data(model, fn, grid, 4, 6, prompts=prompts, path=tmp_path / "kept")
    assert data["x_star"].shape == (4, 7, *model.latent_shape) and int(data["split"].sum()) == 1
    seq, _ = sample_sequential(fn, data["x_T"], data["cond"], grid=grid)
    assert_close(data["x_star"][:, -1], seq)
    fly = make_data(model, fn, grid, 4, 6, prompts=prompts, path=tmp_path / "fly", cache_bytes=0)
    assert fly["iterates"] is None and data["iterates"] is not None
    assert_close(fly["var_k"], data["var_k"])
    torch.manual_seed(0)
    b = next(PCTBatches(fly, 3, model_fn=fn, grid=grid))  # made per batch
    torch.manual_seed(0)
    cached = next(PCTBatches(data, 3))  # made once, kept
    assert torch.equal(cached["k"], b["k"])
    assert_close(cached["x_k"], b["x_k"])
    for i in range(3):  # each row is the base Picard iterate k of its condition, position 0 is x_T
        n = int((data["x_T"] == b["x_T"][i]).flatten(1).all(1).nonzero()[0])
        one = base_iterates(fn, grid, data["x_T"][n:n + 1], index_cond(data["cond"], slice(n, n + 1)), 3)
        assert_close(b["x_k"][i], one[int(b["k"][i])][:, 0])
        assert torch.equal(b["x_k"][i, 0], b["x_T"][i])
    # iterate k is exact up to position k (triangular exactness), the last iterate is X*
    its = base_iterates(fn, grid, data["x_T"], data["cond"], 6)
    assert_close(its[6].transpose(0, 1), data["x_star"])


@pytest.mark.parametrize("family,task", [("ldm", "celeba"), pytest.param("sd", "sd", marks=pytest.mark.slow)])
def test_train_pct_smoke_run_writes_an_exact_adapter(dirs, tmp_path, family, task):  # noqa: F811
    out = tmp_path / "out"
    cfg = compose([f"task={task}", "pct=image_smoke", f"task.model={dirs[family]}", "task.n=6", "task.num_steps=6",
                   "task.iterates=4", f"work_dir={tmp_path / 'w'}", f"out={out}"]
                  + (["task.prompts=[a,b]"] if task == "sd" else []))
    assert cfg["pct"]["name"] == "image_smoke" and cfg["task"]["name"] == task
    run_pct(cfg, "test", ROOT)
    cfg = json.loads((out / "adapter.json").read_text())
    assert cfg["tuned"] and cfg["sampler"]["name"] == "pcm" and cfg["metrics"]["distance"] == "latent RMSE"
    assert cfg["metrics"]["data"]["n"] == 6 and (tmp_path / "w/train/log.jsonl").exists()
    model = load_model(dirs[family])
    spec, _ = load_adapter_folder(model.unet, out)
    assert any(p.abs().sum() > 0 for n, p in model.unet.named_parameters() if "lora_B" in n)  # it trained
    fn = model_function(model, 7.5)
    grid = step_grid(model.scheduler, 6, solver="ddim")
    data = make_data(model, fn, grid, 2, 6, seed_base=7, prompts=("a",) if family == "sd" else (),
                     path=tmp_path / "check")
    ref, _ = sample_sequential(fn, data["x_T"], data["cond"], grid=grid)
    x, st = sample_pcm(fn, data["x_T"], data["cond"], grid=grid, schedule=spec.switch, taa=spec.taa, tol=0.0)
    assert st.converged
    assert_close(x, ref)  # exactness: PCM at tol 0 == sequential DDIM, whatever the adapter learned
    x2, _ = sample_picard(fn, data["x_T"], data["cond"], grid=grid, tol=0.0)
    assert_close(x2, ref)


@pytest.mark.slow
@pytest.mark.parametrize("family,task", [("ldm", "celeba"), ("sd", "sd")])
def test_image_anytime_run_ships_a_tuned_jump_that_keeps_exactness(dirs, tmp_path, family, task):  # noqa: F811
    """pct=image_anytime: the jump's extra draws are DDIM outputs of training conditions, the adapter (LoRA
    on attention and ResNet layers) trains, its jump is kept only where it beat Picard on held-out seeds, and
    the shipped sampler converges to sequential DDIM exactly."""
    out = tmp_path / "out"
    cfg = compose([f"task={task}", "pct=image_anytime", f"task.model={dirs[family]}", "task.n=6",
                   "task.num_steps=6", "task.iterates=2", f"work_dir={tmp_path / 'w'}", f"out={out}",
                   "pct.jump.draws=2", "pct.batch_size=4", "pct.training.steps=3", "pct.training.val_every=1",
                   "pct.training.warmup_steps=1", "pct.val.n=2", "pct.tune.k_max=3", "pct.tune.jump_positions=[2,4]"]
                  + (["task.prompts=[a,b]"] if task == "sd" else []))
    run_pct(cfg, "test", ROOT)
    draws = torch.load(tmp_path / "w/jump_draws_2_123.pt")
    model = load_model(dirs[family])
    fn = model_function(model, 7.5)
    grid = step_grid(model.scheduler, 6, solver="ddim")
    data = make_data(model, fn, grid, 6, 6, iterates=2, prompts=("a", "b") if family == "sd" else (),
                     path=tmp_path / "check")
    assert bool((data["split"][draws["rows"]] == 0).all()) and len(draws["rows"]) == 2 * int((data["split"] == 0).sum())
    ref, _ = sample_sequential(fn, draws["x_T"][:2], index_cond(data["cond"], draws["rows"][:2]), grid=grid)
    assert_close(draws["target"][:2], ref)
    a = json.loads((out / "adapter.json").read_text())
    steps, picard = a["metrics"]["steps"], a["metrics"]["picard_taa"]
    spec, _ = load_adapter_folder(model.unet, out)
    n = len(spec.jump.positions) + spec.jump.hold if spec.jump else 0  # one step per call or held iteration
    assert all(min(st["candidates"].values()) < st["picard"] for st in steps[:n])  # kept only where closer
    assert len(steps) == n or min(steps[n]["candidates"].values()) >= steps[n]["picard"]
    assert any(p.abs().sum() > 0 for name, p in model.unet.named_parameters() if "lora_B" in name and "conv" in name)
    x, st = sample_pcm(fn, data["x_T"], data["cond"], grid=grid, schedule=spec.switch, taa=spec.taa, jump=spec.jump,
                       tol=0.0)
    ref, _ = sample_sequential(fn, data["x_T"], data["cond"], grid=grid)
    assert st.converged and len(picard) == 3
    assert_close(x, ref)  # exactness whatever the jump learned


def test_bad_task_settings_are_one_line_errors(ldm_dir, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="unconditional"):
        run_pct(compose(["task=celeba", f"task.model={ldm_dir}", "task.prompts=[a]", f"work_dir={tmp_path}"]),
                "t", ROOT)
    with pytest.raises(ValueError, match="none"):  # ModelFolderError: the script prints it as one line, exit 1
        run_pct(compose(["task=celeba", f"task.model={tmp_path / 'none'}", f"work_dir={tmp_path}"]), "t", ROOT)
    with pytest.raises(ValueError, match="tracked by git"):  # the shipped folders are never overwritten by default
        run_pct(compose(["task=celeba", f"task.model={ldm_dir}", "out=checkpoints/pusht_pcm"]), "t", ROOT)


def test_default_config_on_a_smoke_budget_is_the_shipped_recipe(ldm_dir, tmp_path):  # noqa: F811
    """``train_pct.py task=celeba`` with its default pct config on a smoke budget, through the one driver: the
    adapter records the default config's objective and LoRA, and PCM at tol 0 is DDIM-T exactly."""
    cfg = compose(["task=celeba", f"task.model={ldm_dir}", "task.n=6", "task.num_steps=6", "task.iterates=2",
                   f"work_dir={tmp_path / 'w'}", f"out={tmp_path / 'out'}", "pct.batch_size=4", "pct.training.steps=2",
                   "pct.training.warmup_steps=1", "pct.training.val_every=1", "pct.training.log_every=1",
                   "pct.val.n=2", "pct.val.k_max=1", "pct.tune.k_max=2", "++pct.jump.draws=1",
                   "++pct.tune.jump_positions=[2,4]"])
    default = compose(["task=celeba"])["pct"]
    run_pct(cfg, "test", ROOT)
    a = json.loads((tmp_path / "out/adapter.json").read_text())
    assert a["tuned"] and a["config"]["pct"]["objective"] == default["objective"] == cfg["pct"]["objective"]
    assert a["config"]["pct"]["lora"] == default["lora"] and a["config"]["pct"]["name"] == default["name"]
    model = load_model(ldm_dir)
    spec, _ = load_adapter_folder(model.unet, tmp_path / "out")
    fn, grid = model_function(model, 7.5), step_grid(model.scheduler, 6, solver="ddim")
    x_T = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(5))
    ref, _ = sample_sequential(fn, x_T, None, grid=grid)
    x, st = sample_pcm(fn, x_T, None, grid=grid, schedule=spec.switch, taa=spec.taa, jump=spec.jump, tol=0.0)
    assert st.converged
    assert_close(x, ref)
