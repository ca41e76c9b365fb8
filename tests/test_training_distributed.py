"""Data-parallel training (torch.distributed, gloo on CPU): N processes with 1/N of every batch train what one
process trains; a stopped or dead run resumes with another process count at the same step and data position;
bad input (a batch the process count does not divide, configs that differ across ranks, a dying rank) gets a
clear error, not a hang.

Tolerances: float32 gradients summed in another order (two half-batch means averaged vs one whole-batch mean)
differ by rounding, and Adam divides by sqrt(v), so the trained parameters differ by a small fraction of
one update. Asserted: max |p_2proc - p_1proc| <= 1% of max |p_trained - p_initial| (measured: 5.3e-7 = 0.35%
for the PushT smoke policy after 3 steps, 8.2e-8 = 0.004% for the LoRA/PCT loop after 6); without the gradient
average the adapter differs by more than the change itself (4.0e-3 against 2.3e-3).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from helpers import default_sigint

from pcm_policy.training import Interrupted, LoopConfig, train
from pcm_policy.training.distributed import (
    DistributedError,
    rank_rng,
    shard_and_gather,
    shard_batch,
    sigterm_held,
    sigterm_says,
)

ROOT = Path(__file__).resolve().parents[1]
STEPS, BATCH, T, K = 6, 4, 4, 3
# fork: the ranks start with this process's imports (torch, diffusers, peft) instead of ~20 s of their own on a
# busy CPU; safe here (no process group, one intra-op thread in the parent). Elsewhere: spawn.
START = "fork" if sys.platform == "linux" else "spawn"


def _pct_fit(run_dir, stop_after=None, die_at=None, seed=0, steps=STEPS, batch=BATCH):
    """A LoRA adapter on a tiny PushT UNet trained with the PCT loss (``pct_loss``, ``PCTBatches``) on a fixed
    synthetic trajectory set. ``stop_after``: the batch stream raises KeyboardInterrupt once that many batches
    were drawn (counting the resumed ones); ``die_at``: this process exits (code 3) while drawing that batch.
    Returns (initial adapter, final adapter (EMA), the whole batches read: (k, row id) per step)."""
    from pcm_policy.lora import add_lora, lora_state_dict
    from pcm_policy.paper.pct import PCTBatches
    from pcm_policy.pusht.policy import DiffusionPolicy, PolicyConfig
    from pcm_policy.sampling import step_grid
    from pcm_policy.training.pct import pct_loss

    torch.manual_seed(0)
    policy = DiffusionPolicy(PolicyConfig(unet={"down_dims": [8, 16, 32]}))
    add_lora(policy.model, rank=2, alpha=4)  # the attention projections (to_q, to_k, to_v, to_out)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a non-zero start (peft's B = 0 gives A no gradient in the first step)
        for n, p in policy.model.named_parameters():
            if "lora_" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    start = lora_state_dict(policy.model)
    N, H = 6, policy.cfg.horizon
    data = {"cond": torch.randn(N, policy.cfg.n_obs_steps * policy.cfg.obs_dim, generator=g),
            "x_T": torch.randn(N, H, 2, generator=g), "x_star": torch.randn(N, T + 1, H, 2, generator=g),
            "iterates": torch.randn(N, K, T + 1, H, 2, generator=g), "split": torch.zeros(N, dtype=torch.long)}
    data["cond"][:, 0] = torch.arange(N)  # row ids, to read the data order back
    grid = step_grid(policy.noise_scheduler, T)
    alpha = torch.ones(K)
    stream, drawn, seen = PCTBatches(data, batch), [0], []

    class Stopping:  # with seek: a resume positions it (PCTBatches itself follows the restored RNG)
        def __iter__(self):
            return self

        def __next__(self):
            if stop_after is not None and drawn[0] == stop_after:
                raise KeyboardInterrupt
            if die_at is not None and drawn[0] + 1 == die_at:
                os._exit(3)
            drawn[0] += 1
            b = next(stream)
            seen.append((b["k"].tolist(), b["cond"][:, 0].long().tolist()))
            return b

        def seek(self, n):
            drawn[0] = n

    cfg = LoopConfig(steps=steps, lr=1e-3, warmup_steps=1, log_every=1, ckpt_every=1, seed=seed)
    loss = lambda b: pct_loss(policy.model_fn, b, grid, alpha)  # noqa: E731
    try:
        train(policy, loss, Stopping(), cfg, run_dir, lambda m, s: None, config={"seed": seed, "batch": batch})
    except Interrupted:
        pass
    return start, lora_state_dict(policy.model), seen


def _scenario_misc(run_dir, rank):
    """shard_and_gather's order; draws inside rank_rng (then the shared stream); a run whose config differs on
    rank 1."""
    gathered = shard_and_gather(lambda part: {"sq": torch.tensor(part) ** 2, "ids": list(part)}, range(7))
    torch.manual_seed(5)
    with rank_rng(0, 3):
        gathered["inside"] = torch.randn(4)
    gathered["after"] = torch.randn(4)
    try:
        _pct_fit(run_dir, seed=rank)
    except DistributedError as e:
        return gathered, str(e)
    return gathered, None


def _scenario_sigterm(rank):
    """SIGTERM (what torchrun sends) arrives inside ``sigterm_held``: the stop waits for the block's end, so its
    line describes what the block recorded; after a stop's line, a held block (a state write) is refused even
    when the stop's SystemExit was swallowed. Returns (exit code, the refusal's code, the states the line
    described, the records)."""
    import contextlib
    import signal
    import time

    records, described = ["state written"], []
    try:
        with sigterm_says(lambda: described.append(records[-1]) or records[-1]):
            with sigterm_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)  # the Python handler has run by now (it runs between bytecodes)
                records.append("state recorded")
            records.append("past the block")
    except SystemExit as e:
        code = e.code
    with sigterm_says(lambda: "the last saved state is ..."):  # the stop's SystemExit swallowed (in a finalizer)
        with contextlib.suppress(SystemExit):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
        try:
            with sigterm_held():
                records.append("written after the line")
        except SystemExit as e:
            return code, e.code, described, records
    return code, None, described, records


def _worker(rank, world, init, out, name, kwargs):
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                             timeout=datetime.timedelta(seconds=60))
    try:
        fn = {"fit": _pct_fit, "misc": _scenario_misc, "sigterm": _scenario_sigterm}[name]
        result = fn(**kwargs, rank=rank) if name in ("misc", "sigterm") else fn(**kwargs)
    except Exception as e:  # noqa: BLE001 - reported to the test
        result = ("error", type(e).__name__, str(e), traceback.format_exc())
    torch.save(result, f"{out}.{rank}")
    tdist.destroy_process_group()


def spawn(tmp, name, world=2, timeout=90, **kwargs) -> list:
    """Run scenario ``name`` in ``world`` gloo processes; each rank's result, or None for a rank that died."""
    ctx, rdv, out = mp.get_context(START), tmp / f"rdv_{name}_{os.urandom(4).hex()}", tmp / f"out_{name}"
    procs = [ctx.Process(target=_worker, args=(r, world, str(rdv), str(out), name, kwargs)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not hung, f"rank(s) {hung} still running after {timeout} s (a hang)"
    results = [torch.load(f"{out}.{r}", weights_only=False) if Path(f"{out}.{r}").exists() else None
               for r in range(world)]
    for r in results:
        assert not (isinstance(r, tuple) and r and r[0] == "error"), r[3] if r else r
    return results


def gap(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_shard_batch_takes_contiguous_equal_shares_and_refuses_an_uneven_split():
    batch = {"x": torch.arange(8)[:, None], "cond": {"obs": torch.arange(8) * 10}, "scale": torch.tensor(2.0)}
    parts = [shard_batch(batch, world=2, rank_=r) for r in range(2)]
    assert parts[0]["x"].flatten().tolist() == [0, 1, 2, 3] and parts[1]["cond"]["obs"].tolist() == [40, 50, 60, 70]
    assert parts[1]["scale"] is batch["scale"]
    assert shard_batch(batch) is batch  # one process: identity
    with pytest.raises(ValueError, match="batch size 8 is not divisible by the 3 processes"):
        shard_batch(batch, world=3, rank_=0)


def test_train_policy_refuses_a_batch_the_process_count_does_not_divide(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from pcm_policy.pusht.train import train_policy

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs/train_policy.yaml"))
    cfg.update(task=OmegaConf.to_container(OmegaConf.load(ROOT / "configs/task/pusht.yaml")),
               policy=OmegaConf.to_container(OmegaConf.load(ROOT / "configs/policy/small.yaml")),
               training={**OmegaConf.to_container(OmegaConf.load(ROOT / "configs/training/smoke.yaml")),
                         "batch_size": 7}, run_dir=str(tmp_path / "run"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="batch_size 7 is not divisible by the 2 processes"):
        train_policy(cfg, "test", ROOT)
    assert not (tmp_path / "run").exists()


def test_sigterm_inside_a_held_block_stops_at_its_end_and_names_what_it_recorded(tmp_path):
    # the training loop holds SIGTERM from writing state.pt to recording its step: a stop in between once named
    # the step before the one on disk (CI, stop 30)
    for result in spawn(tmp_path, "sigterm"):
        assert result == (143, 143, ["state recorded"], ["state written", "state recorded"])


@pytest.mark.slow
def test_two_processes_with_half_the_batch_train_the_one_process_adapter(tmp_path):
    start, one, seen1 = _pct_fit(tmp_path / "one")
    results = spawn(tmp_path, "fit", run_dir=str(tmp_path / "two"))
    moved = gap(one, start)
    assert moved > 1e-3
    for _, two, seen2 in results:  # every rank ends with the same adapter, the one process's
        assert seen2 == seen1
        assert gap(two, one) <= 0.01 * moved, (gap(two, one), moved)
    state1, state2 = (torch.load(tmp_path / d / "state.pt", weights_only=True) for d in ("one", "two"))
    assert gap(state2["params"], state1["params"]) <= 0.01 * moved and state2["step"] == STEPS
    assert not (tmp_path / "two" / ".lock").exists()


@pytest.mark.slow
def test_a_stopped_run_resumes_with_another_process_count_at_the_same_step_and_data(tmp_path):
    _, ref, seen_ref = _pct_fit(tmp_path / "ref")
    # two processes stopped after 3 steps, resumed by one
    (_, _, seen_a), (_, _, seen_b) = spawn(tmp_path, "fit", run_dir=str(tmp_path / "a"), stop_after=3)
    assert seen_a == seen_b == seen_ref[:3]
    assert torch.load(tmp_path / "a/state.pt", weights_only=True)["step"] == 3
    start, out, seen_rest = _pct_fit(tmp_path / "a")
    assert seen_a + seen_rest == seen_ref
    moved = gap(ref, start)
    assert gap(out, ref) <= 0.01 * moved
    # one process stopped after 2 steps, resumed by two
    _pct_fit(tmp_path / "b", stop_after=2)
    for _, out, seen in spawn(tmp_path, "fit", run_dir=str(tmp_path / "b")):
        assert seen == seen_ref[2:]
        assert gap(out, ref) <= 0.01 * moved


@pytest.mark.slow
def test_a_dying_rank_stops_the_others_with_one_line_and_the_run_resumes(tmp_path):
    """Rank 1 exits while drawing batch 4: rank 0 raises DistributedError (one line: what happened, the last
    saved state, how to resume) instead of hanging; one process then resumes from step 3."""
    _, ref, seen_ref = _pct_fit(tmp_path / "ref")
    ctx, rdv = mp.get_context(START), tmp_path / "rdv"
    procs = [ctx.Process(target=_worker, args=(r, 2, str(rdv), str(tmp_path / "out"), "fit",
                                               {"run_dir": str(tmp_path / "run"), **({"die_at": 4} if r else {})}))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
    assert not any(p.is_alive() for p in procs), "a rank hung after its peer died"
    assert procs[1].exitcode == 3 and not (tmp_path / "out.1").exists()
    kind, name, msg, _ = torch.load(tmp_path / "out.0", weights_only=False)
    assert (kind, name) == ("error", "DistributedError") and "\n" not in msg, msg
    assert "rank 0 of 2: another process stopped" in msg and "in step 4" in msg
    assert f"the last saved state is step 3 ({tmp_path / 'run' / 'state.pt'})" in msg and "re-run" in msg
    start, out, seen = _pct_fit(tmp_path / "run")
    assert seen == seen_ref[3:] and gap(out, ref) <= 0.01 * gap(ref, start)


@pytest.mark.slow
def test_configs_that_differ_across_ranks_are_refused_and_shard_and_gather_keeps_the_order(tmp_path):
    results = spawn(tmp_path, "misc", run_dir=str(tmp_path / "run"))
    torch.manual_seed(5)
    shared = torch.randn(4)
    for gathered, err in results:
        assert gathered["sq"].tolist() == [i * i for i in range(7)] and gathered["ids"] == list(range(7))
        assert torch.equal(gathered["after"], shared)  # the shared stream goes on as if nothing was drawn inside
        assert err is not None and "run config of rank(s) [1] differs from rank 0's" in err
    assert not torch.equal(results[0][0]["inside"], results[1][0]["inside"])  # a loss's own draws differ per rank
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.slow
def test_train_policy_under_torchrun_two_processes_train_the_one_process_policy(tmp_path):
    import subprocess

    from safetensors.torch import load_file

    from pcm_policy.data import ReplayBuffer

    src, dst = ReplayBuffer.open(ROOT / "data/pusht_expert.zarr"), ReplayBuffer.create(tmp_path / "demos.zarr")
    for i in range(4):
        dst.add_episode(src.get_episode(i, keys=["state", "keypoint", "action"]), meta={"seed": i})
    args = ["scripts/train_policy.py", "training=smoke", f"task.dataset={tmp_path / 'demos.zarr'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for cmd, folder in ((run, "two"), ([sys.executable], "one")):
        r = subprocess.run([*cmd, *args, f"run_dir={tmp_path / folder}"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    from omegaconf import OmegaConf

    from pcm_policy.pusht.policy import DiffusionPolicy, PolicyConfig

    task = OmegaConf.load(ROOT / "configs/task/pusht.yaml")
    torch.manual_seed(42)  # the initial weights: train_policy seeds them with training.seed (smoke: 42)
    init = dict(DiffusionPolicy(PolicyConfig(obs_type=task.obs_type, horizon=task.horizon,
                                             n_obs_steps=task.n_obs_steps, n_action_steps=task.n_action_steps,
                                             unet_size="small")).named_parameters())
    s1, s2 = (torch.load(tmp_path / d / "state.pt", weights_only=True) for d in ("one", "two"))
    moved = gap(s1["params"], {k: init[k].detach() for k in s1["params"]})
    assert moved > 1e-5
    assert gap(s2["params"], s1["params"]) <= 0.01 * moved, (gap(s2["params"], s1["params"]), moved)
    one, two = (load_file(tmp_path / d / "checkpoint/model.safetensors") for d in ("one", "two"))
    assert gap(two, one) <= 0.01 * moved  # the EMA checkpoints, written by rank 0
    logs = [[json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in ("one", "two")]
    assert [r["step"] for r in logs[1]] == [1, 2]  # one row per step, rank 0 alone writes
    for a, b in zip(*logs, strict=True):  # the logged loss is the whole batch's
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]) and abs(a["val_loss"] - b["val_loss"]) < 1e-4


@pytest.mark.slow
def test_under_torchrun_a_killed_rank_stops_the_run_with_one_line_and_one_process_resumes_it(tmp_path):
    """torchrun, 2 processes: one rank is SIGKILLed after 3 steps; the launcher exits non-zero at once (no hang),
    the surviving rank's last line says what happened and what state is kept; the same command without torchrun
    resumes there."""
    import signal
    import subprocess
    import time

    from pcm_policy.data import ReplayBuffer

    src, dst = ReplayBuffer.open(ROOT / "data/pusht_expert.zarr"), ReplayBuffer.create(tmp_path / "demos.zarr")
    for i in range(4):
        dst.add_episode(src.get_episode(i, keys=["state", "keypoint", "action"]), meta={"seed": i})
    args = ["scripts/train_policy.py", "training=smoke", "training.steps=100000", "training.log_every=1",
            f"task.dataset={tmp_path / 'demos.zarr'}", f"run_dir={tmp_path / 'run'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log, t0 = tmp_path / "run/log.jsonl", time.time()
    while not (log.exists() and log.read_text().count("\n") >= 3) and time.time() - t0 < 240:
        time.sleep(0.5)
    ranks = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(p.pid)], capture_output=True, text=True).stdout
    os.kill(int([r for r in ranks.splitlines() if "train_policy" in r][-1].split()[0]), signal.SIGKILL)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0
    said = ("another process stopped", "stopped by SIGTERM")  # the survivor's line (ps order need not be rank order)
    lines = [x for x in err.replace("\r", "\n").splitlines()
             if x.startswith(("error: rank ", "rank ")) and any(w in x for w in said)]
    assert lines, err[-3000:]
    step = int(torch.load(tmp_path / "run/state.pt", weights_only=True)["step"])
    assert f"the last saved state is step {step} ({tmp_path / 'run' / 'state.pt'})" in lines[0], (step, lines)
    q = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    first = [q.stdout.readline() for _ in range(2)]
    q.send_signal(signal.SIGINT)
    q.communicate(timeout=240)
    assert any(f"resuming the run in {tmp_path / 'run'} at step {step}" in line for line in first), first


@pytest.mark.slow
def test_under_torchrun_ctrl_c_stops_every_rank_at_the_same_step_and_saves_it(tmp_path):
    """Ctrl-C in the terminal (SIGINT to torchrun's process group): the ranks agree on the step boundary (the stop
    flag rides on the gradient all_reduce), rank 0 saves exactly that step, and each prints one line."""
    import signal
    import subprocess
    import time

    from pcm_policy.data import ReplayBuffer

    src, dst = ReplayBuffer.open(ROOT / "data/pusht_expert.zarr"), ReplayBuffer.create(tmp_path / "demos.zarr")
    for i in range(4):
        dst.add_episode(src.get_episode(i, keys=["state", "keypoint", "action"]), meta={"seed": i})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "scripts/train_policy.py", "training=smoke", "training.steps=100000",
                          "training.ckpt_every=1000",
                          f"task.dataset={tmp_path / 'demos.zarr'}", f"run_dir={tmp_path / 'run'}"],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=default_sigint)
    log, t0 = tmp_path / "run/log.jsonl", time.time()
    while not (log.exists() and log.read_text().count("\n") >= 3) and time.time() - t0 < 240:
        time.sleep(0.5)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("interrupted at step")]
    assert len(lines) == 2 and lines[0] == lines[1], err[-3000:]
    step = int(lines[0].split()[3])
    state = torch.load(tmp_path / "run/state.pt", weights_only=True)
    assert int(state["step"]) == int(state["batches"]) == step and log.read_text().count("\n") == step
