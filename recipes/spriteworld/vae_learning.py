"""How fast the SpriteWorld VAE learns sprites, against a plain convolutional autoencoder, in one run.

Why (issue 5): the shipped SpriteWorld VAE reconstructs scenes at 27 dB but sprites at 12 dB, and its encoder
loses their colours. This asks whether the data or the architecture is the obstacle: the SpriteWorld
``AutoencoderKLWan`` (the recipe's config, Wan 2.1 layout), the same with Wan 2.2's residual layout, and a plain
2-D conv autoencoder with the same 8x compression and 16 latent channels train on the same single-frame crops
(same order, loss, optimiser and learning rate) and are measured on the first frames of held-out clips, PSNR over
sprite pixels and over scene pixels separately.

    python recipes/spriteworld/vae_learning.py                 # 1,200 steps each, evaluated every 300 (CPU, 2 threads)
    python recipes/spriteworld/vae_learning.py --steps 300 --every 100 --json vae_learning.json
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ffstudy.data import video_frames, video_tensor
from ffstudy.io import write_json
from ffstudy.spriteworld.metrics import masked_psnr
from ffstudy.spriteworld.pretrain import (EVAL_SEED0, PretrainConfig, build_vae, decode_unclamped, random_windows,
                                          reconstruction_loss, training_clips)
from ffstudy.spriteworld.world import WorldConfig, generate_clip
from vae_budget import decoder, encoder  # this folder, on the path when this script runs


class PlainAutoencoder(nn.Module):
    """Three stride-2 convolutions down to 16 channels and three nearest-neighbour upsamplings back."""

    def __init__(self, width: int = 24):
        super().__init__()
        self.encoder, self.decoder = encoder(3, width, 16), decoder(16, 3, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 1, H, W) like the VAE
        return self.decoder(self.encoder(x[:, :, 0]))[:, :, None]


def wan_forward(vae):
    """The VAE round trip as the pretraining stages train it (posterior mode, no output clamp)."""
    return lambda x: decode_unclamped(vae, vae.encode(x).latent_dist.mode())


@torch.no_grad()
def first_frame_psnr(forward, clips) -> tuple[float, float]:
    """Mean PSNR of frame 0 over sprite pixels and over scene pixels."""
    sprites, scene = [], []
    for clip in clips:
        frames, masks = clip.frames[:1], clip.masks[:1]
        recon = video_frames(forward(video_tensor(frames)[None])[0])
        sprites.append(masked_psnr(frames, recon, masks > 0))
        scene.append(masked_psnr(frames, recon, masks == 0))
    return float(np.mean(sprites)), float(np.mean(scene))


def train(name, model, forward, clips, held_out, args) -> list[dict]:
    rng = np.random.default_rng(0)  # the same crops, in the same order, for every model
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    rows, elapsed = [], 0.0
    for step in tqdm(range(1, args.steps + 1), desc=name):
        batch, _ = random_windows(clips, rng, args.batch, 1, args.crop)
        start = time.perf_counter()
        model.train()
        loss = reconstruction_loss(forward(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        elapsed += time.perf_counter() - start
        if step % args.every == 0:
            model.eval()
            sprites, scene = first_frame_psnr(forward, held_out)
            rows.append({"model": name, "step": step, "seconds": round(elapsed, 3), "loss": float(loss.detach()),
                         "sprites_db": round(sprites, 2), "scene_db": round(scene, 2)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--every", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clips", type=int, default=100, help="training clips (the recipe's first N)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if args.every < 1 or args.steps % args.every:
        parser.error(f"--every ({args.every}) must divide --steps ({args.steps})")
    torch.set_num_threads(2)
    world = WorldConfig()
    clips = training_clips(PretrainConfig(train_clips=args.clips), world)
    held_out = [generate_clip(EVAL_SEED0 + i, world) for i in range(8)]

    models = {}
    for name, make in [("Wan 2.1 layout", lambda: build_vae(PretrainConfig(vae_is_residual=False))),
                       ("Wan 2.2 residual", lambda: build_vae(PretrainConfig(vae_is_residual=True))),
                       ("plain conv AE", PlainAutoencoder)]:
        torch.manual_seed(0)
        models[name] = make()
    rows = []
    for name, model in models.items():
        forward = model if isinstance(model, PlainAutoencoder) else wan_forward(model)
        rows += train(name, model, forward, clips, held_out, args)

    print(f"\n{'model':18} {'params':>9} {'step':>6} {'train s':>8} {'sprites dB':>11} {'scene dB':>9}")
    params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    for row in rows:
        print(f"{row['model']:18} {params[row['model']]:>9,} {row['step']:>6} {row['seconds']:>8.1f} "
              f"{row['sprites_db']:>11.2f} {row['scene_db']:>9.2f}")
    last = {row["model"]: row for row in rows if row["step"] == args.steps}
    ref = last["plain conv AE"]
    print(f"\nafter {args.steps} steps, against the plain AE:")
    for name in ("Wan 2.1 layout", "Wan 2.2 residual"):
        row = last[name]
        print(f"  {name}: {row['seconds'] / ref['seconds']:.1f}x the time per step; sprites "
              f"{row['sprites_db'] - ref['sprites_db']:+.1f} dB, scene {row['scene_db'] - ref['scene_db']:+.1f} dB")
    if args.json:
        write_json(args.json, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
