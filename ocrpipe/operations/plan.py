"""What a corpus will cost before anything is uploaded (``ocrpipe plan``): its pages,
counted, and the GPU time, wall time and money they stand for.

Counting, not rendering: a PDF's page count and page sizes come from its trailer and page
tree (pypdfium2 opens it and reads no page content), an image's size and frame count from
its header (Pillow). Files in a bucket are read through a ranged reader
(:meth:`~ocrpipe.storage.ObjectStore.open_reader`), so a 200 MB scanned PDF costs a few
requests, not a download. Files are recognised by their content as the splitter
recognises them (:mod:`ocrpipe.file_kinds`), and those it would reject are listed with the
reason it would give (empty, too large, unsupported, encrypted, over ``max_pages``).

A page's prompt is its image, ``ceil(w / 28) x ceil(h / 28)`` tokens for the image the
splitter sends (a PDF page at ``render_dpi``, an image as it is, both scaled down to
``render_longest_side``, a sliver padded to 1:8) after vLLM scales its longer side to at
most 1540 px, and the chat template's 12 tokens
(:func:`ocrpipe.page_geometry.planned_prompt_tokens`, the rules the renderer uses;
tests/test_plan.py checks them against the splitter's own renders). Its completion cannot be
known before OCR: the cost model
(:class:`ocrpipe.operations.bill.CostModel`) assumes a number per page, or takes the one
measured on a finished batch. Pages are grouped by shape (:func:`page_kind`: A4, Letter,
slide, receipt, sliver, other), the kinds whose prompt tokens differ.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ocrpipe import file_kinds
from ocrpipe.errors import BadInput, OcrpipeError
from ocrpipe.operations import backfill
from ocrpipe.operations.bill import CostModel
from ocrpipe.operations.submit import collect
from ocrpipe.page_geometry import MAX_ASPECT, planned_prompt_tokens
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectStore
from ocrpipe.topology import load_topology

COLD_START_S = 120.0  # a GPU instance's start (instance, image, vLLM, weights: 30-90 s seen)
DAY_S = 86400


PAGE_KINDS = ("A4", "Letter", "slide", "receipt", "sliver", "other")


def page_kind(width: float, height: float) -> str:
    """A4 (1:1.414), Letter (1:1.294), slide (landscape 4:3 to 16:9), receipt (portrait,
    2.5 to 8 times as tall as wide), sliver (beyond 1:8), or other."""
    if width <= 0 or height <= 0:
        return "other"
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT:
        return "sliver"
    if height > width and ratio >= 2.5:
        return "receipt"
    if width > height and 1.3 <= ratio <= 1.8:
        return "slide"
    if abs(ratio - math.sqrt(2)) <= 0.03:
        return "A4"
    if abs(ratio - 11 / 8.5) <= 0.03:
        return "Letter"
    return "other"


@dataclass
class FileCount:
    """One file, counted."""

    name: str
    size: int
    kind: str | None = None  # pdf, png, jpeg, tiff, webp
    pages: int = 0
    prompt_tokens: int = 0
    page_kinds: Counter[str] = field(default_factory=Counter)
    rejected: str | None = None  # the reason code the splitter would give
    why: str = ""


Opener = Callable[[], AbstractContextManager[IO[bytes]]]


def count_file(name: str, size: int, opener: Opener, settings: Settings) -> FileCount:
    """Count one file's pages, or say why the splitter would reject it."""
    found = FileCount(name, size)
    try:
        file_kinds.check_size(size, settings.max_input_bytes)
        with opener() as handle:
            head = handle.read(file_kinds.HEAD_BYTES)
            kind = file_kinds.classify(name, head)
            found.kind = kind.value
            handle.seek(0)
            sizes = _pdf_pages(handle) if kind is file_kinds.InputKind.PDF else _frames(handle)
        if len(sizes) > settings.max_pages:
            raise BadInput(
                f"{len(sizes)} pages, over the limit of {settings.max_pages}",
                reason="too_many_pages",
            )
    except BadInput as exc:
        found.rejected, found.why = exc.reason, exc.message
        return found
    image = kind is not file_kinds.InputKind.PDF
    found.pages = len(sizes)
    for width, height in sizes:
        if image and width * height > settings.max_image_pixels:
            found.rejected, found.why = "image_too_large", f"{width} x {height} px"
            found.pages, found.prompt_tokens, found.page_kinds = 0, 0, Counter()
            return found
        found.prompt_tokens += planned_prompt_tokens(
            width, height, settings.render_longest_side, settings.render_dpi, image=image
        )
        found.page_kinds[page_kind(width, height)] += 1
    return found


def _pdf_pages(handle: IO[bytes]) -> list[tuple[float, float]]:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(handle, password=None)
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) in (4, 5):  # FPDF_ERR_PASSWORD, FPDF_ERR_SECURITY
            raise BadInput("the PDF needs a password", reason="pdf_encrypted") from None
        raise BadInput(f"the PDF cannot be opened: {exc}", reason="pdf_corrupt") from None
    try:
        sizes = [pdf.get_page_size(index) for index in range(len(pdf))]
    finally:
        pdf.close()
    if not sizes:
        raise BadInput("the PDF has no pages", reason="pdf_no_pages")
    return sizes


