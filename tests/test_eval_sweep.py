"""The evaluation sweep (``pcm_policy.evaluation.sweep``) with the PushT task (``pusht.task.sweep_task``), as
scripts/eval_sweep.py runs it, on a tiny random policy: every (sampler, k) present, exactness at k = T, cache,
errors, parallel jobs; and the script's exit codes."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_script

from pcm_policy.evaluation.report import write_report
from pcm_policy.evaluation.sweep import SweepConfig, run_sweep
from pcm_policy.lora import add_lora, lora_parameters
from pcm_policy.pusht.checkpoint import save_adapter_folder, save_policy
from pcm_policy.pusht.normalizer import NormalizerDict
from pcm_policy.pusht.policy import DiffusionPolicy, PolicyConfig
from pcm_policy.pusht.task import PushTEval, sweep_task
from pcm_policy.sampling import SamplerSpec, Switch

ROOT = Path(__file__).resolve().parents[1]

SAMPLERS, KS, T = ["ddim", "ddim-k", "picard", "pcm"], [1, 2, 4, 6], 4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random policy and a random PCM adapter (hard switch after one adapted iteration)."""
    tmp = tmp_path_factory.mktemp("sweep")
    torch.manual_seed(0)
    p = DiffusionPolicy(PolicyConfig(unet_size="small", unet={"down_dims": [16, 32, 64]}))
    rng = np.random.default_rng(0)
    p.normalizer.load_state_dict(NormalizerDict.fit({"obs": rng.uniform(0, 512, (64, 20)),
                                                     "action": rng.uniform(0, 512, (64, 2))}).state_dict())
    save_policy(p, tmp / "base")
    add_lora(p.model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in lora_parameters(p.model):
            w.copy_(0.05 * torch.randn(w.shape, generator=g))
    save_adapter_folder(p, tmp / "adapter", SamplerSpec.named("pcm", switch=Switch(1, 1)))
    return tmp


def _factory(ckpt, samplers=SAMPLERS, adapter=None, init=None):
    import functools

    return functools.partial(sweep_task, ckpt / "base", adapter or ckpt / "adapter", list(samplers), num_steps=T,
                             init=init, evaluation=PushTEval(100000, 2, 16))


def _sweep(ckpt, out, samplers=SAMPLERS, adapter=None, init=None, **extra):
    factory = _factory(ckpt, samplers, adapter, init)
    task, specs = factory()
    kw = dict(samplers=specs, ks=KS, score_ks=[1, 4], conditions=4, out=out,
              score_samplers=[s for s in ("ddim", "ddim-k", "picard", "taa", "pcm") if s in specs])
    res = run_sweep(task, SweepConfig(**{**kw, **extra}), factory=factory)
    write_report(out, res, print_table=False)
    return res


@pytest.mark.slow
def test_sweep_outputs_and_cache(ckpt, tmp_path, capsys):
    out = tmp_path / "sw"
    ret = _sweep(ckpt, out)
    res = json.loads((out / "sweep.json").read_text())
    assert ret == res
    ref = res["reference"]["mean_score"]
    for s in SAMPLERS:
        rows = {r["k"]: r for r in res["results"][s]}
        assert sorted(rows) == KS
        assert all(np.isfinite(r["distance"]) for r in rows.values())
        assert rows[2]["score"] is None and rows[1]["score"] is not None  # --score-ks 1,4 only
    by = {s: {r["k"]: r for r in res["results"][s]} for s in SAMPLERS}
    # at k = T the truncated, re-discretised and Picard (tol 0) samplers are DDIM-T itself; not so at k = 1
    assert by["ddim"][T]["distance"] == 0 and by["ddim-k"][T]["distance"] < 1e-4
    assert by["picard"][T]["distance"] < 1e-2 and by["picard"][6]["distance"] < 1e-2
    assert by["picard"][1]["distance"] > 1 and by["ddim"][1]["distance"] > 1
    assert by["ddim"][T]["score"] == ref and by["ddim"][6]["distance"] == 0  # a budget beyond T: full
    assert by["picard"][T]["score"] == pytest.approx(ref, abs=1e-3)
    assert res["k_match"]["ddim"] == T and res["k_match"]["picard"] in (T, None)
    kp = res["k_match"]["pcm"]
    assert res["speedups"]["sequential_over_pcm"] == (T / kp if kp else None)
    with open(out / "sweep.csv") as f:
        assert len(list(csv.DictReader(f))) == len(SAMPLERS) * len(KS)
    assert all((out / n).stat().st_size > 0 for n in ("score_vs_k.png", "distance_vs_k.png", "pareto.png"))

    runs = {p: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    capsys.readouterr()
    _sweep(ckpt, out)
    assert "done in" not in capsys.readouterr().out  # everything came from the cache
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").iterdir()} == runs
    assert json.loads((out / "sweep.json").read_text())["results"] == res["results"]
    _sweep(ckpt, out, ["ddim", "picard"], init="prior")
    text = capsys.readouterr().out
    assert "picard k=1: done" in text and "ddim k=1: cached" in text  # a changed setting reruns what it affects


@pytest.mark.parametrize("bad, msg", [({"samplers": {}}, "no sampler"), ({"ks": [0, 2]}, "every k must be >= 1"),
                                      ({"ks": [1, 2], "score_ks": [3]}, "subset"), ({"jobs": 0}, "must be >= 1"),
                                      ({"out": ROOT / "checkpoints/pusht_pcm"}, "tracked by git")])
def test_bad_settings_raise(tmp_path, bad, msg):
    kw = {"samplers": {"ddim": SamplerSpec.named("ddim")}, "ks": KS, "score_ks": [1], "out": tmp_path / "x", **bad}
    with pytest.raises(ValueError, match=msg):
        SweepConfig(**kw)


def test_bad_task_settings_raise(ckpt):
    with pytest.raises((FileNotFoundError, ValueError)):
        _factory(ckpt, adapter=Path("/nonexistent"))()
    with pytest.raises(ValueError, match="unknown sampler"):
        _factory(ckpt, ["ddim", "nope"])()


@pytest.mark.slow
@pytest.mark.parametrize("bad", [["--ks", "1,x"], ["--samplers", "ddim,nope"], ["--adapter", "/nonexistent"],
                                 ["--seed", "-1"], ["--init", "nope"]])
def test_script_bad_input_exits_2_with_one_line(ckpt, tmp_path, bad):
    """The script is argument parsing plus run_sweep: parse errors and setup errors exit 2 with one line."""
    args = ["--samplers", "pcm", "--ks", "1", "--episodes", "1", "--max-steps", "1", "--num-steps", str(T),
            "--checkpoint", str(ckpt / "base"), "--adapter", str(ckpt / "adapter"), "--out", str(tmp_path / "x"), *bad]
    r = subprocess.run([sys.executable, str(ROOT / "scripts/eval_sweep.py"), *args], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_sweep_of_one_sampler_without_ddim(ckpt, tmp_path):
    """The DDIM-T reference is built even when ddim itself is not swept; newton is distance-only by default."""
    out = tmp_path / "one"
    _sweep(ckpt, out, ["picard", "newton"])
    res = json.loads((out / "sweep.json").read_text())
    assert set(res["results"]) == {"picard", "newton"}
    assert res["results"]["picard"][0]["score"] is not None and res["results"]["newton"][0]["score"] is None
    assert res["results"]["newton"][-1]["distance"] < 1e-2  # Newton at k = 6 > T has converged



def test_the_k_step_peers_are_swept_as_solvers_of_k_steps(ckpt, tmp_path):
    """dpmsolver++ / unipc: the sweep's distance at each k is that of diffusers' solver built for k steps from the
    policy's own schedule (``adapters.load_sampler``), on the sweep's eval conditions; its score cells roll out."""
    from pcm_policy.adapters import load_sampler
    from pcm_policy.sampling import make_sampler

    out = tmp_path / "peers"
    _sweep(ckpt, out, ["dpmsolver++", "unipc"], score_samplers=["dpmsolver++"], score_ks=[1])
    res = json.loads((out / "sweep.json").read_text())
    task, _ = _factory(ckpt, ["dpmsolver++"])()
    cond, x_T = task.split("eval", 4)
    with torch.no_grad():
        ref = make_sampler(SamplerSpec.named("ddim", num_steps=T), task.scheduler)(task.model_fn, x_T, cond)[0]
        for s in ("dpmsolver++", "unipc"):
            for row in res["results"][s]:
                x = load_sampler(s, task.scheduler, k=row["k"])(task.model_fn, x_T, cond)[0]
                assert abs(task.distance(x, ref).mean().item() - row["distance"]) < 1e-4, (s, row)
    assert res["results"]["dpmsolver++"][0]["score"] is not None and res["results"]["unipc"][0]["score"] is None

def test_srds_is_swept_as_a_sampler_of_k_batched_calls(ckpt, tmp_path):
    """srds: the sweep's distance at each k is that of SRDS held to k batched calls (tol 0) on the sweep's eval
    conditions, read off one run's iterates; k >= T is the exact sequential output; its score cells roll out."""
    from pcm_policy.sampling import make_sampler

    out = tmp_path / "srds"
    _sweep(ckpt, out, ["srds"], score_samplers=["srds"], score_ks=[1])
    res = json.loads((out / "sweep.json").read_text())
    task, _ = _factory(ckpt, ["srds"])()
    cond, x_T = task.split("eval", 4)
    with torch.no_grad():
        ref = make_sampler(SamplerSpec.named("ddim", num_steps=T), task.scheduler)(task.model_fn, x_T, cond)[0]
        for row in res["results"]["srds"]:
            spec = SamplerSpec.named("srds", num_steps=T, tol=0.0, k=row["k"])
            x = make_sampler(spec, task.scheduler)(task.model_fn, x_T, cond)[0]
            assert abs(task.distance(x, ref).mean().item() - row["distance"]) < 1e-4, row
    assert max(r["distance"] for r in res["results"]["srds"] if r["k"] >= T) < 1e-4
    assert res["results"]["srds"][0]["score"] is not None


@pytest.mark.slow
def test_parallel_jobs_give_the_serial_results(ckpt, tmp_path):
    """jobs=2 runs the rollouts in spawned worker processes (``sweep._score_cell``) with the same results."""
    serial, par = _sweep(ckpt, tmp_path / "serial")["results"], _sweep(ckpt, tmp_path / "par", jobs=2)["results"]
    drop = ("median_latency_s",)  # wall clock differs
    assert ({s: [{k: v for k, v in row.items() if k not in drop} for row in rows] for s, rows in par.items()}
            == {s: [{k: v for k, v in row.items() if k not in drop} for row in rows] for s, rows in serial.items()})


def test_score_samplers_default_to_every_given_sampler_but_newton():
    """Peers named in --samplers are scored unless --score-samplers says otherwise (they used to be distance-only
    unless listed again); newton stays a distance-only curve."""
    script = load_script("eval_sweep")
    assert script.parse_args(["--samplers", "ddim-k,dpmsolver++,srds,newton"]).score_samplers == [
        "ddim-k", "dpmsolver++", "srds"]
    assert script.parse_args(["--samplers", "taa,pcm", "--score-samplers", "taa"]).score_samplers == ["taa"]
    assert script.parse_args([]).score_samplers == [s for s in script.NAMES if s != "newton"]
    assert script.parse_args(["--samplers", "taa,pcm", "--score-samplers", "none"]).score_samplers == []


def test_score_samplers_outside_the_sweep_are_refused(capsys):
    """A --score-samplers name that is not swept (a typo) was dropped silently, so nothing was scored."""
    script = load_script("eval_sweep")
    with pytest.raises(SystemExit) as e:
        script.parse_args(["--samplers", "taa,pcm", "--score-samplers", "pcm,tea"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--score-samplers tea not in --samplers taa,pcm" in err and len(err.splitlines()) == 1
