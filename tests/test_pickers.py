import pytest

from ffstudy.cli import data_dir
from ffstudy.pickers import ReferencePicker, compose_references, preview


def test_plain_function_composes_named_references():
    comp = compose_references(data_dir(), ["blue_ring", "red_star"], "meadow", layout="grid")
    assert [e.name for e in comp.objects] == ["blue_ring", "red_star"] and comp.layout == "grid"
    assert preview(comp).size == (640, 360)
    with pytest.raises(KeyError, match="'green_cat'"):
        compose_references(data_dir(), ["green_cat"], "meadow")


def test_picker_widgets_drive_the_composite():
    picker = ReferencePicker(data_dir(), cutouts=["red_star", "blue_ring"], background="meadow")
    assert [e.name for e in picker.composite.objects] == ["red_star", "blue_ring"]
    first_preview = picker.preview.value
    picker.order.value = "blue_ring, red_star"  # reorder: top to bottom
    assert [e.name for e in picker.composite.objects] == ["blue_ring", "red_star"]
    picker.cutouts.value = ("red_star", "blue_ring", "striped_box")
    assert [e.name for e in picker.composite.objects] == ["blue_ring", "red_star", "striped_box"]
    picker.layout.value = "swapped"
    assert picker.composite.box("background").x0 == 0
    picker.background.value = "night_city"
    assert picker.preview.value != first_preview and "background" in picker.status.value
    picker.cutouts.value = ()
    assert "tick at least one" in picker.status.value
