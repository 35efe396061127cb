# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ffstudy/ffstudy/blob/main/notebooks/04_lora_training.ipynb)
#
# # 4. Training an FFGo LoRA
#
# FFGo's claim is that the model can already use a collage first frame — it only needs to be told *reliably* to cut
# from the collage to a scene made of its parts. A LoRA trained on a few examples does that. This chapter trains one
# on SpriteWorld, on the CPU, with the same trainer and recipe that trains Wan2.2-I2V-A14B on GPUs.
#
# **Prerequisites.** Chapter 3's dataset; what a LoRA is and what flow matching trains (both in the [glossary](../glossary.md)); a PyTorch training loop.
#
# **Goals.** By the end of this chapter you can
# - train an FFGo LoRA from a YAML config and read its loss curve and validation video;
# - say what each part of the recipe does: LoRA targets, expert-aware timesteps, the outlier-masked loss,
#   gradient clipping at 0.05;
# - save the LoRA in diffusers format and load it anywhere with `pipe.load_lora_weights`;
# - launch the same training for Wan2.2 on one to eight GPUs with `accelerate launch`, and size the hardware.

# %%
# On Colab: fetch the course and set it up in this running kernel, no restart needed (`colab_setup.py` says
# how); anywhere else this cell does nothing.
import os
import subprocess
import sys

if "google.colab" in sys.modules:
    COURSE = "/content/ffstudy-course"  # not /content/ffstudy: on Colab's path, that folder would shadow the package
    if not os.path.isdir(COURSE):
        subprocess.run(["git", "clone", "-q", "--depth", "1", "https://github.com/ffstudy/ffstudy", COURSE],
                       check=True)
    SETUP = os.path.join(COURSE, "colab_setup.py")
    exec(compile(open(SETUP).read(), SETUP, "exec"), {"__file__": SETUP})

# %% tags=["parameters"]
EXAMPLES = 20
STEPS = 150
OUT = "outputs/chapter4"

# %%
import csv
import dataclasses
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ffstudy import compose_first_frame, course, generate, load_pipeline
from ffstudy.cli import data_dir
from ffstudy.lora import load_lora, target_module_count
from ffstudy.spriteworld.experiment import measure
from ffstudy.spriteworld.fewshot import HELDOUT_SEED0, write_fewshot_dataset
from ffstudy.spriteworld.world import generate_clip
from ffstudy.train import TrainConfig, expert_timestep_range, train_expert

course.setup()
REPO = data_dir().parent
shutil.rmtree(OUT, ignore_errors=True)
manifest = write_fewshot_dataset(f"{OUT}/data", examples=EXAMPLES)
config = TrainConfig.from_file(REPO / "configs/spriteworld-cpu.yaml", manifest=str(manifest),
                               output_dir=f"{OUT}/run", max_steps=STEPS, checkpoint_every=50)
print((REPO / "configs/spriteworld-cpu.yaml").read_text().split("\nmanifest")[0])
print({k: v for k, v in dataclasses.asdict(config).items() if k in
       ("model", "expert", "rank", "alpha", "learning_rate", "max_grad_norm", "batch_size", "max_steps",
                 "entity_loss_weight")})

# %% [markdown]
# ## What gets trained
#
# FFGo puts LoRA adapters on every attention projection (self- and cross-attention q, k, v, out), both FFN linears,
# and the time projection: 401 linear layers per 14B expert, 10 per block plus one. SpriteWorld's six blocks give 61.
#
# Wan2.2-A14B has two experts split by noise level at σ = 0.9; FFGo trains one LoRA per expert, each sampling
# timesteps only from its own range. SpriteWorld has one transformer, so it trains on the whole range.

# %%
pipe = load_pipeline("spriteworld")
print("LoRA modules:", target_module_count(pipe.transformer), "(SpriteWorld),", 10 * 40 + 1, "(one Wan 14B expert)")
for expert in ("high", "low", "full"):
    sigmas, lo, hi = expert_timestep_range(expert, 0.9, 5.0)
    print(f"{expert:>4}: timestep indices [{lo:4d}, {hi:4d})  sigma {float(sigmas[hi - 1]):.4f} .. {float(sigmas[lo]):.4f}")

