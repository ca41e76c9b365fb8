"""The training loop: one run per folder, a resume that is the uninterrupted run (data order, RNG), Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import default_sigint

from pcm_policy.io import FolderInUseError, run_folder_lock
from pcm_policy.training import Interrupted, LoopConfig, ResumeError, infinite_batches, train

ROOT = Path(__file__).resolve().parents[1]


def loader(seed: int = 7, n: int = 10, batch: int = 3):
    data = torch.utils.data.TensorDataset(torch.linspace(-1, 1, n)[:, None], torch.linspace(0, 2, n)[:, None] ** 2)
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True,
                                       generator=torch.Generator().manual_seed(seed))


def fit(run_dir, steps=8, seed=7, stop_after=None, config=None, sigint_at=None, seen=None):
    """Train a 1-16-1 MLP on a 10-row set (3 batches per epoch); its loss draws from torch's global RNG (dropout).
    ``stop_after``: the batch stream raises KeyboardInterrupt once that many batches were drawn (this run's and
    the ones it resumed); ``sigint_at``: a real SIGINT is sent inside that step's loss; ``seen``: collects the
    batches the loss read."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
    stream, drawn = infinite_batches(loader(seed)), [0]

    class Stopping:  # the stream, with seek (a resume positions it) and a Ctrl-C after stop_after batches
        def __iter__(self):
            return self

        def __next__(self):
            if stop_after is not None and drawn[0] == stop_after:
                raise KeyboardInterrupt
            drawn[0] += 1
            return next(stream)

        def seek(self, n):
            drawn[0] = n
            stream.seek(n)

    def loss_fn(batch):
        if sigint_at is not None and drawn[0] == sigint_at:
            os.kill(os.getpid(), signal.SIGINT)
        seen.append(batch[0].flatten().tolist())
        return (model(batch[0]) - batch[1]).pow(2).mean()

    seen = [] if seen is None else seen
    cfg = LoopConfig(steps=steps, lr=1e-2, warmup_steps=2, log_every=1, ckpt_every=100, seed=0)
    train(model, loss_fn, Stopping(), cfg, run_dir, lambda m, s: None, config=config or {"seed": seed})
    return model, seen


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("stops", [[1], [3], [4, 7], [2, 3, 6]])
def test_a_resumed_run_is_the_uninterrupted_run(tmp_path, stops):
    """Ctrl-C at any step (mid-epoch or at an epoch's end, several times) and re-running: the same batches in the
    same order and bit-identical weights (the resume state holds the data position and the RNG)."""
    full, order = fit(tmp_path / "full")
    seen = []
    for k in stops:
        with pytest.raises(Interrupted, match=f"interrupted at step {k} of 8; saved"):
            fit(tmp_path / "stopped", stop_after=k, seen=seen)
    resumed, _ = fit(tmp_path / "stopped", seen=seen)
    assert seen == order
    assert torch.equal(weights(full), weights(resumed))
    steps = [json.loads(r)["step"] for r in (tmp_path / "stopped/log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_training_seed_reaches_the_shuffle(tmp_path):
    """Two seeds, two data orders; the same seed, the same order, epoch after epoch."""
    _, a = fit(tmp_path / "a", steps=6, seed=1)
    _, b = fit(tmp_path / "b", steps=6, seed=2)
    _, c = fit(tmp_path / "c", steps=6, seed=1)
    assert a == c and a != b
    assert a[:3] != a[3:6]  # each epoch has its own order


def test_sigint_stops_at_a_step_boundary_and_resumes_exactly(tmp_path):
    """A real Ctrl-C inside a step lets that step finish, saves it and raises Interrupted; the resume is exact."""
    before = signal.getsignal(signal.SIGINT)  # the default, or SIG_IGN under nohup / a background job
    full, _ = fit(tmp_path / "full")
    with pytest.raises(Interrupted, match="interrupted at step 5 of 8; saved"):
        fit(tmp_path / "run", sigint_at=5)
    resumed, _ = fit(tmp_path / "run")
    assert torch.equal(weights(full), weights(resumed))
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_a_fresh_start_never_overwrites_another_runs_config(tmp_path):
    """A run folder whose config.json is another run's (stopped before its first state.pt) refuses a new run."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"seed": 3}))
    with pytest.raises(ResumeError, match="seed: 3 there, 7 now"):
        fit(run)
    assert json.loads((run / "config.json").read_text()) == {"seed": 3}


HOLD = """
import sys, time
from pcm_policy.io import run_folder_lock
with run_folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.mark.slow
def test_a_run_folder_in_use_refuses_a_second_job(tmp_path):
    """While another process holds a run folder, train() there is refused before it writes anything; once that
    process is gone (killed: no stale lock), the folder is free."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=f"run folder {run} is in use by pid {holder.pid}"):
            fit(run)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # no config.json, no log
    finally:
        holder.kill()
        holder.wait()
    fit(run, steps=2)
    assert (run / "config.json").exists() and not (run / ".lock").exists()
    with run_folder_lock(run), run_folder_lock(run):  # re-entrant within a process
        pass


@pytest.mark.parametrize("field, value", [("steps", -1), ("steps", 0), ("lr", float("nan")), ("lr", 0.0),
                                          ("betas", (0.9, 1.0)), ("warmup_steps", -1), ("ema_max", 1.0),
                                          ("log_every", 0), ("ckpt_every", 0), ("snapshot_every", -1),
                                          ("optimizer", "sgd"), ("seed", -1)])
def test_bad_loop_settings_are_refused_naming_them(field, value):
    with pytest.raises(ValueError, match=f"training {field} must be"):
        LoopConfig(**{"steps": 10, field: value})


def test_train_policy_refuses_negative_steps_before_any_work(tmp_path):
    """training.steps=-1 exited 0 with an untrained checkpoint: now a ValueError, and nothing is written."""
    from pcm_policy.pusht.train import train_policy

    cfg = {"threads": 1, "run_dir": str(tmp_path / "run"), "force": False,
           "training": {"steps": -1, "batch_size": 8, "seed": 0}, "task": {}, "policy": {}}
    with pytest.raises(ValueError, match="training steps must be an integer >= 1, got -1"):
        train_policy(cfg, "test", ROOT)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_policy_ctrl_c_is_one_line_exit_130_and_resumes_announced(tmp_path):
    """Ctrl-C in scripts/train_policy.py: no traceback, one line saying what was saved and how to resume, exit 130;
    the same command then resumes at that step and says so."""
    import time

    from pcm_policy.data import ReplayBuffer

    src, dst = ReplayBuffer.open(ROOT / "data/pusht_expert.zarr"), ReplayBuffer.create(tmp_path / "demos.zarr")
    for i in range(4):
        dst.add_episode(src.get_episode(i, keys=["state", "keypoint", "action"]), meta={"seed": i})
    cmd = [sys.executable, str(ROOT / "scripts/train_policy.py"), "training=smoke", "training.steps=100000",
           "training.log_every=1", f"task.dataset={tmp_path / 'demos.zarr'}", f"run_dir={tmp_path / 'run'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=default_sigint)
    log = tmp_path / "run/log.jsonl"
    t0 = time.time()
    while not (log.exists() and log.read_text().count("\n") >= 2) and time.time() - t0 < 240:
        time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=240)
    assert p.returncode == 130 and "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert "interrupted at step" in last and "saved" in last and "resume with the same command" in last
    step = int(last.split("interrupted at step ")[1].split()[0])
    state = torch.load(tmp_path / "run/state.pt", weights_only=True)
    assert int(state["step"]) == step and int(state["batches"]) == step
    p = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=default_sigint)
    first = [p.stdout.readline() for _ in range(2)]
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=240)
    assert any(f"resuming the run in {tmp_path / 'run'} at step {step}" in line for line in first), first
    assert p.returncode == 130


def test_train_policy_refuses_a_folder_in_use_before_any_set_up(tmp_path, monkeypatch):
    """A second train_policy in a running job's folder is refused before it loads data or builds a model (it used
    to do all of that first, then learn in train() that the folder was taken: seconds of wasted set-up, and
    ../shared/cases/run_dir_shared_by_concurrent_runs.py ran past its time). The holder here is another open file
    description of the lock file, which flock treats as another job."""
    import fcntl

    from pcm_policy.pusht import train as pusht_train

    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"pid 1 (the first job)")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def set_up(*a, **k):
        raise AssertionError("the dataset was loaded in a folder another job holds")

    monkeypatch.setattr(pusht_train, "PushTLowdimDataset", set_up)
    cfg = {"threads": 1, "run_dir": str(run), "force": False, "training": {"steps": 10, "batch_size": 8, "seed": 0},
           "task": {"dataset": "data/pusht_expert.zarr"}, "policy": {}}
    try:
        with pytest.raises(FolderInUseError, match="is in use by pid 1 \\(the first job\\)"):
            pusht_train.train_policy(cfg, "test", ROOT)
    finally:
        os.close(fd)
    assert sorted(p.name for p in run.iterdir()) == [".lock"]
