"""Measure the pretrained SpriteWorld model on held-out seeds and write its model card numbers.

- VAE reconstruction PSNR on full clips, split into sprite and scene pixels, and how each sprite colour comes
  back through the VAE (identification by colour can only work if it does);
- generated videos (first frame and caption of a held-out clip) against the real clip: frame 0 against the
  conditioning frame, the never-covered scene, sharpness, every first-frame sprite kept as an object in the last
  frame, every sprite animated, drifting sprites going the caption's way;
- the same measures on four controls: the real clips and their VAE round trips (should pass), VAE-decoded N(0, 1)
  latents and the first frame held still (should fail): a measure that a control passes the wrong way is broken;
- probe retrieval accuracy per block, teacher-forced: the held-out clip itself is noised to σ and denoised once
  with the probe installed, so every later-frame token has a ground-truth sprite;
- speed: one 17-frame video with 20 steps.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..data import TrainingClip, encode_clip, video_frames, video_tensor
from ..generate import FFGoVideo, generate
from ..probe import FirstFrameProbe
from ..train import sample_flow_inputs
from .metrics import (clip_fidelity, first_frame_entities, masked_psnr, melt_sprites, psnr, retrieval_accuracy,
                      sprites_as_discs)
from .pretrain import EVAL_SEED0
from .world import COLOURS, WorldConfig, generate_clip

EVALUATION_VIDEOS = 120  # held-out clips the card generates from: at 40, one video moves a share by 2.5 points


@torch.no_grad()
def reconstruct(vae, frames: np.ndarray) -> np.ndarray:
    """``frames`` (T, H, W, 3) uint8 through the VAE (posterior mode) and back."""
    decoded = vae.decode(vae.encode(video_tensor(frames)[None]).latent_dist.mode()).sample
    return video_frames(decoded[0])


def vae_psnr(pipe, seeds, world: WorldConfig = WorldConfig()) -> dict:
    """Mean PSNR per clip over all pixels, over the sprites' pixels and over the scene's (ground-truth masks)."""
    per_clip = []
    for seed in seeds:
        clip = generate_clip(seed, world)
        per_clip.append(region_psnr(clip.frames, reconstruct(pipe.vae, clip.frames), clip.masks))
    return {k: float(np.mean([v[k] for v in per_clip])) for k in per_clip[0]}


def region_psnr(frames: np.ndarray, recon: np.ndarray, masks: np.ndarray) -> dict:
    """PSNR of one clip over all pixels, over its sprites' pixels and over its scene's (``masks``: entity ids)."""
    return {"all": psnr(frames, recon), "sprites": masked_psnr(frames, recon, masks > 0),
            "scene": masked_psnr(frames, recon, masks == 0)}


def palette_fidelity(pipe, world: WorldConfig = WorldConfig(), size: int = 24) -> dict:
    """Each sprite colour as a still ``size``² square on mid-grey, through the VAE: the decoded colour at its centre
    and its RGB distance from the original (a sprite can be found only if it is within ``COLOUR_TOLERANCE``)."""
    result = {}
    y, x = (world.height - size) // 2, (world.width - size) // 2
    for name, colour in COLOURS.items():
        frames = np.full((5, world.height, world.width, 3), 128, np.uint8)
        frames[:, y:y + size, x:x + size] = colour
        decoded = reconstruct(pipe.vae, frames)[:, y + size // 4:y + 3 * size // 4, x + size // 4:x + 3 * size // 4]
        mean = decoded.reshape(-1, 3).mean(0)
        result[name] = {"decoded": [round(float(v), 1) for v in mean],
                        "distance": float(np.linalg.norm(mean - np.array(colour, np.float64)))}
    return result


FRAME0_GOAL_DB = 25.0  # generated frame 0 against the conditioning frame (VAE round trip: about 28 dB)


@torch.no_grad()
def decoded_noise(vae, frames: np.ndarray, seed: int) -> np.ndarray:
    """N(0, 1) normalised latents of ``frames``' shape (4x8x8 compression) through the decoder: what a model that
    learnt nothing generates, and the control every measure must fail."""
    t, h, w = frames.shape[:3]
    scale = vae.spatial_compression_ratio
    z = torch.randn((1, vae.config.z_dim, (t - 1) // 4 + 1, h // scale, w // scale),
                    generator=torch.Generator().manual_seed(seed))
    return decode_normalised(vae, z)


@torch.no_grad()
def decode_normalised(vae, z: torch.Tensor) -> np.ndarray:
    """Normalised latents (as the transformer sees them) back to raw VAE latents and decoded: uint8 frames."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return video_frames(vae.decode(z * std + mean).sample[0])