# %% [markdown]
# ## Train
#
# Each step samples a cached clip, a noise level and noise, and regresses the flow-matching velocity; errors above 50
# are masked out as in FFGo's code. Clips and captions were encoded once into a latent cache, so a step runs only the
# transformer. Checkpoints are written atomically every 50 steps; `--resume` continues bit for bit.
#
# The course config adds one thing that FFGo does not have: `entity_loss_weight: 19` weighs the latent cells a sprite
# touches 20× (chapter 3 shows those cells). SpriteWorld's sprites are small (8 % of the latent cells of 50 training
# clips), so under FFGo's plain loss the scene holds 92 % of the weight and the LoRA learns the scene. Chapter 6 compares both losses. Set it to 0 for FFGo's
# recipe; the Wan configs leave it at 0, because real few-shot sets come without masks.

# %% tags=["nbval-ignore-output"]
result = train_expert(config, "main", keep_pipeline=True)

# %%
losses = np.array(result.losses)
print(f"{len(losses)} steps; mean loss of the first 25 {losses[:25].mean():.3f}, of the last 25 {losses[-25:].mean():.3f}")
print(sorted(p.name for p in result.folder.iterdir()))

plt.figure(figsize=(7, 3))
plt.plot(losses, alpha=0.35, label="per step")
plt.plot(np.convolve(losses, np.ones(15) / 15, mode="valid"), label="moving average (15)")
plt.xlabel("step")
plt.ylabel("velocity loss")
plt.legend()
plt.show()

# %% [markdown]
# ## The validation video
#
# At the end (and every `validation_every` steps) the trainer renders the first training example with the settings
# of final inference: 20 steps, the backbone's CFG (6 for Wan; 1, no CFG, for SpriteWorld), trigger, first four
# frames dropped.

# %% tags=["nbval-ignore-output"]
from ffstudy.io import read_video

validation = sorted((result.folder / "validation").iterdir())[-1]
course.show_video(read_video(validation / "video.mp4")[0], title=validation.name)

# %% [markdown]
# ## Save and load anywhere
#
# The LoRA is a diffusers-format file with its rank and alpha in the header, so diffusers' own
# `pipe.load_lora_weights(folder)` reads it as well as `ffstudy.lora.load_lora`; `ffstudy lora` converts it to
# ComfyUI's layout. Here we load it both ways into fresh pipelines, compare them with each other and with the
# pipeline that trained it, on a composite none of them has seen.

# %%
clip = generate_clip(HELDOUT_SEED0 + 1, cut=False)
composite = compose_first_frame(clip.cutouts, clip.background)
settings = dict(num_inference_steps=20, seed=0, height=96, width=160, progress=False)  # the examples' size
trained = generate(result.pipe, composite, clip.caption, **settings)
fresh = load_pipeline("spriteworld")
base = generate(fresh, composite, clip.caption, **settings)
load_lora(fresh, result.folder, "main")
reloaded = generate(fresh, composite, clip.caption, **settings)
by_diffusers = load_pipeline("spriteworld")
by_diffusers.load_lora_weights(str(result.folder))
diffusers_video = generate(by_diffusers, composite, clip.caption, **settings)


def levels(a, b):
    return int(np.abs(a.frames.astype(int) - b.frames.astype(int)).max())


print("ffstudy load_lora vs diffusers load_lora_weights: identical =", np.array_equal(reloaded.frames, diffusers_video.frames))
# Reloading changes the arithmetic's order, so a pixel may round one level apart; on some CPUs none does.
print("reloaded vs the training pipeline: within 2 of 255 levels everywhere =", levels(reloaded, trained) <= 2)
print("with vs without the LoRA: largest pixel difference, to the nearest 10:", round(levels(reloaded, base), -1), "of 255")
print(clip.caption)
for name, video in (("base model", base), ("FFGo LoRA", trained)):  # SpriteWorld's ground truth says what happened
    scores = measure(video.frames, clip)
    print(f"{name:>10}: final frame is the scene: {scores['final_in_scene']}, "
          f"every sprite found in it as an object: {scores['retention']}")

# %% tags=["nbval-ignore-output"]
course.show_videos({"composite → base model": base.full, "composite → FFGo LoRA": trained.full})

