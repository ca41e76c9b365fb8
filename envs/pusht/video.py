"""Write episode frames to .mp4 or .gif, and draw text captions onto frames.

    write_video(frames, "outputs/videos/seed0.mp4", fps=10)
    write_video([caption(f, "PCM  k=3  12 ms") for f in frames], "out.gif")

mp4: H.264 (libx264) in yuv420p through imageio-ffmpeg, constant rate factor 22 (the reference's
video recorder setting, Diffusion Policy reference). yuv420p needs even dimensions and players like multiples of
16 (H.264 macro blocks), so frames are padded at the right/bottom edge, by replicating the last
row/column, up to a multiple of `block` (16); sizes that already fit (96, 256, 512) are unchanged.
gif: Pillow through imageio, looping; frame duration 1000/fps ms. Pillow merges identical
consecutive frames into one longer frame, so a gif can hold fewer frames than given (same timing).

Writes are atomic: the file is written under a temporary name with the same suffix in the target
folder, then renamed, so a crash never leaves a half-written video under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

SUFFIXES = (".mp4", ".gif")
CRF = 22


def _as_frames(frames: Iterable[np.ndarray]) -> list[np.ndarray]:
    out = []
    for i, f in enumerate(frames):
        f = np.asarray(f)
        if f.ndim == 2:
            f = np.repeat(f[..., None], 3, axis=2)
        if f.ndim != 3 or f.shape[2] not in (3, 4):
            raise ValueError(f"frame {i} has shape {f.shape}; expected (H, W, 3) RGB (or (H, W) grey)")
        if f.dtype != np.uint8:
            if np.issubdtype(f.dtype, np.floating) and f.size and float(np.nanmax(f)) <= 1.0:
                f = f * 255.0  # float images in [0, 1]
            f = np.clip(np.nan_to_num(f), 0, 255).astype(np.uint8)
        f = f[..., :3]
        if out and f.shape != out[0].shape:
            raise ValueError(f"frame {i} has shape {f.shape} but frame 0 has {out[0].shape}; all frames "
                             "of a video must have one size")
        out.append(np.ascontiguousarray(f))
    if not out:
        raise ValueError("no frames to write: the frame list is empty")
    return out


def _pad(frames: list[np.ndarray], block: int) -> list[np.ndarray]:
    h, w = frames[0].shape[:2]
    ph, pw = -h % block, -w % block
    if not (ph or pw):
        return frames
    return [np.pad(f, ((0, ph), (0, pw), (0, 0)), mode="edge") for f in frames]


def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float = 10, *,
                crf: int = CRF, block: int = 16) -> Path:
    """Write `frames` ((H, W, 3) uint8 each) to `path`, an .mp4 or a .gif chosen by the suffix.

    Creates the parent folder. Returns the path. Raises ValueError for an unknown suffix, no frames,
    frames of mixed sizes or a non-positive fps.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unknown video suffix {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    frames = _as_frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{suffix}")
    try:
        if suffix == ".mp4":
            _write_mp4(_pad(frames, max(2, block)), tmp, fps, crf)
        else:
            _write_gif(frames, tmp, fps)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _write_mp4(frames: list[np.ndarray], path: Path, fps: float, crf: int) -> None:
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the ffmpeg binary imageio uses)
    except ImportError as e:  # pragma: no cover - declared dependencies
        raise ImportError("writing .mp4 needs imageio and imageio-ffmpeg: "
                          "pip install imageio imageio-ffmpeg") from e
    writer = imageio.get_writer(
        str(path), format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
        quality=None, macro_block_size=1, ffmpeg_log_level="error",
        output_params=["-crf", str(crf), "-preset", "medium", "-movflags", "+faststart"])
    try:
        for f in frames:
            writer.append_data(f)
    finally:
        writer.close()


def _write_gif(frames: list[np.ndarray], path: Path, fps: float) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, np.stack(frames), extension=".gif", duration=1000.0 / fps, loop=0)


# --------------------------------------------------------------------------- captions
_FONTS: dict[int, object] = {}


def _font(px: int):
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError as e:  # pragma: no cover - pygame is a declared dependency
        raise ImportError("caption() needs pygame: pip install pygame") from e
    if not pygame.font.get_init():
        pygame.font.init()  # fonts need no display: works headless
    if px not in _FONTS:
        _FONTS[px] = pygame.font.Font(None, px)  # pygame's bundled default font
    return pygame, _FONTS[px]


def caption(frame: np.ndarray, text: str, *, height: int | None = None, where: str = "top",
            fg=(0, 0, 0), bg=(255, 255, 255)) -> np.ndarray:
    """`frame` with a strip of text added above (`where="top"`) or below ("bottom") it.

    The strip is `height` px tall (default: about 1/8 of the frame width per line, at least 12 px);
    lines are split on newlines and shrunk to fit the width. Returns a new (H + strip, W, 3) uint8
    array; frames captioned with the same settings keep one size, as a video needs.
    """
    if where not in ("top", "bottom"):
        raise ValueError(f"where must be 'top' or 'bottom', got {where!r}")
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] < 3:
        raise ValueError(f"caption needs an (H, W, 3) frame, got shape {frame.shape}")
    frame = frame[..., :3].astype(np.uint8, copy=False)
    w = frame.shape[1]
    lines = str(text).split("\n")
    line_h = max(12, w // 8) if height is None else max(1, height // len(lines))
    strip_h = line_h * len(lines) if height is None else height
    pygame, font = _font(max(8, int(line_h * 0.95)))
    strip = pygame.Surface((w, strip_h))
    strip.fill(bg)
    pad = max(1, line_h // 6)
    for i, line in enumerate(lines):
        text_surf = font.render(line, True, fg, bg)  # 8-bit; smoothscale needs 24/32-bit
        surf = pygame.Surface(text_surf.get_size())
        surf.blit(text_surf, (0, 0))
        tw, th = surf.get_size()
        scale = min(1.0, (w - 2 * pad) / max(1, tw), line_h / max(1, th))
        if scale < 1.0:
            surf = pygame.transform.smoothscale(surf, (max(1, int(tw * scale)), max(1, int(th * scale))))
        y = i * line_h + (line_h - surf.get_height()) // 2
        strip.blit(surf, (pad, y))
    strip_arr = pygame.surfarray.array3d(strip).transpose(1, 0, 2)
    parts = (strip_arr, frame) if where == "top" else (frame, strip_arr)
    return np.ascontiguousarray(np.concatenate(parts, axis=0))
