"""Loading the LDM-CelebA and SD v1.4 folder layouts from local files, and one clear error for what is missing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from vision_helpers import dirs, ldm_dir, sd_dir  # noqa: F401 (fixtures)

from pcm_policy.sampling import sample_sequential, step_grid
from pcm_policy.vision import ModelFolderError, initial_latents, load_model, model_function, parse_dtype


def copy(src, tmp_path):
    return shutil.copytree(src, tmp_path / src.name)


def test_loads_both_layouts(ldm_dir, sd_dir):  # noqa: F811
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, UNet2DModel, VQModel

    ldm, sd = load_model(ldm_dir), load_model(sd_dir)
    assert (ldm.family, ldm.conditional, ldm.latent_shape) == ("ldm", False, (3, 8, 8))
    assert isinstance(ldm.unet, UNet2DModel) and isinstance(ldm.autoencoder, VQModel)
    assert (sd.family, sd.conditional, sd.latent_shape) == ("sd", True, (4, 8, 8))
    assert isinstance(sd.unet, UNet2DConditionModel) and isinstance(sd.autoencoder, AutoencoderKL)
    assert sd.tokenizer("a cat").input_ids[0] == 512 and sd.tokenizer.model_max_length == 77
    # SD's PNDM config becomes the DDIM it also defines (SD v1.4's settings)
    assert isinstance(sd.scheduler, DDIMScheduler) and sd.scheduler_config["_class_name"] == "PNDMScheduler"
    c = sd.scheduler.config
    assert (c.steps_offset, c.set_alpha_to_one, c.clip_sample, c.beta_schedule) == (1, False, False, "scaled_linear")
    assert (c.beta_start, c.beta_end) == (0.00085, 0.012)


def test_tokenizer_as_vocab_and_merges_files(sd_dir, tmp_path):  # noqa: F811
    """SD v1.4 ships vocab.json + merges.txt (no tokenizer.json); both forms load to the same ids."""
    d = copy(sd_dir, tmp_path)
    tok = d / "tokenizer"
    vocab = json.loads((tok / "tokenizer.json").read_text())["model"]["vocab"]
    (tok / "tokenizer.json").unlink()
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    ids = load_model(d).tokenizer("a photo of a cat").input_ids
    assert ids == load_model(sd_dir).tokenizer("a photo of a cat").input_ids


def test_fp16_variant_weights_only(ldm_dir, tmp_path):  # noqa: F811
    d = copy(ldm_dir, tmp_path)
    (d / "unet/diffusion_pytorch_model.safetensors").rename(d / "unet/diffusion_pytorch_model.fp16.safetensors")
    ref = load_model(ldm_dir).unet.state_dict()
    got = load_model(d).unet.state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_unet_dtype_keeps_a_float32_trajectory(sd_dir, dtype):  # noqa: F811
    from pcm_policy.vision import encode_prompts

    m, ref = load_model(sd_dir, dtype=dtype), load_model(sd_dir)
    assert next(m.unet.parameters()).dtype == parse_dtype(dtype)
    assert next(m.autoencoder.parameters()).dtype == next(m.text_encoder.parameters()).dtype == torch.float32
    x_T, cond, grid = initial_latents(m, [0]), encode_prompts(m, ["a cat"]), step_grid(m.scheduler, 4)
    x, _ = sample_sequential(model_function(m), x_T, cond, grid=grid)
    x_ref, _ = sample_sequential(model_function(ref), x_T, cond, grid=grid)
    assert x.dtype == torch.float32
    assert (x - x_ref).abs().max() < 0.05 * x_ref.abs().max()  # low precision, same model


def _error(path) -> str:
    with pytest.raises(ModelFolderError) as e:
        load_model(path)
    assert isinstance(e.value, ValueError)
    return str(e.value)


def test_missing_folder(tmp_path):
    msg = _error(tmp_path / "nope")
    assert "does not exist" in msg and "CompVis/ldm-celebahq-256" in msg and "CompVis/stable-diffusion-v1-4" in msg


def test_missing_model_index(ldm_dir, tmp_path):  # noqa: F811
    d = copy(ldm_dir, tmp_path)
    (d / "model_index.json").unlink()
    assert "no model_index.json" in _error(d)


def test_unsupported_pipeline(ldm_dir, tmp_path):  # noqa: F811
    d = copy(ldm_dir, tmp_path)
    (d / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    assert "KandinskyPipeline" in _error(d)


def test_missing_component(ldm_dir, tmp_path):  # noqa: F811
    d = copy(ldm_dir, tmp_path)
    shutil.rmtree(d / "vqvae")
    msg = _error(d)
    assert "vqvae/ (VQModel)" in msg and "CompVis/ldm-celebahq-256 layout" in msg


def test_config_without_weights(sd_dir, tmp_path):  # noqa: F811
    """The usual half-finished download: config.json there, weights not."""
    d = copy(sd_dir, tmp_path)
    (d / "unet/diffusion_pytorch_model.safetensors").unlink()
    msg = _error(d)
    assert "unet/diffusion_pytorch_model.safetensors" in msg and "unfinished" in msg
    assert "stable-diffusion-v1-4" in msg


def test_everything_missing_is_named_in_one_error(sd_dir, tmp_path):  # noqa: F811
    d = copy(sd_dir, tmp_path)
    (d / "text_encoder/model.safetensors").unlink()
    (d / "scheduler/scheduler_config.json").unlink()
    shutil.rmtree(d / "tokenizer")
    msg = _error(d)
    for part in ("text_encoder/model.safetensors", "scheduler/scheduler_config.json", "tokenizer/"):
        assert part in msg


def test_corrupt_weights_name_the_component(ldm_dir, tmp_path):  # noqa: F811
    d = copy(ldm_dir, tmp_path)
    (d / "unet/diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    assert "unet" in _error(d)


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype must be one of"):
        parse_dtype("float8")
