"""The window benchmark runs and reports consistent numbers (timings themselves mean nothing here)."""

from __future__ import annotations

import pytest
from vision_helpers import ldm_dir  # noqa: F401 (fixture)

from pcm_policy.sampling import step_grid
from pcm_policy.vision import initial_latents, load_model, model_function
from pcm_policy.vision.bench import bench_window, time_interleaved


def test_bench_window_reports_ratios(ldm_dir):  # noqa: F811
    m = load_model(ldm_dir)
    res = bench_window(model_function(m), initial_latents(m, [0]), None, step_grid(m.scheduler, 6), [2, 16],
                       repeats=1, warmup=0)
    assert set(res["ms"]) == {"sequential", "window=2", "window=6"}  # windows capped at T
    for w, r in res["ratio"].items():
        assert r == pytest.approx(res["ms"][w] / res["ms"]["sequential"])
        assert res["break_even_iterations"][w] == pytest.approx(6 / r)


def test_time_interleaved_needs_a_repeat():
    with pytest.raises(ValueError, match="repeats"):
        time_interleaved({"a": lambda: None}, repeats=0)
