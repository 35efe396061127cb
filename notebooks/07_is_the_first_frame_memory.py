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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ffstudy/ffstudy/blob/main/notebooks/07_is_the_first_frame_memory.ipynb)
#
# # 7. Is the first frame memory? Position, content and causes
#
# Chapter 1 found that later tokens on a sprite read that sprite's first-frame footprint far more densely than
# chance. Two objections stand between that and "the first frame is a memory the model retrieves entities from":
#
# - **Position.** Attention in Wan depends on the offset between query and key (3-D RoPE). In plain image-to-video a
#   sprite barely moves, so a token that simply attends to *the same place* in frame 0 reads the sprite — no memory
#   of *what* is there required.
# - **Correlation.** An attention map says where a token looks, not that what it reads changes what it draws.
#
# This chapter answers both with measurements on the SpriteWorld model: a position-only model of the attention to
# subtract, and interventions that remove or amplify a sprite's first-frame keys.
#
# **Prerequisites.** Chapter 1 (the probe, teacher forcing, the object-level sprite detector) and chapter 6 (controls).
#
# **Goals.** By the end of this chapter you can
# - fit a position-only model of attention and measure the retrieval left over: content retrieval;
# - choose where position and content disagree (after a hard cut, in an FFGo composite), with a shuffled control;
# - knock out or reweight first-frame keys with `FirstFrameIntervention` and read the result with a control;
# - say what the measured answers are for this model, including the null ones.

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
SEED = 1_000_002  # a held-out clip: rendered with a hard cut here
SIGMA = 0.6       # the noise level of the teacher-forced pass

# %%
import json

import matplotlib.pyplot as plt

from ffstudy import course, load_pipeline, viz
from ffstudy.intervene import FirstFrameIntervention, entity_keys
from ffstudy.models import SPRITEWORLD_DIR
from ffstudy.probe import FirstFrameProbe
from ffstudy.retrieval import position_prediction
from ffstudy.spriteworld import memory
from ffstudy.spriteworld.metrics import first_frame_entities
from ffstudy.spriteworld.world import generate_clip

course.setup()
pipe = load_pipeline("spriteworld")
clip = generate_clip(SEED, cut=True)
entities = first_frame_entities(clip)
print(clip.caption, "| cut at frame", clip.cut_frame)
print("sprite 1 (index 0 in the code; blocks count from 0):", clip.sprites[0].name)

# %% tags=["nbval-ignore-output"]
course.show_video(clip.frames, title="the held-out clip: after the cut, the same sprites elsewhere in a new scene")

# %% [markdown]
# ## Position: what attention does wherever the content is
#
# We teacher-force as in chapter 1: noise the real clip to σ, denoise once with the probe, and this time keep the
# raw first-frame attention (`keep_attention=True`: heads × later tokens × first-frame tokens, small for this
# model). The **position-only model** replaces every weight by the mean weight of all query-key pairs at the same
# offset (same row and column shift), fitted per block and per later frame on this very pass. Its whole content is
# a small map of weight against offset — here for latent frame 4 (pixel frames 13–16), averaged over heads and over
# all of that frame's queries:

# %%
encoded = memory.encode(pipe, clip.frames, clip.caption)
inputs = memory.teacher_forced(encoded, SIGMA, clip.seed)
with FirstFrameProbe(pipe.transformer, entities, keep_attention=True) as probe:
    pipe.transformer(**inputs, return_dict=False)
result = probe.result
f, h, w = result.grid
print("token grid (latent frames, rows, cols):", result.grid, "| entities:", result.entity_names)
viz.plot_offset_attention(result, frame=f - 1)
plt.show()

# %% [markdown]
# A bright centre means a block reads mostly *the same place* in frame 0; stripes along offset 0 mean the same
# column or the same row; block 1's peak sits a few columns to the right, a fixed shift whatever is there. None of
# this depends on content, and in plain image-to-video, where a sprite stays put, it would pass for retrieval. After
# the cut the sprite is elsewhere, so a block that reads it there must be reading *what* it is. The model is fitted
# on the same attention, sprite tokens included, so anything systematic (a drift all sprites share) counts as
# position: the baseline is conservative.
#
# The position-only model is one function, and it reproduces every weight from the offset map:

