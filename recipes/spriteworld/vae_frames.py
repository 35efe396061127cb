"""Where the SpriteWorld VAE loses its PSNR: per frame of the held-out clips, and on still clips.

The causal Wan VAE codes frame 0 alone and every later group of 4 frames into one latent frame. If the temporal
compression (or the cache carried from group to group) were what keeps the card's VAE PSNR under 28 dB, frame 0
would score well above the later frames, and a still clip (one frame repeated 17 times, nothing to compress in
time) well above a moving one. Same seeds and PSNR as the model card (``vae_psnr``: its first 20 held-out clips).

    .venv/bin/python recipes/spriteworld/vae_frames.py [MODEL_DIR]

About 2 min on 2 cores.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from ffstudy.models import load_pipeline
from ffstudy.spriteworld.evaluate import reconstruct, region_psnr
from ffstudy.spriteworld.metrics import psnr
from ffstudy.spriteworld.pretrain import EVAL_SEED0
from ffstudy.spriteworld.world import WorldConfig, generate_clip


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="spriteworld", help="registry name or pipeline folder")
    parser.add_argument("--videos", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    vae = load_pipeline(args.model).vae
    per_frame, still = [], []
    for seed in range(EVAL_SEED0, EVAL_SEED0 + args.videos):
        clip = generate_clip(seed, WorldConfig())
        decoded = reconstruct(vae, clip.frames)
        per_frame.append([psnr(clip.frames[t], decoded[t]) for t in range(len(clip.frames))])
        middle = len(clip.frames) // 2
        frames = np.repeat(clip.frames[middle:middle + 1], len(clip.frames), 0)
        masks = np.repeat(clip.masks[middle:middle + 1], len(clip.frames), 0)
        still.append(region_psnr(frames, reconstruct(vae, frames), masks))
    still_mean = {k: round(float(np.mean([v[k] for v in still])), 2) for k in still[0]}
    print(json.dumps({"videos": args.videos,
                      "psnr_per_frame_db": [round(float(v), 2) for v in np.mean(per_frame, 0)],
                      "still_clip_psnr_db": still_mean}, indent=1))


if __name__ == "__main__":
    main()
