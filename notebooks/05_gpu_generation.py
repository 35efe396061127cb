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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ffstudy/ffstudy/blob/main/notebooks/05_gpu_generation.ipynb)
#
# # 5. Generation, on the CPU or on a GPU
#
# One notebook, two worlds: with the default parameters it runs SpriteWorld and its FFGo LoRA on the CPU (this is
# what CI executes); on a GPU runtime, set `BACKBONE` to a real Wan model and point the paths at your downloads.
#
# **Prerequisites.** Chapters 2 and 4 (a composite and a LoRA); for the GPU route, a CUDA runtime (Colab L4/A100 or your own) and the weights `ffstudy download` fetches.
#
# **Goals.** By the end of this chapter you can
# - generate FFGo videos with the paper's settings, with and without the LoRA, side by side;
# - see the transition the LoRA teaches and why the first four frames are cut;
# - load the official FFGo LoRA files (kohya/VideoX-Fun keys, High/Low experts) into diffusers' Wan2.2 pipeline;
# - choose a GPU and memory settings for Wan2.2-I2V-A14B or TI2V-5B.

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
BACKBONE = "spriteworld"   # on a GPU: "wan2.2-ti2v-5b" (L4/A100-40), "wan2.2-i2v-a14b" (the paper's: 80 GB and up)
MODEL_PATH = None          # the folder of `ffstudy download BACKBONE --to FOLDER` (None: the Hugging Face cache)
LORA = "../data/models/spriteworld-ffgo-lora"  # "official" (A14B only), your trainer's folder (chapter 4), or None
FFGO_LORA_DIR = None       # for LORA = "official": the folder of `ffstudy download ffgo-lora --to FOLDER`
HEIGHT = WIDTH = FRAMES = None  # None: suggested for this GPU's memory (printed below)
OFFLOAD = VAE_TILING = None     # None: suggested as well; OFFLOAD "model" or "sequential"
STEPS = 20                 # the paper uses 50
SEED = 42

# %%
import matplotlib.pyplot as plt
import numpy as np

from ffstudy import compose_first_frame, course, generate, load_pipeline
from ffstudy.cli import data_dir
from ffstudy.lora import attach_lora
from ffstudy.models import estimate_seconds, suggested_settings
from ffstudy.spriteworld.fewshot import HELDOUT_SEED0
from ffstudy.spriteworld.world import generate_clip

device = course.setup()
suggested = suggested_settings(BACKBONE)
size = dict(height=HEIGHT or suggested["height"], width=WIDTH or suggested["width"],
            num_frames=FRAMES or suggested["num_frames"])
offload = OFFLOAD if OFFLOAD is not None else suggested["offload"]
tiling = VAE_TILING if VAE_TILING is not None else suggested["vae_tiling"]
print("device:", device, "| backbone:", BACKBONE, "|", size, "| offload:", offload, "| VAE tiling:", tiling,
      "(suggested for this GPU, an estimate)" if suggested["estimate"] else "")
seconds = estimate_seconds(BACKBONE, **size, steps=STEPS)
if seconds is not None:  # a GPU it knows: a rough figure from FLOPs (this chapter makes two videos)
    print(f"rough time per video: {seconds / 60:.0f} min (from FLOPs at 40% of this GPU's peak; offload adds more)")

