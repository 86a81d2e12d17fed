"""Benchmark 4: the splitter at scale, time and peak memory against page count.

``ocrpipe.splitter.split.split_document`` on generated text PDFs of 100, 300 and 1000 pages, with a
store that serves the input from disk and discards every write, and a publisher that
discards every message: what is left is the splitter's own work (download, count, render in
the pool, build messages). Each size runs in a fresh interpreter under the process-tree
memory sampler (:class:`bench.common.TreeMemory`). Time should grow linearly with pages
(pages/s flat) and memory should not grow at all (the renderer keeps a bounded window).

Child mode: ``python -m bench.split child PDF``.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from bench.common import emit, run_child, say, target
from bench.corpus import cached_pdf

# Peak memory at the largest size over the smallest: "flat" allows for noise.
TARGET_MEMORY_GROWTH = 1.25
# pages/s at the largest size over the smallest: "linear" means no slowdown.
TARGET_RATE_KEPT = 0.8


class DiscardingStore:
    """An :class:`ocrpipe.storage.ObjectStore` that serves one input file, keeps nothing."""

    def __init__(self, bucket: str, name: str, path: Path) -> None:
        self._input = (bucket, name)
        self._path = path
        self.created = 0
        self.bytes = 0

    def stat(self, bucket: str, name: str) -> Any:
        from ocrpipe.storage import ObjectInfo

        if (bucket, name) != self._input:
            return None
        return ObjectInfo(name, 1, self._path.stat().st_size, "application/pdf")

    def download(
        self, bucket: str, name: str, dest: Path, *, generation: int | None = None
    ) -> None:
        shutil.copyfile(self._path, dest)

    def read(self, bucket: str, name: str) -> bytes:
        from ocrpipe.errors import ObjectMissing

        raise ObjectMissing(f"gs://{bucket}/{name}")

    def create(self, bucket: str, name: str, data: bytes, content_type: str) -> bool:
        self.created += 1
        self.bytes += len(data)
        return True

    def upload(self, bucket: str, name: str, source: IO[bytes], content_type: str) -> int:
        self.created += 1
        self.bytes += len(source.read())
        return self.created

    def list(self, bucket: str, prefix: str) -> list[Any]:
        return []

    def delete(self, bucket: str, name: str) -> None:
        pass


class DiscardingPublisher:
    def __init__(self) -> None:
        self.published = 0

    def publish_all(self, topic: str, messages: Sequence[Any]) -> list[str]:
        start = self.published
        self.published += len(messages)
        return [str(start + i) for i in range(len(messages))]


def _child(path: Path) -> None:
    from ocrpipe.naming import DocumentRef
    from ocrpipe.settings import Settings
    from ocrpipe.splitter.split import split_document

    settings = Settings(max_pages=10_000, render_processes=2, verify_push_auth=False)
    doc = DocumentRef(settings.input_bucket, "bench/input.pdf", 1)
    store = DiscardingStore(doc.bucket, doc.name, path)
    publisher = DiscardingPublisher()
    started = time.perf_counter()
    outcome = split_document(doc, store, publisher, settings)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    if outcome.state != "published" or publisher.published != outcome.page_count:
        raise RuntimeError(f"split did not publish every page: {outcome}")
    emit({"pages": outcome.page_count, "seconds": seconds, "bytes": store.bytes})


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    sizes = [20, 60, 200] if quick else [100, 300, 1000]
    figures: dict[str, Any] = {"sizes": sizes}
    for pages in sizes:
        path = cached_pdf("text", pages, seed=1)
        answer, memory = run_child("bench.split", ["child", str(path)])
        figures[str(pages)] = entry = {
            "pages": answer["pages"],
            "seconds": round(answer["seconds"], 2),
            "pages_per_s": round(answer["pages"] / answer["seconds"], 1),
            "pdf_mb": round(path.stat().st_size / 2**20, 2),
            **memory.summary(),
        }
        say(
            f"  {pages:5} pages  {entry['seconds']:6.1f} s  {entry['pages_per_s']:6.1f} pages/s"
            f"  peak RSS {entry['peak_total_rss_mb']:5.0f} MB (parent {entry['parent_hwm_mb']:.0f},"
            f" largest child {entry['max_child_hwm_mb']:.0f})"
        )
    small, large = figures[str(sizes[0])], figures[str(sizes[-1])]
    growth = large["peak_total_rss_mb"] / small["peak_total_rss_mb"]
    kept = large["pages_per_s"] / small["pages_per_s"]
    figures["memory_growth"] = round(growth, 3)
    figures["rate_kept"] = round(kept, 3)
    say(
        f"  {sizes[-1]} vs {sizes[0]} pages: peak memory x{growth:.2f}"
        f" (target <= {TARGET_MEMORY_GROWTH}), pages/s x{kept:.2f} (target >= {TARGET_RATE_KEPT})"
    )
    targets = {
        "memory_growth": target(growth, TARGET_MEMORY_GROWTH, higher_is_better=False, unit="x"),
        "rate_kept": target(kept, TARGET_RATE_KEPT, unit="x"),
    }
    method = (
        "split_document with a store that discards writes and a discarding publisher, 2 render"
        " processes, each size in a fresh interpreter; memory = summed VmRSS peak of the"
        " process tree (parent, forkserver, pool), sampled every 20 ms"
    )
    return figures, targets, method


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        _child(Path(sys.argv[2]))
