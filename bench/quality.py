"""Benchmark 5: OCR quality of the local engine (rapidocr), per page type.

Pages are rendered the way the splitter renders them (``Renderer``, longest side
1540 px, PNG) from two generated documents whose text is known
(:mod:`bench.corpus`): born-digital pages and noisy scanned pages. Each page goes through
the engine in-process (:func:`ocrpipe.local.engine.ocr_page`, the function behind the
server's ``/v1/chat/completions``). The ground truth is the generator's text.

* CER: Levenshtein distance between the whitespace-collapsed truth and output, over the
  truth's length; summed over the pages of a type (micro average);
* word F1: multiset overlap of lower-cased words (punctuation stripped): precision over
  the output's words, recall over the truth's, summed over the pages of a type.

No target: the engine is a local stand-in for LightOnOCR. DESIGN.md measured 0.00% CER on
born-digital pages and 1.8% on noisy scans; the figures here say whether that still holds.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

from bench.common import say
from bench.corpus import FULL_PAGES, QUICK_PAGES, cached_pdf, truth

_WORD = re.compile(r"[a-z0-9]+")


def collapse(text: str) -> str:
    return " ".join(text.split())


def words(text: str) -> Counter[str]:
    return Counter(_WORD.findall(text.lower()))


def score(expected: str, actual: str) -> dict[str, int]:
    """Edit distance, truth length and word counts for one page."""
    from rapidfuzz.distance import Levenshtein

    truth_text, output = collapse(expected), collapse(actual)
    want, got = words(expected), words(actual)
    return {
        "edits": int(Levenshtein.distance(truth_text, output)),
        "chars": len(truth_text),
        "common_words": sum((want & got).values()),
        "truth_words": sum(want.values()),
        "output_words": sum(got.values()),
    }


def summarize(scores: list[dict[str, int]]) -> dict[str, float]:
    total = Counter[str]()
    for page in scores:
        total.update(page)
    precision = total["common_words"] / total["output_words"] if total["output_words"] else 0.0
    recall = total["common_words"] / total["truth_words"] if total["truth_words"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    worst = max(p["edits"] / p["chars"] for p in scores) if scores else 0.0
    return {
        "pages": len(scores),
        "cer": round(total["edits"] / total["chars"], 5) if total["chars"] else 0.0,
        "worst_page_cer": round(worst, 5),
        "word_precision": round(precision, 4),
        "word_recall": round(recall, 4),
        "word_f1": round(f1, 4),
    }


def run(quick: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    from ocrpipe.file_kinds import InputKind
    from ocrpipe.local.engine import RapidOcrEngine, ocr_page
    from ocrpipe.splitter.rendering.page_decoders import RenderedPage
    from ocrpipe.splitter.rendering.renderer import Renderer

    per_type = 2 if quick else 10
    sizes = QUICK_PAGES if quick else FULL_PAGES
    documents = {
        "born_digital": cached_pdf("text", sizes["text"]),
        "scanned": cached_pdf("scanned", sizes["scanned"]),
    }
    started = time.perf_counter()
    engine = RapidOcrEngine()
    figures: dict[str, Any] = {"engine_load_s": round(time.perf_counter() - started, 2)}
    expected = truth(per_type)
    for kind, path in documents.items():
        scores = []
        spent = 0.0
        with Renderer(path, InputKind.PDF, processes=2, longest_side=1540) as renderer:
            for page in renderer.render(range(1, per_type + 1)):
                if not isinstance(page, RenderedPage):
                    raise RuntimeError(f"a page failed to render: {page}")
                started = time.perf_counter()
                markdown, _, _ = ocr_page(engine, page.data)
                spent += time.perf_counter() - started
                scores.append(score(expected[page.page - 1], markdown))
        figures[kind] = summary = {
            **summarize(scores),
            "seconds_per_page": round(spent / per_type, 2),
        }
        say(
            f"  {kind:12} {per_type:3} pages  CER {summary['cer']:.2%} (worst page"
            f" {summary['worst_page_cer']:.2%})  word F1 {summary['word_f1']:.3f}"
            f"  {summary['seconds_per_page']:.1f} s/page"
        )
    figures["reference_design_md"] = {"born_digital_cer": 0.0, "scanned_cer": 0.018}
    method = (
        "rapidocr engine in-process (ocrpipe.local.engine.ocr_page) on pages rendered by"
        " Renderer at 1540 px; truth from the generator; CER = edits / truth chars"
        " (whitespace collapsed), word F1 over lower-cased word multisets, both summed over"
        " pages"
    )
    return figures, {}, method
