"""Links to figure files in Markdown, moved to where another file reads them (pure).

A page's Markdown links its figures by their names beside it (``00001.figure-1.png``, see
:func:`ocrpipe.naming.figure_basename`). ``document.md`` sits one folder up, so the worker's
assembly moves each link to ``pages/00001.figure-1.png``; ``ocrpipe get`` moves them again
for the local copy of a document, which sits beside its folder of pages. Only the links
named are touched (``](link)`` exactly): any other text, including an image link the model
wrote itself, stays byte for byte.

:func:`relink_bytes` also says where it changed lengths, so that byte ranges into the old
text (``document.json``'s page spans) can be moved with :func:`shift`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence


def _pattern(moves: Mapping[str, str]) -> re.Pattern[str]:
    names = "|".join(re.escape(old) for old in sorted(moves, key=len, reverse=True))
    return re.compile(rf"\]\(({names})\)")


def relink(markdown: str, moves: Mapping[str, str]) -> str:
    """``markdown`` with every link ``](old)`` to a name in ``moves`` made ``](new)``."""
    if not moves:
        return markdown
    return _pattern(moves).sub(lambda m: f"]({moves[m.group(1)]})", markdown)


def relink_bytes(data: bytes, moves: Mapping[str, str]) -> tuple[bytes, list[tuple[int, int]]]:
    """:func:`relink` on UTF-8 bytes; also each change as (byte offset in ``data``, bytes
    added), in order."""
    if not moves:
        return data, []
    pattern = re.compile(_pattern(moves).pattern.encode())
    encoded = {old.encode(): new.encode() for old, new in moves.items()}
    out = bytearray()
    edits: list[tuple[int, int]] = []
    position = 0
    for match in pattern.finditer(data):
        old = match.group(1)
        new = encoded[old]
        out += data[position : match.start(1)] + new
        position = match.end(1)
        edits.append((match.start(1), len(new) - len(old)))
    out += data[position:]
    return bytes(out), edits


def shift(offset: int, edits: Sequence[tuple[int, int]]) -> int:
    """Where byte ``offset`` of the old text is in the new one."""
    return offset + sum(added for at, added in edits if at < offset)
