"""Which held-out videos fail entity persistence: generated, and as plain VAE round trips of the real clips.

The model card counts failures; this script names them, per model folder, so one can tell whose fault a failure
is. A video that fails as a round trip but not when generated lost a sprite in the VAE; one that fails only when
generated lost it in the transformer (or its sampler); one that fails already in the generated frame 0 never had
it: Wan2.2-I2V-A14B's layout (36 input channels) denoises frame 0 like any other frame, from the conditioning
latent, rather than copying it. Same seeds, sampler and check as ``ffstudy spriteworld evaluate`` (the backbone's
CFG 1, 20 steps).

    .venv/bin/python benchmarks/persistence_failures.py data/models/spriteworld-i2v OTHER_MODEL_DIR

About 6 min per model on 2 cores.
"""
from __future__ import annotations

import argparse
import json

import torch

from ffstudy.models import load_pipeline
from ffstudy.spriteworld.evaluate import generate_from_first_frame, reconstruct
from ffstudy.spriteworld.metrics import entity_persistence
from ffstudy.spriteworld.pretrain import EVAL_SEED0
from ffstudy.spriteworld.world import WorldConfig, generate_clip


@torch.no_grad()
def generated_failures(pipe, seeds, world: WorldConfig = WorldConfig()) -> tuple[list[int], list[int]]:
    """Seeds whose generated video fails persistence, and seeds whose generated frame 0 already fails."""
    generated, first_frame = [], []
    for seed in seeds:
        clip = generate_clip(seed, world, cut=False)
        video = generate_from_first_frame(pipe, clip, seed, world=world).frames
        if not entity_persistence(video, clip.sprites):
            generated.append(seed)
        if not entity_persistence(video, clip.sprites, frame=0):
            first_frame.append(seed)
    return generated, first_frame


@torch.no_grad()
def round_trip_failures(vae, seeds, world: WorldConfig = WorldConfig()) -> list[int]:
    """Seeds whose real clip fails persistence after a plain VAE round trip."""
    failed = []
    for seed in seeds:
        clip = generate_clip(seed, world, cut=False)
        if not entity_persistence(reconstruct(vae, clip.frames), clip.sprites):
            failed.append(seed)
    return failed


def failures(model_dir: str, videos: int) -> dict:
    pipe = load_pipeline("spriteworld", path=model_dir)
    pipe.set_progress_bar_config(disable=True)
    seeds = range(EVAL_SEED0, EVAL_SEED0 + videos)
    generated, first_frame = generated_failures(pipe, seeds)
    round_trip = round_trip_failures(pipe.vae, seeds)
    return {"videos": videos, "generated_fail": generated, "generated_frame_0_fail": first_frame,
            "round_trip_fail": round_trip,
            "fail_both": sorted(set(generated) & set(round_trip))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="SpriteWorld model folders")
    parser.add_argument("--videos", type=int, default=40, help="the model card's held-out seeds")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for model_dir in args.models:
        print(json.dumps({"model": model_dir, **failures(model_dir, args.videos)}), flush=True)


if __name__ == "__main__":
    main()
