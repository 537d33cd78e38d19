"""The documentation's completeness checks (docs/_ext/completeness.py).

They run inside `make docs`; here the check functions run on their own,
without Sphinx.
"""

import importlib.util
from pathlib import Path
import re

import optax_lcam

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _load_completeness():
  spec = importlib.util.spec_from_file_location(
      "completeness", DOCS / "_ext" / "completeness.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


completeness = _load_completeness()


def test_an_undocumented_public_name_is_reported():
  documented = {"pkg.lcam", "pkg.lcam_info", "other.scale_by_lcam"}
  assert completeness.undocumented_names(
      "pkg", ["lcam", "scale_by_lcam", "lcam_info"], documented) == [
          "scale_by_lcam"]


def test_fully_documented_names_pass():
  assert completeness.undocumented_names("pkg", ["a", "b"],
                                         ["pkg.a", "pkg.b", "pkg.c"]) == []


def test_a_summary_no_page_includes_is_reported(tmp_path):
  first, second = tmp_path / "a" / "summary.md", tmp_path / "b" / "summary.md"
  included = [tmp_path / "docs" / ".." / "a" / "summary.md"]
  assert completeness.missing_summaries([first, second], included) == [second]


def test_private_names_are_found_in_dotted_names():
  assert completeness.private_part("optax_lcam._phase.LossPhaseState") == (
      "_phase")
  assert completeness.private_part("jax.jaxlib._jax.Array") == "_jax"
  assert completeness.private_part("optax_lcam.LossPhaseState") is None
  assert completeness.private_part("object.__init__") is None


def test_every_public_name_has_an_entry_on_the_api_page():
  # What the Sphinx check finds in the built reference, read off the page.
  api_page = (DOCS / "api.md").read_text()
  entries = re.findall(r"^\.\. auto(?:function|class|data):: (\w+)",
                       api_page, flags=re.MULTILINE)
  documented = {f"optax_lcam.{name}" for name in entries}
  assert completeness.undocumented_names(
      "optax_lcam", optax_lcam.__all__, documented) == []
