"""SRDS: Parareal over the DDIM grid (Self-Refining Diffusion Samplers, Selvam, Merchant, Ermon, NeurIPS 2024).

Glossary (Parareal, Lions, Maday, Turinici 2001; SRDS sec. 3, its predictor-corrector update):
  T          fine steps: the grid's own DDIM (or DDPM) steps, positions 0..T as in ``ddim.py``.
  S          segments (default round(sqrt(T))); boundaries p_0 = 0 < p_1 < ... < p_S = T at round(n T / S).
  U_n^j      the value at boundary n after Parareal iteration j; U_0^j = x_T. U^j_S is the sample.
  F(U_n)     the fine solver: the grid's steps p_n .. p_{n+1}-1 from U_n (noise term z_i included),
             exactly what sequential sampling does on that segment.
  G(U_n)     the coarse solver: ONE DDIM step from position p_n straight to p_{n+1} (abar(t_{p_n}) ->
             abar at p_{n+1}), from the model output at (U_n, t_{p_n}) -- the same evaluation as the first
             fine step of F(U_n), so G costs no call of its own.
  coarse     U_{n+1}^0 = G(U_n^0): the first sample after S calls (DDIM over the S boundary steps).
  Parareal   U_{n+1}^{j+1} = G(U_n^{j+1}) + F(U_n^j) - G(U_n^j)   (SRDS eq. 5, predictor + correction).
  exactness  U_n^j is the sequential value for n <= j: the sample is exact after S iterations. Where
             U_n^{j+1} is U_n^j (the same tensor: the exact prefix), the correction G - G is zero and
             U_{n+1}^{j+1} = F(U_n^j) is taken as is, so the result is sequential sampling's up to the
             batching of the model's calls.

Schedule (SRDS's pipelined form): a fine solve F(U_n^j) is a job that starts on the call after U_n^j is
known and takes one row per sample in each of the next p_{n+1} - p_n batched calls; every call evaluates
the current point of every running job (segments and iterations in one batch). Each new U_{n+1}^{j+1} is
formed as soon as its three terms exist. With equal segments of M = T / S steps iteration j's sample
arrives after S + j (M - 1) calls, and the exact one (j = S) after T calls: no saving in the worst case,
the gain is that early iterations are already close.

Cost and budget, as ``picard.py``: ``stats.iterations`` counts batched calls (whatever their width),
``stats.nfe`` the rows evaluated per sample. ``max_iters`` = k caps the calls: the sampler returns its
current iterate, the newest U^j_S; before the coarse pass reaches boundary S (k < S) that is the x0 that
DDIM eq. 12 predicts at the last boundary the coarse pass evaluated. ``tol``: stop once a new iterate of the
sample moved by at most tol in Picard's units at position T, ``||U_S^{j+1} - U_S^j||^2 / (d sigma_T^2)
<= tol^2`` for every sample (``picard.tol_scale``), SRDS's own stopping rule on the sample; tol 0 runs to
the exact sample. Samples run in lock step (one schedule for the batch), so a sample's output does not
depend on the others except through that batch-wide stop.
"""

from __future__ import annotations

import math

import torch

from .ddim import Grid, ddim_step, draw_noise, predicted_x0
from .denoiser import Cond, SampleStats, call_model, check_cond, repeat_cond
from .picard import tol_scale

__all__ = ["boundaries", "coarse_grid", "sample_srds"]


def boundaries(T: int, segments: int | None = None) -> list[int]:
    """Segment boundaries ``[p_0 = 0, ..., p_S = T]`` of ``segments`` S (default round(sqrt(T))) near-equal
    segments. Raises ValueError unless 1 <= S <= T."""
    S = max(1, round(math.sqrt(T))) if segments is None else segments
    if not 1 <= S <= T:
        raise ValueError(f"segments must be in 1..T = {T} (None: round(sqrt(T))), got {segments}")
    return [round(n * T / S) for n in range(S + 1)]


def coarse_grid(grid: Grid, bounds: list[int]) -> Grid:
    """The coarse solver's grid: one deterministic DDIM step per segment, t_{p_n} -> position p_{n+1}."""
    start, end = torch.tensor(bounds[:-1]), torch.tensor(bounds[1:]) - 1
    a, a_prev = grid.alpha[start], grid.alpha_prev[end]
    var = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
    return Grid("ddim", grid.timesteps[start], a, a_prev, torch.zeros_like(a), var, grid.prediction_type, grid.clip)


