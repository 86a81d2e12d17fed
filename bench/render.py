"""Benchmark 1: the splitter's renderer against pdftoppm, same pixels, same processes.

For each document (a born-digital text PDF and a scanned one), in the same run:

* ``Renderer`` (pypdfium2 in a forkserver pool of N processes, PNG at level 1, longest
  side 1540 px), timed from the pool's creation to the last page's bytes in the parent;
* N ``pdftoppm -png -scale-to 1540`` processes in parallel, each on its own ``-f/-l`` page
  range, timed from the first start to the last exit.

Each side runs in a fresh interpreter under a sampler of its whole process tree (parent,
forkserver, pool processes; or the pdftoppm processes), which gives the peak of the summed
RSS and each process's VmHWM. Each side runs ``repeats`` times, alternating; the best time
counts (the least disturbed by the other jobs on this machine).

Child mode (used by the parent): ``python -m bench.render child pdfium|pdftoppm PDF N``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import emit, run_child, say, target
from bench.corpus import FULL_PAGES, QUICK_PAGES, cached_pdf
from ocrpipe.settings import Settings

LONGEST_SIDE = 1540
TARGET_SPEEDUP = 5.0


def _render_pdfium(path: Path, processes: int) -> dict[str, Any]:
    from ocrpipe.file_kinds import InputKind
    from ocrpipe.splitter.rendering.page_decoders import RenderedPage
    from ocrpipe.splitter.rendering.renderer import Renderer

    started = time.perf_counter()
    total = 0
    with Renderer(path, InputKind.PDF, processes=processes, longest_side=LONGEST_SIDE) as renderer:
        count = renderer.page_count()
        for page in renderer.render(range(1, count + 1)):
            if not isinstance(page, RenderedPage):
                raise RuntimeError(f"a page failed to render: {page}")
            total += len(page.data)
            size = (page.width, page.height)
    return {"pages": count, "seconds": time.perf_counter() - started, "bytes": total, "size": size}


def _page_count(path: Path) -> int:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(path)
    try:
        return len(document)
    finally:
        document.close()


def _render_pdftoppm(path: Path, processes: int) -> dict[str, Any]:
    count = _page_count(path)
    chunk = -(-count // processes)
    with tempfile.TemporaryDirectory(prefix="bench-pdftoppm-") as out:
        started = time.perf_counter()
        running = []
        for first in range(1, count + 1, chunk):
            last = min(count, first + chunk - 1)
            command = ["pdftoppm", "-png", "-scale-to", str(LONGEST_SIDE)]
            command += ["-f", str(first), "-l", str(last), str(path), f"{out}/p"]
            running.append(subprocess.Popen(command))
        codes = [p.wait() for p in running]
        seconds = time.perf_counter() - started
        if any(codes):
            raise RuntimeError(f"pdftoppm failed: exit codes {codes}")
        files = sorted(Path(out).glob("p-*.png"))
        from PIL import Image

        with Image.open(files[0]) as image:
            size = image.size
        total = sum(f.stat().st_size for f in files)
    if len(files) != count:
        raise RuntimeError(f"pdftoppm wrote {len(files)} pages of {count}")
    return {"pages": count, "seconds": seconds, "bytes": total, "size": size}


def _stages(path: Path, pages: int = 8) -> dict[str, Any]:
    """Where one render process spends a page (ms, mean over ``pages``): a profile of the
    renderer's steps, and of the alternatives (grey PNG, JPEG) for comparison."""
    import io

    import numpy as np
    import pypdfium2 as pdfium

    from ocrpipe.page_geometry import page_scale

    def png(image: Any) -> int:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        return len(buffer.getvalue())

    def jpeg(image: Any) -> int:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        return len(buffer.getvalue())

    spent: dict[str, float] = {}
    sizes: dict[str, int] = {}

    def timed(name: str, fn: Any) -> Any:
        started = time.perf_counter()
        result = fn()
        spent[name] = spent.get(name, 0.0) + (time.perf_counter() - started) * 1000 / pages
        return result

    document = pdfium.PdfDocument(path)
    grey_pages = 0
    try:
        for index in range(pages):
            page = document[index]
            width, height = page.get_size()
            scale = page_scale(width, height, LONGEST_SIDE, Settings().render_dpi)
            bitmap = timed("render", lambda: page.render(scale=scale))  # noqa: B023
            image = timed("to_pil", bitmap.to_pil).convert("RGB")
            sizes["png_rgb"] = sizes.get("png_rgb", 0) + timed("png_rgb", lambda: png(image))  # noqa: B023
            pixels = timed("grey_check", lambda: np.asarray(image))  # noqa: B023
            grey = bool((pixels[..., 0] == pixels[..., 1]).all()) and bool(
                (pixels[..., 1] == pixels[..., 2]).all()
            )
            grey_pages += grey
            luminance = timed("to_grey", lambda: image.convert("L"))  # noqa: B023
            sizes["png_grey"] = sizes.get("png_grey", 0) + timed("png_grey", lambda: png(luminance))  # noqa: B023
            sizes["jpeg_rgb"] = sizes.get("jpeg_rgb", 0) + timed("jpeg_rgb", lambda: jpeg(image))  # noqa: B023
            page.close()
    finally:
        document.close()
    return {
        "ms": {k: round(v, 2) for k, v in spent.items()},
        "kb": {k: round(v / pages / 1024, 1) for k, v in sizes.items()},
        "grey_pages": grey_pages,
        "pages": pages,
    }


