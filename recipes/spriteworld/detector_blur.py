"""How much blur the sprite detector tolerates: "kept" on held-out clips blurred by a Gaussian of each width.

Why (issue 36): the detector requires every sprite other than a circle to match its silhouette better than a disc.
A test that only pixel-exact renders pass would read any lossy decoder as losing shapes, so this measures where it
gives way: the share of 40 held-out clips without a cut (seeds from 1,000,000) whose blurred last frame keeps
every sprite, beside the blurred clip's PSNR, to set against a VAE's round-trip PSNR.

    python recipes/spriteworld/detector_blur.py               # under a minute
"""
from __future__ import annotations

import argparse

import numpy as np

from ffstudy.spriteworld.metrics import blurred, psnr, sprites_found, sprites_kept
from ffstudy.spriteworld.pretrain import EVAL_SEED0
from ffstudy.spriteworld.world import generate_clip


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.5, 2.0],
                        help="Gaussian widths in pixels")
    args = parser.parse_args()
    clips = [generate_clip(EVAL_SEED0 + i, cut=False) for i in range(args.clips)]
    sprites = sum(len(clip.sprites) for clip in clips)
    print(f"{'blur':>7} {'PSNR':>8} {'kept':>6} {'sprites found':>14}")
    for sigma in args.sigmas:
        videos = [blurred(clip.frames, sigma) for clip in clips]
        kept = np.mean([sprites_kept(video, clip) for video, clip in zip(videos, clips)])
        found = sum(f is not None for video, clip in zip(videos, clips) for f in sprites_found(video, clip))
        decibels = np.mean([psnr(clip.frames, video) for video, clip in zip(videos, clips)])
        print(f"{sigma:>5g} px {decibels:>5.2f} dB {kept:>6.1%} {found:>7}/{sprites}")


if __name__ == "__main__":
    main()
