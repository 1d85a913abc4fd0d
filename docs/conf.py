"""Sphinx configuration of the skdccm documentation.

Build (the gallery examples run; ``SKDCCM_DOCS_QUICK=1`` makes them tiny)::

    python -m sphinx -W -b html docs docs/_build/html

Skip running the examples with ``-D plot_gallery=0``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import skdccm  # noqa: E402  (after the path set-up)

project = "skdccm"
author = "the skdccm developers"
copyright = "the skdccm developers"
version = release = skdccm.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "skdccm_docs",
]

root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
templates_path: list[str] = []
# The PyData theme: the look of scikit-learn's, NumPy's and pandas' sites. The top bar
# lists the root toctree's pages; each page's own contents go in the right-hand column.
html_theme = "pydata_sphinx_theme"
html_theme_options = {
    "logo": {"text": f"skdccm {release}"},
    "navbar_align": "left",
    "header_links_before_dropdown": 5,
    "navbar_persistent": [],                      # the search button sits at the end
    "navbar_end": ["search-button", "theme-switcher"],
    "show_toc_level": 2,
    "navigation_with_keys": False,
    # The examples' code (up to 100 columns) needs the width of the right-hand column.
    "secondary_sidebar_items": {"*": ["page-toc", "sourcelink"], "auto_examples/*": []},
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
# The left column lists a section's pages; only the gallery has a section of pages.
html_sidebars = {"*": [], "auto_examples/*": ["sidebar-nav-bs"]}
html_static_path: list[str] = []
html_title = f"skdccm {release}"
html_show_sourcelink = False

# -- API reference ----------------------------------------------------------------------
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"          # numpydoc's "Parameters" already give the types
autosummary_generate = False        # api.rst documents objects in place; no stub files
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True

# -- gallery ----------------------------------------------------------------------------
# Only examples/plot_*.py belong to the gallery; other scripts in examples/ (command-line
# demos, notebooks) are not gallery-formatted and are left alone.
sphinx_gallery_conf = {
    "examples_dirs": str(HERE.parent / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"(^|[\\/])(?!plot_)[^\\/]*\.py$",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "abort_on_example_error": True,
    "min_reported_time": 1,
    "remove_config_comments": True,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
    "write_computation_times": False,
    "show_signature": False,
}

# -- misc -------------------------------------------------------------------------------
pygments_style = "sphinx"
nitpicky = False
