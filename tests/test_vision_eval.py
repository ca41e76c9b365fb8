"""scripts/vision/eval_celeba.py and eval_sd.py (the generic sweep over the image Task, ``vision.task.sweep_task``)
end to end on tiny saved models (in-process ``main(argv)``), the cached rerun, the skipped-metric report, and
one-line errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import load_script
from PIL import Image
from vision_helpers import ldm_dir, sd_dir, with_random_lora  # noqa: F401 (fixtures)

from pcm_policy.adapters import save_adapter_folder
from pcm_policy.sampling import SamplerSpec, Switch
from pcm_policy.vision import load_model
from pcm_policy.vision.evaluate import DIGIT_PROMPTS, prompt_labels

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    return load_script(f"vision/{name}")


celeba, sd = _script("eval_celeba"), _script("eval_sd")
METRICS = ("latent_rmse", "psnr", "fid", "sfid", "kid", "precision", "recall", "clip_score", "cmmd", "class_accuracy")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    rng = np.random.default_rng(0)
    for i in range(5):  # one of another size: resized to the generated 16 x 16
        Image.fromarray(rng.integers(0, 256, (20 if i == 0 else 16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _adapter(model_dir, folder, switch):
    m = with_random_lora(load_model(model_dir))
    return save_adapter_folder(m.unet, folder, SamplerSpec.named("pcm", num_steps=4, switch=switch))


def test_eval_celeba_end_to_end_and_cached_rerun(ldm_dir, reference, tmp_path, capsys):  # noqa: F811
    adapter = _adapter(ldm_dir, tmp_path / "adapter", Switch(0, 2))  # a ramp: pcm (mixing) and pcm-nomix
    out = tmp_path / "out"
    argv = ["--model", str(ldm_dir), "--adapter", str(adapter), "--ks", "1,2", "--num-samples", "2", "--seed", "3",
            "--steps", "4", "--reference", str(reference), "--out", str(out)]
    assert celeba.main(argv) == 0
    res = json.loads((out / "sweep.json").read_text())
    st = res["settings"]
    assert st["n"] == 2 and st["stand_in"] is None and st["reference"]["n"] == 5
    assert st["reference"]["resized_to_generated_size"] and st["match_field"] == "uint8_diff" and st["score_tol_rel"]
    names = ["sequential", "ddim-k", "picard", "taa", "pcm", "pcm-nomix"]
    assert list(res["results"]) == names
    assert [(r["sampler"], r["k"]) for s in names for r in res["results"][s]] == [(s, k) for s in names for k in (1, 2)]
    for rows in res["results"].values():
        for r in rows:
            assert set(METRICS) <= set(r) and r["score"] == r["fid"]
            assert r["fid"] >= 0 and r["sfid"] >= 0 and r["kid"] is not None and r["latent_rmse"] >= 0
            assert r["precision"] is None and r["clip_score"] is None and r["class_accuracy"] is None
            assert abs(r["distance"] - r["latent_rmse"]) <= 1e-4 * max(1.0, r["latent_rmse"])  # the same seeds
    conv = res["reference"]
    assert conv["k"] == 4 and conv["latent_rmse"] == 0 and conv["psnr"] == float("inf") and conv["uint8_diff"] == 0
    assert set(st["skipped"]) == {"inception_score", "precision", "recall", "clip_score", "cmmd", "class_accuracy"}
    assert "no logits" in st["skipped"]["inception_score"] and "--clip" in st["skipped"]["cmmd"]
    assert "unconditional" in st["skipped"]["class_accuracy"]
    assert st["samplers"]["pcm-nomix"]["switch"] == {"k_on": 2, "k_off": 2, "space": "weight"}
    assert set(res["k_match"]) == set(names) and all(k is None or k in (1, 2) for k in res["k_match"].values())
    for f in ("sweep.csv", "table.md", "grid.png", "pareto.png", "score_vs_k.png", "distance_vs_k.png"):
        assert (out / f).is_file(), f
    table = (out / "table.md").read_text()
    assert "| pcm-nomix |" in table and "inception_score: Inception Score not available" in table
    assert "FID vs k (Table 3 in shape)" in table and "speed-up T / k_match" in table
    assert (out / "sweep.csv").read_text().splitlines()[0].startswith("sampler,k,score,latent_rmse,psnr")
    first = capsys.readouterr().out
    assert first.count("done in") == 6 + 1 + 12  # every sampler's distances, the converged output, every row
    # a rerun computes nothing
    assert celeba.main(argv) == 0
    again = capsys.readouterr().out
    assert "done" not in again and all(f"{s} k={k}: cached" in again for s in names for k in (1, 2))
    assert "grid images k=None: cached" in again  # the grid's images too
    assert json.loads((out / "sweep.json").read_text())["results"] == res["results"]


def test_distances_only_skips_the_image_metrics_and_the_manifest_names_the_command(ldm_dir, tmp_path,  # noqa: F811
                                                                                  capsys):
    """``--distances-only``: latent RMSE rows, no score (no Inception, and a user's model needs no --reference);
    the manifest rebuilds evaluate.py's own command line from the sweep.json it wrote."""

    adapter = _adapter(ldm_dir, tmp_path / "adapter", Switch(0, 0))
    out = tmp_path / "out"
    argv = ["--model", str(ldm_dir), "--adapter", str(adapter), "--samplers", "ddim-k,taa,pcm", "--ks", "1,2",
            "--num-samples", "2", "--steps", "4", "--distances-only", "--out", str(out)]
    assert celeba.main(argv) == 0
    res = json.loads((out / "sweep.json").read_text())
    assert res["settings"]["distances_only"] and res["reference"] == {"sampler": "ddim", "k": 4}
    assert "reference" not in res["settings"] and "image quality" in res["settings"]["skipped"]
    rows = [r for rows in res["results"].values() for r in rows]
    assert len(rows) == 6 and all(r["score"] is None and r["distance"] >= 0 for r in rows)
    assert "done in" in capsys.readouterr().out
    manifest = load_script("results_manifest")
    cmd = manifest.vision_command(res["settings"])
    assert cmd.startswith("python scripts/vision/evaluate.py --family ldm --model ")
    assert cmd.endswith("--distances-only")
    assert f"--adapter {adapter}" in cmd and "--samplers ddim-k,taa,pcm --ks 1,2" in cmd and "--num-samples 2" in cmd


@pytest.mark.slow
def test_eval_sd_end_to_end_with_a_classifier(sd_dir, reference, tmp_path, monkeypatch):  # noqa: F811
    """A hard-switch adapter has no mixing variant (reported skipped); the classifier hook scores prompt classes."""
    adapter = _adapter(sd_dir, tmp_path / "adapter", Switch(1, 1))
    fake = types.ModuleType("pcm_policy.vision.classifier")
    fake.classify = lambda images: np.full(len(images), 7)
    monkeypatch.setitem(sys.modules, "pcm_policy.vision.classifier", fake)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten digit seven\n\na handwritten digit two\n")
    out = tmp_path / "out"
    assert sd.main(["--model", str(sd_dir), "--adapter", str(adapter), "--samplers", "sequential,picard,pcm",
                    "--ks", "1,2", "--num-samples", "2", "--guidance", "3", "--prompts", str(prompts),
                    "--reference", str(reference), "--out", str(out)]) == 0
    res = json.loads((out / "sweep.json").read_text())
    assert [r["sampler"] for rows in res["results"].values() for r in rows] == ["sequential"] * 2 + ["picard"] * 2 + [
        "pcm"] * 2
    assert all(r["class_accuracy"] == 0.5 for rows in res["results"].values() for r in rows)  # "seven" right, "two" not
    st = res["settings"]
    assert "hard" in st["skipped"]["pcm_mixing"] and "class_accuracy" not in st["skipped"]
    assert st["guidance"] == 3.0 and res["reference"]["k"] == 4  # T: the adapter's


def test_stand_in_defaults_say_so(ldm_dir, tmp_path, monkeypatch):  # noqa: F811
    """Without --model: the shipped stand-in, its adapter (for T) and the held-out set; every output says these
    are not CelebA-HQ results."""
    import shutil

    shutil.copytree(ldm_dir, tmp_path / "checkpoints/vision/ldm_mnist")
    _adapter(ldm_dir, tmp_path / "checkpoints/vision/ldm_mnist_pcm", Switch(1, 1))
    ev = _script("evaluate")
    monkeypatch.setattr(ev, "ROOT", tmp_path)
    data = types.ModuleType("pcm_policy.vision.data")
    data.reference_images = lambda: np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    monkeypatch.setitem(sys.modules, "pcm_policy.vision.data", data)
    out = tmp_path / "out"
    assert ev.main(["--family", "ldm", "--samplers", "sequential", "--ks", "1", "--num-samples", "2", "--out",
                    str(out)]) == 0
    res = json.loads((out / "sweep.json").read_text())
    st = res["settings"]
    assert "NOT CelebA-HQ" in st["stand_in"] and res["reference"]["k"] == 4 and st["reference"]["n"] == 4
    table = (out / "table.md").read_text()
    assert table.count("NOT CelebA-HQ") == 2 and "stand-in model" in table


def test_prompt_labels():
    assert prompt_labels(DIGIT_PROMPTS) == list(range(10))
    assert prompt_labels(["a 7", "a cat", "one or two"]) == [7, None, None]


@pytest.mark.parametrize("script,argv,message", [
    ("celeba", ["--model", "{ldm}", "--samplers", "ddim,picard"], "unknown sampler"),
    ("celeba", ["--model", "{ldm}", "--ks", "1,x"], "comma list of integers"),
    ("celeba", ["--model", "{ldm}", "--score-ks", "1,x"], "comma list of integers"),
    ("celeba", ["--model", "{ldm}", "--samplers", "dpmsolver,srds"], "unknown sampler(s) dpmsolver;"),
    ("celeba", ["--model", "{ldm}", "--num-samples", "0"], ">= 1"),
    ("celeba", ["--model", "{sd}", "--reference", "{ref}"], "use --family sd"),
    ("sd", ["--model", "{ldm}", "--reference", "{ref}"], "use --family ldm"),
    ("celeba", ["--model", "{ldm}"], "pass --reference DIR"),
    ("celeba", ["--model", "{ldm}", "--reference", "{ref}", "--prompts", "{ref}"], "takes no --prompts"),
    ("sd", ["--model", "{sd}", "--reference", "{ref}", "--prompts", "{missing}"], "is not a file"),
    ("celeba", ["--model", "{ldm}", "--reference", "{missing}", "--samplers", "picard"], "not a folder of images"),
    ("celeba", ["--model", "{ldm}", "--reference", "{ref}"], "needs --adapter"),
    ("celeba", ["--model", "{missing}", "--reference", "{ref}"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(ldm_dir, sd_dir, reference, tmp_path, capsys,  # noqa: F811
                                          script, argv, message):
    argv = [a.format(ldm=ldm_dir, sd=sd_dir, ref=reference, missing=tmp_path / "nope") for a in argv]
    rc = {"celeba": celeba, "sd": sd}[script].main([*argv, "--out", str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")
           or "Traceback" in line]
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out" / "sweep.json").exists()


@pytest.mark.parametrize("family", ["ldm", "sd"])
def test_the_defaults_are_the_shipped_stand_in_and_its_adapter(family):
    """No --model / --adapter: the shipped small model and its PCM adapter, which load together."""
    from pcm_policy.adapters import load_adapter_folder
    from pcm_policy.vision import load_model
    ev = _script("evaluate")
    model_dir, adapter_dir = (ev.ROOT / p for p in ev.SHIPPED[family])
    model = load_model(model_dir)
    spec, _ = load_adapter_folder(model.unet, adapter_dir)
    assert model.family == family and spec.name == "pcm"


def test_reference_features_are_computed_once_per_reference_set_and_extractor(tmp_path, monkeypatch, capsys):
    """The reference statistics (250 of a 260-280 s run) are reused by a later run, whatever its output folder;
    another reference set computes its own; a damaged cache file is recomputed."""
    from pcm_policy.vision.evaluate import reference_features

    monkeypatch.setenv("PCM_POLICY_CACHE", str(tmp_path))
    calls = []

    def feats(images, progress=False):  # stands in for the Inception network: the cache is what is tested
        calls.append((len(images), progress))
        x = np.stack([im.mean((0, 1)) for im in images]).astype(np.float64)
        return {"pool": x, "spatial": x[:, :2]}

    rng = np.random.default_rng(0)
    ref = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(4)]
    a = reference_features(feats, ref, "set_a")
    b = reference_features(feats, ref, "set_a")
    assert calls == [(4, True)] and all(np.array_equal(a[k], b[k]) for k in ("pool", "spatial"))
    assert "reference Inception features (4 images): cached" in capsys.readouterr().out
    reference_features(feats, ref[:3], "set_b")
    assert calls[-1] == (3, True)
    (cached,) = (tmp_path / "reference_features").glob("set_a_*.pt")
    cached.write_bytes(cached.read_bytes()[:50])
    reference_features(feats, ref, "set_a")
    assert len(calls) == 3


def test_the_generic_sweep_and_report_run_the_image_task(ldm_dir, tmp_path):  # noqa: F811
    """The image Task (``vision.task``) on the generic drivers: latent RMSE vs k to DDIM-T on eval seeds, the
    report's CSV, table and the image grid decoded by the task."""
    from pcm_policy.evaluation.report import write_report
    from pcm_policy.evaluation.sweep import SweepConfig, run_sweep
    from pcm_policy.vision.task import make_task

    task = make_task(load_model(ldm_dir), num_steps=4)
    specs = {"sequential": SamplerSpec.named("ddim", num_steps=4),
             "picard": SamplerSpec.named("picard", num_steps=4, tol=0.0)}
    res = run_sweep(task, SweepConfig(samplers=specs, ks=[1, 4], out=tmp_path / "s", conditions=2, dist_tol=1e-3))
    by = {s: {r["k"]: r for r in rows} for s, rows in res["results"].items()}
    assert by["sequential"][4]["distance"] < 2e-6 and by["picard"][4]["distance"] < 1e-4  # sqrt(1e-12): the eps
    assert by["sequential"][1]["distance"] > 1e-3 and res["distance_unit"] == "latent RMSE"
    assert res["k_match"] == {"sequential": 4, "picard": 4}
    write_report(tmp_path / "s", res, task=task, samplers=specs, print_table=False)
    assert all((tmp_path / "s" / f).stat().st_size > 0 for f in ("sweep.csv", "table.md", "grid.png"))


def test_the_grid_shows_the_scored_images_byte_for_byte(ldm_dir, tmp_path):  # noqa: F811
    """The image Task's ``score_images`` (what the report's grid draws) are the first images the score decoded:
    iterate k of one Picard run over the score's first batch, not a fresh k-call run on a smaller batch."""
    from pcm_policy.evaluation.sweep import SweepConfig, limited, run_sweep
    from pcm_policy.sampling import make_sampler
    from pcm_policy.vision import decode_latents, initial_latents
    from pcm_policy.vision.task import sweep_task

    model = load_model(ldm_dir)
    one = np.zeros((1, 16, 16, 3), np.uint8)  # one reference image: the Inception metrics are skipped (fast)
    task, specs, st = sweep_task(model, out=tmp_path, samplers=["sequential", "picard"], ks=[1, 2], num_samples=5,
                                 steps=4, reference=one, batch_size=4, progress=False)
    assert {"fid", "precision"} <= set(st["skipped"]) and st["T"] == 4
    res = run_sweep(task, SweepConfig(samplers=specs, ks=[1, 2], out=tmp_path, conditions=5, batch=4, score_tol=0.01,
                                      score_tol_rel=True, match_field="uint8_diff"))
    assert res["reference"]["uint8_diff"] == 0 and res["reference"]["fid"] is None
    run = make_sampler(specs["picard"].replace(k=2), model.scheduler)
    its = run(task.model_fn, initial_latents(model, range(4)), None, return_iterates=True)[1].iterates
    for k in (1, 2):
        expect = decode_latents(model, its[k][-1])
        assert np.array_equal(task.score_images(limited(task, specs["picard"], k), k), expect)
    assert task.score_images(None, None).shape == (4, 16, 16, 3)
