"""The PCM paper's recipe, replicated (not the shipped default): what only the paper's variants need.

The shipped method is the anytime PCM (``configs/pct/anytime.yaml``: a LoRA jump riding on Picard + TAA,
``sampling.Jump``). The paper's PushT recipe (supplement Table 2; ``docs/pusht.md``) is kept runnable here
and in its configs, ``configs/pct/paper_cpu.yaml`` (the one-update objective scaled to a CPU),
``paper.yaml`` (as faithful as a CPU allows) and ``paper_full.yaml`` (the feature-space "PCM" row: a
fully fine-tuned copy, shipped as ``checkpoints/pusht_pcm_paper``); images: ``image_paper.yaml``.

Glossary (PCM paper; supplement Table 3 and eq. 1):
  full copy      the paper's feature-space "PCM": a separately fine-tuned copy of the whole network (twice
                 the storage), against the LoRA delta of "PCM-LoRA". ``FullCopy`` is a model-function
                 wrapper: lambda per row picks the network, 0 the base, 1 the copy.
  feature space  eps = lambda eps_pcm + (1 - lambda) eps_base for a fractional lambda (a ramp; supplement Table 3):
                 ``FeatureMix``, a model-function wrapper that calls the model at lambda 1 and 0 in ONE batched
                 call and mixes, which is how a full copy serves a ramp. A spec names it ``Switch(k_on, k_off,
                 "feature")``; the sampler core applies it from ``sampling.SPACES["feature"]`` (registered here).
  one update     the PCT objective alpha_k ||Phi_theta(X^k) - X*||^2 through ONE full-window Picard update
                 (``training.pct.pct_loss``; ``objective: picard`` in the configs), k ~ U{0..K-1}, alpha_k =
                 1/sqrt(Var_k), then a switching schedule tuned on held-out conditions: ``paper.pct``
                 (``PCTBatches``, ``tune_from_config``), which registers "picard" in ``training.pct.OBJECTIVES`` on
                 import (``scripts/train_pct.py`` imports it when a config names it; this module does not).
  chain form     Phi as x_j <- F_{j-1}(x_{j-1}) (supplement eq. 1) instead of the cumulative sum of drifts; same
                 fixed point. ``chain_update`` is a Picard update rule (``sampling.picard.Update``); a spec and a
                 PCT config name it ``form: chain`` (``SamplerSpec.form``, ``pct.form``), the core finds it in
                 ``sampling.FORMS["chain"]`` (registered here).

Shipped spec keys: ``adapter.json`` files, caches and configs keep ``form`` and ``switch.space`` as they are; the
core knows "paradigms" and "weight" and finds any other name in ``sampling.FORMS`` / ``sampling.SPACES``, which this
module fills on import (``register``). ``pcm_policy.adapters`` (the loader) and ``training.pct`` import it, so an
adapter or config that names the paper's variants loads through them; with the sampler core alone such a spec is a
ValueError that says to import this module.

On PushT none of these beat the shipped recipe (``docs/pusht.md``); they stay so the replication can be rerun.
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Callable

import torch
from torch import nn

from ..sampling import FORMS, SPACES, call_model, repeat_cond

__all__ = ["FeatureMix", "FullCopy", "add_full_copy", "chain_update", "full_copy_of", "register"]


def chain_update(X: torch.Tensor, b: torch.Tensor, jj: torch.Tensor, ss: torch.Tensor,
                 fx: torch.Tensor) -> torch.Tensor:
    """Picard's update in the chain form (supplement eq. 1), a ``sampling.picard.Update``: x_{j+1} = F_j(x_j) on
    the window rows (``jj`` positions, ``ss`` samples, ``fx`` = F_j(x_j) with its noise term), the other positions
    kept. Differentiable. Same fixed point as ParaDiGMS' cumulative sum; ``b`` (the anchors) is not needed."""
    return X[1:].index_put((jj, ss), fx)  # chain: x_{j+1} = F_j(x_j)


def _mixes(lora_scale) -> bool:
    if torch.is_tensor(lora_scale):
        return not bool(((lora_scale == 0) | (lora_scale == 1)).all())
    return lora_scale not in (None, 0, 1)


