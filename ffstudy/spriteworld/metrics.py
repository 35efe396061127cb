"""Measurements on SpriteWorld videos, using the generator's own ground truth (colours, shapes, motions, masks).

Sprites in a clip have distinct saturated colours and scenes are muted, so a sprite is *found* in a frame as a
connected region of its colours with its area and its shape; colour pixels scattered anywhere do not count. Every
measure here is checked against controls (``controls``): real clips pass it, decoded noise, a frozen frame and the
collage held still fail it.
"""
from __future__ import annotations

import numpy as np
import torch

from ..compose import Composite
from .world import COLOURS, DIRECTIONS, Clip, SpriteSpec, render_sprite, sprite_sizes

COLOUR_TOLERANCE = 45.0  # RGB distance from the sprite colour's line of shades
INF_DB = 99.0  # PSNR of identical images: a finite stand-in, so means and JSON stay numbers


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
    """Pixels within ``tolerance`` of the sprite colour at some shade between its texture's (0.55×) and full: the
    blends between stripes and dots stay in, muted scene colours near the dark shade's brightness do not."""
    base = np.array(COLOURS[colour], np.float32)
    pixels = frame.astype(np.float32)
    shade = np.clip(pixels @ base / (base @ base), 0.55, 1.0)
    return np.linalg.norm(pixels - shade[..., None] * base, axis=-1) <= tolerance


# --------------------------------------------------------------------------------------------- objects
# A sprite is found when one connected region of its colours has the area of the sprite (within AREA_BAND of the
# ground-truth area), its shape (IoU >= MIN_SHAPE_IOU with the template, centroids aligned, and — for every shape
# but the circle — a better IoU with its own silhouette than with any disc of an area in the band: a disc overlaps a
# star, a triangle or a ring with IoU 0.66-0.78, above MIN_SHAPE_IOU, so without this a blob passes for any shape)
# and no more than
# MAX_STRAY of its area in pixels of its colours elsewhere (farther than STRAY_MARGIN pixels from the region): a
# sprite that melts leaves fragments around a blob of roughly the right size. Colour pixels scattered anywhere —
# what decoded noise produces — are no object either: the controls in the tests and on the card check that noise,
# frozen frames, the collage held still and melted sprites fail (the model card prints each control's share).
AREA_BAND = (0.5, 2.0)
MIN_SHAPE_IOU = 0.6
MAX_STRAY = 0.2
MIN_SOLIDITY = 0.85  # of the template's: melting makes a lumpy outline
STRAY_MARGIN = 3
MIN_MOVE_PIXELS = 3.0  # centroid shift, first to last frame, that counts as moving
MIN_RESIZE = 1.25  # area ratio, first to last frame, that counts as growing or shrinking


BAND_SCALES = np.sqrt(np.linspace(*AREA_BAND, 13))  # linear scales whose areas span AREA_BAND


def sprite_template(sprite: SpriteSpec, size: float) -> np.ndarray:
    """The sprite's silhouette (alpha ≥ 128) at ``size`` pixels: the shape a found object must match."""
    render = render_sprite(sprite.shape, sprite.colour, sprite.texture, max(2, int(round(size))))
    return render[..., 3] >= 128


def _crop(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def shape_iou(region: np.ndarray, template: np.ndarray, search: int = 2) -> float:
    """IoU of two boolean masks after aligning their centroids, best over ±``search`` pixel shifts."""
    a, b = _crop(region), _crop(template)
    size = 2 * max(*a.shape, *b.shape) + 2 * search + 2  # room for any centroid at the centre, shifted

    def place(mask, dy=0, dx=0):
        canvas = np.zeros((size, size), bool)
        cy, cx = np.argwhere(mask).mean(0).round().astype(int)
        y0, x0 = size // 2 - cy + dy, size // 2 - cx + dx
        canvas[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]] = mask
        return canvas

    fixed = place(a)
    return float(max((fixed & (moved := place(b, dy, dx))).sum() / (fixed | moved).sum()
                     for dy in range(-search, search + 1) for dx in range(-search, search + 1)))


def disc(area: float) -> np.ndarray:
    """A pixel disc of ``area`` pixels (about)."""
    radius = np.sqrt(area / np.pi)
    reach = int(np.ceil(radius)) + 1
    yy, xx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    return xx ** 2 + yy ** 2 <= radius ** 2


def own_and_disc_iou(region: np.ndarray, sprite: SpriteSpec, size: float,
                     visible: np.ndarray | None = None) -> tuple[float, float]:
    """IoU of ``region`` with the sprite's silhouette and with a disc, each at its best size within ``AREA_BAND``
    of the sprite's area at ``size`` (the silhouette also as ``visible``, the ground truth's visible part, shows it
    for a sprite partly hidden): the region is the sprite's shape only if the first is the larger."""
    silhouettes = [sprite_template(sprite, size * scale) for scale in BAND_SCALES]
    if visible is not None and visible.sum() >= 4:
        silhouettes.append(_crop(visible))
    area = sprite_template(sprite, size).sum()
    own = max(shape_iou(region, shape) for shape in silhouettes)
    return own, max(shape_iou(region, disc(area * scale ** 2)) for scale in BAND_SCALES)


