"""A lerobot PushT policy folder in this package's PushT env: ``EnvPolicy`` (observation conversion, lerobot's own
processors and action slice), ``scripts/rollout.py`` and ``scripts/eval_sweep.py`` with a lerobot folder, and their
one-line errors for bad input (random policies built by lerobot, small)."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("lerobot.policies.diffusion")  # not "lerobot": tests/lerobot/ itself is a namespace "lerobot"

import numpy as np  # noqa: E402
import torch  # noqa: E402
from helpers import load_script  # noqa: E402
from lerobot_build import build_policy, save_policy  # noqa: E402

from pcm_policy.lerobot import adapter_beside, is_policy_folder  # noqa: E402
from pcm_policy.lerobot.adapter import PolicyFolderError  # noqa: E402
from pcm_policy.lerobot.envpolicy import EnvPolicy, lerobot_features  # noqa: E402
from pcm_policy.sampling import SamplerSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot_policy")
    save_policy(build_policy(steps=10, seed=3), root)
    return root


def _obs(batch, seed=0):
    """Raw observations of our env's obs_type="state" (B, 2, 5): agent, block origin (px), angle (rad)."""
    g = np.random.default_rng(seed)
    lo, hi = [50, 50, 100, 100, 0], [450, 450, 400, 400, 2 * np.pi]
    return torch.as_tensor(g.uniform(lo, hi, size=(batch, 2, 5)), dtype=torch.float32)


def test_features_are_gym_pushts_observation():
    """Our env's state observation -> the two lerobot features equal gym-pusht's own environment_state_agent_pos
    observation of the same world (its pymunk bodies, read back after a reset and a few random pushes)."""
    import gym_pusht  # noqa: F401
    import gymnasium as gym

    env = gym.make("gym_pusht/PushT-v0", obs_type="environment_state_agent_pos").unwrapped
    obs, _ = env.reset(seed=7)
    rng = np.random.default_rng(0)
    for _ in range(30):
        ours = torch.tensor([[*env.agent.position, *env.block.position, env.block.angle % (2 * np.pi)]])
        f = lerobot_features(ours)
        np.testing.assert_allclose(f["observation.environment_state"][0].numpy(), obs["environment_state"], atol=1e-3)
        np.testing.assert_allclose(f["observation.state"][0].numpy(), obs["agent_pos"], atol=1e-3)
        obs, *_ = env.step(rng.uniform(100, 400, size=2))
    env.close()


def test_predict_action_is_lerobots_own(folder):
    """EnvPolicy's chunk with the policy's own DDIM-10 equals lerobot's generate_actions on the same x_T, after its
    own pre- and postprocessor: conversion, conditioning, action slice and unnormalisation are lerobot's."""
    ep = EnvPolicy.from_folder(folder)
    obs = _obs(3)
    x_T = torch.randn(3, *ep.adapter.sample_shape, generator=torch.Generator().manual_seed(1))
    out = ep.predict_action(obs, ep.adapter.sampler("ddim"), noise=x_T)
    a = ep.adapter
    batch = a.preprocessor(lerobot_features(obs))
    with torch.no_grad():
        ref = a.postprocessor(a.diffusion.generate_actions(batch, noise=x_T.clone()))
    assert out["action"].shape == (3, 8, 2)
    torch.testing.assert_close(out["action"], ref, atol=1e-4, rtol=0)  # px; the same float32 ops
    # Picard + TAA at tol 0 converges to the same actions
    exact = ep.predict_action(obs, a.sampler(SamplerSpec.named("taa", num_steps=10, tol=0.0)), noise=x_T)
    torch.testing.assert_close(exact["action"], ref, atol=1e-3, rtol=0)
    # the pixel distance's scale: normalised units per px of lerobot's MIN_MAX action normaliser (2 / (5 - -3))
    torch.testing.assert_close(ep.normalizer["action"].scale, torch.full((2,), 0.25))


def test_folder_detection(folder, tmp_path):
    assert is_policy_folder(folder) and is_policy_folder(folder.parent / folder.name)
    assert not is_policy_folder(ROOT / "checkpoints" / "pusht_base")  # our own PushT checkpoint
    assert not is_policy_folder(tmp_path)


def test_adapter_beside_the_policy(tmp_path):
    """A PCM adapter shipped beside a policy (<folder>/pcm) is found from the folder or its pretrained_model/;
    a pcm/ without adapter.json, or none, is not an adapter."""
    (tmp_path / "pretrained_model").mkdir()
    assert adapter_beside(tmp_path) is None
    (tmp_path / "pcm").mkdir()
    assert adapter_beside(tmp_path) is None
    (tmp_path / "pcm" / "adapter.json").write_text("{}")
    assert adapter_beside(tmp_path) == adapter_beside(tmp_path / "pretrained_model") == tmp_path / "pcm"
    assert adapter_beside(tmp_path / "pcm") is None


def test_image_policy_refused(tmp_path):
    save_policy(build_policy(image=True), tmp_path)
    with pytest.raises(PolicyFolderError, match="state-only"):
        EnvPolicy.from_folder(tmp_path)


