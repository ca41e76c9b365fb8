"""Image quality vs k for Sequential, DDIM-k, Picard, Picard + TAA and PCM: what ``scripts/vision/eval_*.py`` call.

For every sampler and every k of ``ks``, on N samples with seeds S..S+N-1 (the same x_T for every sampler):
    sequential  DDIM-T truncated after k steps (X[k] decoded; the paper's "Sequential")
    ddim-k      DDIM re-discretised to k steps
    picard      Picard (ParaDiGMS) over the DDIM-T trajectory, k iterations (tol 0)
    taa         Picard + triangular Anderson acceleration, k iterations (tol 0)
    pcm         Picard with the adapter's own switching schedule (its ``adapter.json`` spec), k iterations
    pcm-nomix   (only when the adapter's schedule ramps) the same adapter with lambda rounded to a hard switch
metrics against the converged output (sequential DDIM-T on the same seed): latent RMSE, PSNR and mean
|difference| of the decoded uint8 images; against the reference images: FID, sFID, KID, precision / recall
(``metrics``); CLIP score / CMMD with a CLIP folder; prompt-class accuracy with a classifier.

"Mixing" (the paper's Table 3 ablation, spec ``pcm.md`` §5): with mixing, lambda(k) takes values strictly
between 0 and 1 on a ramp (k_on < k_off), i.e. the adapted and the base model are mixed - in weight space
(W_0 + lambda dW) or feature space (lambda eps_pcm + (1 - lambda) eps_base), whichever the adapter names;
without mixing, lambda jumps from 1 to 0 (a hard switch; then both spaces are the same computation). The
no-mixing variant of a ramp is lambda rounded to {0, 1}: the hard switch at the first k with lambda < 1/2.
An adapter trained with a hard switch has no mixing variant to derive (reported as skipped).

k_match = the smallest k whose FID is within 1% of the converged output's AND whose decoded images differ
from the converged ones by < 1 uint8 level on average (``evaluation.k_match``); speed-up = T / k_match.
Every cell (sampler, k) is cached under OUT/cells/ keyed by its full SamplerSpec, the model and adapter
hashes, N, the seed, the prompts, the guidance and the metric inputs; a rerun skips finished cells. The
reference set's Inception features are cached across runs and output folders (``reference_features``), keyed by
the reference images and the feature extractor.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..adapters import ADAPTER_CONFIG, load_adapter_folder
from ..adapters import ADAPTER_WEIGHTS as ADAPTER
from ..evaluation import cached
from ..io import atomic_path, read_json
from ..sampling import SamplerSpec, Switch, make_sampler
from . import metrics as M
from .loaders import LAYOUTS, ImageModel, load_model
from .models import model_function
from .processor import decode_latents, encode_prompts, initial_latents, seeds_for
from .report import write_report

__all__ = ["DIGIT_PROMPTS", "NAMES", "default_reference", "evaluate", "load_images", "prompt_labels"]

NAMES = ("sequential", "ddim-k", "picard", "taa", "pcm")
DEFAULT_STEPS = {"ldm": 50, "sd": 30}  # supplement Table 1: LDM-CelebA T = 50, SD v1.4 T = 30
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_PROMPTS = tuple(f"a handwritten digit {w}" for w in DIGITS)  # the sd stand-in's class prompts (spec §6)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
GRID_SAMPLES = 4  # images kept per cell for the figure


def prompt_labels(prompts) -> list[int | None]:
    """The digit class a prompt names (a word zero..nine or a lone numeral), else None."""
    out = []
    for p in prompts:
        words = re.findall(r"[a-z]+|\d", p.lower())
        hits = {DIGITS.index(w) for w in words if w in DIGITS} | {int(w) for w in words if w.isdigit()}
        out.append(hits.pop() if len(hits) == 1 else None)
    return out


def load_images(folder: str | Path) -> list[np.ndarray]:
    """Every image under ``folder`` (recursively, sorted) as uint8 (H, W, 3). Raises ValueError if none."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--reference {folder} is not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ValueError(f"--reference {folder} holds no images ({', '.join(IMAGE_EXTS)})")
    try:
        return [np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p in files]
    except OSError as e:
        raise ValueError(f"cannot read a reference image in {folder}: {e}") from e


def default_reference():
    """The held-out images of the shipped small models (``pcm_policy.vision.data.reference_images()``)."""
    try:
        from .data import reference_images
    except ImportError as e:
        raise ValueError("no --reference DIR given and the shipped held-out set is not available "
                         f"(pcm_policy.vision.data.reference_images: {e}); pass --reference DIR") from e
    return reference_images()


