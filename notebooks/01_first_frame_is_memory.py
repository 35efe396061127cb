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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ffstudy/ffstudy/blob/main/notebooks/01_first_frame_is_memory.ipynb)
#
# # 1. The first frame is memory
#
# FFGo's premise is that an image-to-video model treats its first frame as a memory of the entities it may show
# later. In Wan's architecture there is exactly one road from the first frame to later frames: full 3D
# self-attention, where every token of every frame can read every token of frame 0. This chapter measures that
# reading, exactly, while the model generates.
#
# **Prerequisites.** Python and NumPy; what attention computes (softmax of query·key over keys). No GPU. The [glossary](../glossary.md) defines latent frames, σ and the other terms used here.
#
# **Goals.** By the end of this chapter you can
# - generate a video from a first frame and a caption with SpriteWorld (CPU) — the same call runs Wan2.2 on a GPU;
# - install `FirstFrameProbe` and explain what it records, why it is exact, and why it never needs a tokens² matrix;
# - read retrieval curves over frames, blocks and denoising steps, "who retrieves what" maps and reverse maps;
# - see what happens at a hard scene cut: the sprites come back, read from frame 0.

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
BACKBONE = "spriteworld"   # "wan2.2-i2v-a14b" on a GPU runtime (see chapter 5 for weights and memory)
SEED = 1_000_005           # a held-out SpriteWorld clip (pretraining used seeds 10,000-10,499)
STEPS = 20

# %%
import matplotlib.pyplot as plt
import numpy as np

from ffstudy import course, generate, load_pipeline, viz
from ffstudy.probe import FirstFrameProbe
from ffstudy.spriteworld.evaluate import probe_clip
from ffstudy.spriteworld.evaluate import FRAME0_GOAL_DB
from ffstudy.spriteworld.metrics import clip_fidelity, first_frame_entities, retrieval_accuracy, sprites_found
from ffstudy.spriteworld.world import generate_clip

course.setup()
clip = generate_clip(SEED, cut=False)
print(clip.caption)
pipe = load_pipeline(BACKBONE)
print(f"{BACKBONE}: {sum(p.numel() for p in pipe.transformer.parameters()) / 1e6:.2f} M transformer parameters, "
      f"{len(pipe.transformer.blocks)} blocks of {pipe.transformer.config.num_attention_heads} heads")

# %% [markdown]
# ## A video from a first frame
#
# SpriteWorld renders ground truth for every pixel, so we know which entity each region of frame 0 is. We give the
# model the clip's first frame and caption (plain image-to-video: no FFGo collage yet, no trigger, nothing dropped).

# %%
entities = first_frame_entities(clip)  # the first frame with its ground-truth entity geometry
with FirstFrameProbe(pipe, entities, text_prompt=None) as probe:
    video = generate(pipe, entities, clip.caption, trigger=None, num_inference_steps=STEPS, drop_first_frames=0,
                     seed=0, progress=False)
result = probe.result
print("entities:", result.entity_names)
print("token grid (latent frames, rows, cols):", result.grid, "| records:", len(result.records))
found = sprites_found(video.frames, clip)  # each sprite as an object of its shape and size, or None
print(f"frame 0 reproduced (≥ {FRAME0_GOAL_DB:g} dB against the conditioning frame):",
      clip_fidelity(video.frames, clip)["frame0_psnr"] >= FRAME0_GOAL_DB)
print(f"sprites found as objects in the last frame: {sum(f is not None for f in found)} of {len(found)}")

# %% tags=["nbval-ignore-output"]
course.show_videos({"ground truth": clip.frames, "generated": video.frames})

# %% [markdown]
# A word on this model before reading its attention. SpriteWorld I2V is small and was trained on a 2-core CPU. Look
# at the video above before trusting any number: frame 0 and the scene come back, but the sprites lose their shape
# within a few frames and drift as blobs of their colours. Is that the VAE? Send this very clip through it and
# back, and compare the sprites' pixels with the scene's (ground-truth masks tell them apart). The VAE blurs sprites
# more than the scene and rounds their points and corners, yet its round trips keep them whole far more often than
# the generated videos do (the model card measures both on 120 clips): both lose sprites, the transformer far more.

# %%
from ffstudy.spriteworld.evaluate import palette_fidelity, reconstruct
from ffstudy.spriteworld.metrics import COLOUR_TOLERANCE, masked_psnr
from ffstudy.spriteworld.world import COLOURS

recon = reconstruct(pipe.vae, clip.frames)
print(f"VAE round trip: sprite pixels {masked_psnr(clip.frames, recon, clip.masks > 0):.1f} dB, "
      f"scene pixels {masked_psnr(clip.frames, recon, clip.masks == 0):.1f} dB")
