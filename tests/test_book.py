"""Build the course website offline and open every page in headless Chromium (Debian's package)."""
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).parents[1]
BOOK, HTML = ROOT / "book", ROOT / "book" / "_build" / "html"
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.images = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])


def build():
    shutil.rmtree(BOOK / "notebooks", ignore_errors=True)
    (BOOK / "notebooks").mkdir()
    for notebook in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        shutil.copy(notebook, BOOK / "notebooks")
    done = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(BOOK)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "build succeeded" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]


def chromium(*args, profile):
    binary = shutil.which("chromium")
    assert binary, "Debian's chromium is needed: `make chromium` (or apt-get install chromium)"
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120)


def test_book_builds_and_every_page_renders(tmp_path):
    build()
    pages = [HTML / "intro.html", HTML / "api.html"] + [HTML / "notebooks" / f"{c}.html" for c in CHAPTERS]
    for page in pages:
        assert page.is_file(), page
        parser = Links()
        parser.feed(page.read_text())
        for href in parser.links + parser.images:  # internal links and figures resolve
            url = urlparse(href)
            if url.scheme or href.startswith("#") or href.startswith("data:"):
                continue
            target = (page.parent / unquote(url.path)).resolve()
            assert target.exists(), f"{page.name}: broken link {href}"
        dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
        assert "<h1" in dom, f"{page.name} did not render"
        if page.parent.name == "notebooks":
            figures = re.findall(r"<img[^>]+src=\"[^\"]+\.png\"", dom)
            assert figures, f"{page.name}: no figures rendered"
            assert "colab.research.google.com" in dom
            launches = re.findall(r"colab\.research\.google\.com/github/[^\"'<> ]+", dom)
            assert launches and all("/blob/main/notebooks/" in url for url in launches), launches  # in the repo
            # a stored widget has no kernel here and would render blank: its still image is shown instead
            assert "vnd.jupyter.widget-view+json" not in page.read_text(), f"{page.name}: a blank widget view"
    assert "compose_first_frame" in (HTML / "api.html").read_text(), "API reference generated from docstrings"
    shot = HTML / "chapter1.png"
    shot.unlink(missing_ok=True)
    chromium(f"--screenshot={shot}", "--window-size=1280,1800", (HTML / "notebooks" / f"{CHAPTERS[0]}.html").as_uri(),
             profile=tmp_path / "profile")
    assert shot.is_file() and shot.stat().st_size > 20_000


LEGIBLE_SCALE = 0.5  # a figure shown at half its stored size keeps 10-point labels at 7 px


def figure_sizes(page: Path, profile: Path, tmp: Path) -> tuple[int, list[tuple[int, int]]]:
    """The content column's width and each output figure's (stored, shown) width when ``page`` is laid out in a
    1,280 px wide window (a laptop), measured by the browser: a wrapper page reads the chapter in an iframe."""
    wrapper = tmp / f"measure-{page.stem}.html"
    wrapper.write_text(f"""<html><body><iframe id="f" src="{page.as_uri()}" style="width:1280px;height:900px"></iframe>
<pre id="out">pending</pre><script>
document.getElementById('f').onload = function () {{
  const doc = this.contentDocument, article = doc.querySelector('article') || doc.body;
  const rows = [...doc.querySelectorAll('div.cell_output img')].map(i => i.naturalWidth + 'x' + i.clientWidth);
  document.getElementById('out').textContent = 'column ' + article.clientWidth + ' ' + rows.join(' ');
}};</script></body></html>""")
    dom = chromium("--allow-file-access-from-files", "--virtual-time-budget=5000", "--dump-dom", wrapper.as_uri(),
                   profile=profile).stdout
    found = re.search(r'id="out">column (\d+)([^<]*)<', dom)
    assert found, f"{page.name}: the browser did not measure the page"
    return int(found.group(1)), [tuple(map(int, size.split("x"))) for size in found.group(2).split()]


def test_every_chapter_figure_fits_the_column_at_a_legible_scale(tmp_path):
    """The rule, measured in headless Chromium at a laptop's 1,280 px: every figure a chapter outputs fits the
    content column, and is shown at no less than half its stored size (else its labels shrink below 7 px)."""
    if not (HTML / "notebooks" / f"{CHAPTERS[0]}.html").is_file():
        build()
    for chapter in CHAPTERS:
        column, figures = figure_sizes(HTML / "notebooks" / f"{chapter}.html", tmp_path / "profile", tmp_path)
        assert figures, f"{chapter}: no figures measured"
        for stored, shown in figures:
            assert shown <= column, f"{chapter}: a figure {shown} px wide overflows the {column} px column"
            assert shown >= stored * LEGIBLE_SCALE, (
                f"{chapter}: a {stored} px figure is shown at {shown} px, below {LEGIBLE_SCALE:.0%} of its size")
