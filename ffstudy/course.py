"""What every course notebook does first, in one call, so the chapters stay about the method."""
from __future__ import annotations

import warnings


def setup(threads: int = 2, seed: int = 0) -> str:
    """Quiet progress bars and warnings, point mediapy at imageio-ffmpeg's binary, fix CPU threads and the
    global seed; returns the device the chapter will use."""
    import imageio_ffmpeg
    import mediapy
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from .models import default_device

    warnings.filterwarnings("ignore", message=".*torchvision.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    mediapy.set_ffmpeg(imageio_ffmpeg.get_ffmpeg_exe())
    device = default_device().type
    if device == "cpu":
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return device


def show_video(frames, fps: int = 16, width: int = 320, title: str | None = None) -> None:
    """Embed a video (uint8 frames) in the notebook."""
    import mediapy

    mediapy.show_video(frames, fps=fps, width=width, title=title)


def show_videos(videos: dict, fps: int = 16, width: int = 240) -> None:
    """Several videos side by side, titled by their keys."""
    import mediapy

    mediapy.show_videos(list(videos.values()), titles=list(videos), fps=fps, width=width)
