"""Picard iteration in the ParaDiGMS form: sliding window, tolerance, pre-sampled noise.

Glossary (ParaDiGMS, Shih et al. 2023, Alg. 1; PCM supplement eq. 1):
  X^k        the k-th iterate, a trajectory ``(T+1, B, ...)``. X^0 from ``init``:
             "noise"  x_T at every position (ParaDiGMS);
             "prior"  x_j = sqrt((1 - abar_j) / (1 - abar_0)) x_T: the DDIM trajectory of a model that
                      predicts x0 = 0 and eps = x_T, so low-noise positions start near the data's centre;
             x0 guess (shaped like x_T): x_j = sqrt(abar_j) x0 + sqrt((1 - abar_j) / (1 - abar_0)) x_T
                      (warm start from a predicted action sequence, e.g. the previous chunk's, shifted);
             trajectory ``(T+1, *x_T.shape)``: used as it is. Position 0 is always x_T, and the
             fixed point (the output at convergence) is the same for every choice.
  d_i(x)     drift F_i(x) - x of solver step i (``ddim.py``), noise term z_i included.
  window p   positions [b, b+p) whose drifts are evaluated in ONE batched call per iteration.
  b          the window's anchor: X[0..b] are final, X[b] feeds the cumulative sum.
  tau        tolerance: position j has converged when, for every sample,
             ||x_j^{k+1} - x_j^k||^2 / (d sigma_j^2) <= tau^2.
  sigma_j^2  DDPM posterior variance of step j (the step leaving position j; X[T] uses the last
             step's), a scale only. Zero variances (t = 0 steps) are floored at the smallest positive
             one so the rule stays finite.
  forms      "paradigms": x_j^{k+1} = x_b + sum_{i=b}^{j-1} d_i(x_i^k);
             "chain":     x_j^{k+1} = F_{j-1}(x_{j-1}^k)  (supplement eq. 1, Phi). Same fixed point.

The window slides to the first position that has not converged (its new value was computed from a
converged prefix, so it is exact); it always advances by >= 1, so at most T iterations are needed.
Triangular Anderson acceleration (``taa=TAA(memory=m, ...)``, ParaTAA, Tang et al. 2024) with mixing beta
(Walker & Ni 2011): positions after the new anchor take x_j + beta R_j - sum_n gamma_j[n] (dX_j[n] + beta dR_j[n])
instead of the Picard value x_j + R_j, where R = Picard value - x, dX and dR are the differences of the last
m iterates and residuals, and gamma_j solves the ridge least squares
min sum_{i <= j} abar_i^(2w) ||R_i - dR_i gamma||^2 over the window positions i <= j (the ones x_j depends
on: "triangular"). ``TAA.weight=w`` scales position i's residual by its signal fraction abar_i^w, so
the low-noise end, which becomes the output, is fitted more closely than the noisy start;
``TAA.mixing=beta`` < 1 damps every step (the first, which has no differences yet, included). w = 0,
beta = 1 is ParaTAA's update; the defaults (w = 1, beta = 0.8, m = 3) were chosen on held-out PushT
training-seed conditions (``docs/pusht.md``, ``results/taa_tuning.json``). The ridge term is
``TAA.reg`` times the mean diagonal of the Gram matrix (scale-free). The anchor and the prefix keep
their Picard values and convergence is judged on the Picard residual, so the exactness properties and
the fixed point stay.
Iterate safeguard (``safeguard=kappa``): positions after the new anchor are only guesses, so they
may be clamped elementwise to |x_j| <= sqrt(abar_j) c + sqrt(1 - abar_j) kappa max|x_T| without changing
the fixed point; the anchor and the prefix are never touched. c bounds x0: the scheduler's clip range
with ``clip_sample``, else kappa max|x_T| (unit-scale data such as SD's scaled latents; a loose bound
only makes the safeguard act less).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .ddim import Grid, ddim_step, draw_noise
from .denoiser import Cond, SampleStats, call_model, check_cond, repeat_cond

__all__ = ["INITS", "TAA", "check_args", "initial_trajectory", "picard_loop", "picard_update", "sample_picard", "slide",
           "tol_scale"]

INITS = ("noise", "prior")


@dataclass(frozen=True)
class TAA:
    """Triangular Anderson acceleration settings (module doc): ``memory`` m >= 2 iterates, residual
    ``weight`` w >= 0 (abar^w), ``mixing`` beta in (0, 1], relative ridge ``reg``. ParaTAA's own update
    is ``TAA(memory=m, weight=0, mixing=1)``; the defaults are the tuned ones (``scripts/tune_taa.py``)."""

    memory: int = 3
    weight: float = 1.0
    mixing: float = 0.8
    reg: float = 1e-6

    def __post_init__(self):
        if not isinstance(self.memory, int) or self.memory < 2:
            raise ValueError(f"TAA memory must be an int >= 2 (use taa=None for plain Picard), got {self.memory!r}")
        if self.weight < 0 or self.reg < 0:
            raise ValueError(f"TAA weight and reg must be >= 0, got {self.weight} and {self.reg}")
        if not 0 < self.mixing <= 1:
            raise ValueError(f"TAA mixing (beta) must be in (0, 1], got {self.mixing}")

# evaluate(x_rows, t_rows, cond_rows, k) -> (model output, model calls per row)
Evaluate = Callable[[torch.Tensor, torch.Tensor, Cond, int], tuple[torch.Tensor, int]]


def picard_update(grid: Grid, xs: torch.Tensor, out: torch.Tensor, b: int, anchor: torch.Tensor,
                  noise_terms: torch.Tensor | None = None, form: str = "paradigms") -> torch.Tensor:
    """New values of positions b+1..b+L from the window ``xs = X[b:b+L]`` and its model outputs.

    Differentiable (PCT trains through it); ``out`` is ``(L*B, ...)``, rows position-major.
    """
    L, B = xs.shape[:2]
    idx = torch.arange(b, b + L, device=xs.device).repeat_interleave(B)
    fx = ddim_step(grid, xs.flatten(0, 1), out, idx).view_as(xs)  # F_i(x_i)
    if noise_terms is not None:
        fx = fx + noise_terms[b:b + L]
    if form == "chain":
        return fx  # chain: x_{j+1} = F_j(x_j)
    return anchor + torch.cumsum(fx - xs, dim=0)  # Picard: x_j = x_b + cumsum of drifts


def check_args(x_T, window, tol, max_iters, form, init, T):
    if x_T.ndim < 1:
        raise ValueError("x_T must be batched: shape (B, ...)")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 (or None for the full T), got {window}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if max_iters is not None and max_iters < 0:
        raise ValueError(f"max_iters must be >= 0 or None, got {max_iters}")
    if form not in ("paradigms", "chain"):
        raise ValueError(f"form must be 'paradigms' or 'chain', got {form!r}")
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, an x0 guess or a trajectory, got {init!r}")
    elif init is not None and init.shape not in ((T + 1, *x_T.shape), x_T.shape):
        raise ValueError(f"init must be an x0 guess shaped like x_T {tuple(x_T.shape)} or a trajectory of shape "
                         f"(num_steps+1, *x_T.shape) = {(T + 1, *x_T.shape)}, got {tuple(init.shape)}")


def _is_noise(init) -> bool:
    return init is None or isinstance(init, str) and init == "noise"


def initial_trajectory(grid: Grid, x_T: torch.Tensor, init: str | torch.Tensor | None = None) -> torch.Tensor:
    """X^0 ``(T+1, *x_T.shape)`` for ``init`` = None/"noise", "prior", an x0 guess or a trajectory (see above)."""
    T = len(grid)
    if _is_noise(init):
        X = x_T.expand(T + 1, *x_T.shape).clone()
    elif isinstance(init, str) or init.shape == x_T.shape:  # "prior", or prior around an x0 guess
        abar = torch.cat([grid.alpha, grid.alpha_prev[-1:]]).to(x_T).view(-1, *([1] * x_T.ndim))
        X = ((1 - abar) / (1 - abar[0])).sqrt() * x_T
        if not isinstance(init, str):
            X = X + abar.sqrt() * init.to(x_T)
    else:
        X = init.to(x_T).clone()
    X[0] = x_T
    return X


def tol_scale(grid: Grid) -> torch.Tensor:
    """d-free part of the tolerance denominator for positions 0..T: sigma_j^2, zeros floored."""
    var = torch.cat([grid.var, grid.var[-1:]])  # position j -> step min(j, T-1)
    pos = var[var > 0]
    return var.clamp(min=pos.min().item() if len(pos) else 1.0)


def _bound(grid: Grid, x_T: torch.Tensor, kappa: float) -> torch.Tensor:
    """Safeguard bound for positions 0..T, shape (T+1, B, 1, ...)."""
    if kappa <= 0:
        raise ValueError(f"safeguard (kappa) must be > 0 or None, got {kappa}")
    abar = torch.cat([grid.alpha, grid.alpha_prev[-1:]]).view(-1, 1, *([1] * (x_T.ndim - 1)))
    m = kappa * x_T.abs().flatten(1).amax(1).view(1, -1, *([1] * (x_T.ndim - 1)))
    c = grid.clip if grid.clip is not None else m  # a bound on x0
    return abar**0.5 * c + (1 - abar) ** 0.5 * m


def _anderson(hist: list, count: torch.Tensor, b: int, e: int, reg: float, weight: torch.Tensor,
              beta: float = 1.0) -> torch.Tensor | None:
    """TAA correction (1 - beta) R_j + sum_n gamma_j[n] (dX_j[n] + beta dR_j[n]) for the window positions
    b+1..e, to subtract from their Picard values.

    ``hist``: (X, R) full trajectories of the last iterations, oldest first (R is zero outside the
    window it was computed on); ``count[j]``: how many of them hold a residual of position j, so
    position j uses its last count[j] - 1 differences. ``weight``: (T+1,) residual scale per position.
    None when there is nothing to correct (no difference yet and beta = 1)."""
    n = len(hist) - 1
    R_last = hist[-1][1][b + 1:e + 1]
    if n < 1:
        return None if beta == 1.0 else (1 - beta) * R_last
    X = torch.stack([x[b + 1:e + 1] for x, _ in hist]).flatten(3).double()  # (n+1, L, B, d)
    R = torch.stack([r[b + 1:e + 1] for _, r in hist]).flatten(3).double()
    dX, dR = X[1:] - X[:-1], R[1:] - R[:-1]  # (n, L, B, d)
    valid = torch.arange(n, device=R.device)[None, :] >= n - (count[b + 1:e + 1, None] - 1)  # (L, n)
    m = valid[:, None, :].to(R.dtype)  # (L, 1, n): drop the differences position j does not have
    w = weight[b + 1:e + 1].view(-1, 1, 1).double()
    gram = torch.einsum("pibd,qibd->ibpq", dR * w, dR * w).cumsum(0)  # (L, B, n, n): summed over i <= j
    gram = gram * m[..., :, None] * m[..., None, :]
    rhs = torch.einsum("pibd,ibd->ibp", dR * w, R[-1] * w).cumsum(0) * m  # (L, B, n)
    ridge = reg * gram.diagonal(dim1=-2, dim2=-1).mean(-1) + torch.finfo(R.dtype).tiny  # (L, B)
    eye = torch.eye(n, dtype=R.dtype, device=R.device)
    gamma = torch.linalg.solve(gram + ridge[..., None, None] * eye, rhs.unsqueeze(-1))
    corr = torch.einsum("ibp,pibd->ibd", gamma.squeeze(-1), dX + beta * dR)
    return corr.view_as(R_last).to(R_last.dtype) + (1 - beta) * R_last


def slide(err: torch.Tensor, tol: float) -> int:
    """How far the anchor moves: 1 + the number of leading window positions whose scaled change
    ``err`` (L, B) is within ``tol`` for every sample (NaN/inf count as not converged), at most L."""
    bad = (~(err <= tol**2)).any(dim=1).tolist() + [True]
    return min(bad.index(True) + 1, err.shape[0])


def picard_loop(evaluate: Evaluate, x_T, cond, grid: Grid, *, window, tol, max_iters=None, noise_terms=None,
                init=None, form="paradigms", return_iterates=False, return_trajectory=False,
                safeguard=None, may_slide: Callable[[int], bool] = lambda k: True, taa: TAA | None = None):
    """The windowed Picard loop shared by ``sample_picard`` and ``sample_pcm``.

    ``evaluate(x_rows, t_rows, cond_rows, k) -> (model output, calls per row)`` is iteration k's model
    call. ``may_slide(k)`` says whether iteration k (0-based) may move the anchor (PCM: only base-model
    iterations may, so the fixed point stays the base model's). ``taa``: triangular Anderson
    acceleration (module doc); None: plain Picard. Differentiable when grad is enabled (PCT unrolls it).
    """
    if taa is not None and not isinstance(taa, TAA):
        raise ValueError(f"taa must be a TAA(...) or None, got {taa!r}")
    T, B, d = len(grid), x_T.shape[0], x_T[0].numel()
    check_args(x_T, window, tol, max_iters, form, init, T)
    check_cond(cond, B)
    p = T if window is None else min(window, T)
    X = initial_trajectory(grid, x_T, init)
    copy_exposed = _is_noise(init)
    scale = d * tol_scale(grid)
    bound = None if safeguard is None else _bound(grid, x_T, safeguard)
    m = taa.memory if taa is not None else 0
    aweight = torch.cat([grid.alpha, grid.alpha_prev[-1:]]).to(x_T.device) ** taa.weight if taa is not None else None
    stats = SampleStats(iterates=[X.clone()] if return_iterates else None)
    hist, count = [], torch.zeros(T + 1, dtype=torch.long, device=x_T.device)  # Anderson memory
    b, e = 0, p
    while b < T:
        if max_iters is not None and stats.iterations >= max_iters:
            stats.converged = False
            break
        L, k = e - b, stats.iterations
        xs = X[b:e]
        t = grid.timesteps[b:e].repeat_interleave(B)
        out, calls = evaluate(xs.flatten(0, 1), t, repeat_cond(cond, L), k)
        new = picard_update(grid, xs, out, b, X[b], noise_terms, form)
        err = (new - X[b + 1:e + 1]).flatten(2).pow(2).sum(-1) / scale[b + 1:e + 1, None]  # (L, B)
        if torch.is_grad_enabled():  # differentiable (PCT unrolls it): leave the tensors autograd saved intact
            X = X.clone()
        if taa is not None:
            R = torch.zeros_like(X)
            R[b + 1:e + 1] = new - X[b + 1:e + 1]
            count[b + 1:e + 1] = (count[b + 1:e + 1] + 1).clamp(max=m)
            hist = (hist + [(X.clone(), R)])[-m:]
        X[b + 1:e + 1] = new
        stats.iterations += 1
        stats.nfe += L * calls
        stats.residuals.append(err.max().sqrt().item())
        new_b = b
        if may_slide(k):  # slide to the first position that has not converged (>= 1 step)
            new_b = b + slide(err, tol)
        if taa is not None and new_b < e:  # TAA on the positions after the new anchor only
            corr = _anderson(hist, count, b, e, taa.reg, aweight, taa.mixing)
            if corr is not None:
                X[new_b + 1:e + 1] -= corr[new_b - b:]
        new_e = min(new_b + p, T)
        if copy_exposed and new_e > e:
            X[e + 1:new_e + 1] = X[e]  # newly exposed positions start from the last window value
        if bound is not None and new_e > new_b:  # safeguard: positions after the anchor only
            lim = bound[new_b + 1:new_e + 1]
            seg = X[new_b + 1:new_e + 1].clone()
            clamped = torch.maximum(torch.minimum(seg, lim), -lim)
            stats.clamped += int((clamped != seg).flatten(1).any(1).sum())
            X[new_b + 1:new_e + 1] = clamped
        b, e = new_b, new_e
        if return_iterates:
            stats.iterates.append(X.clone())
    if return_trajectory:
        stats.trajectory = X
    return X[T].clone(), stats


@torch.no_grad()
def sample_picard(model_fn, x_T: torch.Tensor, cond: Cond = None, *, grid: Grid, window: int | None = None,
                  tol: float = 0.1, max_iters: int | None = None, noise: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, init: str | torch.Tensor | None = None,
                  form: str = "paradigms", safeguard: float | None = None, taa: TAA | None = None,
                  return_iterates: bool = False, return_trajectory: bool = False) -> tuple[torch.Tensor, SampleStats]:
    """Parallel sampling by windowed Picard iteration (ParaDiGMS Alg. 1); converges to ``sample_sequential``'s
    output on the same grid and noise.

    Args:
        model_fn, x_T, cond, grid, noise, generator: as in ``sample_sequential``; T = ``len(grid)``;
            ``generator`` may be one per row of ``x_T`` (``ddim.draw_noise``).
        window: p positions per batched call (default: all T).
        tol: tau of the tolerance rule (module doc); 0 runs until the window has slid to T.
        max_iters: stop after this many iterations (``stats.converged`` False if not done).
        taa: triangular Anderson acceleration (``TAA``); None: plain Picard updates.
        safeguard: kappa of the iterate safeguard (module doc); None: off.
        init: X^0: "noise" (default), "prior", an x0 guess shaped like x_T, or a trajectory
            ``(T+1, *x_T.shape)`` (module doc); position 0 is always x_T. Except with "noise" (where they
            start from the last window value) later positions are kept as they are when the window
            exposes them.
        form: "paradigms" (cumulative sum) or "chain" (supplement eq. 1); same fixed point.
        return_iterates, return_trajectory: keep every iterate / the final trajectory in ``stats``.
    Returns:
        ``(x, stats)``: X[T] shaped like ``x_T`` and ``SampleStats``.
    Raises:
        ValueError: bad window, tol, max_iters, form, init, taa or safeguard, or a mis-shaped condition.
    """
    grid = grid.like(x_T)

    def evaluate(x, t, c, k):
        return call_model(model_fn, x, t, c), 1

    return picard_loop(evaluate, x_T, cond, grid, window=window, tol=tol, max_iters=max_iters,
                       noise_terms=draw_noise(grid, x_T, noise, generator), init=init, form=form,
                       return_iterates=return_iterates, return_trajectory=return_trajectory,
                       safeguard=safeguard, taa=taa)
