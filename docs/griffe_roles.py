"""A griffe extension for the API pages: the Sphinx roles in groundup's docstrings become code spans.

``:class:`~groundup.infer.decode.Decoder``` shows as ``Decoder`` and ``:func:`groundup.model.io.load_model_dir```
as its full name, as Sphinx itself would show them; Markdown would otherwise print the role's name.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|obj|exc):`(~?)([^`]+)`")


def _code_span(match: re.Match) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code_span, obj.docstring.value)
