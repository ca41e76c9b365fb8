"""A sampler and its settings as one value (``SamplerSpec``), and the one factory from spec to sampler.

    ddim       sequential DDIM over T = ``num_steps`` steps; ``k`` truncates after k steps (the paper's
               "Sequential" at equal k)
    ddim-k     DDIM re-discretised to ``k`` steps (a different, coarser solver)
    ddpm       sequential ancestral DDPM over every training timestep (``num_steps`` None)
    dpmsolver  a diffusers multistep solver's own ``step`` (DPM-Solver++); its scheduler is passed in
    dpmsolver++, unipc  DPM-Solver++ (2M) / UniPC in ``k`` steps (required), diffusers' ``step``; the solver
               scheduler is passed in, configured for the model by ``pcm_policy.solvers.solver_scheduler``
    srds       SRDS, Parareal over the T-step DDIM grid (``srds.py``); ``k`` caps its batched calls, ``tol``
               stops it on the sample's change; exact at tol 0
    picard     Picard iteration over the T-step DDIM trajectory (ParaDiGMS)
    taa        Picard with triangular Anderson acceleration (``TAA()``), the "prior" first iterate and the
               iterate safeguard kappa = 1: training-free
    pcm        Picard with model switching: lambda(k) from ``switch`` (an adapter's own spec in practice)
    newton     Newton emulation with JVPs (a reference curve, not a fast sampler)
    consistency  a consistency-distilled student (``consistency.py``; its adapter on the model) in exactly ``k``
               calls (None: 1), multistep consistency sampling over the T-step grid

For the iterative samplers ``k`` caps the iterations and ``tol`` stops them earlier. The CLI, an
adapter's ``adapter.json`` (key ``sampler``), the evaluation cache key and the benchmarks all read and
write this value (``to_dict`` / ``from_dict`` / ``key``); a sampler's defaults live in ``DEFAULTS`` only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass

import torch

from .consistency import sample_consistency
from .ddim import Grid, sample_sequential, step_grid
from .denoiser import Cond, SampleStats
from .newton import sample_newton
from .pcm import Switch, sample_pcm
from .picard import FORMS, INITS, TAA, Jump, sample_picard
from .scheduler_loop import sample_with_scheduler
from .srds import sample_srds

__all__ = ["DEFAULTS", "ITERATIVE", "SAMPLERS", "Sampler", "SamplerSpec", "make_sampler", "spec_with"]

SAMPLERS = ("ddim", "ddim-k", "ddpm", "dpmsolver", "picard", "taa", "pcm", "newton", "dpmsolver++", "unipc", "srds",
            "consistency")
SCHEDULER_LOOPS = ("dpmsolver", "dpmsolver++", "unipc")  # step with a diffusers solver scheduler passed in
ITERATIVE = ("picard", "taa", "pcm", "newton")  # take tol, init, k as an iteration budget
K_STEPS = ("ddim-k", "dpmsolver++", "unipc")  # k is their number of steps (a new solver per k)
PICARDS = ("picard", "taa", "pcm")  # Picard's update: form, jump
# Per-sampler defaults, written once. TAA's (memory 3, weight 1, mixing 0.8, prior init, safeguard 1) were
# chosen on held-out PushT training-seed conditions (scripts/tune_taa.py, docs/pusht.md).
DEFAULTS: dict[str, dict] = {
    "ddpm": {"num_steps": None},
    "taa": {"taa": TAA(), "init": "prior", "safeguard": 1.0},
    "pcm": {"switch": Switch(1, 1)},
}


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler and its settings (module doc). Frozen and hashable; ``key()`` is a stable string.

    Attributes:
        name: one of ``SAMPLERS``.
        num_steps: T, the DDIM steps of the trajectory (None for ddpm: every training timestep).
        k: iteration budget (iterative samplers), truncation (ddim, ddpm) or step count (ddim-k).
        tol: tolerance tau of Picard's convergence rule (iterative samplers).
        window: Picard window p (None: all T).
        init: first Picard iterate, "noise" or "prior" (None: "noise").
        safeguard: iterate safeguard kappa (None: off).
        taa: triangular Anderson acceleration of the base iterations (None: plain Picard updates).
        switch: PCM's lambda schedule (pcm only).
        jump: the anytime estimate riding on the iterations (``picard.Jump``; iterative samplers but newton;
            lambdas > 0 need pcm's adapter).
        form: the name of Picard's update rule (``picard.FORMS``): "paradigms", the core's cumulative sum of
            drifts; "chain" (x_{j+1} = F_j(x_j), supplement eq. 1) is the paper's, registered by
            ``pcm_policy.paper``; picard, taa and pcm; the same fixed point.
    """

    name: str
    num_steps: int | None = 50
    k: int | None = None
    tol: float = 0.1
    window: int | None = None
    init: str | None = None
    safeguard: float | None = None
    taa: TAA | None = None
    switch: Switch | None = None
    jump: Jump | None = None
    form: str = "paradigms"

    def __post_init__(self):
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}; choose one of {', '.join(SAMPLERS)}")
        for field in ("num_steps", "k", "window"):
            v = getattr(self, field)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
                raise ValueError(f"{field} must be an integer (or None), got {v!r}")
        for field in ("tol", "safeguard"):
            v = getattr(self, field)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
                raise ValueError(f"{field} must be a number, got {v!r}")
        if self.num_steps is None and self.name != "ddpm":
            raise ValueError(f"num_steps None (every training timestep) is for ddpm only; give {self.name} a T >= 1")
        if self.jump is not None and self.num_steps is not None and max(self.jump.positions) >= self.num_steps:
            raise ValueError(f"jump positions must be in 0..num_steps - 1 = {self.num_steps - 1}, got "
                             f"{self.jump.positions}")
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"num_steps (T) must be >= 1, got {self.num_steps}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.name in K_STEPS and self.k is None:
            raise ValueError(f"{self.name} needs k, its number of steps")
        if not (math.isfinite(float(self.tol)) and self.tol >= 0):
            raise ValueError(f"tol must be a finite number >= 0 (0: run until converged exactly), got {self.tol!r}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 (or None for all T steps), got {self.window}")
        if self.init is not None and self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.safeguard is not None and not (math.isfinite(float(self.safeguard)) and self.safeguard > 0):
            raise ValueError(f"safeguard (kappa) must be a finite number > 0 (or None: off), got {self.safeguard!r}")
        if self.jump is not None and (self.name not in ("picard", "taa", "pcm")
                                      or self.name != "pcm" and any(self.jump.lambdas)):
            raise ValueError(f"a jump rides on picard, taa or pcm, and only pcm has an adapter for lambdas > 0; "
                             f"got {self.name} with {self.jump}")
        if self.form not in FORMS or self.form != "paradigms" and self.name not in PICARDS:
            raise ValueError(f"form must be one of {', '.join(sorted(FORMS))} (other than paradigms: picard, taa, pcm; "
                             f"the paper's chain is registered by importing pcm_policy.paper), got {self.form!r} for "
                             f"{self.name}")
        if self.name == "pcm" and self.switch is None:
            raise ValueError("pcm needs a switch (lambda schedule); use SamplerSpec.named('pcm', ...)")
        if self.name in ITERATIVE and self.k is not None and self.k > self.max_iterations():
            raise ValueError(f"k = {self.k} iterations is more than {self.name} can use: it converges exactly "
                             f"within {self.max_iterations()} (T = {self.num_steps}); use k <= {self.max_iterations()}")
        if self.name == "consistency" and self.k is not None and self.num_steps is not None \
                and self.k > self.num_steps:
            raise ValueError(f"k = {self.k} consistency calls is more than the grid's T = {self.num_steps} positions")
        if self.name in ("ddim", "ddpm") and self.k is not None and self.num_steps is not None \
                and self.k > self.num_steps:
            raise ValueError(f"k = {self.k} truncates {self.name} after more than its T = {self.num_steps} steps; "
                             f"use k <= {self.num_steps} (or ddim-k for a k-step DDIM)")

    def max_iterations(self) -> int | None:
        """Iterations after which an iterative sampler has converged exactly at any tol: T (Picard's
        window slides at least one position per base iteration), plus ``k_off`` for pcm (adapted
        iterations do not slide). None for sequential samplers."""
        if self.name not in ITERATIVE or self.num_steps is None:
            return None
        return self.num_steps + (self.switch.k_off if self.name == "pcm" else 0)

    @classmethod
    def named(cls, name: str, **overrides) -> SamplerSpec:
        """The spec of ``name`` with its defaults (``DEFAULTS``), then every override that is not None."""
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
        return cls(name=name, **{**DEFAULTS.get(name, {}), **{k: v for k, v in overrides.items() if v is not None}})

    def replace(self, **changes) -> SamplerSpec:
        """A copy with ``changes`` (None values included: they switch a setting off). A jump's grid positions
        follow a change of ``num_steps`` (``Jump.rescaled``) unless ``jump`` is given too."""
        jump = changes.get("jump", self.jump)
        T = changes.get("num_steps", self.num_steps)
        if "jump" not in changes and jump is not None and T != self.num_steps and None not in (T, self.num_steps):
            changes["jump"] = jump.rescaled(self.num_steps, T)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Every setting as plain data; ``jump`` and ``form`` (added later) only when set, so cache keys and
        adapter.json files written before them stay valid."""
        d = dataclasses.asdict(self)
        if d["form"] == "paradigms":
            del d["form"]
        if d["jump"] is None:
            del d["jump"]
        else:  # lists, as JSON gives them back (a cache compares keys read from JSON with fresh ones)
            d["jump"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["jump"].items()}
            for f, unset in (("hold", 0), ("restart", []), ("restart_from", 0)):  # added later: left out
                if d["jump"][f] == unset:  # when unset, so older keys stay valid
                    del d["jump"][f]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SamplerSpec:
        """Inverse of ``to_dict``. Raises ValueError for unknown fields, TypeError for a missing ``name``."""
        d = dict(d)
        if d.get("taa") is not None:
            d["taa"] = TAA(**d["taa"])
        if d.get("switch") is not None:
            d["switch"] = Switch(**d["switch"])
        if d.get("jump") is not None:
            d["jump"] = Jump(**d["jump"])
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown sampler spec fields {sorted(unknown)}")
        return cls(**d)

    def key(self) -> str:
        """A stable string of every setting (a result cache's key)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def label(self) -> str:
        """A short human label, e.g. ``pcm k=4``."""
        return self.name + (f" k={self.k}" if self.k else "")


NESTED = {"taa": TAA, "switch": Switch, "jump": Jump}  # spec fields whose own fields an override may set


def spec_with(base: SamplerSpec | str, **overrides) -> SamplerSpec:
    """``base`` (a spec, or a sampler name: its ``DEFAULTS``) with ``overrides``: THE override rule of every CLI.

    A key is a ``SamplerSpec`` field other than ``name`` (``num_steps``, ``k``, ``tol``, ``window``, ``init``,
    ``safeguard``, ``taa``, ``switch``, ``jump``, ``form``) or ``<field>_<name>`` for one field of a nested
    setting (``taa_memory``, ``taa_mixing``, ``taa_weight``, ``taa_reg``, ``switch_k_on``, ``switch_k_off``,
    ``switch_space``, ``jump_positions``, ``jump_lambdas``, ``jump_hold``). A value of None keeps the base
    spec's value. On a spec the changes go through ``SamplerSpec.replace`` (a new ``num_steps`` rescales a
    jump); on a name through ``SamplerSpec.named`` (so ``spec_with("ddim-k", k=5)`` builds in one step).

    Raises:
        ValueError: an unknown key (named in the message), a nested key whose setting the spec does not have
            (e.g. ``taa_memory`` on a spec without TAA), or settings the spec refuses.
    """
    fields = {f.name for f in dataclasses.fields(SamplerSpec)} - {"name"}
    flat, nested = {}, {}
    for key, v in overrides.items():
        field, _, sub = key.partition("_")
        known = {f.name for f in dataclasses.fields(NESTED[field])} if field in NESTED else set()
        if key not in fields and sub not in known:
            raise ValueError(f"unknown sampler setting {key!r}; use a SamplerSpec field ({', '.join(sorted(fields))}) "
                             f"or <field>_<name> for one of taa, switch, jump (e.g. taa_memory, switch_k_on)")
        if v is not None:
            (flat if key in fields else nested.setdefault(field, {}))[key if key in fields else sub] = v
    name = base if isinstance(base, str) else base.name
    if isinstance(base, str) and name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    for field, subs in nested.items():
        current = flat[field] if field in flat else (DEFAULTS.get(name, {}).get(field) if isinstance(base, str)
                                                     else getattr(base, field))
        if current is None:
            keys = ", ".join(f"{field}_{k}" for k in subs)
            raise ValueError(f"{keys}: this {name} spec has no {field} to adjust ({field} is None)")
        flat[field] = dataclasses.replace(current, **subs)
    return SamplerSpec.named(base, **flat) if isinstance(base, str) else base.replace(**flat)


class Sampler:
    """A ready-to-call sampler: ``sampler(model_fn, x_T, cond=None, **kw) -> (x_0, SampleStats)``.

    The step grid is computed once here (and moved once per device). ``kw``: ``noise`` / ``generator``
    (stochastic grids, dpmsolver), ``init`` (iterative samplers: overrides the spec's, e.g. a warm
    start), ``budget_s`` (iterative samplers: a time budget in seconds, ``picard.py``),
    ``return_iterates`` / ``return_trajectory``.
    """

    def __init__(self, spec: SamplerSpec, grid: Grid | None, solver_scheduler=None):
        self.spec, self.grid, self.solver_scheduler = spec, grid, solver_scheduler
        self._grids: dict = {}

    def _grid(self, x: torch.Tensor) -> Grid:
        key = (x.device, x.dtype == torch.float64)
        if key not in self._grids:
            self._grids[key] = self.grid.like(x)
        return self._grids[key]

    def __call__(self, model_fn, x_T: torch.Tensor, cond: Cond = None, **kw) -> tuple[torch.Tensor, SampleStats]:
        s = self.spec
        for name, what in (("init", "a first iterate or warm start"), ("budget_s", "a time budget")):
            if s.name not in ITERATIVE and kw.pop(name, None) is not None:
                raise ValueError(f"{name} ({what}) is for iterative samplers; {s.name} takes none")
        if s.name in SCHEDULER_LOOPS:
            return sample_with_scheduler(model_fn, x_T, cond, scheduler=self.solver_scheduler,
                                         num_steps=s.k or s.num_steps, **kw)
        grid = self._grid(x_T)
        if s.name == "consistency":
            return sample_consistency(model_fn, x_T, cond, grid=grid, k=s.k or 1, **kw)
        if s.name == "srds":
            return sample_srds(model_fn, x_T, cond, grid=grid, tol=s.tol, max_iters=s.k, **kw)
        if s.name in ("ddim", "ddim-k", "ddpm"):
            return sample_sequential(model_fn, x_T, cond, grid=grid, truncate=None if s.name == "ddim-k" else s.k,
                                     **kw)
        kw.setdefault("init", s.init)
        common = dict(grid=grid, tol=s.tol, max_iters=s.k, **kw)
        if s.name == "newton":
            return sample_newton(model_fn, x_T, cond, **common)
        if s.name == "pcm":
            return sample_pcm(model_fn, x_T, cond, schedule=s.switch, window=s.window, safeguard=s.safeguard,
                              taa=s.taa, jump=s.jump, update=FORMS[s.form], **common)
        return sample_picard(model_fn, x_T, cond, window=s.window, safeguard=s.safeguard, taa=s.taa, jump=s.jump,
                             update=FORMS[s.form], **common)

    def __repr__(self) -> str:
        return f"Sampler({self.spec})"


def make_sampler(spec: SamplerSpec | str, scheduler, *, solver_scheduler=None, **overrides) -> Sampler:
    """The sampler of ``spec`` on ``scheduler``'s noise schedule.

    Args:
        spec: a ``SamplerSpec``, or a sampler name (then ``SamplerSpec.named(name, **overrides)``).
        scheduler: a configured diffusers DDIM/DDPM scheduler, read for its noise schedule
            (``ddim.step_grid``). DDIM is solved on it unless the spec is ddpm.
        solver_scheduler: dpmsolver only, the diffusers multistep scheduler to step with (e.g.
            ``DPMSolverMultistepScheduler.from_config(scheduler.config)``).
    Returns:
        a ``Sampler``.
    Raises:
        ValueError: a bad spec, num_steps or k outside the scheduler's training timesteps, or
            dpmsolver without ``solver_scheduler``.
    """
    spec = SamplerSpec.named(spec, **overrides) if isinstance(spec, str) else spec
    if not isinstance(spec, SamplerSpec):
        raise ValueError(f"spec must be a SamplerSpec or a sampler name, got {spec!r}")
    n_train = int(scheduler.config.num_train_timesteps)
    for what, v in (("num_steps (DDIM steps T)", spec.num_steps), ("k (ddim-k's steps)",
                                                                   spec.k if spec.name == "ddim-k" else None)):
        if v is not None and v > n_train:
            raise ValueError(f"{what} must be in 1..{n_train} (the scheduler's training timesteps), got {v}")
    if spec.name in SCHEDULER_LOOPS:
        if solver_scheduler is None:
            raise ValueError(f"{spec.name} needs solver_scheduler (pcm_policy.solvers.solver_scheduler(name, "
                             "scheduler), or e.g. DPMSolverMultistepScheduler.from_config)")
        return Sampler(spec, None, solver_scheduler)
    if spec.name == "ddpm":
        grid = step_grid(scheduler, spec.num_steps or n_train, solver="ddpm")
    elif spec.name == "ddim-k":
        grid = step_grid(scheduler, spec.k, solver="ddim")
    else:
        grid = step_grid(scheduler, spec.num_steps, solver="ddim")
    if spec.name == "ddpm" and spec.k is not None and spec.k > len(grid):
        raise ValueError(f"k = {spec.k} truncates ddpm after more than its {len(grid)} steps")
    return Sampler(spec, grid)
