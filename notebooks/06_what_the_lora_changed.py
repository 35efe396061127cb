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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ffstudy/ffstudy/blob/main/notebooks/06_what_the_lora_changed.ipynb)
#
# # 6. What the LoRA changed
#
# The paper argues from outputs only: with the LoRA, the entities of the collage come back in the scene. It never
# looks inside. Here we do: the same probes as in chapter 1, on the same composites, before and after the FFGo LoRA —
# and then the few-shot curve, how many examples the LoRA needs.
#
# **Goals.** By the end of this chapter you can
# - compare first-frame retrieval, split by entity slot, with and without a LoRA;
# - test the hypothesis that the LoRA makes later frames read *more* from the object slots after the transition;
# - read the few-shot curve (N = 0 … 50) of the miniature FFGo experiment and what it does and does not show.

# %%
# On Colab: install ffstudy (with its data and the SpriteWorld model) from the repository.
import os
import subprocess
import sys

if "google.colab" in sys.modules and not os.path.exists("/content/ffstudy"):
    subprocess.run(["git", "clone", "-q", "https://github.com/ffstudy/ffstudy", "/content/ffstudy"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/ffstudy[notebooks]"], check=True)
    os.chdir("/content/ffstudy/notebooks")

# %% tags=["parameters"]
COMPOSITES = 4   # held-out composites to average over
STEPS = 20

# %%
import json

import matplotlib.pyplot as plt
import numpy as np

from ffstudy import compose_first_frame, course, generate, load_pipeline, viz
from ffstudy.cli import data_dir
from ffstudy.lora import load_lora
from ffstudy.probe import FirstFrameProbe
from ffstudy.spriteworld.fewshot import HELDOUT_SEED0
from ffstudy.spriteworld.world import generate_clip

course.setup()
pipe = load_pipeline("spriteworld")
load_lora(pipe, data_dir() / "models/spriteworld-ffgo-lora", "main")

# %% [markdown]
# ## Probing both models on the same composites
#
# For each composite we generate twice — LoRA off, LoRA on — with the probe installed. Entities differ in number from
# composite to composite, so we group them into three slots: **objects** (all cut-outs), **background** (the plate)
# and **white** (the canvas filler).

# %%
def slots(result):
    """Mean first-frame mass per later latent frame, grouped into objects / background / white."""
    _, curves = result.retrieval_curves("frame")
    objects = sum(v for k, v in curves.items() if k.startswith("object_"))
    return {"objects": objects, "background": curves["background"], "white": curves["white"]}


runs = {"base": [], "FFGo LoRA": []}
videos = {}
for i in range(COMPOSITES):
    clip = generate_clip(HELDOUT_SEED0 + 10 + i, cut=False)
    composite = compose_first_frame(clip.cutouts, clip.background)
    for name, enabled in (("base", False), ("FFGo LoRA", True)):
        pipe.enable_lora() if enabled else pipe.disable_lora()
        with FirstFrameProbe(pipe, composite) as probe:
            video = generate(pipe, composite, clip.caption, num_inference_steps=STEPS, progress=False)
        runs[name].append(probe.result)
        if i == 0:
            videos[name] = video

for name, results in runs.items():
    mean = {k: np.mean([slots(r)[k] for r in results], axis=0) for k in ("objects", "background", "white")}
    print(f"{name:>10}: " + "  ".join(f"{k} " + " ".join(f"{v:.3f}" for v in values) for k, values in mean.items()))

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.5), sharey=True)
for ax, slot in zip(axes, ("objects", "background", "white")):
    for name, results in runs.items():
        per_frame = np.mean([slots(r)[slot] for r in results], axis=0)
        ax.plot(np.arange(1, len(per_frame) + 1), per_frame, marker="o", label=name)
    ax.set_title(f"mass on the {slot} slot")
    ax.set_xlabel("latent frame (1 = the transition)")
    ax.grid(alpha=0.3)
axes[0].set_ylabel("attention mass per token")
axes[0].legend()
plt.show()

# %% [markdown]
# What the numbers say for SpriteWorld: the object slot hardly moves — the LoRA does not make later frames read
# the cut-outs harder (if anything, slightly less). What changes is the **white** slot: with the LoRA, latent frames
# 2–4 read less of the white canvas than the base model does (most of all frame 2, right after the transition),
# while the transition frame itself reads about as much. The LoRA seems to teach *leaving* the collage rather than
# *reading* its objects, which the base model already does (chapter 1); the few-shot curve below shows that the
# same LoRA also loses sprites.
# One small model and four composites are not evidence about Wan2.2 — exercise 3 asks what would be.