def _run(mod, argv, capsys):
    rc = mod.main(argv)
    return rc, capsys.readouterr()


@pytest.mark.slow
def test_rollout_cli_runs_a_lerobot_folder(folder, tmp_path, capsys):
    """scripts/rollout.py with a lerobot folder: our env, our protocol; DDIM-10 and Picard at tol 0 give the same
    episode (same seeds, same x_T per chunk)."""
    ro = load_script("rollout")
    common = ["--checkpoint", str(folder), "--seed", "100000", "--episodes", "2", "--max-steps", "16",
              "--num-steps", "10"]
    eps = {}
    for sampler, extra in (("ddim", []), ("picard", ["--tol", "0", "--no-warm-start"])):
        out = tmp_path / f"{sampler}.json"
        rc, cap = _run(ro, [*common, "--sampler", sampler, *extra, "--json", str(out)], capsys)
        assert rc == 0, cap.err
        eps[sampler] = json.loads(out.read_text())["episodes"]
    assert [e["seed"] for e in eps["ddim"]] == [100000, 100001]
    assert all(e["steps"] == 16 for e in eps["ddim"])  # 2 chunks of 8 actions
    for a, b in zip(eps["ddim"], eps["picard"], strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        assert a["final_coverage"] == pytest.approx(b["final_coverage"], abs=1e-4)
    assert max(c["iterations"] for e in eps["picard"] for c in e["chunks"]) <= 10


@pytest.mark.slow
def test_sweep_cli_runs_a_lerobot_folder(folder, tmp_path, capsys):
    sw = load_script("eval_sweep")
    out = tmp_path / "sweep"
    rc, cap = _run(sw, ["--checkpoint", str(folder), "--samplers", "ddim,taa", "--ks", "1,10", "--score-ks", "10",
                        "--episodes", "1", "--max-steps", "8", "--num-steps", "10", "--distance-conditions", "2",
                        "--out", str(out)], capsys)
    assert rc == 0, cap.err
    result = json.loads((out / "sweep.json").read_text())
    assert set(result["settings"]["samplers"]) == {"ddim", "taa"}
    assert "samplers_given" not in result["settings"]


def test_bad_input_is_one_line(folder, tmp_path, capsys, monkeypatch):
    ro, sw = load_script("rollout"), load_script("eval_sweep")
    act = tmp_path / "act"
    act.mkdir()
    (act / "config.json").write_text(json.dumps({"type": "act"}))
    rc, cap = _run(ro, ["--checkpoint", str(act), "--sampler", "ddim"], capsys)
    assert rc == 2 and cap.err.count("\n") == 1 and "only diffusion policies" in cap.err
    rc, cap = _run(sw, ["--checkpoint", str(act), "--samplers", "ddim", "--out", str(tmp_path / "s")], capsys)
    assert rc == 2 and cap.err.count("\n") == 1 and "only diffusion policies" in cap.err
    rc, cap = _run(ro, ["--checkpoint", str(folder), "--sampler", "pcm"], capsys)
    assert rc == 2 and cap.err.count("\n") == 1 and "--adapter" in cap.err
    rc, cap = _run(sw, ["--checkpoint", str(folder), "--samplers", "ddim,pcm", "--out", str(tmp_path / "s")], capsys)
    assert rc == 2 and cap.err.count("\n") == 1 and "--adapter" in cap.err
    assert not (tmp_path / "s").exists()
    # lerobot missing (as in the main venv): the import of lerobot's policy module fails
    monkeypatch.setitem(sys.modules, "lerobot.policies.diffusion.modeling_diffusion", None)
    rc, cap = _run(ro, ["--checkpoint", str(folder), "--sampler", "ddim"], capsys)
    assert rc == 2 and cap.err.count("\n") == 1 and "lerobot is not installed" in cap.err and ".venv-lerobot" in cap.err


def test_bench_sizes_prices_a_call_past_the_widest_width():
    """PCM's calls carry the jump's row beside a full window (T + 1 rows, wider than any measured width): priced
    along the last two widths, not a crash (it raised StopIteration on the step-9,000 policy's PCM adapter)."""
    interp = load_script("lerobot/bench_sizes").interp
    curve = {1: 10.0, 40: 50.0, 50: 60.0}
    assert interp(curve, 50) == 60.0 and interp(curve, 45) == 55.0 and interp(curve, 51) == 61.0


@pytest.mark.slow
def test_bench_sizes_smoke(folder, tmp_path, capsys):
    """scripts/lerobot/bench_sizes.py end to end on a tiny policy and dataset (numbers mean nothing): DDIM-T makes
    T one-row calls and is its own reference, Picard's calls are recorded and priced from the curve."""
    from test_lerobot_task import write_dataset

    bench = load_script("lerobot/bench_sizes")
    out = tmp_path / "bench.json"
    rc, cap = _run(bench, ["--policy", str(folder), "--dataset", str(write_dataset(tmp_path / "data")), "--conds", "2",
                           "--steps", "10", "--few-steps", "2", "--sizes", "4.5M", "--widths", "1,2,10", "--repeats",
                           "1", "--out", str(out)], capsys)
    assert rc == 0, cap.err
    r = json.loads(out.read_text())
    it = r["iterations"]
    assert it["DDIM-10"]["calls"] == [10, 10] and it["DDIM-10"]["rows"] == [10, 10]
    assert it["DDIM-10"]["max_distance"] == 0.0
    picard = it["Picard tol 0.1"]
    assert all(1 <= c <= 10 for c in picard["calls"]) and [len(w) for w in picard["widths"]] == picard["calls"]
    size = r["sizes"]["4.5M"]
    assert size["curve_ratio"]["1"] == 1.0 and set(size["projected_ms"]) == {"Picard tol 0.1 (projected)",
                                                                          "Picard+TAA tol 0.1 (projected)"}
    assert "DDIM-10 at 2-row calls" in cap.out


@pytest.mark.slow
def test_probe_script(folder, tmp_path, capsys):
    """scripts/lerobot/probe.py: the figures per checkpoint, the raw environment state visible in the input ranges
    (build_policy's config leaves it unnormalised, as lerobot 0.6.1 does); a bad folder is one line, exit 2."""
    from test_lerobot_task import write_dataset

    probe = load_script("lerobot/probe")
    data = write_dataset(tmp_path / "data")
    rc, cap = _run(probe, [str(folder), "--dataset", str(data), "--frames", "4"], capsys)
    assert rc == 0, cap.err
    for what in ("error", "hold still", "swap observation.state", "swap observation.environment_state"):
        assert what in cap.out
    raw, noise = _probe_inputs(data, folder)
    r = probe.probe(folder, raw, noise)
    env, state = raw["observation.environment_state"], raw["observation.state"]
    assert r["ranges"]["observation.environment_state"] == (float(env.min()), float(env.max()))  # passed through
    assert r["ranges"]["observation.state"] != (float(state.min()), float(state.max()))  # normalised
    assert r["swap observation.state"] >= 0 and r["error"] > 0
    rc, cap = _run(probe, [str(tmp_path), "--dataset", str(data)], capsys)
    assert rc == 2 and cap.err.count("\n") == 1 and "config.json" in cap.err


def _probe_inputs(data, folder):
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    from pcm_policy.lerobot.adapter import load_policy

    policy, _, _ = load_policy(folder)
    meta = LeRobotDatasetMetadata("local/tiny", root=data)
    ds = LeRobotDataset("local/tiny", root=data, delta_timestamps=resolve_delta_timestamps(policy.config, meta))
    items = [ds[i] for i in range(3)]
    raw = {k: torch.stack([it[k] for it in items]) for k in ("observation.state", "observation.environment_state",
                                                              "action")}
    return raw, torch.randn(3, policy.config.horizon, 2, generator=torch.Generator().manual_seed(0))


def test_eval_accelerated_bad_input_is_one_line(folder, tmp_path, capsys):
    ev = load_script("lerobot/eval_accelerated")
    out = tmp_path / "eval"
    for argv, says in ((["--sampler", "pcm"], "needs --adapter"), (["--k", "2"], "--sampler own"),
                       (["--episodes", "0"], "--episodes must be")):
        with pytest.raises(SystemExit) as e:
            ev.main([str(folder), *argv, "--out", str(out)])
        cap = capsys.readouterr()
        assert e.value.code == 2 and cap.err.count("\n") == 1 and says in cap.err
    act = tmp_path / "act"
    act.mkdir()
    (act / "config.json").write_text(json.dumps({"type": "act"}))
    rc, cap = _run(ev, [str(act), "--out", str(out)], capsys)
    assert rc == 2 and cap.err.count("\n") == 1 and "only diffusion policies" in cap.err
    assert not out.exists()


@pytest.mark.slow
def test_eval_accelerated_runs_lerobots_loop(folder, tmp_path, capsys):
    """scripts/lerobot/eval_accelerated.py: lerobot's own eval loop on gym-pusht; Picard + TAA at tol 0 gives the
    episodes of the policy's own sampler (same seeds), exactly k calls a chunk with --k."""
    pytest.importorskip("gym_pusht")
    ev = load_script("lerobot/eval_accelerated")
    common = ["--episodes", "2", "--episode-length", "16", "--seed", "7"]
    runs = {}
    for name, extra in (("own", []), ("taa", ["--sampler", "taa", "--tol", "0"]),
                        ("k2", ["--sampler", "taa", "--k", "2", "--tol", "0"])):
        rc, cap = _run(ev, [str(folder), *common, *extra, "--out", str(tmp_path / name)], capsys)
        assert rc == 0, cap.err
        runs[name] = json.loads((tmp_path / name / "eval_info.json").read_text())
    for key in ("max_rewards", "sum_rewards"):
        own, taa = (runs[n]["per_task"][0]["metrics"][key] for n in ("own", "taa"))
        assert len(own) == 2 and own == pytest.approx(taa, abs=1e-3)
    assert runs["own"]["calls_per_chunk"] is None and runs["k2"]["calls_per_chunk"] == 2.0
    assert 1 <= runs["taa"]["calls_per_chunk"] <= 10
    assert runs["taa"]["spec"]["name"] == "taa" and runs["taa"]["spec"]["tol"] == 0.0 and runs["own"]["spec"] is None