palette = palette_fidelity(pipe)
swatches = np.array([[COLOURS[name] for name in palette], [p["decoded"] for p in palette.values()]]) / 255
fig, axes = plt.subplots(1, 3, figsize=(12, 2.4), width_ratios=[1, 1, 1.4])
for ax, (title, image) in zip(axes, (("frame 8", clip.frames[8]), ("frame 8 through the VAE", recon[8]),
                                     ("sprite colours: true (top) / through the VAE", swatches))):
    ax.imshow(image)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
plt.show()
print("colours within the identification tolerance after the VAE:",
      [name for name, p in palette.items() if p["distance"] <= COLOUR_TOLERANCE])

# %% [markdown]
# Every sprite colour comes back within the tolerance the sprite detector uses, but the sprites' sharp edges come
# back blurred: their pixels score well below the scene's. The model card measured, on 120 held-out clips, how
# often every first-frame sprite is still found as an object (its colour, its area and its shape: closer to its own
# silhouette than to a disc of its size) in the last frame — for the generated videos and for six controls
# (`evaluation.json`, beside the weights):

# %%
import json

from ffstudy.models import SPRITEWORLD_DIR

evaluation = json.loads((SPRITEWORLD_DIR / "evaluation.json").read_text())
rows = {"generated": evaluation["generation"], **evaluation["controls"]}
print(f"{evaluation['generation']['videos']} held-out clips; every first-frame sprite found as an object in the last frame:")
for name, row in rows.items():
    print(f"  {name:<24} {row['kept']:6.1%}   (frame 0 {row['frame0_psnr']:4.1f} dB, scene {row['scene_psnr']:4.1f} dB)")

# %% [markdown]
# The VAE round trips keep every sprite whole in about a third of the clips (a small star comes back nearly round);
# the generated videos in almost none: the VAE sets a low ceiling, and the transformer falls far below it. Decoded
# noise keeps none, and a frozen first frame keeps many but animates none, which is why the card reads "kept"
# together with "animated". The melted sprites and the discs are the detector's own tests: blobs of the right colour
# and area, lumpy or round, that it should reject, and does (every disc standing in for another shape, and most
# melted blobs). The frozen frame scores above the round trips because it never passes through the VAE. The probe
# looks at attention rather than pixels: it measures how later frames read frame 0 while they are generated, whatever
# becomes of the sprites.

# %% [markdown]
# ## What the probe records
#
# For each probed block and denoising step (conditional branch only), and for every query token of latent frames
# ≥ 1, the softmax attention mass that token puts on the tokens of frame 0 — split by entity using the masks of
# chapter 2. The normaliser is the full softmax over *all* keys: its log-sum-exp comes from the same fused attention
# kernel that computes the block's output, so the model's output stays bit-identical, and only the first-frame key
# columns are ever materialised, a query chunk at a time. `tests/test_probe.py` checks it against a float64 full
# softmax to 1e-5 and its memory against a stated bound; at 25,200 tokens on a 2-core CPU
# `benchmarks/probe_overhead.py` measured its cost within the machine's run-to-run noise (median 0.93× of three
# paired runs) and 0.004 GiB of extra peak memory, where storing the attention maps would take 57 GiB.

# %%
x, curves = result.retrieval_curves("frame")
for name, values in curves.items():
    print(f"{name:<22}" + " ".join(f"{v:.3f}" for v in values))
viz.plot_retrieval_overview(result)
plt.show()

# %% [markdown]
# ## Who retrieves what
#
# For each later-frame token, the first-frame entity it reads most densely (its attention mass on the entity
# divided by the entity's area in tokens, as the next section explains), tinted in that entity's own colour over
# the generated frame. A token on a sprite that reads *that sprite* in frame 0 looks like the memory at work.

# %%
viz.plot_who_retrieves_what(result, video.full)
plt.show()
viz.plot_reverse_maps(result, entities.image)
plt.show()

# %% tags=["nbval-ignore-output"]
course.show_video(viz.who_retrieves_what_animation(result, video.full), title="who retrieves what")

# %% [markdown]
# ## How often does a sprite read itself? And across a cut?
#
# To score retrieval we need to know which sprite each later token *is*. Generation doesn't tell us, so we
# teacher-force: take a real clip, noise it to σ, denoise once with the probe, and ask, for every later token
# covered by sprite k, whether the first-frame entity it reads is k. Two ways to ask:
#
# - **most mass**: the entity receiving the largest total attention mass. The background covers most of the frame,
#   so attention spread evenly over frame 0 lands mostly on it, and this criterion rarely picks a sprite;
# - **most mass per token**: each entity's mass divided by its area in tokens — which entity is read most densely.
#
# Chance is 1 / (entities + 1). Then the same on a clip with a **hard scene cut**: after the cut the scene changes
# and every sprite jumps elsewhere; frame 0 is the only place the model can find them.

