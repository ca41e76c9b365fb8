"""Load the two real image-model folder layouts from local files, never from the hub.

    ldm  ``CompVis/ldm-celebahq-256`` (diffusers ``LDMPipeline``): model_index.json, unet/ (UNet2DModel),
         vqvae/ (VQModel), scheduler/ (DDIMScheduler). Unconditional.
    sd   ``CompVis/stable-diffusion-v1-4`` (``StableDiffusionPipeline``): model_index.json,
         unet/ (UNet2DConditionModel), vae/ (AutoencoderKL), text_encoder/ (CLIPTextModel),
         tokenizer/ (CLIPTokenizer), scheduler/ (a PNDM config whose fields also define DDIM; a
         ``DDIMScheduler`` is built from it). safety_checker/ and feature_extractor/ are not needed.

The family is read from ``model_index.json``'s ``_class_name``. The folder is checked before anything
is loaded: a missing folder, component, config or weight file (a config without weights is the usual
half-finished download) raises ONE ``ModelFolderError`` listing everything missing and the layout
expected. Every ``from_pretrained`` runs with ``local_files_only=True``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["LAYOUTS", "ImageModel", "ModelFolderError", "check_folder", "load_model", "parse_dtype"]


class ModelFolderError(ValueError):
    """A model folder that is missing, incomplete or not one of the supported layouts."""


@dataclass(frozen=True)
class Layout:
    family: str
    pipeline: str  # model_index.json's _class_name
    repo: str  # the hub repository whose layout this is
    components: dict[str, str]  # subfolder -> class


LAYOUTS = {
    "ldm": Layout("ldm", "LDMPipeline", "CompVis/ldm-celebahq-256",
                  {"unet": "UNet2DModel", "vqvae": "VQModel", "scheduler": "DDIMScheduler"}),
    "sd": Layout("sd", "StableDiffusionPipeline", "CompVis/stable-diffusion-v1-4",
                 {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel",
                  "tokenizer": "CLIPTokenizer", "scheduler": "PNDM or DDIM config"}),
}

# Weight files: (stem, extensions); a ".fp16" variant or a sharded index also counts.
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model", ("safetensors", "bin"))
_TRANSFORMERS_WEIGHTS = ("model", ("safetensors",)), ("pytorch_model", ("bin",))


def _describe(layout: Layout) -> str:
    parts = ", ".join(f"{name}/ ({cls})" for name, cls in layout.components.items())
    return f"the {layout.repo} layout: model_index.json, {parts}"


def _weights(folder: Path, kinds) -> tuple[bool, str | None]:
    """Whether ``folder`` holds weights of one of ``kinds``, and the variant ("fp16") if only that exists."""
    for stem, exts in kinds:
        for ext in exts:
            if (folder / f"{stem}.{ext}").is_file() or (folder / f"{stem}.{ext}.index.json").is_file():
                return True, None
    for stem, exts in kinds:
        for ext in exts:
            if (folder / f"{stem}.fp16.{ext}").is_file() or (folder / f"{stem}.{ext}.index.fp16.json").is_file():
                return True, "fp16"
    return False, None


def _missing(root: Path, name: str, cls: str) -> list[str]:
    """What component ``name`` (class ``cls``) lacks under ``root``."""
    sub = root / name
    if not sub.is_dir():
        return [f"{name}/ ({cls})"]
    if name == "scheduler":
        return [] if (sub / "scheduler_config.json").is_file() else [f"{name}/scheduler_config.json"]
    if name == "tokenizer":
        if (sub / "tokenizer.json").is_file() or ((sub / "vocab.json").is_file() and (sub / "merges.txt").is_file()):
            return []
        return [f"{name}/vocab.json + merges.txt (or tokenizer.json)"]
    out = [] if (sub / "config.json").is_file() else [f"{name}/config.json"]
    kinds = _TRANSFORMERS_WEIGHTS if name == "text_encoder" else (_DIFFUSERS_WEIGHTS,)
    if not _weights(sub, kinds)[0]:
        files = " or ".join(f"{stem}.{ext}" for stem, exts in kinds for ext in exts)
        why = "; the config is there, the download looks unfinished" if not out else ""
        out.append(f"{name}/{files} (weights{why})")
    return out


def check_folder(path: str | Path) -> Layout:
    """The layout of a complete model folder.

    Args:
        path: a local folder in one of ``LAYOUTS``.
    Returns:
        its ``Layout``.
    Raises:
        ModelFolderError: no such folder, no or an unreadable ``model_index.json``, an unsupported
            pipeline class, or missing components / configs / weights (all listed in one message).
    """
    root = Path(path)
    expected = " or ".join(_describe(lay) for lay in LAYOUTS.values())
    if not root.is_dir():
        raise ModelFolderError(f"model folder {root} does not exist; expected {expected}")
    index = root / "model_index.json"
    if not index.is_file():
        raise ModelFolderError(f"{root} has no model_index.json; expected {expected}")
    try:
        cls = json.loads(index.read_text()).get("_class_name")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ModelFolderError(f"{index} is not a readable pipeline index ({e})") from e
    layout = next((lay for lay in LAYOUTS.values() if lay.pipeline == cls), None)
    if layout is None:
        raise ModelFolderError(f"{index} names pipeline {cls!r}; supported: "
                               f"{', '.join(lay.pipeline for lay in LAYOUTS.values())} ({expected})")
    missing = [m for name, c in layout.components.items() for m in _missing(root, name, c)]
    if missing:
        raise ModelFolderError(f"{root} is incomplete: missing {'; '.join(missing)}. Expected {_describe(layout)}")
    return layout


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"float32" | "float16" | "bfloat16" | torch.dtype | None`` -> torch dtype (None: keep the saved one)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"dtype must be one of {', '.join(names)}, got {dtype!r}")
    return names[dtype]


@dataclass
class ImageModel:
    """The parts of an image diffusion model that sampling needs (``load_model``).

    ``autoencoder`` is the VQModel (ldm) or AutoencoderKL (sd); ``text_encoder`` / ``tokenizer`` are
    None for the unconditional family. ``scheduler`` is a ``DDIMScheduler`` (read by the sampler core);
    ``scheduler_config`` the folder's own config, to build other solvers from as a pipeline user would
    (``DPMSolverMultistepScheduler.from_config``).
    """

    family: str
    unet: torch.nn.Module
    autoencoder: torch.nn.Module
    scheduler: object
    text_encoder: torch.nn.Module | None = None
    tokenizer: object | None = None
    path: Path | None = None
    scheduler_config: dict | None = None

    @property
    def conditional(self) -> bool:
        return self.text_encoder is not None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one latent, as the pipelines size it (UNet ``in_channels`` x ``sample_size``)."""
        c, s = self.unet.config.in_channels, self.unet.config.sample_size
        h, w = (s, s) if isinstance(s, int) else s
        return c, h, w