# %% [markdown]
# ## The same training on Wan2.2, on GPUs
#
# Nothing changes but the config. `configs/wan2.2-i2v-a14b.yaml` is the paper recipe: both experts one after the
# other, rank = alpha = 128, AdamW lr 1e-4 (wd 3e-2, eps 1e-10), clip 0.05, global batch 4, 600 steps, bf16,
# gradient checkpointing, clips at 768×1344.
#
# ```bash
# # one GPU
# accelerate launch -m ffstudy.train --config configs/wan2.2-ti2v-5b.yaml
# # two GPUs, as in the paper (DDP; on a CPU-only machine the same line gives two gloo processes)
# PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
#   accelerate launch --multi_gpu --num_processes 2 -m ffstudy.train --config configs/wan2.2-i2v-a14b.yaml
# # eight GPUs, sharded (FSDP2)
# accelerate launch --config_file configs/accelerate/fsdp-wan14b.yaml -m ffstudy.train --config configs/wan2.2-i2v-a14b.yaml
# ```
#
# | config | model | memory (GPU rows: one H100 80GB, `benchmarks/train_memory.py`: real layouts, random weights) | time |
# |---|---|---|---|
# | `spriteworld-cpu.yaml` | SpriteWorld, 1.8 M parameters | CPU: 1.0 GB peak RSS (measured, the whole few-shot experiment process) | 1,200 steps: 225–250 s on 2 cores (measured, N = 5–50 examples, writing and encoding them included) |
# | `wan2.2-ti2v-5b.yaml` | Wan2.2-TI2V-5B | 17.0 GiB peak: a 24 GB GPU | 0.78 s per micro-batch on an H100 |
# | `wan2.2-i2v-a14b.yaml` | Wan2.2-I2V-A14B, one expert at a time | 54.3 GiB at batch 1; 74.7 GiB at the paper's batch 2 (needs `expandable_segments`); 81-frame clips do not fit 80 GB | 9.7 s (batch 1), 19.2 s (batch 2) per step on an H100; paper: about 5 h per expert on 2× H200 |
#
# During training the other expert, the text encoder and the VAE are parked in CPU memory (≥ 80 GB host RAM for
# A14B) once the latent cache is built; validation brings them back for a moment.

# %% [markdown]
# ## Summary
#
# - FFGo trains a rank-128 LoRA on every attention and feed-forward linear of each Wan2.2 expert, with the ordinary
#   flow-matching velocity loss, outliers masked, gradients clipped at 0.05.
# - Each expert trains only on its own noise range (high: σ above the 0.9 boundary).
# - The LoRA saves in diffusers format and loads with `pipe.load_lora_weights`; `ffstudy lora` converts it to the
#   official (kohya) and ComfyUI layouts.
# - The same config trains on the CPU in minutes or on 1–8 GPUs with `accelerate launch`.
#
# ## Questionnaire
#
# 1. Which modules does FFGo's LoRA wrap, and how many per A14B expert?
# 2. Why does each expert see only part of the timestep range?
# 3. What does `--resume` refuse, and why?
#
# ## Exercises
#
# 1. Train with `learning_rate: 1.0e-4` (the paper's value) for the same number of steps. What happens to the loss
#    curve and to the validation video? Why might a 2 M-parameter model want a larger step than a 14 B one?
#    <details><summary>Hint</summary>Copy `configs/spriteworld-cpu.yaml`, change one line, and plot both
#    `loss.csv` files.</details>
# 2. Kill a run halfway (interrupt the kernel) and continue it with `train_expert(config, "main", resume=True)`.
#    Compare `loss.csv` with an uninterrupted run.
#    <details><summary>Hint</summary>Set `checkpoint_every` small enough that a checkpoint exists before you
#    interrupt.</details>
# 3. Set `max_grad_norm: 1.0`. FFGo clips at 0.05 — what does the grad-norm column of `loss.csv` say about how
#    often that clip is active?
#    <details><summary>Hint</summary>Count the rows whose grad norm exceeds 0.05.</details>
# 4. Convert the LoRA to ComfyUI's layout with `ffstudy lora <file> out.safetensors --to comfyui --model spriteworld`
#    and list its keys.
#    <details><summary>Hint</summary>`safetensors.safe_open(path, "pt").keys()`.</details>
# 5. Train again with `entity_loss_weight=0` (FFGo's plain loss) and plot both loss curves. Why does the weighted
#    loss start higher, and why can the two curves not be compared as numbers of the same quantity?
#    <details><summary>Hint</summary>Which cells carry the weight, and how hard are they to predict?</details>
#
# ## Further reading
#
# - [LoRA](https://arxiv.org/abs/2106.09685) and [peft](https://huggingface.co/docs/peft)
# - [accelerate](https://huggingface.co/docs/accelerate) (multi-GPU launches and FSDP)
# - diffusers' [LoRA loading](https://huggingface.co/docs/diffusers/using-diffusers/loading_adapters)
# - The book's page *The FFGo method* ([parity](../parity.md)), "Training"
