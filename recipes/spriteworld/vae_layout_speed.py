"""Seconds per training step of each SpriteWorld VAE layout, as ratios to the recipe's, in one run.

Why (issue 5): the VAE's 28 dB goal is a matter of training budget on the 2-core CPU (``vae_budget.py``), so a
layout that trains faster buys more steps in the recipe's 2 hours. Each layout runs the VAE stage's step (forward
through the encoder's posterior mode and ``decode_unclamped``, L1 + L2, backward) on the same batch of whole
17-frame 64x64 clips, and the plain group autoencoders of ``vae_budget.py`` run theirs for scale. Since 8x8 pixel
blocks round stars into discs and 4x4 blocks keep them (``vae_budget.py --halvings 2``, issue 36), it also times the
Wan layout that codes 4x4 blocks: no patches, three levels (two spatial halvings, both also halving time).

    python recipes/spriteworld/vae_layout_speed.py              # batch 4, 3 timed steps each after one warm-up
"""
from __future__ import annotations

import argparse
import time

import torch

from ffstudy.spriteworld.pretrain import PretrainConfig, build_vae, decode_unclamped, reconstruction_loss
from vae_budget import GroupAutoencoder  # this folder, on the path when this script runs

LAYOUTS = {  # the first is the reference: the recipe's layout (configs/spriteworld-pretrain.yaml)
    "2x2 patches, base_dim 24, dim_mult [1,2,2] (the recipe's)": PretrainConfig(vae_patch_size=2, vae_base_dim=24,
                                                                               vae_dim_mult=(1, 2, 2)),
    "2x2 patches, base_dim 16, dim_mult [1,2,2]": PretrainConfig(vae_patch_size=2, vae_base_dim=16,
                                                                  vae_dim_mult=(1, 2, 2)),
    "base_dim 12, dim_mult [1,2,4,4] (the first shipped)": PretrainConfig(),
    **{f"4x4 blocks, base_dim {d}, dim_mult [1,2,2]": PretrainConfig(vae_base_dim=d, vae_dim_mult=(1, 2, 2),
                                                                   vae_spatial_compression=4) for d in (12, 16)},
}


def seconds_per_step(forward, parameters, batch: torch.Tensor, repeats: int) -> float:
    def step():
        loss = reconstruction_loss(forward(batch), batch)
        for p in parameters:
            p.grad = None
        loss.backward()

    step()  # warm-up: first-call allocations
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    batch = torch.rand(args.batch, 3, 17, 64, 64) * 2 - 1
    rows = {}
    for name, config in LAYOUTS.items():
        vae = build_vae(config)
        forward = lambda x, vae=vae: decode_unclamped(vae, vae.encode(x).latent_dist.mode())  # noqa: E731
        params = list(vae.parameters())
        rows[f"AutoencoderKLWan, {name}"] = (sum(p.numel() for p in params),
                                             seconds_per_step(forward, params, batch, args.repeats))
    for width, halvings in ((24, 3), (48, 3), (24, 2)):
        model = GroupAutoencoder(width, halvings=halvings)
        params = list(model.parameters())
        rows[f"plain group autoencoder, width {width}, {2 ** halvings}x{2 ** halvings} blocks"] = (
            sum(p.numel() for p in params), seconds_per_step(model, params, batch, args.repeats))
    reference = next(iter(rows.values()))[1]
    print(f"{'layout':72} {'params':>10} {'s/step':>7} {'vs the recipe':>13}")
    for name, (params, seconds) in rows.items():
        print(f"{name:72} {params:>10,} {seconds:>7.3f} {seconds / reference:>12.2f}x")


if __name__ == "__main__":
    main()
