"""Training-step time with the latent/text cache vs. without, measured as a ratio in one run.

Goal (issue 4): a cached step spends >= 90% of its time in the transformer (forward + backward), i.e. the cache
removes the VAE / text-encoder / video-decoding work from every step. Both variants run the same LoRA step of
ffstudy.train (sample_flow_inputs, masked_velocity_loss, AdamW); "uncached" rebuilds the FFGo clip from files
and encodes it each step, as a trainer without a cache would.

    python benchmarks/train_step.py                    # SpriteWorld model on CPU (falls back to tiny-wan2.2-i2v)
    python benchmarks/train_step.py --model tiny-wan2.2-i2v --height 64 --width 112 --frames 17
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from ffstudy.data import FewShotDataset, encode_clip
from ffstudy.lora import FFGO_TARGET_MODULES
from ffstudy.models import ModelNotAvailableError, load_pipeline
from ffstudy.spriteworld.fewshot import write_fewshot_dataset
from ffstudy.train import expert_timestep_range, masked_velocity_loss, sample_flow_inputs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="spriteworld")
    parser.add_argument("--path", help="local folder of the model's weights")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)
    from peft import LoraConfig

    try:
        pipe = load_pipeline(args.model, device="cpu", path=args.path)
    except ModelNotAvailableError:
        args.model, args.height, args.width = "tiny-wan2.2-i2v", 64, 112
        pipe = load_pipeline(args.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    transformer = pipe.transformer
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=FFGO_TARGET_MODULES))
    params = [p for n, p in transformer.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    sigmas, lo, hi = expert_timestep_range("full", 0.9, 5.0)
    text_length = pipe.ffstudy_backbone.max_sequence_length
    generator = torch.Generator().manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        dataset = FewShotDataset.load(write_fewshot_dataset(tmp, examples=args.batch))

        def encoded_batch():
            return [encode_clip(pipe, dataset.training_clip(e, args.height, args.width, args.frames), text_length)
                    for e in dataset.examples]

        cache = encoded_batch()

        def step(batch):
            inputs, target, mask, _ = sample_flow_inputs(batch, sigmas, lo, hi, generator, "cpu")
            start = time.perf_counter()
            loss = masked_velocity_loss(transformer(**inputs, return_dict=False)[0], target, 50.0, mask)
            loss.backward()
            in_transformer = time.perf_counter() - start
            optimizer.step()
            optimizer.zero_grad()
            return in_transformer

        step(cache)  # warm-up
        timings = {}
        for name, get_batch in (("cached", lambda: cache), ("uncached", encoded_batch)):
            total, inside = 0.0, 0.0
            for _ in range(args.steps):
                start = time.perf_counter()
                inside += step(get_batch())
                total += time.perf_counter() - start
            timings[name] = (total / args.steps, inside / args.steps)
    (cached, cached_in), (uncached, uncached_in) = timings["cached"], timings["uncached"]
    print(f"model {args.model}, batch {args.batch} x {args.frames} frames at {args.width}x{args.height}, "
          f"LoRA r16, CPU {torch.get_num_threads()} threads, {args.steps} steps each")
    print(f"cached step   {cached * 1000:8.1f} ms   transformer fwd+bwd {cached_in * 1000:8.1f} ms "
          f"({cached_in / cached:.1%} of the step)")
    print(f"uncached step {uncached * 1000:8.1f} ms   transformer fwd+bwd {uncached_in * 1000:8.1f} ms "
          f"({uncached_in / uncached:.1%} of the step)")
    print(f"speed-up from the cache: {uncached / cached:.2f}x")


if __name__ == "__main__":
    main()
