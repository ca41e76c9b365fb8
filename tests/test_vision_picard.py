"""Picard, TAA and PCM keep their exactness properties on both image UNet families; LoRA on every
attention projection with a per-row scale that survives classifier-free guidance's doubling."""

from __future__ import annotations

import pytest
import torch
from vision_helpers import assert_close, dirs, ldm_dir, sd_dir, with_random_lora  # noqa: F401 (fixtures)

from pcm_policy import paper  # noqa: F401  (registers the feature space of one switch)
from pcm_policy.lora import has_lora
from pcm_policy.sampling import TAA, Switch, sample_pcm, sample_picard, sample_sequential, step_grid
from pcm_policy.vision import ATTENTION_TARGETS, encode_prompts, initial_latents, load_model, model_function

T = 8


def setup(path, lora=False, guidance=7.5):
    m = load_model(path)
    if lora:
        with_random_lora(m)
    x_T = initial_latents(m, [0, 1])
    cond = encode_prompts(m, ["a cat", "a dog"]) if m.conditional else None
    return m, model_function(m, guidance), x_T, cond, step_grid(m.scheduler, T)


@pytest.mark.parametrize("family", ["ldm", "sd"])
def test_lora_on_every_attention_projection(dirs, family):  # noqa: F811
    from peft.tuners.lora import LoraLayer

    m = with_random_lora(load_model(dirs[family]))
    adapted = {n for n, mod in m.unet.named_modules() if isinstance(mod, LoraLayer)}
    wanted = {n for n, _ in m.unet.named_modules() if any(n.endswith("." + t) for t in ATTENTION_TARGETS)}
    assert adapted == wanted and len(adapted) >= 8
    if family == "sd":  # cross-attention (attn2: to_k / to_v read the text embeddings) is adapted too
        assert any(".attn2.to_k" in n for n in adapted) and any(".attn1.to_q" in n for n in adapted)
    assert all(not p.requires_grad for n, p in m.unet.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("family", ["ldm", "sd"])
def test_per_row_lora_scale_equals_separate_calls(dirs, family):  # noqa: F811
    """One call with lora_scale (N,) == N calls with a float each; for sd under CFG (2N UNet rows)."""
    m, fn, _, _, _ = setup(dirs[family], lora=True)
    g = torch.Generator().manual_seed(0)
    n = 3
    x = torch.randn(n, *m.latent_shape, generator=g)
    t = torch.tensor([900, 500, 20])
    cond = encode_prompts(m, ["a cat", "a dog", "a cow"]) if m.conditional else None
    lam = torch.tensor([0.0, 0.5, 1.0])
    together = fn(x, t, cond, lora_scale=lam)
    for i in range(n):
        ci = None if cond is None else {h: {"encoder_hidden_states": c["encoder_hidden_states"][i:i + 1]}
                                        for h, c in cond.items()}
        alone = fn(x[i:i + 1], t[i:i + 1], ci, lora_scale=float(lam[i]))
        assert_close(together[i:i + 1], alone)
    assert (fn(x, t, cond, lora_scale=1.0) - fn(x, t, cond)).abs().max() > 1e-3  # the adapter does something


@pytest.mark.parametrize("family", ["ldm", "sd"])
@pytest.mark.parametrize("window", [None, 3])
def test_picard_tol0_equals_sequential(dirs, family, window):  # noqa: F811
    _, fn, x_T, cond, grid = setup(dirs[family])
    ref, _ = sample_sequential(fn, x_T, cond, grid=grid)
    x, stats = sample_picard(fn, x_T, cond, grid=grid, window=window, tol=0.0)
    assert_close(x, ref)
    assert stats.converged and stats.iterations <= T


@pytest.mark.parametrize("family", ["ldm", "sd"])
@pytest.mark.parametrize("taa", [None, TAA()])
def test_after_k_iterations_the_first_k_positions_are_exact(dirs, family, taa):  # noqa: F811
    _, fn, x_T, cond, grid = setup(dirs[family])
    _, seq = sample_sequential(fn, x_T, cond, grid=grid, return_trajectory=True)
    init = "prior" if taa is not None else None
    x, stats = sample_picard(fn, x_T, cond, grid=grid, tol=0.0, taa=taa, init=init, return_iterates=True)
    assert_close(x, seq.trajectory[-1])
    for k, X in enumerate(stats.iterates):
        assert_close(X[:k + 1], seq.trajectory[:k + 1])


@pytest.mark.parametrize("family", ["ldm", "sd"])
@pytest.mark.parametrize("switch", [Switch(2, 2, "weight"), Switch(1, 3, "weight"), Switch(1, 3, "feature")])
def test_pcm_with_a_random_adapter_ends_on_sequential(dirs, family, switch):  # noqa: F811
    """The adapter changes the path, not the fixed point: tol 0 == sequential base sampling; once the
    schedule is at 0, each base iteration makes one more position exact."""
    m, fn, x_T, cond, grid = setup(dirs[family], lora=True)
    assert has_lora(m.unet)
    _, seq = sample_sequential(fn, x_T, cond, grid=grid, return_trajectory=True)
    x, stats = sample_pcm(fn, x_T, cond, grid=grid, schedule=switch, tol=0.0, return_iterates=True)
    assert_close(x, seq.trajectory[-1])
    assert stats.lambdas[0] == 1.0 and stats.lambdas[-1] == 0.0
    for k, X in enumerate(stats.iterates):
        exact = max(0, k - switch.k_off)  # base (lambda = 0) iterations done after k iterations
        assert_close(X[:exact + 1], seq.trajectory[:exact + 1])
    adapted = stats.iterates[1][1]  # position 1 after one adapted iteration: not the base value
    assert (adapted - seq.trajectory[1]).abs().max() > 1e-4


def test_safeguard_without_clip_sample(sd_dir):  # noqa: F811
    """SD v1.4 has clip_sample false: nothing bounds x0, so even a tight safeguard clamps nothing."""
    _, fn, x_T, cond, grid = setup(sd_dir)
    assert grid.clip is None
    ref, _ = sample_sequential(fn, x_T, cond, grid=grid)
    for window in (None, 3):
        x, stats = sample_picard(fn, x_T, cond, grid=grid, window=window, tol=0.0, safeguard=1.0)
        assert_close(x, ref)
    x, stats = sample_picard(fn, x_T, cond, grid=grid, tol=0.0, safeguard=0.05, taa=TAA())
    assert stats.clamped == 0
    assert_close(x, ref)
