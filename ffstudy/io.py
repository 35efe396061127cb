"""File helpers shared by every step: atomic writes, image and video IO with errors that name the file.

Every writer goes through :func:`atomic_path` (or :func:`atomic_dir` for a folder), so an interrupted run never
leaves a half-written PNG, mp4, JSON, checkpoint or model folder where a good one used to be.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError


_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _owner_tag() -> str:
    """``<pid>_<host>`` in every temporary name, so a later run can tell a dead run's leftovers from live work."""
    return f"{os.getpid()}_{_HOST}"


def _dead(pid: int, host: str) -> bool:
    """Whether the writer that left a temporary name is gone: only provable for a process of this host."""
    if host != _HOST:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _umask() -> int:
    """The process umask, read without setting it (``os.umask`` would change it for other threads meanwhile)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(path: Path, default: int) -> int:
    """An existing file keeps its mode; a new one gets ``default`` less the umask, as ``open`` would give it."""
    with contextlib.suppress(FileNotFoundError):
        return stat.S_IMODE(path.stat().st_mode)
    return default & ~_umask()


def _leftovers(path: Path, suffix: str) -> Iterator[tuple[Path, str]]:
    """Temporary siblings of ``path`` that a killed run left (its process is gone), with their kind."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)_([0-9a-f]{{6}})\.[a-z0-9_]+{re.escape(suffix)}$")
    with contextlib.suppress(OSError):
        for sibling in path.parent.iterdir():
            match = pattern.match(sibling.name)
            if match and _dead(int(match.group(1)), match.group(2)):
                yield sibling, suffix


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (same suffix); move it into place only if the block succeeds. The
    file gets the mode ``open`` would give it (the umask), or keeps the mode of the file it replaces. Temporary
    files of killed runs are removed on the way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover, _ in _leftovers(path.with_name(path.stem), path.suffix):
        leftover.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{_owner_tag()}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        try:
            yield tmp
        except OSError as error:
            if error.filename is None and error.errno is not None:  # a failed write() (a full disk) names no file
                raise type(error)(error.errno, error.strerror, str(path)) from error
            raise
        os.chmod(tmp, _final_mode(path, 0o666))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_tree(path: str | os.PathLike) -> None:
    """Flush a file, or a folder and everything in it, to the disk, and the folder holding it: a model or
    checkpoint published by a rename must not come back empty after a power cut."""
    path = Path(path)
    for item in [path, *(sorted(path.rglob("*")) if path.is_dir() else []), path.parent]:
        fd = os.open(item, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    if function is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if function(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), str(b))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; only if the block succeeds does it replace ``path`` whole,
    so a folder of many files (a diffusers pipeline) is never left half old and half new, nor with stale files.
    Each writer stages in a folder of its own and swaps it in with one atomic exchange, so concurrent writers
    leave one of their complete results and a kill at any moment leaves the old or the new folder; the files are
    flushed to the disk before. Where the exchange is unavailable, two renames are used and a kill between them
    is repaired by the next writer."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a folder: give a folder path to write into")
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover, kind in [*_leftovers(path, ".old"), *_leftovers(path, ".partial")]:
        if kind == ".old" and not path.exists():
            leftover.rename(path)  # killed between the two renames: the old folder was complete
        else:
            shutil.rmtree(leftover, ignore_errors=True)
    mode = _final_mode(path, 0o777)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".partial", dir=path.parent))
    try:
        yield staging
        os.chmod(staging, mode)
        fsync_tree(staging)
        try:
            os.rename(staging, path)  # nothing there yet (or an empty folder)
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if not _exchange(staging, path):  # staging now holds the old folder, removed below
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".old", dir=path.parent))
                os.replace(path, old)
                os.rename(staging, path)
                shutil.rmtree(old, ignore_errors=True)
        fsync_tree(path)  # and the folder that now names it
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class OutputBusyError(RuntimeError):
    """Another live ffstudy run is writing into the same output folder."""


@contextlib.contextmanager
def exclusive_output(directory: str | os.PathLike, names=(), argument: str = "--out") -> Iterator[Path]:
    """Hold ``directory`` for this run only, checked before any work: it must be (or become) a writable folder
    in which none of ``names`` is a folder, and no other live run may hold it (a killed run's lock is taken
    over). A folder created here is removed again if the block fails before writing into it."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{argument} {directory} is a file, not a folder: give a folder for the outputs")
    for name in names:
        if (directory / name).is_dir():
            raise ValueError(f"{argument} {directory}: {directory / name} is a folder where the output file "
                             f"{name} goes: move it away or choose another folder")
    created = not directory.exists()
    lock = directory / ".ffstudy.lock"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = _take_lock(lock)
    except OutputBusyError:
        raise
    except OSError as error:
        raise ValueError(f"{argument} {directory}: cannot write there ({error.strerror or error}); choose a "
                         f"writable folder") from error
    ok = False
    try:
        os.write(fd, _owner_tag().encode())
        os.close(fd)
        yield directory
        ok = True
    finally:
        lock.unlink(missing_ok=True)
        if created and not ok:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if still empty


def _take_lock(lock: Path) -> int:
    for _ in range(2):
        try:
            return os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock.read_text().strip() if lock.is_file() else ""
            match = re.fullmatch(r"(\d+)_([0-9a-f]{6})", holder)
            if match and not _dead(int(match.group(1)), match.group(2)):
                raise OutputBusyError(f"{lock.parent} is being written by another ffstudy run (process "
                                      f"{match.group(1)}): wait for it to finish or choose another output folder")
            lock.unlink(missing_ok=True)  # left by a killed run (or unreadable): take it over
    raise OutputBusyError(f"{lock.parent}: another ffstudy run took the output folder first; choose another one")


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
            image = handle.copy()
    except Image.DecompressionBombError as error:
        raise ValueError(f"{argument}: {path} has more pixels than Pillow reads safely ({error}); scale it down "
                         "first") from error
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{argument}: {path} is not a readable image ({error}); use a PNG or JPEG file") from error
    return _to_8_bit(image)


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit grey images (a 16-bit PNG opens as mode I;16 or I) scaled to 8 bits: Pillow's own conversion to
    RGB clips their values to black and white."""
    if image.mode != "I" and not image.mode.startswith("I;16"):
        return image
    values = np.asarray(image, dtype=np.float64) / 257.0
    return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8))


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
        try:
            mediapy.write_video(tmp, frames, fps=fps)
        except RuntimeError as error:  # ffmpeg failed to write (a full disk, a file size limit): an OS error
            raise OSError(errno.EIO, "ffmpeg could not write the video", str(path)) from error
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
