"""Smoke test of the sampler benchmark on the shipped checkpoint and adapter (timings mean nothing here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_samplers  # noqa: E402


def test_bench_runs_every_sampler_and_reports_distances(tmp_path):
    out = tmp_path / "bench.json"
    bench_samplers.main(["--checkpoint", str(ROOT / "checkpoints/pusht_base"), "--adapter",
                         str(ROOT / "checkpoints/pusht_pcm"), "--conds", "1", "--repeats", "1", "--num-steps", "10",
                         "--windows", "10", "--pcm-windows", "10", "--tols", "0.0", "--safeguards", "none",
                         "--inits", "noise,prior",
                         "--ddim-ks", "2", "--curve", "1,10", "--curve-threads", "1", "--curve-repeats", "1",
                         "--out", str(out)])
    res = json.loads(out.read_text())
    s = res["samplers"]
    assert set(s) == {"ddim_sequential", "ddim_k2", "picard_w10_tol0", "picard_w10_tol0_prior", "taa3_w10_tol0",
                      "pcm_weight_w10_tol0"}
    for name in ("picard_w10_tol0", "picard_w10_tol0_prior", "taa3_w10_tol0", "pcm_weight_w10_tol0"):  # tol 0
        assert s[name]["max_abs_delta_px"] < 1e-2 and s[name]["converged"]
    assert s["ddim_k2"]["max_abs_delta_px"] > 1e-2  # a coarser solver: different actions
    assert set(res["batch_cost_curve"]["threads=1"]) == {"1", "10"}
