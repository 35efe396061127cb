"""Probe overhead: forward time and peak memory of a Wan transformer with and without FirstFrameProbe.

Goals (issue 3): on CPU at 25,200 tokens (640x480, 81 frames = 21x30x40 tokens), probe-on forward <= 1.5x
probe-off and <= 1 GiB extra peak memory, against the many GiB a materialised attention map needs; on a GPU at
75,600 tokens with one 5120-wide, 40-head block in bf16: <= 1.3x and <= 4 GiB.

Each mode runs in a fresh child process (CPU peak memory is the child's max RSS) after a small warm-up forward;
``--pairs`` off/on pairs run back to back and the median ratio is reported (issue 41: CPU goal <= 1.05x):

    python benchmarks/probe_overhead.py                      # CPU: 12 heads x 128, 2 blocks, 21x30x40 tokens
    python benchmarks/probe_overhead.py --device cuda --dtype bfloat16 --heads 40 --blocks 1 --rows 45 --cols 80
"""
from __future__ import annotations

import argparse
import contextlib
import json
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


def child(args) -> dict:
    from ffstudy.probe import FirstFrameProbe

    model = build(args)
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
    parser.add_argument("--mode", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(child(args)))
        return
    tokens = args.frames * args.rows * args.cols
    dense = args.heads * tokens**2 * torch.finfo(getattr(torch, args.dtype)).bits // 8
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
    print(f"a materialised attention map of one block would need {dense / 2**30:.1f} GiB")
    print(f"fused-kernel log-sum-exp bit-identical to the stock attention (else the chunked pass): "
          f"{runs['on']['fused_lse']}")


if __name__ == "__main__":
    main()