def control_videos(vae, clip, seed: int) -> dict[str, np.ndarray]:
    """The controls for ``clip``: itself and its VAE round trip (should pass), decoded noise, its first frame held
    still, its sprites melted into lumpy blobs of their colour and area, and its sprites painted as discs of their
    colour and area (should fail: noise everything, the frozen frame the animation, the melted sprites and the discs
    the objects). A clip that cuts has neither of the last two; a clip whose sprites are all circles has no discs."""
    videos = {"real clip": clip.frames, "VAE round trip": reconstruct(vae, clip.frames),
              "decoded N(0,1) latents": decoded_noise(vae, clip.frames, seed),
              "first frame held still": np.repeat(clip.frames[:1], len(clip.frames), 0)}
    if clip.cut_frame is None:
        videos["sprites melted"] = melt_sprites(clip, seed)
        if any(sprite.shape != "circle" for sprite in clip.sprites):
            videos["sprites as discs"] = sprites_as_discs(clip)
    return videos


def summarise(rows: list[dict]) -> dict:
    """Means and shares over videos of :func:`clip_fidelity` rows: what the card prints for the model and for
    each control."""
    directions = [ok for row in rows for ok in row["directions"]]
    return {"videos": len(rows), "frame0_psnr": float(np.mean([r["frame0_psnr"] for r in rows])),
            "frame0_reproduced": float(np.mean([r["frame0_psnr"] >= FRAME0_GOAL_DB for r in rows])),
            "scene_psnr": float(np.mean([r["scene_psnr"] for r in rows])),
            "sharpness_ratio": float(np.mean([r["sharpness_ratio"] for r in rows])),
            "kept": float(np.mean([r["kept"] for r in rows])),
            "animated": float(np.mean([r["animated"] for r in rows])),
            "direction_ok": float(np.mean(directions)) if directions else None, "drifting_sprites": len(directions)}


def control_metrics(pipe, seeds, world: WorldConfig = WorldConfig()) -> dict[str, dict]:
    """:func:`summarise` of each control over ``seeds``' held-out clips."""
    rows: dict[str, list] = {}
    for seed in seeds:
        clip = generate_clip(seed, world, cut=False)
        for name, video in control_videos(pipe.vae, clip, seed).items():
            rows.setdefault(name, []).append(clip_fidelity(video, clip))
    return {name: summarise(r) for name, r in rows.items()}


def generate_from_first_frame(pipe, clip, seed: int, steps: int = 20, world: WorldConfig = WorldConfig(),
                              guidance_scale: float | None = None, flow_shift: float | None = None) -> FFGoVideo:
    """Plain image-to-video from ``clip``'s first frame and caption (no trigger, nothing dropped): how the card
    samples its held-out videos (the backbone's sampler unless given)."""
    return generate(pipe, clip.frames[0], clip.caption, trigger=None, num_inference_steps=steps,
                    num_frames=world.num_frames, height=world.height, width=world.width, drop_first_frames=0,
                    seed=seed, guidance_scale=guidance_scale, flow_shift=flow_shift, progress=False)


def generation_metrics(pipe, seeds, steps: int = 20, world: WorldConfig = WorldConfig(),
                       guidance_scale: float | None = None, flow_shift: float | None = None,
                       videos: list | None = None) -> dict:
    """:func:`summarise` of videos generated from held-out first frames and captions (sampler: the backbone's
    unless given). ``videos``: a list that receives each (clip, generated frames, measures), to look at them."""
    rows = []
    for seed in seeds:
        clip = generate_clip(seed, world, cut=False)
        generated = generate_from_first_frame(pipe, clip, seed, steps, world, guidance_scale, flow_shift)
        rows.append(clip_fidelity(generated.frames, clip))
        if videos is not None:
            videos.append((clip, generated.frames, rows[-1]))
    return {**summarise(rows), "guidance_scale": generated.settings["guidance_scale"],
            "flow_shift": generated.settings["flow_shift"], "steps": steps}


