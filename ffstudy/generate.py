"""FFGo generation: composite first frame + trigger-prefixed prompt → video, transition frames dropped.

Defaults are the paper's (``book/parity.md``, "Sampling"): UniPC flow sampler with shift 5,
50 steps, CFG 6.0 for both experts, expert boundary 0.9, Wan's default negative prompt, 81 frames, seed 42,
the first 4 pixel frames (the transition out of the composite) dropped, mp4 at 16 fps.

One documented difference from the official scripts: they resize the composite straight to the output size,
squashing a 16:9 canvas at 640×480. We keep its aspect ratio: the default output size follows the composite's
aspect, and an explicit ``height``/``width`` of another aspect gets the composite letterboxed in white (the
canvas colour), with the entity geometry moved along.
"""
from __future__ import annotations

import contextlib
import errno
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .compose import Composite, letterbox
from .io import atomic_path, exclusive_output, load_image, save_image, to_uint8, write_json, write_video
from .models import at_flow_shift, backbone_of, is_stochastic, sigma_schedule_of

TRIGGER = "ad23r2 the camera view suddenly changes."
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's range
OUTPUT_NAMES = ("video.mp4", "video_with_transition.mp4", "composite.png", "generation.json")


class ResultKeptElsewhereError(RuntimeError):
    """The output folder could not be written after sampling; the result was saved in another folder."""


def with_trigger(prompt: str, trigger: str | None = TRIGGER) -> str:
    """Prefix ``trigger`` unless the prompt already contains it; runs of white space become one space."""
    prompt = " ".join(str(prompt).split())
    if not trigger:
        return prompt
    trigger = " ".join(trigger.split())
    if trigger in prompt:
        return prompt
    return f"{trigger} {prompt}".strip()


def token_factors(pipe) -> tuple[int, int]:
    """(temporal, spatial) pixel stride of one transformer token: VAE stride × patch size."""
    patch = pipe.transformer.config.patch_size
    return pipe.vae_scale_factor_temporal * patch[0], pipe.vae_scale_factor_spatial * patch[1]


def check_video_size(pipe, num_frames: int, height: int, width: int) -> None:
    """Raise a clear error for sizes the pipeline would otherwise silently round."""
    temporal, spatial = token_factors(pipe)
    if num_frames < 1 or (num_frames - 1) % temporal:
        k = max(1, round((num_frames - 1) / temporal))
        raise ValueError(f"num_frames={num_frames} must be {temporal}k+1 (the VAE packs {temporal} frames into one "
                         f"latent after the first); try {temporal * k + 1}")
    for value, argument in ((height, "height"), (width, "width")):
        if value < spatial or value % spatial:
            raise ValueError(f"{argument}={value} must be a positive multiple of {spatial} "
                             f"(VAE stride x patch size); try {max(spatial, round(value / spatial) * spatial)}")


def size_for_aspect(aspect: float, area: int, multiple: int) -> tuple[int, int]:
    """(height, width), multiples of ``multiple``, with about ``area`` pixels and the given width/height aspect."""
    height = max(multiple, round(math.sqrt(area / aspect) / multiple) * multiple)
    width = max(multiple, round(height * aspect / multiple) * multiple)
    return height, width


def fit_first_frame(first_frame, height: int, width: int) -> Composite | Image.Image:
    """Resize keeping the aspect ratio and pad with white; a Composite keeps its geometry in step."""
    if isinstance(first_frame, Composite):
        return first_frame.fit(height, width)
    image = load_image(first_frame, argument="composite").convert("RGB")
    return image if image.size == (width, height) else letterbox(image, height, width)[0]


