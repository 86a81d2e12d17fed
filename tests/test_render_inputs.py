"""Pages from every supported input, and what the render processes do with hostile ones:
absurd page sizes are clamped, slow pages time out, a crashed or starved process fails its
page only, and decompression bombs are refused before anything is decoded."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest
from PIL import Image

from ocrpipe.errors import BadInput
from ocrpipe.file_kinds import InputKind
from ocrpipe.page_geometry import image_scale
from ocrpipe.settings import Settings
from ocrpipe.splitter.rendering.page_decoders import RenderedPage
from ocrpipe.splitter.rendering.renderer import PageFailure, Renderer, RenderLimits
from ocrpipe.testing import inputs as make


def render_all(
    tmp_path: Path, data: bytes, kind: InputKind, limits: RenderLimits | None = None
) -> list[RenderedPage | PageFailure]:
    path = tmp_path / "input"
    path.write_bytes(data)
    with Renderer(path, kind, processes=2, longest_side=1540, limits=limits) as renderer:
        return list(renderer.render(range(1, renderer.page_count() + 1)))


def opened(page: RenderedPage | PageFailure) -> Image.Image:
    assert isinstance(page, RenderedPage), page
    image = Image.open(io.BytesIO(page.data))
    assert image.size == (page.width, page.height)
    return image


@pytest.mark.parametrize(
    ("fmt", "options", "mime"),
    [
        ("PNG", {}, "image/png"),
        ("JPEG", {"quality": 95}, "image/jpeg"),
        ("WEBP", {"quality": 90}, "image/jpeg"),
        ("WEBP", {"lossless": True}, "image/png"),
        ("TIFF", {"compression": "tiff_lzw"}, "image/png"),
        ("TIFF", {"compression": "jpeg"}, "image/jpeg"),
    ],
)
def test_an_image_is_a_page_scaled_to_1540(
    tmp_path: Path, fmt: str, options: dict[str, object], mime: str
) -> None:
    data = make.image_bytes([make.text_image("Invoice 42", (3000, 1000))], fmt, **options)
    (page,) = render_all(tmp_path, data, InputKind(fmt.lower()))
    image = opened(page)
    assert isinstance(page, RenderedPage), page
    assert page.mime == mime and image.format == mime.split("/")[1].upper()
    assert image.size == (1540, 513)
    assert image.mode in ("RGB", "L")


def test_a_multi_page_tiff_is_a_document_of_its_frames(tmp_path: Path) -> None:
    frames = [make.text_image(f"Page {n}", (1000, 1400)) for n in (1, 2, 3)]
    pages = render_all(tmp_path, make.image_bytes(frames, "TIFF"), InputKind.TIFF)
    assert [p.page for p in pages] == [1, 2, 3]
    assert all(opened(p).size == (1000, 1400) for p in pages)  # under 1540 px: as they are


@pytest.mark.parametrize(
    "size", [(40, 30), (800, 600), (1540, 1000)], ids=["icon", "screenshot", "at the limit"]
)
def test_an_image_is_never_enlarged_like_the_reference_client(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    (page,) = render_all(
        tmp_path, make.image_bytes([make.text_image("x", size)], "PNG"), InputKind.PNG
    )
    assert opened(page).size == size
    assert image_scale(*size, 1540) == 1.0


def test_transparency_becomes_white_and_16_bit_grey_stays_visible(tmp_path: Path) -> None:
    clear = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    (page,) = render_all(tmp_path, make.image_bytes([clear], "PNG"), InputKind.PNG)
    assert opened(page).convert("L").getextrema() == (255, 255)

    grey = Image.new("I;16", (200, 100), 30000)
    (page,) = render_all(tmp_path, make.image_bytes([grey], "PNG"), InputKind.PNG)
    low, high = opened(page).convert("L").getextrema()
    assert isinstance(low, int | float) and isinstance(high, int | float)  # one band
    assert 100 <= low <= high <= 130  # 30000 / 256, not clipped to white


def test_a_sideways_phone_photo_is_turned_upright(tmp_path: Path) -> None:
    photo = make.text_image("upright", (800, 400))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display after a 90 degree turn clockwise
    data = make.image_bytes([photo], "JPEG", exif=exif)
    (page,) = render_all(tmp_path, data, InputKind.JPEG)
    assert opened(page).size == (400, 800)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    data = make.image_bytes([Image.new("L", (2000, 2000), 255)], "PNG")
    limits = RenderLimits.from_settings(Settings(), max_image_pixels=1_000_000)
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    with (
        Renderer(path, InputKind.PNG, processes=1, longest_side=1540, limits=limits) as renderer,
        pytest.raises(BadInput) as caught,
    ):
        renderer.page_count()
    assert caught.value.reason == "image_too_large"


def test_one_oversized_tiff_frame_rejects_the_file(tmp_path: Path) -> None:
    frames = [Image.new("L", (500, 500), 255), Image.new("L", (2000, 2000), 255)]
    path = tmp_path / "frames.tiff"
    path.write_bytes(make.image_bytes(frames, "TIFF"))
    limits = RenderLimits.from_settings(Settings(), max_image_pixels=1_000_000)
    with (
        Renderer(path, InputKind.TIFF, processes=1, longest_side=1540, limits=limits) as renderer,
        pytest.raises(BadInput) as caught,
    ):
        renderer.page_count()
    assert caught.value.reason == "image_too_large" and "frame 2" in caught.value.message


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("damaged.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image_corrupt"),
        ("encrypted.pdf", make.encrypted_pdf("secret"), "pdf_encrypted"),
        ("empty-tree.pdf", make.no_pages_pdf(), "pdf_no_pages"),
        ("garbage.pdf", b"%PDF-1.7\nnot really", "pdf_corrupt"),
    ],
)
def test_unreadable_documents_are_bad_input(
    tmp_path: Path, name: str, data: bytes, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    kind = InputKind.PNG if name.endswith(".png") else InputKind.PDF
    with (
        Renderer(path, kind, processes=1, longest_side=1540) as renderer,
        pytest.raises(BadInput) as caught,
    ):
        renderer.page_count()
    assert caught.value.reason == reason


def test_an_empty_user_password_opens_normally(tmp_path: Path) -> None:
    (page,) = render_all(tmp_path, make.encrypted_pdf(""), InputKind.PDF)
    assert max(opened(page).size) == 1540


def test_absurd_page_sizes_are_clamped(tmp_path: Path) -> None:
    data = make.sized_pages_pdf([(1, 10000), (14400, 14400), (10000, 1)])
    sliver, huge, flat = (opened(p).size for p in render_all(tmp_path, data, InputKind.PDF))
    assert sliver == (770, 6160)  # 4 x 1540 long at most, padded white to 1:8
    assert huge == (1540, 1540)
    assert flat == (6160, 770)


def test_a_page_that_cannot_load_fails_alone(tmp_path: Path) -> None:
    data = make.missing_page_pdf(["one", "two", "three"], missing=2)
    pages = render_all(tmp_path, data, InputKind.PDF)
    assert [type(p).__name__ for p in pages] == ["RenderedPage", "PageFailure", "RenderedPage"]
    assert isinstance(pages[1], PageFailure) and pages[1].reason == "page_render_failed"


def test_a_page_that_renders_forever_times_out_and_the_rest_goes_on(tmp_path: Path) -> None:
    """The slow page takes about 14 s and the limit is 3 s; a text page takes tens of
    milliseconds, so it keeps a wide margin under the limit on a busy machine too (with a
    0.5 s limit, a loaded machine timed out ordinary pages)."""
    path = tmp_path / "slow.pdf"
    path.write_bytes(make.slow_page_pdf(["one", "two", "three", "four"], slow=2))
    limits = RenderLimits.from_settings(Settings(), page_timeout_s=3)
    with Renderer(path, InputKind.PDF, processes=1, longest_side=1540, limits=limits) as renderer:
        pages = list(renderer.render([1, 2, 3, 4]))
        assert renderer.restarts == 1
    assert [p.page for p in pages] == [1, 2, 3, 4]
    assert isinstance(pages[1], PageFailure) and pages[1].reason == "page_render_timeout"
    assert all(isinstance(p, RenderedPage) for p in (pages[0], pages[2], pages[3]))


def test_a_crashed_render_process_fails_its_page_only(tmp_path: Path) -> None:
    path = tmp_path / "slow.pdf"
    path.write_bytes(make.slow_page_pdf(["one", "two", "three"], slow=2))
    with Renderer(path, InputKind.PDF, processes=1, longest_side=1540) as renderer:
        pages = renderer.render([1, 2, 3])
        first = next(pages)  # page 2 is now the process's task, for about 14 s
        (pid,) = renderer.pids
        os.kill(pid, signal.SIGKILL)
        rest = list(pages)
    assert isinstance(first, RenderedPage)
    assert isinstance(rest[0], PageFailure) and rest[0].reason == "page_render_failed"
    assert "signal 9" in rest[0].message
    assert isinstance(rest[1], RenderedPage) and rest[1].page == 3


def test_a_page_over_the_memory_limit_fails_alone(tmp_path: Path) -> None:
    frames = [
        make.text_image("small one"),
        Image.new("RGB", (8000, 8000), "white"),  # ~200 MB decoded, ~300 KB compressed
        make.text_image("small three"),
    ]
    data = make.image_bytes(frames, "TIFF", compression="tiff_deflate")
    limits = RenderLimits.from_settings(Settings(), memory_bytes=200 * 2**20)
    pages = render_all(tmp_path, data, InputKind.TIFF, limits)
    assert isinstance(pages[1], PageFailure) and pages[1].reason == "page_render_failed"
    assert "memory" in pages[1].message
    assert all(isinstance(p, RenderedPage) for p in (pages[0], pages[2]))


def test_a_transparent_png_just_under_the_pixel_limit_renders(tmp_path: Path) -> None:
    # 9900 x 9900 = 98.0 MP, under the default 100 MP limit: in greyscale it renders in
    # under a second, and RGBA must render within the same default memory limit.
    side = 9900
    image = Image.new("RGBA", (side, side), (255, 0, 0, 0))  # clear (red, but invisible)
    ink = Image.new("RGBA", (side // 2, side // 10), (0, 0, 0, 255))
    image.paste(ink, (side // 4, side // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    del image, ink
    (page,) = render_all(tmp_path, buffer.getvalue(), InputKind.PNG)
    assert isinstance(page, RenderedPage), page
    rendered = opened(page).convert("RGB")
    assert rendered.size == (1540, 1540)
    assert rendered.getpixel((10, 10)) == (255, 255, 255)  # clear became white, not red
    assert rendered.getpixel((770, 770 + 60)) == (0, 0, 0)  # the opaque bar is black
