"""Pretrain the SpriteWorld I2V model: the VAE on short crops, then the transformer on cached latents.

The model is the Wan I2V architecture in miniature — ``AutoencoderKLWan`` (4×8×8 compression by default, z = 16),
``WanTransformer3DModel`` with 36 input channels (16 noisy + 4 mask + 16 first-frame latents), a small frozen
UMT5 text encoder with an offline BPE tokenizer — saved as a diffusers ``WanImageToVideoPipeline`` folder.
The transformer is trained with the same flow-matching inputs as the FFGo LoRA (``ffstudy.train``), on plain
image-to-video clips (a few with a hard scene cut: ``transformer_cut_probability``), with the loss on the latent
cells a sprite covers weighted up: sprites are few cells, and keeping them whole needs the transformer to carry them.

    ffstudy spriteworld pretrain --config configs/spriteworld-pretrain.yaml --out data/models/spriteworld-i2v
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import TrainingClip, encode_clip, latent_entity_mask, video_tensor
from ..generate import WAN_NEGATIVE_PROMPT
from ..models import ffgo_scheduler, tiny_text_encoder, tiny_tokenizer
from ..train import entity_loss_weights, expert_timestep_range, masked_velocity_loss, sample_flow_inputs
from .world import WorldConfig, generate_clip


@dataclass
class PretrainConfig:
    seed: int = 0
    threads: int = 2
    # VAE
    vae_base_dim: int = 12
    vae_is_residual: bool = True  # Wan 2.2's layout (average-pooling shortcuts around every down/up block), else 2.1's
    # channel multiplier per level; each level but the last halves the size, so 8x needs 4 levels, or 3 with patches
    vae_dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    vae_patch_size: int | None = None  # 2: Wan 2.2 TI2V's VAE input, 2x2 pixels folded into channels first
    # pixels per latent cell along each side: Wan's 8, or 4 (4x4 blocks keep the sprites' shapes that 8x8 blocks round
    # off: recipes/spriteworld/README.md, "Keeping shapes through the VAE"); 4 needs 3 levels without patches
    vae_spatial_compression: int = 8
    vae_steps: int = 2400
    vae_batch: int = 8
    vae_frames: int = 5  # frame 0 alone + one group of 4; 9 would also train the cache from group to group
    vae_crop: int = 32
    vae_lr: float = 5e-4
    vae_kl_weight: float = 1e-6
    vae_point_posterior: bool = False  # pin the untrained log-variance so posterior samples are the mean
    vae_sprite_weight: float = 0.0  # extra loss weight on sprite pixels, as the decoder stage's
    # decoder fine-tuning on whole clips (encoder frozen, so the transformer's latents do not change)
    decoder_steps: int = 600
    decoder_batch: int = 4
    decoder_clips: int = 100
    decoder_crop: int = 6  # latent pixels (48 image pixels), all 17 frames
    decoder_lr: float = 3e-4
    decoder_sprite_weight: float = 0.0  # extra loss weight on sprite pixels: the hard part for the VAE
    # transformer
    layers: int = 6
    heads: int = 4
    head_dim: int = 32
    ffn_dim: int = 512
    text_dim: int = 64
    max_sequence_length: int = 128
    train_clips: int = 500  # first training seed is 10_000; held-out evaluation seeds start at 1_000_000
    # the transformer's clips, the first ``transformer_clips`` training seeds (None: train_clips). The VAE stages
    # always train on ``train_clips``, so the VAE does not change with the transformer's data
    transformer_clips: int | None = None
    # latent cells per token along each side: Wan's 2; 4 on a 4x4-block VAE keeps the tokens (and the step time) of
    # an 8x8-block VAE with 2
    transformer_patch: int = 2
    transformer_steps: int = 2500
    transformer_batch: int = 16
    transformer_lr: float = 5e-4
    flow_shift: float = 3.0  # sampling shift for training sigmas (inference uses FFGo's 5)
    max_grad_norm: float = 1.0
    transformer_sprite_weight: float = 4.0  # extra loss weight on the latent cells a sprite covers in their frames
    # share of training clips whose caption is replaced by generate()'s default negative prompt, which CFG's
    # unconditional branch reads at inference (0: that branch is never trained)
    transformer_caption_dropout: float = 0.0
    # share of the transformer's clips that cut to a new scene (None: the world's). It sets how readily the base
    # model cuts on its own, which is what FFGo's LoRA has to teach; the VAE stages always see the world's clips
    transformer_cut_probability: float | None = None

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "PretrainConfig":
        """The config in ``path`` with ``overrides`` (a variant of the recipe, as the stage benchmarks try); a
        name that is not a setting is an error, in the file or in the overrides."""
        import yaml

        values = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in fields(cls)}
        for source, names in ((path, values), ("overrides", overrides)):
            if unknown := sorted(set(names) - known):
                raise ValueError(f"{source}: unknown settings {unknown}")
        return cls(**{**values, **overrides})


TRAIN_SEED0, EVAL_SEED0 = 10_000, 1_000_000


def build_vae(config: PretrainConfig):
    """The SpriteWorld ``AutoencoderKLWan``, freshly initialised: Wan 2.1's layout (or 2.2's residual one) at
    ``vae_base_dim`` width, optionally on 2x2 pixel patches (Wan 2.2 TI2V's input), compressing time 4x and space
    ``vae_spatial_compression`` x (Wan's 8, or 4) to 16 channels: the last two halvings also halve time."""
    from diffusers import AutoencoderKLWan

    patch, levels, factor = config.vae_patch_size or 1, len(config.vae_dim_mult), config.vae_spatial_compression
    if patch * 2 ** (levels - 1) != factor:
        raise ValueError(f"vae_dim_mult {list(config.vae_dim_mult)} with vae_patch_size {config.vae_patch_size} "
                         f"compresses {patch * 2 ** (levels - 1)}x, not vae_spatial_compression {factor}x: for 8x "
                         f"use 4 levels without patches or 3 with 2; for 4x, 3 levels without patches")
    channels = 3 * patch * patch
    return AutoencoderKLWan(base_dim=config.vae_base_dim, z_dim=16, dim_mult=list(config.vae_dim_mult),
                            num_res_blocks=1, temperal_downsample=[False] * (levels - 3) + [True, True],
                            is_residual=config.vae_is_residual, patch_size=config.vae_patch_size,
                            in_channels=channels, out_channels=channels, scale_factor_spatial=factor)


def build_transformer(config: PretrainConfig):
    """The SpriteWorld ``WanTransformer3DModel`` (I2V: 16 noisy + 4 mask + 16 first-frame channels in), freshly
    initialised from the current torch seed."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, config.transformer_patch, config.transformer_patch), num_attention_heads=config.heads,
        attention_head_dim=config.head_dim, in_channels=36, out_channels=16, text_dim=config.text_dim, freq_dim=256,
        ffn_dim=config.ffn_dim, num_layers=config.layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024)


def build_untrained(config: PretrainConfig):
    """The SpriteWorld pipeline with freshly initialised (seeded) weights."""
    from diffusers import WanImageToVideoPipeline

    torch.manual_seed(config.seed)
    tokenizer = tiny_tokenizer()
    text_encoder = tiny_text_encoder(tokenizer, d_model=config.text_dim)
    vae = build_vae(config)
    return WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae,
                                   transformer=build_transformer(config), scheduler=ffgo_scheduler(),
                                   image_encoder=None, image_processor=None)


def training_clips(config: PretrainConfig, world: WorldConfig, count: int | None = None) -> list:
    """The first ``count`` (default ``train_clips``) training clips, rendered once: each stage draws from them
    (rendering costs more than a VAE step)."""
    count = count or config.train_clips
    return [generate_clip(TRAIN_SEED0 + i, world) for i in tqdm(range(count), desc="rendering clips")]


def transformer_world(config: PretrainConfig, world: WorldConfig) -> WorldConfig:
    """The world the transformer's clips come from: ``world`` with the config's share of scene cuts, if it sets one.
    The seeds are the same, so a clip whose cut draw agrees with the VAE's copy renders identically."""
    share = config.transformer_cut_probability
    return world if share is None else replace(world, cut_probability=share)


def decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """``AutoencoderKLWan.decode`` without its final clamp to [-1, 1], which zeroes the gradient of every
    overshooting pixel; the frame-by-frame causal cache is driven exactly as diffusers does."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    vae.clear_cache()
    x, frames = vae.post_quant_conv(z), []
    for i in range(z.shape[2]):
        vae._conv_idx = [0]
        frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                  first_chunk=i == 0))
    vae.clear_cache()
    video = torch.cat(frames, 2)
    return video if vae.config.patch_size is None else unpatchify(video, vae.config.patch_size)


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """L1 + L2 on [-1, 1] pixels: the VAE and decoder stages' objective; ``weight`` (broadcast over pixels)
    rescales each pixel's share."""
    error = (recon - target).abs() + (recon - target).pow(2)
    return error.mean() if weight is None else (weight * error).mean()


def random_windows(clips: list, rng: np.random.Generator, count: int, frames: int,
                   size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random ``frames`` x ``size`` x ``size`` windows of random clips, as a VAE input batch, and
    where sprites cover them (a boolean ``(count, 1, frames, size, size)`` mask)."""
    windows, sprites = [], []
    for _ in range(count):
        clip = clips[int(rng.integers(0, len(clips)))]
        t, height, width = clip.frames.shape[:3]
        t0 = int(rng.integers(0, t - frames + 1))
        y0 = int(rng.integers(0, height - size + 1))
        x0 = int(rng.integers(0, width - size + 1))
        window = np.s_[t0:t0 + frames, y0:y0 + size, x0:x0 + size]
        windows.append(video_tensor(clip.frames[window]))
        sprites.append(torch.from_numpy(clip.masks[window] > 0))
    return torch.stack(windows), torch.stack(sprites)[:, None]


def train_vae(vae, clips: list, config: PretrainConfig, log: list) -> None:
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.vae_lr, total_steps=config.vae_steps,
                                                   pct_start=0.05)
    vae.train()
    progress = tqdm(range(config.vae_steps), desc="SpriteWorld VAE")
    for step in progress:
        x, sprites = random_windows(clips, rng, config.vae_batch, config.vae_frames, config.vae_crop)
        posterior = vae.encode(x).latent_dist
        recon = decode_unclamped(vae, posterior.mode())  # deterministic: converges several times faster
        weight = 1.0 + config.vae_sprite_weight * sprites.float()  # 0: all ones, the plain loss
        loss = reconstruction_loss(recon, x, weight) + config.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        log.append({"stage": "vae", "step": step + 1, "loss": float(loss.detach())})
        progress.set_postfix(loss=f"{log[-1]['loss']:.4f}", refresh=False)
    vae.eval()


@torch.no_grad()
def collapse_posterior(vae) -> None:
    """Make the encoder's posterior a point at its mean. The VAE trains on the mode, so only the 1e-6 KL term ever
    reaches the log-variance, which drifts to σ ≈ 1 (raw units): normalised, a posterior sample is the latent plus
    noise of σ 1.76 on average (1.0–3.9 by channel, measured on the shipped VAE), larger than the latents' own
    spread of 1. FFGo's trainer samples the posterior, as a KL-trained VAE allows, so the log-variance is pinned to
    diffusers' floor (−30): a sample is then the mean."""
    z = vae.config.z_dim
    vae.quant_conv.weight[z:] = 0.0
    vae.quant_conv.bias[z:] = -30.0


def vae_stage(vae, clips: list, config: PretrainConfig, log: list) -> None:
    """Train the VAE, freeze it (with a point posterior if configured) and measure its latent statistics: everything
    before the transformer's latents."""
    train_vae(vae, clips, config, log)
    vae.requires_grad_(False)
    if config.vae_point_posterior:
        collapse_posterior(vae)
    set_latent_statistics(vae, clips[:64])


def finetune_decoder(vae, clips: list, config: PretrainConfig, log: list) -> None:
    """Fine-tune the decoder on whole clips: the VAE stage sees 5-frame windows, so the causal cache of later
    chunks is never trained there and reconstructions degrade after frame 4. The encoder stays frozen."""
    with torch.no_grad():
        latents = [vae.encode(video_tensor(clip.frames)[None]).latent_dist.mode() for clip in
                   tqdm(clips[:config.decoder_clips], desc="decoder latents")]
    parameters = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=config.decoder_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.decoder_steps)
    rng, c, f = np.random.default_rng(config.seed + 2), config.decoder_crop, vae.spatial_compression_ratio
    vae.decoder.train()
    for step in tqdm(range(config.decoder_steps), desc="SpriteWorld decoder"):
        zs, targets, sprites = [], [], []
        for _ in range(config.decoder_batch):
            i = int(rng.integers(0, len(latents)))
            y, x = (int(rng.integers(0, n - c + 1)) for n in latents[i].shape[-2:])
            zs.append(latents[i][0, :, :, y:y + c, x:x + c])
            window = np.s_[:, y * f:(y + c) * f, x * f:(x + c) * f]
            targets.append(video_tensor(clips[i].frames[window]))
            sprites.append(torch.from_numpy(clips[i].masks[window] > 0))
        z, target = torch.stack(zs), torch.stack(targets)
        weight = 1.0 + config.decoder_sprite_weight * torch.stack(sprites)[:, None].float()  # (B, 1, T, H, W)
        loss = reconstruction_loss(decode_unclamped(vae, z), target, weight)  # weight 0: all ones, the plain loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        log.append({"stage": "decoder", "step": step + 1, "loss": float(loss.detach())})
    vae.eval()
    vae.requires_grad_(False)


@torch.no_grad()
def set_latent_statistics(vae, clips: list) -> None:
    """Per-channel mean/std of the posterior means, so normalised latents are about N(0, 1) as in Wan."""
    means = torch.cat([vae.encode(video_tensor(clip.frames)[None]).latent_dist.mean for clip in clips])
    vae.register_to_config(latents_mean=means.mean(dim=(0, 2, 3, 4)).tolist(),
                           latents_std=means.std(dim=(0, 2, 3, 4)).tolist())


def encode_training_set(pipe, clips: list, config: PretrainConfig) -> list[dict]:
    encoded = []
    for clip in tqdm(clips, desc="encoding clips"):
        item = encode_clip(pipe, TrainingClip(clip.frames, clip.caption, None), config.max_sequence_length)
        item["entity_mask"] = latent_entity_mask(clip.masks, pipe.vae_scale_factor_temporal,
                                                 pipe.vae_scale_factor_spatial)
        encoded.append(item)
    return encoded


def drop_captions(prompt_embeds: torch.Tensor, empty: torch.Tensor, rate: float, generator) -> torch.Tensor:
    """Replace each clip's caption embedding by ``empty`` (the unconditional prompt's) with probability ``rate``:
    caption dropout, which trains the prediction that classifier-free guidance subtracts."""
    drop = torch.rand(len(prompt_embeds), generator=generator) < rate
    return torch.where(drop.view(-1, 1, 1), empty.expand_as(prompt_embeds), prompt_embeds)


def train_transformer(pipe, encoded: list[dict], config: PretrainConfig, log: list) -> None:
    transformer = pipe.transformer
    if config.transformer_caption_dropout:  # CFG's unconditional branch reads generate()'s negative prompt
        empty = pipe.encode_prompt(WAN_NEGATIVE_PROMPT, do_classifier_free_guidance=False,
                                   max_sequence_length=config.max_sequence_length, device="cpu")[0].detach()
    transformer.train()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=config.transformer_lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.transformer_lr,
                                                   total_steps=config.transformer_steps, pct_start=0.05)
    sigmas, lo, hi = expert_timestep_range("full", 0.9, config.flow_shift)
    generator = torch.Generator().manual_seed(config.seed + 1)
    for step in tqdm(range(config.transformer_steps), desc="SpriteWorld transformer"):
        batch = [encoded[int(i)] for i in torch.randint(len(encoded), (config.transformer_batch,),
                                                        generator=generator)]
        inputs, target, _, _ = sample_flow_inputs(batch, sigmas, lo, hi, generator, "cpu")
        if config.transformer_caption_dropout:
            inputs["encoder_hidden_states"] = drop_captions(inputs["encoder_hidden_states"], empty,
                                                            config.transformer_caption_dropout, generator)
        weight = entity_loss_weights(batch, config.transformer_sprite_weight, "cpu")
        loss = masked_velocity_loss(transformer(**inputs, return_dict=False)[0], target, 50.0, weight=weight)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), config.max_grad_norm)
        optimizer.step()
        schedule.step()
        log.append({"stage": "transformer", "step": step + 1, "loss": float(loss.detach())})
    transformer.eval()


