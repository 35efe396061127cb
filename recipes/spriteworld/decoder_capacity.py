"""Is it the SpriteWorld decoder or its encoder that keeps the VAE under 28 dB? Fresh, wider decoders on the shipped
encoder's single-frame latents.

``vae_frames.py`` found the gap spatial: a still clip scores about as low as a moving one. The encoder fixes the
latents the transformer was trained on, so only the decoder can change without retraining everything; if a wider
decoder (``AutoencoderKLWan(decoder_base_dim=...)``, as Wan 2.2's 5B VAE has) reconstructs single frames well above
the shipped one from the same latents, the information is in the latents and decoder capacity is the lever. If every
width stalls at the same PSNR, the encoder is what loses it.

Each arm trains a decoder (and ``post_quant_conv``) on frames of the training clips, each encoded alone (posterior
mode; the frozen shipped encoder), with the decoder stage's loss (L1 + L2, sprite pixels weighted 5x), for the same
number of steps, and is measured on every frame of the model card's first held-out clips, each coded alone:
PSNR over all / sprite / scene pixels. Arm ``shipped`` continues the shipped decoder (what more training of the
present width gives); ``fresh-N`` starts a decoder of base width N from scratch.

    .venv/bin/python recipes/spriteworld/decoder_capacity.py --arms shipped,fresh-12,fresh-24 --steps 1000

Measured on the 2-core CPU: the shipped arm's 1,200 steps and 5 measurements took 27.2 min; a fresh width-24
decoder runs about twice as long per step as width 12.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ffstudy.data import video_frames, video_tensor
from ffstudy.io import write_json
from ffstudy.models import load_pipeline
from ffstudy.spriteworld.evaluate import region_psnr
from ffstudy.spriteworld.pretrain import (EVAL_SEED0, TRAIN_SEED0, PretrainConfig, decode_unclamped,
                                          reconstruction_loss)
from ffstudy.spriteworld.world import WorldConfig, generate_clip

REPO = Path(__file__).resolve().parents[2]


@torch.no_grad()
def frame_latents(vae, clips: list) -> torch.Tensor:
    """Every frame of ``clips`` encoded alone (as frame 0 of a clip): (frames, 16, 1, h, w)."""
    return torch.cat([vae.encode(video_tensor(c.frames).permute(1, 0, 2, 3)[:, :, None]).latent_dist.mode()
                      for c in clips])


def encoder_state(vae) -> dict:
    """The weights that fix ``vae``'s latents: everything but the decoder and ``post_quant_conv``."""
    return {k: v for k, v in vae.state_dict().items() if not k.startswith(("decoder.", "post_quant_conv."))}


def with_fresh_decoder(vae, width: int):
    """A copy of ``vae`` with its encoder and a freshly initialised (seeded) decoder of base width ``width``."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    fresh = AutoencoderKLWan.from_config({**vae.config, "decoder_base_dim": width})
    fresh.load_state_dict(encoder_state(vae), strict=False)
    return fresh


def decoder_arm(shipped, arm: str):
    """A VAE with the shipped encoder and the arm's decoder (the shipped one, or a fresh one of another width)."""
    if arm == "shipped":
        return copy.deepcopy(shipped)
    return with_fresh_decoder(shipped, int(arm.removeprefix("fresh-")))


@torch.no_grad()
def measure(vae, clips: list, latents: torch.Tensor) -> dict:
    """Mean PSNR per held-out clip, every frame decoded alone from its own latent."""
    vae.eval()
    scores, start = [], 0
    for clip in clips:
        t = len(clip.frames)
        decoded = vae.decode(latents[start:start + t]).sample  # (t, 3, 1, H, W): a batch of one-frame clips
        scores.append(region_psnr(clip.frames, video_frames(decoded[:, :, 0].permute(1, 0, 2, 3)), clip.masks))
        start += t
    return {k: round(float(np.mean([s[k] for s in scores])), 2) for k in scores[0]}


def train(vae, latents: torch.Tensor, frames: torch.Tensor, sprites: torch.Tensor, steps: int, batch: int,
          lr: float, sprite_weight: float, checkpoints: set, evaluate) -> list:
    parameters = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.05)
    generator, history = torch.Generator().manual_seed(1), []
    for step in tqdm(range(1, steps + 1), desc="decoder"):
        vae.decoder.train()
        pick = torch.randint(len(latents), (batch,), generator=generator)
        weight = 1.0 + sprite_weight * sprites[pick, None, None].float()
        loss = reconstruction_loss(decode_unclamped(vae, latents[pick]), frames[pick][:, :, None], weight)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        if step in checkpoints:
            history.append({"step": step, "loss": float(loss.detach()), **evaluate(vae)})
            print(json.dumps(history[-1]), flush=True)
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default="shipped,fresh-12,fresh-24")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--train-clips", type=int, default=200)
    parser.add_argument("--videos", type=int, default=10, help="held-out clips measured (all 17 frames each)")
    parser.add_argument("--record", help="also write the results here (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    recipe = PretrainConfig.from_file(REPO / "configs/spriteworld-pretrain.yaml")
    shipped = load_pipeline("spriteworld").vae
    world = WorldConfig()
    train_clips = [generate_clip(TRAIN_SEED0 + i, world) for i in range(args.train_clips)]
    heldout = [generate_clip(EVAL_SEED0 + i, world) for i in range(args.videos)]
    latents, heldout_latents = frame_latents(shipped, train_clips), frame_latents(shipped, heldout)
    frames = torch.cat([video_tensor(c.frames).permute(1, 0, 2, 3) for c in train_clips])
    sprites = torch.from_numpy(np.concatenate([c.masks for c in train_clips]) > 0)
    checkpoints = {args.steps // 4, args.steps // 2, 3 * args.steps // 4, args.steps}
    results = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "train_frames": len(latents),
               "heldout_frames": len(heldout_latents), "arms": {}}
    for arm in args.arms.split(","):
        vae = decoder_arm(shipped, arm)
        before = measure(vae, heldout, heldout_latents)
        started = time.perf_counter()
        history = train(vae, latents, frames, sprites, args.steps, args.batch, args.lr,
                        recipe.decoder_sprite_weight, checkpoints, lambda v: measure(v, heldout, heldout_latents))
        seconds = time.perf_counter() - started
        results["arms"][arm] = {"decoder_parameters": sum(p.numel() for p in vae.decoder.parameters()),
                                "psnr_before_db": before, "history": history, "minutes": round(seconds / 60, 1)}
        print(arm, json.dumps(results["arms"][arm]), flush=True)
    if args.record:
        write_json(args.record, results)


if __name__ == "__main__":
    main()
