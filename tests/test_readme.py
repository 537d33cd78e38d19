"""The README: short, its example runs, its results are the committed ones.

The rest of the documentation, and its examples, live in docs/ and are
checked by `make docs`.
"""

from pathlib import Path
import re

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 300


def python_blocks(text: str) -> list[str]:
  return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def markdown_tables(text: str) -> list[tuple[int, list[str], list[list[str]]]]:
  """Each Markdown table in `text`: its first line's index, header and rows."""
  tables, lines = [], []
  for index, line in enumerate(text.splitlines() + [""]):
    if line.startswith("|"):
      cells = line.strip().strip("|").split("|")
      lines.append([cell.strip() for cell in cells])
    elif lines:
      tables.append((index - len(lines), lines[0], lines[2:]))
      lines = []
  return tables


def same_cells(row: dict[str, str], summary_row: dict[str, str]) -> bool:
  """Whether each of `row`'s cells equals the summary's cell in its column.

  A README column may drop the summary's parenthesized suffix: "final test
  acc. %" is the summary's "final test acc. % (mean ± std)".
  """
  for name, value in row.items():
    cells = [cell for column, cell in summary_row.items()
             if column == name or column.startswith(name + " (")]
    if cells != [value]:
      return False
  return True


def test_readme_is_short():
  assert len(README.read_text().splitlines()) <= MAX_LINES


def test_readme_example_runs(capsys):
  blocks = python_blocks(README.read_text())
  assert len(blocks) == 1, "the README has one example; the rest is in docs/"
  assert len(blocks[0].splitlines()) <= 15
  namespace = {}
  exec(compile(blocks[0], str(README), "exec"), namespace)  # pylint: disable=exec-used
  assert "LCAMInfo(beta=" in capsys.readouterr().out
  info = namespace["optax_lcam"].lcam_info(namespace["opt_state"])
  assert int(info.step) == 30


def results_tables(section: str):
  """Each Markdown table in `section` and the last summary linked before it."""
  lines = section.splitlines()
  for start, header, rows in markdown_tables(section):
    links = re.findall(r"\]\((results/[^)]+/summary\.md)\)",
                       "\n".join(lines[:start]))
    yield (links[-1] if links else None), header, rows


def test_results_tables_are_the_committed_summaries():
  section = README.read_text().split("## Results", 1)[1].split("\n## ", 1)[0]
  tables = list(results_tables(section))
  assert len(tables) >= 2, "the README lost a results table"
  for summary_path, header, rows in tables:
    assert summary_path, f"no summary.md linked before the table {header}"
    summary_rows = [dict(zip(summary_header, row)) for _, summary_header, rows_
                    in markdown_tables((ROOT / summary_path).read_text())
                    for row in rows_]
    assert rows, header
    for row in rows:
      cells = dict(zip(header, row))
      assert any(same_cells(cells, summary_row) for summary_row in summary_rows
                ), (summary_path, cells)


def test_relative_links_point_to_files():
  links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
  local = [link for link in links if "://" not in link]
  assert any(link.startswith("docs/") for link in local)
  missing = [link for link in local if not (ROOT / link).exists()]
  assert not missing, missing
