"""A bbox model's page: crop its figures, write them beside the page, link them from its text.

Called by :func:`ocrpipe.worker.page_work.finish_page` before the page's Markdown is written
(with ``Settings.ocr_figure_boxes``), so a page whose Markdown exists has its figures. Each
figure is created once (``if_generation_match=0``) like every page object, with where it was
cut from as its metadata (:func:`ocrpipe.records.figure_metadata`). A figure already there
is a duplicate delivery's or an earlier attempt's: it stays, and since ``document.json``
takes each figure's box from the figure's own metadata, the record always describes the
file. (If that earlier attempt's model found more figures, the extra files stay unlinked.)
"""

from __future__ import annotations

import logging

from ocrpipe import naming, records
from ocrpipe.storage import ObjectStore
from ocrpipe.worker.figure_crops import Crop, crop_figures
from ocrpipe.worker.figure_refs import find_figures, numbered, rewrite

logger = logging.getLogger(__name__)


def save_figures(
    doc: naming.DocumentRef,
    page: int,
    markdown: str,
    image: bytes,
    mime: str,
    store: ObjectStore,
    bucket: str,
) -> tuple[str, dict[str, str]]:
    """Write page ``page``'s figures to ``bucket``; return its Markdown linking them and
    the custom metadata its Markdown carries (:func:`ocrpipe.records.page_figures_metadata`)."""
    plan = find_figures(markdown)
    crops = crop_figures(image, mime, plan.candidates)
    numbers = numbered(plan, lambda candidate: isinstance(crops[candidate], Crop))
    links: dict[int, str] = {}
    failed: dict[int, str] = {}
    for candidate, crop in enumerate(crops):
        if isinstance(crop, str):
            failed[candidate] = crop
            continue
        basename = naming.figure_basename(page, numbers[candidate], crop.extension)
        box = plan.candidates[candidate]
        where = records.FigureBox(crop.box, (box.x1, box.y1, box.x2, box.y2), crop.image_size)
        store.write(
            bucket,
            naming.page_figure_name(doc, page, numbers[candidate], crop.extension),
            crop.data,
            crop.content_type,
            if_generation_match=0,
            metadata=records.figure_metadata(where),
        )
        links[candidate] = basename
    text, left = rewrite(markdown, plan, links, failed)
    if plan.references:
        reasons = ", ".join(sorted({n.reason for n in left}))
        logger.info(
            "%d figures cropped, %d references left as text%s",
            len(set(numbers.values())),
            len(left),
            f" ({reasons})" if reasons else "",
        )
    metadata = records.page_figures_metadata(
        sorted(numbers.values()), [(n.ordinal, n.target, n.reason) for n in left]
    )
    return text, metadata
