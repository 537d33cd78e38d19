"""Sphinx extension: the build fails when the documentation is incomplete.

Two checks run once every page has been read, and each problem is a warning,
which fails the build under ``-W`` (as `make docs` builds):

- every name in the ``__all__`` of each module of ``completeness_modules`` has
  an entry (``autofunction``, ``autoclass``, ``autodata``, ...) under its
  public name, as optax's docs build checks its own;
- every committed study summary matched by ``completeness_summaries`` (a glob
  relative to the docs folder) is included by some page, so that the results
  on the site are the committed files themselves, never retyped.

A third check runs as references are resolved: a Python reference that
nothing resolves and that names a private module or object
(``optax_lcam._phase.LossPhaseState``, ``jax.jaxlib._jax.Array``) is a
warning, since a reader cannot import or look up such a name; the docstring
should name it publicly.

The checks themselves (`undocumented_names`, `missing_summaries`,
`private_part`) are plain
functions, tested without Sphinx in ``tests/test_docs.py``.
"""

from collections.abc import Iterable
import glob
import importlib
from pathlib import Path


def undocumented_names(module_name: str, public_names: Iterable[str],
                       documented: Iterable[str]) -> list[str]:
  """The public names of a module that have no documented entry.

  Args:
    module_name: The module's import name, e.g. ``"optax_lcam"``.
    public_names: Its public names (its ``__all__``).
    documented: The full names of the documented objects, e.g.
      ``"optax_lcam.lcam"``.

  Returns:
    The public names without an entry ``module_name.NAME``, sorted.
  """
  documented = set(documented)
  return sorted(name for name in public_names
                if f"{module_name}.{name}" not in documented)


def missing_summaries(summaries: Iterable[Path],
                      included: Iterable[Path]) -> list[Path]:
  """The summary files that no page includes.

  Args:
    summaries: The committed summary files.
    included: The files the pages include.

  Returns:
    The summaries not among the included files (compared as resolved paths),
    sorted.
  """
  included = {Path(path).resolve() for path in included}
  return sorted(path for path in summaries
                if Path(path).resolve() not in included)


def private_part(name: str) -> str | None:
  """The first private component of a dotted name, or None.

  Args:
    name: A dotted name, e.g. ``"optax_lcam._phase.LossPhaseState"``.

  Returns:
    The first component that starts with one underscore (``"_phase"``), or
    None when every component is public (dunder names count as public).
  """
  for part in name.split("."):
    if part.startswith("_") and not part.startswith("__"):
      return part
  return None


def _warn_private_reference(app, env, node, contnode):
  """Warns of an unresolved Python reference to a private name."""
  del app, env, contnode  # Unused: the event's signature.
  target = node.get("reftarget", "")
  if node.get("refdomain") == "py" and private_part(target):
    from sphinx.util import logging  # pylint: disable=import-outside-toplevel
    logging.getLogger(__name__).warning(
        f"the private name {target} is rendered; name it publicly in the "
        "docstring (e.g. an attribute's type: `name (jax.Array): ...`)",
        type="completeness", location=node)
  return None


def _included_files(app, env) -> list[Path]:
  """Every file a page includes, as Sphinx recorded its dependencies."""
  src = Path(app.srcdir)
  return [src / path for deps in env.dependencies.values() for path in deps]


def _shown(app, path: Path) -> str:
  """A path relative to the repository root, for a message."""
  return str(path.resolve().relative_to(Path(app.srcdir).resolve().parent))


def _check(app, env) -> None:
  from sphinx.util import logging  # pylint: disable=import-outside-toplevel

  problems = []
  for module_name in app.config.completeness_modules:
    module = importlib.import_module(module_name)
    missing = undocumented_names(module_name, module.__all__,
                                 env.get_domain("py").objects)
    if missing:
      problems.append(
          f"{module_name} has public names without an entry in the API "
          f"reference: {', '.join(missing)}; add them to docs/api.md")
  pattern = app.config.completeness_summaries
  if pattern:
    summaries = [Path(path) for path in
                 sorted(glob.glob(str(Path(app.srcdir) / pattern)))]
    missing = missing_summaries(summaries, _included_files(app, env))
    if missing:
      problems.append(
          "study summaries that no page includes: "
          f"{', '.join(_shown(app, path) for path in missing)}"
          "; include each in docs/results.md with ```{include} "
          "../results/NAME/summary.md```")
  logger = logging.getLogger(__name__)
  for problem in problems:
    logger.warning(problem, type="completeness")


def setup(app):
  app.add_config_value("completeness_modules", [], "env")
  app.add_config_value("completeness_summaries", "", "env")
  app.connect("env-check-consistency", _check)
  # After intersphinx (priority 500), so only what nothing resolves is seen.
  app.connect("missing-reference", _warn_private_reference, priority=900)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
