"""Probe overhead: forward time and peak memory of a Wan transformer with and without FirstFrameProbe.

Goals (issue 3): on CPU at 25,200 tokens (640x480, 81 frames = 21x30x40 tokens), probe-on forward <= 1.5x
probe-off and <= 1 GiB extra peak memory, against the many GiB a materialised attention map needs; on a GPU at
75,600 tokens with one 5120-wide, 40-head block in bf16: <= 1.3x and <= 4 GiB.

Each mode runs in a fresh child process (CPU peak memory is the child's max RSS) after a small warm-up forward;
``--pairs`` off/on pairs run back to back and the median ratio is reported (issue 41: CPU goal <= 1.05x).

``--maps`` adds what a user would otherwise do: a diffusers attention processor that keeps every self-attention
map, ``softmax(q kᵀ/√d)`` per head (the attention-map-diffusers approach, here for Wan's ``attn1``). Its memory is
printed as computed for the run's size, and measured too where it fits in half of this machine's memory:

    python benchmarks/probe_overhead.py                      # CPU: 12 heads x 128, 2 blocks, 21x30x40 tokens
    python benchmarks/probe_overhead.py --frames 5 --rows 15 --cols 20 --pairs 1 --maps   # maps measured
    python benchmarks/probe_overhead.py --device cuda --dtype bfloat16 --heads 40 --blocks 1 --rows 45 --cols 80
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch


def build(args):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=args.heads, attention_head_dim=128, in_channels=36,
        out_channels=16, text_dim=256, freq_dim=256, ffn_dim=4 * 128 * args.heads, num_layers=args.blocks,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
    return model.to(args.device, getattr(torch, args.dtype)).eval()


def inputs(args, frames, rows, cols):
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(1, 36, frames, 2 * rows, 2 * cols, generator=g).to(args.device, dtype)
    text = torch.randn(1, 512, 256, generator=g).to(args.device, dtype)
    return dict(hidden_states=hidden, timestep=torch.tensor([999.0], device=args.device), encoder_hidden_states=text,
                return_dict=False)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


class StoredMapsProcessor:
    """Wan self-attention that keeps its attention maps, as attention-map-diffusers' processors do: the
    probabilities are formed explicitly (heads x tokens x tokens), used for the output and stored."""

    def __init__(self, store: list):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor, _get_qkv_projections

        from ffstudy.probe import _rope

        if encoder_hidden_states is not None:  # cross-attention to the text: the stock processor
            return WanAttnProcessor()(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (query, key, value))
        query, key = (_rope(t.transpose(1, 2), *rotary_emb).transpose(1, 2) for t in (query, key))
        probs = torch.softmax(query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5, dim=-1)
        self.store.append(probs)
        output = (probs @ value).transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](output))


def maps_bytes(args, tokens: int) -> tuple[int, int]:
    """(stored, peak) bytes of the stored-maps processor: one heads x tokens² map per block is kept, and the
    logits exist beside the probabilities while one is formed."""
    one = args.heads * tokens**2 * torch.finfo(getattr(torch, args.dtype)).bits // 8
    return args.blocks * one, (args.blocks + 1) * one


def child(args) -> dict:
    from ffstudy.probe import FirstFrameProbe

    model = build(args)
    if args.mode == "maps":
        store = []
        for block in model.blocks:
            block.attn1.set_processor(StoredMapsProcessor(store))
    with torch.no_grad():
        with FirstFrameProbe(model) if args.mode == "on" else contextlib.nullcontext():
            model(**inputs(args, 2, 4, 4))  # warm-up: kernels, allocator, the probe's one-off kernel check
        full = inputs(args, args.frames, args.rows, args.cols)
        sync(args.device)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times = []
        for _ in range(3 if args.device == "cuda" else 1):  # a GPU forward takes well under a second: best of 3
            probe = FirstFrameProbe(model) if args.mode == "on" else contextlib.nullcontext()
            with probe:
                if args.mode == "maps":
                    store.clear()
                start = time.perf_counter()
                model(**full)
                sync(args.device)
                times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() - base if args.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    from ffstudy.probe import _STOCK_KERNEL

    return dict(seconds=min(times), peak_bytes=peak, records=len(probe.result.records) if args.mode == "on" else 0,
                fused_lse=str(_STOCK_KERNEL))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--frames", type=int, default=21)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--cols", type=int, default=40)
    parser.add_argument("--pairs", type=int, default=3, help="off/on pairs, each in fresh processes; the median "
                                                                 "ratio is reported")
    parser.add_argument("--maps", action="store_true", help="also the stored-attention-maps processor, measured "
                                                                "where it fits in half of the memory")
    parser.add_argument("--mode", choices=("on", "off", "maps"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(child(args)))
        return
    tokens = args.frames * args.rows * args.cols
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; {args.blocks} block(s), {args.heads} heads x 128, {args.dtype}, "
          f"{tokens:,} tokens ({args.frames}x{args.rows}x{args.cols})")
    ratios, extras = [], []
    for pair in range(args.pairs):  # off then on, back to back: a slow spell of the machine hits both
        runs = {}
        for mode in ("off", "on"):
            command = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]
            runs[mode] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout
                                    .strip().splitlines()[-1])
        ratios.append(runs["on"]["seconds"] / runs["off"]["seconds"])
        extras.append((runs["on"]["peak_bytes"] - runs["off"]["peak_bytes"]) / 2**30)
        print(f"pair {pair + 1}: probe off {runs['off']['seconds']:.2f} s, on {runs['on']['seconds']:.2f} s, ratio "
              f"{ratios[-1]:.3f}; peak off {runs['off']['peak_bytes'] / 2**30:.2f} GiB, on "
              f"{runs['on']['peak_bytes'] / 2**30:.2f} GiB, extra {extras[-1]:.3f} GiB ({runs['on']['records']} records)")
    print(f"median of {args.pairs}: ratio {statistics.median(ratios):.3f}, extra peak memory "
          f"{statistics.median(extras):.3f} GiB")
    from ffstudy.probe import recording_bytes

    bound = recording_bytes(args.heads, 128, args.rows * args.cols, tokens, entities=1)
    print(f"the probe's stated bound for one block's recording: {bound / 2**30:.3f} GiB")
    stored, peak = maps_bytes(args, tokens)
    print(f"stored attention maps (attention-map-diffusers approach), computed: {stored / 2**30:.2f} GiB kept for "
          f"{args.blocks} block(s), {peak / 2**30:.2f} GiB at the peak of a forward")
    if args.maps:
        memory = (torch.cuda.get_device_properties(0).total_memory if args.device == "cuda"
                  else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        if peak > memory / 2:
            print(f"  not measured: {peak / 2**30:.1f} GiB is more than half of this machine's "
                  f"{memory / 2**30:.0f} GiB")
        else:
            command = [sys.executable, __file__, *sys.argv[1:], "--mode", "maps"]
            run = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout
                             .strip().splitlines()[-1])
            print(f"  measured: {run['seconds']:.2f} s, peak {run['peak_bytes'] / 2**30:.2f} GiB, extra over probe off "
                  f"{(run['peak_bytes'] - runs['off']['peak_bytes']) / 2**30:.2f} GiB")
    print(f"fused-kernel log-sum-exp bit-identical to the stock attention (else the chunked pass): "
          f"{runs['on']['fused_lse']}")


if __name__ == "__main__":
    main()