# %%
cut_clip = generate_clip(SEED + 1, cut=True)
print(cut_clip.caption, "| cut at frame", cut_clip.cut_frame)
for name, c in (("no cut", clip), ("with a cut", cut_clip)):
    results = [probe_clip(pipe, c, sigma) for sigma in (0.3, 0.6, 0.9)]
    for per, label in (("entity", "most mass"), ("token", "per token")):
        accuracy = np.mean([list(retrieval_accuracy(r, c, per=per).values()) for r in results], axis=0)
        print(f"{name:>10}, {label:>9}: " + "  ".join(f"block {b} {a:4.0%}" for b, a in enumerate(accuracy))
              + f"   (chance {1 / (len(c.sprites) + 1):.0%})")

# %% [markdown]
# Read the two criteria side by side. By **total mass** a sprite almost never wins: every later token spreads much
# of its first-frame attention over the background, which is most of frame 0. **Per token of area** the picture
# flips: in every block, tokens on a sprite read *their own* sprite more often than chance (here about 2 to 4 times
# as often), and they still do after the cut, when the sprite has jumped
# somewhere else in a new scene. Two questions remain before calling this memory: is a token reading *what* the
# sprite is, or only *where* things were in frame 0 (attention in Wan depends on the query-key offset)? And does the
# model use what it reads? Chapter 7 subtracts what position alone predicts and removes a sprite's first-frame keys
# to find out.

# %%
cut_result = probe_clip(pipe, cut_clip, 0.6)
cut_entities = first_frame_entities(cut_clip)
viz.plot_who_retrieves_what(cut_result, cut_clip.frames, blocks=max(r["block"] for r in cut_result.records) // 2)
plt.show()

# %% [markdown]
# ## Summary
#
# - In Wan's architecture, full 3D self-attention is the only road from the first frame to later frames, so
#   attention mass on frame 0's keys, split by entity, is a direct measure of what later frames read from it.
# - `FirstFrameProbe` records that mass exactly, from the same logits the model uses, in bounded memory: it never
#   forms the tokens × tokens attention matrix.
# - On SpriteWorld, tokens on a sprite read that sprite's first-frame footprint most densely far above chance; after
#   a hard cut the sprites reappear elsewhere, still read from frame 0 (chapter 7: beyond what position explains).
# - Attention maps are correlational: they show where a frame looks, not that what it reads causes what it draws.
#
# ## Questionnaire
#
# 1. Why does the probe need the softmax normaliser over *all* keys, and how does it get it without the full matrix?
# 2. What is the difference between "most mass" and "most mass per token of area", and why does the background win
#    the first so often?
# 3. Why can a model that keeps nothing of its sprites still show high retrieval accuracy?
# 4. What would you need to show that retrieval *causes* a sprite to survive?
#
# ## Exercises
#
# 1. Which block retrieves most precisely? Probe with `blocks=[b]` and compare the maps. Is it the same block at
#    σ = 0.9 and at σ = 0.3?
#    <details><summary>Hint</summary>`probe_clip(pipe, clip, sigma)` runs one teacher-forced pass; loop over σ and
#    feed each result to `retrieval_accuracy(result, clip, per="token")`.</details>
# 2. Use `text_prompt=clip.caption` in the probe and plot `result.text_curves()`. How much do video tokens attend
#    to the caption compared to frame 0?
#    <details><summary>Hint</summary>Compare the scales of the two curves per block, not their shapes.</details>
# 3. Make a clip with `num_sprites=3` and two sprites of similar size. Does the model ever confuse them?
#    <details><summary>Hint</summary>`generate_clip(seed, num_sprites=3)`; search a few seeds for two sprites whose
#    `size` differs by less than 2 pixels, then read `retrieval_accuracy` per block.</details>
# 4. On a GPU: load `wan2.2-ti2v-5b` or `wan2.2-i2v-a14b` (chapter 5 shows how), compose a first frame from the
#    bundled references with `compose_first_frame`, and wrap `generate` in `FirstFrameProbe(pipe, comp)` as in the
#    README's tour. Which blocks read frame 0 most?
#    <details><summary>Hint</summary>`probe.result.retrieval_curves("block")` gives one curve per entity over blocks;
#    use `blocks=range(0, 40, 4)` to keep the run short.</details>
#
# ## Further reading
#
# - The FFGo paper, section 3 (the first frame as a memory buffer): [arXiv 2511.15700](https://arxiv.org/abs/2511.15700)
# - diffusers' [attention processors](https://huggingface.co/docs/diffusers/api/attnprocessor), which the probe
#   builds on, and the [Wan2.2 model card](https://huggingface.co/Wan-AI/Wan2.2-I2V-A14B-Diffusers)
# - The book's page *The FFGo method* ([parity](../parity.md))
