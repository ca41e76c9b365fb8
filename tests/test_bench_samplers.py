"""The sampler benchmark (``pcm_policy.pusht.bench`` on ``evaluation.latency``) on the shipped checkpoint and
adapter (timings mean nothing here), the generic latency pieces, and the script's CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import load_script

from pcm_policy.evaluation.latency import (
    batch_cost_curve,
    derived_ratios,
    format_report,
    time_interleaved,
    time_samplers,
)
from pcm_policy.pusht.bench import BenchConfig, run_bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_runs_every_sampler_and_reports_distances(tmp_path, capsys):
    out = tmp_path / "bench.json"
    cfg = BenchConfig(checkpoint=str(ROOT / "checkpoints/pusht_base"), adapter=str(ROOT / "checkpoints/pusht_pcm"),
                      dataset=str(ROOT / "data/pusht_expert.zarr"), conds=1, repeats=1, num_steps=10, windows=[10],
                      pcm_windows=[10], tols=[0.0], safeguards=[None], inits=["noise", "prior"], ddim_ks=[2],
                      curve=[1, 10], curve_threads=[1], curve_repeats=1)
    ret = run_bench(cfg, "test", out)
    res = json.loads(out.read_text())
    s = res["samplers"]
    assert set(s) == {"ddim_sequential", "ddim_k2", "picard_w10_tol0", "picard_w10_tol0_prior", "taa3_w10_tol0",
                      "pcm_weight_w10_tol0"}
    for name in ("picard_w10_tol0", "picard_w10_tol0_prior", "taa3_w10_tol0", "pcm_weight_w10_tol0"):  # tol 0
        assert s[name]["max_abs_delta_px"] < 1e-2 and s[name]["converged"]
    assert s["ddim_k2"]["max_abs_delta_px"] > 1e-2  # a coarser solver: different actions
    assert set(res["batch_cost_curve"]["threads=1"]) == {"1", "10"}
    assert res["settings"]["command"] == "test" and ret["samplers"].keys() == s.keys()
    text = capsys.readouterr().out
    assert text.startswith("sampler ") and f"wrote {out}" in text and "frozen graphs vs eager" in text


def test_time_interleaved_round_robin_and_sync():
    order, syncs = [], []
    times = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=2,
                             warmup=1, sync=lambda: syncs.append(1))
    assert order == ["a", "b"] * 3 and len(syncs) == 6 and all(len(v) == 2 for v in times.values())
    with pytest.raises(ValueError, match="repeats"):
        time_interleaved({"a": lambda: None}, repeats=0)


def test_curve_samplers_and_derived_on_a_toy_model():
    """Generic over the model: a linear 'denoiser' and two toy samplers, no PushT import."""
    def model(x, t, c):
        return 0.5 * x + c[:, None]

    curve = batch_cost_curve({"threads=1": (model, 1, {}), "thread_policy": (model, 1, {})}, [1, 4],
                             torch.zeros(3, 2), (5, 2), 10, repeats=2, seed=0)
    assert set(curve) == {"threads=1", "thread_policy"} and set(curve["threads=1"]) == {1, 4}

    class St:
        iterations, nfe, converged, clamped = 2, 3, True, 0

    runs = {"seq": lambda x, c: (x, St()), "off": lambda x, c: (x + 0.1, St())}
    noise, cond = torch.zeros(2, 1, 5, 2), torch.zeros(2, 1, 2)
    times, outputs = time_samplers(runs, noise, cond, repeats=2, device=torch.device("cpu"))
    assert all(len(v) == 4 for v in times.values()) and len(outputs["off"]) == 2
    from pcm_policy.evaluation.latency import sampler_table

    table = sampler_table(times, outputs, "seq", {"norm": 1.0, "px": torch.tensor([0.5, 0.5])})
    assert table["seq"]["max_abs_delta_norm"] == 0 and table["off"]["max_abs_delta_px"] == pytest.approx(0.2)
    floor = {"rows": 4, "flops": 1e6, "matmul_gflops": 1.0, "threads": 1, "floor_ms": 1.0}
    d = derived_ratios(curve, 4, 1, 1, 10.0, 1.0, {"narrow_call": 0.0, "wide_call": 0.0}, floor)
    assert "frozen_speedup_over_eager" not in d and d["full_window_rows"] == 4
    result = {"machine": {"warning": None}, "settings": {"curve_widths": [1, 4], "threads": 1, "window_threads": 1},
              "batch_cost_curve": curve, "derived": d, "samplers": table}
    lines = format_report(result).splitlines()
    assert "max|d| norm" in lines[0] and "max|d| px" in lines[0] and lines[2].startswith("seq ")


@pytest.mark.slow
def test_script_cli_errors():
    """The script is argument parsing plus run_bench: a bad number exits 2, a bad checkpoint 1 with one line."""
    script = str(ROOT / "scripts/bench_samplers.py")
    r = subprocess.run([sys.executable, script, "--conds", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "--conds must be >= 1" in r.stderr
    r = subprocess.run([sys.executable, script, "--checkpoint", "/nonexistent"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_batches_side_by_side_rows_and_cli():
    """--batch 1,8,32: one config per size (B in the curve), best-of per condition, NFE per chunk = x B."""
    from pcm_policy.pusht.bench_batches import batch_rows, best_of, format_batches, per_batch

    assert best_of([5.0, 9.0, 4.0, 7.0, 6.0, 8.0], 2) == pytest.approx((4.0 + 7.0) / 2)  # rounds of 2 conditions
    with pytest.raises(ValueError, match="whole rounds"):
        best_of([1.0, 2.0, 3.0], 2)
    cfgs = per_batch(BenchConfig(curve=(1,), batches=(1, 8)), [1, 8])
    assert [(c.batch, c.batches, c.curve) for c in cfgs] == [(1, (), (1,)), (8, (), (1, 8))]

    def sampler(med, its, nfe, px):
        return {"median_ms": med, "iterations": {"median": its}, "nfe": {"median": nfe}, "max_abs_delta_px": px}

    curve = {1: {"median_ms": 2.0}, 8: {"median_ms": 4.0}, 400: {"median_ms": 50.0}}
    result = {"settings": {"batch": 8, "conds": 2, "num_steps": 50}, "batch_cost_curve": {"thread_policy": curve},
              "samplers": {"seq": sampler(200.0, 50, 50, 0.0), "pcm": sampler(120.0, 5, 130.5, 0.4)}}
    times = {"seq": [210.0, 190.0, 200.0, 180.0], "pcm": [100.0, 130.0, 120.0, 110.0]}
    e = batch_rows(result, times, "seq")
    p = e["samplers"]["pcm"]
    assert p["best_ms"] == 105.0 and p["best_vs_reference"] == round(105 / 190, 3)
    assert p["median_vs_reference"] == 0.6 and p["calls"] == 5 and p["nfe_per_chunk"] == 1044.0
    assert e["curve_ms"] == {"1": 2.0, "B": 4.0, "T*B": 50.0} and e["picard_break_even_iterations"] == 4.0
    text = format_batches([e])
    assert "    8 pcm " in text and "B =   8: 2.00 / 4.00 / 50.00 ms" in text

    cli = _bench_script()
    cfg, _ = cli.parse(["--size", "small", "--batch", "1,8,32"])
    assert cfg.batch == 1 and cfg.batches == (1, 8, 32)
    cfg, _ = cli.parse(["--size", "small", "--batch", "4"])
    assert cfg.batch == 4 and cfg.batches == ()  # one size: the single run, as before
    with pytest.raises(SystemExit):
        cli.parse(["--size", "small", "--batch", "1,0"])


def _bench_script():
    return load_script("bench_samplers")
