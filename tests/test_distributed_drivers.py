"""The drivers under torchrun (gloo, CPU, 2 processes): PCT through ``scripts/train_pct.py``, its trajectory store
(``training.pct_data.make``) and the jump's extra draws, the image model trainer (``scripts/vision/train_model.py``).

Asserted: the store (and the draws) made by 2 processes, or finished by another process count than the one that
started it, holds the one-process tensors bit for bit; 2 processes with half of every batch train the one-process
adapter and log the one-process losses step by step; a 2-process PCT run stopped by Ctrl-C and resumed by one
process continues at the saved step with the same data (its per-step losses are the uninterrupted run's); a batch
the process count does not divide, or store settings that differ across ranks, are refused before anything is
written.

Tolerances (float32 gradients summed in another order): PCT, as in ``test_training_distributed``, max |p_2proc -
p_1proc| <= 1% of max |p_trained - p_initial| (measured, 60 steps: 1.5e-8 = 0.001%; stopped and resumed: 7.5e-9)
and every logged whole-batch loss within 1e-4 relative (measured 2e-7); the image trainer by its networks' outputs
(see that test).
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from helpers import default_sigint, load_script

ROOT = Path(__file__).resolve().parents[1]
START = "fork" if sys.platform == "linux" else "spawn"  # as test_training_distributed: the parent's imports
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def contents(folder: Path) -> dict:
    """Every .pt file under ``folder`` (the store's conditions and chunks, cached draws) as {file: {key: value}},
    tensors flattened out of nested dicts. Files, not bytes: torch.save names its archive after the file, and
    ``io.atomic_path`` writes under a random temporary name, so two one-process runs differ in bytes too."""
    def flat(x, pre=""):
        if isinstance(x, dict):
            return {k: v for kk, vv in x.items() for k, v in flat(vv, f"{pre}/{kk}").items()}
        return {pre: x}

    return {str(f.relative_to(folder)): flat(torch.load(f, weights_only=False)) for f in sorted(folder.rglob("*.pt"))}


def same(a: dict, b: dict) -> bool:
    """Bit for bit: the same files, keys, and values (tensors: torch.equal, dtype and shape included)."""
    return a.keys() == b.keys() and all(
        a[f].keys() == b[f].keys() and all(
            torch.equal(x, b[f][k]) and x.dtype == b[f][k].dtype if torch.is_tensor(x) else x == b[f][k]
            for k, x in a[f].items()) for f in a)


def gap(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ------------------------------------------------------------------ bad input, before any work (fast)
def test_train_pct_refuses_a_batch_the_process_count_does_not_divide_before_any_work(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("train_pct", overrides=[
            "task=pusht", "pct=smoke", "pct.batch_size=3", f"work_dir={tmp_path / 'work'}",
            f"base={tmp_path / 'no_base_needed'}"]), resolve=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"^pct.batch_size 3 is not divisible by the 2 processes; choose"):
        load_script("train_pct").run(cfg, "test")
    assert not (tmp_path / "work").exists()


def test_train_model_refuses_a_batch_the_process_count_does_not_divide_before_any_work(tmp_path, monkeypatch,
                                                                                       capsys):
    main = load_script("vision/train_model").main
    monkeypatch.setenv("WORLD_SIZE", "3")  # the ldm preset's autoencoder batch is 16
    assert main(["--family", "ldm", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the autoencoder batch (ae_batch) 16 is not divisible by the 3 processes")
    assert "\n" not in err and not (tmp_path / "run").exists()
    assert main(["--family", "classifier", "--run-dir", str(tmp_path / "run")]) == 2
    assert "classifier trains in one process" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_pct_cli_says_one_line_and_exits_non_zero_for_an_indivisible_batch(tmp_path):
    r = subprocess.run([sys.executable, "scripts/train_pct.py", "task=pusht", "pct=smoke", "pct.batch_size=3",
                        f"work_dir={tmp_path / 'work'}"], cwd=ROOT, env={**ENV, "WORLD_SIZE": "2"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(
        "error: pct.batch_size 3 is not divisible by the 2 processes; choose a batch size"), r.stderr[-2000:]
    assert not (tmp_path / "work").exists()


# ------------------------------------------------------------------ the trajectory store, sharded
def _worker(rank, world, init, out, fn, kwargs):
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                             timeout=datetime.timedelta(seconds=60))
    try:
        result = fn(**kwargs)
    except Exception as e:  # noqa: BLE001 - reported to the test
        result = ("error", type(e).__name__, str(e), traceback.format_exc())
    torch.save(result, f"{out}.{rank}")
    tdist.destroy_process_group()


def spawn(tmp: Path, fn, world: int = 2, timeout: float = 90, **kwargs) -> list:
    """``fn(**kwargs)`` in ``world`` gloo processes; each rank's result (an error is re-raised as a failure)."""
    ctx, tag = mp.get_context(START), os.urandom(4).hex()
    rdv, out = tmp / f"rdv_{tag}", tmp / f"out_{tag}"
    procs = [ctx.Process(target=_worker, args=(r, world, str(rdv), str(out), fn, kwargs)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not hung, f"rank(s) {hung} still running after {timeout} s (a hang)"
    results = [torch.load(f"{out}.{r}", weights_only=False) for r in range(world)]
    for r in results:
        assert not (isinstance(r, tuple) and r and r[0] == "error"), r[3]
    return results


def _make_store(path, max_chunks=None, odd_key=False, draws=False):
    """The toy GMM task's store at ``path`` (10 conditions in 4 chunks of 3, 3, 3, 1 rows); ``odd_key``: rank 1's
    task differs (its fingerprint); ``draws``: then 3 extra jump draws per training condition, cached there."""
    from test_task_gmm import gmm_task

    from pcm_policy.training.distributed import DistributedError, rank
    from pcm_policy.training.pct import add_draws
    from pcm_policy.training.pct_data import PCTData, load, make

    task = gmm_task()
    if odd_key and rank() == 1:
        task.key = {"means": "another"}
    try:
        make(task, PCTData(n=10, num_steps=8, iterates=4, chunk=3, val_fraction=0.2), path, max_chunks=max_chunks,
             progress=False)
    except DistributedError as e:
        return str(e)
    if draws:
        add_draws(task.model_fn, task.grid(8), load(path), 3, seed=7, path=Path(path) / "draws.pt", chunk=5)
    return None


@pytest.mark.slow
def test_a_store_made_or_finished_by_two_processes_holds_the_one_process_tensors_bit_for_bit(tmp_path):
    """Measured: bit for bit (every tensor of every chunk, the conditions, the draws; var_k equal floats)."""
    _make_store(tmp_path / "one", draws=True)
    one = contents(tmp_path / "one")
    assert len(one) == 6  # conditions, 4 chunks, draws
    spawn(tmp_path, _make_store, path=str(tmp_path / "two"), draws=True)
    assert same(contents(tmp_path / "two"), one)
    _make_store(tmp_path / "a", max_chunks=1)  # one process starts it, two finish it
    spawn(tmp_path, _make_store, path=str(tmp_path / "a"))
    spawn(tmp_path, _make_store, path=str(tmp_path / "b"), max_chunks=3)  # two start it (2 rounds), one finishes
    assert len(contents(tmp_path / "b")) == 4
    _make_store(tmp_path / "b")
    meta = {d: json.loads((tmp_path / d / "store.json").read_text()) for d in ("one", "two", "a", "b")}
    del one["draws.pt"]
    for d in ("two", "a", "b"):
        assert same({k: v for k, v in contents(tmp_path / d).items() if k != "draws.pt"}, one), d
        assert meta[d]["var_k"] == meta["one"]["var_k"] and meta[d]["timing"]["conditions"] == 10
    # a task that differs on one rank: refused on both, before anything is written
    for err in spawn(tmp_path, _make_store, path=str(tmp_path / "odd"), odd_key=True):
        assert err is not None and "trajectory store settings (with the task's fingerprint) of rank(s) [1]" in err
    assert not (tmp_path / "odd").exists()


# ------------------------------------------------------------------ PCT through scripts/train_pct.py
STEPS = 60


def _pct_args(env: Path, work: Path, data: Path | None = None) -> list[str]:
    return ["scripts/train_pct.py", "task=pusht", "pct=smoke", f"base={env / 'base'}",
            f"task.dataset={env / 'demos.zarr'}", f"work_dir={work}", f"data_path={data or work / 'trajectories'}",
            "pct.batch_size=4",
            f"pct.training.steps={STEPS}", "pct.training.val_every=100000", "pct.training.ckpt_every=100000",
            "pct.data.rollout_fraction=0"]


def _run(cmd, **kw):
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _losses(work: Path) -> list[float]:
    rows = [json.loads(x) for x in (work / "train/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    return [r["loss"] for r in rows]


def _initial_adapter(env: Path) -> dict:
    """The LoRA weights train_pct starts from (seeded with pct.training.seed before add_lora)."""
    from pcm_policy.lora import add_lora, lora_state_dict
    from pcm_policy.pusht.checkpoint import load_policy

    policy = load_policy(env / "base")
    torch.manual_seed(42)
    add_lora(policy.model, rank=4, alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out"])
    return lora_state_dict(policy.model)


@pytest.fixture(scope="module")
def pct_env(tmp_path_factory):
    """A tiny base policy, a 4-episode demonstration store, and the one-process reference run."""
    from test_pct import _policy, tiny_demos

    from pcm_policy.pusht.checkpoint import save_policy

    tmp = tmp_path_factory.mktemp("dist_pct")
    save_policy(_policy(), tmp / "base")
    tiny_demos(tmp / "demos.zarr")
    _run([sys.executable, *_pct_args(tmp, tmp / "one")])
    return tmp


def _params(work: Path) -> dict:
    return torch.load(work / "train/state.pt", weights_only=True)["params"]


@pytest.mark.slow
def test_train_pct_under_torchrun_two_processes_make_the_store_and_train_the_one_process_adapter(pct_env, tmp_path):
    two = tmp_path / "two"
    _run([*TORCHRUN, *_pct_args(pct_env, two)])
    assert same(contents(two / "trajectories"), contents(pct_env / "one/trajectories"))  # the store, bit for bit
    one_p, two_p = _params(pct_env / "one"), _params(two)
    moved = gap(one_p, {k: v for k, v in _initial_adapter(pct_env).items() if k in one_p})
    assert moved > 1e-4
    assert gap(two_p, one_p) <= 0.01 * moved, (gap(two_p, one_p), moved)
    for a, b in zip(_losses(pct_env / "one"), _losses(two), strict=True):  # the same batches, step by step
        assert abs(a - b) <= 1e-4 * abs(a), (a, b)
    meta = json.loads((two / "adapter_tuned/adapter.json").read_text())  # rank 0 tuned and wrote it
    assert meta["metrics"]["timing"]["processes"] == 2 and meta["tuned"]
    assert not (two / "train/.lock").exists()


@pytest.mark.slow
def test_train_pct_stopped_under_torchrun_resumes_in_one_process_at_the_same_step_and_data(pct_env, tmp_path):
    """Ctrl-C (SIGINT to torchrun's process group) after a few steps: both ranks stop at the same step and rank 0
    saves it; the same command without torchrun resumes there; every step's loss is the uninterrupted run's."""
    work = tmp_path / "stop"
    args = _pct_args(pct_env, work, pct_env / "one/trajectories")  # the reference's finished store
    p = subprocess.Popen([*TORCHRUN, *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, start_new_session=True, preexec_fn=default_sigint)
    log, t0 = work / "train/log.jsonl", time.time()
    while not (log.exists() and log.read_text().count("\n") >= 3) and time.time() - t0 < 240:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("interrupted at step")]
    assert len(lines) == 2 and lines[0] == lines[1], err[-3000:]
    step = int(lines[0].split()[3])
    assert 3 <= step < STEPS and torch.load(work / "train/state.pt", weights_only=True)["step"] == step
    r = _run([sys.executable, *args])
    assert f"resuming the run in {work / 'train'} at step {step}" in r.stdout
    ref = _losses(pct_env / "one")
    for a, b in zip(ref, _losses(work), strict=True):
        assert abs(a - b) <= 1e-4 * abs(a), (a, b)
    moved = gap(_params(pct_env / "one"), {k: v for k, v in _initial_adapter(pct_env).items()
                                           if k in _params(work)})
    assert gap(_params(work), _params(pct_env / "one")) <= 0.01 * moved


# ------------------------------------------------------------------ the image model trainer
@pytest.mark.slow
def test_train_model_under_torchrun_two_processes_train_the_one_process_model(tmp_path):
    """sd-smoke (KL autoencoder: posterior noise; text-conditioned UNet: posterior noise, t, eps and prompt dropout,
    all drawn with the batch), 2 steps per stage. The UNet is compared on the same autoencoder (the 2-process
    run's, copied into the one-process run: a finished stage is reused), the autoencoder against one trained
    alone in this process.

    Compared: the trained networks' outputs on fixed inputs, not their weights. 12% of the UNet's gradient
    entries are rounding noise (~1e-9: biases added just before a GroupNorm, which removes them), and Adam's
    first steps move each weight by about lr whatever its gradient's size, so those weights differ by up to lr
    between any two summation orders while the networks' outputs do not see them. Measured: outputs differ by
    4e-6 (autoencoder) and 1.5e-5 (UNet) of the change training made to them; asserted <= 1e-3."""
    import copy
    import shutil

    from pcm_policy.vision import data
    from pcm_policy.vision.train import PRESETS, _autoencoder, _unet, train_autoencoder

    args = ["scripts/vision/train_model.py", "--family", "sd", "--preset", "sd-smoke", "--no-eval"]
    _run([*TORCHRUN, *args, "--run-dir", str(tmp_path / "two")])
    shutil.copytree(tmp_path / "two/ae", tmp_path / "one/ae")
    _run([sys.executable, *args, "--run-dir", str(tmp_path / "one")])
    cfg = PRESETS["sd-smoke"]
    train_autoencoder(cfg, tmp_path / "ae1", data.digits("train")[0], data.reference_images()[::5])
    g = torch.Generator().manual_seed(0)
    z, t, emb = torch.randn(8, 4, 8, 8, generator=g), torch.randint(0, 1000, (8,), generator=g), torch.randn(
        8, 77, 16, generator=g)
    img = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1
    start = {"ae": _autoencoder(cfg), "unet": _unet(cfg)}  # seeded, as the stages start
    run = {"ae": lambda m: m.decode(m.encode(img).latent_dist.mean).sample,
           "unet": lambda m: m(z, t, encoder_hidden_states=emb).sample}

    @torch.no_grad()
    def output(stage, params=None):
        m = copy.deepcopy(start[stage]).eval()
        for n, p in m.named_parameters():
            p.copy_(params[n] if params is not None else p)
        return run[stage](m)

    for stage, one_dir in (("ae", tmp_path / "ae1"), ("unet", tmp_path / "one/unet")):
        one, two = (torch.load(d / "state.pt", weights_only=True) for d in (one_dir, tmp_path / "two" / stage))
        assert one["step"] == two["step"] == 2
        rows = [[json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]
                for d in (one_dir, tmp_path / "two" / stage)]
        for a, b in zip(*rows, strict=True):  # the whole batch's loss
            assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(a["loss"]), (stage, a, b)
        for key in ("params", "ema"):  # the trained weights and their EMA (the written model)
            o1, o2 = (output(stage, s[key] if key == "params" else s[key]["shadow"]) for s in (one, two))
            moved = (o1 - output(stage)).abs().max().item()
            assert moved > 1e-3 and (o2 - o1).abs().max().item() <= 1e-3 * moved, (stage, key, moved)
    assert (tmp_path / "two/model/TRAINING.json").exists() and not (tmp_path / "two/unet/.lock").exists()
