"""Does pinning latent frame 0 to the conditioning image help the SpriteWorld model keep its sprites?

On the card's first 40 seeds `persistence_failures.py` found that every video the shipped model fails loses its
sprite in frame 0 already (on this script's 60 seeds only 1 of 5 does): the Wan2.2-I2V-A14B layout denoises frame 0
from the conditioning latent instead of copying it. This script tests the obvious remedy at sampling time. After
every denoising step a diffusers ``callback_on_step_end`` puts latent frame 0 back on its straight flow path from
the initial noise ε to the conditioning latent c, x_σ = (1 − σ)·c + σ·ε, so the last step leaves exactly c there
(Wan2.2-TI2V-5B keeps its first frame by construction). c and ε are read from the transformer's 36-channel input at
the first step (16 noisy channels, 4 mask channels, 16 condition channels).

Persistence is measured as the model card measures it (the same generation, CFG 1, shift 5, 20 steps, and the same
check), with and without the pin, on seeds that played no part in choosing anything (default 1,200,000–1,200,059),
and the failing videos are named by ``persistence_failures.py``'s functions.

    .venv/bin/python -m benchmarks.pin_first_frame       # from the repository root; about 12 min on the 2-core CPU
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager, nullcontext

import torch

from benchmarks.persistence_failures import generated_failures, round_trip_failures
from ffstudy.models import load_pipeline


class FirstFramePin:
    """``callback_on_step_end`` that keeps latent frame 0 on the straight path from ε to the condition c."""

    tensor_inputs = ["latents"]

    def __init__(self, transformer, z_dim: int):
        self.z_dim, self.noise, self.condition = z_dim, None, None
        self.hook = transformer.register_forward_pre_hook(self.read_input, with_kwargs=True)

    def read_input(self, module, args, kwargs):
        if self.condition is None:  # the first call: its noisy channels are still the initial noise
            hidden = kwargs["hidden_states"]
            self.noise = hidden[:, :self.z_dim, :1].clone()
            self.condition = hidden[:, self.z_dim + 4:, :1].clone()

    def __call__(self, pipe, step, timestep, tensors):
        sigma = pipe.scheduler.sigmas[pipe.scheduler.step_index]  # the noise level the step just reached
        latents = tensors["latents"].clone()
        latents[:, :, :1] = (1 - sigma) * self.condition + sigma * self.noise
        return {"latents": latents}


@contextmanager
def pinned_first_frame(pipe):
    """Every call of ``pipe``'s class samples with a fresh :class:`FirstFramePin` while this is open (``generate``
    calls the pipeline itself, so the callback goes in here)."""
    cls = type(pipe)
    plain_call = cls.__call__

    def call_with_pin(self, *args, **kwargs):
        pin = FirstFramePin(self.transformer, self.vae.config.z_dim)
        try:
            return plain_call(self, *args, callback_on_step_end=pin, **kwargs)
        finally:
            pin.hook.remove()

    cls.__call__ = call_with_pin
    try:
        yield
    finally:
        cls.__call__ = plain_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first-seed", type=int, default=1_200_000)
    parser.add_argument("--videos", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe = load_pipeline("spriteworld")
    pipe.set_progress_bar_config(disable=True)
    seeds = range(args.first_seed, args.first_seed + args.videos)
    print(f"seeds {seeds.start}–{seeds.stop - 1} (+k below is seed {seeds.start} + k)\n"
          "| frame 0 | persistence | videos that fail | of which frame 0 fails | round trip fails too | seconds |\n"
          "|---|---|---|---|---|---|")
    round_trip = round_trip_failures(pipe.vae, seeds)  # the same clips, with or without the pin
    for pin in (False, True):
        started = time.perf_counter()
        with pinned_first_frame(pipe) if pin else nullcontext():
            failed, first_frame = generated_failures(pipe, seeds)
        print(f"| {'pinned' if pin else 'denoised (shipped)'} | {1 - len(failed) / len(seeds):.1%} | "
              f"{len(failed)}" + (": " + ", ".join(f"+{k - seeds.start}" for k in failed) if failed else "") + " | "
              f"{len(set(failed) & set(first_frame))} | {len(set(failed) & set(round_trip))} | "
              f"{time.perf_counter() - started:.0f} |", flush=True)
        print(json.dumps({"pinned": pin, "generated": failed, "frame_0": first_frame, "round_trip": round_trip}),
              flush=True)


if __name__ == "__main__":
    main()
