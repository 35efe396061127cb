"""FFGo first-frame compositing: reference cut-outs and a background plate on one white canvas.

The first frame is the model's memory of *what* should appear, so we also return *where* each entity was
put: a named box per pasted cut-out and for the background, and a pixel label map from which
:meth:`Composite.masks` derives per-entity masks on any grid (the pixel grid, or a transformer's token grid).
The attention probes split first-frame attention by exactly these masks.

``layout="ffgo"`` reproduces the official ``combine_materials.py`` (``book/parity.md``, "The first frame"):
background force-resized to 1280×720 whatever the canvas (bicubic, aspect not kept), then shrunk (never
enlarged) into the right half with LANCZOS and centred; cut-outs cropped to their alpha bounding box,
flattened over white with their alpha, shrunk (never enlarged) into equal slots of height ``H // n`` stacked
on the left, first item on top.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from .io import load_image, save_image, write_json

WHITE = (255, 255, 255)
FILLER = "white"
BACKGROUND = "background"
LAYOUTS = ("ffgo", "grid", "swapped")
OFFICIAL_PLATE_SIZE = (1280, 720)  # combine_materials.py squashes every plate to this, on any canvas


@dataclass(frozen=True)
class Box:
    """Half-open pixel box ``[x0, x1) × [y0, y1)`` on the canvas."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def transformed(self, scale: float, dx: int, dy: int) -> "Box":
        return Box(*(round(v * scale) + d for v, d in ((self.x0, dx), (self.y0, dy), (self.x1, dx), (self.y1, dy))))


@dataclass(frozen=True)
class Entity:
    """One reference on the canvas: ``box`` is where its pixels were pasted, ``slot`` the space it was given."""

    name: str
    kind: str  # "object" or "background"
    box: Box
    slot: Box


class Composite:
    """A composed first frame plus its entity geometry.

    ``labels[y, x]`` is 0 on white filler and ``i + 1`` where entity ``i`` is visible (for cut-outs: where the
    alpha was at least one half), so masks derived from it partition the canvas.
    """

    def __init__(self, image: Image.Image, entities: Sequence[Entity], labels: np.ndarray, layout: str):
        if labels.shape != (image.height, image.width):
            raise ValueError(f"labels shape {labels.shape} does not match the image size {image.size}")
        self.image = image
        self.entities = tuple(entities)
        self.labels = labels
        self.layout = layout

    def __repr__(self) -> str:
        names = ", ".join(e.name for e in self.entities)
        return f"Composite({self.image.width}x{self.image.height}, layout={self.layout!r}, entities=[{names}])"

    @classmethod
    def from_labels(cls, image: Image.Image, labels: np.ndarray, names: Sequence[str],
                    background: str | None = BACKGROUND) -> "Composite":
        """Entity geometry from a segmentation: ``labels`` holds ``i + 1`` where ``names[i]`` is visible and 0
        elsewhere; the 0 pixels become the entity ``background`` (or white filler when it is None)."""
        labels = np.asarray(labels).astype(np.uint8)
        entities = []
        for i, name in enumerate(names):
            ys, xs = np.nonzero(labels == i + 1)
            box = Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else Box(0, 0, 0, 0)
            entities.append(Entity(name, "object", box, box))
        if background is not None:
            labels = np.where(labels == 0, len(names) + 1, labels).astype(np.uint8)
            full = Box(0, 0, image.width, image.height)
            entities.append(Entity(background, "background", full, full))
        return cls(image.convert("RGB"), entities, labels, "labels")

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    @property
    def names(self) -> list[str]:
        """Entity names in label order, ending with the white filler."""
        return [e.name for e in self.entities] + [FILLER]

    @property
    def objects(self) -> list[Entity]:
        return [e for e in self.entities if e.kind == "object"]

    def entity(self, name: str) -> Entity:
        for e in self.entities:
            if e.name == name:
                return e
        raise KeyError(f"no entity named {name!r}; entities are {[e.name for e in self.entities]}")

    def box(self, name: str) -> Box:
        return self.entity(name).box

    def masks(self, grid_h: int, grid_w: int) -> dict[str, np.ndarray]:
        """Per-entity coverage on a ``grid_h × grid_w`` grid: each cell holds the fraction of its canvas area
        that shows that entity, so the masks of all names (filler included) sum to 1 in every cell."""
        if grid_h < 1 or grid_w < 1:
            raise ValueError(f"grid size must be positive, got {grid_h}x{grid_w}")
        one_hot = np.stack([self.labels == i for i in range(1, len(self.entities) + 1)] + [self.labels == 0])
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(one_hot).double(), (grid_h, grid_w))
        return {name: pooled[i].numpy().astype(np.float32) for i, name in enumerate(self.names)}

    def token_masks(self, height: int, width: int, spatial_factor: int = 16) -> dict[str, np.ndarray]:
        """Masks on the token grid of a ``height × width`` video whose tokens each cover ``spatial_factor`` pixels
        per side (VAE stride × patch size: 16 for Wan2.1/Wan2.2-A14B, 32 for Wan2.2-TI2V-5B)."""
        for value, argument in ((height, "height"), (width, "width")):
            if value % spatial_factor:
                raise ValueError(f"{argument}={value} is not divisible by the token size {spatial_factor}")
        return self.masks(height // spatial_factor, width // spatial_factor)

    def label_grid(self, grid_h: int, grid_w: int) -> np.ndarray:
        """Index into :attr:`names` of the entity covering most of each cell."""
        masks = self.masks(grid_h, grid_w)
        return np.argmax(np.stack([masks[n] for n in self.names]), axis=0)

    def fit(self, height: int, width: int) -> "Composite":
        """Resize to ``width × height`` keeping the aspect ratio, padding with white; geometry follows."""
        image, scale, (dx, dy, new_w, new_h) = letterbox(self.image, height, width)
        labels = np.zeros((height, width), np.uint8)
        labels[dy:dy + new_h, dx:dx + new_w] = np.asarray(
            Image.fromarray(self.labels).resize((new_w, new_h), Image.NEAREST))
        entities = [Entity(e.name, e.kind, e.box.transformed(scale, dx, dy), e.slot.transformed(scale, dx, dy))
                    for e in self.entities]
        return Composite(image, entities, labels, self.layout)

    def warped(self, image: Image.Image, labels: np.ndarray, scale_x: float, scale_y: float, dx: int,
               dy: int) -> "Composite":
        """This composite after a resize and crop done elsewhere (the official training clip's cover crop):
        ``image`` and ``labels`` are the new pixels, and boxes map as ``x * scale_x + dx``, ``y * scale_y + dy``,
        clipped to the new canvas."""
        width, height = image.size

        def move(box: Box) -> Box:
            xs = [min(max(round(x * scale_x) + dx, 0), width) for x in (box.x0, box.x1)]
            ys = [min(max(round(y * scale_y) + dy, 0), height) for y in (box.y0, box.y1)]
            return Box(xs[0], ys[0], xs[1], ys[1])

        entities = [Entity(e.name, e.kind, move(e.box), move(e.slot)) for e in self.entities]
        return Composite(image.convert("RGB"), entities, labels, self.layout)

    def save(self, directory: str | Path) -> Path:
        """Write ``composite.png``, ``labels.png`` and ``composite.json`` (entity geometry) into ``directory``."""
        directory = Path(directory)
        save_image(directory / "composite.png", self.image)
        save_image(directory / "labels.png", Image.fromarray(self.labels))
        write_json(directory / "composite.json", {
            "layout": self.layout, "size": list(self.image.size),
            "entities": [{**asdict(e), "box": asdict(e.box), "slot": asdict(e.slot)} for e in self.entities]})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Composite":
        import json

        directory = Path(directory)
        meta_path = directory / "composite.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: pass a folder written by Composite.save")
        meta = json.loads(meta_path.read_text())
        entities = [Entity(e["name"], e["kind"], Box(**e["box"]), Box(**e["slot"])) for e in meta["entities"]]
        image = load_image(directory / "composite.png", argument="composite").convert("RGB")
        labels = np.asarray(load_image(directory / "labels.png", argument="labels"))
        return cls(image, entities, labels, meta["layout"])


