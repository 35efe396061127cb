"""How the sampler settings change what the shipped SpriteWorld model generates.

For each CFG scale and flow shift: entity persistence, sprites that move, and drifting sprites moving the way the
caption says, over ``--videos`` held-out clips from ``--first-seed``, exactly as the model card measures them
(``ffstudy.spriteworld.evaluate.generation_metrics``), with the real clips' and VAE round trips' persistence,
measured once, as the reference. The card's seeds start at 1,000,000; a setting chosen on them is checked on
another range (``--first-seed 1000040``).

    .venv/bin/python benchmarks/sampler_sweep.py --settings 6:5 3:5 1:5 1:3

About 2.5 s per video at CFG 1 on the 2-core CPU, 3.5 s with CFG.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from ffstudy.models import load_pipeline
from ffstudy.spriteworld.evaluate import generation_metrics, reference_persistence
from ffstudy.spriteworld.pretrain import EVAL_SEED0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["6:5", "1:5"], metavar="CFG:SHIFT")
    parser.add_argument("--first-seed", type=int, default=EVAL_SEED0)
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe = load_pipeline("spriteworld")
    seeds = range(args.first_seed, args.first_seed + args.videos)
    reference = reference_persistence(pipe, seeds)  # the same for every sampler
    print(f"seeds {seeds.start}–{seeds.stop - 1}, {args.steps} steps; persistence of the real clips "
          f"{reference['persistence_real_clips']:.1%}, of their VAE round trips "
          f"{reference['persistence_vae_round_trip']:.1%}\n")
    print("| CFG | shift | persistence | moved | right direction | seconds |\n|---|---|---|---|---|---|")
    for setting in args.settings:
        try:
            guidance, shift = (float(v) for v in setting.split(":"))
        except ValueError:
            parser.error(f"--settings {setting}: write CFG:SHIFT, e.g. 1:5")
        started = time.perf_counter()
        m = generation_metrics(pipe, seeds, args.steps, guidance_scale=guidance, flow_shift=shift)
        print(f"| {guidance:g} | {shift:g} | {m['persistence']:.1%} | {m['moved']:.1%} | {m['direction_ok']:.1%} "
              f"| {time.perf_counter() - started:.0f} |", flush=True)
        print(json.dumps({"guidance_scale": guidance, "flow_shift": shift, **m}), flush=True)


if __name__ == "__main__":
    main()
