"""Try a variant of the SpriteWorld pretraining's last stage (decoder fine-tuning) without retraining the rest.

The decoder stage runs after the transformer and leaves the encoder frozen, so a variant changes only how latents
are decoded. This script reruns the stages before it exactly as ``pretrain`` does (same seeds: the encoder comes
out bit-identical to the shipped one, which it checks), fine-tunes the decoder with ``--overrides``, and measures
the result with the shipped transformer: VAE PSNR (all / sprite / scene pixels), the VAE round trips' control row
and the generated videos' measures on the model card's held-out seeds.

    .venv/bin/python recipes/spriteworld/decoder_stage.py --overrides '{"decoder_sprite_weight": 4, "decoder_steps": 1200}'

About 18 min for the VAE stage (cached in --cache for further variants), 1 s per decoder step, 5 min measuring.
``--from-shipped`` skips the VAE stage and continues the shipped VAE's decoder instead: not a recipe, a quick way to
ask what more decoder training of a given kind would give. ``--fresh-decoder WIDTH`` replaces the decoder by a
freshly initialised one of that base width (``decoder_base_dim``) before the stage.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from decoder_capacity import encoder_state, with_fresh_decoder  # this folder, on the path when this script runs
from ffstudy.io import write_json
from ffstudy.models import get_backbone, load_pipeline
from ffstudy.spriteworld.evaluate import control_metrics, generation_metrics, vae_psnr
from ffstudy.spriteworld.pretrain import (EVAL_SEED0, PretrainConfig, build_untrained, final_loss, finetune_decoder,
                                          training_clips, vae_stage)
from ffstudy.spriteworld.world import WorldConfig

REPO = Path(__file__).resolve().parents[2]


def cached_vae_stage(config: PretrainConfig, cache: Path):
    """The VAE as ``pretrain`` leaves it before the decoder stage, trained once and cached."""
    from diffusers import AutoencoderKLWan

    if not (cache / "config.json").exists():
        pipe = build_untrained(config)  # same seed and construction order as pretrain: same initial weights
        vae_stage(pipe.vae, training_clips(config, WorldConfig()), config, [])
        pipe.vae.save_pretrained(cache, safe_serialization=True)
    vae = AutoencoderKLWan.from_pretrained(cache)
    vae.requires_grad_(False)
    return vae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overrides", default="{}", help="PretrainConfig fields to change, as JSON")
    parser.add_argument("--cache", default="outputs/benchmarks/spriteworld-vae-stage")
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--save", help="also save the fine-tuned VAE here (a diffusers AutoencoderKLWan folder)")
    parser.add_argument("--record", help="also write the result and the decoder's per-step log here (JSON)")
    parser.add_argument("--from-shipped", action="store_true",
                        help="fine-tune the shipped VAE's decoder further instead of the VAE stage's")
    parser.add_argument("--fresh-decoder", type=int, metavar="WIDTH",
                        help="start the stage from a fresh decoder of this base width (decoder_base_dim)")
    args = parser.parse_args()
    overrides = json.loads(args.overrides)
    config = PretrainConfig.from_file(REPO / "configs/spriteworld-pretrain.yaml", **overrides)
    torch.set_num_threads(config.threads)
    if args.from_shipped:
        vae = load_pipeline("spriteworld").vae
        vae.requires_grad_(False)
    else:
        vae = cached_vae_stage(config, Path(args.cache))
    if args.fresh_decoder:
        vae = with_fresh_decoder(vae, args.fresh_decoder)
        vae.requires_grad_(False)
    shipped = load_file(Path(get_backbone("spriteworld").local_dir) / "vae/diffusion_pytorch_model.safetensors")
    if not all(torch.equal(v, shipped[k]) for k, v in encoder_state(vae).items()):
        raise SystemExit("the re-run VAE stage differs from the shipped encoder: the shipped transformer does not "
                         "belong to it (other thread count or library versions, or a --cache written by an older "
                         "recipe: delete it)")
    clips = training_clips(dataclasses.replace(config, train_clips=config.decoder_clips), WorldConfig())
    log, started = [], time.perf_counter()
    finetune_decoder(vae, clips, config, log)
    seconds = time.perf_counter() - started
    if args.save:
        vae.save_pretrained(args.save, safe_serialization=True)
    pipe = load_pipeline("spriteworld")
    pipe.vae = vae
    seeds = range(EVAL_SEED0, EVAL_SEED0 + args.videos)
    result = {"overrides": overrides, "from_shipped": args.from_shipped, "fresh_decoder": args.fresh_decoder,
              "decoder_seconds": round(seconds, 1),
              "decoder_final_loss": final_loss(log, "decoder"),
              "vae_psnr_db": vae_psnr(pipe, seeds[:20]),
              "generation": generation_metrics(pipe, seeds),
              "round_trip": control_metrics(pipe, seeds)["VAE round trip"]}
    print(json.dumps(result, indent=1))
    if args.record:
        write_json(args.record, {**result, "log": log})


if __name__ == "__main__":
    main()
