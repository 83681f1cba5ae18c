"""Sphinx configuration (no network: no intersphinx)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

project = "conprediff"
author = "conprediff developers"
copyright = "2026, conprediff developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["dollarmath"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes" as fields: no duplicate entries for NamedTuple fields
autodoc_default_options = {
    "members": True,
    "show-inheritance": False,
    # scikit-learn's metadata-routing helpers, generated on BaseEstimator subclasses
    "exclude-members": "set_fit_request,set_score_request,set_predict_request,"
    "set_transform_request,set_partial_fit_request",
}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_inherit_docstrings = False
html_theme = "furo"
html_title = "conprediff"
exclude_patterns = ["_build", "benchmarks/*_table.md"]
suppress_warnings = ["myst.header"]
