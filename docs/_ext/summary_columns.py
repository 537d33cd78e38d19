"""Sphinx extension: a committed summary's table, narrowed to some columns.

A page shows a wide table of a study's ``summary.md`` as narrower ones::

    ```{summary-columns} ../results/lcam_confirm/summary.md
    :columns: arm, against, Welch diff., Welch 95% CI, TOST 90% CI
    ```

renders the first table of that file whose header has every named column,
with those columns alone, in the order named, and every row. The cells are
the committed file's, never retyped. The file counts as included, as by
``{include}`` (the completeness check of ``completeness.py`` sees it), and a
column the file lacks fails the build.

The table logic (`markdown_tables`, `narrowed`) is plain functions, tested
without Sphinx in ``tests/test_summary_columns.py``.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar


def markdown_tables(text: str) -> list[list[list[str]]]:
  """Each Markdown table of ``text``, as its lines split into cells (the
  header, the alignment rule, the rows)."""
  tables, table = [], []
  for line in [*text.splitlines(), ""]:
    if line.startswith("|"):
      table.append([cell.strip() for cell in line.strip().strip("|")
                    .split("|")])
    elif table:
      tables.append(table)
      table = []
  return tables


def _row(cells: Sequence[str], picks: Sequence[int]) -> str:
  return "| " + " | ".join(cells[i] for i in picks) + " |"


def narrowed(text: str, columns: Sequence[str]) -> list[str]:
  """The first table of ``text`` with every one of ``columns``, as Markdown
  lines with those columns alone, in that order, alignments kept.

  Raises:
    ValueError: no table of ``text`` has every one of ``columns``.
  """
  for header, rule, *rows in markdown_tables(text):
    if set(columns) <= set(header):
      picks = [header.index(column) for column in columns]
      return ([_row(header, picks), "|" + "|".join(rule[i] for i in picks)
               + "|"] + [_row(row, picks) for row in rows])
  raise ValueError(f"no table has every column of {list(columns)}")


def _directive():
  # Sphinx is imported here, so the functions above work without it.
  from docutils import nodes  # pylint: disable=import-outside-toplevel
  from docutils.parsers.rst import directives  # pylint: disable=import-outside-toplevel
  from docutils.statemachine import StringList  # pylint: disable=import-outside-toplevel
  from sphinx.util.docutils import SphinxDirective  # pylint: disable=import-outside-toplevel

  class SummaryColumns(SphinxDirective):
    """``{summary-columns} PATH`` with ``:columns: A, B, ...``."""
    required_arguments = 1
    option_spec: ClassVar = {"columns": directives.unchanged_required}

    def run(self):
      relative, absolute = self.env.relfn2path(self.arguments[0])
      self.env.note_dependency(relative)
      columns = [c.strip() for c in self.options["columns"].split(",")]
      try:
        lines = narrowed(Path(absolute).read_text(encoding="utf-8"), columns)
      except (OSError, ValueError) as error:
        raise self.error(f"{self.arguments[0]}: {error}") from error
      container = nodes.container()
      self.state.nested_parse(StringList(lines, source=absolute),
                              self.content_offset, container)
      return container.children

  return SummaryColumns


def setup(app):
  app.add_directive("summary-columns", _directive())
  return {"parallel_read_safe": True, "parallel_write_safe": True}
