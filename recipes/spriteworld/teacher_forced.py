"""Where does the SpriteWorld model lose its sprites: in denoising what it is shown, or in creating them from noise?

Two measurements on the card's first held-out clips, each sprite searched as an object (``sprites_found``: its
colour, area and shape) in frames 4, 8, 12 and 16:

- **teacher-forced**: the real clip noised to σ and denoised in one pass (x₀ = x_σ − σ·v), decoded. At low σ the
  noisy latents still carry each sprite; at high σ the model has only frame 0 and the caption to go on.
- **generated**: the card's sampler from pure noise (20 steps), the same clips.

If the teacher-forced prediction keeps sprites at low and middle σ while generation loses them, the transformer can
denoise a sprite it is shown but cannot create one where it has to decide on it: the failure sits at high noise.

    .venv/bin/python recipes/spriteworld/teacher_forced.py --clips 16      # about 2 min on 2 cores
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from ffstudy.models import load_pipeline
from ffstudy.spriteworld.evaluate import generate_from_first_frame
from ffstudy.spriteworld.memory import encode, predicted_video, teacher_forced
from ffstudy.spriteworld.metrics import sprites_found
from ffstudy.spriteworld.pretrain import EVAL_SEED0, PretrainConfig, training_clips, transformer_world
from ffstudy.spriteworld.world import WorldConfig, generate_clip
from ffstudy.viz import contact_sheet, save_sheet

FRAMES = (4, 8, 12, 16)


# --by-motion: is a sprite lost because the model cannot tell where it goes? Grow and shrink never leave their place
MOTION_GROUPS = {"in place (grow, shrink)": ("grow", "shrink"), "drifting (left, right, up, down)":
                 ("left", "right", "up", "down"), "bouncing or orbiting (direction not in the caption)":
                 ("bounce", "orbit")}


def found_by_frame(videos, clips, motions=None) -> list[float]:
    """Share of all sprites (only those moving by one of ``motions``, if given) found as objects, per frame of
    ``FRAMES``."""
    return [float(np.mean([found is not None for video, clip in zip(videos, clips)
                           for sprite, found in zip(clip.sprites, sprites_found(video, clip, frame=t))
                           if motions is None or sprite.motion in motions])) for t in FRAMES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="spriteworld", help="backbone name, as in the ffstudy CLI")
    parser.add_argument("--path", help="a model folder of that backbone, e.g. from transformer_stage.py --save")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--training-clips", action="store_true",
                        help="the recipe's first training clips, as the transformer saw them, instead of held-out ones")
    parser.add_argument("--sheet", help="also write a contact sheet (PNG) of the first 4 clips above their generated videos")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--by-motion", action="store_true", help="also the table for each group of motions")
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe = load_pipeline(args.model, path=args.path)
    if args.training_clips:
        config = PretrainConfig.from_file("configs/spriteworld-pretrain.yaml")
        clips = training_clips(config, transformer_world(config, WorldConfig()), args.clips)
    else:
        clips = [generate_clip(EVAL_SEED0 + i, WorldConfig(), cut=False) for i in range(args.clips)]
    encoded = [encode(pipe, clip.frames, clip.caption) for clip in clips]
    where = "training clips" if args.training_clips else f"held-out clips from seed {EVAL_SEED0}"
    print(f"{args.clips} {where}; share of sprites found as objects in frame "
          + " / ".join(map(str, FRAMES)) + "\n")
    rows = {"real clip": [clip.frames for clip in clips]}
    for sigma in args.sigmas:
        rows[f"teacher-forced, σ = {sigma:g}"] = [predicted_video(pipe, teacher_forced(e, sigma, clip.seed), sigma)
                                                 for e, clip in zip(encoded, clips)]
    rows["generated, 20 steps"] = [generate_from_first_frame(pipe, clip, clip.seed).frames for clip in clips]
    groups = {"all sprites": None, **(MOTION_GROUPS if args.by_motion else {})}
    for group, motions in groups.items():
        if args.by_motion:
            count = sum(motions is None or s.motion in motions for clip in clips for s in clip.sprites)
            print(f"{group}: {count} sprites\n")
            if not count:
                continue
        print("| video | " + " | ".join(f"frame {t}" for t in FRAMES) + " |\n|---|" + "---|" * len(FRAMES))
        for name, videos in rows.items():
            print(f"| {name} | " + " | ".join(f"{share:.0%}" for share in found_by_frame(videos, clips, motions))
                  + " |")
        print()
    if args.sheet:
        sheet = []
        for clip, video in list(zip(clips, rows["generated, 20 steps"]))[:4]:
            found = sum(f is not None for f in sprites_found(video, clip, frame=FRAMES[-1]))
            sheet += [(f"seed {clip.seed}\nreal clip", clip.frames),
                      (f"generated\nfound in frame {FRAMES[-1]}:\n{found} of {len(clip.sprites)}", video)]
        save_sheet(contact_sheet(sheet), args.sheet)


if __name__ == "__main__":
    main()
