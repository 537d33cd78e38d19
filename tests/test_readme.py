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


def table_rows(text: str) -> dict[str, list[list[str]]]:
  """The rows of the Markdown tables in `text`, listed by their first cell."""
  rows = {}
  for line in text.splitlines():
    cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
    if line.startswith("|") and not set(cells[0]) <= set("-: "):
      rows.setdefault(cells[0], []).append(cells[1:])
  return rows


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


def results_tables(section: str) -> list[tuple[str, str]]:
  """Each Markdown table in `section`, with the summary linked before it."""
  tables, summary, table = [], None, []
  for line in section.splitlines() + [""]:
    if line.startswith("|"):
      table.append(line)
      continue
    if table:
      tables.append((summary, "\n".join(table)))
      table = []
    summary = (re.findall(r"\]\((results/[^)]+/summary\.md)\)", line) or
               [summary])[-1]
  return tables


def test_results_tables_are_the_committed_summaries():
  section = README.read_text().split("## Results", 1)[1].split("\n## ", 1)[0]
  tables = results_tables(section)
  assert len(tables) >= 2, "the README lost a results table"
  for summary_path, table in tables:
    assert summary_path, f"no summary.md linked before the table:\n{table}"
    summary = table_rows((ROOT / summary_path).read_text())
    headline = table_rows(table)
    arms = [arm for arm in headline if arm != "arm"]
    assert arms, table
    for arm in arms:
      (cells,) = headline[arm]
      assert any(set(cells) <= set(row) for row in summary[arm]), (
          summary_path, arm, cells)


def test_relative_links_point_to_files():
  links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
  local = [link for link in links if "://" not in link]
  assert any(link.startswith("docs/") for link in local)
  missing = [link for link in local if not (ROOT / link).exists()]
  assert not missing, missing
