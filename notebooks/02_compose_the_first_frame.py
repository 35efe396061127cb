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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ffstudy/ffstudy/blob/main/notebooks/02_compose_the_first_frame.ipynb)
#
# # 2. Compose the first frame
#
# FFGo's only input change is the first frame: reference cut-outs stacked on the left of a white 1280×720 canvas,
# the background plate on the right. This chapter builds that canvas exactly as the official code does, and keeps
# what the probes need: *where* every entity went.
#
# **Prerequisites.** Chapter 1's idea (the first frame is read by later frames); PIL images and RGBA transparency.
#
# **Goals.** By the end of this chapter you can
# - compose an FFGo first frame from cut-outs and a plate, and explain each step of the official recipe;
# - read its entity geometry: named boxes, and per-entity masks on any grid, including the model's token grid;
# - try the other layouts (grid, swapped) and the crop-to-alpha detail the released composites depend on;
# - pick references interactively with a widget, or with one function call in a script.

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
CANVAS = (1280, 720)  # (width, height) of the FFGo canvas
LAYOUT = "ffgo"       # "ffgo", "grid" or "swapped"

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ffstudy import compose_first_frame, course, viz
from ffstudy.cli import data_dir
from ffstudy.pickers import ReferencePicker, compose_references

course.setup()
DATA = data_dir()
print(sorted(p.name for p in (DATA / "references").glob("*.png")))
print(sorted(p.name for p in (DATA / "backgrounds").glob("*.png")))

# %% [markdown]
# ## The recipe
#
# `compose_first_frame` follows `combine_materials.py` from the official repository, step by step:
#
# 1. a white canvas;
# 2. the plate is **force-resized to the canvas size** (its aspect ratio is lost), then shrunk into the right half
#    and centred — a 16:9 plate lands as 640×360 at (640, 180);
# 3. each cut-out is cropped to its alpha bounding box, flattened over white with its alpha, and shrunk — never
#    enlarged — into an equal slot of height `720 // n` on the left, first item on top.
#
# The released training composites match only with the crop in step 3, which the script in the repository
# lacks; ffstudy crops by default and lets you turn it off.

# %%
comp = compose_first_frame(
    {"star": DATA / "references/red_star.png", "ring": DATA / "references/blue_ring.png"},
    DATA / "backgrounds/meadow.png", canvas=CANVAS, layout=LAYOUT)
print(comp)
for entity in comp.entities:
    b = entity.box
    print(f"{entity.name:<11} box x [{b.x0:4d}, {b.x1:4d})  y [{b.y0:3d}, {b.y1:3d})   slot height {entity.slot.height}")

# %%
viz.draw_entity_boxes(comp)
plt.show()

# %% [markdown]
# ## Entity geometry on the token grid
#
# Wan's VAE shrinks each side 8× and the transformer groups 2×2 latents into one token, so a 1280×720 first frame
# becomes a 45×80 grid of tokens. `Composite.masks(rows, cols)` gives, per entity, the share of each cell it covers;
# the masks of all entities — the white filler included — add up to one in every cell. The attention probes split
# the first frame's attention by exactly these masks.

# %%
masks = comp.token_masks(720, 1280)  # 16 pixels per token side: 45 x 80
total = sum(masks.values())
print({name: round(float(m.sum()), 1) for name, m in masks.items()}, "tokens")
print("every cell sums to one:", bool(np.allclose(total, 1.0)))

fig, axes = plt.subplots(1, len(masks), figsize=(min(4 * len(masks), 12), 2.4))
for ax, (name, mask) in zip(axes, masks.items()):
    ax.imshow(mask, vmin=0, vmax=1, cmap="viridis")
    ax.set_title(name)
    ax.set_axis_off()
plt.show()

# %% [markdown]
# ## Layouts
#
# The paper trains with the layout above only, and notes the model generalises "in some cases" to others.
# `layout="grid"` packs the cut-outs in a near-square grid (2×2 for four, as in one of the released test
# composites); `layout="swapped"` puts the plate on the left.

# %%
refs = [DATA / f"references/{n}.png" for n in ("red_star", "blue_ring", "striped_box")]
fig, axes = plt.subplots(1, 3, figsize=(12, 2.4))
for ax, layout in zip(axes, ("ffgo", "grid", "swapped")):
    viz.draw_entity_boxes(compose_first_frame(refs + refs[:1], DATA / "backgrounds/night_city.png", layout=layout), ax)
    ax.set_title(layout)
