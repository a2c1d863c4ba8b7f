"""Named blocks of ``.sql`` and ``.lua`` files: the one loader of the SQL stores' queries and of the
Redis scripts.

A block starts at a line ``-- name: <name>`` and runs to the next such line; the text before the
first one (a file's opening comment) belongs to no block. A block's text is stripped of the blank
lines around it.
"""

from __future__ import annotations

import re
from importlib.resources import files

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.M)


def named_blocks(text: str) -> dict[str, str]:
    """The blocks of ``text`` by name, in file order. Raises ValueError on a name given twice."""
    parts = _NAME.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in blocks:
            raise ValueError(f"block {name!r} is named twice")
        blocks[name] = body.strip()
    return blocks


def read_blocks(package: str, *paths: str) -> dict[str, str]:
    """The named blocks of ``package``'s resource files ``paths`` (``/``-separated, relative to the
    package), merged in order. Raises ValueError on a name found in two places."""
    blocks: dict[str, str] = {}
    for path in paths:
        resource = files(package)
        for part in path.split("/"):
            resource = resource.joinpath(part)
        for name, body in named_blocks(resource.read_text(encoding="utf-8")).items():
            if name in blocks:
                raise ValueError(f"block {name!r} of {package}/{path} is named before")
            blocks[name] = body
    return blocks