def encode(pipe, frames, caption: str) -> dict:
    """The clip's latents, I2V condition (frame 0) and caption embedding, as the trainer caches them."""
    return encode_clip(pipe, TrainingClip(frames, caption, None), pipe.ffstudy_backbone.max_sequence_length)


def teacher_forced(encoded: dict, sigma: float, seed: int) -> dict:
    """The transformer's inputs for the encoded clip noised to ``sigma`` (teacher forcing: the real clip, not the
    model's own video, one denoising pass)."""
    inputs, *_ = sample_flow_inputs([encoded], torch.tensor([sigma]), 0, 1, torch.Generator().manual_seed(seed),
                                    "cpu")
    return inputs


@torch.no_grad()
def probe_clip(pipe, clip, sigma: float, seed: int = 0, per_head: bool = False):
    """One teacher-forced denoising pass over ``clip`` noised to ``sigma``, with the probe on every block
    (``per_head``: also keeping each head's entity masses)."""
    inputs = teacher_forced(encode(pipe, clip.frames, clip.caption), sigma, seed)
    with FirstFrameProbe(pipe.transformer, first_frame_entities(clip), per_head=per_head) as probe:
        pipe.transformer(**inputs, return_dict=False)
    return probe.result


def probe_accuracy(pipe, seeds, sigmas=(0.3, 0.6, 0.9), world: WorldConfig = WorldConfig()) -> dict:
    """Mean per-block retrieval accuracy over clips and noise levels, and the chance level."""
    per_block: dict[str, dict[int, list[float]]] = {"entity": {}, "token": {}}
    chance = []
    for seed in seeds:
        clip = generate_clip(seed, world, cut=False)
        chance.append(1.0 / (len(clip.sprites) + 1))
        for sigma in sigmas:
            result = probe_clip(pipe, clip, sigma)
            for per, blocks in per_block.items():
                for block, value in retrieval_accuracy(result, clip, per=per).items():
                    blocks.setdefault(block, []).append(value)
    return {"per_block": {b: float(np.mean(v)) for b, v in per_block["entity"].items()},
            "per_block_per_token": {b: float(np.mean(v)) for b, v in per_block["token"].items()},
            "chance": float(np.mean(chance)), "sigmas": list(sigmas)}


def generation_seconds(pipe, world: WorldConfig = WorldConfig(), steps: int = 20, repeats: int = 3) -> float:
    clip = generate_clip(EVAL_SEED0, world)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate(pipe, clip.frames[0], clip.caption, trigger=None, num_inference_steps=steps,
                 num_frames=world.num_frames, height=world.height, width=world.width, progress=False)
        times.append(time.perf_counter() - start)
    return float(min(times))


SHEET_VIDEOS = 8  # held-out clips on the card's contact sheet


def generation_sheet(runs: dict[str, list]):
    """A contact sheet of lists of (clip, generated frames, measures) on the same clips, by name (the card's one
    run, or sampler settings): each real clip above the video each run generated from its first frame, every 4th
    frame, labelled with the figures the card quotes."""
    from ..viz import contact_sheet

    rows = []
    for videos in zip(*runs.values()):
        clip = videos[0][0]
        rows.append((f"seed {clip.seed}\nreal clip", clip.frames))
        rows += [(f"{name}\nframe 0 {row['frame0_psnr']:.1f} dB\nscene {row['scene_psnr']:.1f} dB\n"
                  f"kept: {'yes' if row['kept'] else 'no'}", frames) for name, (_, frames, row) in zip(runs, videos)]
    return contact_sheet(rows)


def evaluate(pipe, videos: int = EVALUATION_VIDEOS, probe_clips: int = 20, generated: list | None = None) -> dict:
    """Everything the model card reports (``generated``: a list that receives the generated videos)."""
    seeds = range(EVAL_SEED0, EVAL_SEED0 + videos)
    vae = vae_psnr(pipe, seeds[:20])
    return {"vae_psnr_db": vae["all"], "vae_psnr_sprites_db": vae["sprites"], "vae_psnr_scene_db": vae["scene"],
            "vae_palette": palette_fidelity(pipe), "generation": generation_metrics(pipe, seeds, videos=generated),
            "controls": control_metrics(pipe, seeds),
            "probe": probe_accuracy(pipe, seeds[:probe_clips]), "seconds_per_video_20_steps": generation_seconds(pipe),
            "eval_seeds": [seeds.start, seeds.stop - 1], "threads": torch.get_num_threads()}
