"""Summarize py-spy samples recorded with ``--format raw`` (collapsed stacks), e.g. by ``--profile DIR``.

``python -m bench.hotspots FILE [--top 25] [--match TEXT]`` prints the hottest lines (self time:
where the samples were) and the hottest functions (inclusive: on the stack), as % of all samples.
Idle frames (sleeping, waiting on a lock or a socket) are counted like any other: py-spy records
them unless ``--idle`` was off, which is its default, so the figures are CPU time.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path) as f:
        for raw in f:
            raw = raw.rstrip("\n")
            if not raw:
                continue
            stack, _, count = raw.rpartition(" ")
            try:
                stacks.append((stack.split(";"), int(count)))
            except ValueError:
                continue
    return stacks


def short(frame: str, with_line: bool = True) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    for marker in ("site-packages/", "/src/", "lib/python3."):
        if marker in file:
            file = file.split(marker, 1)[1]
            if marker == "lib/python3.":
                file = "stdlib/" + file.split("/", 1)[-1]
            break
    line = m.group("line")
    return f"{m.group('func')} ({file}:{line})" if with_line and line else f"{m.group('func')} ({file})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hotspots")
    ap.add_argument("file")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--match", help="only stacks containing this text (e.g. a process or function name)")
    a = ap.parse_args(argv)
    stacks = parse(a.file)
    if a.match:
        stacks = [(s, c) for s, c in stacks if any(a.match in f for f in s)]
    total = sum(c for _, c in stacks)
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for stack, count in stacks:
        own[short(stack[-1])] += count
        for name in {short(f, with_line=False) for f in stack}:
            incl[name] += count
    print(f"{total} samples in {a.file}" + (f" matching {a.match!r}" if a.match else ""))
    print("\nself (where the samples were):")
    for name, count in own.most_common(a.top):
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("\ninclusive (on the stack):")
    for name, count in incl.most_common(a.top):
        print(f"  {100 * count / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
