"""Plots for composites and probe results: the pictures people would rather look at than read."""
from __future__ import annotations

import numpy as np
from PIL import Image

from .compose import FILLER, Composite

_PALETTE = [(228, 26, 28), (55, 126, 184), (255, 127, 0), (152, 78, 163), (166, 86, 40), (247, 129, 191),
            (153, 153, 153), (255, 255, 51)]
_BACKGROUND_COLOUR, _FILLER_COLOUR = (77, 175, 74), (175, 175, 175)


# the widest figure, in inches: at matplotlib's inline 100 dpi it stays within 1,200 px, which the course
# website's ~700 px column shows at more than half size (tests/test_notebooks.py checks the stored figures)
MAX_FIGURE_INCHES = 12.0

def entity_colours(names: list[str], rgb: list | None = None) -> dict[str, tuple[int, int, int]]:
    """A stable colour per entity: each object its own colour where ``rgb`` gives it (a probe result's
    ``entity_rgb``: the median colour of its pixels), else one from a qualitative palette; background green,
    white filler grey."""
    colours, objects = {}, iter(_PALETTE)
    for i, name in enumerate(names):
        own = rgb[i] if rgb is not None and i < len(rgb) else None
        colours[name] = (_BACKGROUND_COLOUR if name == "background" else _FILLER_COLOUR if name == FILLER
                         else tuple(own) if own is not None else next(objects, (0, 0, 0)))
    return colours


def result_colours(result) -> dict[str, tuple[int, int, int]]:
    """:func:`entity_colours` of a probe result's entities, in their own colours where it recorded them."""
    return entity_colours(result.entity_names, getattr(result, "entity_rgb", None))


