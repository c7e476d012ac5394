"""The README's project layout names every module and package of app/, and nothing that is gone."""

from __future__ import annotations

import re

from tests.support.paths import ROOT


def _layout_paths() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Project layout", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {path.rstrip("/") for cell in first_cells for path in re.findall(r"`([^`]+)`", cell)}


def test_every_module_of_app_is_in_the_layout_table() -> None:
    """A module or package added to app/ gets its line in the table."""
    named = _layout_paths()
    modules = {
        f"app/{p.name}" for p in (ROOT / "app").iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    assert sorted(modules - named) == []


def test_every_path_in_the_layout_table_exists() -> None:
    """A path the table names is in the tree."""
    assert sorted(p for p in _layout_paths() if not (ROOT / p).exists()) == []
