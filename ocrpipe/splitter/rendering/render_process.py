"""The render process: opens one document and turns page numbers into page images.

Started by :class:`ocrpipe.splitter.rendering.renderer.Renderer` (``forkserver``: nothing of the
splitter's threads or clients is inherited). It speaks a small protocol over a pipe::

    parent -> child   ("count",)                 | ("render", seq, page)  | None (exit)
    child -> parent   ("start", seq, monotonic)  then
                      ("count", n) | ("page", seq, RenderedPage) | ("fail", seq, reason, msg)

Its address space is capped with ``RLIMIT_AS`` before the document is opened, so a page
that would need gigabytes fails with MemoryError (that page's error record) instead of
taking the function's instance down; a page that crashes the process or runs past its time
is handled by the parent.
"""

from __future__ import annotations

import resource
import time
from multiprocessing.connection import Connection
from pathlib import Path

from ocrpipe.errors import BadInput
from ocrpipe.file_kinds import InputKind
from ocrpipe.splitter.rendering.page_decoders import PageSource, open_source

COUNT_SEQ = -1


def serve(
    conn: Connection,
    path: str,
    kind: str,
    longest_side: int,
    dpi: float,
    memory_bytes: int,
    max_image_pixels: int,
) -> None:
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    source: PageSource | None = None
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        seq = COUNT_SEQ if task[0] == "count" else int(task[1])
        conn.send(("start", seq, time.monotonic()))
        try:
            if source is None:
                source = open_source(InputKind(kind), Path(path), max_image_pixels=max_image_pixels)
            if task[0] == "count":
                conn.send(("count", source.page_count()))
            else:
                conn.send(("page", seq, source.render(int(task[2]), longest_side, dpi)))
        except BadInput as exc:
            conn.send(("fail", seq, exc.reason, exc.message))
        except MemoryError:
            limit = f" (limit {memory_bytes // 2**20} MiB)" if memory_bytes else ""
            conn.send(("fail", seq, "page_render_failed", f"rendering ran out of memory{limit}"))
        except Exception as exc:  # whatever PDFium or Pillow make of a hostile file
            message = f"the page cannot be rendered ({type(exc).__name__}: {str(exc)[:300]})"
            conn.send(("fail", seq, "page_render_failed", message))