def letterbox(image: Image.Image, height: int, width: int) -> tuple[Image.Image, float, tuple[int, int, int, int]]:
    """``image`` scaled to fit ``width × height`` on a white canvas, centred: (canvas, scale, where it was pasted
    as (dx, dy, new_w, new_h))."""
    scale = min(width / image.width, height / image.height)
    new_w, new_h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    dx, dy = (width - new_w) // 2, (height - new_h) // 2
    canvas = Image.new("RGB", (width, height), WHITE)
    canvas.paste(image.convert("RGB").resize((new_w, new_h), Image.LANCZOS), (dx, dy))
    return canvas, scale, (dx, dy, new_w, new_h)


def _prepare_cutout(image: Image.Image, argument: str, crop_to_alpha: bool) -> tuple[Image.Image, Image.Image]:
    """Return (RGB flattened over white, alpha) for a reference cut-out."""
    if "A" not in image.getbands() and not (image.mode == "P" and "transparency" in image.info):
        warnings.warn(f"{argument} has no alpha channel; it is treated as fully opaque", stacklevel=3)
    rgba = image.convert("RGBA")
    alpha = rgba.getchannel("A")
    bbox = alpha.getbbox()
    if bbox is None:
        raise ValueError(f"{argument} is fully transparent: there is nothing to paste")
    if alpha.getextrema()[1] < 128:  # masks take alpha >= 128 as the entity: it would be pasted faint and unmasked
        raise ValueError(f"{argument} has no pixel with alpha >= 128 (at most {alpha.getextrema()[1]}): it would be "
                         "pasted faint and get an empty entity mask; make the object opaque")
    if crop_to_alpha:
        rgba, alpha = rgba.crop(bbox), alpha.crop(bbox)
    flat = Image.new("RGB", rgba.size, WHITE)
    flat.paste(rgba, mask=alpha)
    return flat, alpha