def _frames(handle: IO[bytes]) -> list[tuple[float, float]]:
    """Every frame's size, taken as the first frame's (frames of one file rarely differ)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(handle) as image:
            frames = int(getattr(image, "n_frames", 1))
            return [(float(image.width), float(image.height))] * frames
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadInput(f"the image cannot be read: {exc}", reason="image_corrupt") from None


# --- where the files are ----------------------------------------------------------------


def local_files(paths: Sequence[Path], settings: Settings) -> Iterator[FileCount]:
    """Count local files and folders, walked and checked as ``submit`` walks and checks
    them; what ``submit`` would not upload is listed with its reason."""
    collected = collect(paths)
    for skipped in collected.skipped:
        yield FileCount(str(skipped.path), 0, rejected="not_submitted", why=skipped.why)
    for local in collected.files:
        yield count_file(local.name, local.size, _local_opener(local.path), settings)


def _local_opener(path: Path) -> Opener:
    @contextmanager
    def opened() -> Iterator[IO[bytes]]:
        with path.open("rb") as handle:
            yield handle

    return opened


def bucket_files(store: ObjectStore, uri: str, settings: Settings) -> Iterator[FileCount]:
    """Count the objects ``submit gs://BUCKET/PREFIX`` would submit (hidden ones and folder
    placeholders skipped), read in ranges, never downloaded."""
    for remote in backfill.find(store, [uri]):
        info = remote.source
        opener = _bucket_opener(store, remote.bucket, info.name, info.generation)
        try:
            yield count_file(remote.uri, info.size, opener, settings)
        except OcrpipeError as exc:  # vanished or unreadable between the listing and the read
            yield FileCount(remote.uri, info.size, rejected="unreadable", why=exc.message)


def _bucket_opener(store: ObjectStore, bucket: str, name: str, generation: int) -> Opener:
    @contextmanager
    def opened() -> Iterator[IO[bytes]]:
        handle = store.open_reader(bucket, name, generation)
        try:
            yield handle
        finally:
            handle.close()

    return opened


# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    files: tuple[FileCount, ...]
    model: CostModel
    retention_s: int  # how long the pages subscription keeps a message

    @property
    def counted(self) -> list[FileCount]:
        return [f for f in self.files if f.rejected is None]

    @property
    def rejected(self) -> list[FileCount]:
        return [f for f in self.files if f.rejected is not None]

    @property
    def pages(self) -> int:
        return sum(f.pages for f in self.counted)

    @property
    def prompt_tokens(self) -> int:
        return sum(f.prompt_tokens for f in self.counted)

    @property
    def completion_tokens(self) -> float:
        return self.model.completion_tokens * self.pages

    @property
    def page_kinds(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for found in self.counted:
            total.update(found.page_kinds)
        return total

    @property
    def gpu_seconds(self) -> float:
        return self.model.gpu_seconds(self.prompt_tokens, self.pages)

    @property
    def wall_seconds(self) -> float:
        """With every instance busy from the start: the GPU time shared out, plus a cold
        start."""
        if not self.pages:
            return 0.0
        return self.gpu_seconds / self.model.instances + COLD_START_S

    @property
    def cost(self) -> float:
        return self.gpu_seconds / 3600 * self.model.price_per_hour

    @property
    def cost_per_1000_pages(self) -> float | None:
        return self.cost / self.pages * 1000 if self.pages else None

    @property
    def outlives_retention(self) -> bool:
        """Whether the last pages would wait in the subscription longer than it keeps them
        (submitted at once, they wait about the whole wall time)."""
        return self.wall_seconds > self.retention_s

    def instances_for_retention(self) -> int:
        """GPU instances that would finish the batch within the retention."""
        budget = max(1.0, self.retention_s - COLD_START_S)
        return max(1, math.ceil(self.gpu_seconds / budget))

    def assumptions(self) -> list[str]:
        return [
            *self.model.assumptions(),
            "prompt tokens: each page's image at vLLM (ceil(w/28) x ceil(h/28) after its longer"
            " side is scaled to at most 1540 px) and the chat template's 12 tokens, as vLLM"
            " counted them (bench/prompt_tokens.py)",
            f"wall time: {self.model.instances} GPU instance(s) busy from the start, plus one"
            f" cold start ({COLD_START_S:.0f} s); idle minutes before scale-down are not"
            " counted",
            "frames of a TIFF or WebP are taken to be the size of its first",
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": len(self.files),
            "documents": len(self.counted),
            "pages": self.pages,
            "pages_by_kind": dict(sorted(self.page_kinds.items())),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": round(self.completion_tokens),
            "gpu_hours": round(self.gpu_seconds / 3600, 3),
            "gpu_instances": self.model.instances,
            "wall_hours": round(self.wall_seconds / 3600, 3),
            "cost": round(self.cost, 2),
            "cost_per_1000_pages": (
                None if self.cost_per_1000_pages is None else round(self.cost_per_1000_pages, 4)
            ),
            "retention_days": round(self.retention_s / DAY_S, 2),
            "outlives_retention": self.outlives_retention,
            "instances_for_retention": self.instances_for_retention(),
            "model": self.model.as_dict(),
            "assumptions": self.assumptions(),
            "rejected": [
                {"name": f.name, "reason": f.rejected, "why": f.why} for f in self.rejected
            ],
        }


def make_plan(files: Sequence[FileCount], model: CostModel) -> Plan:
    return Plan(tuple(files), model, load_topology().message_retention_seconds)