def solidity(mask: np.ndarray) -> float:
    """Area over convex-hull area of a pixel mask: 1 for a square or a disc, lower for a star, a ring's outline or
    a lumpy blob."""
    from scipy.spatial import ConvexHull

    ys, xs = np.nonzero(mask)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    return float(mask.sum() / ConvexHull(corners).volume)


def find_sprite(frame: np.ndarray, sprite: SpriteSpec, size: float | None = None,
                visible: np.ndarray | None = None, others: tuple[str, ...] = (),
                scene: np.ndarray | None = None, reject_discs: bool = True) -> dict | None:
    """The sprite as an object in ``frame``: the connected region of its colours whose area is within
    ``AREA_BAND`` of the sprite's at ``size`` (default: nominal) and whose shape matches its template, or — for a
    partly occluded sprite — of ``visible``, its ground-truth visible mask, with few pixels of its colours strewn
    elsewhere (``MAX_STRAY``; pixels that also match one of the ``others`` colours, the clip's other sprites, are
    theirs, and so are pixels where the clean ``scene`` plate itself has the colour, as a tinted speckled field
    can); a sprite other than a circle must also match its silhouette better than a disc (``own_and_disc_iou``;
    ``reject_discs=False`` drops that test, to show what it changes).
    Returns the region's centroid, area, IoU, stray share and mask (``region``), or None."""
    from scipy import ndimage

    size = sprite.size if size is None else size
    shapes = [sprite_template(sprite, size)]
    if visible is not None and visible.sum() >= 4:
        shapes.append(_crop(visible))
    least_solidity = {id(shape): MIN_SOLIDITY * solidity(shape) for shape in shapes}
    coloured = colour_mask(frame, sprite.colour)
    labels, count = ndimage.label(coloured)
    if not count:
        return None
    own = coloured.copy()  # what may count as stray: not pixels of a neighbouring colour (yellow/orange, pink/purple)
    for colour in others:
        own &= ~colour_mask(frame, colour)
    if scene is not None:
        own &= ~ndimage.binary_dilation(colour_mask(scene, sprite.colour), iterations=STRAY_MARGIN)
    largest = np.argsort(np.bincount(labels.ravel())[1:])[::-1][:4] + 1  # a sprite is never a speck
    # one region, or a sprite cut into pieces by another in front of it
    regions = [labels == index for index in largest] + [np.isin(labels, largest[:n]) for n in (2, 3, 4)
                                                         if n <= len(largest)]
    best = None
    for region, shape in ((region, shape) for region in regions for shape in shapes):
        area = int(region.sum())
        if not AREA_BAND[0] <= area / shape.sum() <= AREA_BAND[1]:
            continue
        iou = shape_iou(region, shape)
        if iou < MIN_SHAPE_IOU or (best is not None and iou <= best["iou"]):
            continue
        stray = (own & ~ndimage.binary_dilation(region, iterations=STRAY_MARGIN)).sum() / shape.sum()
        if stray > MAX_STRAY or solidity(region) < least_solidity[id(shape)]:
            continue
        if reject_discs and sprite.shape != "circle":
            own_iou, disc_iou = own_and_disc_iou(region, sprite, size, visible)
            if own_iou <= disc_iou:
                continue  # a blob of the right colour and size, not the sprite's shape
        ys, xs = np.nonzero(region)
        best = {"centroid": (float(xs.mean()), float(ys.mean())), "area": area, "iou": iou, "stray": float(stray),
                "region": region}
    return best


def sprites_found(video: np.ndarray, clip: Clip, frame: int = -1, truth_frame: int | None = None,
                  reject_discs: bool = True) -> list[dict | None]:
    """Each of ``clip``'s sprites found as an object in ``video[frame]``, measured against its ground truth in the
    clip's frame ``truth_frame`` (default: the same index; the last frame for ``frame=-1``)."""
    t = (len(clip.frames) - 1 if frame == -1 else frame) if truth_frame is None else truth_frame
    colours, plate = [s.colour for s in clip.sprites], np.asarray(clip.background)
    return [find_sprite(video[frame], s, sprite_sizes(s, len(clip.frames))[t], clip.masks[t] == k + 1,
                        tuple(c for c in colours if c != s.colour), plate, reject_discs)
            for k, s in enumerate(clip.sprites)]


def sprites_kept(video: np.ndarray, clip: Clip) -> bool:
    """Is every first-frame sprite still an object in the last frame (shape and size, not colour alone)?"""
    return all(found is not None for found in sprites_found(video, clip))