@dataclass
class FFGoVideo:
    """A generated video: ``frames`` after dropping the transition, ``transition`` the dropped ones."""

    frames: np.ndarray  # (F, H, W, 3) uint8
    transition: np.ndarray  # (drop_first_frames, H, W, 3) uint8
    first_frame: Composite | Image.Image
    prompt: str
    settings: dict = field(default_factory=dict)
    fps: int = 16

    @property
    def full(self) -> np.ndarray:
        return np.concatenate([self.transition, self.frames])

    @property
    def first_frame_image(self) -> Image.Image:
        return self.first_frame.image if isinstance(self.first_frame, Composite) else self.first_frame

    def save(self, directory: str | Path, with_transition: bool = False) -> dict[str, Path]:
        """Write ``video.mp4`` (transition dropped), ``composite.png`` and ``generation.json``; optionally
        ``video_with_transition.mp4``. The files are all written before any replaces its old version, so the
        folder never holds a mix of two results. If they cannot be written there (full disk, permissions), the
        result is saved in a new temporary folder and :class:`ResultKeptElsewhereError` says where."""
        directory = Path(directory)
        try:
            return self._write(directory, with_transition)
        except OSError as error:
            rescue = Path(tempfile.mkdtemp(prefix="ffstudy-unsaved-"))
            try:
                self._write(rescue, with_transition)
            except OSError as second:
                shutil.rmtree(rescue, ignore_errors=True)
                raise ResultKeptElsewhereError(f"could not write the result into {directory} ({_reason(error)}) "
                                               f"nor into a temporary folder ({_reason(second)})") from error
            raise ResultKeptElsewhereError(f"could not write the result into {directory} ({_reason(error)}); it "
                                           f"was saved in {rescue} instead: move it from there") from error

    def _write(self, directory: Path, with_transition: bool) -> dict[str, Path]:
        writers = {"video.mp4": lambda tmp: write_video(tmp, self.frames, fps=self.fps),
                   "composite.png": lambda tmp: save_image(tmp, self.first_frame_image),
                   "generation.json": lambda tmp: write_json(tmp, {"prompt": self.prompt, **self.settings})}
        if with_transition:
            writers["video_with_transition.mp4"] = lambda tmp: write_video(tmp, self.full, self.fps)
        with contextlib.ExitStack() as stack:
            for name, write in writers.items():
                try:
                    write(stack.enter_context(atomic_path(directory / name)))
                except OSError as error:  # name the file, not its temporary stand-in
                    raise OSError(error.errno or errno.EIO, error.strerror or str(error), str(directory / name)
                                  ) from error
        paths = {"video": directory / "video.mp4", "composite": directory / "composite.png",
                 "settings": directory / "generation.json"}
        if with_transition:
            paths["video_with_transition"] = directory / "video_with_transition.mp4"
        return paths


def _reason(error: OSError) -> str:
    return f"{error.filename}: {error.strerror}" if error.filename and error.strerror else str(error)


def check_sampling_settings(num_inference_steps: int, seed: int, **numbers: float | None) -> None:
    """Refuse, before any work, settings the sampler would take silently: NaN guidance gives a NaN video."""
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps={num_inference_steps!r} must be an integer >= 1")
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed={seed!r} must be an integer in [0, 2**64 - 1]")
    for name, value in numbers.items():
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name}={value!r} must be a finite number")


