# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ffstudy/ffstudy/blob/main/notebooks/03_few_shot_dataset.ipynb)
#
# # 3. A few-shot dataset
#
# FFGo trains on 20–50 videos. For each one the authors cut out the entities of the first frame, cleaned the
# background plate, composed the FFGo canvas, wrote a caption — and then replaced the video's first four frames with
# that canvas. This chapter builds such a dataset from SpriteWorld, where every cut-out and plate is exact.
#
# **Prerequisites.** Chapter 2 (the composite and its entity geometry); what a latent video is (see the [glossary](../glossary.md): latent frames and the VAE's 4× temporal packing).
#
# **Goals.** By the end of this chapter you can
# - write a few-shot dataset (manifest + files) and load it back;
# - build the training clip exactly as FFGo does: frames 0–3 replaced by the composite, caption behind the trigger;
# - explain the two clip lengths (`paper`: 81 frames, `official`: 21) and when to use each;
# - read an example's entity masks on the training clip's latent grid (what ffstudy's entity-weighted loss uses);
# - export and import the official FFGo / VideoX-Fun JSON;
# - catch every broken example with `data check` before a GPU-hour is spent.

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
EXAMPLES = 20                      # FFGo: 20-50
OUT = "outputs/chapter3"

# %%
import json
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ffstudy import course
from ffstudy.data import FewShotDataset, check_dataset
from ffstudy.generate import TRIGGER
from ffstudy.spriteworld.fewshot import write_fewshot_dataset

course.setup()
shutil.rmtree(OUT, ignore_errors=True)
manifest = write_fewshot_dataset(OUT, examples=EXAMPLES)
dataset = FewShotDataset.load(manifest)
print(f"{len(dataset)} examples in {manifest}")
print(json.dumps(json.loads(manifest.read_text())["examples"][0], indent=1))

# %% [markdown]
# ## One example
#
# Each example holds the materials of FFGo's curation pipeline — here exact, since SpriteWorld drew them: RGBA
# cut-outs, the clean plate, the caption, and the target video.

# %%
example = dataset[0]
print(example.caption)
images = [plt.imread(dataset.path(c)) for c in example.cutouts] + [plt.imread(dataset.path(example.background))]
fig, axes = plt.subplots(1, len(images), figsize=(min(3 * len(images), 12), 2.2))
for ax, image, title in zip(axes, images, [f"cut-out {i}" for i in range(len(example.cutouts))] + ["plate"]):
    ax.imshow(image)
    ax.set_title(title)
    ax.set_axis_off()
plt.show()

# %% [markdown]
# ## The training clip
#
# FFGo does not prepend the canvas: it **replaces** frames 0–3 of the video with it. Four is the Wan VAE's
# temporal stride, so latent frame 0 is the canvas alone and latent frame 1 is three canvas copies plus real frame 4;
# everything after is the real video. The caption gets the trigger phrase in front.

# %%
clip = dataset.training_clip(example, height=96, width=160, clip_length=17)
print(clip.prompt)
print("frames:", clip.frames.shape, "| frames 0-3 equal the composite:",
      all(np.array_equal(clip.frames[i], np.asarray(clip.first_frame.image)) for i in range(4)))
fig, axes = plt.subplots(1, 8, figsize=(12, 1.4))
for ax, t in zip(axes, range(0, 16, 2)):
    ax.imshow(clip.frames[t])
    ax.set_title(f"frame {t}")
    ax.set_axis_off()
plt.show()

# %% [markdown]
# ## Entity masks: ffstudy's addition
#
# FFGo's examples stop there. SpriteWorld also knows which pixel belongs to which sprite, so each example names a
# `masks.npz` (F × H × W, 0 = no sprite; for real videos a video segmenter gives the same). `entity_masks` crops them
# exactly like the clip and leaves the four canvas frames blank, and `latent_entity_mask` marks the latent cells
# (4 frames × 8 × 8 pixels, latent frame 0 alone) that a sprite touches. With `entity_loss_weight` > 0 the LoRA's
# loss weighs those cells more. A plain loss is dominated by the scene, because sprites are small. Chapter 6 measures
# what the weighting does to entity retention.

# %%
from ffstudy.data import latent_entity_mask

masks = dataset.entity_masks(example, height=96, width=160, clip_length=17)
cells = latent_entity_mask(masks)[0, 0].numpy()
print("pixel masks:", masks.shape, "| latent cells:", cells.shape,
      f"| sprites cover {masks[4:].mean():.1%} of the real frames' pixels and touch {cells[1:].mean():.1%} "
      "of their latent cells")
fig, axes = plt.subplots(2, 4, figsize=(12, 3.3))
for column, t in enumerate((0, 4, 8, 16)):
    axes[0, column].imshow(clip.frames[t])
    axes[0, column].imshow(np.ma.masked_where(~masks[t], masks[t]), cmap="autumn", alpha=0.6)
    axes[0, column].set_title(f"frame {t} + entity mask")
    latent = 0 if t == 0 else (t + 3) // 4
    axes[1, column].imshow(cells[latent], cmap="gray_r", vmin=0, vmax=1)
    axes[1, column].set_title(f"latent frame {latent}: cells touched")
    axes[0, column].set_axis_off()
    axes[1, column].set_xticks([])  # keep the frame: the grid is 12 x 20 cells of 8 x 8 pixels
    axes[1, column].set_yticks([])
