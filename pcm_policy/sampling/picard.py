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
  window p   positions [b, b+p) of a sample whose drifts are evaluated; ONE batched call per iteration
             evaluates the windows of all samples still running.
  b          a sample's anchor: its X[0..b] are final, X[b] feeds its cumulative sum.
  tau        tolerance: position j of a sample has converged when ||x_j^{k+1} - x_j^k||^2 / (d sigma_j^2) <= tau^2.
  sigma_j^2  DDPM posterior variance of step j (the step leaving position j; X[T] uses the last
             step's), a scale only. Zero variances (t = 0 steps) are floored at the smallest positive
             one so the rule stays finite.
  update     Picard's update rule, x_j^{k+1} = x_b + sum_{i=b}^{j-1} d_i(x_i^k) (ParaDiGMS, ``paradigms_update``);
             a rule with the same fixed point may be passed in (``update=``; the PCM paper's chain form,
             supplement eq. 1, is ``pcm_policy.paper.chain_update``), and ``FORMS`` names them for ``SamplerSpec.form``.

Each sample's window slides to its first position that has not converged (its new value was computed
from a converged prefix, so it is exact); it always advances by >= 1, so at most T iterations are needed.
Windows are per sample: a sample whose anchor reaches T has converged and leaves the batched call (its
rows are no longer evaluated, its trajectory no longer changes) while the others go on, so the batch
costs its slowest sample's iterations but each sample's output, TAA history and safeguard are its own:
a sample's result does not depend on the other samples of the batch (up to the model's own batching).
Time budget (``budget_s``): the clock starts when the loop is called and is read between iterations;
the first iteration always runs, and no further one starts once the budget is spent, so the sampler
returns X[T] of its current iterate (for the samples still running; a budget of 0 gives exactly one
iteration) and may overrun by up to one iteration's time. ``stats.out_of_budget`` says so.
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
Anytime estimate (``jump=Jump(positions, lambdas)``, PCM on PushT and images, ``docs/pusht.md``): a short
chain of x0 predictions rides on the same batched calls, one extra row per sample each: call 1 evaluates
x_T at position ``positions[0]`` (0, or a later one: ``Jump``) and predicts x0 (with PCM's adapter,
lambda = 1: a consistency-style jump to the fixed point);
call n + 1 moves that estimate along its own DDIM path (x0 and the implied eps) to grid position
``positions[n]`` and predicts x0 there. While a sample has run fewer than ``Jump.until`` = ``len(positions)
+ 1 + hold`` iterations and has not converged, the sampler returns the chain's latest x0 instead of X[T], whose early
iterates are poor guesses (triangular: X[j] is exact after j iterations only); from then on, X[T]. The
chain never touches the trajectory, so the fixed point and exactness are Picard's. With ``max_iters`` below
``len(positions) + 1`` the output is the jump's whatever Picard does, so only the jump's rows are evaluated.
Jump restart (``Jump(..., restart=(n,), restart_from=m)``, issue 23): after call n + 1 the guesses after grid
position max(anchor, m) are replaced by the DDIM path through that position's current value with x0 fixed at the
chain's latest estimate (``restart_path``), and TAA's memory starts afresh. Picard's own first iterate is closer at
the noisy positions, the jump's estimate at the clean end, so the path starts part-way (m = 25 of 50 on PushT,
chosen on training seeds). Only guesses change: the fixed point and tol-0 exactness stay (tested).
Iterate safeguard (``safeguard=kappa``): positions after the new anchor are only guesses, so they
may be clamped elementwise to |x_j| <= sqrt(abar_j) c + sqrt(1 - abar_j) kappa max|x_T| without changing
the fixed point; the anchor and the prefix are never touched. c bounds x0: the scheduler's clip range
with ``clip_sample``. Without ``clip_sample`` nothing bounds x0, and the safeguard does nothing (an earlier
c = kappa max|x_T| was not a bound: guided sd_mnist samples reach |x0| = 1.3 max|x_T|, and clamping
their guesses held Picard + TAA at 0.094 latent RMSE from k = 10 to 20, against 2.5e-5 unclamped).
Divergence: an unconverged iterate carried forward (a warm start from an earlier, unconverged chunk, a small
``max_iters`` at ``tol`` 0) can grow without bound. A sample whose window turns non-finite leaves the batched call
at once and is re-solved from a cold first iterate (``picard_loop``, ``stats.cold_restarts``), so finite inputs
never give a non-finite output; a sample that turns non-finite from the cold "noise" iterate means the model
returned non-finite values for finite inputs (ValueError). Non-finite settings (tol, safeguard, budget_s, TAA)
and non-finite x_T or init are refused (ValueError naming the setting).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .ddim import Grid, ddim_step, draw_noise, predicted_x0
from .denoiser import Cond, SampleStats, call_model, check_cond, index_cond

