"""MkDocs hooks of the documentation site (mkdocs.yml, ``hooks:``).

The docstrings name other objects with Sphinx's roles (``:func:`forward_1d```,
``:class:`~ddpm.edm.EDMProcess```), which mkdocstrings renders as Markdown: the role's name would be printed
before the code. This drops the role (and the ``~`` that asks Sphinx for the short name), leaving the name as
code.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):(<code>)~?")


def on_page_content(html: str, **kwargs: Any) -> str:
    """Drop Sphinx role prefixes from a rendered page."""
    return _ROLE.sub(r"\1", html)
