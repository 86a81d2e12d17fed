"""The loops benchmark measures on the chaos test's pages, rendered as the splitter renders
them: that needs the renderer the splitter uses."""

from __future__ import annotations

from bench.loops import CHAOS_PAGES, chaos_pages


def test_the_chaos_pages_are_rendered_as_png_page_images() -> None:
    images = chaos_pages(1)
    assert len(images) == CHAOS_PAGES[0]
    assert all(image.startswith(b"\x89PNG\r\n\x1a\n") for image in images)
