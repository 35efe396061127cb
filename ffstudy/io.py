"""File helpers shared by every step: atomic writes, image and video IO with errors that name the file.

Every writer goes through :func:`atomic_path` (or :func:`atomic_dir` for a folder), so an interrupted run never
leaves a half-written PNG, mp4, JSON, checkpoint or model folder where a good one used to be.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (same suffix); move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; only if the block succeeds does it replace ``path`` whole,
    so a folder of many files (a diffusers pipeline) is never left half old and half new, nor with stale files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a folder: give a folder path to write into")
    staging, old = path.with_name(f".{path.name}.partial"), path.with_name(f".{path.name}.old")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        staging.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: str | os.PathLike, obj) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    return Path(path)


def save_image(path: str | os.PathLike, image: Image.Image) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp)
    return Path(path)


def load_image(source, *, argument: str = "image") -> Image.Image:
    """Open ``source`` (a path or a PIL image) fully, raising errors that say which argument was bad."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        array = source
        if array.dtype != np.uint8:
            array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
        return Image.fromarray(array)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"{argument}: expected a path, a PIL image or an array, got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{argument}: file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{argument}: {path} is not a file")
    try:
        with Image.open(path) as handle:
            handle.load()
            return handle.copy()
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{argument}: {path} is not a readable image ({error}); use a PNG or JPEG file") from error


def _ffmpeg():
    import imageio_ffmpeg
    import mediapy

    mediapy.set_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe())
    return mediapy


def to_uint8(frames) -> np.ndarray:
    """Frames as uint8 ``(F, H, W, 3)``; floats are read as values in [0, 1]."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def write_video(path: str | os.PathLike, frames, fps: float = 16) -> Path:
    """Write ``(F, H, W, 3)`` frames (uint8, or floats in [0, 1]) as an H.264 mp4, atomically."""
    frames = to_uint8(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames: expected shape (F, H, W, 3) with F >= 1, got {frames.shape}")
    mediapy = _ffmpeg()
    with atomic_path(path) as tmp:
        mediapy.write_video(tmp, frames, fps=fps)
    return Path(path)


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a video as uint8 ``(F, H, W, 3)`` and its frame rate."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    mediapy = _ffmpeg()
    try:
        video = mediapy.read_video(path)
    except Exception as error:  # ffmpeg reports unreadable files as RuntimeError/ValueError/OSError variants
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(error).__name__  # ffmpeg's last line says why; its banner does not
        raise ValueError(f"{path} is not a readable video ({reason})") from error
    frames = np.asarray(video)
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"{path} holds no video frames")
    return frames, float(video.metadata.fps)
