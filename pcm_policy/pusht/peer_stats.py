"""Statistics of the peer comparisons: paired score differences with intervals, and two-sample tests of action
distributions (MMD with an RBF kernel, the split between two modes).

Paired differences (Efron and Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13 for the percentile
interval, ch. 15 for the permutation test): episodes are paired by seed (same start state, same x_T per chunk),
so the difference of two samplers' scores is taken per episode; its mean gets a percentile-bootstrap 95%
interval over episodes and a two-sided sign-flip (randomisation) p-value for "mean difference 0".

Bimodality (SAS Institute, "SAS/STAT User's Guide", 1990, PROC CLUSTER; Pfister et al., "Good things peak in
pairs", Front. Psychol. 2013): Sarle's coefficient b = (g^2 + 1) / (k + 3 (n - 1)^2 / ((n - 2)(n - 3))) of the
samples' projection on their first principal axis (g: sample skewness, k: sample excess kurtosis); 1/3 for a
normal, 5/9 for a uniform, towards 1 for two separated modes; b > 5/9 suggests two modes.

MMD (Gretton, Borgwardt, Rasch, Schoelkopf, Smola, "A Kernel Two-Sample Test", JMLR 2012, eq. 3 (unbiased
MMD^2_u) and sec. 8 (median heuristic)): k(x, y) = exp(-||x - y||^2 / (2 s^2)) with s the median pairwise
distance of the pooled samples; the p-value permutes the pooled labels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["assign_modes", "bimodality", "mmd2_unbiased", "mmd_test", "mode_split", "paired_difference", "two_means"]


def paired_difference(a, b, *, n_boot: int = 10_000, seed: int = 0) -> dict:
    """Mean of ``a - b`` over paired episodes with its bootstrap 95% interval and sign-flip p-value.

    Args:
        a, b: per-episode scores, same length n >= 2, paired by index.
        n_boot: bootstrap resamples and sign-flip draws.
    Returns:
        {"n", "mean_a", "mean_b", "diff", "se" (the standard error of the mean difference), "ci95" [lo, hi]
        (percentile bootstrap), "p_value" (two-sided, sign flips; (1 + hits) / (1 + n_boot))}.
    Raises:
        ValueError: different lengths, fewer than 2 pairs, or non-finite values.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two 1-D score lists of the same length >= 2, got shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("scores must be finite")
    d, n = a - b, len(a)
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, n, (n_boot, n))].mean(axis=1)
    flips = (rng.integers(0, 2, (n_boot, n)) * 2 - 1) * d
    hits = int((np.abs(flips.mean(axis=1)) >= abs(d.mean()) - 1e-12).sum())
    return {"n": n, "mean_a": float(a.mean()), "mean_b": float(b.mean()), "diff": float(d.mean()),
            "se": float(d.std(ddof=1) / np.sqrt(n)), "ci95": [float(np.quantile(boot, 0.025)),
                                                           float(np.quantile(boot, 0.975))],
            "p_value": (1 + hits) / (1 + n_boot)}


def two_means(a, b, *, n_boot: int = 10_000, seed: int = 0) -> dict:
    """Unpaired difference of means ``mean(a) - mean(b)`` with a bootstrap 95% interval (each list resampled on
    its own): for rows measured on different episode counts. Returns {"n_a", "n_b", "diff", "ci95"}."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if min(len(a), len(b)) < 2:
        raise ValueError("need at least 2 values on each side")
    rng = np.random.default_rng(seed)
    boot = (a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1) - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1))
    return {"n_a": len(a), "n_b": len(b), "diff": float(a.mean() - b.mean()),
            "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]}


def _sq_dists(z: np.ndarray) -> np.ndarray:
    g = z @ z.T
    n = np.diag(g)
    return np.maximum(n[:, None] + n[None, :] - 2 * g, 0.0)


def mmd2_unbiased(kernel: np.ndarray, n_x: int) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) from the pooled kernel matrix, the first ``n_x`` rows being X."""
    kxx, kyy, kxy = kernel[:n_x, :n_x], kernel[n_x:, n_x:], kernel[:n_x, n_x:]
    m, n = n_x, len(kernel) - n_x
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def mmd_test(x, y, *, permutations: int = 200, seed: int = 0, bandwidth: float | None = None) -> dict:
    """Two-sample MMD test of samples ``x`` (m, ...) and ``y`` (n, ...) (flattened per sample).

    Returns {"mmd2" (unbiased), "bandwidth" (the RBF length s; median heuristic unless given), "p_value"
    (permutation, (1 + hits) / (1 + permutations))}. Raises ValueError for fewer than 2 samples on a side or
    a zero median distance (all samples equal) without ``bandwidth``.
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if min(len(x), len(y)) < 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need >= 2 samples of the same size on each side, got {x.shape} and {y.shape}")
    z = np.concatenate([x, y])
    d2 = _sq_dists(z)
    if bandwidth is None:
        med = float(np.median(np.sqrt(d2[np.triu_indices(len(z), 1)])))
        if med <= 0:
            raise ValueError("all samples are equal: the median heuristic gives bandwidth 0; pass bandwidth")
        bandwidth = med
    kern = np.exp(-d2 / (2 * bandwidth ** 2))
    stat = mmd2_unbiased(kern, len(x))
    rng, hits = np.random.default_rng(seed), 0
    for _ in range(permutations):
        p = rng.permutation(len(z))
        hits += mmd2_unbiased(kern[np.ix_(p, p)], len(x)) >= stat - 1e-15
    return {"mmd2": stat, "bandwidth": float(bandwidth), "p_value": (1 + hits) / (1 + permutations)}


def mode_split(ref, *, iters: int = 50, seed: int = 0) -> dict:
    """Two modes of the reference samples ``ref`` (n, ...): 2-means (Lloyd) on the flattened samples, started
    from the two samples farthest apart. Returns {"centres" (2, d), "share" (of ref in mode 0), "separation"
    (distance between the centres over the mean distance of a sample to its centre)} and ``assign(x)`` is
    ``assign_modes``."""
    r = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    d2 = _sq_dists(r)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    c = r[[i, j]].copy()
    for _ in range(iters):
        lab = assign_modes(r, c)
        new = np.stack([r[lab == m].mean(0) if (lab == m).any() else c[m] for m in (0, 1)])
        if np.allclose(new, c):
            break
        c = new
    lab = assign_modes(r, c)
    within = float(np.mean(np.linalg.norm(r - c[lab], axis=1)))
    return {"centres": c, "share": float((lab == 0).mean()),
            "separation": float(np.linalg.norm(c[0] - c[1]) / max(within, 1e-12))}


def bimodality(x) -> float:
    """Sarle's bimodality coefficient (module doc) of samples ``x`` (n >= 4, ...) on their first principal axis."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n = len(x)
    if n < 4:
        raise ValueError(f"need at least 4 samples, got {n}")
    c = x - x.mean(0)
    p = c @ np.linalg.svd(c, full_matrices=False)[2][0]
    m2, m3, m4 = (p ** 2).mean(), (p ** 3).mean(), (p ** 4).mean()
    if m2 <= 0:
        raise ValueError("all samples are equal")
    g = np.sqrt(n * (n - 1)) / (n - 2) * m3 / m2 ** 1.5  # adjusted skewness G1
    k = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * (m4 / m2 ** 2 - 3) + 6)  # adjusted excess kurtosis G2
    return float((g ** 2 + 1) / (k + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def assign_modes(x, centres) -> np.ndarray:
    """Index (0 or 1) of the nearer centre for every sample of ``x`` (n, ...)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return np.argmin(((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
