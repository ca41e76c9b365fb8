"""The small image models trained here: data split, 2-step training of each layout, classifier, shipped folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pcm_policy.sampling import sample_sequential, step_grid  # noqa: E402
from pcm_policy.vision import data, initial_latents, load_model, model_function  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"ldm": ROOT / "checkpoints/vision/ldm_mnist", "sd": ROOT / "checkpoints/vision/sd_mnist"}


def test_split_is_fixed_disjoint_and_balanced():
    x, y = data.digits("train")
    tx, ty = data.digits("test")
    assert x.shape == (4000, 32, 32, 3) and tx.shape == (1000, 32, 32, 3) and x.dtype == np.uint8
    assert (np.bincount(y) == 400).all() and (np.bincount(ty) == 100).all()
    assert np.array_equal(data.reference_images(), tx) and np.array_equal(data.digits("test")[0], tx)
    assert (x[..., 0] == x[..., 2]).all() and (x[:, :2].max() == 0)  # grey as RGB, 2-pixel black border
    all_x = data.digits("all")[0].reshape(5000, -1)
    rows = {r.tobytes(): i for i, r in enumerate(all_x)}
    assert not {r.tobytes() for r in x.reshape(4000, -1)} & {r.tobytes() for r in tx.reshape(1000, -1)} or \
        len(rows) < 5000  # disjoint (up to duplicate digits in the file)
    assert data.prompt_for(7) == "a handwritten digit seven"
    t = data.to_model_input(tx[:2])
    assert t.shape == (2, 3, 32, 32) and t.min() >= -1 and t.max() <= 1


@pytest.mark.parametrize("family", ["ldm", "sd"])
def test_two_step_training_writes_a_loadable_folder(family, tmp_path):
    from pcm_policy.vision.train import train_model

    folder = train_model(f"{family}-smoke", tmp_path / "run", num_train=40, evaluate=False)
    m = load_model(folder)
    assert m.family == family and m.latent_shape[1:] == (8, 8)
    assert m.autoencoder.config.scaling_factor != 0.18215  # the latents' own scale was written
    info = json.loads((folder / "TRAINING.json").read_text())
    assert "NOT CelebA-HQ" in info["note"] and info["log"]["unet"][-1]["step"] == 2
    assert np.isfinite(info["metrics"]["ae_psnr_heldout_db"])
    state = torch.load(tmp_path / "run/unet/state.pt", weights_only=True)
    train_model(f"{family}-smoke", tmp_path / "run", num_train=40, evaluate=False)  # resumes: nothing to do
    assert torch.load(tmp_path / "run/unet/state.pt", weights_only=True)["step"] == state["step"] == 2


def test_classifier_shapes_and_training(tmp_path):
    from pcm_policy.vision import classifier

    w = classifier.train_classifier(tmp_path, steps=2, num_train=20)
    m = classifier.load_classifier(w)
    imgs = data.reference_images()[:5]
    labels = classifier.classify(imgs, m)
    assert labels.shape == (5,) and labels.dtype == np.int64 and ((0 <= labels) & (labels < 10)).all()
    assert classifier.classify(imgs[:, ::2, ::2].copy(), m).shape == (5,)  # other sizes are resized
    assert json.loads(w.with_suffix(".json").read_text())["channels"] == [16, 32, 64]
    with pytest.raises(ValueError, match="uint8"):
        classifier.classify(imgs.astype(np.float32), m)


def test_shipped_classifier_is_accurate():
    from pcm_policy.vision import classifier

    if not classifier.DEFAULT_WEIGHTS.exists():
        pytest.skip("no shipped classifier")
    x, y = data.digits("test")
    assert (classifier.classify(x[::10]) == y[::10]).mean() > 0.9


@pytest.mark.parametrize("family", ["ldm", "sd"])
def test_shipped_models_load_and_sample(family):
    folder = SHIPPED[family]
    if not (folder / "model_index.json").exists():
        pytest.skip(f"{folder} not shipped")
    m = load_model(folder)
    assert m.family == family
    info = json.loads((folder / "TRAINING.json").read_text())
    assert "NOT CelebA-HQ" in info["note"]
    x_T = initial_latents(m, [0, 1])
    cond = None
    if m.conditional:
        from pcm_policy.vision import encode_prompts

        cond = encode_prompts(m, [data.prompt_for(7)] * 2)
    x, _ = sample_sequential(model_function(m, 7.5), x_T, cond, grid=step_grid(m.scheduler, 2))
    assert x.shape == x_T.shape and torch.isfinite(x).all()


def test_default_model_is_the_shipped_one_or_a_clear_error(monkeypatch, tmp_path):
    import importlib

    gen_mod = importlib.import_module("pcm_policy.vision.generate")  # the module (the package exports the function)

    assert gen_mod.SHIPPED_MODELS == SHIPPED
    monkeypatch.setattr(gen_mod, "SHIPPED_MODELS", {"ldm": tmp_path / "ldm", "sd": tmp_path / "sd"})
    with pytest.raises(ValueError, match="small model that ships with pcm-policy is missing.*--family sd"):
        gen_mod.generate(None, prompt="a handwritten digit seven")
    with pytest.raises(ValueError, match="--family ldm"):
        gen_mod.default_model()
    (tmp_path / "ldm").mkdir()
    (tmp_path / "ldm/model_index.json").write_text("{}")
    assert gen_mod.default_model() == tmp_path / "ldm"
