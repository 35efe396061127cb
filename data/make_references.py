"""Draw the demo reference cut-outs and background plates in data/ (deterministic; re-run to regenerate).

Cut-outs are full-frame RGBA with transparent surroundings and the object off-centre, like the released FFGo
materials, so crop-to-alpha matters. Run: python data/make_references.py
"""
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).parent


def star(draw, cx, cy, r_out, r_in, fill):
    points = [(cx + (r_out if i % 2 == 0 else r_in) * math.sin(i * math.pi / 5),
               cy - (r_out if i % 2 == 0 else r_in) * math.cos(i * math.pi / 5)) for i in range(10)]
    draw.polygon(points, fill=fill)


def cutouts():
    size = (384, 216)
    red_star = Image.new("RGBA", size, (0, 0, 0, 0))
    star(ImageDraw.Draw(red_star), 120, 110, 80, 34, (220, 30, 40, 255))
    blue_ring = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(blue_ring)
    draw.ellipse((200, 40, 340, 180), fill=(30, 80, 220, 255))
    draw.ellipse((240, 80, 300, 140), fill=(0, 0, 0, 0))
    striped_box = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(striped_box)
    for i, x in enumerate(range(150, 250, 10)):
        draw.rectangle((x, 60, x + 9, 170), fill=(240, 200, 20, 255) if i % 2 == 0 else (120, 60, 20, 255))
    # soft (anti-aliased) edges, as SAM or Photoshop cut-outs have
    for image in (red_star, blue_ring, striped_box):
        alpha = image.getchannel("A").filter(ImageFilter.GaussianBlur(1.2))
        image.putalpha(alpha)
    return {"red_star": red_star, "blue_ring": blue_ring, "striped_box": striped_box}


def backgrounds():
    h, w = 270, 480
    y = np.linspace(0, 1, h)[:, None, None]
    sky = (1 - y) * np.array([120, 180, 250]) + y * np.array([200, 230, 255])
    ground = np.array([60, 150, 60]) + 30 * np.sin(np.arange(w) / 9.0)[None, :, None]
    meadow = np.where(np.arange(h)[:, None, None] < h * 0.6, sky, ground)
    meadow = np.broadcast_to(meadow, (h, w, 3)).clip(0, 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    h2, w2 = 300, 400  # a 4:3 plate, to show the forced 16:9 resize
    night = np.zeros((h2, w2, 3), np.uint8)
    night[:] = (20, 20, 60)
    for x0 in range(0, w2, 40):
        top = int(rng.integers(80, 220))
        night[top:, x0:x0 + 34] = (50, 50, 70)
        windows = rng.random((h2 - top) // 12) > 0.5
        for j, lit in enumerate(windows):
            if lit:
                night[top + 6 + 12 * j: top + 12 + 12 * j, x0 + 10:x0 + 22] = (250, 220, 120)
    return {"meadow": Image.fromarray(meadow), "night_city": Image.fromarray(night)}


if __name__ == "__main__":
    for name, image in cutouts().items():
        image.save(HERE / "references" / f"{name}.png")
    for name, image in backgrounds().items():
        image.save(HERE / "backgrounds" / f"{name}.png")
