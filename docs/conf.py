"""Sphinx configuration of the optax-lcam documentation.

`make docs` builds it (warnings are errors): pages in MyST Markdown, the API
reference from the docstrings (autodoc, autosummary, napoleon), code cells and
the quickstart notebook executed at build time (myst-nb), the docstrings'
examples run by the doctest builder, the completeness checks of
`_ext/completeness.py`, and the narrowed summary tables of
`_ext/summary_columns.py`.
"""

import os
from pathlib import Path
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
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "completeness",
    "summary_columns",
]

exclude_patterns = ["_build", "README.md", "**.ipynb_checkpoints"]
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