def sprite_motions(video: np.ndarray, clip: Clip) -> list[dict]:
    """Per sprite, from its object in the first frame to its object in the last: ``moved`` (shifted at least
    ``MIN_MOVE_PIXELS`` or resized by ``MIN_RESIZE``, as every SpriteWorld motion does) and, for drifting sprites,
    ``direction_ok`` (the shift points the caption's way; None otherwise). A sprite not found in both is not moved."""
    motions = []
    for sprite, first, last in zip(clip.sprites, sprites_found(video, clip, 0), sprites_found(video, clip)):
        if first is None or last is None:
            motions.append({"moved": False, "direction_ok": None if sprite.motion not in DIRECTIONS else False})
            continue
        shift = np.subtract(last["centroid"], first["centroid"])
        resize = max(last["area"], first["area"]) / max(min(last["area"], first["area"]), 1)
        direction = DIRECTIONS.get(sprite.motion)
        motions.append({"moved": bool(np.hypot(*shift) >= MIN_MOVE_PIXELS or resize >= MIN_RESIZE),
                        "direction_ok": None if direction is None else bool(np.dot(shift, direction) > 1.0)})
    return motions


def blurred(video: np.ndarray, sigma: float) -> np.ndarray:
    """``video`` (T, H, W, 3) uint8 with each frame blurred by a Gaussian of ``sigma`` pixels: a control for the
    detector's other side, that a mildly lossy decoder still keeps shapes."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(video.astype(np.float32), (0, sigma, sigma, 0))
    return np.round(smooth).clip(0, 255).astype(np.uint8)


def melt_sprites(clip: Clip, seed: int = 0, reach: int = 6) -> np.ndarray:
    """``clip`` with every sprite in every frame melted: replaced by a lumpy blob of its mean colour with its area
    and centre (a smoothed random field within ``reach`` pixels of its mask), fragments included, texture gone —
    what a model that keeps colours and loses objects draws. A control the object detector must reject."""
    from scipy import ndimage

    if clip.cut_frame is not None:
        raise ValueError(f"melt_sprites: clip {clip.seed} cuts to a second scene, whose plate is not kept; "
                         "use a clip generated with cut=False")
    rng, plate = np.random.default_rng(seed), np.asarray(clip.background)
    video = clip.frames.copy()
    for frame, mask in zip(video, clip.masks):
        for k in range(1, int(mask.max()) + 1):
            sprite = mask == k
            if sprite.sum() < 4:
                continue
            colour = frame[sprite].mean(0)
            frame[sprite] = plate[sprite]
            lumps = ndimage.gaussian_filter(rng.normal(size=sprite.shape), 3)
            field = ndimage.gaussian_filter(sprite.astype(float), 3) + 0.4 * lumps / lumps.std()
            field[~ndimage.binary_dilation(sprite, iterations=reach)] = -np.inf
            frame[field >= np.sort(field.ravel())[-int(sprite.sum())]] = colour.round().astype(np.uint8)
    return video


def sprites_as_discs(clip: Clip) -> np.ndarray:
    """``clip`` with every sprite replaced, in every frame, by a disc of its colour and visible area at its centre
    (sprites cleared to the clean plate first, larger discs painted behind): a round blob of the right colour, size
    and motion. A control the object detector must reject for every sprite that is not a circle."""
    from scipy import ndimage

    if clip.cut_frame is not None:
        raise ValueError(f"sprites_as_discs: clip {clip.seed} cuts to a second scene, whose plate is not kept; "
                         "use a clip generated with cut=False")
    frames, plate = clip.frames.copy(), np.asarray(clip.background)
    yy, xx = np.mgrid[:frames.shape[1], :frames.shape[2]]
    order = np.argsort([s.size for s in clip.sprites])[::-1]
    for frame, mask in zip(frames, clip.masks):
        covered = ndimage.binary_dilation(mask > 0, iterations=1)  # the anti-aliased edge too
        frame[covered] = plate[covered]
        for k in order:
            if (sprite := mask == k + 1).any():
                ys, xs = np.nonzero(sprite)
                frame[(xx - xs.mean()) ** 2 + (yy - ys.mean()) ** 2 <= sprite.sum() / np.pi] = \
                    COLOURS[clip.sprites[k].colour]
    return frames


def sharpness(video: np.ndarray) -> float:
    """Mean absolute Laplacian of the grey video: noise is several times as sharp as a real clip, blur less."""
    grey = video.astype(np.float64).mean(-1)
    laplacian = (4 * grey[..., 1:-1, 1:-1] - grey[..., :-2, 1:-1] - grey[..., 2:, 1:-1] - grey[..., 1:-1, :-2]
                 - grey[..., 1:-1, 2:])
    return float(np.abs(laplacian).mean())


def clip_fidelity(video: np.ndarray, clip: Clip) -> dict:
    """Plain image-to-video against the real clip: PSNR of frame 0 against the conditioning frame, PSNR over the
    scene no sprite ever covers (all frames), sharpness relative to the real clip's, every sprite kept as an
    object, every sprite animated (a frozen frame keeps all and animates none), drifting sprites' directions."""
    scene = np.broadcast_to(clip.masks.max(0) == 0, clip.masks.shape)
    motions = sprite_motions(video, clip)
    return {"frame0_psnr": min(psnr(clip.frames[0], video[0]), INF_DB),
            "scene_psnr": min(masked_psnr(clip.frames, video, scene), INF_DB),
            "sharpness_ratio": sharpness(video) / sharpness(clip.frames),
            "kept": sprites_kept(video, clip), "animated": all(m["moved"] for m in motions),
            "directions": [m["direction_ok"] for m in motions if m["direction_ok"] is not None]}



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