def _resize(images, hw: tuple[int, int]) -> list[np.ndarray]:
    from PIL import Image

    return [im if im.shape[:2] == hw else
            np.asarray(Image.fromarray(im).resize(hw[::-1], Image.BICUBIC, reducing_gap=None), dtype=np.uint8)
            for im in images]


def _hash(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _folder_hash(folder: Path, subfolders) -> str:
    h = hashlib.sha256()
    files = [folder / "model_index.json"]
    files += sorted(f for s in subfolders for f in (folder / s).rglob("*") if f.is_file())
    for f in files:
        if f.is_file():
            h.update(str(f.relative_to(folder)).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 24), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def _cached_arrays(path: Path, key: dict, compute, label: str) -> dict[str, np.ndarray]:
    """``compute() -> {name: array}`` once per key, kept in an .npz (the key stored inside)."""
    k = json.dumps(key, sort_keys=True)
    if path.exists():
        try:
            with np.load(path) as z:
                if str(z["__key__"]) == k:
                    print(f"{label}: cached ({path})", flush=True)
                    return {n: z[n] for n in z.files if n != "__key__"}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged: recomputed and replaced
            pass
    print(f"{label}: computing", flush=True)
    arrays = compute()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, __key__=np.array(k), **arrays)
    return arrays


