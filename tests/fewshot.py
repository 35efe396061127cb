"""A small synthetic few-shot dataset for training tests: coloured shapes moving over a plain scene."""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ffstudy.data import Example, FewShotDataset
from ffstudy.io import write_video

COLOURS = [(220, 40, 40), (40, 80, 220), (240, 200, 30)]


def make_dataset(root: Path, n: int = 3, frames: int = 17, size=(64, 112), masks: bool = False) -> Path:
    """``masks``: also write each video's entity masks (masks.npz, 1 where the ball is) and name them."""
    h, w = size
    examples = []
    for i in range(n):
        colour, scene = COLOURS[i % 3], np.array([(60 + 40 * i) % 255, 160, 90], np.uint8)
        cut = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
        ImageDraw.Draw(cut).ellipse((4, 4, 36, 36), fill=colour + (255,))
        plate = np.broadcast_to(scene, (h, w, 3)).copy()
        video = np.repeat(plate[None], frames, 0)
        labels = np.zeros(video.shape[:3], np.uint8)
        for t in range(frames):
            x = 10 + 4 * t
            video[t, 20:40, x:x + 20] = colour
            labels[t, 20:40, x:x + 20] = 1
        folder = root / f"clip_{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        cut.save(folder / "cutout.png")
        Image.fromarray(plate).save(folder / "background.png")
        write_video(folder / "video.mp4", video, fps=16)
        if masks:
            np.savez_compressed(folder / "masks.npz", masks=labels)
        examples.append(Example(id=f"clip_{i:03d}", caption=f"a ball moves right over scene {i}",
                                video=f"clip_{i:03d}/video.mp4", cutouts=[f"clip_{i:03d}/cutout.png"],
                                background=f"clip_{i:03d}/background.png",
                                masks=f"clip_{i:03d}/masks.npz" if masks else None))
    return FewShotDataset(examples, root).save(root / "manifest.json")
