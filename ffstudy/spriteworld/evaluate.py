"""Measure the pretrained SpriteWorld model on held-out seeds and write its model card numbers.

- VAE reconstruction PSNR on full clips, split into sprite and scene pixels, and how each sprite colour comes
  back through the VAE (identification by colour can only work if it does);
- entity persistence: generated videos (first frame and caption of a held-out clip) whose last frame still shows
  every first-frame sprite;
- motion: sprites that move, and drifting sprites that move the way the caption says;
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
from .metrics import (entity_persistence, first_frame_entities, masked_psnr, motion_check, psnr,
                      retrieval_accuracy)
from .pretrain import EVAL_SEED0
from .world import COLOURS, DIRECTIONS, WorldConfig, generate_clip

EVALUATION_VIDEOS = 120  # held-out clips the card generates from: at 40, one video moved persistence by 2.5 points


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
    and its RGB distance from the original (persistence needs it within ``COLOUR_TOLERANCE``)."""
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


def reference_persistence(pipe, seeds, world: WorldConfig = WorldConfig()) -> dict:
    """Persistence of the real clips and of their plain VAE round trips (what the VAE alone keeps): the reference
    for generated videos, whatever the sampler."""
    real, round_trip = [], []
    for seed in seeds:
        clip = generate_clip(seed, world, cut=False)
        real.append(entity_persistence(clip.frames, clip.sprites))
        round_trip.append(entity_persistence(reconstruct(pipe.vae, clip.frames), clip.sprites))
    return {"persistence_real_clips": float(np.mean(real)), "persistence_vae_round_trip": float(np.mean(round_trip))}


def generate_from_first_frame(pipe, clip, seed: int, steps: int = 20, world: WorldConfig = WorldConfig(),
                              guidance_scale: float | None = None, flow_shift: float | None = None) -> FFGoVideo:
    """Plain image-to-video from ``clip``'s first frame and caption (no trigger, nothing dropped): how the card
    samples its held-out videos (the backbone's sampler unless given)."""
    return generate(pipe, clip.frames[0], clip.caption, trigger=None, num_inference_steps=steps,
                    num_frames=world.num_frames, height=world.height, width=world.width, drop_first_frames=0,
                    seed=seed, guidance_scale=guidance_scale, flow_shift=flow_shift, progress=False)


def generation_metrics(pipe, seeds, steps: int = 20, world: WorldConfig = WorldConfig(),
                       guidance_scale: float | None = None, flow_shift: float | None = None) -> dict:
    """Persistence and motion of videos generated from held-out first frames and captions (sampler: the
    backbone's unless given)."""
    persistent, moved, direction, drifting = [], [], [], 0
    for seed in seeds:
        clip = generate_clip(seed, world, cut=False)
        generated = generate_from_first_frame(pipe, clip, seed, steps, world, guidance_scale, flow_shift)
        persistent.append(entity_persistence(generated.frames, clip.sprites))
        for sprite in clip.sprites:
            check = motion_check(generated.frames, sprite)
            moved.append(check["moved"])
            if sprite.motion in DIRECTIONS:
                drifting += 1
                direction.append(bool(check["direction_ok"]))
    return {"persistence": float(np.mean(persistent)), "moved": float(np.mean(moved)),
            "direction_ok": float(np.mean(direction)) if direction else None, "videos": len(persistent),
            "drifting_sprites": drifting, "guidance_scale": generated.settings["guidance_scale"],
            "flow_shift": generated.settings["flow_shift"]}


@torch.no_grad()
def probe_clip(pipe, clip, sigma: float, seed: int = 0, per_head: bool = False):
    """One teacher-forced denoising pass over ``clip`` noised to ``sigma``, with the probe on every block
    (``per_head``: also keeping each head's entity masses)."""
    encoded = encode_clip(pipe, TrainingClip(clip.frames, clip.caption, None), pipe.ffstudy_backbone.max_sequence_length)
    inputs, *_ = sample_flow_inputs([encoded], torch.tensor([sigma]), 0, 1, torch.Generator().manual_seed(seed), "cpu")
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


def evaluate(pipe, videos: int = EVALUATION_VIDEOS, probe_clips: int = 20) -> dict:
    """Everything the model card reports; generation also at FFGo's CFG 6, what Wan samples with."""
    seeds = range(EVAL_SEED0, EVAL_SEED0 + videos)
    vae = vae_psnr(pipe, seeds[:20])
    return {"vae_psnr_db": vae["all"], "vae_psnr_sprites_db": vae["sprites"], "vae_psnr_scene_db": vae["scene"],
            "vae_palette": palette_fidelity(pipe),
            "generation": {**generation_metrics(pipe, seeds), **reference_persistence(pipe, seeds)},
            "generation_cfg_6": generation_metrics(pipe, seeds, guidance_scale=6.0),
            "probe": probe_accuracy(pipe, seeds[:probe_clips]), "seconds_per_video_20_steps": generation_seconds(pipe),
            "eval_seeds": [seeds.start, seeds.stop - 1], "threads": torch.get_num_threads()}