def measure(tool: str, path: Path, processes: int) -> dict[str, Any]:
    answer, memory = run_child("bench.render", ["child", tool, str(path), str(processes)])
    return {
        "pages": answer["pages"],
        "seconds": round(answer["seconds"], 3),
        "pages_per_s": round(answer["pages"] / answer["seconds"], 2),
        "cpu_ms_per_page": round(1000 * memory.cpu_seconds / answer["pages"], 1),
        "mean_kb_per_page": round(answer["bytes"] / answer["pages"] / 1024, 1),
        "image_size": answer["size"],
        **memory.summary(),
    }


def run(quick: bool, processes: int = 2) -> tuple[dict[str, Any], dict[str, Any], str]:
    documents = QUICK_PAGES if quick else FULL_PAGES
    # Alternating runs, best of each: text three times (a few seconds each), scanned once
    # (pdftoppm needs ~1 s per scanned page per process).
    repeats = {"text": 1 if quick else 3, "scanned": 1}
    figures: dict[str, Any] = {"processes": processes, "longest_side": LONGEST_SIDE}
    targets: dict[str, Any] = {}
    for kind, pages in documents.items():
        path = cached_pdf(kind, pages)
        runs: dict[str, list[dict[str, Any]]] = {"pdfium": [], "pdftoppm": []}
        for _ in range(repeats[kind]):
            for tool in runs:
                runs[tool].append(measure(tool, path, processes))
        best = {tool: min(results, key=lambda r: r["seconds"]) for tool, results in runs.items()}
        speedup = best["pdfium"]["pages_per_s"] / best["pdftoppm"]["pages_per_s"]
        # Less sensitive to other jobs than wall time: CPU per page, whole process trees.
        cpu_ratio = best["pdftoppm"]["cpu_ms_per_page"] / best["pdfium"]["cpu_ms_per_page"]
        figures[kind] = {
            "pages": pages,
            "pdf_mb": round(path.stat().st_size / 2**20, 1),
            "pdfium": best["pdfium"],
            "pdftoppm": best["pdftoppm"],
            "all_seconds": {t: [r["seconds"] for r in rs] for t, rs in runs.items()},
            "speedup": round(speedup, 2),
            "cpu_speedup": round(cpu_ratio, 2),
        }
        stages, _ = run_child("bench.render", ["child", "stages", str(path), "0"])
        figures[kind]["stages_one_process"] = stages
        targets[f"{kind}_speedup_vs_pdftoppm"] = target(speedup, TARGET_SPEEDUP, unit="x")
        for tool in ("pdfium", "pdftoppm"):
            b = best[tool]
            say(
                f"  {kind:8} {pages:4} pages  {tool:9} {b['pages_per_s']:7.1f} pages/s"
                f" ({b['cpu_ms_per_page']:.0f} ms CPU/page)"
                f"  peak RSS {b['peak_total_rss_mb']:6.0f} MB (parent {b['parent_hwm_mb']:.0f},"
                f" largest child {b['max_child_hwm_mb']:.0f})  {b['mean_kb_per_page']:.0f} KB/page"
            )
        say(
            f"  {kind:8} speedup {speedup:.2f}x (target {TARGET_SPEEDUP:g}x); in CPU per page"
            f" {cpu_ratio:.2f}x"
        )
        say(
            f"  {kind:8} one page in one process (ms): "
            + ", ".join(f"{k} {v:g}" for k, v in stages["ms"].items())
            + "; KB: "
            + ", ".join(f"{k} {v:g}" for k, v in stages["kb"].items())
            + f"; {stages['grey_pages']}/{stages['pages']} pages all grey"
        )
    method = (
        f"Renderer vs {processes} parallel pdftoppm -png -scale-to {LONGEST_SIDE} on -f/-l"
        " ranges, same PDFs, same run; best of "
        f"{repeats} alternating runs; memory: summed VmRSS peak of the process tree and"
        " per-process VmHWM sampled from /proc every 20 ms"
    )
    return figures, targets, method


def _child(argv: list[str]) -> None:
    tool, path, processes = argv[0], Path(argv[1]), int(argv[2])
    if tool == "stages":
        emit(_stages(path))
        return
    render = _render_pdfium if tool == "pdfium" else _render_pdftoppm
    emit(render(path, processes))


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        _child(sys.argv[2:])