# %% [markdown]
# ## The backbone and the LoRA
#
# Three routes, chosen by `LORA`:
# - **your own LoRA**, from chapter 4's trainer on any backbone (a folder; SpriteWorld's ships in
#   `data/models/spriteworld-ffgo-lora`: chapter 4's config with its entity-weighted loss, 1,200 steps on 50
#   examples);
# - **the official FFGo LoRAs** (`"official"`), for Wan2.2-I2V-A14B only: kohya-style files from VideoX-Fun, one
#   per expert. `ffstudy download ffgo-lora --to FOLDER` fetches the two `checkpoint-600.safetensors` files (each
#   618 M bf16 parameters, about 1.2 GB, from the hub repository `Video-Customization/FFGO-Lora-Adapter`);
#   `attach_lora` converts their keys,
#   folds alpha/rank, checks all 401 modules are there and — careful — puts the **High** file into diffusers'
#   `transformer` and the **Low** file into `transformer_2` (VideoX-Fun names the experts the other way round).
#   There is no official LoRA for TI2V-5B;
# - **no LoRA** (`None`): the base model, which shows what FFGo adds.
#
# The backbone's weights are never downloaded by loading: `ffstudy download wan2.2-ti2v-5b --to FOLDER` lists the
# files and their sizes as the hub reports them (`--dry-run` stops there), checks the disk and downloads; then set
# `MODEL_PATH = FOLDER`.

# %%
pipe = load_pipeline(BACKBONE, path=MODEL_PATH, offload=offload, vae_tiling=tiling)
print(attach_lora(pipe, LORA, FFGO_LORA_DIR))
if BACKBONE == "spriteworld":
    clip = generate_clip(HELDOUT_SEED0 + 2, cut=False)
    composite = compose_first_frame(clip.cutouts, clip.background)
    caption = clip.caption
else:
    composite = compose_first_frame([data_dir() / "references/red_star.png", data_dir() / "references/blue_ring.png"],
                                    data_dir() / "backgrounds/meadow.png")
    caption = "a red star and a blue ring bounce across a green meadow under a blue sky"
print(caption)

# %% [markdown]
# ## With and without the LoRA
#
# Same composite, same prompt (the trigger is prefixed automatically), same seed. `generate` uses the paper's
# settings: UniPC with shift 5, CFG 6 for both experts, Wan's default negative prompt, the backbone's native clip.
# SpriteWorld, the CPU stand-in, samples without CFG: its transformer never trained the unconditional branch that
# CFG needs. On SpriteWorld the cell also prints what its ground truth can say about each video.
# One pipeline serves both: diffusers switches the adapters off and on (on a 14B model, two pipelines would not fit).

# %%
settings = dict(num_inference_steps=STEPS, seed=SEED, progress=BACKBONE != "spriteworld", **size)
if LORA is not None:
    pipe.disable_lora()
without = generate(pipe, composite, caption, **settings)
if LORA is not None:
    pipe.enable_lora()
with_lora = generate(pipe, composite, caption, **settings)
print(with_lora.prompt)
print("frames kept:", with_lora.frames.shape, "| transition frames dropped:", len(with_lora.transition))
if BACKBONE == "spriteworld":  # SpriteWorld has ground truth: is the last frame the scene, with every sprite in it?
    from ffstudy.spriteworld.experiment import measure

    for name, video in (("base model", without), ("FFGo LoRA", with_lora)):
        scores = measure(video.frames, clip)
        print(f"{name:>10}: final frame is the scene: {scores['final_in_scene']}, "
              f"every sprite found in it as an object: {scores['retention']}")

# %% tags=["nbval-ignore-output"]
course.show_videos({"base model": without.frames, "FFGo LoRA": with_lora.frames})

# %% [markdown]
# ## The transition, and why four frames go
#
# The composite enters the model as latent frame 0; the VAE packs pixel frames 1–4 into latent frame 1, which is
# where the cut from collage to scene happens. Cutting pixel frames 0–3 (`drop_first_frames=4`) removes it; frame 4
# shares its latent with three collage-like frames, so a faint residue can remain (the paper's choice; try 5).

# %%
strip = with_lora.full[:8]
fig, axes = plt.subplots(2, 8, figsize=(12, 2.3))
for row, video, name in ((0, without.full, "base"), (1, with_lora.full, "FFGo LoRA")):
    for t, ax in enumerate(axes[row]):
        ax.imshow(video[t])
        ax.set_title(f"{name}: frame {t}" + (" (cut)" if t < 4 else ""), fontsize=8)
        ax.set_axis_off()
