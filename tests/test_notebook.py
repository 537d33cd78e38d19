"""notebooks/lcam_quickstart.ipynb: committed without outputs, and on the site.

The notebook runs once in CI, in the documentation build: `make docs` executes
it in a kernel of the virtual environment (myst-nb), and a cell that raises
fails the build. These tests check what is cheap: that it is committed
without outputs, and that the site's table of contents lists it, so that the
docs build does execute it.
"""

from pathlib import Path
import re

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "lcam_quickstart.ipynb"
DOCS = ROOT / "docs"


def _code_cells(notebook):
  return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_committed_notebook_has_no_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  assert _code_cells(notebook)
  for cell in _code_cells(notebook):
    assert cell.outputs == [], cell.source[:80]
    assert cell.execution_count is None, cell.source[:80]


def test_docs_build_executes_the_notebook():
  page = DOCS / "notebooks" / "lcam_quickstart.ipynb"
  assert page.resolve() == NOTEBOOK.resolve(), "docs/notebooks/ links to it"
  toctrees = re.findall(r"```\{toctree\}(.*?)```",
                        (DOCS / "index.md").read_text(), flags=re.DOTALL)
  entries = {line.strip() for tree in toctrees for line in tree.splitlines()}
  assert "notebooks/lcam_quickstart" in entries
  conf = (DOCS / "conf.py").read_text()
  assert re.search(r'^nb_execution_mode = "force"$', conf, flags=re.MULTILINE)
  assert re.search(r"^nb_execution_raise_on_error = True$", conf,
                   flags=re.MULTILINE)
