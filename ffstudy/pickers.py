"""An ipywidgets reference picker for FFGo composites, built from core widgets only (they render in Colab).

``ReferencePicker(folder)`` lists the cut-outs and plates in a folder (``references/*.png``, ``backgrounds/*``),
lets you tick cut-outs, upload your own, reorder them, pick a plate and a layout, and previews the composite with
its entity boxes. ``picker.composite`` is always the current :class:`~ffstudy.compose.Composite`.
:func:`compose_references` does the same from plain names, for scripts and CI.
"""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw

from .compose import LAYOUTS, Composite, compose_first_frame
from .viz import entity_colours

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def list_references(folder: str | Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """``({cut-out name: path}, {background name: path})`` from ``folder/references`` and ``folder/backgrounds``."""
    folder = Path(folder)

    def scan(sub):
        return {p.stem: p for p in sorted((folder / sub).glob("*")) if p.suffix.lower() in IMAGE_SUFFIXES}

    cutouts, backgrounds = scan("references"), scan("backgrounds")
    if not cutouts or not backgrounds:
        raise FileNotFoundError(f"{folder} needs images in references/ and backgrounds/ "
                                f"(found {len(cutouts)} and {len(backgrounds)})")
    return cutouts, backgrounds


def compose_references(folder: str | Path, cutouts: list[str], background: str, layout: str = "ffgo",
                       **compose_kwargs) -> Composite:
    """The picker without a UI: compose the named cut-outs (top to bottom) over the named plate."""
    available, plates = list_references(folder)
    missing = [n for n in cutouts if n not in available] + ([background] if background not in plates else [])
    if missing:
        raise KeyError(f"not in {folder}: {missing}; cut-outs are {sorted(available)}, plates {sorted(plates)}")
    return compose_first_frame({n: available[n] for n in cutouts}, plates[background], layout=layout,
                               **compose_kwargs)


def preview(composite: Composite, width: int = 640) -> Image.Image:
    """The composite with outlined, labelled entity boxes, as a PIL image."""
    scale = width / composite.image.width
    image = composite.image.resize((width, round(composite.image.height * scale)))
    draw = ImageDraw.Draw(image)
    colours = entity_colours(composite.names)
    for entity in composite.entities:
        b = entity.box
        box = [round(v * scale) for v in (b.x0, b.y0, b.x1 - 1, b.y1 - 1)]
        draw.rectangle(box, outline=colours[entity.name], width=2)
        draw.text((box[0] + 3, box[1] + 2), entity.name, fill=colours[entity.name])
    return image


class ReferencePicker:
    """Tick cut-outs, order them, choose a plate and a layout; the preview and ``.composite`` follow."""

    def __init__(self, folder: str | Path, cutouts: list[str] | None = None, background: str | None = None,
                 layout: str = "ffgo"):
        import ipywidgets as w

        self.cutout_paths, self.background_paths = list_references(folder)
        self.uploaded: dict[str, Image.Image] = {}
        chosen = cutouts or list(self.cutout_paths)[:2]
        self.cutouts = w.SelectMultiple(options=list(self.cutout_paths), value=tuple(chosen), rows=6,
                                        description="cut-outs")
        self.order = w.Text(value=", ".join(chosen), description="top→bottom",
                            layout=w.Layout(width="420px"))
        self.background = w.Dropdown(options=list(self.background_paths),
                                     value=background or next(iter(self.background_paths)), description="plate")
        self.layout = w.ToggleButtons(options=list(LAYOUTS), value=layout, description="layout")
        self.upload = w.FileUpload(accept="image/*", multiple=True, description="your cut-outs")
        self.preview = w.Image(format="png", layout=w.Layout(width="640px"))
        self.status = w.HTML()
        self.composite: Composite | None = None
        for control in (self.cutouts, self.background, self.layout):
            control.observe(self._refresh, names="value")
        self.order.observe(self._refresh, names="value")
        self.upload.observe(self._uploaded, names="value")
        self.widget = w.VBox([w.HBox([self.cutouts, w.VBox([self.background, self.upload])]), self.order,
                              self.layout, self.preview, self.status])
        self._refresh()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def _uploaded(self, change) -> None:
        for item in change["new"]:
            name = Path(item["name"]).stem
            self.uploaded[name] = Image.open(io.BytesIO(item["content"]))
        self.cutouts.options = list(self.cutout_paths) + list(self.uploaded)
        self.cutouts.value = tuple(self.cutouts.value) + tuple(self.uploaded)

    def _ordered(self) -> list[str]:
        ticked = list(self.cutouts.value)
        typed = [n.strip() for n in self.order.value.split(",") if n.strip() in ticked]
        return typed + [n for n in ticked if n not in typed]

    def _refresh(self, change=None) -> None:
        names = self._ordered()
        if change is not None and change["owner"] is self.cutouts and self.order.value != ", ".join(names):
            self.order.value = ", ".join(names)  # its observer refreshes with the new order
            return
        if not names:
            self.status.value = "<b>tick at least one cut-out</b>"
            return
        sources = {n: self.uploaded.get(n) or self.cutout_paths[n] for n in names}
        self.composite = compose_first_frame(sources, self.background_paths[self.background.value],
                                             layout=self.layout.value)
        buffer = io.BytesIO()
        preview(self.composite).save(buffer, format="PNG")
        self.preview.value = buffer.getvalue()
        self.status.value = " · ".join(f"{e.name}: {e.box.width}×{e.box.height} at ({e.box.x0}, {e.box.y0})"
                                       for e in self.composite.entities)