class FeatureMix:
    """Feature-space lambda (module doc): ``FeatureMix(model_fn)(x, t, cond, lora_scale=lam)`` is
    ``lam * model_fn(lora_scale=1) + (1 - lam) * model_fn(lora_scale=0)`` with both halves in ONE batched call
    (rows ``[x; x]`` at per-row scales ``[1...; 0...]``); ``lam`` a float or a per-row tensor ``(N,)``. A lambda of
    None, 0 or 1 (or per-row 0s and 1s) is passed through as it is: one call, no mixing. ``row_calls(lam)``: network
    evaluations per row (2 when mixing; ``sampling.denoiser.row_calls`` counts them in NFE). ``model_fn`` must take a
    per-row ``lora_scale`` (``lora.LoraScale``, ``FullCopy``)."""

    def __init__(self, model_fn):
        self.model_fn = model_fn

    def row_calls(self, lora_scale=None) -> int:
        return 2 if _mixes(lora_scale) else 1

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond, lora_scale=None, **kw) -> torch.Tensor:
        if not _mixes(lora_scale):
            return self.model_fn(x, t, cond, lora_scale=lora_scale, **kw)
        n = x.shape[0]
        mix = lora_scale.view(-1, *([1] * (x.ndim - 1))) if torch.is_tensor(lora_scale) else lora_scale
        scale = torch.cat([x.new_ones(n), x.new_zeros(n)])  # [adapted rows; base rows] in one call
        out = call_model(self.model_fn, torch.cat([x, x]), torch.cat([t, t]), repeat_cond(cond, 2), lora_scale=scale,
                         **kw)
        return mix * out[:n] + (1 - mix) * out[n:]  # eps = lambda eps_pcm + (1 - lambda) eps_base

    def __repr__(self) -> str:
        return f"FeatureMix({self.model_fn!r})"


def register() -> None:
    """Name the paper's variants in the sampler core: ``FORMS["chain"]`` (``chain_update``) and ``SPACES["feature"]``
    (``FeatureMix``). Runs on import; idempotent."""
    FORMS["chain"] = chain_update
    SPACES["feature"] = FeatureMix


register()


class FullCopy(nn.Module):
    """A model-function wrapper that serves lambda = 1 with a separately fine-tuned ``network`` (module doc).

    ``FullCopy(network)(base_fn, x, t, cond, lora_scale)``: ``lora_scale`` None or 0 calls ``base_fn`` (the
    base model function, ``base_fn(x, t, cond, lora_scale=...)``), 1 calls ``network(x, t, cond)``, and a
    per-row tensor ``(N,)`` of 0s and 1s splits the rows between the two (each half in one call). ``freeze``
    traces the copy like the base (``pusht.frozen``); a frozen graph serves the calls it computes exactly.

    Raises:
        ValueError: another lambda (a copy has no weight-space lambda = 0.5; a ramp needs a feature-space
            schedule, ``Switch(k_on, k_off, "feature")``, which calls it at 0 and 1 and mixes the outputs).
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self._frozen = None  # see freeze()

    def freeze(self, make_graphs: Callable[[nn.Module], object] | None) -> None:
        """``make_graphs(network)``: an object whose ``graph(x, t, cond)`` gives a traced graph of the copy for
        the calls it computes exactly, else None (``pusht.frozen.FrozenGraphs``); None drops the graphs."""
        self._frozen = None if make_graphs is None else make_graphs(self.network)

    def forward(self, base_fn, x: torch.Tensor, t: torch.Tensor, cond, lora_scale=None) -> torch.Tensor:
        if torch.is_tensor(lora_scale) and lora_scale.shape == x.shape[:1]:
            on = lora_scale == 1  # rows at 0 or 1 only (a Jump's adapted row beside base Picard rows): both nets
            if bool((on | (lora_scale == 0)).all()):
                out = torch.empty_like(x)
                for rows, lam in ((~on, 0.0), (on, 1.0)):
                    if bool(rows.any()):
                        out[rows] = self(base_fn, x[rows], t[rows], cond[rows], lora_scale=lam)
                return out
        if not torch.is_tensor(lora_scale) and lora_scale in (None, 0, 1):
            if lora_scale != 1:
                return base_fn(x, t, cond, lora_scale=lora_scale)
            graph = self._frozen.graph(x, t, cond) if self._frozen is not None else None
            return (graph if graph is not None else self.network)(x, t, cond)
        raise ValueError(f"lora_scale must be 0 or 1 (per row) with a full copy, got {lora_scale}; a lambda ramp "
                         "needs a feature-space schedule (Switch(k_on, k_off, 'feature'))")


def add_full_copy(policy) -> nn.Module:
    """Give ``policy`` (a ``pusht.DiffusionPolicy``: ``.model`` and ``set_model_wrapper``) a fully fine-tunable copy
    of its network, which starts equal to the base; the base is frozen. Returns the copy (its parameters are
    the ones to train; ``adapters.load_adapter_folder(..., full_copy=...)`` loads a saved one into it).

    Raises:
        ValueError: the policy already has a LoRA adapter or a model wrapper (a copy is used instead of one).
    """
    from ..lora import has_lora

    if has_lora(policy.model) or policy.model_wrapper is not None:
        raise ValueError("this policy already has an adapter; a full copy is used instead of one, not beside it")
    network = _copy.deepcopy(policy.model)
    policy.model.requires_grad_(False)
    policy.set_model_wrapper(FullCopy(network))
    return network


def full_copy_of(policy) -> nn.Module | None:
    """The fully fine-tuned copy of ``policy`` (``add_full_copy``), or None when it has none."""
    w = policy.model_wrapper
    return w.network if isinstance(w, FullCopy) else None
