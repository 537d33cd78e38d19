"""The results page's narrowed tables (docs/_ext/summary_columns.py).

The directive runs inside `make docs`; here its table logic runs on its own,
without Sphinx, on the committed summaries the results page narrows.
"""

import importlib.util
from pathlib import Path
import re

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _load(name):
  spec = importlib.util.spec_from_file_location(
      name, DOCS / "_ext" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


summary_columns = _load("summary_columns")

SUMMARY = """\
| arm | n | final % |
|---|---:|---:|
| a | 3 | 70.00 |

Comparisons:

| arm | against | diff. | p |
|---|---|---:|---:|
| b | a | +1.00 | 0.100 |
| c | a | -2.00 | 0.020 |
"""


def test_picks_the_first_table_with_the_columns_in_their_order():
  assert summary_columns.narrowed(SUMMARY, ["p", "arm", "diff."]) == [
      "| p | arm | diff. |", "|---:|---|---:|",
      "| 0.100 | b | +1.00 |", "| 0.020 | c | -2.00 |"]
  assert summary_columns.narrowed(SUMMARY, ["arm"])[2] == "| a |"


def test_a_column_no_table_has_is_an_error():
  with pytest.raises(ValueError, match="no table has every column"):
    summary_columns.narrowed(SUMMARY, ["arm", "Welch p"])


def test_every_narrowed_table_on_the_results_page_exists():
  # What the directive does at build time, for each use on the page.
  page = (DOCS / "results.md").read_text()
  uses = re.findall(r"```\{summary-columns\} (\S+)\n:columns: (.+)\n", page)
  assert len(uses) >= 6, "the results page lost its narrowed tables"
  for path, columns in uses:
    text = (DOCS / path).read_text()
    names = [name.strip() for name in columns.split(",")]
    lines = summary_columns.narrowed(text, names)
    assert len(lines) > 2, (path, names)
