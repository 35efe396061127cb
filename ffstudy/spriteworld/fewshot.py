"""SpriteWorld materials in FFGo's few-shot format: cut-outs, plate, caption and target video per example."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..data import Example, FewShotDataset
from ..io import save_image, write_json, write_video
from .world import Clip, WorldConfig, generate_clip

FEWSHOT_SEED0, HELDOUT_SEED0 = 2_000_000, 3_000_000  # pretraining uses 10_000+, its evaluation 1_000_000+


def write_clip(clip: Clip, folder: str | Path) -> dict[str, str]:
    """Write one clip's FFGo materials and ground truth into ``folder``; returns the relative file names."""
    import numpy as np

    folder = Path(folder)
    files = {"video": "video.mp4", "background": "background.png",
             "cutouts": [f"cutout_{k}.png" for k in range(len(clip.cutouts))]}
    write_video(folder / files["video"], clip.frames, fps=16)
    save_image(folder / files["background"], clip.background)
    for name, cutout in zip(files["cutouts"], clip.cutouts):
        save_image(folder / name, cutout)
    np.savez_compressed(folder / "masks.npz", masks=clip.masks)
    write_json(folder / "clip.json", {"seed": clip.seed, "caption": clip.caption, "scene": clip.scene,
                                      "cut_frame": clip.cut_frame, "sprites": [asdict(s) for s in clip.sprites]})
    return files


def write_fewshot_dataset(out: str | Path, examples: int = 20, seed0: int = FEWSHOT_SEED0,
                          world: WorldConfig = WorldConfig()) -> Path:
    """``examples`` SpriteWorld clips (no scene cuts) as an ffstudy manifest; returns the manifest path."""
    out, rows = Path(out), []
    for i in range(examples):
        clip = generate_clip(seed0 + i, world, cut=False)
        name = f"sw_{seed0 + i}"
        files = write_clip(clip, out / name)
        rows.append(Example(id=name, caption=clip.caption, video=f"{name}/{files['video']}",
                            cutouts=[f"{name}/{c}" for c in files["cutouts"]], background=f"{name}/{files['background']}",
                            masks=f"{name}/masks.npz"))
    return FewShotDataset(rows, out).save(out / "manifest.json")
