"""Measurements on SpriteWorld videos, using the generator's own ground truth (colours, shapes, motions, masks).

Sprites in a clip have distinct saturated colours and scenes are muted, so a sprite is *identified* in any frame
by the pixels close to its colour (or to its texture's darker shade).
"""
from __future__ import annotations

import numpy as np
import torch

from ..compose import Composite
from .world import COLOURS, DIRECTIONS, Clip, SpriteSpec, render_sprite, sprite_sizes

COLOUR_TOLERANCE = 60.0  # RGB distance


def share_interval(share: float, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95 % by default) of a share measured on ``trials`` videos: at 40 videos one video is
    2.5 points, so 87.5 % and 90 % are the same result within it, and the card says so."""
    if trials < 1:
        raise ValueError(f"share_interval needs at least one trial, got trials={trials}")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share_interval: share={share} is not a share in [0, 1]")
    p = round(share * trials) / trials  # the stored shares are counts over trials, up to float rounding
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio of uint8 images or videos, in dB."""
    mse = np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def masked_psnr(reference: np.ndarray, test: np.ndarray, mask: np.ndarray) -> float:
    """PSNR over the pixels where ``mask`` (same leading shape as the images, no channel axis) is true."""
    if not mask.any():
        raise ValueError("masked_psnr: the mask selects no pixels")
    return psnr(reference[mask], test[mask])


def colour_mask(frame: np.ndarray, colour: str, tolerance: float = COLOUR_TOLERANCE) -> np.ndarray:
    """Pixels within ``tolerance`` of the sprite colour or of its texture shade (0.55×)."""
    base = np.array(COLOURS[colour], np.float32)
    pixels = frame.astype(np.float32)
    near = lambda c: np.linalg.norm(pixels - c, axis=-1) <= tolerance  # noqa: E731
    return near(base) | near(base * 0.55)


def expected_pixels(sprite: SpriteSpec, size: float | None = None) -> float:
    """Pixels of the sprite's colours in a render at ``size`` (default: its nominal size)."""
    size = sprite.size if size is None else size
    render = render_sprite(sprite.shape, sprite.colour, sprite.texture, max(2, int(round(size))))
    return float((colour_mask(render[..., :3], sprite.colour) & (render[..., 3] >= 128)).sum())


def sprite_present(frame: np.ndarray, sprite: SpriteSpec, min_fraction: float = 0.3,
                   size: float | None = None) -> bool:
    """Is the sprite identifiable in ``frame``: at least ``min_fraction`` of the colour pixels it has at ``size``?"""
    return bool(colour_mask(frame, sprite.colour).sum() >= min_fraction * expected_pixels(sprite, size))


def entity_persistence(video: np.ndarray, sprites: list[SpriteSpec], frame: int = -1) -> bool:
    """Are all ``sprites`` still present and identifiable in ``video[frame]`` (default: the last frame), each
    measured against its ground-truth size in that frame (a shrinking sprite ends at 0.7 of its nominal size)?"""
    return all(sprite_present(video[frame], s, size=sprite_sizes(s, len(video))[frame]) for s in sprites)


def centroid(frame: np.ndarray, sprite: SpriteSpec) -> np.ndarray | None:
    ys, xs = np.nonzero(colour_mask(frame, sprite.colour))
    return None if len(xs) == 0 else np.array([xs.mean(), ys.mean()])


def motion_check(video: np.ndarray, sprite: SpriteSpec, start: int = 0) -> dict:
    """Displacement of the sprite's colour centroid from ``video[start]`` to the last frame, and — for the
    drifting motions — whether it points the way the caption says."""
    first, last = centroid(video[start], sprite), centroid(video[-1], sprite)
    if first is None or last is None:
        return {"displacement": None, "moved": False, "direction_ok": None}
    shift = last - first
    direction_ok = None
    if sprite.motion in DIRECTIONS:
        direction_ok = bool(np.dot(shift, DIRECTIONS[sprite.motion]) > 1.0)
    return {"displacement": float(np.linalg.norm(shift)), "moved": bool(np.linalg.norm(shift) > 1.0),
            "direction_ok": direction_ok}


def first_frame_entities(clip: Clip) -> Composite:
    """The clip's first frame with its ground-truth entities: one per sprite (named like the caption) and
    the scene as ``background``."""
    from PIL import Image

    return Composite.from_labels(Image.fromarray(clip.frames[0]), clip.masks[0], [s.name for s in clip.sprites])


def token_labels(mask: np.ndarray, rows: int, cols: int, threshold: float = 0.5) -> np.ndarray:
    """Per token: the sprite index (1…n) covering at least ``threshold`` of it, else 0."""
    one_hot = torch.from_numpy(np.stack([mask == k for k in range(int(mask.max()) + 1)])).double()
    share = torch.nn.functional.adaptive_avg_pool2d(one_hot, (rows, cols)).numpy()
    best = share.argmax(0)
    return np.where(share.max(0) >= threshold, best, 0)


def retrieval_accuracy(result, clip: Clip, temporal_stride: int = 4, per: str = "entity",
                       head: int | None = None) -> dict[int, float]:
    """Per probed block: over later-frame tokens covered by sprite k (ground truth), the share whose first-frame
    choice is sprite k. ``per="entity"`` chooses the entity receiving the most attention mass (the background,
    being most of the frame, wins ties of attention spread evenly); ``per="token"`` divides each entity's mass by
    its token area first, so it asks which entity is read most *densely*. ``head``: one attention head's mass
    instead of the mean over heads (the probe must have run with ``per_head=True``). ``result`` must come from a
    probe whose composite is :func:`first_frame_entities` of ``clip`` (entity i ↔ sprite i)."""
    if per not in ("entity", "token"):
        raise ValueError(f"per={per!r}: use 'entity' (total mass) or 'token' (mass per token of area)")
    mass = result.entity_mass
    if head is not None:
        if result.head_entity_mass is None:
            raise ValueError(f"head={head}: this result has no per-head masses; probe with per_head=True")
        heads = result.head_entity_mass.shape[1]
        if not 0 <= head < heads:
            raise ValueError(f"head={head}: the probed blocks have heads 0–{heads - 1}")
        mass = result.head_entity_mass[:, head]
    f, h, w = result.grid
    labels = np.stack([token_labels(clip.masks[min(t * temporal_stride, len(clip.masks) - 1)], h, w)
                       for t in range(1, f)]).reshape(f - 1, h * w)
    covered = labels > 0
    if not covered.any():
        return {}
    area = np.ones(len(result.entity_names))
    if per == "token":
        masks = first_frame_entities(clip).masks(h, w)
        area = np.array([max(float(masks[name].sum()), 1e-6) for name in result.entity_names])
    accuracy = {}
    for block in sorted({r["block"] for r in result.records}):
        keep = result.select(blocks=block)
        chosen = (mass[keep].mean(0) / area).argmax(-1) + 1  # entity i -> sprite i + 1
        accuracy[block] = float((chosen[covered] == labels[covered]).mean())
    return accuracy