# %%
attention = result.attention[0].mean(0).reshape(f - 1, h * w, h * w)  # block 0, head mean, per later frame
predicted = position_prediction(attention, h, w)
print(f"block 0: attention {attention.shape}, position-only model {predicted.shape}, "
      f"the share it explains (1 − residual/total variance): {1 - (attention - predicted).var() / attention.var():.2f}")

# %% [markdown]
# Now the measure: for the later tokens on sprite k, the mass they put on sprite k's first-frame keys
# (**observed**), what the position-only model predicts (**position**), and the difference (**content**). Only
# frames after the cut count, where each sprite sits somewhere else than in frame 0. The **shuffled control** reads
# the same tokens against another sprite's keys.

# %%
rows = memory.retrieval_rows(pipe, clip, encoded, entities, ffgo=False, sigma=SIGMA)
for block, row in rows.items():
    own, shuffled = row["own"], row["shuffled"]
    line = f"block {block}: observed {own['observed']:.3f}, position {own['position']:.3f}, content {own['content']:+.3f}"
    print(line + (f"; shuffled control {shuffled['content'] + 0:+.3f}" if shuffled else ""))

# %% [markdown]
# On one clip the control can come out positive (block 2 here); whether it does on average needs many clips. One
# clip is an anecdote. `python -m ffstudy.spriteworld.memory` runs the same on 40 held-out clips with a cut (38 of
# them have a sprite token after the cut) and 40 FFGo composites (chapter 2's collage: the cut-outs on the left of
# a white canvas, the plate on the right; the scene after the 4 composite frames), at three noise levels; its
# results ship beside the weights (`memory.json`), and the model card prints them in full.

# %%
study = json.loads((SPRITEWORLD_DIR / "memory.json").read_text())
memory.plot_retrieval_by_block(study)
plt.show()
for setting, results in study["settings"].items():
    at = results["retrieval"][str(study["knockout_sigma"])]
    print(f"{setting}, observed / position-predicted mass per block: "
          + ", ".join(f"{b}: {r['observed'][0] / r['position'][0]:.1f}×" for b, r in at.items()))
memory.plot_retrieval_by_block(study, "0.9")
plt.show()

# %% [markdown]
# What the study says (the card has every number):
#
# - **Position explains part of chapter 1's retrieval, not all of it.** At σ = 0.6, in blocks 0–4, tokens on a
#   sprite put 1.5 to 4.4 times the mass on that sprite's first-frame keys that the position-only model predicts,
#   after a cut and in composites alike, with intervals above zero. The last block (5) reads no more than position.
# - **At σ = 0.6 the shuffled control stays at or below zero**: the excess is about *this* sprite, not sprites in
#   general.
# - **At σ = 0.9 the picture is weaker**: content retrieval falls to about zero in blocks 0 and 1 (and block 4 after
#   a cut); blocks 2 and 3 keep part of it, but there the shuffled control is slightly above zero too, so at that
#   noise level some of the excess is about sprites in general rather than this one.

# %% [markdown]
# ## Causes: take the sprite's keys away
#
# `FirstFrameIntervention` multiplies the un-normalised attention weight of chosen first-frame keys by α (it adds
# log α to their logits; the softmax then renormalises) for the queries of later frames — α = 0 deletes them, α > 1
# amplifies them — in chosen blocks, denoising steps and, for Wan2.2-A14B, noise-level experts. It is exact (two fused
# attentions over the chosen keys and the rest, combined by their log-sum-exps; `tests/test_intervene.py` checks it
# against a float64 recomputation that deletes the keys) and changes nothing at α = 1, bit for bit.
#
# Here we remove sprite 1's first-frame keys in every block, and, as a control, as many first-frame background keys
# far from any sprite. Each video is the teacher-forced prediction of the clean clip (one denoising pass at σ). The
# knock-out itself is one `with` block:

# %%
keys = entity_keys(entities, entities.names[0], h, w, threshold=memory.KEY_SHARE)  # at least a quarter sprite 1
print(f"sprite 1 covers {keys.sum()} of the first frame's {h * w} tokens")
with FirstFrameIntervention(pipe.transformer, keys, alpha=0.0):
    knocked = memory.predicted_video(pipe, inputs, SIGMA)