def generate(
    pipe,
    composite,
    prompt: str,
    *,
    negative_prompt: str = WAN_NEGATIVE_PROMPT,
    trigger: str | None = TRIGGER,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float | None = None,
    guidance_scale_2: float | None = None,
    boundary_ratio: float = 0.9,
    flow_shift: float | None = None,
    seed: int = 42,
    drop_first_frames: int = 4,
    max_sequence_length: int | None = None,
    fps: int = 16,
    progress: bool = True,
    output_dir: str | Path | None = None,
) -> FFGoVideo:
    """Generate an FFGo video from a composite first frame.

    ``composite``: a :class:`~ffstudy.compose.Composite`, a PIL image or an image path. ``num_frames``,
    ``height``, ``width`` default to the backbone's native clip (81 frames at 1280×720 for Wan2.2-A14B) at the
    composite's aspect ratio. ``guidance_scale`` and ``flow_shift`` default to the backbone's (FFGo's 6.0 and 5.0
    for Wan). ``guidance_scale_2`` (low-noise expert) defaults to ``guidance_scale``;
    ``boundary_ratio`` only matters for two-expert backbones. ``trigger=None`` leaves the prompt alone.
    ``max_sequence_length`` defaults to the text length the backbone was trained with (512 for Wan).
    The sampler is ``pipe.scheduler`` at ``flow_shift``: FFGo's UniPC as loaded, or a diffusers
    ``FlowMatchEulerDiscreteScheduler`` you set (with ``stochastic_sampling=True`` too, seeded by ``seed``).
    With ``output_dir`` the result is also saved there; the folder is checked, and held against other runs,
    before sampling.
    """
    check_sampling_settings(num_inference_steps, seed, guidance_scale=guidance_scale,
                            guidance_scale_2=guidance_scale_2, boundary_ratio=boundary_ratio, flow_shift=flow_shift)
    spec = backbone_of(pipe)
    num_frames = num_frames if num_frames is not None else (spec.default_frames if spec else 81)
    max_sequence_length = max_sequence_length or (spec.max_sequence_length if spec else 512)
    guidance_scale = guidance_scale if guidance_scale is not None else (spec.guidance_scale if spec else 6.0)
    flow_shift = flow_shift if flow_shift is not None else (spec.flow_shift if spec else 5.0)
    if height is None or width is None:
        first = composite.image if isinstance(composite, Composite) else load_image(composite, argument="composite")
        default_h, default_w = spec.default_size if spec else (720, 1280)
        fit_h, fit_w = size_for_aspect(first.width / first.height, default_h * default_w, token_factors(pipe)[1])
        height, width = height or fit_h, width or fit_w
    check_video_size(pipe, num_frames, height, width)
    if not 0 <= drop_first_frames < num_frames:
        raise ValueError(f"drop_first_frames={drop_first_frames} must be in [0, num_frames={num_frames})")
    first_frame = fit_first_frame(composite, height, width)
    full_prompt = with_trigger(prompt, trigger)
    with contextlib.ExitStack() as held:
        if output_dir is not None:  # checked and held before sampling, which may take hours
            held.enter_context(exclusive_output(output_dir, OUTPUT_NAMES, "output_dir"))
        pipe.scheduler = at_flow_shift(pipe.scheduler, flow_shift)
        if is_stochastic(pipe.scheduler):  # diffusers' Wan pipelines give scheduler.step no generator, so its
            # fresh noise comes from torch's global RNG: seeded here, in a fork, so the seed fixes the video
            held.enter_context(torch.random.fork_rng(devices=range(torch.cuda.device_count())))
            torch.manual_seed(seed)
        two_experts = getattr(pipe, "transformer_2", None) is not None
        if two_experts and guidance_scale_2 is None:
            guidance_scale_2 = guidance_scale
        saved_boundary = pipe.config.boundary_ratio
        if two_experts:
            pipe.register_to_config(boundary_ratio=boundary_ratio)
        pipe.set_progress_bar_config(disable=not progress, desc="FFGo denoising")
        image = first_frame.image if isinstance(first_frame, Composite) else first_frame
        try:
            frames = pipe(
                image=image, prompt=full_prompt, negative_prompt=negative_prompt, height=height, width=width,
                num_frames=num_frames, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                guidance_scale_2=guidance_scale_2 if two_experts else None,
                generator=torch.Generator("cpu").manual_seed(seed), max_sequence_length=max_sequence_length,
                output_type="np").frames[0]
        finally:
            pipe.register_to_config(boundary_ratio=saved_boundary)
        frames = to_uint8(frames)
        settings = dict(backbone=spec.name if spec else None, negative_prompt=negative_prompt, num_frames=num_frames,
                        height=height, width=width, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, guidance_scale_2=guidance_scale_2 if two_experts else None,
                        boundary_ratio=boundary_ratio if two_experts else None, flow_shift=flow_shift,
                        sigma_schedule=sigma_schedule_of(pipe.scheduler), scheduler=type(pipe.scheduler).__name__,
                        stochastic_sampling=is_stochastic(pipe.scheduler), seed=seed,
                        drop_first_frames=drop_first_frames, fps=fps)
        video = FFGoVideo(frames[drop_first_frames:], frames[:drop_first_frames], first_frame, full_prompt,
                          settings, fps)
        if output_dir is not None:
            video.save(output_dir)
    return video