@torch.no_grad()
def sample_srds(model_fn, x_T: torch.Tensor, cond: Cond = None, *, grid: Grid, segments: int | None = None,
                tol: float = 0.1, max_iters: int | None = None, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                return_iterates: bool = False) -> tuple[torch.Tensor, SampleStats]:
    """SRDS (module doc): Parareal over ``grid``'s steps with a one-step DDIM coarse solver, pipelined.

    Args:
        model_fn, x_T, cond, grid, noise, generator: as in ``ddim.sample_sequential``; T = ``len(grid)``.
        segments: S, the Parareal segments (default round(sqrt(T))); 1 <= S <= T.
        tol: stop when the sample's iterate moved by at most tol (module doc); 0: run to the exact sample.
        max_iters: k, the most batched calls (None: no cap); the output is the current iterate.
        return_iterates: keep in ``stats.outputs`` what the sampler would return after 0, 1, ..., K calls.
    Returns:
        ``(x, stats)``: the newest iterate of the sample shaped like ``x_T`` and ``SampleStats`` (iterations
        = batched calls, nfe = rows per sample, residuals = the sample's scaled change per Parareal iteration).
    Raises:
        ValueError: bad segments, tol or max_iters, a mis-shaped condition or noise.
    """
    grid = grid.like(x_T)
    T, B, d = len(grid), x_T.shape[0], x_T[0].numel()
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if max_iters is not None and max_iters < 0:
        raise ValueError(f"max_iters must be >= 0 or None, got {max_iters}")
    check_cond(cond, B)
    bounds = boundaries(T, segments)
    S, coarse = len(bounds) - 1, coarse_grid(grid, bounds)
    noise_terms = draw_noise(grid, x_T, noise, generator)
    scale = d * tol_scale(grid)[T]

    U = {(0, 0): x_T}  # (j, n) -> U_n^j, for j <= n (later versions of boundary n are U_n^n)
    src = {(0, 0): (0, 0)}  # (j, n) -> the job whose G and F serve U_n^j (an earlier one where it is the same)
    G, F = {}, {}  # job -> G(U), F(U)
    jobs = [dict(key=(0, 0), i=0, y=x_T)]  # running fine solves: key (j, n), next fine step i, current point y
    nxt = [0] + [0] * S  # next version to form at each boundary
    out, est, stats = x_T, None, SampleStats(outputs=[x_T] if return_iterates else None)
    rows, done_j, converged = 0, -1, False

    def key(j, n):  # the job serving U_n^j (None while U_n^j is not formed); versions beyond n are U_n^n
        return src.get((min(j, n), n))

    def form(j, n):  # U_n^j from boundary n-1 once its terms exist (module doc), else None
        if j == 0:  # the coarse pass
            return G.get(key(0, n - 1))
        a, b = key(j, n - 1), key(j - 1, n - 1)
        if a is None or b is None:
            return None
        if a == b:  # U_{n-1}^j is U_{n-1}^{j-1}: the correction is exactly zero
            return F.get(b)
        if a in G and b in F and b in G:
            return G[a] + (F[b] - G[b])  # Parareal: G(U^{j}) + F(U^{j-1}) - G(U^{j-1})
        return None

    while jobs and (max_iters is None or stats.iterations < max_iters):
        xs = torch.cat([jb["y"] for jb in jobs])
        idx = torch.cat([torch.full((B,), jb["i"], dtype=torch.long, device=x_T.device) for jb in jobs])
        mo = call_model(model_fn, xs, grid.timesteps[idx], repeat_cond(cond, len(jobs)))
        nx = ddim_step(grid, xs, mo, idx)  # one fine step of every job
        stats.iterations += 1
        rows += len(jobs) * B
        for r, jb in enumerate(list(jobs)):
            sl = slice(r * B, (r + 1) * B)
            (j, n), first = jb["key"], jb["i"] == bounds[jb["key"][1]]
            if first:  # the coarse step shares this evaluation
                cidx = torch.full((B,), n, dtype=torch.long, device=x_T.device)
                G[jb["key"]] = ddim_step(coarse, jb["y"], mo[sl], cidx)
                if j == 0:  # anytime estimate until the coarse pass has reached the end
                    est = predicted_x0(grid, jb["y"], mo[sl], idx[sl])[0]
            jb["y"] = nx[sl] + (noise_terms[jb["i"]] if noise_terms is not None else 0)
            jb["i"] += 1
            if jb["i"] == bounds[n + 1]:
                F[jb["key"]] = jb["y"]
                jobs.remove(jb)
        for n in range(1, S + 1):  # form every boundary value whose terms now exist, in order
            while nxt[n] <= n and (u := form(nxt[n], n)) is not None:
                j = nxt[n]
                U[(j, n)] = u
                same = j > 0 and torch.equal(u, U[(j - 1, n)])
                src[(j, n)] = src[(j - 1, n)] if same else (j, n)
                if not same and n < S:
                    jobs.append(dict(key=(j, n), i=bounds[n], y=u))
                nxt[n] += 1
        if nxt[S] - 1 > done_j:  # a new iterate of the sample
            done_j = nxt[S] - 1
            new = U[(done_j, S)]
            if done_j > 0:
                err = (new - U[(done_j - 1, S)]).flatten(1).pow(2).sum(1) / scale
                stats.residuals.append(err.max().sqrt().item())
                converged = bool((err <= tol**2).all())
            out = new
            converged = converged or done_j == S
        elif done_j < 0 and est is not None:
            out = est
        if return_iterates:
            stats.outputs.append(out)
        if converged:
            break
    stats.converged, stats.nfe = converged, rows / B
    stats.sample_iterations, stats.sample_nfe = [stats.iterations] * B, [stats.nfe] * B
    stats.sample_converged = [stats.converged] * B
    return out.clone(), stats