# %% [markdown]
# ## Who retrieves what, before and after
#
# The first composite, both videos (transition included), each token tinted by the first-frame entity it reads most.

# %%
for name in runs:
    fig = viz.plot_who_retrieves_what(runs[name][0], videos[name].full)
    fig.suptitle(name, y=1.02)
    plt.show()

# %%
# NBVAL_IGNORE_OUTPUT
course.show_videos({name: viz.who_retrieves_what_animation(runs[name][0], videos[name].full) for name in runs})

# %% [markdown]
# ## The few-shot curve
#
# The miniature FFGo experiment (`python -m ffstudy.spriteworld.experiment`, 18 minutes on the 2-core CPU) trained
# one LoRA per N on N SpriteWorld composite→scene examples and generated from 40 held-out composites. Its results
# ship with the model (`data/models/spriteworld-i2v/experiment.json`) and are plotted here, not re-run.

# %%
experiment = json.loads((data_dir() / "models/spriteworld-i2v/experiment.json").read_text())
sizes = sorted(int(n) for n in experiment["runs"])
rows = [experiment["runs"][str(n)] for n in sizes]
for n, r in zip(sizes, rows):
    print(f"N={n:>2}: retention {r['retention']:.0%}  final frame is the scene {r['final_in_scene']:.0%}  "
          f"clean transition {r['clean']:.0%}  background PSNR {r['background_psnr']:.1f} dB")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
axes[0].plot(sizes, [r["retention"] for r in rows], marker="o", label="entity retention")
axes[0].plot(sizes, [r["clean"] for r in rows], marker="s", label="clean transition")
axes[0].plot(sizes, [r["final_in_scene"] for r in rows], marker="^", label="final frame is the scene")
axes[0].set_ylim(0, 1.05)
axes[0].set_xlabel("few-shot examples N")
axes[0].legend()
axes[0].grid(alpha=0.3)
axes[1].plot(sizes, [r["background_psnr"] for r in rows], marker="o", color="C2")
axes[1].set_xlabel("few-shot examples N")
axes[1].set_ylabel("background PSNR (dB)")
axes[1].grid(alpha=0.3)
plt.show()

# %% [markdown]
# Reading the curve honestly: the paper's N = 50 → 80 % retention is not reproduced here, and on this base model a
# LoRA *lowers* retention. With the trigger phrase alone the model already ends 97.5 % of the held-out videos in the
# scene and keeps every sprite in 65 % of them. A quarter of its pretraining clips cut hard to a new scene with the
# same sprites (the innate ability FFGo builds on), and its pretraining loss weights the cells a sprite covers 5×.
# The LoRAs make the background more faithful (about 17 dB against 14.7 dB) and the transition cleaner (85–95 %
# of first kept frames are the scene, against 72.5 %), which is what dropping the first 4 frames relies on. But
# retention falls to 27.5–37.5 %. A likely reason, not yet tested (exercise 5): the LoRA trains with the plain
# loss, in which the scene holds 88 % of the weight. Each point is 40 composites, so steps of 2.5 %. The previous
# SpriteWorld model (same VAE, unweighted pretraining loss) kept every sprite in 35 % of composites without a LoRA
# and 25–50 % with one; every LoRA made its transitions clean (100 %, against 62.5 %).

# %% [markdown]
# ## Exercises
#
# 1. Restrict the comparison to the last latent frame only. Is the LoRA's effect on the object slot larger or
#    smaller there than at the transition (latent frame 1)?
# 2. Probe only the first denoising steps (`steps=[0, 1, 2]`) and then only the last ones. When does the LoRA change
#    retrieval — while the layout is decided, or while details are filled in?
# 3. The paper reads its results as the LoRA *activating* an ability the base model has. Which numbers in this
#    chapter support that reading, and which would contradict it?
# 4. Re-run the experiment with a different seed range for the few-shot examples. How large is the spread of the
#    N = 20 point? Is the curve's shape robust?
# 5. Weight the LoRA's loss like the pretraining loss: `ffstudy.spriteworld.pretrain.latent_sprite_mask` gives the
#    latent cells each sprite covers, and `masked_velocity_loss(..., weight=...)` weights them. Train the N = 20
#    LoRA that way. Does retention come back while the transition stays clean?
