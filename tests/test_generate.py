import numpy as np
import pytest

from ffstudy.compose import compose_first_frame
from ffstudy.generate import TRIGGER, generate, size_for_aspect, with_trigger
from ffstudy.io import read_video

from .conftest import TINY_BACKBONES


@pytest.fixture
def composite(cutout, plate):
    return compose_first_frame([cutout], plate)


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_every_tiny_backbone_generates_and_drops_the_transition(name, tiny_pipe, cutout, plate):
    pipe = tiny_pipe(name)
    square = compose_first_frame([cutout], plate, canvas=(720, 720))
    video = generate(pipe, square, "a red ball over grass", num_inference_steps=4, progress=False)
    h, w = video.settings["height"], video.settings["width"]
    assert video.frames.shape == (9 - 4, h, w, 3) and video.frames.dtype == np.uint8
    assert video.transition.shape == (4, h, w, 3)
    assert w == h  # the composite's aspect, not the backbone's 16:9 default
    assert video.frames.std() > 0


def test_deterministic_for_a_seed_and_dropping_is_a_slice(tiny_pipe, composite):
    pipe = tiny_pipe()
    kwargs = dict(num_inference_steps=3, progress=False)
    a = generate(pipe, composite, "a ball", seed=7, **kwargs)
    b = generate(pipe, composite, "a ball", seed=7, **kwargs)
    c = generate(pipe, composite, "a ball", seed=8, **kwargs)
    full = generate(pipe, composite, "a ball", seed=7, drop_first_frames=0, **kwargs)
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)
    assert np.array_equal(full.frames[4:], a.frames) and np.array_equal(full.frames[:4], a.transition)


def test_trigger_added_once_and_normalised():
    assert with_trigger("a cat") == f"{TRIGGER} a cat"
    assert with_trigger(f"{TRIGGER}  a   cat") == f"{TRIGGER} a cat"
    assert with_trigger("  ad23r2  the camera view suddenly changes.\n a cat").count("ad23r2") == 1
    assert with_trigger("a cat", trigger=None) == "a cat"


def test_generate_uses_paper_defaults_and_restores_the_pipeline(tiny_pipe, composite):
    pipe = tiny_pipe()
    before = pipe.config.boundary_ratio
    video = generate(pipe, composite, f"{TRIGGER} a ball", num_inference_steps=2, boundary_ratio=0.5, progress=False)
    assert video.prompt.count("ad23r2") == 1
    s = video.settings
    assert (s["guidance_scale"], s["guidance_scale_2"], s["flow_shift"], s["seed"], s["fps"]) == (6.0, 6.0, 5.0, 42, 16)
    assert pipe.config.boundary_ratio == before == 0.9
    assert pipe.scheduler.config.flow_shift == 5.0 and pipe.scheduler.config.use_flow_sigmas


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_frames=8), r"num_frames=8 must be 4k\+1"),
    (dict(height=60, width=112), "height=60 must be a positive multiple of 16"),
    (dict(height=64, width=100), "width=100 must be a positive multiple of 16"),
    (dict(drop_first_frames=9), "drop_first_frames=9"),
])
def test_bad_sizes_raise_and_write_nothing(tiny_pipe, composite, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_pipe(), composite, "x", output_dir=tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_ti2v_needs_32_pixel_tokens(tiny_pipe, composite):
    with pytest.raises(ValueError, match="multiple of 32"):
        generate(tiny_pipe("tiny-wan2.2-ti2v"), composite, "x", height=48, width=96, progress=False)


def test_explicit_size_letterboxes_instead_of_squashing(tiny_pipe, composite):
    video = generate(tiny_pipe(), composite, "x", height=64, width=64, num_inference_steps=1, progress=False)
    first = np.asarray(video.first_frame.image)
    assert first.shape == (64, 64, 3) and np.all(first[:10] == 255)  # white band above the 16:9 canvas
    assert video.first_frame.box("background").x0 == 32


def test_saved_video_is_readable_at_16_fps(tiny_pipe, composite, tmp_path):
    video = generate(tiny_pipe(), composite, "x", num_inference_steps=2, progress=False)
    paths = video.save(tmp_path, with_transition=True)
    frames, fps = read_video(paths["video"])
    assert fps == 16 and frames.shape == video.frames.shape
    assert len(read_video(paths["video_with_transition"])[0]) == 9
    assert (tmp_path / "composite.png").is_file() and (tmp_path / "generation.json").is_file()


def test_size_for_aspect():
    assert size_for_aspect(16 / 9, 1280 * 720, 16) == (720, 1280)
    assert size_for_aspect(1.0, 64 * 112, 16) == (80, 80)
