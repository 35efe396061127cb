"""SpriteWorld: procedurally generated videos with ground truth for every pixel.

Sprites (shape × colour × texture) move over scenes (sky, stripes, noise field, meadow) by drifting, bouncing,
orbiting or scaling, occluding each other in depth order. Every clip comes with per-frame entity masks, an RGBA
cut-out of each sprite and a clean background plate — exactly the materials FFGo composites — and a caption
naming every entity, its motion and the scene. A fraction of clips cut hard to a new scene in which the same
sprites reappear elsewhere (the "innate ability" FFGo builds on). Everything is a function of the seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "ring", "diamond")
# saturated sprite colours; scenes use muted tones, so colour identifies a sprite in any frame
COLOURS = {"red": (225, 35, 35), "green": (30, 190, 60), "blue": (35, 75, 230), "yellow": (245, 210, 20),
           "purple": (150, 50, 200), "orange": (250, 130, 20), "cyan": (20, 205, 215), "pink": (245, 90, 180)}
TEXTURES = ("plain", "striped", "dotted")
SCENES = ("sky", "stripes", "noise", "meadow")
MOTIONS = ("left", "right", "up", "down", "bounce", "orbit", "grow", "shrink")
SCENE_CAPTIONS = {"sky": "a pale gradient sky", "stripes": "a striped wall", "noise": "a speckled field",
                  "meadow": "a green meadow under a pale sky"}
MOTION_CAPTIONS = {"left": "drifts left", "right": "drifts right", "up": "drifts up", "down": "drifts down",
                   "bounce": "bounces around", "orbit": "circles around", "grow": "grows", "shrink": "shrinks"}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass(frozen=True)
class WorldConfig:
    height: int = 96
    width: int = 160
    num_frames: int = 17
    min_sprites: int = 1
    max_sprites: int = 3
    sprite_size: tuple[int, int] = (22, 34)  # pixel size range of a sprite in the video
    cutout_size: int = 256  # RGBA cut-outs: FFGo never enlarges them, so 256 px lands at ~32 px in a 96x160 frame
    speed: tuple[float, float] = (1.5, 3.0)  # pixels per frame
    # share of clips with a hard scene cut. At 0.25 the base model learnt to cut from the trigger phrase alone, so
    # FFGo's LoRA had nothing left to teach (N = 0 retained 58.75% of held-out composites); at 0.10 it does not
    cut_probability: float = 0.10


@dataclass
class SpriteSpec:
    shape: str
    colour: str
    texture: str
    size: float
    motion: str
    start: tuple[float, float]  # centre, pixels
    speed: float
    phase: float  # orbit angle / bounce direction

    @property
    def name(self) -> str:
        texture = "" if self.texture == "plain" else f"{self.texture} "
        return f"{texture}{self.colour} {self.shape}"


@dataclass
class Clip:
    """A rendered clip and its ground truth; ``masks[t]`` holds 0 for scene and ``k + 1`` for sprite ``k``."""

    seed: int
    frames: np.ndarray  # (T, H, W, 3) uint8
    masks: np.ndarray  # (T, H, W) uint8
    sprites: list[SpriteSpec]
    scene: str
    caption: str
    cutouts: list[Image.Image]  # RGBA, one per sprite, in sprite order
    background: Image.Image  # the clean plate of the first scene
    cut_frame: int | None = None  # first frame of the new scene, if the clip cuts
    second_scene: str | None = None
    positions: np.ndarray = field(default=None)  # (T, n, 2) sprite centres


# --------------------------------------------------------------------------------------------- drawing
def _polygon(shape: str, c: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(c + r * math.sin(a), c - r * math.cos(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
    if shape == "diamond":
        return [(c, c - r), (c + r * 0.75, c), (c, c + r), (c - r * 0.75, c)]
    if shape == "star":
        return [(c + (r if i % 2 == 0 else r * 0.45) * math.sin(i * math.pi / 5),
                 c - (r if i % 2 == 0 else r * 0.45) * math.cos(i * math.pi / 5)) for i in range(10)]
    raise ValueError(shape)


def render_sprite(shape: str, colour: str, texture: str, size: int) -> np.ndarray:
    """An RGBA sprite, ``size × size``, drawn at 4× and shrunk for soft edges."""
    big = size * 4
    alpha = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(alpha)
    c, r = big / 2, big / 2 - 2
    if shape == "circle":
        draw.ellipse((c - r, c - r, c + r, c + r), fill=255)
    elif shape == "ring":
        draw.ellipse((c - r, c - r, c + r, c + r), fill=255)
        draw.ellipse((c - r * 0.5, c - r * 0.5, c + r * 0.5, c + r * 0.5), fill=0)
    elif shape == "square":
        draw.rectangle((c - r * 0.85, c - r * 0.85, c + r * 0.85, c + r * 0.85), fill=255)
    else:
        draw.polygon(_polygon(shape, c, r), fill=255)
    base = np.array(COLOURS[colour], np.float32)
    rgb = np.broadcast_to(base, (big, big, 3)).copy()
    dark = base * 0.55
    if texture == "striped":
        rgb[(np.arange(big) // (big // 6)) % 2 == 1] = dark
    elif texture == "dotted":
        yy, xx = np.mgrid[0:big, 0:big]
        step = big // 4
        dots = ((yy % step - step / 2) ** 2 + (xx % step - step / 2) ** 2) < (step / 5) ** 2
        rgb[dots] = dark
    rgba = np.dstack([rgb, np.asarray(alpha, np.float32)]).round().astype(np.uint8)
    return np.asarray(Image.fromarray(rgba, "RGBA").resize((size, size), Image.LANCZOS))


def render_scene(scene: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A muted background plate of the given scene type."""
    y = np.linspace(0, 1, height)[:, None, None]
    x = np.linspace(0, 1, width)[None, :, None]
    tint = rng.uniform(-20, 20, 3)
    if scene == "sky":
        top, bottom = np.array([150, 185, 225]) + tint, np.array([225, 225, 215]) + tint
        plate = (1 - y) * top + y * bottom + 0 * x
    elif scene == "stripes":
        a, b = np.array([170, 160, 150]) + tint, np.array([120, 115, 125]) + tint
        period = rng.integers(10, 22)
        vertical = rng.random() < 0.5
        index = (np.arange(width) // period % 2)[None, :, None] if vertical else \
            (np.arange(height) // period % 2)[:, None, None]
        plate = np.where(index == 0, a, b) + 0 * x + 0 * y
    elif scene == "noise":
        coarse = rng.normal(0, 1, (height // 8 + 2, width // 8 + 2))
        field = np.asarray(Image.fromarray(((coarse - coarse.min()) / np.ptp(coarse) * 255).astype(np.uint8))
                           .resize((width, height), Image.BICUBIC), np.float32)[..., None] / 255
        plate = (1 - field) * (np.array([110, 100, 85]) + tint) + field * (np.array([175, 165, 140]) + tint)
    elif scene == "meadow":
        horizon = rng.uniform(0.35, 0.55)
        sky = (1 - y) * np.array([170, 195, 220]) + y * np.array([215, 220, 215])
        ground = np.array([95, 135, 85]) + tint + 12 * np.sin(x * rng.uniform(20, 40) + y * 9)
        plate = np.where(y < horizon, sky + 0 * x, ground)
    else:
        raise ValueError(f"unknown scene {scene!r}; choose from {SCENES}")
    return np.clip(np.broadcast_to(plate, (height, width, 3)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- motion
def _trajectory(sprite: SpriteSpec, frames: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres (T, 2), sizes (T,)) of a sprite over the clip."""
    t = np.arange(frames, dtype=np.float64)
    x0, y0 = sprite.start
    sizes = sprite_sizes(sprite, frames)
    if sprite.motion in DIRECTIONS:
        dx, dy = DIRECTIONS[sprite.motion]
        centres = np.stack([x0 + dx * sprite.speed * t, y0 + dy * sprite.speed * t], 1)
    elif sprite.motion == "bounce":
        vx, vy = sprite.speed * math.cos(sprite.phase), sprite.speed * math.sin(sprite.phase)
        half = sprite.size / 2
        centres = np.stack([_reflect(x0 + vx * t, half, width - half), _reflect(y0 + vy * t, half, height - half)], 1)
    elif sprite.motion == "orbit":
        radius, omega = min(height, width) * 0.18, sprite.speed / (min(height, width) * 0.18)
        centres = np.stack([x0 + radius * np.cos(sprite.phase + omega * t),
                            y0 + radius * np.sin(sprite.phase + omega * t)], 1)
    else:  # grow / shrink: sizes only
        centres = np.tile([x0, y0], (frames, 1))
    return centres, sizes


def sprite_sizes(sprite: SpriteSpec, frames: int) -> np.ndarray:
    """The sprite's size in each of ``frames`` frames: only growing and shrinking sprites change it."""
    if sprite.motion == "grow":
        return sprite.size * np.linspace(0.7, 1.3, frames)
    if sprite.motion == "shrink":
        return sprite.size * np.linspace(1.3, 0.7, frames)
    return np.full(frames, sprite.size)


def _reflect(values: np.ndarray, low: float, high: float) -> np.ndarray:
    span = max(high - low, 1e-6)
    folded = np.mod(values - low, 2 * span)
    return low + np.where(folded > span, 2 * span - folded, folded)


def _start(motion: str, size: float, speed: float, config: WorldConfig, rng) -> tuple[float, float]:
    """A start position keeping the whole sprite in view for the whole clip."""
    h, w, travel = config.height, config.width, speed * (config.num_frames - 1)
    half = size * 0.65 + 1
    x_range, y_range = [half, w - half], [half, h - half]
    if motion in DIRECTIONS:
        dx, dy = DIRECTIONS[motion]
        if dx:
            x_range = [half, w - half - travel] if dx > 0 else [half + travel, w - half]
        if dy:
            y_range = [half, h - half - travel] if dy > 0 else [half + travel, h - half]
    elif motion == "orbit":
        margin = min(h, w) * 0.18 + half
        x_range, y_range = [margin, w - margin], [margin, h - margin]
    return float(rng.uniform(*sorted(x_range))), float(rng.uniform(*sorted(y_range)))


# --------------------------------------------------------------------------------------------- clips
def sample_sprites(rng: np.random.Generator, config: WorldConfig, count: int | None = None) -> list[SpriteSpec]:
    count = count or int(rng.integers(config.min_sprites, config.max_sprites + 1))
    colours = rng.choice(list(COLOURS), size=count, replace=False)  # distinct colours: identifiable
    sprites = []
    for colour in colours:
        motion = str(rng.choice(MOTIONS))
        size = float(rng.uniform(*config.sprite_size))
        speed = float(rng.uniform(*config.speed))
        sprites.append(SpriteSpec(str(rng.choice(SHAPES)), str(colour), str(rng.choice(TEXTURES)), size, motion,
                                  _start(motion, size, speed, config, rng), speed, float(rng.uniform(0, 2 * np.pi))))
    return sprites


def caption_for(sprites: list[SpriteSpec], scene: str, second_scene: str | None = None) -> str:
    parts = [f"{'an' if s.name[0] in 'aeiou' else 'a'} {s.name} {MOTION_CAPTIONS[s.motion]}" for s in sprites]
    entities = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    text = f"{entities} over {SCENE_CAPTIONS[scene]}"
    if second_scene:
        text += f", then the view cuts to {SCENE_CAPTIONS[second_scene]}"
    return text


def _draw(plate: np.ndarray, sprites, sprite_images, centres, sizes) -> tuple[np.ndarray, np.ndarray]:
    frame, mask = plate.astype(np.float32).copy(), np.zeros(plate.shape[:2], np.uint8)
    for k in np.argsort([s.size for s in sprites])[::-1]:  # larger behind smaller: depth order
        size = max(2, int(round(sizes[k])))
        image = np.asarray(Image.fromarray(sprite_images[k]).resize((size, size), Image.LANCZOS), np.float32)
        x0, y0 = int(round(centres[k][0] - size / 2)), int(round(centres[k][1] - size / 2))
        ys, xs = slice(max(0, y0), min(frame.shape[0], y0 + size)), slice(max(0, x0), min(frame.shape[1], x0 + size))
        patch = image[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
        if patch.size == 0:
            continue
        alpha = patch[..., 3:] / 255
        frame[ys, xs] = (1 - alpha) * frame[ys, xs] + alpha * patch[..., :3]
        mask[ys, xs][alpha[..., 0] >= 0.5] = k + 1
    return frame.round().astype(np.uint8), mask


def generate_clip(seed: int, config: WorldConfig = WorldConfig(), *, cut: bool | None = None,
                  num_sprites: int | None = None) -> Clip:
    """Render the clip of ``seed``. ``cut`` forces a scene cut on or off (default: ``cut_probability``)."""
    rng = np.random.default_rng(seed)
    sprites = sample_sprites(rng, config, num_sprites)
    scene = str(rng.choice(SCENES))
    cut_frame, second = None, None
    if cut if cut is not None else rng.random() < config.cut_probability:
        cut_frame = int(rng.integers(config.num_frames // 3, 2 * config.num_frames // 3 + 1))
        second = str(rng.choice([s for s in SCENES if s != scene]))
    h, w, n = config.height, config.width, config.num_frames
    plate = render_scene(scene, h, w, rng)
    big = [render_sprite(s.shape, s.colour, s.texture, 96) for s in sprites]
    tracks = [_trajectory(s, n, h, w) for s in sprites]
    centres, sizes = np.stack([c for c, _ in tracks], 1), np.stack([z for _, z in tracks], 1)
    if cut_frame is not None:  # same sprites, new scene, new places, same motions from there on
        plate2 = render_scene(second, h, w, rng)
        moved = [SpriteSpec(s.shape, s.colour, s.texture, s.size, s.motion,
                            _start(s.motion, s.size, s.speed, config, rng), s.speed, s.phase) for s in sprites]
        after = [_trajectory(s, n, h, w) for s in moved]
        shift = cut_frame
        centres[cut_frame:] = np.stack([c[: n - shift] for c, _ in after], 1)
        sizes[cut_frame:] = np.stack([z[: n - shift] for _, z in after], 1)
    frames, masks = [], []
    for t in range(n):
        background = plate2 if cut_frame is not None and t >= cut_frame else plate
        frame, mask = _draw(background, sprites, big, centres[t], sizes[t])
        frames.append(frame)
        masks.append(mask)
    cutouts = [Image.fromarray(render_sprite(s.shape, s.colour, s.texture, config.cutout_size), "RGBA")
               for s in sprites]
    return Clip(seed, np.stack(frames), np.stack(masks), sprites, scene, caption_for(sprites, scene, second),
                cutouts, Image.fromarray(plate), cut_frame, second, centres)
