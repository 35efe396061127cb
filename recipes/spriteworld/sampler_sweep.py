"""How the sampler settings change what the shipped SpriteWorld model (or `--path`'s) generates.

For each CFG scale, flow shift and sampler: frame 0 against the conditioning frame, the never-covered scene, sharpness,
every sprite kept as an object in the last frame, every sprite animated and drifting sprites moving the way the
caption says, over ``--videos`` held-out clips from ``--first-seed``, exactly as the model card measures them
(``ffstudy.spriteworld.evaluate.generation_metrics``), with the VAE round trips' row, measured once, as the
reference. The card's seeds start at 1,000,000; a setting chosen on them is checked on
another range (``--first-seed 1000040``).

    .venv/bin/python recipes/spriteworld/sampler_sweep.py --settings 6:5 3:5 1:5 1:3
    .venv/bin/python recipes/spriteworld/sampler_sweep.py --settings 1:5 1:5:euler 1:5:stochastic

The sampler is the backbone's (UniPC) unless a setting names diffusers' flow-matching Euler sampler: ``euler``
(deterministic, like UniPC an ODE solver) or ``stochastic`` (``stochastic_sampling=True``: each step predicts the
clean video and noises it afresh to the next σ).

About 2.5 s per video at CFG 1 on the 2-core CPU, 3.5 s with CFG.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from ffstudy.models import load_pipeline
from ffstudy.spriteworld.evaluate import control_metrics, generation_metrics, generation_sheet
from ffstudy.spriteworld.pretrain import EVAL_SEED0
from ffstudy.viz import save_sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", help="a SpriteWorld model folder (default: the shipped model), e.g. from "
                        "transformer_stage.py --save")
    parser.add_argument("--settings", nargs="+", default=["6:5", "1:5"], metavar="CFG:SHIFT[:SAMPLER]",
                        help="SAMPLER: unipc (the backbone's, default), euler or stochastic")
    parser.add_argument("--first-seed", type=int, default=EVAL_SEED0)
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sheet", help="also write a contact sheet (PNG): the first 4 clips, each above its video "
                        "at every setting")
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe = load_pipeline("spriteworld", path=args.path)
    unipc = pipe.scheduler
    seeds = range(args.first_seed, args.first_seed + args.videos)
    print(f"seeds {seeds.start}–{seeds.stop - 1}, {args.steps} steps\n")
    print("| CFG | shift | sampler | frame 0 | scene | sharpness | kept | animated | right direction | seconds |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    m = control_metrics(pipe, seeds)["VAE round trip"]  # the same for every sampler
    print(f"| VAE round trip | | | {m['frame0_psnr']:.1f} dB | {m['scene_psnr']:.1f} dB | {m['sharpness_ratio']:.2f} "
          f"| {m['kept']:.1%} | {m['animated']:.1%} | {m['direction_ok']:.1%} | |", flush=True)
    sheet = {}  # setting -> its first 4 (clip, video, measures)
    for setting in args.settings:
        try:
            guidance, shift, sampler = (setting.split(":") + ["unipc"])[:3] if setting.count(":") in (1, 2) else []
            guidance, shift = float(guidance), float(shift)
        except ValueError:
            parser.error(f"--settings {setting}: write CFG:SHIFT or CFG:SHIFT:SAMPLER, e.g. 1:5 or 1:5:stochastic")
        if sampler not in ("unipc", "euler", "stochastic"):
            parser.error(f"--settings {setting}: the sampler is unipc, euler or stochastic, not {sampler!r}")
        pipe.scheduler = unipc if sampler == "unipc" else FlowMatchEulerDiscreteScheduler(
            shift=shift, stochastic_sampling=sampler == "stochastic")
        started = time.perf_counter()
        videos = []
        m = generation_metrics(pipe, seeds, args.steps, guidance_scale=guidance, flow_shift=shift, videos=videos)
        sheet[f"CFG {guidance:g}, shift {shift:g}" + ("" if sampler == "unipc" else f"\n{sampler}")] = videos[:4]
        print(f"| {guidance:g} | {shift:g} | {sampler} | {m['frame0_psnr']:.1f} dB | {m['scene_psnr']:.1f} dB "
              f"| {m['sharpness_ratio']:.2f} | {m['kept']:.1%} | {m['animated']:.1%} | {m['direction_ok']:.1%} "
              f"| {time.perf_counter() - started:.0f} |", flush=True)
        print(json.dumps({"guidance_scale": guidance, "flow_shift": shift, "sampler": sampler, **m}), flush=True)
    if args.sheet:
        save_sheet(generation_sheet(sheet), args.sheet)


if __name__ == "__main__":
    main()