def _source_name(source, argument: str) -> str:
    """How messages name a cut-out: its file where it has one (a path, or an image opened from or named after a
    file), else the argument that gave it."""
    file = source if isinstance(source, (str, os.PathLike)) else getattr(source, "filename", "")
    return str(file) if file else argument


def _slots(layout: str, n: int, area: Box) -> list[Box]:
    if layout == "grid":
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
    else:
        cols, rows = 1, n
    slot_w, slot_h = area.width // cols, area.height // rows
    return [Box(area.x0 + c * slot_w, area.y0 + r * slot_h, area.x0 + (c + 1) * slot_w, area.y0 + (r + 1) * slot_h)
            for r in range(rows) for c in range(cols)][:n]


def _centred(size: tuple[int, int], slot: Box) -> Box:
    w, h = size
    x0, y0 = slot.x0 + (slot.width - w) // 2, slot.y0 + (slot.height - h) // 2
    return Box(x0, y0, x0 + w, y0 + h)


def compose_first_frame(
    foregrounds: Sequence | Mapping[str, object],
    background,
    canvas: tuple[int, int] = (1280, 720),
    layout: str = "ffgo",
    crop_to_alpha: bool = True,
    force_background_aspect: bool = True,
    resample: int = Image.LANCZOS,
) -> Composite:
    """Compose an FFGo first frame.

    ``foregrounds``: RGBA cut-outs (paths, PIL images or arrays), listed top to bottom; or a mapping
    ``{name: cut-out}`` to name the entities (default names ``object_1 … object_n``). ``background``: the
    clean plate. ``canvas`` is ``(width, height)``. ``layout``: ``"ffgo"`` (objects stacked on the left,
    plate on the right), ``"grid"`` (objects in a near-square grid on the left, 2×2 for four) or
    ``"swapped"`` (objects right, plate left). ``force_background_aspect`` reproduces FFGo's forced resize
    of the plate to 1280×720 before shrinking it into its half, on any canvas (so the plate is 16:9 on a square
    canvas too, and never larger than 1280×720); turn it off to keep the plate's own aspect (it is then scaled up
    or down to fill its half, as in FFGo's hand-made test composites).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
    width, height = canvas
    if width < 2 or height < 1:
        raise ValueError(f"canvas={canvas} is too small")
    if isinstance(foregrounds, Mapping):
        names, sources = list(foregrounds.keys()), list(foregrounds.values())
    else:
        sources = list(foregrounds)
        names = [f"object_{i + 1}" for i in range(len(sources))]
    if not sources:
        raise ValueError("foregrounds is empty: give at least one reference cut-out")
    if height // len(sources) < 1:
        raise ValueError(f"{len(sources)} foregrounds do not fit a canvas {height} pixels high")
    if len(set(names)) != len(names) or {BACKGROUND, FILLER} & set(names):
        raise ValueError(f"foreground names must be unique and not {BACKGROUND!r}/{FILLER!r}: {names}")

    keys = [repr(n) for n in names] if isinstance(foregrounds, Mapping) else range(len(sources))
    cutouts = [_prepare_cutout(load_image(src, argument=f"foregrounds[{key}]"), _source_name(src, f"foregrounds[{key}]"),
                               crop_to_alpha) for key, src in zip(keys, sources)]
    plate = load_image(background, argument="background").convert("RGB")

    half = width // 2
    left, right = Box(0, 0, half, height), Box(half, 0, 2 * half, height)
    object_area, plate_area = (right, left) if layout == "swapped" else (left, right)

    image = Image.new("RGB", canvas, WHITE)
    labels = np.zeros((height, width), np.uint8)
    entities = []

    if force_background_aspect:  # official: squash to 1280x720, then shrink into the half
        plate = plate.resize(OFFICIAL_PLATE_SIZE, Image.BICUBIC)
        plate.thumbnail((plate_area.width, plate_area.height), resample)
    else:  # as in the released test composites: keep the aspect and fill the half
        scale = min(plate_area.width / plate.width, plate_area.height / plate.height)
        plate = plate.resize((max(1, round(plate.width * scale)), max(1, round(plate.height * scale))), resample)
    plate_box = _centred(plate.size, plate_area)
    image.paste(plate, (plate_box.x0, plate_box.y0))

    for i, ((flat, alpha), slot) in enumerate(zip(cutouts, _slots(layout, len(cutouts), object_area))):
        flat.thumbnail((slot.width, slot.height), resample)
        alpha = alpha.resize(flat.size, resample) if alpha.size != flat.size else alpha
        box = _centred(flat.size, slot)
        image.paste(flat, (box.x0, box.y0))
        visible = np.asarray(alpha) >= 128
        labels[box.y0:box.y1, box.x0:box.x1][visible] = i + 1
        entities.append(Entity(names[i], "object", box, slot))

    labels[plate_box.y0:plate_box.y1, plate_box.x0:plate_box.x1] = len(cutouts) + 1
    entities.append(Entity(BACKGROUND, "background", plate_box, plate_area))
    return Composite(image, entities, labels, layout)
