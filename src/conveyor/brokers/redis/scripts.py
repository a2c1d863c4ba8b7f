"""The Lua scripts of the Redis broker (``lua/*.lua``), read once at import: each named block is one
script, with the prelude's helpers it needs put in front. Loaded into Redis by
:meth:`~conveyor.brokers.redis.link.RedisLink.open` and run by SHA1."""

from __future__ import annotations

import hashlib
import re

from ..named import read_blocks

#: The script files, by concern; ``prelude.lua`` holds the helpers the others share.
FILES = ("lua/prelude.lua", "lua/enqueue.lua", "lua/fetch.lua", "lua/control.lua", "lua/queries.lua",
         "lua/feed.lua", "lua/pairing.lua")


class _Prelude:
    """The prelude, put in front of a script without the helper functions that script never calls
    (directly or through another helper): Lua creates every ``local function`` anew on each call
    of a script, and the unused ones cost a single enqueue some 5 us of Redis time."""

    def __init__(self, text: str) -> None:
        self.segments: list[tuple[str | None, str]] = []  # (function name or None, text), in order
        lines = text.splitlines(keepends=True)
        i = 0
        while i < len(lines):
            head = re.match(r"local function (\w+)\(", lines[i])
            end = i
            if head and not lines[i].rstrip().endswith(" end"):
                while lines[end].rstrip("\n") != "end":
                    end += 1
            self.segments.append((head[1] if head else None, "".join(lines[i:end + 1])))
            i = end + 1
        self.defined = {name for name, _ in self.segments if name}
        self.calls = {name: self.called(text) for name, text in self.segments if name}
        self.always = self.called("".join(text for name, text in self.segments if not name))

    def called(self, code: str) -> set[str]:
        code = re.sub(r"--[^\n]*", "", code)  # comments name helpers too (no string holds "--")
        return self.defined.intersection(re.findall(r"\w+", code))

    def for_body(self, body: str) -> str:
        needed, todo = set(), self.called(body) | self.always
        while todo:
            name = todo.pop()
            needed.add(name)
            todo |= self.calls[name] - needed
        return "".join(text for name, text in self.segments if name is None or name in needed)


def _load_scripts() -> dict[str, str]:
    blocks = read_blocks(__package__, *FILES)
    prelude = _Prelude(blocks.pop("prelude"))
    return {name: body + "\n" if "-- standalone" in body.split("\n", 2)[0] else
            prelude.for_body(body) + "\n" + body + "\n" for name, body in blocks.items()}


SCRIPTS = _load_scripts()
SHAS = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in SCRIPTS.items()}
