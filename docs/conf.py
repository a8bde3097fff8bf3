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


# ---- tables generated from gilfree.bench, so that the page cannot drift from the code -------------------

from docutils import nodes  # noqa: E402
from docutils.statemachine import StringList  # noqa: E402
from sphinx.util.docutils import SphinxDirective  # noqa: E402


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> list[str]:
    w0 = max(len(header[0]), *(len(a) for a, _ in rows)) + 4
    w1 = max(len(header[1]), *(len(b) for _, b in rows))
    rule = "=" * w0 + "  " + "=" * w1
    out = [rule, f"{header[0]:{w0}}  {header[1]}", rule]
    out += [f"{a:{w0}}  {b}" for a, b in rows]
    return [*out, rule]


class BenchTable(SphinxDirective):
    """``.. gilfree-bench-table:: scenarios | executors | columns``"""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        from gilfree.bench import scenarios
        from gilfree.bench.executors import EXECUTORS, WHAT
        from gilfree.bench.report import COLUMNS

        kind = self.arguments[0]
        if kind == "scenarios":
            names = scenarios.SCENARIOS + scenarios.EXTRA
            lines = _table(("scenario", "what it measures"), [(f"``{n}``", scenarios.ABOUT[n]) for n in names])
        elif kind == "executors":
            lines = _table(("executor", "what runs the work"), [(f"**{e}**", WHAT[e]) for e in EXECUTORS])
        elif kind == "columns":
            lines = _table(("column", "meaning"), [(f"``{c}``", m) for c, m in COLUMNS])
        else:
            raise self.error(f"unknown table {kind!r}")
        node = nodes.section()
        self.state.nested_parse(StringList(lines, source="gilfree.bench"), self.content_offset, node)
        return list(node.children)


def setup(app: object) -> dict[str, object]:
    app.add_directive("gilfree-bench-table", BenchTable)  # type: ignore[attr-defined]
    return {"parallel_read_safe": True}
