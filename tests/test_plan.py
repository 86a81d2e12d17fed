"""``ocrpipe plan``: pages counted from headers, prompt tokens equal to what the splitter's
renders cost at vLLM, the cost model, the retention warning, and the command itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ocrpipe import cli
from ocrpipe.file_kinds import InputKind
from ocrpipe.operations.bill import (
    PROMPT_TOKENS_PER_REQUEST,
    CostModel,
    PageUsage,
    Usage,
    summarise,
)
from ocrpipe.operations.plan import bucket_files, count_file, local_files, make_plan, page_kind
from ocrpipe.page_geometry import planned_image_tokens, planned_prompt_tokens, vllm_image_tokens
from ocrpipe.settings import Settings
from ocrpipe.splitter.rendering.page_decoders import ImageSource, PdfSource
from ocrpipe.testing.inputs import (
    docx_like,
    encrypted_pdf,
    image_bytes,
    sized_pages_pdf,
    text_image,
)
from ocrpipe.testing.memory import MemoryStore
from ocrpipe.testing.pdfs import text_pdf

SETTINGS = Settings(input_bucket="in", work_bucket="work", output_bucket="out")
A4, LETTER = (595.28, 841.89), (612.0, 792.0)
PAGE_SIZES = [
    A4, LETTER, (842.0, 595.0), (960.0, 540.0), (226.0, 800.0), (1.0, 2000.0), (10.0, 10.0),
    (3000.0, 90.0),
]  # fmt: skip


@pytest.mark.parametrize(("width", "height"), PAGE_SIZES)
def test_a_pdf_pages_prompt_tokens_are_those_of_the_splitters_render(
    tmp_path: Path, width: float, height: float
) -> None:
    path = tmp_path / "page.pdf"
    path.write_bytes(sized_pages_pdf([(width, height)]))
    rendered = PdfSource(path).render(1, 1540, 200)
    assert planned_image_tokens(width, height, 1540, 200) == vllm_image_tokens(
        rendered.width, rendered.height
    )


@pytest.mark.parametrize(("width", "height"), [(40, 30), (1200, 400), (4000, 3000), (300, 5000)])
def test_an_images_prompt_tokens_are_those_of_the_splitters_render(
    tmp_path: Path, width: int, height: int
) -> None:
    path = tmp_path / "page.png"
    path.write_bytes(image_bytes([text_image("x", (width, height))], "PNG"))
    source = ImageSource(path, InputKind.PNG, max_pixels=SETTINGS.max_image_pixels)
    rendered = source.render(1, 1540, 200)
    assert planned_image_tokens(width, height, 1540, 200, image=True) == vllm_image_tokens(
        rendered.width, rendered.height
    )


def test_prompt_tokens_of_the_pages_vllm_counted() -> None:
    """docs/PERFORMANCE.md, "Prompt tokens per page kind": vLLM's own counts."""
    assert planned_prompt_tokens(*A4, 1540, 200) == PROMPT_TOKENS_PER_REQUEST == 2157
    assert planned_prompt_tokens(*LETTER, 1540, 200) == 2377
    assert planned_prompt_tokens(960.0, 540.0, 1540, 200) == 1717


def test_vllm_image_tokens_of_the_pages_the_design_names() -> None:
    assert planned_image_tokens(*A4, 1540, 200) == 2145
    assert planned_image_tokens(*LETTER, 1540, 200) == 2365
    # Never enlarged: an A6 receipt at 200 dpi is 828 x 1167 px, not 1093 x 1540.
    assert planned_image_tokens(298.0, 420.0, 1540, 200) == 30 * 42


@pytest.mark.parametrize(
    ("size", "kind"),
    [(A4, "A4"), (LETTER, "Letter"), ((842.0, 595.0), "slide"), ((960.0, 540.0), "slide"),
     ((226.0, 800.0), "receipt"), ((1.0, 2000.0), "sliver"), ((500.0, 500.0), "other")],
)  # fmt: skip
def test_page_kinds(size: tuple[float, float], kind: str) -> None:
    assert page_kind(*size) == kind


def opener(data: bytes) -> Any:
    def opened() -> Any:
        import io
        from contextlib import nullcontext

        return nullcontext(io.BytesIO(data))

    return opened


def test_files_are_counted_or_rejected_as_the_splitter_would() -> None:
    pdf = count_file("a.pdf", 10, opener(sized_pages_pdf([A4, A4, LETTER])), SETTINGS)
    assert (pdf.kind, pdf.pages, pdf.rejected) == ("pdf", 3, None)
    assert pdf.prompt_tokens == 2157 * 2 + 2377 and dict(pdf.page_kinds) == {"A4": 2, "Letter": 1}
    tiff = image_bytes([text_image("a"), text_image("b")], "TIFF", save_all=True)
    frames = count_file("scan.tif", len(tiff), opener(tiff), SETTINGS)
    assert (frames.kind, frames.pages) == ("tiff", 2)
    cases = {
        "empty.pdf": (b"", "empty_file"),
        "letter.docx": (docx_like(), "unsupported_type"),
        "locked.pdf": (encrypted_pdf("secret"), "pdf_encrypted"),
        "big.pdf": (sized_pages_pdf([A4] * 3), "too_many_pages"),
        "junk.pdf": (b"%PDF-1.7\nnot really", "pdf_corrupt"),
    }
    few = SETTINGS.model_copy(update={"max_pages": 2})
    for name, (data, reason) in cases.items():
        found = count_file(name, len(data), opener(data), few)
        assert (found.rejected, found.pages) == (reason, 0), (name, found)


