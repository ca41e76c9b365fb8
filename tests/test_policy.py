"""DiffusionPolicy, checkpoints, the training loop and the rollout entry point."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_script

from pcm_policy.pusht.checkpoint import CheckpointError, load_policy, save_policy
from pcm_policy.pusht.policy import DiffusionPolicy, PolicyConfig
from pcm_policy.pusht.rollout import run_rollouts, summarize
from pcm_policy.sampling import make_sampler, step_grid
from pcm_policy.training import EMA, ema_decay

ROOT = Path(__file__).resolve().parents[1]


def tiny_policy(seed=0) -> DiffusionPolicy:
    torch.manual_seed(seed)
    return DiffusionPolicy(PolicyConfig(unet_size="small", unet={"down_dims": [16, 32, 64]})).eval()


def test_predict_action_shapes_and_conditioning():
    policy = tiny_policy()
    obs = torch.rand(3, 2, 20) * 512
    sampler = make_sampler("ddim-k", policy.noise_scheduler, k=4)
    noise = torch.randn(3, 16, 2)
    out = policy.predict_action(obs, sampler, noise=noise)
    assert out["action"].shape == (3, 8, 2) and out["action_pred"].shape == (3, 16, 2)
    torch.testing.assert_close(out["action"], out["action_pred"][:, 1:9])  # executed slice [To-1, To-1+Ta)
    other = policy.predict_action(obs.flip(0), sampler, noise=noise)
    assert not torch.allclose(out["action_pred"], other["action_pred"])  # the observation matters
    with pytest.raises(ValueError, match="obs must be"):
        policy.predict_action(torch.rand(3, 2, 5), sampler)


def test_same_noise_same_actions_and_save_load(tmp_path):
    policy = tiny_policy()
    obs = torch.rand(2, 2, 20) * 512
    sampler = make_sampler("ddim", policy.noise_scheduler, num_steps=10)
    a = policy.predict_action(obs, sampler, generator=torch.Generator().manual_seed(3))["action"]
    b = policy.predict_action(obs, sampler, generator=torch.Generator().manual_seed(3))["action"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    save_policy(policy, tmp_path / "ckpt", {"note": "test"})
    loaded = load_policy(tmp_path / "ckpt")
    c = loaded.predict_action(obs, sampler, generator=torch.Generator().manual_seed(3))["action"]
    torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="missing config.json"):
        load_policy(tmp_path)
    save_policy(tiny_policy(), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["policy"]["unet"]["down_dims"] = [8, 16, 32]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match"):
        load_policy(tmp_path)


def test_damaged_checkpoint_and_adapter_files_name_the_file(tmp_path):
    """A truncated model.safetensors / adapter.safetensors and a corrupted adapter.json: one CheckpointError naming
    the file and what to do (safetensors' SafetensorError and the JSON parser's message named no file)."""
    from pcm_policy.lora import add_lora
    from pcm_policy.pusht.checkpoint import load_adapter_folder, save_adapter_folder
    from pcm_policy.sampling import SamplerSpec

    policy = tiny_policy()
    save_policy(policy, tmp_path / "ckpt")
    weights = tmp_path / "ckpt/model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{weights}: cannot read it as a safetensors file .* truncated"):
        load_policy(tmp_path / "ckpt")
    add_lora(policy.model)
    save_adapter_folder(policy, tmp_path / "ad", SamplerSpec.named("pcm"))
    cfg = tmp_path / "ad/adapter.json"
    good = cfg.read_text()
    cfg.write_text(good[:-5])
    with pytest.raises(CheckpointError, match=f"{cfg}: this adapter config is not valid JSON"):
        load_adapter_folder(tiny_policy(), tmp_path / "ad")
    cfg.write_text(good)
    ad = tmp_path / "ad/adapter.safetensors"
    ad.write_bytes(ad.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{ad}: cannot read it as a safetensors file"):
        load_adapter_folder(tiny_policy(), tmp_path / "ad")


def test_loss_decreases_on_one_batch_and_ema_decay():
    policy = tiny_policy().train()
    batch = {"obs": torch.rand(16, 16, 20) * 512, "action": torch.rand(16, 16, 2) * 512}
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    first = policy.compute_loss(batch, generator=torch.Generator().manual_seed(0)).item()
    for _ in range(30):
        loss = policy.compute_loss(batch, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert policy.compute_loss(batch, generator=torch.Generator().manual_seed(0)).item() < first
    assert ema_decay(2) == pytest.approx(0.4054, abs=1e-4) and ema_decay(10000) == pytest.approx(0.999, abs=1e-4)
    policy.normalizer.requires_grad_(False)
    policy.model.final_conv.requires_grad_(False)  # a frozen part: the EMA holds nothing of it
    ema = EMA(policy)
    trained = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert set(ema.shadow) == trained and len(trained) < len(list(policy.parameters()))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    ema.update(policy)  # step 1: decay 0 -> a straight copy
    params = dict(policy.named_parameters())
    assert all(torch.equal(ema.shadow[n], params[n]) for n in trained)
    old = {n: v.clone() for n, v in ema.shadow.items()}
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    ema.update(policy)  # step 2: ema = d * old + (1 - d) * new, d = ema_decay(2)
    d = ema_decay(2)
    for n in trained:
        torch.testing.assert_close(ema.shadow[n], d * old[n] + (1 - d) * params[n])
    live = {n: p.clone() for n, p in params.items()}
    with ema.applied(policy):  # the averages in place, the frozen parameters untouched
        assert all(torch.equal(params[n], ema.shadow[n]) for n in trained)
        assert all(torch.equal(params[n], live[n]) for n in params if n not in trained)
    assert all(torch.equal(params[n], live[n]) for n in params)  # and the live weights back


def test_rollout_same_seed_same_episode():
    policy = tiny_policy()
    sampler = make_sampler("ddim-k", policy.noise_scheduler, k=3)
    a = run_rollouts(policy, sampler, [0, 1], max_steps=16)["episodes"]
    b = run_rollouts(policy, sampler, [1], max_steps=16)["episodes"]
    assert a[1]["score"] == b[0]["score"] and a[1]["steps"] == b[0]["steps"] == 16
    s = summarize(a)
    assert s["episodes"] == 2 and 0 <= s["mean_score"] <= 1 and s["mean_iterations"] == 3


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_rollout_episode_is_the_same_alone_batched_and_under_any_global_seed(name):
    """Every draw of a chunk (x_T and DDPM's step noise) comes from the episode's (seed, chunk) generator."""
    policy = tiny_policy()
    sampler = make_sampler(name, policy.noise_scheduler, num_steps=10)

    def agent_after_one_chunk(seeds, global_seed):
        torch.manual_seed(global_seed)
        return np.array(run_rollouts(policy, sampler, seeds, max_steps=8)["envs"][0].agent.position)

    alone = agent_after_one_chunk([100000], 0)
    np.testing.assert_allclose(agent_after_one_chunk([100000, 100001, 100002], 0), alone, atol=1e-3)
    np.testing.assert_allclose(agent_after_one_chunk([100000], 1), alone, atol=1e-3)


def test_predict_action_generator_drives_the_step_noise_too():
    policy = tiny_policy()
    obs = torch.rand(2, 2, 20) * 512
    sampler = make_sampler("ddpm", policy.noise_scheduler)
    torch.manual_seed(0)
    a = policy.predict_action(obs, sampler, generator=torch.Generator().manual_seed(3))["action"]
    torch.manual_seed(1)
    b = policy.predict_action(obs, sampler, generator=torch.Generator().manual_seed(3))["action"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    both = policy.predict_action(obs, sampler, generator=gens)["action"]
    second = policy.predict_action(obs[1:], sampler, generator=[torch.Generator().manual_seed(6)])["action"]
    torch.testing.assert_close(both[1:], second, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="one per row"):
        policy.predict_action(obs, sampler, generator=gens[:1])


def test_rollout_warm_start_keeps_the_actions():
    """Warm-started chunks (x0 guess = the previous prediction, shifted) converge to the same actions."""
    policy = tiny_policy()
    sampler = make_sampler("picard", policy.noise_scheduler, num_steps=8, tol=0.0, init="prior")
    cold = run_rollouts(policy, sampler, [0, 1], max_steps=24)["episodes"]
    warm = run_rollouts(policy, sampler, [0, 1], max_steps=24, warm_start=True)["episodes"]
    for c, w in zip(cold, warm, strict=True):
        assert abs(c["score"] - w["score"]) < 1e-6 and c["steps"] == w["steps"] == 24
        assert abs(c["final_coverage"] - w["final_coverage"]) < 1e-6
    with pytest.raises(ValueError, match="iterative"):  # sequential samplers take no x0 guess
        run_rollouts(policy, make_sampler("ddim", policy.noise_scheduler, num_steps=4), [0], max_steps=8,
                     warm_start=True)


def test_rollout_warm_start_carries_only_converged_predictions():
    """A chunk whose sample did not converge (k = 1 at tol 0) hands the next chunk the cold zero guess, never its
    unconverged iterate: warm-started episodes are then the episodes started from the zero guess every chunk."""
    policy = tiny_policy()
    sampler = make_sampler("picard", policy.noise_scheduler, num_steps=8, tol=0.0, k=1, init="prior")
    warm = run_rollouts(policy, sampler, [0, 1], max_steps=24, warm_start=True)
    cold = run_rollouts(policy, sampler, [0, 1], max_steps=24)  # "prior" = the zero x0 guess
    for c, w in zip(cold["episodes"], warm["episodes"], strict=True):
        assert (c["score"], c["steps"], c["final_coverage"]) == (w["score"], w["steps"], w["final_coverage"])
    assert warm["cold_restarts"] == 0


@pytest.mark.slow
def test_rollout_fixed_k_warm_start_stays_finite_on_the_shipped_policy():
    """The reported case: plain Picard, k = 4, tol 0, warm start, seed 500012 went NaN at chunk 17 and ended in the
    env's traceback; now the episode runs its 200 steps."""
    policy = load_policy(ROOT / "checkpoints/pusht_base")
    sampler = make_sampler("picard", policy.noise_scheduler, num_steps=50, tol=0.0, k=4)
    ep = run_rollouts(policy, sampler, [500012], max_steps=200, warm_start=True)["episodes"][0]
    assert ep["steps"] == 200 and np.isfinite(ep["final_coverage"])


def test_rollout_time_budget_and_per_sample_iterations():
    """--budget-ms's library form: a budget of 0 stops every chunk after its first iteration (and says so), a
    budget never spent changes nothing; chunks report their own sample's iterations and the batch's."""
    policy = tiny_policy()
    sampler = make_sampler("taa", policy.noise_scheduler, num_steps=8, tol=0.1)
    free = run_rollouts(policy, sampler, [0, 1, 2], max_steps=16)["episodes"]
    zero = run_rollouts(policy, sampler, [0, 1, 2], max_steps=16, budget_s=0.0)["episodes"]
    big = run_rollouts(policy, sampler, [0, 1, 2], max_steps=16, budget_s=1e6)["episodes"]
    assert all(c["iterations"] == c["batch_iterations"] == 1 for e in zero for c in e["chunks"])
    s = summarize(zero)
    assert s["mean_iterations"] == s["mean_batch_iterations"] == 1 and s["budget_hit_rate"] == 1
    for f, b in zip(free, big, strict=True):
        assert f["final_coverage"] == b["final_coverage"] and not any(c["budget_hit"] for c in b["chunks"])
        assert [c["iterations"] for c in f["chunks"]] == [c["iterations"] for c in b["chunks"]]
    s = summarize(free)
    assert s["budget_hit_rate"] == 0 and s["mean_iterations"] <= s["mean_batch_iterations"]
    assert all(c["iterations"] <= c["batch_iterations"] for e in free for c in e["chunks"])
    with pytest.raises(ValueError, match="budget_s"):  # sequential samplers take no budget
        run_rollouts(policy, make_sampler("ddim", policy.noise_scheduler, num_steps=4), [0], max_steps=8,
                     budget_s=1.0)


@pytest.mark.slow
def test_smoke_training_and_rollout_script(tmp_path):
    from pcm_policy.data import ReplayBuffer

    src = ReplayBuffer.open(ROOT / "data/pusht_expert.zarr")
    small = ReplayBuffer.create(tmp_path / "demos.zarr")
    for i in range(6):
        small.add_episode(src.get_episode(i), meta={"seed": i, "first_success_step": 0})
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts/train_policy.py"), "task=pusht", "training=smoke", "policy=small",
           f"run_dir={run}", f"task.dataset={tmp_path / 'demos.zarr'}", "task.val_ratio=0.2"]
    subprocess.run(cmd, check=True, capture_output=True)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["val_loss"]) for r in log)
    twin = tmp_path / "twin"  # the same config from scratch trains the same policy, bit for bit
    subprocess.run([*cmd[:-3], f"run_dir={twin}", *cmd[-2:]], check=True, capture_output=True)
    assert (twin / "checkpoint/model.safetensors").read_bytes() == (run / "checkpoint/model.safetensors").read_bytes()
    again = subprocess.run(cmd, capture_output=True, text=True)  # the same command resumes, and says so
    assert again.returncode == 0 and f"resuming the run in {run} at step 2" in again.stdout
    other = subprocess.run([*cmd, "training.steps=3"], capture_output=True, text=True)  # another config: refused
    assert other.returncode != 0 and "Traceback" not in other.stderr
    assert "another config (training.steps: 2 there, 3 now)" in other.stderr.strip().splitlines()[-1]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    shipped = subprocess.run([*cmd[:-3], f"run_dir={ROOT / 'checkpoints/pusht_base'}"], capture_output=True, text=True)
    assert shipped.returncode != 0 and "tracked by git" in shipped.stderr and "force=true" in shipped.stderr
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts/rollout.py"), "--sampler", "ddim-k", "--k", "2",
                        "--checkpoint", str(run / "checkpoint"), "--max-steps", "8", "--episodes", "2",
                        "--json", str(out), "--video", str(tmp_path / "v.gif")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert set(res["summary"]) >= {"mean_score", "success_rate", "mean_iterations", "median_latency_s"}
    assert [e["seed"] for e in res["episodes"]] == [0, 1] and (tmp_path / "v.gif").exists()
    assert {"iterations", "nfe", "latency_s"} <= set(res["episodes"][0]["chunks"][0])
    r = subprocess.run([sys.executable, str(ROOT / "scripts/rollout.py"), "--sampler", "ddim-k", "--k", "2",
                        "--checkpoint", str(run / "checkpoint"), "--max-steps", "8", "--episodes", "2",
                        "--json", str(out), "--eager"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    eager = json.loads(out.read_text())  # the eager UNet: the same episodes as its frozen graphs
    for e, f in zip(eager["episodes"], res["episodes"], strict=True):
        assert (e["score"], e["steps"], e["final_coverage"]) == (f["score"], f["steps"], f["final_coverage"])


@pytest.mark.parametrize("args, msg", [
    (["--sampler", "nope"], "unknown sampler"),
    (["--sampler", "picard", "--k", "0"], "--k must be >= 1"),
    (["--sampler", "picard", "--tol", "-1"], "--tol must be a finite number >= 0"),
    (["--sampler", "ddim", "--checkpoint", "/nonexistent"], "missing config.json"),
    (["--sampler", "ddim", "--device", "nope"], "unknown device 'nope'"),
    pytest.param(["--sampler", "ddim", "--device", "cuda"], "torch sees no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
    (["--sampler", "ddim", "--seed", "-1"], "--seed must be in 0..4294967295"),
    (["--sampler", "ddim", "--seed", str(2**32 - 1), "--episodes", "2"], "--seed must be in 0..4294967295"),
    (["--sampler", "ddim", "--k", "100"], "--k truncates the 50-step DDIM trajectory: it must be in 1..--num-steps"),
    (["--sampler", "picard", "--k", "60"], "--k must be in 1..--num-steps=50 for picard"),
    (["--sampler", "ddim", "--num-steps", "0"], "--num-steps (DDIM steps T) must be >= 1"),
    (["--sampler", "ddim", "--num-steps", "1000"], "num_steps (DDIM steps T) must be in 1..100"),
    (["--sampler", "ddim-k", "--k", "101"], "k (ddim-k's steps) must be in 1..100"),
    (["--sampler", "ddim", "--threads", "0"], "--threads must be an integer in 1..1024"),
    (["--sampler", "picard", "--window", "51"], "--window must be in 1..--num-steps=50"),
    (["--sampler", "ddim", "--budget-ms", "5"], "--budget-ms needs picard, taa, pcm or newton"),
    (["--sampler", "pcm", "--budget-ms", "-1"], "--budget-ms must be a finite number >= 0"),
    (["--sampler", "ddim", "--warm-start"], "--warm-start needs picard, taa, pcm or newton"),
    (["--sampler", "taa", "--taa-memory", "1"], "--taa-memory must be >= 2"),
    (["--sampler", "pcm", "--taa-mixing", "0"], "--taa-mixing must be in (0, 1]"),
    (["--sampler", "picard", "--taa-memory", "2"], "--taa-memory / --taa-mixing need --sampler taa or pcm"),
])
def test_rollout_bad_input_exits_2(args, msg, capsys):
    rc, err = run_main("rollout", args, capsys)  # in this process: the script's own main, no interpreter start
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("script, args, msg", [
    ("render_episode.py", ["--seed", "-1"], "--seed must be in 0..4294967295"),
    ("render_episode.py", ["--fps", "0"], "--fps must be > 0"),
    ("collect_demos.py", ["--episodes", "1", "--out", "/tmp/x.zarr", "--seed-start", "-5"], "--seed-start must be in"),
    ("collect_demos.py", ["--episodes", "1", "--out", "data/pusht_expert.zarr"], "tracked by git"),
    ("bench_env.py", ["--seed-start", "-1"], "--seed-start must be in"),
    ("eval_sweep.py", ["--seed", "-1"], "--seed must be in"),
    ("eval_sweep.py", ["--out", "results/sweep"], "pass --force"),
])
def test_other_scripts_bad_numbers_exit_2_with_one_line(script, args, msg, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, err = run_main(script.removesuffix(".py"), args, capsys)
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err


def run_main(name: str, args: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``scripts/<name>.py``'s ``main(args)`` run in this process."""
    try:
        rc = load_script(name).main(args)
    except SystemExit as e:  # argparse's errors and scripts that exit with a message
        rc = e.code if isinstance(e.code, int) else (2 if e.code else 0)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("args, msg", [
    (["--sampler", "picard", "--tol", "nan"], "--tol must be a finite number >= 0, got nan"),
    (["--sampler", "picard", "--tol", "inf"], "--tol must be a finite number >= 0, got inf"),
    (["--sampler", "pcm", "--budget-ms", "inf"], "--budget-ms must be a finite number >= 0"),
    (["--sampler", "taa", "--safeguard", "inf"], "--safeguard must be a finite number > 0"),
    (["--sampler", "taa", "--taa-mixing", "nan"], "--taa-mixing must be in (0, 1]"),
    (["--sampler", "ddim", "--episodes", "1000000"], "--episodes runs every episode at once, in lockstep: at most"),
    (["--sampler", "ddim", "--max-steps", "1000000000"], "--max-steps must be at most"),
    (["--sampler", "ddim", "--threads", "2000"], "--threads must be an integer in 1..1024"),
    (["--sampler", "ddim", "--json", "results/sweep/sweep.json"], "tracked by git"),
    (["--sampler", "ddim", "--video", str(ROOT / "README.md" / "v.mp4")], "is a file, not a folder"),
])
def test_rollout_settings_and_output_paths_are_checked_before_any_work(args, msg, capsys):
    """Refused in parse_args, before a policy is loaded or an episode runs: one line, exit 2."""
    with pytest.raises(SystemExit) as e:
        load_script("rollout").parse_args(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and msg in err and len(err.strip().splitlines()) == 1, err


def test_threads_are_capped_at_the_cores_and_said(capsys):
    from pcm_policy.device import available_cores, check_threads

    a = load_script("rollout").parse_args(["--sampler", "ddim", "--threads", "64"])
    assert a.threads == min(64, available_cores())
    if available_cores() < 64:
        assert f"--threads 64 capped at {available_cores()}" in capsys.readouterr().err
    assert check_threads(1) == 1
    for bad in (0, -1, 1025, 2.5, True, "4"):
        with pytest.raises(ValueError, match="threads must be an integer in 1..1024"):
            check_threads(bad, "threads")


def test_writers_refuse_tracked_files_before_any_work(tmp_path, capsys):
    """bench_samplers --out and generate --out into results/ (their own help suggested it) need --force; the
    check runs before the benchmark or the model load."""
    with pytest.raises(SystemExit) as e:
        load_script("bench_samplers").parse(["--size", "small", "--out", "results/bench_samplers_eager.json"])
    assert e.value.code == 2 and "tracked by git" in capsys.readouterr().err
    gen = load_script("vision/generate")
    assert gen.main(["--out", "results/anytime", "--num-samples", "1"]) == 2
    assert "tracked by git" in capsys.readouterr().err
    assert gen.main(["--out", str(ROOT / "README.md" / "x"), "--num-samples", "1"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert gen.parse_args([]).out == ROOT / "runs" / "samples"  # not the source tree


@pytest.mark.parametrize("script, call, argv, msg", [
    ("tune_taa", "main", ["--json", "results/taa_tuning.json"], "tracked by git"),
    ("plot_training", "main", [str(ROOT / "results/base_round1"), "--out", "results/sweep/sweep.json"],
     "tracked by git"),
    ("bench_env", "parse_args", ["--out", "results/bench_env.json"], "tracked by git"),
    ("render_episode", "parse_args", ["--out", str(ROOT / "README.md" / "x.mp4")], "is a file, not a folder"),
    ("vision/bench_window", "main", ["--out", "results/sweep/sweep.json"], "tracked by git"),
    ("bench_graphs", "parse_args", ["--out", "results/device_h200/bench_graphs.json"], "tracked by git"),
    ("bench_jump_restart", "parse_args", ["--out", "results/bench_env.json"], "tracked by git"),
    ("bench_first_iterate", "parse_args", ["--out", str(ROOT / "README.md" / "x.json")], "is a file, not a folder"),
    ("compare_adapters", "parse_args", ["--adapters", str(ROOT / "checkpoints/pusht_pcm"), "--out",
                                        "results/bench_env.json"], "tracked by git"),
])
def test_every_writer_checks_its_output_before_any_work(script, call, argv, msg, capsys):
    """One guard for every writer: a file git tracks is replaced only with --force, and a path that cannot be
    written is refused, before any work."""
    with pytest.raises(SystemExit) as e:
        getattr(load_script(script), call)(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_run_record_names_the_command_commit_and_date():
    from pcm_policy.io import run_record

    r = run_record("scripts/x.py", ["--a", "1"])
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert r["command"] == "python scripts/x.py --a 1" and r["commit"] == head.stdout.strip()
    assert len(r["date"]) == len("2026-12-04 18:00") and r["date"][4] == "-"


@pytest.mark.slow
def test_rollout_says_when_an_option_is_ignored(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts/rollout.py"), "--sampler", "ddim-k", "--k", "2",
                        "--max-steps", "1", "--adapter", str(tmp_path), "--k-on", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "note: --sampler ddim-k ignores --adapter, --k-on (only --sampler pcm reads them)" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "scripts/rollout.py"), "--sampler", "consistency", "--k", "2",
                        "--max-steps", "1", "--adapter", str(ROOT / "checkpoints/pusht_cd")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr  # the student's adapter is read, not ignored


def test_denoise_lambda_zero_is_the_base_model_exactly():
    from pcm_policy.lora import add_lora, lora_parameters

    policy = tiny_policy()
    x, t, c = torch.randn(3, 16, 2), torch.tensor([5, 60, 99]), torch.randn(3, 40)
    base = policy.model_fn(x, t, c)
    add_lora(policy.model)
    with torch.no_grad():
        for p in lora_parameters(policy.model):
            p.normal_()
    assert torch.equal(policy.model_fn(x, t, c), base) and torch.equal(policy.model_fn(x, t, c, lora_scale=0.0), base)
    rows = policy.model_fn(x, t, c, lora_scale=torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(rows[0], base[0]) and not torch.allclose(rows[1], base[1])


def test_frozen_graphs_compute_the_eager_outputs():
    """freeze(): the frozen graphs give the eager outputs bitwise (base model and lambda = 1, any batch
    width); per-row lambdas of 0 and 1 only (a Jump's row beside base rows) are split over both graphs (equal
    to the eager per-row call up to float rounding); a fractional lambda, or a call with gradients, runs the
    eager model instead."""
    from pcm_policy.lora import add_lora, lora_parameters
    from pcm_policy.sampling import linear_schedule, sample_newton, sample_pcm

    policy = tiny_policy()
    add_lora(policy.model)
    with torch.no_grad():
        for p in lora_parameters(policy.model):
            p.normal_(std=0.1)
    g = torch.Generator().manual_seed(0)
    calls = []
    for w in (1, 5, 50):
        x, t, c = torch.randn(w, 16, 2, generator=g), torch.randint(0, 100, (w,), generator=g), torch.randn(w, 40)
        for lam in (None, 0.0, 1.0, 0.5, (torch.arange(w) % 2).float()):
            calls.append((x, t, c, lam))
    with torch.no_grad():
        eager = [policy.model_fn(x, t, c, lora_scale=lam) for x, t, c, lam in calls]
        pcm = dict(grid=step_grid(policy.noise_scheduler, 10, solver="ddim"), schedule=linear_schedule(1, 3), tol=0.0)
        x_T, cond = torch.randn(2, 16, 2, generator=g), torch.randn(2, 40, generator=g)
        ref, _ = sample_pcm(policy.model_fn, x_T, cond, **pcm)
        policy.freeze()
        served = [policy._frozen.graph(x, t, c, lam) is not None for x, t, c, lam in calls]
        assert served == [not torch.is_tensor(lam) and lam in (None, 0.0, 1.0) for _, _, _, lam in calls]
        for (x, t, c, lam), e in zip(calls, eager, strict=True):
            if torch.is_tensor(lam):
                assert torch.allclose(policy.model_fn(x, t, c, lora_scale=lam), e, atol=1e-5, rtol=0)
            else:
                assert torch.equal(policy.model_fn(x, t, c, lora_scale=lam), e)
        assert torch.equal(sample_pcm(policy.model_fn, x_T, cond, **pcm)[0], ref)  # lambda 1, 0.5, then 0
    plain = tiny_policy()  # Newton's JVPs (forward-mode AD) run through the frozen graph of a policy without adapter
    newton = dict(grid=step_grid(plain.noise_scheduler, 6, solver="ddim"), tol=0.0, max_iters=2)
    ref_newton, _ = sample_newton(plain.model_fn, x_T, cond, **newton)
    assert torch.equal(sample_newton(plain.freeze().model_fn, x_T, cond, **newton)[0], ref_newton)
    x, t, c, _ = calls[0]
    assert policy._frozen.graph(x, t, c) is None  # gradients on: the eager model, which autograd can see through
    assert policy._frozen.graph(x[:, :8], t, c) is None  # another sequence length than the traced one
    assert policy.freeze(False)._frozen is None