plt.show()

# %% [markdown]
# **Clip length.** The paper says its clips have 81 frames. The released training command, read through
# VideoX-Fun's token budget, cuts every clip to **21** frames at 768×1344 — and only that fits the reported five
# hours per expert. `clip_length="paper"` (81) and `"official"` (21) are both settings; SpriteWorld clips have 17.

# %%
for length in ("official", "paper"):
    try:
        dataset.training_clip(example, 96, 160, clip_length=length)
    except ValueError as error:
        print(f"{length}: {error}")

# %% [markdown]
# ## The official JSON
#
# The FFGo repository trains from a VideoX-Fun list of `{file_path, text, image_path, type}` with the composite
# already rendered. ffstudy writes and reads that format, so a dataset moves between the two trainers.

# %%
official = dataset.export_official(f"{OUT}/train_data.json", f"{OUT}/combined")
rows = json.loads(official.read_text())
root = Path(OUT).resolve()
print(len(rows), "rows; the first:")
print(json.dumps({k: str(Path(v).relative_to(root)) if k.endswith("path") else v for k, v in rows[0].items()}, indent=1))
back = FewShotDataset.import_official(official)
print("captions survive the round trip (trigger prefixed):",
      [e.caption for e in back] == [f"{TRIGGER} {e.caption}" for e in dataset])

# %% [markdown]
# ## Check before you train
#
# `check_dataset` (and `ffstudy data check manifest.json` on the command line) lists **every** problem with its
# file: missing or unreadable files, videos too short for the clip, too small for the training size, duplicate ids,
# empty captions, and, when the entity-weighted loss is on (`need_masks=True`), missing or mismatched masks. Here we
# break a copy of the dataset on purpose.

# %%
broken = FewShotDataset.load(manifest)
broken.examples[1].id = broken.examples[0].id
broken.examples[2].caption = " "
broken.examples[3].cutouts = ["sw_missing/cutout_0.png"]
Path(OUT, "not_a_video.mp4").write_bytes(b"this is not a video")
broken.examples[4].video = "not_a_video.mp4"
broken.examples[5].masks = None
for problem in check_dataset(broken, num_frames=17, height=96, width=160, need_masks=True):
    print(problem.replace(str(Path(OUT).resolve()), OUT))
print("the real dataset:", check_dataset(dataset, num_frames=17, height=96, width=160, need_masks=True) or "no problems")

# %% [markdown]
# ## Summary
#
# - An FFGo example is a real video whose first 4 frames are replaced by the composite, with a caption behind the
#   trigger phrase: the model learns a cut from collage to scene.
# - Which clip length FFGo trained with matters: the paper says 81 frames; the released command's token budget
#   leaves 21.
# - Entity masks on the latent grid are what ffstudy's optional entity-weighted loss uses; `data check` lists every
#   broken example before training starts.
#
# ## Questionnaire
#
# 1. Why 4 frames, in terms of the VAE's temporal packing?
# 2. What does the model learn from latent frame 0 when it is the composite itself?
# 3. Which fields of the official JSON resolve against which folder?
#
# ## Exercises
#
# 1. Write a dataset of 50 examples. How long does it take, and how much disk? What dominates?
#    <details><summary>Hint</summary>Time `write_fewshot_dataset` and `du -sh` the folder; compare video and mask
#    files.</details>
# 2. Make the clips 21 frames (`WorldConfig(num_frames=21)`) and train with `clip_length="official"`. How many
#    latent frames does each clip have, and how many of them show real motion?
#    <details><summary>Hint</summary>Latent frames = (frames − 1) / 4 + 1; the composite fills the first.</details>
# 3. FFGo keeps the whole latent video in the loss, latent frame 0 (the canvas) included. What does the model
#    learn from that frame, and what would change if it were masked out?
#    <details><summary>Hint</summary>Frame 0 is also the conditioning frame: what is the target velocity there?</details>
# 4. Import an official-format JSON whose `file_path` entries are relative. Which folder do they resolve against,
#    and why does `image_path` behave differently?
#    <details><summary>Hint</summary>The parity page's "The training data" table.</details>
# 5. Sprites touch a larger share of latent cells than of pixels (printed above). Why? With weight w, what share of
#    the loss do sprite cells get, and which share do sprite *pixels* get inside those cells?
#    <details><summary>Hint</summary>A latent cell is 8×8 pixels: a sprite's edge touches cells it barely
#    covers.</details>
#
# ## Further reading
#
# - The FFGo paper, section 4 (data curation with a VLM and the 20–50 examples)
# - [VideoX-Fun](https://github.com/aigc-apps/VideoX-Fun), the training framework of the official code
# - The book's page *The FFGo method* ([parity](../parity.md)), "The training data"
