"""An ipywidgets reference picker for FFGo composites, built from core widgets only (they render in JupyterLab,
in Colab's ipywidgets 7 frontend and in VS Code).

``ReferencePicker(folder)`` shows the cut-outs and plates in a folder (``references/*.png``, ``backgrounds/*``) as
thumbnails to click, takes uploads of your own, orders the chosen cut-outs with arrow buttons, switches plate and
layout, and previews the composite with its entity boxes; warnings and errors appear under it. ``picker.read()``
returns the current :class:`~ffstudy.compose.Composite` (image, entity boxes, masks). Without a widget frontend
(an untrusted notebook, nbconvert, a plain terminal) the picker shows its preview image instead.
:func:`compose_references` does the same from plain names, for scripts and CI.
"""
from __future__ import annotations

import io
import warnings
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


def uploaded_files(value) -> list[tuple[str, bytes]]:
    """``(file name, bytes)`` of each file in a ``FileUpload`` value: a tuple of dicts in ipywidgets 8, a dict
    ``{name: {"metadata": ..., "content": ...}}`` in ipywidgets 7 (Colab's frontend)."""
    if isinstance(value, dict):
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item["name"], bytes(item["content"])) for item in value]


def thumbnail(image: Image.Image, size: int = 96) -> bytes:
    """A square PNG thumbnail of a cut-out over a light checkerboard, so its transparency shows."""
    image = image.convert("RGBA")
    image.thumbnail((size, size))
    board = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    draw = ImageDraw.Draw(board)
    for y in range(0, size, 8):
        for x in range((y // 8) % 2 * 8, size, 16):
            draw.rectangle((x, y, x + 7, y + 7), fill=(225, 225, 225, 255))
    board.alpha_composite(image, ((size - image.width) // 2, (size - image.height) // 2))
    buffer = io.BytesIO()
    board.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


class ReferencePicker:
    """Click cut-outs, order them, choose a plate and a layout; the preview and :meth:`read` follow.

    ``picker.chosen`` lists the chosen cut-outs top to bottom; :meth:`select` sets them from code (order
    included) and :meth:`move` moves one up or down, as the arrow buttons do."""

    def __init__(self, folder: str | Path, cutouts: list[str] | None = None, background: str | None = None,
                 layout: str = "ffgo", thumbnail_size: int = 96):
        import ipywidgets as w

        self._w, self.thumbnail_size = w, thumbnail_size
        self.cutout_paths, self.background_paths = list_references(folder)
        self.uploaded: dict[str, Image.Image] = {}
        if background is not None and background not in self.background_paths:
            raise KeyError(f"background={background!r} is not in {folder}/backgrounds: {sorted(self.background_paths)}")
        self.chosen: list[str] = []
        self.composite: Composite | None = None
        self.toggles: dict[str, object] = {}
        self.gallery = w.Box(layout=w.Layout(display="flex", flex_flow="row wrap"))
        self.order = w.VBox()
        self.background = w.Dropdown(options=list(self.background_paths),
                                     value=background or next(iter(self.background_paths)), description="plate")
        self.layout = w.ToggleButtons(options=list(LAYOUTS), value=layout, description="layout")
        self.upload = w.FileUpload(accept="image/*", multiple=True, description="your cut-outs")
        self.preview = w.Image(format="png", layout=w.Layout(width="640px"))
        self.status = w.HTML()
        self.log = w.Output(layout=w.Layout(max_height="8em", overflow="auto"))
        for name, path in self.cutout_paths.items():
            self._add_card(name, Image.open(path))
        self.background.observe(self._refresh, names="value")
        self.layout.observe(self._refresh, names="value")
        self.upload.observe(self._uploaded, names="value")
        self.widget = w.VBox([w.HTML("<b>cut-outs</b> (click to choose)"), self.gallery,
                              w.HBox([w.VBox([w.HTML("<b>top → bottom</b>"), self.order]),
                                      w.VBox([self.background, self.upload, self.layout])]),
                              self.preview, self.status, self.log])
        self.select(list(self.cutout_paths)[:2] if cutouts is None else cutouts)

    # ------------------------------------------------------------------------------------------ from code
    def select(self, names: list[str]) -> None:
        """Choose exactly ``names``, top to bottom."""
        unknown = [n for n in names if n not in self.toggles]
        if unknown:
            raise KeyError(f"no cut-out named {unknown}: choose from {sorted(self.toggles)}")
        self.chosen = list(dict.fromkeys(names))
        self._sync()

    def move(self, name: str, offset: int) -> None:
        """Move a chosen cut-out ``offset`` places down (negative: up)."""
        i = self.chosen.index(name)
        j = min(max(i + offset, 0), len(self.chosen) - 1)
        self.chosen.insert(j, self.chosen.pop(i))
        self._sync()

    def read(self) -> Composite:
        """The current composite: its image, and the boxes and masks of its entities (``.entities``,
        ``.masks()``, ``.save()``)."""
        if self.composite is None:
            raise ValueError("the picker has no composite: choose at least one cut-out"
                             + (f" ({self.status.value})" if self.status.value else ""))
        return self.composite

    # ------------------------------------------------------------------------------------------ display
    def _repr_mimebundle_(self, include=None, exclude=None):
        """The widget where a frontend can show it, the preview image (and a line of text) everywhere else."""
        bundle = {"text/plain": f"ReferencePicker: {', '.join(self.chosen) or 'no cut-outs'} over "
                                f"{self.background.value} ({self.layout.value} layout)"}
        if self.preview.value:
            bundle["image/png"] = bytes(self.preview.value)
        bundle["application/vnd.jupyter.widget-view+json"] = {"version_major": 2, "version_minor": 0,
                                                              "model_id": self.widget.model_id}
        return bundle

    # ------------------------------------------------------------------------------------------ callbacks
    def _add_card(self, name: str, image: Image.Image) -> None:
        w = self._w
        toggle = w.ToggleButton(description=name, value=False, layout=w.Layout(width=f"{self.thumbnail_size + 24}px"))
        toggle.observe(lambda change, name=name: self._toggled(name, change["new"]), names="value")
        self.toggles[name] = toggle
        picture = w.Image(value=thumbnail(image, self.thumbnail_size), format="png",
                          layout=w.Layout(width=f"{self.thumbnail_size}px"))
        self.gallery.children += (w.VBox([picture, toggle], layout=w.Layout(align_items="center", margin="2px")),)

    def _toggled(self, name: str, on: bool) -> None:
        if on != (name in self.chosen):
            self.chosen = self.chosen + [name] if on else [n for n in self.chosen if n != name]
            self._sync()

    def _uploaded(self, change) -> None:
        for filename, content in uploaded_files(change["new"]):
            name = Path(filename).stem
            if name in self.cutout_paths:
                name = f"{name}_upload"
            try:
                image = Image.open(io.BytesIO(content))
                image.load()
            except (OSError, ValueError) as error:
                self._report("error", f"{filename}: not an image Pillow can read ({error}); upload a PNG with "
                                      "transparency")
                continue
            image.filename = filename  # so warnings about it name the file
            if name not in self.uploaded:
                self._add_card(name, image)
            self.uploaded[name] = image
            self.chosen = self.chosen + [name] if name not in self.chosen else self.chosen
        self._sync()

    def _sync(self) -> None:
        """Make the toggles and order buttons show ``chosen``, then recompose."""
        for name, toggle in self.toggles.items():
            if toggle.value != (name in self.chosen):
                toggle.value = name in self.chosen  # its observer sees no change to make
            toggle.button_style, toggle.icon = ("success", "check") if name in self.chosen else ("", "")
        w, rows = self._w, []
        for i, name in enumerate(self.chosen):
            up, down = w.Button(description="↑", layout=w.Layout(width="36px")), \
                w.Button(description="↓", layout=w.Layout(width="36px"))
            up.on_click(lambda _, name=name: self.move(name, -1))
            down.on_click(lambda _, name=name: self.move(name, 1))
            rows.append(w.HBox([up, down, w.Label(f"{i + 1}. {name}")]))
        self.order.children = rows
        self._refresh()

    def _report(self, kind: str, message: str) -> None:
        self.log.append_stdout(f"{kind}: {message}\n")
        colour = "#b00" if kind == "error" else "#a60"
        self.status.value = f'<span style="color:{colour}">{kind}: {message}</span>'

    def _refresh(self, change=None) -> None:
        if not self.chosen:
            self.composite, self.preview.value = None, b""
            self.status.value = "<b>choose at least one cut-out</b>: with none there is nothing to compose"
            return
        sources = {n: self.uploaded.get(n) or self.cutout_paths[n] for n in self.chosen}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                composite = compose_first_frame(sources, self.background_paths[self.background.value],
                                                layout=self.layout.value)
            except (OSError, ValueError) as error:
                self.composite, self.preview.value = None, b""
                self._report("error", str(error))
                return
        self.composite = composite
        buffer = io.BytesIO()
        preview(composite).save(buffer, format="PNG")
        self.preview.value = buffer.getvalue()
        self.status.value = " · ".join(f"{e.name}: {e.box.width}×{e.box.height} at ({e.box.x0}, {e.box.y0})"
                                       for e in composite.entities)
        for warning in caught:
            self._report("warning", str(warning.message))
