"""Try a variant of the SpriteWorld pretraining's VAE stage and measure the VAE as the model card does.

The VAE stage is the recipe's first: a variant changes the latents, so everything after it (encoding, the
transformer, the decoder stage, the few-shot experiment) would have to be retrained before it could ship. This
script answers the question that comes first — does the variant reach the card's VAE goals? — in one stage's
time. It trains the VAE stage exactly as ``pretrain`` does with ``--overrides`` (same seeds, same initial weights
for an unchanged architecture), optionally the decoder stage after it (``--decoder``), and measures PSNR over all,
sprite and scene pixels on the card's first 20 held-out seeds and the VAE round trips' control row (frame 0,
scene, sharpness, sprites kept as objects) on its 40.

    .venv/bin/python recipes/spriteworld/vae_stage.py --overrides '{"vae_base_dim": 16}' --decoder --record FILE

About 0.4 s per VAE step at the recipe's width on 2 cores, 1 s per decoder step, 2 min measuring.
``--from-shipped`` trains the shipped VAE further instead of a fresh one (encoder included, so its latents no longer
fit the shipped transformer): not a recipe, a quick way to ask what the encoder could still learn.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from ffstudy.io import write_json
from ffstudy.models import load_pipeline
from ffstudy.spriteworld.evaluate import control_metrics, vae_psnr
from ffstudy.spriteworld.pretrain import (EVAL_SEED0, PretrainConfig, build_untrained, final_loss, finetune_decoder,
                                          training_clips, vae_stage)
from ffstudy.spriteworld.world import WorldConfig

REPO = Path(__file__).resolve().parents[2]


def measure(vae, videos: int) -> dict:
    seeds = range(EVAL_SEED0, EVAL_SEED0 + videos)
    pipe = SimpleNamespace(vae=vae)
    return {"vae_psnr_db": vae_psnr(pipe, seeds[:20]), "round_trip": control_metrics(pipe, seeds)["VAE round trip"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overrides", default="{}", help="PretrainConfig fields to change, as JSON")
    parser.add_argument("--decoder", action="store_true", help="also run the decoder stage and measure again")
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--save", help="save the VAE after the last stage run here (a diffusers folder)")
    parser.add_argument("--record", help="also write the result and the per-step log here (JSON)")
    parser.add_argument("--from-shipped", action="store_true", help="train the shipped VAE further, encoder included")
    args = parser.parse_args()
    overrides = json.loads(args.overrides)
    config = PretrainConfig.from_file(REPO / "configs/spriteworld-pretrain.yaml", **overrides)
    torch.set_num_threads(config.threads)
    if args.from_shipped:
        vae = load_pipeline("spriteworld").vae.requires_grad_(True)
    else:
        vae = build_untrained(config).vae  # built exactly as pretrain builds it: same seed, same order
    clips = training_clips(config, WorldConfig())
    log, started = [], time.perf_counter()
    vae_stage(vae, clips, config, log)
    result = {"overrides": overrides, "from_shipped": args.from_shipped,
              "parameters": sum(p.numel() for p in vae.parameters()),
              "vae_seconds": round(time.perf_counter() - started, 1),
              "vae_final_loss": final_loss(log, "vae"), "vae_stage": measure(vae, args.videos)}
    print(json.dumps(result, indent=1), flush=True)
    if args.decoder:
        started = time.perf_counter()
        finetune_decoder(vae, clips, config, log)
        result |= {"decoder_seconds": round(time.perf_counter() - started, 1),
                   "decoder_stage": measure(vae, args.videos)}
        print(json.dumps(result["decoder_stage"], indent=1), flush=True)
    if args.save:
        vae.save_pretrained(args.save, safe_serialization=True)
    if args.record:
        write_json(args.record, {**result, "log": log})


if __name__ == "__main__":
    main()