plt.show()

# %% [markdown]
# ### Why crop to the alpha box?
#
# The bundled cut-outs, like FFGo's, are full frames with a transparent surrounding. Without the crop, the shrink
# step fits the *whole frame* into the slot and the object ends up small and off-centre.

# %%
for crop in (True, False):
    box = compose_first_frame(refs[:1], DATA / "backgrounds/meadow.png", crop_to_alpha=crop).objects[0].box
    print(f"crop_to_alpha={crop!s:<5}: pasted {box.width}x{box.height} at ({box.x0}, {box.y0})")

# %% [markdown]
# ## A reference picker
#
# Click cut-outs to choose them, order them with the arrow buttons (top to bottom), choose a plate and a layout;
# the preview follows, and `picker.read()` returns the composite with its entity boxes and masks. You can upload
# your own RGBA cut-outs (a cut-out without alpha is used as an opaque rectangle; the warning appears under the
# preview). Only core ipywidgets are used, so this renders in JupyterLab and in Colab. On the course website, or
# before the cell has run in a freshly opened notebook, you see a still image of the preview instead: run the cell
# in JupyterLab or Colab to get the buttons.

# %% tags=["nbval-ignore-output"]
picker = ReferencePicker(DATA, cutouts=["red_star", "blue_ring"], background="meadow")
picker

# %% [markdown]
# The widget is ordinary Python underneath: setting its values from code does what clicking does.

# %%
picker.move("blue_ring", -1)  # what its ↑ button does
picker.layout.value = "grid"
composite = picker.read()
print([e.name for e in composite.objects], composite.layout)

# %% [markdown]
# In a script, or in CI, the same composite comes from one call:

# %%
same = compose_references(DATA, ["blue_ring", "red_star"], "meadow", layout="grid")
print("identical to the picker's:", bool(np.array_equal(np.asarray(same.image), np.asarray(composite.image))))
same.save("outputs/chapter2")
print(sorted(p.name for p in Path("outputs/chapter2").iterdir()))

# %% [markdown]
# ## Summary
#
# - FFGo's first frame is a white 1280×720 canvas: cut-outs stacked on the left half, each in an equal slot, and the
#   background plate squashed to 16:9 and centred in the right half.
# - The composite carries its geometry: named boxes, a label map, and per-entity masks on any grid, including the
#   model's token grid.
# - Cropping cut-outs to their alpha box is what makes ffstudy's composites match the ones the official LoRAs were
#   trained on; the official script does not crop.
#
# ## Questionnaire
#
# 1. Why does a fourth or fifth cut-out hurt identity, in pixels and in tokens?
# 2. What does `force_background_aspect` reproduce, and when would you turn it off?
# 3. Why is a cut-out without transparency a problem for the masks, and what does ffstudy do with one?
#
# ## Exercises
#
# 1. Compose five references. How tall is each slot, and how large does each cut-out end up? The paper reports
#    that identity degrades past four objects plus a scene — relate that to the pixels each object gets.
#    <details><summary>Hint</summary>List the same reference several times under different names, then read
#    `comp.objects[i].box`.</details>
# 2. Turn off `force_background_aspect` with the 4:3 `night_city` plate. Where does the plate land now, and how many
#    of its pixels does the default squash lose or add?
#    <details><summary>Hint</summary>Compare `comp.box("background")` for both settings with the plate's own size
#    (`PIL.Image.open(...).size`).</details>
# 3. Compute, from `comp.token_masks(480, 832)`, how many tokens the star gets at Wan2.1's 480p. Is that enough
#    to carry a face?
#    <details><summary>Hint</summary>Sum the star's mask; a face at that size is a few tokens across.</details>
# 4. Upload a photo without transparency in the picker. What does the warning say, and what do the masks show?
#    <details><summary>Hint</summary>The warning appears under the preview; then
#    `picker.read().masks(90, 160)` for the photo's mask.</details>
#
# ## Further reading
#
# - The FFGo paper, section 4 (the composite) and its project page, [firstframego.github.io](https://firstframego.github.io)
# - The book's page *The FFGo method* ([parity](../parity.md)), "The first frame"
# - [ipywidgets](https://ipywidgets.readthedocs.io), for the picker