def _axes(ax, figsize=(6, 4)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _legend_handles(colours):
    from matplotlib.patches import Patch

    return [Patch(color=np.array(c) / 255, label=n) for n, c in colours.items()]


def draw_entity_boxes(composite: Composite, ax=None):
    """The composite with each entity's box outlined and named."""
    from matplotlib.patches import Rectangle

    ax = _axes(ax, (8, 4.5))
    ax.imshow(composite.image)
    colours = entity_colours(composite.names)
    for entity in composite.entities:
        b, colour = entity.box, np.array(colours[entity.name]) / 255
        ax.add_patch(Rectangle((b.x0, b.y0), b.width, b.height, fill=False, lw=2, ec=colour))
        ax.text(b.x0 + 4, b.y0 + 4, entity.name, va="top", color="white", fontsize=9,
                bbox=dict(facecolor=colour, alpha=0.8, pad=1, lw=0))
    ax.set_axis_off()
    return ax


def plot_retrieval_curves(result, over: str = "frame", ax=None, **selection):
    """Mean first-frame attention mass per query token, one line per entity plus the total."""
    ax = _axes(ax)
    x, curves = result.retrieval_curves(over, **selection)
    colours = result_colours(result)
    for name, values in curves.items():
        style = dict(color="black", ls="--") if name == "total" else dict(color=np.array(colours[name]) / 255)
        ax.plot(x, values, marker="o", label=name, **style)
    ax.set_xlabel({"frame": "latent frame", "block": "transformer block", "step": "denoising step"}[over])
    ax.set_ylabel("attention mass on frame 0")
    ax.set_xticks(x)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_retrieval_overview(result, **selection):
    """Retrieval curves over frames, blocks and denoising steps side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(MAX_FIGURE_INCHES, 3.6))
    for ax, over in zip(axes, ("frame", "block", "step")):
        plot_retrieval_curves(result, over, ax=ax, **selection)
    fig.tight_layout()
    return fig


def pixel_frame(latent_frame: int, temporal_stride: int = 4) -> int:
    """The last pixel frame packed into ``latent_frame`` (the causal VAE packs frame 0 alone, then groups)."""
    return latent_frame * temporal_stride


def _tint(picture: np.ndarray, labels: np.ndarray, colours: dict, alpha: float) -> np.ndarray:
    lut = np.array(list(colours.values()), np.uint8)
    tint = np.asarray(Image.fromarray(lut[labels]).resize(picture.shape[1::-1], Image.NEAREST), np.float32)
    return ((1 - alpha) * np.asarray(picture, np.float32) + alpha * tint).round().astype(np.uint8)


def who_retrieves_what_overlay(result, frame: int, video: np.ndarray, alpha: float = 0.55,
                               **selection) -> np.ndarray:
    """Decoded frame ``pixel_frame(frame)`` of the full video (transition included), each token tinted with
    the colour of the first-frame entity it reads most densely (mass per token of the entity's area)."""
    picture = video[min(pixel_frame(frame), len(video) - 1)]
    return _tint(picture, result.who_retrieves_what(frame, **selection), result_colours(result), alpha)


def plot_who_retrieves_what(result, video: np.ndarray, frames=None, **selection):
    """A row of overlays, one per latent frame (default: all later frames)."""
    import matplotlib.pyplot as plt

    frames = list(frames or range(1, result.num_frames))
    fig, axes = plt.subplots(1, len(frames), figsize=(min(3 * len(frames), MAX_FIGURE_INCHES), 2.6),
                             squeeze=False)
    for ax, frame in zip(axes[0], frames):
        ax.imshow(who_retrieves_what_overlay(result, frame, video, **selection))
        ax.set_title(f"latent frame {frame}", fontsize=9)
        ax.set_axis_off()
    fig.legend(handles=_legend_handles(result_colours(result)), loc="lower center",
               ncol=len(result.entity_names), fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def plot_reverse_maps(result, first_frame, frames=None, **selection):
    """Heatmaps over the first frame: how strongly each of its tokens is read by later frames, on one colour
    scale for the whole figure so that panels compare."""
    import matplotlib.pyplot as plt

    image = first_frame.image if isinstance(first_frame, Composite) else first_frame
    frames = list(frames or range(1, result.num_frames))
    heats = {frame: result.reverse_map(frame, **selection) for frame in frames}
    top = max(float(h.max()) for h in heats.values())
    fig, axes = plt.subplots(1, len(frames), figsize=(min(3.2 * len(frames), MAX_FIGURE_INCHES - 1), 2.6),
                             squeeze=False)
    for ax, frame in zip(axes[0], frames):
        ax.imshow(image)
        shown = ax.imshow(heats[frame], cmap="magma", alpha=0.6, vmin=0, vmax=top,
                          extent=(0, image.width, image.height, 0))
        ax.set_title(f"read by latent frame {frame}", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()  # the colour bar takes the inch kept free
    fig.colorbar(shown, ax=list(axes[0]), fraction=0.02, pad=0.01, label="mean attention")
    return fig


def plot_offset_attention(result, frame: int, steps=None):
    """Per probed block, the mean attention weight of latent ``frame``'s queries on first-frame keys at each
    key-minus-query offset (centre: the same place): the position-only model of the attention, which content
    retrieval has to beat. One colour scale for the figure. Needs a probe run with ``keep_attention=True``."""
    import matplotlib.pyplot as plt

    from .retrieval import offset_means

    if result.attention is None:
        raise ValueError("this probe result has no raw attention: probe with keep_attention=True (small models)")
    f, h, w = result.grid
    blocks = sorted({r["block"] for r in result.records})
    maps = []
    for block in blocks:
        keep = result.select(blocks=block, steps=steps)
        attention = result.attention[keep].mean((0, 1)).reshape(f - 1, h * w, h * w)[result._frame_index(frame)]
        maps.append(offset_means(attention, h, w))
    top = max(float(m.max()) for m in maps)
    fig, axes = plt.subplots(1, len(blocks), figsize=(min(2.4 * len(blocks), MAX_FIGURE_INCHES - 1), 2.4), squeeze=False)
    for ax, block, m in zip(axes[0], blocks, maps):
        shown = ax.imshow(m, cmap="viridis", vmin=0, vmax=top, extent=(-w + 0.5, w - 0.5, h - 0.5, -h + 0.5))
        ax.set_title(f"block {block}", fontsize=9)
        ax.set_xlabel("column offset", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("row offset", fontsize=8)
    fig.tight_layout()
    fig.colorbar(shown, ax=list(axes[0]), fraction=0.02, pad=0.01, label="mean attention weight")
    return fig


def who_retrieves_what_animation(result, video: np.ndarray, alpha: float = 0.55, temporal_stride: int = 4,
                                 **selection) -> np.ndarray:
    """Frames for ``mediapy.show_video``: every pixel frame after the first (full video, transition included)
    tinted by the retrieval map of the latent frame it belongs to."""
    maps = {t: result.who_retrieves_what(t, **selection) for t in range(1, result.num_frames)}
    colours = result_colours(result)
    return np.stack([_tint(video[i], maps[min(result.num_frames - 1, (i - 1) // temporal_stride + 1)],
                           colours, alpha) for i in range(1, len(video))])


def contact_sheet(rows: list[tuple[str, np.ndarray]], every: int = 4, gap: int = 4,
                  label_width: int = 150) -> Image.Image:
    """One image of several videos, a row each: every ``every``-th frame (and the last), the row's label on the
    left. The way to *look* at generated videos before trusting any number about them."""
    from PIL import ImageDraw

    height, width = rows[0][1].shape[1:3]
    picks = sorted(set(range(0, len(rows[0][1]), every)) | {len(rows[0][1]) - 1})
    sheet = Image.new("RGB", (label_width + len(picks) * (width + gap), len(rows) * (height + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, video) in enumerate(rows):
        if video.shape[1:3] != (height, width):
            raise ValueError(f"contact_sheet: row {label!r} has frames of {video.shape[1:3]}, not {(height, width)}")
        y = r * (height + gap)
        draw.multiline_text((4, y + 4), label, fill="black", spacing=2)
        for c, t in enumerate(picks):
            sheet.paste(Image.fromarray(video[min(t, len(video) - 1)]), (label_width + c * (width + gap), y))
    return sheet


def save_sheet(sheet: Image.Image, path) -> None:
    """Write a contact sheet as a 256-colour PNG, atomically: about a quarter of the RGB file, close enough to
    judge sprites, blur and noise by eye. The palette is refined by k-means: median cut alone merged the two reds
    of a striped sprite when noisy rows took most of the colours, and a texture that vanishes on the sheet looks
    like one the model lost."""
    from .io import atomic_path

    with atomic_path(path) as tmp:
        palette = sheet.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, kmeans=3)
        palette.save(tmp, format="PNG", optimize=True)
