"""The learner-facing pages: a short README, and no pointer to files outside the repository."""
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PAGES = ([ROOT / "README.md", *ROOT.glob("book/*.md"), *ROOT.glob("notebooks/[0-9][0-9]_*.py"),
          *ROOT.glob("data/models/*/README.md"), *ROOT.glob("benchmarks/*.md"), *ROOT.glob("recipes/*/README.md"), *ROOT.rglob("ffstudy/**/*.py"),
          *ROOT.glob("configs/**/*.yaml")])


def test_no_page_points_outside_the_repository():
    outside = re.compile(r"shared/reference|\.\./shared|ffgo-method\.md|stack-notes\.md|field-survey\.md")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in PAGES for i, line in enumerate(p.read_text().splitlines(), 1)
            if outside.search(line)]
    assert len(PAGES) > 30 and not hits, hits


def test_the_readme_is_one_page_with_the_two_commands_first():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    commands = re.findall(r"^make (\w+)", text, re.M)
    assert commands[:2] == ["run", "test"]
