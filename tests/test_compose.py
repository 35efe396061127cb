import numpy as np
import pytest
from PIL import Image

from ffstudy.compose import Composite, compose_first_frame

from .conftest import make_cutout


def official_ffgo(foregrounds, background, canvas=(1280, 720)):
    """The official combine_materials.py algorithm, written out step by step as the test oracle."""
    w, h = canvas
    bg = background.convert("RGB").resize((1280, 720))  # on every canvas
    bg.thumbnail((w // 2, h), Image.LANCZOS)
    out = Image.new("RGB", canvas, (255, 255, 255))
    out.paste(bg, (w // 2 + (w // 2 - bg.width) // 2, (h - bg.height) // 2))
    slot_h = h // len(foregrounds)
    for i, fg in enumerate(foregrounds):
        flat = Image.new("RGB", fg.size, (255, 255, 255))
        flat.paste(fg, mask=fg.getchannel("A"))
        flat.thumbnail((w // 2, slot_h), Image.LANCZOS)
        out.paste(flat, ((w // 2 - flat.width) // 2, i * slot_h + (slot_h - flat.height) // 2))
    return out


@pytest.mark.parametrize("canvas", [(1280, 720), (720, 720), (832, 480), (2560, 1440)])
def test_matches_official_algorithm_pixel_for_pixel(plate, canvas):
    fgs = [make_cutout(box=(10, 10, 300, 200)), make_cutout(colour=(20, 40, 200))]
    ours = compose_first_frame(fgs, plate, canvas=canvas, crop_to_alpha=False)
    assert np.array_equal(np.asarray(ours.image), np.asarray(official_ffgo(fgs, plate, canvas)))


def test_the_plate_is_squashed_to_1280x720_on_any_canvas(cutout):
    square = Image.new("RGB", (600, 600), (0, 0, 200))
    box = compose_first_frame([cutout], square, canvas=(720, 720)).box("background")
    assert (box.x0, box.y0, box.width, box.height) == (360, 258, 360, 203)  # 16:9 in the 360x720 half
    big = compose_first_frame([cutout], square, canvas=(3840, 2160)).box("background")
    assert (big.width, big.height) == (1280, 720)  # thumbnail never enlarges


def test_background_16x9_lands_640x360_at_640_180(cutout, plate):
    comp = compose_first_frame([cutout], plate)
    box = comp.box("background")
    assert (box.x0, box.y0, box.width, box.height) == (640, 180, 640, 360)
    assert comp.image.getpixel((700, 300)) == (40, 160, 60)
    assert comp.image.getpixel((700, 100)) == (255, 255, 255)


def test_background_aspect_forced_or_kept(cutout):
    plate43 = Image.new("RGB", (400, 300), (0, 0, 200))
    assert compose_first_frame([cutout], plate43).box("background").height == 360
    kept = compose_first_frame([cutout], plate43, force_background_aspect=False).box("background")
    assert (kept.x0, kept.y0, kept.width, kept.height) == (640, 120, 640, 480)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_n_equal_slots_stacked_first_on_top(n, plate):
    fgs = [make_cutout(colour=(10 * i, 0, 0)) for i in range(n)]
    comp = compose_first_frame(fgs, plate)
    slot_h = 720 // n
    for i, obj in enumerate(comp.objects):
        assert obj.name == f"object_{i + 1}"
        assert (obj.slot.y0, obj.slot.y1, obj.slot.x0, obj.slot.x1) == (i * slot_h, (i + 1) * slot_h, 0, 640)
        assert obj.slot.y0 <= obj.box.y0 and obj.box.y1 <= obj.slot.y1
        assert abs((obj.box.y0 - obj.slot.y0) - (obj.slot.y1 - obj.box.y1)) <= 1  # centred


def test_crop_to_alpha_changes_pasted_size(plate):
    fg = make_cutout(size=(384, 216), box=(100, 50, 180, 150))  # 81x101 opaque region in a 384x216 frame
    cropped = compose_first_frame([fg], plate).objects[0].box
    full = compose_first_frame([fg], plate, crop_to_alpha=False).objects[0].box
    assert (full.width, full.height) == (384, 216)  # fits the 640x720 slot: never enlarged
    assert (cropped.width, cropped.height) == (81, 101)


def test_large_cutouts_shrink_keeping_aspect(plate):
    fg = make_cutout(size=(2000, 1000), box=(0, 0, 1999, 999))
    box = compose_first_frame([fg, fg], plate).objects[0].box
    assert (box.width, box.height) == (640, 320)


def test_grid_and_swapped_layouts(cutout, plate):
    grid = compose_first_frame([cutout] * 4, plate, layout="grid")
    slots = [(o.slot.x0, o.slot.y0, o.slot.width, o.slot.height) for o in grid.objects]
    assert slots == [(0, 0, 320, 360), (320, 0, 320, 360), (0, 360, 320, 360), (320, 360, 320, 360)]
    three = compose_first_frame([cutout] * 3, plate, layout="grid")
    assert [o.slot.width for o in three.objects] == [320] * 3
    swapped = compose_first_frame([cutout], plate, layout="swapped")
    assert swapped.box("background").x0 == 0 and swapped.objects[0].slot.x0 == 640


def test_masks_partition_and_align_with_boxes_on_token_grid(plate):
    comp = compose_first_frame({"star": make_cutout(), "ring": make_cutout(colour=(0, 0, 255))}, plate)
    masks = comp.token_masks(720, 1280)  # 16-pixel tokens: the 45x80 grid of Wan2.2 at 720p
    assert list(masks) == ["star", "ring", "background", "white"]
    total = sum(masks.values())
    assert total.shape == (45, 80) and np.allclose(total, 1.0)
    bg = masks["background"]  # y in [180, 540) -> rows 11.25 .. 33.75
    assert np.all(bg[12:33, 40:] == 1) and np.all(bg[:11] == 0) and np.all(bg[:, :40] == 0)
    assert np.allclose(bg[11, 40:], 0.75) and np.allclose(bg[33, 40:], 0.75)
    for name in ("star", "ring"):
        box, mask = comp.box(name), masks[name]
        ys, xs = np.nonzero(mask)
        assert ys.min() >= box.y0 // 16 and ys.max() <= (box.y1 - 1) // 16
        assert xs.min() >= box.x0 // 16 and xs.max() <= (box.x1 - 1) // 16
        centre = np.array([(box.y0 + box.y1) / 32, (box.x0 + box.x1) / 32])
        weighted = np.array([(mask * (np.arange(45)[:, None] + 0.5)).sum(), (mask * (np.arange(80) + 0.5)).sum()])
        assert np.allclose(weighted / mask.sum(), centre, atol=0.5)
    assert comp.label_grid(45, 80)[22, 60] == comp.names.index("background")
    with pytest.raises(ValueError, match="height=100"):
        comp.token_masks(100, 1280)


def test_labels_follow_alpha(plate):
    comp = compose_first_frame([make_cutout(box=(100, 50, 180, 150))], plate)
    box = comp.objects[0].box
    inside = comp.labels[box.y0:box.y1, box.x0:box.x1]
    assert inside[inside.shape[0] // 2, inside.shape[1] // 2] == 1
    assert inside[0, 0] == 0  # transparent corner of the ellipse's box is white filler


def test_fit_letterboxes_and_moves_geometry(cutout, plate):
    comp = compose_first_frame([cutout], plate)
    fitted = comp.fit(64, 64)
    assert fitted.image.size == (64, 64)
    assert fitted.image.getpixel((32, 2)) == (255, 255, 255)  # white band above a 64x36 picture
    bg = fitted.box("background")
    assert (bg.x0, bg.y0, bg.x1, bg.y1) == (32, 9 + 14, 64, 27 + 14)  # scale 1/20, 14 px band on top
    assert np.allclose(sum(fitted.masks(4, 4).values()), 1.0)


def test_save_load_round_trip(tmp_path, cutout, plate):
    comp = compose_first_frame({"star": cutout}, plate, layout="grid")
    loaded = Composite.load(comp.save(tmp_path / "c"))
    assert loaded.entities == comp.entities and loaded.layout == "grid"
    assert np.array_equal(loaded.labels, comp.labels)
    assert np.array_equal(np.asarray(loaded.image), np.asarray(comp.image))


def test_bad_inputs_name_the_argument(tmp_path, cutout, plate):
    with pytest.raises(FileNotFoundError, match=r"foregrounds\[1\].*missing.png"):
        compose_first_frame([cutout, tmp_path / "missing.png"], plate)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"background: .*notes.png is not a readable image"):
        compose_first_frame([cutout], text)
    with pytest.raises(ValueError, match="foregrounds is empty"):
        compose_first_frame([], plate)
    with pytest.raises(ValueError, match=r"foregrounds\[0\] is fully transparent"):
        compose_first_frame([Image.new("RGBA", (10, 10), (0, 0, 0, 0))], plate)
    with pytest.raises(ValueError, match="layout='diagonal'"):
        compose_first_frame([cutout], plate, layout="diagonal")


def test_cutout_without_alpha_is_opaque_with_warning(plate, tmp_path):
    photo = Image.new("RGB", (100, 50), (0, 0, 255))
    with pytest.warns(UserWarning, match=r"foregrounds\[0\] has no alpha channel"):
        comp = compose_first_frame([photo], plate)
    box = comp.objects[0].box
    assert (box.width, box.height) == (100, 50)
    assert np.all(comp.labels[box.y0:box.y1, box.x0:box.x1] == 1)
    with pytest.warns(UserWarning, match=r"foregrounds\['photo'\] has no alpha channel"):
        compose_first_frame({"photo": photo}, plate)
    photo.save(tmp_path / "photo.jpg")
    with pytest.warns(UserWarning, match=r"^\S*photo.jpg has no alpha channel"):  # the file, not its place
        compose_first_frame({"photo": tmp_path / "photo.jpg"}, plate)
