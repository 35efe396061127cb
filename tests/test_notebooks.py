"""The course notebooks: paired with their jupytext .py files, and following the course conventions.
(nbval executes them in strict mode in the same `make test` run: see pyproject.toml.)"""
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
CHAPTERS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def _cells(notebook):
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_every_chapter_has_both_files_and_is_in_the_book():
    assert CHAPTERS, "no chapters found"
    assert sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")) == [p.stem for p in CHAPTERS]
    toc = (NOTEBOOKS.parent / "book" / "_toc.yml").read_text()
    assert [f"notebooks/{p.stem}" for p in CHAPTERS] == [line.split("file: ")[1] for line in toc.splitlines()
                                                           if "file: notebooks/" in line]


@pytest.mark.parametrize("script", CHAPTERS, ids=lambda p: p.stem)
def test_ipynb_and_py_have_not_drifted_apart(script):
    ipynb = script.with_suffix(".ipynb")
    assert _cells(jupytext.read(script)) == _cells(jupytext.read(ipynb)), (
        f"{ipynb.name} and {script.name} differ: run `jupytext --sync {script}` (or `make notebooks`)")


@pytest.mark.parametrize("script", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_conventions(script):
    notebook = jupytext.read(script.with_suffix(".ipynb"))
    first = notebook.cells[0].source
    assert "colab.research.google.com/github/" in first and script.stem in first, "Open in Colab badge"
    assert "**Goals.**" in first
    assert "## Exercises" in notebook.cells[-1].source
    assert any("parameters" in cell.metadata.get("tags", []) for cell in notebook.cells), "papermill parameters"
    assert "google.colab" in notebook.cells[1].source, "setup cell installs ffstudy on Colab only"
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.get("outputs") is not None for c in code)
    assert sum(bool(c.get("outputs")) for c in code) >= len(code) // 2, "committed with the outputs of a CPU run"


# What every chapter's first code cell said before colab_setup.py: an editable install into the running kernel.
OLD_COLAB_CELL = '''import os
import subprocess
import sys

if "google.colab" in sys.modules and not os.path.exists("/content/ffstudy"):
    subprocess.run(["git", "clone", "-q", "https://github.com/ffstudy/ffstudy", "/content/ffstudy"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/ffstudy[notebooks]"], check=True)
    os.chdir("/content/ffstudy/notebooks")
'''
# A Colab kernel, as far as this machine allows: a fresh interpreter whose packages are the test environment's
# (seen through a path file, as Colab's preinstalled ones) but not ffstudy, /content on sys.path and as the working
# directory, google.colab imported; the cell runs, then the chapter's imports, in the same process.
KERNEL = '''import sys, types
sys.modules["google.colab"] = types.ModuleType("google.colab")
sys.path.insert(0, {content!r})
exec(compile({cell!r}, "setup cell", "exec"))
from ffstudy import course
print("ffstudy from", course.__file__)
'''


def _colab_like(tmp_path: Path, checkout_name: str):
    """A venv that sees this environment's packages (not ffstudy) and a /content with the course checked out as
    ``checkout_name``: the clone is a copy of this working tree, so the cell skips `git clone` (no network)."""
    import os
    import shutil
    import subprocess
    import sys
    import sysconfig

    root = NOTEBOOKS.parent
    venv, content = tmp_path / "venv", tmp_path / "content"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "colab_preinstalled.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    checkout = content / checkout_name
    checkout.mkdir(parents=True)
    shutil.copytree(root / "ffstudy", checkout / "ffstudy", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "colab_setup.py"):
        shutil.copy(root / name, checkout / name)
    for name in ("data", "notebooks"):
        (checkout / name).symlink_to(root / name)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    return python, content, env


def _run_kernel(python, content, env, cell):
    import subprocess

    source = KERNEL.format(content=str(content), cell=cell.replace("/content", str(content)))
    return subprocess.run([python, "-c", source], cwd=content, env=env, capture_output=True, text=True, timeout=600)


def test_the_colab_setup_cell_imports_ffstudy_in_the_running_kernel(tmp_path):
    """Every chapter opens with the same setup cell; in a Colab-like kernel it installs the course and `from
    ffstudy import course` then works in the same process (and in a new one, through the editable install),
    while the cell the chapters had before fails there: the clone at /content/ffstudy shadowed the package."""
    import subprocess

    cells = {script.stem: jupytext.read(script).cells[1].source for script in CHAPTERS}
    assert len(set(cells.values())) == 1, "every chapter has the same setup cell"
    cell = next(iter(cells.values()))
    python, content, env = _colab_like(tmp_path / "new", "ffstudy-course")
    done = _run_kernel(python, content, env, cell)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"ffstudy from {content}/ffstudy-course/ffstudy/course.py" in done.stdout
    again = subprocess.run([python, "-c", "import ffstudy.cli; print(ffstudy.cli.data_dir())"], cwd=tmp_path,
                           env=env, capture_output=True, text=True)
    assert again.stdout.strip() == f"{content}/ffstudy-course/data", again.stderr[-2000:]

    python, content, env = _colab_like(tmp_path / "old", "ffstudy")
    old = _run_kernel(python, content, env, OLD_COLAB_CELL)
    assert old.returncode != 0 and "cannot import name 'course' from 'ffstudy' (unknown location)" in old.stderr


@pytest.mark.parametrize("script", CHAPTERS, ids=lambda p: p.stem)
def test_stored_figures_stay_legible_in_the_websites_column(script):
    """The rule: no stored figure is wider than 1,200 px, so the course website's content column (about 700 px at
    a laptop's 1,280 px window) shows it at more than half size and 10-point labels stay at least 7 px tall.
    Contact sheets are images of frames, not text, and may be taller but not wider."""
    import base64
    import io

    from PIL import Image

    notebook = jupytext.read(script.with_suffix(".ipynb"))
    widths = [Image.open(io.BytesIO(base64.b64decode(output["data"]["image/png"]))).width
              for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
              if "image/png" in output.get("data", {})]
    assert all(w <= 1200 for w in widths), f"{script.stem}: figure widths {widths}; keep figsize within 12 inches"
