"""Few-shot FFGo datasets: a manifest of examples, the training clip exactly as FFGo builds it, checks, caching.

An *example* is the entity cut-outs and background plate (or a ready composite), a caption and a target video.
The training clip replaces the video's first ``F_c`` frames (the VAE's temporal stride, 4 for Wan) with the
composite and prefixes the caption with the trigger (``book/parity.md``, "The training data"). Clip length is
``"paper"`` (81 frames, what the paper states), ``"official"`` (21 frames, what the released training command
effectively used; ``book/parity.md``, "Training") or an explicit frame count. Clip geometry is ``"letterbox"``
(ffstudy's: the video is cover-cropped to the training size, the composite keeps its aspect ratio between white
bars) or ``"official"`` (the official code's: every frame, composite copies included, squashed to 1280×720, then
the whole clip cover-resized and centre-cropped, about 10 px per side at 768×1344). An example may also name
per-frame entity masks (an ``.npz`` whose ``masks`` array is F×H×W, 0 = no entity): ffstudy's optional
entity-weighted loss reads them; FFGo has none.

The manifest is JSON with paths relative to its own folder::

    {"version": 1, "clip_geometry": "letterbox",
     "examples": [{"id": "clip_000", "cutouts": ["c/0.png"], "background": "c/bg.png",
                   "caption": "a red star ...", "video": "v/clip_000.mp4"}]}
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .compose import Composite, compose_first_frame
from .generate import TRIGGER, fit_first_frame, with_trigger
from .io import atomic_path, load_image, read_video, save_image, write_json

CLIP_LENGTHS = {"paper": 81, "official": 21}
CLIP_GEOMETRIES = ("letterbox", "official")
OFFICIAL_FRAME_SIZE = (720, 1280)  # (height, width): the official loader squashes every frame to it first


@dataclass
class Example:
    id: str
    caption: str
    video: str
    cutouts: list[str] = field(default_factory=list)
    background: str | None = None
    composite: str | None = None  # a ready composite image, used when there are no cut-outs
    masks: str | None = None  # per-frame entity masks of the video (.npz, "masks": F x H x W), for the weighted loss


@dataclass
class TrainingClip:
    frames: np.ndarray  # (F, H, W, 3) uint8, frames 0..F_c-1 = the composite
    prompt: str
    first_frame: Composite | object


class FewShotDataset:
    """A list of :class:`Example` plus the folder their relative paths start from, and the geometry of their
    training clips (``"letterbox"`` or ``"official"``, see the module docstring)."""

    def __init__(self, examples: list[Example], root: str | Path, clip_geometry: str = "letterbox"):
        if clip_geometry not in CLIP_GEOMETRIES:
            raise ValueError(f"clip_geometry={clip_geometry!r}: use one of {CLIP_GEOMETRIES}")
        self.examples, self.root, self.clip_geometry = list(examples), Path(root), clip_geometry

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]

    def path(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else self.root / path

    @classmethod
    def load(cls, manifest: str | Path) -> "FewShotDataset":
        manifest = Path(manifest)
        if not manifest.is_file():
            raise FileNotFoundError(f"manifest not found: {manifest}")
        try:
            data = json.loads(manifest.read_text())
            examples = [Example(**e) for e in data["examples"]]
            geometry = data.get("clip_geometry", "letterbox")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{manifest} is not an ffstudy manifest ({error}); expected "
                             f'{{"version": 1, "examples": [{{"id", "caption", "video", "cutouts", "background"}}]}}'
                             ) from error
        if geometry not in CLIP_GEOMETRIES:
            raise ValueError(f"{manifest}: clip_geometry {geometry!r} is not one of {CLIP_GEOMETRIES}")
        return cls(examples, manifest.parent, geometry)

    def save(self, manifest: str | Path) -> Path:
        """Write the manifest; paths are rewritten relative to its folder, wherever that is."""
        folder = Path(manifest).resolve().parent

        def moved(relative):
            return None if relative is None else os.path.relpath(self.path(relative).resolve(), folder)

        rows = [{**asdict(e), "video": moved(e.video), "cutouts": [moved(c) for c in e.cutouts],
                 "background": moved(e.background), "composite": moved(e.composite), "masks": moved(e.masks)}
                for e in self.examples]
        return write_json(manifest, {"version": 1, "clip_geometry": self.clip_geometry, "examples": rows})

    # -- the FFGo composite and training clip
    def composite(self, example: Example, **compose_kwargs) -> Composite | object:
        if example.cutouts:
            return compose_first_frame([self.path(c) for c in example.cutouts], self.path(example.background),
                                       **compose_kwargs)
        if example.composite:
            return load_image(self.path(example.composite), argument=f"{example.id}.composite").convert("RGB")
        raise ValueError(f"example {example.id!r} has neither cut-outs nor a composite")

    def training_clip(self, example: Example, height: int, width: int, clip_length: str | int = "official",
                      replaced_frames: int = 4) -> TrainingClip:
        """Frames 0..num_frames-1 of the video at ``width × height`` with the first ``replaced_frames`` replaced
        by the composite, in the dataset's :attr:`clip_geometry`; caption with the trigger."""
        num_frames = CLIP_LENGTHS.get(clip_length, clip_length)
        if not isinstance(num_frames, int) or num_frames < replaced_frames + 1:
            raise ValueError(f"clip_length={clip_length!r}: use 'paper', 'official' or a frame count "
                             f"> {replaced_frames}")
        frames, _ = read_video(self.path(example.video))
        if len(frames) < num_frames:
            raise ValueError(f"{example.id}: {example.video} has {len(frames)} frames, the clip needs {num_frames}")
        if self.clip_geometry == "official":
            frames, first = official_clip(frames[:num_frames], self.composite(example), replaced_frames, height,
                                          width)
            return TrainingClip(frames, with_trigger(example.caption), first)
        frames = resize_cover(frames[:num_frames], height, width)
        first = fit_first_frame(self.composite(example), height, width)
        image = first.image if isinstance(first, Composite) else first
        frames[:replaced_frames] = np.asarray(image)
        return TrainingClip(frames, with_trigger(example.caption), first)

    def entity_masks(self, example: Example, height: int, width: int, clip_length: str | int = "official",
                     replaced_frames: int = 4) -> np.ndarray:
        """The example's entity masks cropped and resized exactly like :meth:`training_clip`'s frames (nearest
        neighbour), as (F, H, W) bool; the composite frames are left unmarked, since inference drops them."""
        num_frames = CLIP_LENGTHS.get(clip_length, clip_length)
        if not example.masks:
            raise ValueError(f"example {example.id!r} names no entity masks; add \"masks\": \"<file>.npz\" to its "
                             "manifest row or set entity_loss_weight: 0")
        masks = read_masks(self.path(example.masks), example.id)
        if len(masks) < num_frames:
            raise ValueError(f"{example.id}: {example.masks} has {len(masks)} frames, the clip needs {num_frames}")
        masks = (masks[:num_frames] > 0).astype(np.uint8)[..., None]
        if self.clip_geometry == "official":
            masks = official_resize(masks, height, width, nearest=True)[0]
        else:
            masks = resize_cover(masks, height, width, nearest=True)
        masks = masks[..., 0] > 0
        masks[:replaced_frames] = False
        return masks

    # -- the official FFGo / VideoX-Fun JSON
    def export_official(self, json_path: str | Path, composites_dir: str | Path) -> Path:
        """Write composites as PNGs and the VideoX-Fun list ``[{file_path, text, image_path, type}]`` with
        absolute paths. ``text`` is the caption byte for byte, the trigger prefixed only when it is missing."""
        composites_dir = Path(composites_dir)
        rows = []
        for example in self.examples:
            first = self.composite(example)
            image = first.image if isinstance(first, Composite) else first
            png = save_image(composites_dir / example.id / "combined.png", image)
            text = example.caption if TRIGGER in example.caption else f"{TRIGGER} {example.caption}"
            rows.append({"file_path": str(self.path(example.video).resolve()), "text": text,
                         "image_path": str(png.resolve()), "type": "video"})
        return write_json(json_path, rows)

    @classmethod
    def import_official(cls, json_path: str | Path, data_root: str | Path | None = None,
                        image_root: str | Path | None = None, clip_geometry: str = "official") -> "FewShotDataset":
        """Read the official list with VideoX-Fun's meaning: ``file_path`` joins ``data_root`` (absolute paths
        win; without one it is relative to the working directory, as is ``image_path``, which VideoX-Fun opens as
        given: ``image_root`` overrides that). Paths are stored absolute. Captions are kept byte for byte (the
        official ones have two spaces after the trigger). VideoX-Fun reads a row without ``type`` as an image,
        which an FFGo clip cannot be, so such rows and image rows are refused, each named. The dataset trains in
        the official clip geometry unless ``clip_geometry`` says otherwise."""
        json_path = Path(json_path)
        try:
            rows = json.loads(json_path.read_text())
            if not isinstance(rows, list):
                raise TypeError(f"the top level is a {type(rows).__name__}, not a list")
            video_root = Path(data_root) if data_root is not None else Path.cwd()
            images_root = Path(image_root) if image_root is not None else Path.cwd()
            examples, refused = [], []
            for i, row in enumerate(rows):
                if row.get("type") != "video":
                    kind = "no \"type\" (VideoX-Fun reads it as an image)" if "type" not in row \
                        else f"type {row['type']!r}"
                    refused.append(f"row {i} ({row.get('file_path')}): {kind}")
                    continue
                examples.append(Example(id=Path(row["file_path"]).stem or f"example_{i}", caption=row["text"],
                                        video=str((video_root / row["file_path"]).absolute()),
                                        composite=str((images_root / row["image_path"]).absolute())))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{json_path} is not an official FFGo JSON list of "
                             f"{{file_path, text, image_path, type}} ({error})") from error
        if refused:
            raise ValueError(f"{json_path}: FFGo trains on video rows only; add \"type\": \"video\" to rows that "
                             f"are videos and remove the images: " + "; ".join(refused))
        return cls(examples, json_path.parent, clip_geometry)


