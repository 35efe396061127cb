"""The model card's probe retrieval accuracy, per attention head as well as per block.

The card averages each block's attention over its heads before asking which first-frame entity a later-frame sprite
token reads most. A single head could retrieve sharply while the mean over heads does not; this script measures each
head on the card's clips and noise levels (``evaluate.probe_accuracy``: the first 20 held-out clips, σ 0.3 / 0.6 /
0.9, teacher-forced), by total mass ("most mass", the issue's criterion) and by mass per token of entity area. Its
"mean" columns are the card's figures.

    .venv/bin/python recipes/spriteworld/probe_heads.py            # about 2 min on the 2-core CPU
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from ffstudy.models import load_pipeline
from ffstudy.spriteworld.evaluate import probe_clip
from ffstudy.spriteworld.metrics import retrieval_accuracy
from ffstudy.spriteworld.pretrain import EVAL_SEED0
from ffstudy.spriteworld.world import WorldConfig, generate_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.3, 0.6, 0.9])
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe = load_pipeline("spriteworld")
    heads = pipe.transformer.config.num_attention_heads
    columns = [*range(heads), None]  # None: the mean over heads, as the card measures
    scores: dict[tuple, list[float]] = {}
    for seed in range(EVAL_SEED0, EVAL_SEED0 + args.clips):
        clip = generate_clip(seed, WorldConfig(), cut=False)
        for sigma in args.sigmas:
            result = probe_clip(pipe, clip, sigma, per_head=True)
            for per in ("entity", "token"):
                for head in columns:
                    for block, value in retrieval_accuracy(result, clip, per=per, head=head).items():
                        scores.setdefault((per, block, head), []).append(value)
    names = [f"head {h}" for h in range(heads)] + ["mean"]
    print(f"seeds {EVAL_SEED0}–{EVAL_SEED0 + args.clips - 1}, σ {args.sigmas}; cells: most mass / most mass per token")
    print("| block | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for block in sorted({b for _, b, _ in scores}):
        cells = [f"{np.mean(scores['entity', block, h]):.1%} / {np.mean(scores['token', block, h]):.1%}"
                 for h in columns]
        print(f"| {block} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