def final_loss(log: list[dict], stage: str) -> float:
    """The mean loss of ``stage``'s last 50 steps in a pretraining log: what training.json and the cards report."""
    return float(np.mean([r["loss"] for r in log if r["stage"] == stage][-50:]))


def transformer_stage(pipe, clips: list, config: PretrainConfig, log: list, timings: dict) -> None:
    """Encode ``clips`` with ``pipe``'s frozen VAE and train the transformer on them, timing both: the recipe's
    middle stage, which ``recipes/spriteworld/transformer_stage.py`` reruns on the shipped VAE."""
    start = time.perf_counter()
    encoded = encode_training_set(pipe, clips, config)
    timings["encode_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    train_transformer(pipe, encoded, config, log)
    timings["transformer_seconds"] = time.perf_counter() - start


def pretrain(config: PretrainConfig, out: str | Path, world: WorldConfig = WorldConfig()) -> Path:
    """Run the whole recipe and save the pipeline folder, its training log and timings into ``out``."""
    from ..io import atomic_dir, write_json

    torch.set_num_threads(config.threads)
    log, timings = [], {}
    # the folder is checked now, before hours of training, and replaced whole at the end: a kill loses nothing
    # and a stale model card or evaluation cannot survive next to new weights
    with atomic_dir(out) as staging:
        pipe = build_untrained(config)
        pipe.set_progress_bar_config(disable=True)
        pipe.text_encoder.requires_grad_(False)
        start = time.perf_counter()
        clips = training_clips(config, world)
        timings["render_seconds"] = time.perf_counter() - start
        transformer_clips, own_world = clips, transformer_world(config, world)
        count = config.transformer_clips or config.train_clips
        if own_world != world or count != config.train_clips:  # the same seeds, its own share of cuts or number
            start = time.perf_counter()
            transformer_clips = training_clips(config, own_world, count)
            timings["transformer_render_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        vae_stage(pipe.vae, clips, config, log)
        timings["vae_seconds"] = time.perf_counter() - start
        transformer_stage(pipe, transformer_clips, config, log, timings)
        stages = ["vae", "transformer"]
        if config.decoder_steps:  # none for a VAE stage that already trains on whole clips
            start = time.perf_counter()
            finetune_decoder(pipe.vae, clips, config, log)
            timings["decoder_seconds"] = time.perf_counter() - start
            stages.append("decoder")
        final_losses = {s: final_loss(log, s) for s in stages}
        pipe.save_pretrained(staging, safe_serialization=True)
        write_json(staging / "training.json", {"config": asdict(config), "world": asdict(world),
                                               "timings": timings, "final_losses": final_losses})
        (staging / "training_log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    return Path(out)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="ffstudy spriteworld pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/spriteworld-pretrain.yaml")
    parser.add_argument("--out", default="data/models/spriteworld-i2v")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    folder = pretrain(PretrainConfig.from_file(args.config), args.out)
    print(f"pretrained SpriteWorld in {(time.perf_counter() - started) / 60:.1f} min: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