videos = memory.knockout_videos(pipe, clip, encoded, entities, SIGMA)  # the same, with the model and the control
assert (videos["sprite 1's keys removed"] == knocked).all()
later = memory.knockout_frames(clip, ffgo=False)  # every 4th frame after the cut, as the study scores them
for name, video in videos.items():
    print(f"{name:<32} sprite 1 found in {memory.found_share(video, clip, 0, later):.0%} of frames {later}")
labels = {"model": "unchanged model\n(teacher-forced,\nσ = 0.6)"}
sheet = viz.contact_sheet([("real clip\nframes 0, 4, … 16", clip.frames)]
                          + [(labels.get(name, name.replace(" keys", "\nkeys")), v) for name, v in videos.items()])
plt.figure(figsize=(10, 6))
plt.imshow(sheet)
plt.axis("off")
plt.show()

# %% [markdown]
# The study does this on every clip and composite, for α from 0 to 4 (the dose-response) and for a knock-out in
# one block at a time (which blocks carry the memory). Each clip is compared with itself unchanged, so the plots
# show paired changes, in percentage points of later frames in which the sprite is found:

# %%
memory.plot_interventions(study)
plt.show()
for setting, results in study["settings"].items():
    knock = results["knockout"]
    removed, control = ([round(100 * v, 1) + 0.0 for v in changes]  # in points; + 0.0 prints no "-0.0"
                        for changes in (knock["alpha"]["0.0"]["target_change"],
                                        knock["background control"]["target_change"]))
    print(f"{setting}: sprite 1 found in {knock['alpha']['1.0']['target'][0]:.0%} of later frames unchanged; "
          f"its keys removed: {removed[0]:+.1f} points (95% interval {removed[1]:+.1f} to {removed[2]:+.1f}), "
          f"background keys removed instead: {control[0]:+.1f} points")

# %% [markdown]
# Unchanged, the teacher-forced prediction shows sprite 1 as an object of its shape in only 22% of the cut clips'
# frames 4, 8, 12 and 16 that come after the cut (8–16 or 12–16: the cut falls in frames 5–11) and in 20% of the
# composites' frames 4–16: a low base, since this model blurs sprites and the detector counts only a sprite with its
# own shape, not a blob of its colour.
#
# - **No clear effect.** Removing sprite 1's first-frame keys in every block changes how often it is found by +0.4
#   points after a cut (interval −3 to +4) and −5 points in composites (interval −11 to +1): both intervals include
#   zero. Removing as many background keys changes it by 0 and +2 points, and the other sprites move by 2 points at
#   most.
# - **No dose-response.** After a cut, α = 0.5 lowers the share by 2 points and α = 2 raises it by 2, each interval
#   reaching zero at one end (−6 to 0; 0 to +4), while removing the keys entirely or weighting them by 0.25 moves it
#   by under half a point. In composites, α = 0.25 and 0.5 even raise it slightly.
# - **One-block knock-outs**: blocks 0 and 3 after a cut lower it by 3 and 2 points, their intervals reaching zero
#   (−7 to 0; −6 to 0); the others, in composites all of them, are within 2 points of zero.
# - **What this means.** Chapter 1's retrieval and the content retrieval above are real, but on this model they
#   cannot be shown to *cause* anything you can see: the sprites it draws are rarely whole enough to be found, with
#   or without their keys (a detector that also counted round blobs of a sprite's colour would report a larger
#   effect, on blobs). A model that keeps its sprites is needed to answer the causal question; exercise 2 looks at one more reason, the noisy latents of later frames
#   carrying the sprite too in a teacher-forced pass, so frame 0 is one source among two.

# %% [markdown]
# ## Two uses: a training-free FFGo, and a predictor of survival
#
# If the cut-outs' keys carry the entities, amplifying them at N = 0 — no LoRA, just the trigger phrase (chapters
# 4 and 6) — might bring the
# sprites into the scene without training. And if retrieval matters, a sprite that later frames read more (beyond
# position) during generation should survive to the last frame more often. Both were measured by generating from
# 40 held-out composites:

# %%
generation = study["generation"]
for alpha, row in generation["amplification"].items():
    print(f"α = {float(alpha):g} on the cut-outs' keys: retention (chapter 6) {row['retention'][0]:.0%}, "
          f"final frame is the scene {row['final_in_scene'][0]:.0%}")
