import io

import pytest
from PIL import Image

from ffstudy.cli import data_dir
from ffstudy.pickers import ReferencePicker, compose_references, preview, uploaded_files


def test_plain_function_composes_named_references():
    comp = compose_references(data_dir(), ["blue_ring", "red_star"], "meadow", layout="grid")
    assert [e.name for e in comp.objects] == ["blue_ring", "red_star"] and comp.layout == "grid"
    assert preview(comp).size == (640, 360)
    with pytest.raises(KeyError, match="'green_cat'"):
        compose_references(data_dir(), ["green_cat"], "meadow")


def test_picker_widgets_drive_the_composite():
    picker = ReferencePicker(data_dir(), cutouts=["red_star", "blue_ring"], background="meadow")
    assert [e.name for e in picker.read().objects] == ["red_star", "blue_ring"]
    first_preview = picker.preview.value
    down = picker.order.children[0].children[1]  # the first row's ↓ button
    down.click()
    assert picker.chosen == ["blue_ring", "red_star"]
    assert [e.name for e in picker.read().objects] == ["blue_ring", "red_star"]
    assert picker.toggles["red_star"].button_style == "success" and picker.toggles["striped_box"].button_style == ""
    picker.toggles["striped_box"].value = True  # clicking a thumbnail's button adds it at the bottom
    assert [e.name for e in picker.read().objects] == ["blue_ring", "red_star", "striped_box"]
    picker.layout.value = "swapped"
    assert picker.read().box("background").x0 == 0
    picker.background.value = "night_city"
    assert picker.preview.value != first_preview and "background" in picker.status.value


def test_unchoosing_every_cut_out_clears_the_composite_and_says_why():
    picker = ReferencePicker(data_dir(), cutouts=["red_star"], background="meadow")
    picker.toggles["red_star"].value = False
    assert picker.composite is None and picker.preview.value == b"" and "choose at least one" in picker.status.value
    with pytest.raises(ValueError, match="choose at least one cut-out"):
        picker.read()


def png_bytes(mode: str, colour) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (40, 30), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("ipywidgets_major", [7, 8])
def test_upload_keeps_the_selection_and_its_warnings_reach_the_output_area(ipywidgets_major):
    """A photo without transparency is uploaded: the ticked cut-outs stay chosen, the photo joins them at the
    bottom, and compose's warning, naming the uploaded file, is shown under the preview. Both FileUpload value
    formats: ipywidgets 8's tuple of dicts and ipywidgets 7's dict by file name (Colab's frontend)."""
    picker = ReferencePicker(data_dir(), cutouts=["red_star", "blue_ring"], background="meadow")
    content = png_bytes("RGB", (200, 40, 40))
    value = ({"photo.png": {"metadata": {"name": "photo.png", "type": "image/png"}, "content": content}}
             if ipywidgets_major == 7 else ({"name": "photo.png", "type": "image/png", "content": memoryview(content)},))
    picker._uploaded({"new": value})
    assert picker.chosen == ["red_star", "blue_ring", "photo"] and picker.toggles["photo"].value
    assert [e.name for e in picker.read().objects] == ["red_star", "blue_ring", "photo"]
    logged = "".join(o["text"] for o in picker.log.outputs)
    assert "warning: photo.png has no alpha channel" in logged and "photo.png" in picker.status.value


def test_an_unreadable_upload_is_named_and_the_rest_kept():
    picker = ReferencePicker(data_dir(), cutouts=["red_star"], background="meadow")
    picker._uploaded({"new": ({"name": "notes.txt", "content": b"not an image"},
                              {"name": "cat.png", "content": png_bytes("RGBA", (0, 0, 255, 255))})})
    assert "error: notes.txt: not an image" in "".join(o["text"] for o in picker.log.outputs)
    assert picker.chosen == ["red_star", "cat"]


def test_uploaded_files_reads_both_ipywidgets_formats():
    assert uploaded_files({"a.png": {"metadata": {}, "content": b"x"}}) == [("a.png", b"x")]
    assert uploaded_files(({"name": "a.png", "content": memoryview(b"x")},)) == [("a.png", b"x")]


def test_without_a_widget_frontend_the_picker_shows_its_preview():
    picker = ReferencePicker(data_dir(), cutouts=["red_star"], background="meadow")
    bundle = picker._repr_mimebundle_()
    assert bundle["image/png"] == picker.preview.value and bundle["image/png"].startswith(b"\x89PNG")
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == picker.widget.model_id
    assert bundle["text/plain"] == "ReferencePicker: red_star over meadow (ffgo layout)"
    with pytest.raises(KeyError, match="green_cat"):
        picker.select(["green_cat"])