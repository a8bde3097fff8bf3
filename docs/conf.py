"""Sphinx configuration for gilfree's documentation (``python3 dev.py docs`` builds it).

Sphinx rather than MkDocs: autodoc imports the package, so it documents the C extension's types and
functions (Channel, select, the pool) from their docstrings and signatures as well as the Python modules,
and ``sphinx.ext.doctest`` runs every example in the pages and in the docstrings. Nothing is fetched from
the network: the build works offline.
"""

from __future__ import annotations

import gilfree

project = "gilfree"
author = "the gilfree authors"
copyright = "2026, the gilfree authors"
release = version = gilfree.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Every page's examples run with these names in scope.
doctest_global_setup = """
import gilfree
from gilfree import Channel, select
"""