survival = generation["survival"]
auc = survival["auc"]
print(f"N = 50 LoRA: {survival['survived']} of {survival['entities']} sprites survived; ROC AUC of retrieval "
      + (f"{auc[0]:.2f} (95% interval {auc[1]:.2f}–{auc[2]:.2f})" if auc else "undefined"))

# %% [markdown]
# - **Amplification is not a training-free FFGo here.** Without a LoRA the model never leaves the collage (the final
#   frame is the scene in none of the 40 videos), and weighting the cut-outs' keys by 2 or 4 does not change that.
#   What FFGo's LoRA teaches first is the cut itself (chapter 6: the final frame is the scene in 25% of videos at
#   N = 5, 75% at N = 50), which no reweighting of frame 0 provides.
# - **Survival cannot be predicted on this model**: with the N = 50 LoRA only 2 of the 79 sprites survive to the
#   last frame as objects; an ROC AUC over 2 positives (its interval spans 0.6 to 1) says nothing. It needs a model
#   that keeps its sprites; the question stays open.
#
# ## Summary
#
# - Attention in Wan depends on the query-key offset, so retrieval must be measured beyond what position predicts,
#   where position and content disagree: after a hard cut, in an FFGo composite.
# - On SpriteWorld, content retrieval is real: in blocks 0–4, tokens on a sprite read its first-frame keys 1.5 to
#   4.4 times as much as position predicts, and not another sprite's (at σ = 0.6).
# - Removing or reweighting a sprite's first-frame keys changes how often it is found in predicted frames by a few
#   points at most, and no interval excludes zero: on a model whose sprites rarely survive whole, the causal test
#   cannot decide.
# - Amplifying the cut-outs does not replace the LoRA, and retrieval's link to survival cannot be measured until
#   sprites survive.
#
# ## Questionnaire
#
# 1. Why can attention that depends only on the query-key offset look like entity retrieval in plain
#    image-to-video, and why does a hard cut separate the two?
# 2. What does the shuffled-entity control rule out that the position-only model does not?
# 3. Why is "α = 1 leaves the output bit-identical" worth a test, and why is it not enough?
# 4. A knock-out changes a sprite. Why is the background-keys control needed before concluding anything?
# 5. What would make a ROC AUC of retrieval against survival meaningless?
#
# ## Exercises
#
# 1. Repeat the knock-out on an FFGo composite instead of a cut clip.
#    <details><summary>Hint</summary>`from ffstudy.spriteworld.world import WorldConfig`; take a clip without a cut,
#    `plain = generate_clip(SEED, cut=False)`, then `frames, composite, caption = memory.ffgo_clip(plain,
#    WorldConfig())`, `memory.encode(pipe, frames, caption)` and `memory.knockout_videos(pipe, plain, encoded,
#    composite)`.</details>
# 2. Knock out sprite 1 at σ = 0.3 and at σ = 0.9. Where does removing frame 0 matter more, and why would it?
#    <details><summary>Hint</summary>The noisy latents themselves carry the sprite at low σ.</details>
# 3. Amplify instead of removing: `FirstFrameIntervention(pipe.transformer, keys, alpha=4.0)`. Does the sprite get
#    sharper, brighter, or nothing?
#    <details><summary>Hint</summary>`keys` from the knock-out cell; compare `memory.found_share` of both videos.</details>
# 4. Fit the position-only model per head instead of on the head mean. Do some heads read content while others read
#    place? <details><summary>Hint</summary>`result.attention[record]` is (heads, later tokens, first-frame tokens):
#    reshape it to `(heads, f - 1, h * w, h * w)` first; `position_prediction` keeps leading axes.</details>
#
# ## Further reading
#
# - Vig & Belinkov, *Analyzing the Structure of Attention in a Transformer Language Model* (2019), and Jain &
#   Wallace, *Attention is not Explanation* (2019): why attention maps alone are correlational.
# - Meng et al., *Locating and Editing Factual Associations in GPT* (2022): causal interventions on activations.
# - Su et al., *RoFormer* (2021): rotary position embeddings, the reason Wan's attention depends on offsets.