plt.show()
distance = lambda a, b: float(np.abs(a.astype(float) - b.astype(float)).mean())  # noqa: E731
first = np.asarray(with_lora.first_frame_image)
print("mean |frame - composite| over frames 0-7, FFGo LoRA:", [round(distance(f, first), 1) for f in with_lora.full[:8]])

# %% [markdown]
# ## Memory on real GPUs
#
# Estimates from the weights' sizes (bf16; the text encoder umT5-XXL is 11 GB, each 14B expert 28 GB, the 5B
# transformer 10 GB), not yet measured on a GPU; `suggested_settings` above picks from them by your GPU's memory.
# For time, the settings cell printed a rough figure on a GPU it knows (`estimate_seconds`: the transformer's FLOPs
# for the paper's 50 steps with CFG, 100 passes, at 40 % of the GPU's peak); the progress bar then measures it.
#
# | GPU | Wan2.2-I2V-A14B (the paper's) | Wan2.2-TI2V-5B |
# |---|---|---|
# | Colab T4 (16 GB) | not practical | 480p with `offload="sequential"`, slow |
# | Colab L4 (24 GB) | not practical | 704×1280 with `offload="model"` |
# | A100 40 GB | 480p with `offload="model"` | comfortable |
# | A100 / H100 80 GB | 720p × 81 with `offload="model"` (≥ 80 GB host RAM) | comfortable |
# | H200 141 GB | 720p × 81 without offload, as the authors ran it | comfortable |
#
# `vae_tiling=True` in `load_pipeline` lowers the decoding peak at 720p. The FFGo authors warn that 640×480 output
# "can differ significantly" from 720p.

# %% [markdown]
# ## Summary
#
# - `generate` uses the paper's settings: UniPC flow sampler with shift 5, CFG 6 for both experts, Wan's negative
#   prompt, the trigger prefixed, and the first 4 frames — the transition — dropped.
# - Three routes on a GPU: the official A14B LoRAs, your own LoRA from chapter 4 on any backbone, or the base model;
#   weights are downloaded only by `ffstudy download`, which checks sizes first.
# - One pipeline serves the comparison: diffusers switches the adapters off and on.
#
# ## Questionnaire
#
# 1. Why does the official High file go into diffusers' `transformer`?
# 2. Why can frame 4 still show a trace of the collage?
# 3. Which settings trade memory for time, and what does each cost?
#
# ## Exercises
#
# 1. Generate with `drop_first_frames=5`. Is frame 4 of the LoRA video still touched by the collage?
#    <details><summary>Hint</summary>Reuse the distance to the composite printed above, frame by frame.</details>
# 2. Swap the layout to `"swapped"` (plate left). Does the LoRA, trained on the FFGo layout only, still cut to the
#    right scene? The paper says it generalises "in some cases".
#    <details><summary>Hint</summary>`compose_first_frame(..., layout="swapped")`, then
#    `ffstudy.spriteworld.experiment.measure` on the video.</details>
# 3. Prompt without the trigger (`trigger=None`). What does the LoRA do without its cue?
#    <details><summary>Hint</summary>Count the videos whose last frame is the scene, with and without it, over a
#    few seeds.</details>
# 4. On a GPU: run A14B with the official LoRA at 1280×720 and at 832×480. Where does the content change?
#    <details><summary>Hint</summary>`-p HEIGHT 480 -p WIDTH 832` with papermill, same seed.</details>
#
# ## Further reading
#
# - The FFGo paper, section 5 (inference) and the [official LoRAs](https://huggingface.co/Video-Customization/FFGO-Lora-Adapter)
# - diffusers' [Wan pipelines](https://huggingface.co/docs/diffusers/api/pipelines/wan) and
#   [memory guide](https://huggingface.co/docs/diffusers/optimization/memory) (offload, VAE tiling)
# - The book's page *The FFGo method* ([parity](../parity.md)), "Sampling"