def cache_dir() -> Path:
    """Where results reused across runs and output folders are kept: ``$PCM_POLICY_CACHE``, else
    ``$XDG_CACHE_HOME/pcm_policy`` (``~/.cache/pcm_policy``)."""
    import os

    if os.environ.get("PCM_POLICY_CACHE"):
        return Path(os.environ["PCM_POLICY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pcm_policy"


def reference_features(feats, reference: list[np.ndarray], ref_key: str) -> dict[str, np.ndarray]:
    """The reference set's Inception features (``{"pool", "spatial"}``), computed once per (reference set, feature
    extractor) and kept in ``cache_dir()/reference_features`` (about 250 s of a run for 1,000 references on a CPU);
    progress is shown while they are computed."""
    key = {"reference": ref_key, "n": len(reference), "extractor": M.INCEPTION_SHA1, "features": ["pool", "spatial"]}
    path = cache_dir() / "reference_features" / f"{ref_key}_{M.INCEPTION_SHA1[:12]}.npz"
    label = f"reference Inception features ({len(reference)} images)"
    return _cached_arrays(path, key, lambda: feats(reference, progress=True), label)


def _is_cached(path: Path, key: dict) -> bool:
    try:
        return json.loads(path.read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def _nomix(switch: Switch) -> Switch:
    """A ramp's lambda rounded to {0, 1}: the hard switch at the first k with lambda(k) < 1/2."""
    k = next(k for k in range(switch.k_off + 1) if switch(k) < 0.5)
    return Switch(k, k, switch.space)


def _classifier():
    """``classify(images_uint8) -> labels`` of ``pcm_policy.vision.classifier``, or (None, reason)."""
    try:
        from .classifier import classify
    except ImportError as e:
        return None, f"no digit classifier: pcm_policy.vision.classifier is not available ({e})"
    return classify, None


class _Features:
    """Inception features per image, computed once per distinct image in this run."""

    def __init__(self, batch_size: int):
        self.batch_size, self.inception, self.memo = batch_size, None, {}

    def __call__(self, images, progress: bool = False) -> dict[str, np.ndarray]:
        keys = [hashlib.sha1(im.tobytes() + str(im.shape).encode()).hexdigest() for im in images]
        todo = {k: im for k, im in zip(keys, images, strict=True) if k not in self.memo}
        if todo:
            self.inception = self.inception or M.Inception(batch_size=self.batch_size)  # loaded when first needed
            f = self.inception.features(list(todo.values()), progress=progress)
            for i, k in enumerate(todo):
                self.memo[k] = (f["pool"][i], f["spatial"][i])
        return {"pool": np.stack([self.memo[k][0] for k in keys]),
                "spatial": np.stack([self.memo[k][1] for k in keys])}


def evaluate(model: str | Path | ImageModel, *, out: str | Path, adapter: str | Path | None = None,
             samplers=NAMES, ks=(1, 2, 3, 4, 5), num_samples: int = 200, seed: int = 0, steps: int | None = None,
             prompts=None, guidance: float | None = None, reference=None, clip: str | Path | None = None,
             batch_size: int = 16, inception_batch: int = 32, stand_in: str | None = None,
             progress: bool = True) -> dict:
    """Evaluate every sampler at every k (module doc); writes OUT/metrics.json, metrics.csv, table.md, grid.png,
    pareto.png, fid_vs_k.png and returns the metrics.json dict.

    Args:
        model: a model folder (``loaders.LAYOUTS``) or a loaded ``ImageModel``.
        out: output folder (cells cached under OUT/cells).
        adapter: a PCM adapter folder (needed for pcm).
        samplers: names from ``NAMES``; ks: budgets k >= 1; num_samples N; seed S (sample i: seed S + i).
        steps: T of the converged output (default: the adapter's, else 50 for ldm and 30 for sd).
        prompts: sd only, cycled over the samples; guidance: CFG scale (default: adapter.json's, else 7.5).
        reference: uint8 images ``(N, H, W, 3)`` or a list of ``(H, W, 3)``, or a folder; resized (bicubic) to
            the generated size where it differs.
        clip: a local CLIP folder for CLIP score and CMMD (otherwise they are reported skipped).
        stand_in: a note put in every header and table (the shipped small models are not the paper's).
    Raises:
        ValueError: bad samplers, ks, counts, prompts, reference, adapter or model folder.
    """
    t_start, out = time.perf_counter(), Path(out)
    samplers, ks = list(dict.fromkeys(samplers)), sorted(set(int(k) for k in ks))
    bad = [s for s in samplers if s not in NAMES]
    if bad or not samplers:
        raise ValueError(f"unknown sampler(s) {', '.join(bad) or '(none)'}; choose from {', '.join(NAMES)}")
    if not ks or ks[0] < 1:
        raise ValueError(f"every k must be >= 1, got {ks}")
    seeds = seeds_for(seed, num_samples)
    if batch_size < 1 or inception_batch < 1:
        raise ValueError("batch sizes must be >= 1")
    if "pcm" in samplers and adapter is None:
        raise ValueError("the pcm sampler needs --adapter DIR (a folder with adapter.safetensors and adapter.json)")
    if guidance is not None and guidance < 0:
        raise ValueError(f"guidance must be >= 0, got {guidance}")
    if isinstance(reference, str | Path):
        reference = load_images(reference)
    if not isinstance(model, ImageModel):
        model = load_model(model)
    if model.conditional and not prompts:
        raise ValueError(f"the {model.family} model at {model.path} is text-conditional: pass prompts (--prompts FILE)")
    if not model.conditional and prompts:
        raise ValueError(f"the {model.family} model at {model.path} is unconditional and takes no prompts")
    prompts = [prompts[i % len(prompts)] for i in range(num_samples)] if prompts else None
    key = {"model": _folder_hash(Path(model.path), LAYOUTS[model.family].components), "n": num_samples, "seed": seed}
    specs, skipped, notes, adapter_cfg, adapter_hash = {}, {"inception_score": M.INCEPTION_SCORE_SKIPPED}, [], {}, None
    if adapter is not None:  # its T and guidance are the defaults whichever samplers run (one T per OUT)
        adapter = Path(adapter)
        if "pcm" in samplers:
            spec, _ = load_adapter_folder(model.unet, adapter)
            adapter_hash = _hash((adapter / ADAPTER).read_bytes(), (adapter / ADAPTER_CONFIG).read_bytes())
        try:
            adapter_cfg = read_json(adapter / ADAPTER_CONFIG, "adapter config")
            adapter_T = SamplerSpec.from_dict(adapter_cfg.get("sampler", adapter_cfg.get("schedule"))).num_steps
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"cannot read the sampler spec of {adapter / ADAPTER_CONFIG}: {e}") from e
    T = steps or (adapter_T if adapter is not None else None) or DEFAULT_STEPS[model.family]
    if model.conditional:
        guidance = guidance if guidance is not None else float(adapter_cfg.get("guidance", 7.5))
        key |= {"prompts": _hash(prompts), "guidance": guidance}
    for s in samplers:
        if s == "pcm":
            specs["pcm"] = spec.replace(num_steps=T, tol=0.0, k=None)
            sw = specs["pcm"].switch
            if sw.k_on < sw.k_off:
                specs["pcm-nomix"] = specs["pcm"].replace(switch=_nomix(sw))
                notes.append(f"pcm: the adapter's ramp lambda = 1 until k_on = {sw.k_on}, 0 from k_off = {sw.k_off} "
                             f"({sw.space} space) = WITH mixing; pcm-nomix: lambda rounded to a hard switch "
                             f"{specs['pcm-nomix'].switch} = WITHOUT mixing")
            else:
                skipped["pcm_mixing"] = (f"the adapter switches hard (k_on = k_off = {sw.k_off}): trained without a "
                                         "mixing ramp, so pcm is the no-mixing variant; no mixing variant is defined")
        else:
            specs[s] = SamplerSpec.named({"sequential": "ddim"}.get(s, s), num_steps=T,
                                         tol=0.0 if s in ("picard", "taa") else None, k=1 if s == "ddim-k" else None)
    make_sampler(specs.get("sequential", SamplerSpec.named("ddim", num_steps=T)).replace(k=None),
                 model.scheduler)  # bad T fails here

    # reference images and what can be computed
    if reference is None:
        reference = default_reference()
    reference = list(reference)
    fn = model_function(model, guidance if guidance is not None else 7.5)
    h, w = model.latent_shape[1:]
    n_ref = len(reference)
    if min(num_samples, n_ref) < 2:
        for m in ("fid", "sfid", "kid"):
            skipped[m] = f"needs >= 2 images per set (N = {num_samples}, reference {n_ref})"
    if min(num_samples, n_ref) <= M.PR_K:
        for m in ("precision", "recall"):
            skipped[m] = (f"needs > {M.PR_K} images per set (k = {M.PR_K} neighbours; N = {num_samples}, "
                          f"reference {n_ref})")
    clip_scorer = None
    if clip is None:
        for m in ("clip_score", "cmmd"):
            skipped[m] = "no CLIP weights ship in any installable wheel; pass --clip DIR (a local CLIP model folder)"
    else:
        clip_scorer = M.ClipScorer(clip)
        key["clip"] = _folder_hash(Path(clip), [])
        if not model.conditional:
            skipped["clip_score"] = "unconditional model: no prompt to score the images against"
    labels = None
    classify, why = _classifier()
    if not model.conditional:
        skipped["class_accuracy"] = "unconditional model: no prompt class"
    elif classify is None:
        skipped["class_accuracy"] = why
    else:
        labels = np.array([-1 if v is None else v for v in prompt_labels(prompts)])
        if (labels < 0).all():
            skipped["class_accuracy"] = "no prompt names a digit class (zero..nine)"
    feats = _Features(inception_batch)
    cells = out / "cells"
    cells.mkdir(parents=True, exist_ok=True)

    def sample(name: str, spec: SamplerSpec, kk: list[int]) -> dict[int, torch.Tensor]:
        """Latents at every k of kk: one run per batch (iterates / trajectory kept), ddim-k one run per k."""
        res = {k: [] for k in kk}
        from tqdm.auto import tqdm

        for lo in tqdm(range(0, num_samples, batch_size), desc=f"sampling {name}", disable=not progress, leave=False):
            sl = slice(lo, lo + batch_size)
            x_T = initial_latents(model, seeds[sl])
            cond = encode_prompts(model, prompts[sl]) if prompts else None
            if spec.name == "ddim-k":
                for k in kk:
                    res[k].append(make_sampler(spec.replace(k=k), model.scheduler)(fn, x_T, cond)[0])
            elif spec.name == "ddim":
                kmax = min(max(kk), T)
                traj = make_sampler(spec.replace(k=kmax), model.scheduler)(fn, x_T, cond,
                                                                           return_trajectory=True)[1].trajectory
                for k in kk:
                    res[k].append(traj[min(k, kmax)])
            else:
                kmax = min(max(kk), spec.max_iterations())
                run = make_sampler(spec.replace(k=kmax), model.scheduler)
                st = run(fn, x_T, cond, return_iterates=True)[1]
                its = st.outputs or [X[-1] for X in st.iterates]  # a Jump's estimates where it is the output
                for k in kk:
                    res[k].append(its[min(k, len(its) - 1)])
        return {k: torch.cat(v).float() for k, v in res.items()}

    # the converged output: sequential DDIM-T
    def converged():
        lat = sample("converged (DDIM-T)", SamplerSpec.named("ddim", num_steps=T), [T])[T]
        return {"latents": lat.numpy(), "images": decode_latents(model, lat, batch_size=batch_size)}

    conv = _cached_arrays(cells / "converged.npz", {**key, "T": T}, converged, f"converged DDIM-{T}")
    conv_lat, conv_img = torch.from_numpy(conv["latents"]), conv["images"]
    hw = conv_img.shape[1:3]
    resized = any(im.shape[:2] != hw for im in reference)
    reference = _resize(reference, hw)
    ref_key = _hash(b"".join(im.tobytes() for im in reference))
    ref_stats = {}

    def ref(name: str):  # the reference set's features, computed when a cell first needs them
        if not ref_stats:
            ref_stats["feats"] = reference_features(feats, reference, ref_key)
            ref_stats["radii"] = M.manifold_radii(ref_stats["feats"]["pool"]) if "precision" not in skipped else None
            ref_stats["clip"] = clip_scorer.image_embeddings(np.stack(reference)) if clip_scorer else None
        return ref_stats[name]
    mkey = {"reference": ref_key, "skipped": sorted(skipped), "metrics_version": 1}

    def row(name: str, k: int, lat: torch.Tensor, imgs: np.ndarray) -> dict:
        d = M.mean_abs_uint8(imgs, conv_img)
        mse = float(((imgs.astype(np.float64) - conv_img.astype(np.float64)) ** 2).mean())
        r = {"sampler": name, "k": k, "latent_rmse": float(M.latent_rmse(lat, conv_lat).mean()),
             "psnr": float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse)),
             "uint8_diff": float(d.mean())}
        r |= dict.fromkeys(("fid", "sfid", "kid", "precision", "recall", "clip_score", "cmmd", "class_accuracy"))
        f = feats(list(imgs))
        if "fid" not in skipped:
            r["fid"], r["sfid"] = M.fid(f["pool"], ref("feats")["pool"]), M.fid(f["spatial"], ref("feats")["spatial"])
            r["kid"] = M.kid(f["pool"], ref("feats")["pool"])
        if "precision" not in skipped:
            r["precision"], r["recall"] = M.precision_recall(ref("feats")["pool"], f["pool"], ref_radii=ref("radii"))
        if clip_scorer is not None:
            emb = clip_scorer.image_embeddings(imgs)
            r["cmmd"] = M.cmmd(ref("clip"), emb)
            if "clip_score" not in skipped:
                r["clip_score"] = clip_scorer.clip_score(emb, prompts)
        if "class_accuracy" not in skipped:
            sel = labels >= 0
            r["class_accuracy"] = M.class_accuracy(imgs[sel], labels[sel], classify)
        return r

    conv_row = cached(cells / "converged.json", {**key, "T": T, **mkey},
                      lambda: row("sequential", T, conv_lat, conv_img), f"metrics of DDIM-{T}", t_start)
    results = {}
    for name, spec in specs.items():
        limit = T if name == "sequential" else spec.max_iterations()  # a budget beyond it: the converged output
        ckeys = {k: {**key, **mkey, "spec": spec.replace(k=min(k, limit) if limit else k).to_dict(),
                     **({"adapter": adapter_hash} if name.startswith("pcm") else {})} for k in ks}
        todo = [k for k in ks if not _is_cached(cells / f"{name}_k{k}.json", ckeys[k])]
        lats = sample(name, spec, todo) if todo else {}
        for k in ks:
            def compute(name=name, k=k, lats=lats):
                imgs = decode_latents(model, lats[k], batch_size=batch_size)
                with atomic_path(cells / f"{name}_k{k}.npz") as tmp, open(tmp, "wb") as f:
                    np.savez(f, images=imgs[:GRID_SAMPLES])
                return row(name, k, lats[k], imgs)
            results.setdefault(name, []).append(cached(cells / f"{name}_k{k}.json", ckeys[k], compute,
                                                       f"{name} k={k}", t_start))

    return write_report(out, results=results, converged=conv_row, skipped=skipped, notes=notes, T=T,
                        num_samples=num_samples, n_reference=n_ref, reference_resized=resized, stand_in=stand_in,
                        settings={**key, "adapter": adapter_hash, "T": T, "ks": ks, "samplers": list(specs), "tol": 0.0,
                                  "specs": {n: s.to_dict() for n, s in specs.items()}, "model_path": str(model.path),
                                  "adapter_path": str(adapter) if adapter else None, "reference": ref_key,
                                  "clip": str(clip) if clip else None, "batch_size": batch_size,
                                  "image_size": list(hw), "latent_size": [h, w]},
                        inception=feats.inception.throughput() if feats.inception else None,
                        elapsed=time.perf_counter() - t_start)
