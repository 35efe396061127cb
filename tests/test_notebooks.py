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
