import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub: never reach for the hub

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ffstudy.models import load_pipeline

TINY_BACKBONES = ["tiny-wan2.2-i2v", "tiny-wan2.2-ti2v", "tiny-wan2.1-i2v"]


def make_cutout(size=(384, 216), box=(100, 50, 180, 150), colour=(220, 30, 40)):
    """A full-frame RGBA cut-out with an opaque ellipse inside ``box`` and transparent surroundings."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse(box, fill=colour + (255,))
    return image


@pytest.fixture
def cutout():
    return make_cutout()


@pytest.fixture
def plate():
    return Image.fromarray(np.full((180, 320, 3), (40, 160, 60), np.uint8))


_PIPES = {}


@pytest.fixture
def tiny_pipe():
    """Session-cached tiny pipelines (building one costs seconds of imports the first time)."""
    def get(name="tiny-wan2.2-i2v"):
        if name not in _PIPES:
            _PIPES[name] = load_pipeline(name)
        return _PIPES[name]
    return get