__all__ = ["FORMS", "INITS", "TAA", "Jump", "Update", "check_args", "initial_trajectory", "paradigms_update",
           "picard_loop", "picard_update", "restart_path", "sample_picard", "slide", "tol_scale"]

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
        if not (math.isfinite(self.weight) and math.isfinite(self.reg) and self.weight >= 0 and self.reg >= 0):
            raise ValueError(f"TAA weight and reg must be finite numbers >= 0, got {self.weight} and {self.reg}")
        if not 0 < self.mixing <= 1:
            raise ValueError(f"TAA mixing (beta) must be in (0, 1], got {self.mixing}")

@dataclass(frozen=True)
class Jump:
    """The anytime estimate riding on Picard's calls (module doc): call n evaluates one row per sample at grid
    position ``positions[n]`` with lora scale ``lambdas[n]`` (1: the adapter, 0: the base model), and the
    sampler returns its x0 until ``len(positions) + 1 + hold`` iterations have run (``hold``: iterations
    without a new estimate in which the last one is still closer than Picard's X[T]). Call 1 evaluates x_T
    itself at ``positions[0]``: 0 is its own noise level; a later position reads x_T as a sample there, which a trained
    jump may use (an eps-model's x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) amplifies eps errors by
    1 / sqrt(abar): 70x at position 0 of the ldm_mnist grid, 4x at position 20). ``restart`` (calls, 0-based) and
    ``restart_from`` (a grid position): restart Picard's guesses from the estimate after those calls (module doc,
    "Jump restart"); empty by default (the shipped adapters do not restart). Raises ValueError for positions that do
    not increase, a lambda outside [0, 1], hold < 0, restart calls outside 0..len(positions)-1 or restart_from < 0."""

    positions: tuple[int, ...] = (0,)
    lambdas: tuple[float, ...] = (1.0,)
    hold: int = 0  # iterations after its last call that the chain's last estimate stays the output
    restart: tuple[int, ...] = ()  # calls (0-based) after which Picard restarts from the estimate (``restart_path``)
    restart_from: int = 0  # the restarted path goes through X[max(anchor, restart_from)]; earlier guesses are kept

    def __post_init__(self):
        pos, lam = tuple(int(p) for p in self.positions), tuple(float(v) for v in self.lambdas)
        object.__setattr__(self, "positions", pos)
        object.__setattr__(self, "lambdas", lam)
        object.__setattr__(self, "hold", int(self.hold))
        object.__setattr__(self, "restart", tuple(int(r) for r in self.restart))
        object.__setattr__(self, "restart_from", int(self.restart_from))
        if self.hold < 0:
            raise ValueError(f"Jump hold must be >= 0, got {self.hold}")
        if any(not 0 <= r < len(pos) for r in self.restart) or list(self.restart) != sorted(set(self.restart)):
            raise ValueError(f"Jump restart must list increasing calls in 0..{len(pos) - 1} (one per position), "
                             f"got {self.restart}")
        if self.restart_from < 0:
            raise ValueError(f"Jump restart_from must be a grid position >= 0, got {self.restart_from}")
        if not pos or pos[0] < 0 or any(b <= a for a, b in zip(pos, pos[1:], strict=False)):
            raise ValueError(f"Jump positions must be >= 0 and increase, got {pos}")
        if len(lam) != len(pos) or any(not 0 <= v <= 1 for v in lam):
            raise ValueError(f"Jump needs one lambda in [0, 1] per position, got {lam} for {pos}")

    def rescaled(self, T_from: int, T_to: int) -> Jump:
        """The same jump on a T_to-step grid: positions scaled by T_to / T_from (rounded, kept increasing and
        below T_to; steps that no longer fit are dropped)."""
        pos, lam = [], []
        for p, v in zip(self.positions, self.lambdas, strict=True):
            q = max(round(p * T_to / T_from), pos[-1] + 1 if pos else 0)
            if q < T_to:
                pos.append(q)
                lam.append(v)
        return dataclasses.replace(self, positions=tuple(pos), lambdas=tuple(lam),
                                   restart=tuple(r for r in self.restart if r < len(pos)),
                                   restart_from=round(self.restart_from * T_to / T_from))

    @property
    def until(self) -> int:
        """Iterations from which the output is Picard's X[T]."""
        return len(self.positions) + 1 + self.hold


