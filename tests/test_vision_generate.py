"""scripts/vision/generate.py end to end on tiny saved models (in-process ``main(argv)``), and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_script
from PIL import Image
from vision_helpers import assert_close, ldm_dir, sd_dir, with_random_lora  # noqa: F401 (fixtures)

from pcm_policy.adapters import save_adapter_folder
from pcm_policy.sampling import SamplerSpec, Switch
from pcm_policy.vision import decode_latents, load_model

script = load_script("vision/generate")


def outputs(out: Path):
    npz = np.load(out / "samples.npz")
    return npz["images"], npz["latents"], json.loads((out / "stats.json").read_text())


def test_generate_writes_images_latents_and_stats(ldm_dir, tmp_path):  # noqa: F811
    out = tmp_path / "ddim"
    args = ["--model", str(ldm_dir), "--steps", "6", "--num-samples", "3", "--batch-size", "2", "--seed", "7"]
    assert script.main([*args, "--sampler", "ddim", "--out", str(out)]) == 0
    images, latents, stats = outputs(out)
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    assert latents.shape == (3, 3, 8, 8) and latents.dtype == np.float32
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "sample_0000.png", "sample_0001.png",
                                                     "sample_0002.png", "samples.npz", "stats.json"]
    assert np.array_equal(np.asarray(Image.open(out / "sample_0001.png")), images[1])
    assert Image.open(out / "grid.png").size == (32, 32)
    assert SamplerSpec.from_dict(stats["sampler"]) == SamplerSpec.named("ddim", num_steps=6)
    assert stats["iterations"] == [6, 6] and stats["nfe_per_sample"] == 6 and stats["ms_per_sample"] > 0
    assert np.array_equal(decode_latents(load_model(ldm_dir), torch.from_numpy(latents)), images)
    # Picard to tol 0 gives the same latents
    assert script.main([*args, "--sampler", "picard", "--tol", "0", "--window", "4", "--out", str(tmp_path / "p")]) == 0
    assert_close(torch.from_numpy(outputs(tmp_path / "p")[1]), torch.from_numpy(latents))


def test_generate_pcm_with_an_adapter_folder(sd_dir, tmp_path):  # noqa: F811
    m = with_random_lora(load_model(sd_dir))
    spec = SamplerSpec.named("pcm", num_steps=6, switch=Switch(1, 2), tol=0.0)
    save_adapter_folder(m.unet, tmp_path / "adapter", spec)
    args = ["--model", str(sd_dir), "--steps", "6", "--prompt", "a cat", "--num-samples", "2"]
    assert script.main([*args, "--sampler", "ddim", "--out", str(tmp_path / "ddim")]) == 0
    assert script.main([*args, "--sampler", "pcm", "--adapter", str(tmp_path / "adapter"),
                        "--out", str(tmp_path / "pcm")]) == 0
    _, ref, _ = outputs(tmp_path / "ddim")
    images, latents, stats = outputs(tmp_path / "pcm")
    assert SamplerSpec.from_dict(stats["sampler"]) == spec and stats["cfg_rows"] == 2
    assert_close(torch.from_numpy(latents), torch.from_numpy(ref))  # PCM ends on the base model's output
    assert images.shape == (2, 16, 16, 3)


@pytest.mark.parametrize("argv,message", [
    (["--model", "{missing}"], "does not exist"),
    (["--model", "{ldm}", "--k", "0"], "k must be >= 1"),
    (["--model", "{ldm}", "--prompt", "a cat"], "unconditional"),
    (["--model", "{ldm}", "--num-samples", "-2"], "number of samples"),
    (["--model", "{sd}"], "pass a prompt"),
    (["--model", "{sd}", "--prompt", "a cat", "--sampler", "pcm"], "needs --adapter"),
    (["--model", "{ldm}", "--sampler", "newton"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(ldm_dir, sd_dir, tmp_path, capsys, argv, message):  # noqa: F811
    argv = [a.format(ldm=ldm_dir, sd=sd_dir, missing=tmp_path / "nope") for a in argv]
    try:
        rc = script.main([*argv, "--out", str(tmp_path / "out")])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if line.startswith("error:") or "Traceback" in line]
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()