def resize_cover(frames: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    """Resize uint8 (F, H, W, C) frames to cover ``width × height`` keeping the aspect, then crop the centre
    (``nearest`` for label images such as masks)."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    scale = max(height / video.shape[2], width / video.shape[3])
    size = (max(height, round(video.shape[2] * scale)), max(width, round(video.shape[3] * scale)))
    if size != tuple(video.shape[2:]):
        video = torch.nn.functional.interpolate(video, size=size, mode="nearest-exact") if nearest else \
            torch.nn.functional.interpolate(video, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    video = video[:, :, top:top + height, left:left + width]
    return video.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy().copy()


def official_resize(frames: np.ndarray, height: int, width: int, nearest: bool = False
                    ) -> tuple[np.ndarray, tuple[float, float, int, int]]:
    """The official training geometry for uint8 (F, H, W, C) frames: squashed to 1280×720 (bilinear, like the
    loader's ``cv2.resize``; skipped at that size), then resized to cover ``width × height`` (bilinear,
    antialiased; the other side truncated to an integer, as VideoX-Fun's bucket collate does) and centre-cropped
    (offsets rounded, as torchvision's ``CenterCrop``). Returns the frames and the map ``(scale_x, scale_y, dx,
    dy)`` from input to output pixels. ``nearest`` for label images."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    squashed_h, squashed_w = OFFICIAL_FRAME_SIZE
    source_h, source_w = video.shape[2:]

    def resize(tensor, size, antialias):
        if tuple(tensor.shape[2:]) == size:
            return tensor
        if nearest:
            return torch.nn.functional.interpolate(tensor, size=size, mode="nearest-exact")
        resized = torch.nn.functional.interpolate(tensor, size=size, mode="bilinear", align_corners=False,
                                                  antialias=antialias)
        return resized.round().clamp(0, 255)

    video = resize(video, OFFICIAL_FRAME_SIZE, antialias=False)
    if height / squashed_h > width / squashed_w:
        size = (height, int(squashed_w * height / squashed_h))
    else:
        size = (int(squashed_h * width / squashed_w), width)
    video = resize(video, size, antialias=True)
    top, left = int(round((size[0] - height) / 2)), int(round((size[1] - width) / 2))
    video = video[:, :, top:top + height, left:left + width]
    out = video.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy().copy()
    return out, (size[1] / source_w, size[0] / source_h, -left, -top)


def official_clip(frames: np.ndarray, composite, replaced_frames: int, height: int, width: int
                  ) -> tuple[np.ndarray, Composite | Image.Image]:
    """The official training clip: the first ``replaced_frames`` frames replaced by the composite, then every
    frame through :func:`official_resize`. Returns the frames and the composite as it appears in them (a
    :class:`Composite` keeps its entity geometry)."""
    image = composite.image if isinstance(composite, Composite) else composite
    video, _ = official_resize(frames, height, width)
    pixels, (scale_x, scale_y, dx, dy) = official_resize(np.array(image.convert("RGB"))[None], height, width)
    video[:replaced_frames] = pixels[0]
    first = Image.fromarray(pixels[0])
    if isinstance(composite, Composite):
        labels, _ = official_resize(composite.labels[None, ..., None], height, width, nearest=True)
        first = composite.warped(first, labels[0, ..., 0], scale_x, scale_y, dx, dy)
    return video, first


def read_masks(path: Path, example_id: str) -> np.ndarray:
    """An example's (F, H, W) entity masks from the ``masks`` array of an ``.npz`` file."""
    if not path.is_file():
        raise FileNotFoundError(f"{example_id}: entity masks not found: {path}")
    try:
        with np.load(path) as data:
            masks = data["masks"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{example_id}: {path} is not an .npz with a 'masks' array of shape (frames, height, "
                         f"width) ({error})") from error
    if masks.ndim != 3:
        raise ValueError(f"{example_id}: {path} holds masks of shape {masks.shape}; expected (frames, height, width)")
    return masks


def latent_entity_mask(masks: np.ndarray, temporal: int = 4, spatial: int = 8) -> torch.Tensor:
    """(F, H, W) entity masks → (1, 1, F', H', W') 0/1 mask of the latent cells any entity touches, on a causal
    VAE's grid: latent frame 0 is pixel frame 0, latent frame i ≥ 1 covers pixel frames ``temporal``·(i-1)+1 …
    ``temporal``·i; a cell is ``spatial`` × ``spatial`` pixels."""
    entity = torch.from_numpy(np.asarray(masks) > 0).float()[None, None]
    first = entity[:, :, :1]
    rest = torch.nn.functional.pad(entity[:, :, 1:], (0, 0, 0, 0, 0, (-(entity.shape[2] - 1)) % temporal))
    pooled = [torch.nn.functional.max_pool3d(first, (1, spatial, spatial)),
              torch.nn.functional.max_pool3d(rest, (temporal, spatial, spatial))]
    return torch.cat(pooled, dim=2)


# --------------------------------------------------------------------------------------------- checks
def check_dataset(dataset: FewShotDataset, num_frames: int, height: int | None = None,
                  width: int | None = None, need_masks: bool = False) -> list[str]:
    """Every problem that would stop or spoil training, each naming the example and file; empty if none.
    ``need_masks``: the entity-weighted loss is on, so every example needs masks matching its video."""
    problems, seen = [], set()
    if not dataset.examples:
        problems.append("the manifest lists no examples: training needs at least one")
    for index, e in enumerate(dataset.examples):
        where = f"example {index} ({e.id})"
        if e.id in seen:
            problems.append(f"{where}: duplicate id {e.id!r}")
        seen.add(e.id)
        if not isinstance(e.caption, str):
            problems.append(f"{where}: caption must be a non-empty string, got {e.caption!r}")
        elif not e.caption.strip():
            problems.append(f"{where}: empty caption")
        if isinstance(e.cutouts, list):
            images = [(f"cutouts[{i}]", c) for i, c in enumerate(e.cutouts)]
            images += [("background", e.background)] if e.cutouts else [("composite", e.composite)]
        else:
            problems.append(f"{where}: cutouts must be a list of paths, got {e.cutouts!r}")
            images = []
        for name, relative in images:
            if not relative or not isinstance(relative, str):
                problems.append(f"{where}: no {name} given" if not relative else f"{where}: {name} must be a path, "
                                f"got {relative!r}")
                continue
            try:
                image = load_image(dataset.path(relative), argument=name)
            except (FileNotFoundError, ValueError) as error:
                problems.append(f"{where}: {error}")
                continue
            if name.startswith("cutouts") and "A" in image.getbands() and image.getchannel("A").getextrema()[1] < 128:
                problems.append(f"{where}: {name} {relative} has no pixel with alpha >= 128: it would be pasted "
                                "faint or not at all, with an empty entity mask")
        if not e.video or not isinstance(e.video, str):
            problems.append(f"{where}: video must be a path, got {e.video!r}")
            continue
        path = dataset.path(e.video)
        try:
            frames, _ = read_video(path)
        except (FileNotFoundError, ValueError) as error:
            problems.append(f"{where}: {error}")
            continue
        if len(frames) < num_frames:
            problems.append(f"{where}: {path} has {len(frames)} frames, training needs {num_frames}")
        if height and width and (frames.shape[1] < height or frames.shape[2] < width):
            problems.append(f"{where}: {path} is {frames.shape[2]}x{frames.shape[1]}, smaller than the training "
                            f"size {width}x{height}")
        if need_masks and not e.masks:
            problems.append(f"{where}: no entity masks given (\"masks\": \"<file>.npz\"), which "
                            f"entity_loss_weight > 0 needs")
        elif e.masks:
            try:
                masks = read_masks(dataset.path(e.masks), e.id)
            except (FileNotFoundError, ValueError) as error:
                problems.append(f"{where}: {error}")
                continue
            if masks.shape[1:] != frames.shape[1:3] or len(masks) < num_frames:
                problems.append(f"{where}: {dataset.path(e.masks)} holds masks of shape {masks.shape}; the video is "
                                f"{len(frames)}x{frames.shape[1]}x{frames.shape[2]} (frames x height x width) and "
                                f"training needs {num_frames} frames")
    return problems


# --------------------------------------------------------------------------------------------- caching
def clip_key(dataset: FewShotDataset, example: Example, settings: dict) -> str:
    """Content hash of everything an encoded clip depends on: files, caption and encoding settings."""
    if dataset.clip_geometry != "letterbox":  # only then: keys of letterbox caches made before it existed hold
        settings = {**settings, "clip_geometry": dataset.clip_geometry}
    digest = hashlib.sha256(json.dumps({**settings, "caption": example.caption}, sort_keys=True).encode())
    for relative in [example.video, *example.cutouts, example.background, example.composite]:
        if relative:
            digest.update(dataset.path(relative).read_bytes())
    return digest.hexdigest()[:32]


@torch.no_grad()
def encoder_fingerprint(pipe) -> str:
    """A short digest of the weights and configs of everything :func:`encode_clip` runs (VAE, text encoder, image
    encoder), for :func:`clip_key`: the model's name alone would let a cache outlive an update of its weights. Per
    tensor it hashes the name and float64 sums of the values and of their squares, one tensor at a time."""
    digest = hashlib.sha256()
    for name in ("vae", "text_encoder", "image_encoder"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        config = getattr(module, "config", {})
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)  # transformers' or diffusers'
        settings = {k: v for k, v in config.items() if not k.startswith("_")}  # not where it was loaded from
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        for key, tensor in module.state_dict().items():
            values = tensor.detach().double()
            digest.update(f"{name}.{key}:{float(values.sum())!r}:{float(values.square().sum())!r}".encode())
    return digest.hexdigest()[:16]


def video_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames as the (3, T, H, W) float tensor in [-1, 1] that Wan's VAE encodes."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def video_frames(video: torch.Tensor) -> np.ndarray:
    """The inverse of :func:`video_tensor`: a (3, T, H, W) tensor in [-1, 1] as (T, H, W, 3) uint8 frames."""
    return video.detach().permute(1, 2, 3, 0).add(1).mul(127.5).round().clamp(0, 255).byte().cpu().numpy()


@torch.no_grad()
def encode_clip(pipe, clip: TrainingClip, max_sequence_length: int = 512) -> dict[str, torch.Tensor]:
    """What a training step needs, computed once with the pipeline's own encoders: the VAE latent distribution
    of the clip (normalised as Wan does), the I2V condition exactly as inference builds it, and text embeddings."""
    device, vae = pipe._execution_device, pipe.vae
    f, h, w = clip.frames.shape[:3]
    video = video_tensor(clip.frames)[None]
    dist = vae.encode(video.to(device, vae.dtype)).latent_dist
    mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
    first = Image.fromarray(clip.frames[0])
    image = pipe.video_processor.preprocess(first, height=h, width=w).to(device, torch.float32)
    prepared = pipe.prepare_latents(image, 1, vae.config.z_dim, h, w, f, torch.float32, device,
                                    torch.Generator("cpu").manual_seed(0))
    prompt_embeds, _ = pipe.encode_prompt(clip.prompt, do_classifier_free_guidance=False,
                                          max_sequence_length=max_sequence_length, device=device)
    out = {"latent_mean": (dist.mean - mean) * inv_std, "latent_std": dist.std * inv_std,
           "condition": prepared[1], "prompt_embeds": prompt_embeds}
    if len(prepared) == 3:  # expand_timesteps (Wan2.2-TI2V): which latents are the clean first frame
        out["first_frame_mask"] = prepared[2]
    if pipe.image_encoder is not None and pipe.transformer.config.image_dim is not None:
        out["image_embeds"] = pipe.encode_image(first, device)
    return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}


class LatentCache:
    """Encoded clips on disk as safetensors, keyed by :func:`clip_key`, so a training step runs only the
    transformer."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def get(self, key: str, compute) -> dict[str, torch.Tensor]:
        """The cached tensors, or ``compute()``'s, saved; an unreadable entry is named and encoded again."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file, save_file

        path = self.directory / f"{key}.safetensors"
        if path.is_file():
            try:
                return load_file(str(path))
            except (SafetensorError, OSError) as error:
                print(f"warning: latent cache entry {path} cannot be read ({error}); encoding it again", flush=True)
        tensors = compute()
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
        return tensors