# update(X, b, jj, ss, fx) -> new values of positions 1..T, (T, B, ...): Picard's update from the trajectory X
# (T+1, B, ...), the anchors b (B,) and F_j(x_j) ``fx`` of the window rows (jj: positions, ss: samples; position-major,
# noise terms included); only the window rows of the result are read (positions jj + 1 of samples ss)
Update = Callable[..., torch.Tensor]


def paradigms_update(X: torch.Tensor, b: torch.Tensor, jj: torch.Tensor, ss: torch.Tensor,
                     fx: torch.Tensor) -> torch.Tensor:
    """``Update`` of ParaDiGMS (Alg. 1): x_j = x_b + sum_{i=b}^{j-1} (F_i(x_i) - x_i) per sample."""
    cols = torch.arange(X.shape[1], device=X.device)
    return X[b, cols] + torch.zeros_like(X[1:]).index_put((jj, ss), fx - X[jj, ss]).cumsum(0)  # zero before b


# Picard's update rules by name (``SamplerSpec.form``): the core's own; ``pcm_policy.paper`` adds its "chain"
FORMS: dict[str, Update] = {"paradigms": paradigms_update}


def restart_path(grid: Grid, X: torch.Tensor, x0: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Positions 1..T ``(T, B, ...)`` of the deterministic DDIM path through each sample's X[b] (b: (B,) positions)
    with x0 fixed at the estimate ``x0`` (B, ...): x_j = sqrt(abar_j) x0 + sqrt(1 - abar_j) eps, eps = (X[b] -
    sqrt(abar_b) x0) / sqrt(1 - abar_b) (DDIM eq. 12 with a model that predicts this x0 and eps everywhere; b = 0
    goes through x_T, b = j keeps x_j). Only positions after the anchor take it (``Jump.restart``), so the fixed
    point is unchanged."""
    abar = torch.cat([grid.alpha, grid.alpha_prev[-1:]]).to(X)  # (T+1,) position j's abar
    view = (-1,) + (1,) * (X.ndim - 2)  # per sample
    cols = torch.arange(X.shape[1], device=X.device)
    ab = abar[b].view(view)
    eps = (X[b, cols] - ab.sqrt() * x0) / (1 - ab).sqrt()
    a = abar[1:].view(-1, *([1] * (X.ndim - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


# evaluate(x_rows, t_rows, cond_rows, k, lam_rows) -> (model output, model calls per row); lam_rows: None, or the
# lora scale of the LAST len(lam_rows) rows (the jump's), the others take iteration k's own
Evaluate = Callable[..., tuple[torch.Tensor, int]]


def picard_update(grid: Grid, xs: torch.Tensor, out: torch.Tensor, b: int, anchor: torch.Tensor,
                  noise_terms: torch.Tensor | None = None) -> torch.Tensor:
    """New values of positions b+1..b+L from the window ``xs = X[b:b+L]`` and its model outputs (ParaDiGMS).

    Differentiable (PCT trains through it); ``out`` is ``(L*B, ...)``, rows position-major.
    """
    L, B = xs.shape[:2]
    idx = torch.arange(b, b + L, device=xs.device).repeat_interleave(B)
    fx = ddim_step(grid, xs.flatten(0, 1), out, idx).view_as(xs)  # F_i(x_i)
    if noise_terms is not None:
        fx = fx + noise_terms[b:b + L]
    return anchor + torch.cumsum(fx - xs, dim=0)  # Picard: x_j = x_b + cumsum of drifts


def check_args(x_T, window, tol, max_iters, init, T):
    if x_T.ndim < 1:
        raise ValueError("x_T must be batched: shape (B, ...)")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 (or None for the full T), got {window}")
    if not (math.isfinite(float(tol)) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0 (0: run until converged exactly), got {tol!r}")
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError("x_T holds non-finite values (NaN or inf); a sampler needs finite initial noise")
    if isinstance(init, torch.Tensor) and not bool(torch.isfinite(init).all()):
        raise ValueError("init (a first iterate or warm start) holds non-finite values; pass a finite one or None")
    if max_iters is not None and max_iters < 0:
        raise ValueError(f"max_iters must be >= 0 or None, got {max_iters}")
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


def _bound(grid: Grid, x_T: torch.Tensor, kappa: float) -> torch.Tensor | None:
    """Safeguard bound for positions 0..T, shape (T+1, B, 1, ...); None without ``clip_sample`` (no x0 bound)."""
    if not (math.isfinite(kappa) and kappa > 0):
        raise ValueError(f"safeguard (kappa) must be a finite number > 0 or None, got {kappa}")
    if grid.clip is None:
        return None
    abar = torch.cat([grid.alpha, grid.alpha_prev[-1:]]).view(-1, 1, *([1] * (x_T.ndim - 1)))
    m = kappa * x_T.abs().flatten(1).amax(1).view(1, -1, *([1] * (x_T.ndim - 1)))
    return abar**0.5 * grid.clip + (1 - abar) ** 0.5 * m


def _anderson(hist: list, count: torch.Tensor, win: torch.Tensor, reg: float, weight: torch.Tensor,
              beta: float = 1.0) -> torch.Tensor | None:
    """TAA correction (1 - beta) R_j + sum_n gamma_j[n] (dX_j[n] + beta dR_j[n]) of positions 1..T, (T, B, ...),
    to subtract from their Picard values; meaningful on ``win`` (T, B): position j+1 is in sample b's window.

    ``hist``: (X, R) full trajectories of the last iterations, oldest first (R is zero outside the
    window it was computed on); ``count[j, b]``: how many of them hold a residual of position j of sample
    b, which uses its last count - 1 differences. ``weight``: (T+1,) residual scale per position; a
    position's least squares sums over its sample's window positions i <= j. None when there is nothing
    to correct (no difference yet and beta = 1)."""
    n = len(hist) - 1
    R_last = hist[-1][1][1:]
    if n < 1:
        return None if beta == 1.0 else (1 - beta) * R_last
    X = torch.stack([x[1:] for x, _ in hist]).flatten(3).double()  # (n+1, T, B, d)
    R = torch.stack([r[1:] for _, r in hist]).flatten(3).double()
    dX, dR = X[1:] - X[:-1], R[1:] - R[:-1]  # (n, T, B, d)
    valid = torch.arange(n, device=R.device) >= n - (count[1:, :, None] - 1)  # (T, B, n)
    m = valid.to(R.dtype)  # drop the differences position j does not have
    w = (weight[1:, None] * win).unsqueeze(-1).double()  # (T, B, 1): zero outside the sample's window
    gram = torch.einsum("pibd,qibd->ibpq", dR * w, dR * w).cumsum(0)  # (T, B, n, n): summed over i <= j
    gram = gram * m[..., :, None] * m[..., None, :]
    rhs = torch.einsum("pibd,ibd->ibp", dR * w, R[-1] * w).cumsum(0) * m  # (T, B, n)
    ridge = reg * gram.diagonal(dim1=-2, dim2=-1).mean(-1) + torch.finfo(R.dtype).tiny  # (T, B)
    eye = torch.eye(n, dtype=R.dtype, device=R.device)
    gamma = torch.linalg.solve(gram + ridge[..., None, None] * eye, rhs.unsqueeze(-1))
    corr = torch.einsum("ibp,pibd->ibd", gamma.squeeze(-1), dX + beta * dR)
    return corr.view_as(R_last).to(R_last.dtype) + (1 - beta) * R_last


def slide(err: torch.Tensor, tol: float) -> int:
    """How far a batch-wide anchor moves (``newton.py``): 1 + the number of leading window positions whose
    scaled change ``err`` (L, B) is within ``tol`` for every sample (NaN/inf count as not converged), at most L."""
    bad = (~(err <= tol**2)).any(dim=1).tolist() + [True]
    return min(bad.index(True) + 1, err.shape[0])


def picard_loop(evaluate: Evaluate, x_T, cond, grid: Grid, *, window, tol, max_iters=None, noise_terms=None,
                init=None, update=paradigms_update, return_iterates=False, return_trajectory=False,
                safeguard=None, may_slide: Callable[[int], bool] = lambda k: True, taa: TAA | None = None,
                budget_s: float | None = None, jump: Jump | None = None):
    """The windowed Picard loop shared by ``sample_picard`` and ``sample_pcm``, one window per sample.

    ``evaluate(x_rows, t_rows, cond_rows, k) -> (model output, calls per row)`` is the k-th batched call
    (0-based); its rows are the window positions of the samples still running, position-major.
    ``may_slide(k)`` says whether call k may move the anchors (PCM: only base-model iterations may, so
    the fixed point stays the base model's). ``k`` needs no per-sample copy: a sample takes part in
    every call from the first until it leaves, so k is its own iteration count too. ``taa``: triangular
    Anderson acceleration (module doc); None: plain Picard. ``budget_s``: seconds from the call after
    which no further iteration starts (module doc). ``jump``: the anytime estimate (``Jump``, module doc).
    ``update``: Picard's update rule (``Update``; default ParaDiGMS').
    Differentiable when grad is enabled (the samplers run it under ``no_grad``).

    Divergence (module doc): a sample whose iterate turns non-finite leaves the batched call at once and is
    re-solved from a cold first iterate (an x0 guess: "prior"; "prior" or a trajectory: "noise"), counted in
    ``stats.cold_restarts``; finite inputs never give a non-finite output. Raises ValueError when a sample that
    started cold turns non-finite (the model returned non-finite values for finite inputs).
    """
    kw = dict(window=window, tol=tol, max_iters=max_iters, update=update, return_iterates=return_iterates,
              return_trajectory=return_trajectory, safeguard=safeguard, may_slide=may_slide, taa=taa, jump=jump)
    t0 = time.perf_counter()
    x, stats, diverged = _picard_pass(evaluate, x_T, cond, grid, noise_terms=noise_terms, init=init, budget_s=budget_s,
                                      **kw)
    if not bool(diverged.any()):
        return x, stats
    rows = diverged.nonzero(as_tuple=True)[0]
    cold = _colder(init, x_T)
    if cold is None:
        raise ValueError(f"the model returned non-finite values for {len(rows)} sample(s) from finite inputs (x_T "
                         "and the noise first iterate); check the model and its weights")
    left = None if budget_s is None else max(0.0, budget_s - (time.perf_counter() - t0))
    x2, st2 = picard_loop(evaluate, x_T[rows], index_cond(cond, rows), grid, init=cold if isinstance(cold, str)
                          else cold[rows], budget_s=left, noise_terms=None if noise_terms is None
                          else noise_terms[:, rows], **kw)
    x = x.index_put((rows,), x2)
    for name in ("sample_iterations", "sample_nfe"):
        v = getattr(stats, name)
        for j, r in enumerate(rows.tolist()):
            v[r] += getattr(st2, name)[j]
    for j, r in enumerate(rows.tolist()):
        stats.sample_converged[r] = st2.sample_converged[j]
    stats.iterations += st2.iterations
    stats.nfe = sum(stats.sample_nfe) / len(x_T)
    stats.converged = all(stats.sample_converged)
    stats.out_of_budget = stats.out_of_budget or st2.out_of_budget
    stats.clamped += st2.clamped
    stats.cold_restarts += len(rows) + st2.cold_restarts
    if return_trajectory:
        stats.trajectory = stats.trajectory.index_put((slice(None), rows), st2.trajectory)
    return x, stats


def _colder(init, x_T):
    """The cold first iterate a diverged sample is re-solved from: "prior" after an x0 guess (a zero guess),
    "noise" after "prior" or a trajectory; None after "noise" (nothing is colder)."""
    if _is_noise(init):
        return None
    if isinstance(init, torch.Tensor) and init.shape == x_T.shape:
        return "prior"
    return "noise"


def _picard_pass(evaluate: Evaluate, x_T, cond, grid: Grid, *, window, tol, max_iters=None, noise_terms=None,
                 init=None, update=paradigms_update, return_iterates=False, return_trajectory=False, safeguard=None,
                 may_slide: Callable[[int], bool] = lambda k: True, taa: TAA | None = None,
                 budget_s: float | None = None, jump: Jump | None = None):
    """One run of the loop (``picard_loop``); also returns which samples diverged (B,) bool."""
    t0 = time.perf_counter()
    if taa is not None and not isinstance(taa, TAA):
        raise ValueError(f"taa must be a TAA(...) or None, got {taa!r}")
    if jump is not None and not isinstance(jump, Jump):
        raise ValueError(f"jump must be a Jump(...) or None, got {jump!r}")
    if jump is not None and max(jump.positions) >= len(grid):
        raise ValueError(f"Jump positions must be < T = {len(grid)}, got {jump.positions}")
    if budget_s is not None and not (math.isfinite(budget_s) and budget_s >= 0):
        raise ValueError(f"budget_s must be a finite number of seconds >= 0, or None for no budget, got {budget_s}")
    T, B, d = len(grid), x_T.shape[0], x_T[0].numel()
    check_args(x_T, window, tol, max_iters, init, T)
    if not callable(update):
        raise ValueError(f"update must be Picard's update rule, a callable (X, b, jj, ss, fx) -> X[1:], got {update!r}")
    check_cond(cond, B)
    p, dev = T if window is None else min(window, T), x_T.device
    X = initial_trajectory(grid, x_T, init)  # never changed in place: iterates and TAA history share it
    copy_exposed = _is_noise(init)
    scale = d * tol_scale(grid)[1:, None]  # (T, 1): positions 1..T
    bound = None if safeguard is None else _bound(grid, x_T, safeguard)
    bound = None if bound is None else bound[1:]
    m = taa.memory if taa is not None else 0
    aweight = torch.cat([grid.alpha, grid.alpha_prev[-1:]]).to(dev) ** taa.weight if taa is not None else None
    stats = SampleStats(iterates=[X] if return_iterates else None, outputs=[X[T]] if return_iterates else None)
    hist, count = [], torch.zeros(T + 1, B, dtype=torch.long, device=dev)  # Anderson memory
    pos, cols, view = torch.arange(T, device=dev)[:, None], torch.arange(B, device=dev), (T, B) + (1,) * (x_T.ndim - 1)
    b, e = torch.zeros(B, dtype=torch.long, device=dev), torch.full((B,), p, device=dev)  # anchors, window ends
    its, rows = torch.zeros(B, dtype=torch.long, device=dev), torch.zeros(B, dtype=torch.long, device=dev)
    jx, est = x_T, None  # the jump's current point and latest x0 estimate (module doc)
    diverged = torch.zeros(B, dtype=torch.bool, device=dev)  # a non-finite iterate: left the call, re-solved cold

    def put(X, mask, V):  # X with positions 1..T replaced by V where mask (T, B); out of place
        return torch.cat([X[:1], torch.where(mask.view(view), V, X[1:])])

    def output(X, est, its, b):  # X[T], or the jump's estimate where a sample has neither run until nor converged
        if est is None:
            return X[T]
        return torch.where(((its < jump.until) & (b < T)).view(-1, *([1] * (x_T.ndim - 1))), est, X[T])

    only_jump = jump is not None and max_iters is not None and max_iters < jump.until  # Picard rows unused
    while bool((b < T).any()):
        if max_iters is not None and stats.iterations >= max_iters:
            break
        if only_jump and stats.iterations >= len(jump.positions):  # held: nothing left to evaluate
            break
        if budget_s is not None and stats.iterations > 0 and time.perf_counter() - t0 >= budget_s:
            stats.out_of_budget = True
            break
        k, live = stats.iterations, b < T
        win = (pos >= b) & (pos < e) & live & (not only_jump)  # (T, B): row j <-> position j evaluated, j+1 updated
        jj, ss = win.nonzero(as_tuple=True)  # the rows of this call, position-major
        xs = X[jj, ss]
        if jump is not None and k < len(jump.positions):  # one more row per running sample
            ids = live.nonzero(as_tuple=True)[0]
            n, pp = len(jj), torch.full_like(ids, jump.positions[k])
            out, calls = evaluate(torch.cat([xs, jx[ids]]), grid.timesteps[torch.cat([jj, pp])],
                                  index_cond(cond, torch.cat([ss, ids])), k, xs.new_full((len(ids),), jump.lambdas[k]))
            out, x0, eps = out[:n], *predicted_x0(grid, jx[ids], out[n:], pp)
            est = torch.zeros_like(x_T).index_put((ids,), x0) if est is None else est.index_put((ids,), x0)
            rows[ids] += calls
            if k + 1 < len(jump.positions):  # along the estimate's own DDIM path to the next position
                a = grid.alpha[jump.positions[k + 1]]
                jx = jx.index_put((ids,), a.sqrt() * x0 + (1 - a).sqrt() * eps)
        else:
            out, calls = evaluate(xs, grid.timesteps[jj], index_cond(cond, ss), k)
        fx = ddim_step(grid, xs, out, jj)  # F_j(x_j)
        if noise_terms is not None:
            fx = fx + noise_terms[jj, ss]
        new = update(X, b, jj, ss, fx)  # Picard: x_j = x_b + cumsum of drifts (``paradigms_update``)
        err = torch.where(win, (new - X[1:]).flatten(2).pow(2).sum(-1) / scale, 0)  # (T, B)
        gone = live & ~torch.isfinite(err).all(0)  # diverged this iteration
        diverged = diverged | gone
        if taa is not None:
            count[1:] = torch.where(win, (count[1:] + 1).clamp(max=m), count[1:])
            R = torch.cat([torch.zeros_like(X[:1]), torch.where(win.view(view), new - X[1:], 0)])  # Picard residual
            hist = (hist + [(X, R)])[-m:]
        X = put(X, win, new)
        stats.iterations += 1
        its += live
        rows += win.sum(0) * calls
        stats.residuals.append(err.max().sqrt().item())
        new_b = b
        if may_slide(k) and not only_jump:  # each sample slides to its first unconverged position (>= 1 step)
            bad = ~((err <= tol**2) | (pos < b)) | (pos >= e)
            first = torch.cat([bad, bad.new_ones(1, B)]).int().argmax(0)
            new_b = torch.where(live, torch.minimum(first + 1, e), b)
        if taa is not None:  # TAA on the positions after the new anchor only
            corr = _anderson(hist, count, win, taa.reg, aweight, taa.mixing)
            if corr is not None:
                X = put(X, win & (pos >= new_b), X[1:] - corr)
        new_b = torch.where(gone, T, new_b)  # a diverged sample leaves the call (picard_loop re-solves it)
        new_e = (new_b + p).clamp(max=T)
        if jump is not None and k in jump.restart and not only_jump:  # guesses after the anchor from the estimate
            again = live & (new_b < T)
            at = new_b.clamp(min=min(jump.restart_from, T - 1))
            X = put(X, (pos >= at) & again, restart_path(grid, X, est, at))
            hist, count, copy_exposed = [], torch.where(again, 0, count), False  # TAA starts afresh
        if copy_exposed:  # newly exposed positions start from the last window value
            X = put(X, (pos >= e) & (pos < new_e), X[e, cols])
        if bound is not None:  # safeguard: positions after the anchor only
            guess = (pos >= new_b) & (pos < new_e)
            clamped = torch.maximum(torch.minimum(X[1:], bound), -bound)
            stats.clamped += int((guess & (clamped != X[1:]).flatten(2).any(-1)).sum())
            X = put(X, guess, clamped)
        b, e = new_b, new_e
        if return_iterates:
            stats.iterates.append(X)
            stats.outputs.append(output(X, est, its, b))
    stats.sample_iterations, stats.sample_nfe = its.tolist(), rows.tolist()
    stats.sample_converged = ((b >= T) & ~diverged).tolist()
    stats.nfe, stats.converged = rows.sum().item() / B, all(stats.sample_converged)
    if return_trajectory:
        stats.trajectory = X
    x = output(X, est, its, b).clone()
    diverged = diverged | ~torch.isfinite(x.flatten(1)).all(1)  # e.g. a jump estimate from a diverged row
    return x, stats, diverged


@torch.no_grad()
def sample_picard(model_fn, x_T: torch.Tensor, cond: Cond = None, *, grid: Grid, window: int | None = None,
                  tol: float = 0.1, max_iters: int | None = None, noise: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, init: str | torch.Tensor | None = None,
                  update: Update = paradigms_update, safeguard: float | None = None, taa: TAA | None = None,
                  return_iterates: bool = False, return_trajectory: bool = False,
                  budget_s: float | None = None, jump: Jump | None = None) -> tuple[torch.Tensor, SampleStats]:
    """Parallel sampling by windowed Picard iteration (ParaDiGMS Alg. 1); converges to ``sample_sequential``'s
    output on the same grid and noise.

    Args:
        model_fn, x_T, cond, grid, noise, generator: as in ``sample_sequential``; T = ``len(grid)``;
            ``generator`` may be one per row of ``x_T`` (``ddim.draw_noise``).
        window: p positions per batched call (default: all T).
        tol: tau of the tolerance rule (module doc); 0 runs until the window has slid to T.
        max_iters: stop after this many iterations (``stats.converged`` False if not done).
        budget_s: time budget in seconds: no iteration starts after it is spent, the first always runs
            (module doc; ``stats.out_of_budget``). None: no budget.
        taa: triangular Anderson acceleration (``TAA``); None: plain Picard updates.
        safeguard: kappa of the iterate safeguard (module doc); None: off.
        init: X^0: "noise" (default), "prior", an x0 guess shaped like x_T, or a trajectory
            ``(T+1, *x_T.shape)`` (module doc); position 0 is always x_T. Except with "noise" (where they
            start from the last window value) later positions are kept as they are when the window
            exposes them.
        update: Picard's update rule (``Update``, module doc); default ParaDiGMS' cumulative sum of drifts.
        jump: the anytime estimate (``Jump``, module doc); here with the base model only (lambdas 0).
        return_iterates, return_trajectory: keep every iterate / the final trajectory in ``stats``.
    Returns:
        ``(x, stats)``: X[T] (or the jump's estimate, module doc) shaped like ``x_T`` and ``SampleStats``
        (per-sample iterations and NFE too).
    Raises:
        ValueError: bad window, tol, max_iters, update, init, taa, safeguard or budget_s, or a mis-shaped condition.
    """
    grid = grid.like(x_T)

    def evaluate(x, t, c, k, lam_rows=None):
        if lam_rows is not None and bool((lam_rows != 0).any()):
            raise ValueError("sample_picard has no adapter: a Jump's lambdas must be 0 here (use sample_pcm)")
        return call_model(model_fn, x, t, c), 1

    return picard_loop(evaluate, x_T, cond, grid, window=window, tol=tol, max_iters=max_iters,
                       noise_terms=draw_noise(grid, x_T, noise, generator), init=init, update=update,
                       return_iterates=return_iterates, return_trajectory=return_trajectory,
                       safeguard=safeguard, taa=taa, budget_s=budget_s, jump=jump)
