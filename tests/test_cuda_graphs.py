"""CudaGraphs (sampling.graphs): a no-op on a CPU (same outputs, every call eager), the flag accepted everywhere
it is offered; on a CUDA machine (skipped here when none is visible) graphed samplers equal eager ones."""

from __future__ import annotations

import pytest
import torch
from helpers import load_script

from pcm_policy.pusht.policy import DiffusionPolicy, PolicyConfig
from pcm_policy.pusht.rollout import run_rollouts
from pcm_policy.sampling import TAA, CudaGraphs, Jump, SamplerSpec, make_sampler


def tiny_policy(device="cpu") -> DiffusionPolicy:
    torch.manual_seed(0)
    return DiffusionPolicy(PolicyConfig(unet_size="small", unet={"down_dims": [16, 32, 64]})).to(device).eval()


def specs(T=10):
    return [SamplerSpec.named("ddim", num_steps=T), SamplerSpec.named("picard", num_steps=T, tol=0.1),
            SamplerSpec.named("taa", num_steps=T, tol=0.0, k=4, jump=Jump((2, 8), (0.0, 0.0)))]


def test_on_cpu_the_wrapper_is_a_noop_with_the_same_outputs():
    policy = tiny_policy()
    graphs = CudaGraphs(policy.model_fn)
    x_T, cond = torch.randn(3, 16, 2), torch.randn(3, 40)
    for spec in specs():
        sampler = make_sampler(spec, policy.noise_scheduler)
        want, st0 = sampler(policy.model_fn, x_T, cond)
        got, st1 = sampler(graphs, x_T, cond)
        assert torch.equal(got, want) and st0.iterations == st1.iterations, spec.name
    assert graphs.stats.captures == graphs.stats.replays == 0 and graphs.stats.eager > 0


def test_policy_flag_on_cpu_keeps_every_action():
    """``DiffusionPolicy.cuda_graphs()`` on a CPU policy: the same episodes, bit for bit (frozen graphs too)."""
    policy = tiny_policy()
    sampler = make_sampler(SamplerSpec.named("taa", num_steps=8, tol=0.1), policy.noise_scheduler)
    kw = dict(max_steps=16, warm_start=True)
    want = run_rollouts(policy, sampler, [100000, 100001], **kw)["episodes"]
    policy.freeze(True).cuda_graphs()
    got = run_rollouts(policy, sampler, [100000, 100001], **kw)["episodes"]
    assert [e["score"] for e in got] == [e["score"] for e in want]
    assert [[c["iterations"] for c in e["chunks"]] for e in got] == [[c["iterations"] for c in e["chunks"]]
                                                                      for e in want]
    assert policy._cuda_graphs.stats.eager > 0 and policy._cuda_graphs.stats.captures == 0
    policy.cuda_graphs(False)
    assert policy._cuda_graphs is None


def test_bad_settings_and_widths():
    with pytest.raises(ValueError, match="buckets"):
        CudaGraphs(lambda x, t, c: x, buckets=[4, 2])
    with pytest.raises(ValueError, match="warmup"):
        CudaGraphs(lambda x, t, c: x, warmup=0)
    g = CudaGraphs(lambda x, t, c: x)
    assert [g.width(n) for n in (1, 2, 3, 33, 50, 64)] == [1, 2, 4, 64, 64, 64]
    g = CudaGraphs(lambda x, t, c: x, buckets=[8, 51])
    assert [g.width(n) for n in (1, 8, 9, 51, 60)] == [8, 8, 51, 51, 60]


def test_scripts_take_the_flag_and_refuse_bad_settings(capsys):
    rollout = load_script("rollout")
    assert rollout.parse_args(["--sampler", "ddim", "--cuda-graphs"]).cuda_graphs
    bench = load_script("bench_graphs")
    for bad in (["--models", "pusht,imagenet"], ["--ks", "picard=10"], ["--repeats", "0"], ["--buckets", "1,x"],
                ["--buckets", "30,1"], ["--buckets", "0,4"]):
        with pytest.raises(SystemExit) as e:
            bench.parse_args(bad)
        assert e.value.code == 2
    assert "error" in capsys.readouterr().err
    assert bench.parse_args(["--buckets", "1,30"]).buckets == [1, 30]


@pytest.mark.slow
def test_bench_graphs_runs_on_cpu(tmp_path):
    """The GPU check's script runs end to end on a CPU (graphs a no-op: zero difference, nothing captured)."""
    bench = load_script("bench_graphs")
    out = tmp_path / "g.json"
    assert bench.main(["--models", "pusht", "--repeats", "1", "--conds", "1", "--out", str(out)]) == 0
    import json

    res = json.loads(out.read_text())["pusht"]
    assert set(res["rows"]) == {"ddim", "picard", "taa", "pcm"}
    assert all(r["max_diff_graphs_vs_eager"] == 0 and r["max_diff_eager_rerun"] == 0 for r in res["rows"].values())
    assert res["graphs"]["captures"] == 0 and res["rows"]["ddim"]["eager"]["iterations"] == 50


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
def test_on_cuda_graphed_samplers_equal_eager():  # pragma: no cover - runs only where a GPU is visible
    policy = tiny_policy("cuda")
    graphs = CudaGraphs(policy.model_fn)
    x_T, cond = torch.randn(3, 16, 2, device="cuda"), torch.randn(3, 40, device="cuda")
    with torch.no_grad():
        for spec in specs() + [SamplerSpec.named("taa", num_steps=10, taa=TAA(), tol=0.0)]:
            sampler = make_sampler(spec, policy.noise_scheduler)
            want, _ = sampler(policy.model_fn, x_T, cond)
            got, _ = sampler(graphs, x_T, cond)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert graphs.stats.captures > 0 and graphs.stats.replays > graphs.stats.captures
