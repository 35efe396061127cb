import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from ffstudy import viz
from ffstudy.cli import main
from ffstudy.compose import compose_first_frame
from ffstudy.generate import generate
from ffstudy.probe import FirstFrameProbe, ProbeResult


@pytest.fixture
def probed(tiny_pipe, cutout, plate):
    pipe = tiny_pipe()
    comp = compose_first_frame({"star": cutout}, plate)
    with FirstFrameProbe(pipe, comp) as probe:
        video = generate(pipe, comp, "a star", num_inference_steps=3, progress=False)
    return probe.result, video


def test_overlay_colours_tokens_by_their_argmax_entity(probed):
    result, video = probed
    overlay = viz.who_retrieves_what_overlay(result, 1, video.full, alpha=1.0)
    labels = result.who_retrieves_what(1)
    colours = viz.result_colours(result)
    assert overlay.shape == video.full.shape[1:]
    assert tuple(overlay[8, 8]) == colours[result.entity_names[labels[0, 0]]]  # token (0, 0) covers pixels 0..15
    blended = viz.who_retrieves_what_overlay(result, 1, video.full, alpha=0.0)
    assert np.array_equal(blended, video.full[viz.pixel_frame(1)])


def test_entities_are_drawn_in_their_own_colours(probed):
    result, _ = probed
    star = viz.result_colours(result)["star"]
    assert np.abs(np.array(star) - (220, 30, 40)).max() <= 10  # the cut-out's red, not a palette colour
    assert viz.result_colours(result)["background"] == (77, 175, 74)


def test_who_retrieves_what_divides_by_entity_area(probed):
    """The background covers most of the frame and collects most of any evenly spread attention, so 'most total
    mass' labels almost every token background; per token of area, a token reading the star densely is the star's."""
    result, _ = probed
    f, h, w = result.grid
    star, background = result.entity_names.index("star"), result.entity_names.index("background")
    result.entity_mass[:] = 0
    result.entity_mass[:, :, :, background] = 0.5  # spread over the background's many tokens
    result.entity_mass[:, :, 0, star] = 0.2  # token 0 reads the small star densely
    assert result.who_retrieves_what(1, per="mass")[0, 0] == background
    assert result.who_retrieves_what(1)[0, 0] == star
    assert (result.who_retrieves_what(1).ravel()[1:] == background).all()
    with pytest.raises(ValueError, match="per='volume'"):
        result.who_retrieves_what(1, per="volume")


def test_reverse_maps_share_one_colour_scale(probed):
    result, video = probed
    figure = viz.plot_reverse_maps(result, video.first_frame)
    heat = [image for ax in figure.axes for image in ax.get_images()[1:]]
    assert len({image.get_clim() for image in heat}) == 1 and len(heat) == result.num_frames - 1
    assert sum(ax.get_label() == "<colorbar>" for ax in figure.axes) == 1


def test_animation_has_one_frame_per_pixel_frame_after_the_first(probed):
    result, video = probed
    frames = viz.who_retrieves_what_animation(result, video.full)
    assert frames.shape == (len(video.full) - 1, *video.full.shape[1:]) and frames.dtype == np.uint8


def test_figures_render(probed):
    result, video = probed
    for figure in (viz.plot_retrieval_overview(result), viz.plot_who_retrieves_what(result, video.full),
                   viz.plot_reverse_maps(result, video.first_frame)):
        assert len(figure.axes) >= 2
    ax = viz.draw_entity_boxes(video.first_frame)
    assert [t.get_text() for t in ax.texts] == ["star", "background"]
    assert viz.entity_colours(["a", "b", "background", "white"])["background"] == (77, 175, 74)


def test_cli_probe_writes_result_and_figures(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["probe", "--model", "tiny-wan2.2-i2v", "-f", "data/references/red_star.png", "-b", "data/backgrounds/meadow.png",
                 "-p", "a star", "--steps", "3", "--probe-steps", "0,2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "probed 4 records" in printed and "object_1" in printed
    for name in ("retrieval_curves.png", "who_retrieves_what.png", "reverse_maps.png", "who_retrieves_what.mp4",
                 "video.mp4", "video_with_transition.mp4"):
        assert (out / name).stat().st_size > 0, name
    result = ProbeResult.load(out / "probe")
    assert {r["step"] for r in result.records} == {0, 2} and result.text_mass is not None


def test_offset_attention_has_one_scale_and_needs_raw_attention(probed, tiny_pipe, cutout, plate):
    result, _ = probed
    with pytest.raises(ValueError, match="keep_attention=True"):
        viz.plot_offset_attention(result, 1)
    pipe = tiny_pipe()
    comp = compose_first_frame({"star": cutout}, plate)
    with FirstFrameProbe(pipe, comp, keep_attention=True, steps=[0]) as probe:
        generate(pipe, comp, "a star", num_inference_steps=2, progress=False)
    figure = viz.plot_offset_attention(probe.result, 1)
    images = [image for ax in figure.axes for image in ax.get_images()]
    f, h, w = probe.result.grid
    assert len({image.get_clim() for image in images}) == 1 and images[0].get_array().shape == (2 * h - 1, 2 * w - 1)


def test_a_saved_sheet_keeps_a_striped_sprite_beside_noise(tmp_path):
    """Noisy rows take most of a 256-colour palette; the real clip's textures must survive on the saved sheet (with
    median cut alone seed 1,000,002's two reds merged, and its striped square looked plain)."""
    from PIL import Image

    from ffstudy.spriteworld import generate_clip

    clip = generate_clip(1_000_002, cut=False)
    rng = np.random.default_rng(0)
    rows = [("real", clip.frames)] + [("noise", rng.integers(0, 256, clip.frames.shape, dtype=np.uint8))
                                      for _ in range(8)]
    sheet = viz.contact_sheet(rows)
    viz.save_sheet(sheet, tmp_path / "sheet.png")
    saved = np.asarray(Image.open(tmp_path / "sheet.png").convert("RGB")).astype(int)
    real = slice(0, clip.frames.shape[1]), slice(150, None)  # the first row, right of its label
    error = np.abs(saved[real] - np.asarray(sheet.convert("RGB")).astype(int)[real]).max()
    assert error <= 40
