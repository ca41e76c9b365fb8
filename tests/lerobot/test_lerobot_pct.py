"""A lerobot DiffusionPolicy on the generic drivers with no driver code of its own: ``train_pct.py task=lerobot``
(the shipped anytime recipe, LoRA on lerobot's Conv1d/Linear layers) on a smoke budget, then the evaluation
sweep and report over the same Task; the trained PCM still ends exactly on the policy's own DDIM output."""

from pathlib import Path

import pytest

pytest.importorskip("lerobot.policies.diffusion")  # not "lerobot": tests/lerobot/ itself is a namespace "lerobot"

import torch  # noqa: E402
from helpers import load_script  # noqa: E402
from lerobot_build import build_policy, save_policy  # noqa: E402
from test_lerobot_task import write_dataset  # noqa: E402

from pcm_policy.adapters import load_adapter_folder  # noqa: E402
from pcm_policy.evaluation.report import write_report  # noqa: E402
from pcm_policy.evaluation.sweep import SweepConfig, run_sweep  # noqa: E402
from pcm_policy.lerobot.task import make_task  # noqa: E402
from pcm_policy.lora import has_lora  # noqa: E402
from pcm_policy.sampling import SamplerSpec, sample_pcm, sample_sequential  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return OmegaConf.to_container(hydra_compose("train_pct", overrides=overrides), resolve=True)


def test_train_pct_task_lerobot_then_sweep_and_report(tmp_path):
    save_policy(build_policy("DDIM", 16, 10), tmp_path / "policy")
    write_dataset(tmp_path / "data")
    cfg = compose(["task=lerobot", f"task.policy={tmp_path / 'policy'}", f"task.dataset={tmp_path / 'data'}",
                   "task.n=8", "task.batch=8", f"work_dir={tmp_path / 'w'}", f"out={tmp_path / 'out'}",
                   "pct.batch_size=4", "pct.training.steps=2", "pct.training.warmup_steps=1",
                   "pct.training.val_every=1", "pct.training.log_every=1", "pct.training.ckpt_every=2",
                   "pct.val.n=2", "pct.val.k_max=1", "pct.tune.k_max=2", "pct.jump.draws=1",
                   "pct.jump.schedule.jump.positions=[2]", "pct.tune.jump_positions=[2,4]",
                   "task.rollouts.fraction=0.5", "task.rollouts.max_steps=16", "task.rollouts.per_episode=2",
                   "task.rollouts.batch=2"])  # half the training rows: the policy's own rollout states (PushT env)
    assert cfg["pct"]["objective"] == "jump" and cfg["pct"]["lora"]["targets"] is None
    # the script hands the lerobot Task pusht's rollout collector
    metrics = load_script("train_pct").run(cfg, "test", ROOT)
    assert "chosen" in metrics and metrics["data"]["task"]["rollouts"]["fraction"] == 0.5
    assert torch.load(tmp_path / "w" / "trajectories" / "conditions.pt")["cond"].shape[0] == 8

    task = make_task(tmp_path / "policy", tmp_path / "data", seed=1)
    spec, meta = load_adapter_folder(task.module, tmp_path / "out")
    assert has_lora(task.module) and meta["tuned"] and spec.name == "pcm" and spec.jump is not None
    cond, x_T = task.conditions("eval", 3)
    grid = task.grid()
    with torch.no_grad():
        ref, _ = sample_sequential(task.model_fn, x_T, cond, grid=grid)
        x, st = sample_pcm(task.model_fn, x_T, cond, grid=grid, schedule=spec.switch, taa=spec.taa, jump=spec.jump,
                           tol=0.0, init=spec.init, safeguard=spec.safeguard)
    assert st.converged and (x - ref).abs().max() < 1e-5  # the adapter only changes the first calls

    specs = {"ddim-k": SamplerSpec.named("ddim-k", num_steps=task.num_steps, k=1),
             "pcm": spec.replace(tol=0.0)}
    res = run_sweep(task, SweepConfig(samplers=specs, ks=[1, 2], out=tmp_path / "sweep", conditions=3))
    assert set(res["results"]) == {"ddim-k", "pcm"} and all(len(r) == 2 for r in res["results"].values())
    write_report(tmp_path / "sweep", res, task=task, samplers=specs, print_table=False)
    assert all((tmp_path / "sweep" / f).stat().st_size > 0 for f in ("sweep.csv", "table.md"))