def _load(fn, root: Path, name: str, **kw):
    try:
        return fn(root, subfolder=name, local_files_only=True, **kw)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelFolderError(f"could not load {root / name}: {e}") from e


def load_model(path: str | Path, *, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu"
               ) -> ImageModel:
    """Load an LDM-CelebA or SD v1.4 folder (``check_folder`` first), in eval mode, from local files only.

    Args:
        path: the model folder.
        dtype: the UNet's dtype ("float16" / "bfloat16"; None / "float32": as saved). The
            autoencoder and text encoder stay float32 and the sampled trajectory stays float32.
        device: where the modules go.
    Returns:
        an ``ImageModel``.
    Raises:
        ModelFolderError: an incomplete or unsupported folder, or a component that fails to load.
        ValueError: an unknown dtype.
    """
    from diffusers import DDIMScheduler, UNet2DConditionModel, UNet2DModel

    dtype = parse_dtype(dtype)
    root = Path(path)
    layout = check_folder(root)
    ae_name = "vqvae" if layout.family == "ldm" else "vae"

    def variant(name, kinds=(_DIFFUSERS_WEIGHTS,)):
        v = _weights(root / name, kinds)[1]
        return {"variant": v} if v else {}

    unet_cls = UNet2DModel if layout.family == "ldm" else UNet2DConditionModel
    unet = _load(unet_cls.from_pretrained, root, "unet", **variant("unet"),
                 **({"torch_dtype": dtype} if dtype else {}))
    if layout.family == "ldm":
        from diffusers import VQModel as AE
    else:
        from diffusers import AutoencoderKL as AE
    ae = _load(AE.from_pretrained, root, ae_name, **variant(ae_name))
    sched_cfg = _load(DDIMScheduler.load_config, root, "scheduler")
    scheduler = DDIMScheduler.from_config(sched_cfg)  # SD's PNDM config carries the DDIM fields
    text_encoder = tokenizer = None
    if layout.family == "sd":
        from transformers import CLIPTextModel, CLIPTokenizer

        text_encoder = _load(CLIPTextModel.from_pretrained, root, "text_encoder",
                             **variant("text_encoder", _TRANSFORMERS_WEIGHTS))
        tokenizer = _load(CLIPTokenizer.from_pretrained, root, "tokenizer")
        text_encoder.to(device).eval()
    unet.to(device).eval()
    ae.to(device).eval()
    return ImageModel(layout.family, unet, ae, scheduler, text_encoder, tokenizer, root, dict(sched_cfg))
