"""GPU memory and time of one FFGo LoRA training step at a shipped config's real scale.

The memory figures written in configs/wan2.2-*.yaml come from here. Real Wan weights cannot be downloaded on the
machines this project runs on, and a step's memory and time do not depend on the weights' values, so the expert is
built from the backbone's stored layout (``BackboneSpec.transformer_config``: the real 14B or 5B architecture) with
random weights, in bf16 as ``load_pipeline`` loads the real checkpoints. The step is the trainer's own
(``add_ffgo_lora``, ``batch_loss`` under the accelerator's bf16 autocast, backward, grad-norm clip, AdamW) on
cached inputs of exactly the shapes ``encode_clip`` produces (checked against it in tests/test_train.py). Only the
trained expert is on the GPU, as in training once the latent cache is built (``park_idle_modules``).

    python benchmarks/train_memory.py --config configs/wan2.2-i2v-a14b.yaml              # batch from the config
    python benchmarks/train_memory.py --config configs/wan2.2-i2v-a14b.yaml --batch 1 --clip-length paper
    python benchmarks/train_memory.py --config configs/spriteworld-cpu.yaml --model tiny-wan2.2-i2v --device cpu
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from ffstudy.models import get_backbone, load_pipeline
from ffstudy.train import TrainConfig, add_ffgo_lora, batch_loss, clip_frames, expert_timestep_range

VAE_TEMPORAL = 4  # every Wan VAE: 4 frames per latent frame after the first


def build_expert(name: str, device: str):
    """The backbone's transformer with its real layout and random weights (bf16 on CUDA, fp32 on CPU)."""
    from diffusers import WanTransformer3DModel

    spec = get_backbone(name)
    layout = spec.transformer_config or dict(load_pipeline(name, device="cpu").transformer.config)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # built where it runs: a 14B expert never passes through host memory
            return WanTransformer3DModel.from_config(layout).requires_grad_(False)
    finally:
        torch.set_default_dtype(previous)


def cached_item(transformer, name: str, height: int, width: int, frames: int, text_length: int,
                entity_masks: bool = False) -> dict:
    """Random tensors shaped like one ``encode_clip`` result for this backbone at this size (plus an
    ``entity_mask`` like the trainer adds when the entity-weighted loss is on)."""
    layout = transformer.config
    spec = get_backbone(name)
    cell = spec.spatial_factor // layout.patch_size[1]  # VAE pixels per latent cell
    latent = (1, layout.out_channels, (frames - 1) // VAE_TEMPORAL + 1, height // cell, width // cell)
    item = {"latent_mean": torch.randn(latent), "latent_std": torch.rand(latent) * 0.1,
            "prompt_embeds": torch.randn(1, text_length, layout.text_dim)}
    if spec.family == "wan2.2-ti2v":  # the clean first frame is blended in, not concatenated
        item["condition"] = torch.randn(latent[:2] + (1,) + latent[3:])
        item["first_frame_mask"] = torch.ones((1, 1) + latent[2:])
        item["first_frame_mask"][:, :, 0] = 0
    else:
        item["condition"] = torch.randn((1, layout.in_channels - layout.out_channels) + latent[2:])
    if layout.image_dim is not None:
        item["image_embeds"] = torch.randn(1, 257, layout.image_dim)
    if entity_masks:
        item["entity_mask"] = (torch.rand((1, 1) + latent[2:]) < 0.1).float()
    return item


def measure(config: TrainConfig, name: str, device: str, batch_size: int, steps: int) -> dict:
    from accelerate import Accelerator

    cuda = device == "cuda"
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")
    started = time.perf_counter()
    transformer = build_expert(name, device)
    params = add_ffgo_lora(transformer, config)
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                  eps=config.adam_epsilon)
    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    built = time.perf_counter() - started
    frames = clip_frames(config)
    text_length = get_backbone(name).max_sequence_length
    batch = [cached_item(transformer, name, config.height, config.width, frames, text_length,
                         entity_masks=config.entity_loss_weight > 0) for _ in range(batch_size)]
    expert = "high" if get_backbone(name).family == "wan2.2-i2v" else "main"
    sigmas, lo, hi = expert_timestep_range(expert, config.boundary_ratio, config.flow_shift)
    generator = torch.Generator().manual_seed(config.seed)
    tokens = batch[0]["latent_mean"][0, 0].numel() // (transformer.config.patch_size[1] ** 2)
    result = dict(model=name, device=torch.cuda.get_device_name() if cuda else "cpu", batch=batch_size,
                  height=config.height, width=config.width, frames=frames, tokens_per_clip=tokens,
                  gradient_checkpointing=config.gradient_checkpointing, rank=config.rank,
                  base_params=sum(p.numel() for n, p in transformer.named_parameters() if "lora_" not in n),
                  lora_params=sum(p.numel() for p in params), build_seconds=round(built, 1))
    if cuda:
        torch.cuda.synchronize()
        result["resident_gib"] = torch.cuda.memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    try:
        for _ in range(steps + 1):  # the first step is a warm-up (kernel choice, optimizer states)
            start = time.perf_counter()
            loss, _ = batch_loss(accelerator, transformer, batch, config, sigmas, lo, hi, generator)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            losses.append(loss.item())
    except torch.cuda.OutOfMemoryError as error:
        result.update(fits=False, error=str(error).splitlines()[0])
    else:
        result.update(fits=True, step_seconds=min(times[1:] or times), losses=losses)
    if cuda:
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a TrainConfig YAML (its model, size, clip length, rank)")
    parser.add_argument("--model", help="override the config's backbone (e.g. tiny-wan2.2-i2v to try it on CPU)")
    parser.add_argument("--batch", type=int, help="clips per step (default: the config's batch_size)")
    parser.add_argument("--clip-length", help="override clip_length: official, paper or a frame count 4k+1")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step (0: time the warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    clip_length = args.clip_length if args.clip_length in (None, "official", "paper") else int(args.clip_length)
    config = TrainConfig.from_file(args.config, clip_length=clip_length)
    result = measure(config, args.model or config.model, args.device, args.batch or config.batch_size, args.steps)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
