"""Sphinx configuration of the optax-lcam documentation.

`make docs` builds it (warnings are errors): pages in MyST Markdown, the API
reference from the docstrings (autodoc, autosummary, napoleon), code cells and
the quickstart notebook executed at build time (myst-nb), the docstrings'
examples run by the doctest builder, the completeness checks of
`_ext/completeness.py`, and the narrowed summary tables of
`_ext/summary_columns.py`. It needs no network: optax, JAX and Flax names
link to their sites through the small inventories committed in
`_inventories/`, and the maths is rendered by the MathJax that Debian's
`libjs-mathjax` installs, copied into the site (the MathJax CDN only where
it is missing).
"""

import os
from pathlib import Path
import shutil
import sys

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# The package, and the harness the executed pages import, from this checkout.
# The kernels that execute the pages inherit PYTHONPATH, as pytest's
# `pythonpath = ["."]` does for the tests.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                   if p])

project = "optax-lcam"
author = "the optax-lcam authors"
copyright = "2026, the optax-lcam authors"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "completeness",
    "summary_columns",
]

exclude_patterns = ["_build", "_inventories", "README.md",
                    "**.ipynb_checkpoints"]
default_role = "py:obj"  # `name` in a docstring links to its entry
html_theme = "furo"
html_title = "optax-lcam"

# The API reference: Google-style docstrings.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
# jax.typing.ArrayLike would print as a union of ten types in every signature;
# the docstrings say what each argument takes.
autodoc_typehints = "none"
autosummary_generate = False
# The attributes' types are written in the docstrings ("name (jax.Array): ..."),
# not read from the annotations, which print the private modules that define
# them (jax.jaxlib._jax.Array, optax_lcam._phase.LossPhaseState).
napoleon_attr_annotations = False

# Links to optax, JAX and Flax. Each inventory lists only the names these pages
# and docstrings refer to, with their addresses on the projects' sites; it is
# committed (`_inventories/NAME.txt`, compressed into `NAME.inv` by
# `sphobjinv convert zlib NAME.txt NAME.inv`), so the build reads no network.
INVENTORIES = DOCS / "_inventories"
intersphinx_mapping = {
    "optax": ("https://optax.readthedocs.io/en/latest/",
              str(INVENTORIES / "optax.inv")),
    "jax": ("https://docs.jax.dev/en/latest/", str(INVENTORIES / "jax.inv")),
    "flax": ("https://flax.readthedocs.io/en/latest/",
             str(INVENTORIES / "flax.inv")),
}

# Maths: MathJax 2 from Debian's libjs-mathjax, copied into the site's
# _static/mathjax (about 1.7 MB of its 54), so that the pages render their
# maths offline. Without the package (apt-get install libjs-mathjax), the
# pages load MathJax from its CDN, Sphinx's default.
MATHJAX_DEBIAN = Path("/usr/share/javascript/mathjax")
# What the TeX-AMS_CHTML configuration loads: TeX in, CommonHTML out.
MATHJAX_FILES = ["MathJax.js", "config/TeX-AMS_CHTML.js", "extensions",
                 "jax/input/TeX", "jax/output/CommonHTML", "jax/element",
                 "fonts/HTML-CSS/TeX/woff"]
if (MATHJAX_DEBIAN / "MathJax.js").is_file():
  mathjax_path = "mathjax/MathJax.js"  # relative to _static
  mathjax2_config = {
      "config": ["TeX-AMS_CHTML.js"],
      "showMathMenu": False,
      # MyST marks its pages to be ignored but for these classes.
      "tex2jax": {"processClass": "tex2jax_process|mathjax_process|math|"
                                  "output_area"},
  }


def copy_mathjax(app, exception):
  """Copies the MathJax files the pages load into the built site."""
  if (exception is not None or app.builder.format != "html"
      or not app.config.mathjax_path.startswith("mathjax/")):
    return
  target = Path(app.outdir) / "_static" / "mathjax"
  for name in MATHJAX_FILES:
    source = MATHJAX_DEBIAN / name
    if source.is_dir():
      shutil.copytree(source, target / name, dirs_exist_ok=True)
    else:
      (target / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(source, target / name)


def setup(app):
  app.connect("build-finished", copy_mathjax)

# MyST: $...$ maths, definition lists, heading anchors for links between pages.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Every executed page and the notebook run in a fresh kernel on every build
# (make docs passes -E); an error in a cell fails the build.
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 600
nb_execution_show_tb = True
nb_merge_streams = True

# _ext/completeness.py: every name of these modules' __all__ has an entry, and
# every committed study summary (relative to this folder) is included.
completeness_modules = ["optax_lcam"]
completeness_summaries = "../results/*/summary.md"
