"""Seconds per transformer training step on the latent grid of a VAE that codes 8x8 pixel blocks (the shipped one)
and of one that codes 4x4 blocks, in one run.

Why (issue 36): a VAE on 4x4 blocks keeps the sprites' shapes that 8x8 blocks round off (``vae_budget.py
--halvings 2``), but gives the transformer four times the latent cells. With Wan's 2x2 token patches that is four
times the tokens; with 4x4 patches (``transformer_patch: 4``) it is the shipped number of
tokens, each again covering 16x16 pixels. The step is the transformer stage's shape: the shipped width and depth,
batch 16, 5 latent frames of a 96x160 clip, 128 text tokens, forward + backward + AdamW.

    python recipes/spriteworld/token_cost.py          # about 2 minutes on 2 cores
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from ffstudy.spriteworld.pretrain import PretrainConfig, build_transformer

GRIDS = {"8x8-block latents, 2x2 patches (shipped)": ((12, 20), 2),
         "4x4-block latents, 2x2 patches": ((24, 40), 2),
         "4x4-block latents, 4x4 patches": ((24, 40), 4)}


def main():
    torch.set_num_threads(2)
    config = PretrainConfig()
    rows = {}
    for name, ((height, width), patch) in GRIDS.items():
        torch.manual_seed(0)
        model = build_transformer(replace(config, transformer_patch=patch))
        optimizer = torch.optim.AdamW(model.parameters(), config.transformer_lr)
        latents = torch.randn(config.transformer_batch, 36, 5, height, width)
        text = torch.randn(config.transformer_batch, config.max_sequence_length, config.text_dim)
        steps = torch.randint(0, 1000, (config.transformer_batch,))
        seconds = []
        for _ in range(4):  # the first is a warm-up
            start = time.perf_counter()
            model(latents, steps, text, return_dict=False)[0].pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            seconds.append(time.perf_counter() - start)
        rows[name] = (5 * height * width // patch ** 2, sum(p.numel() for p in model.parameters()), min(seconds[1:]))
    reference = next(iter(rows.values()))[2]
    print(f"{'latent grid and patches':45} {'tokens':>6} {'params':>10} {'s/step':>7} {'vs shipped':>10}")
    for name, (tokens, params, step) in rows.items():
        print(f"{name:45} {tokens:>6} {params:>10,} {step:>7.2f} {step / reference:>9.2f}x")


if __name__ == "__main__":
    main()