def test_a_folder_is_walked_like_submit_and_a_bucket_read_in_ranges(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.pdf").write_bytes(text_pdf(4)[0])
    (tmp_path / ".hidden.pdf").write_bytes(text_pdf(1)[0])
    found = list(local_files([tmp_path], SETTINGS))
    assert [(f.name, f.pages) for f in found] == [("sub/a.pdf", 4)]
    store = MemoryStore()
    store.put("corpus", "scans/a.pdf", text_pdf(3)[0])
    store.put("corpus", "scans/", b"")  # a folder placeholder
    store.put("corpus", "other/b.pdf", text_pdf(2)[0])
    counted = list(bucket_files(store, "gs://corpus/scans/", SETTINGS))
    assert [(f.name, f.pages) for f in counted] == [("gs://corpus/scans/a.pdf", 3)]
    assert store.reads_opened == [("corpus", "scans/a.pdf")]


def test_the_published_model_gives_the_design_figure() -> None:
    """0.6 A4 pages/s on an L4 at $1.42 an hour: about $0.66 per 1,000 pages."""
    model = CostModel.published(SETTINGS)
    files = [count_file("a.pdf", 10, opener(sized_pages_pdf([A4] * 10)), SETTINGS)]
    plan = make_plan(files, model)
    assert plan.gpu_seconds == pytest.approx(10 / 0.6)
    assert plan.cost_per_1000_pages == pytest.approx(1000 / 0.6 / 3600 * 1.42)


def test_a_measured_batch_gives_its_own_model() -> None:
    usage = Usage("m", 0.2, 1, prompt_tokens=2000, completion_tokens=500, ocr_seconds=32.0)
    total = summarise([PageUsage(n, "done", usage) for n in range(1, 11)], SETTINGS, documents=1)
    model = CostModel.measured(total, "batch1/", instances=3)
    # 320 s of requests open, 32 at a time on one instance: 10 s for 25,000 tokens.
    assert model.seconds_per_token == pytest.approx(10 / 25_000)
    assert (model.completion_tokens, model.instances) == (500, 3)
    with pytest.raises(ValueError, match="no page"):
        CostModel.measured(summarise([], SETTINGS, documents=0), "empty/")


def test_a_backlog_longer_than_the_retention_is_warned_about() -> None:
    """3 million A4 pages: 58 days on one L4 (over the 31-day retention), 19 on three."""
    pages = count_file("a.pdf", 10, opener(sized_pages_pdf([A4])), SETTINGS)
    pages.pages, pages.prompt_tokens = 3_000_000, 3_000_000 * 2157
    one = make_plan([pages], CostModel.published(SETTINGS, instances=1))
    assert one.outlives_retention and one.instances_for_retention() == 2
    three = make_plan([pages], CostModel.published(SETTINGS, instances=3))
    assert not three.outlives_retention


def test_the_command_prints_the_plan_and_its_assumptions(tmp_path: Path) -> None:
    (tmp_path / "a.pdf").write_bytes(sized_pages_pdf([A4] * 6))
    (tmp_path / "notes.docx").write_bytes(docx_like())
    env = {"OCRPIPE_GPU_INSTANCES": "3"}
    result = CliRunner().invoke(cli.app, ["plan", str(tmp_path)], env=env)
    assert result.exit_code == 0, result.output
    assert "1 document(s), 6 page(s): 12,942 prompt tokens" in result.output
    assert "with 3 GPU instance(s)" in result.output
    assert "notes.docx: would be rejected (unsupported_type)" in result.output
    assert "0.6 pages/s per GPU instance" in result.output
    shown = CliRunner().invoke(cli.app, ["plan", str(tmp_path), "--json", "--gpus", "2"], env=env)
    plan = json.loads(shown.stdout)
    assert (plan["pages"], plan["gpu_instances"], plan["pages_by_kind"]) == (6, 2, {"A4": 6})
    assert [r["reason"] for r in plan["rejected"]] == ["unsupported_type"]


def test_the_command_refuses_what_is_not_there_and_what_cannot_be_processed(
    tmp_path: Path,
) -> None:
    missing = CliRunner().invoke(cli.app, ["plan", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "No such file or folder" in missing.output
    (tmp_path / "notes.docx").write_bytes(docx_like())
    nothing = CliRunner().invoke(cli.app, ["plan", str(tmp_path)])
    assert nothing.exit_code == 1
    offline = {"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"}
    not_a_bucket = CliRunner().invoke(cli.app, ["plan", "gs://"], env=offline)
    assert not_a_bucket.exit_code == 2 and "is not gs://BUCKET" in not_a_bucket.output
