"""Figures as files, through the real worker app (Starlette's test client, real push
envelopes, an in-memory store) with a scripted OCR server that answers like LightOnOCR's bbox
model: ``![image](image_N.png)x1,y1,x2,y2`` where a page has a figure, coordinates
normalised to 0-1000 on the page image it was sent."""

from __future__ import annotations

import base64
import io
import json
import random
import string
from typing import Any

import pytest
from PIL import Image, ImageDraw
from starlette.testclient import TestClient

from ocr_worker.app import create_app
from ocrpipe import naming, records
from ocrpipe.messages import PageMessage
from ocrpipe.naming import DocumentRef
from ocrpipe.operations.bill import parse_pages
from ocrpipe.settings import Settings
from ocrpipe.testing.memory import MemoryPublisher, MemoryStore
from ocrpipe.testing.pushes import WORKER_SETTINGS as PLAIN
from ocrpipe.testing.pushes import push_envelope, ready_document
from ocrpipe.worker.figure_refs import MAX_FIGURES
from tests.fakes import RecordingStore, ScriptedOcrServer, completion

BBOX_MODEL = "lightonai/LightOnOCR-2-1B-bbox"
# The contract tests' settings, serving the bbox model (its entry gives ocr_figure_boxes).
SETTINGS = Settings(**{**PLAIN.model_dump(exclude={"ocr_figure_boxes"}), "ocr_model": BBOX_MODEL})
WIDTH, HEIGHT = 1000, 1400
RED = (220, 30, 30)
BLUE = (30, 30, 220)


def page_image(fmt: str = "PNG", size: tuple[int, int] = (WIDTH, HEIGHT)) -> bytes:
    """A white page with a red block at normalised (100,100)-(500,400) and a blue one at
    (600,700)-(900,900)."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.rectangle((w * 0.1, h * 0.1, w * 0.5 - 1, h * 0.4 - 1), fill=RED)
    draw.rectangle((w * 0.6, h * 0.7, w * 0.9 - 1, h * 0.9 - 1), fill=BLUE)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def prepare(
    store: MemoryStore, image: bytes, mime: str = "image/png", name: str = "docs/fig.pdf"
) -> tuple[DocumentRef, PageMessage]:
    doc, (message,) = ready_document(store, 1, name=name, image=lambda _: image, mime=mime)
    return doc, message


def deliver(
    store: MemoryStore, message: PageMessage, reply: str, settings: Settings = SETTINGS
) -> ScriptedOcrServer:
    server = ScriptedOcrServer([completion(reply)])
    app = create_app(
        settings,
        store=store,
        ocr=server.client(model=settings.ocr_model),
        publisher=MemoryPublisher(),
    )
    with TestClient(app) as client:
        assert client.post("/", json=push_envelope(message)).status_code == 204
    return server


def read_json(store: MemoryStore, name: str) -> Any:
    return json.loads(store.read("out", name))


def pixels(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


REPLY = (
    "# Quarterly report\n\n"
    "Revenue by region:\n\n"
    "![image](image_1.png)100,100,500,400\n\n"
    "Figure 1: revenue.\n\n"
    "![image](image_2.png) 600,700,900,900\n\n"
    "The end."
)


def test_figures_are_cropped_written_beside_the_page_and_linked_in_place() -> None:
    store = MemoryStore()
    doc, message = prepare(store, page_image())
    deliver(store, message, REPLY)

    page = store.read("out", naming.page_markdown_name(doc, 1)).decode()
    assert page == (
        "# Quarterly report\n\nRevenue by region:\n\n"
        "![image](00001.figure-1.png)\n\nFigure 1: revenue.\n\n"
        "![image](00001.figure-2.png)\n\nThe end."
    )
    first = pixels(store.read("out", naming.page_figure_name(doc, 1, 1, "png")))
    assert first.size == (400, 420)  # (100..500) x (140..560) of the 1000 x 1400 page
    assert first.getpixel((200, 210)) == RED and first.getpixel((0, 0)) == RED
    second = pixels(store.read("out", naming.page_figure_name(doc, 1, 2, "png")))
    assert second.size == (300, 280) and second.getpixel((150, 140)) == BLUE

    document = store.read("out", naming.document_markdown_name(doc)).decode()
    assert "![image](pages/00001.figure-1.png)" in document
    assert "![image](pages/00001.figure-2.png)" in document
    assert "100,100,500,400" not in document and "600,700,900,900" not in document

    index = read_json(store, naming.document_index_name(doc))
    assert index["figures"] == [
        {
            "page": 1,
            "figure": 1,
            "name": naming.page_figure_name(doc, 1, 1, "png"),
            "box": [100, 140, 500, 560],
            "box_normalized": [100, 100, 500, 400],
            "image_size": [WIDTH, HEIGHT],
        },
        {
            "page": 1,
            "figure": 2,
            "name": naming.page_figure_name(doc, 1, 2, "png"),
            "box": [600, 980, 900, 1260],
            "box_normalized": [600, 700, 900, 900],
            "image_size": [WIDTH, HEIGHT],
        },
    ]
    provenance = index["pages"][0]["provenance"]
    assert provenance["figures"] == 2 and provenance["figures_not_cropped"] == []
    assert provenance["model"] == BBOX_MODEL
    (billed,) = parse_pages(store.read("out", naming.document_index_name(doc)))
    assert billed.usage is not None and billed.usage.attempts == 1  # ocrpipe report reads it
    span = index["pages"][0]
    assert document.encode()[span["start"] : span["end"]].decode().startswith("# Quarterly")


def test_a_jpeg_page_gives_jpeg_figures() -> None:
    store = MemoryStore()
    doc, message = prepare(store, page_image("JPEG"), "image/jpeg")
    deliver(store, message, REPLY)
    page = store.read("out", naming.page_markdown_name(doc, 1)).decode()
    assert "![image](00001.figure-1.jpg)" in page
    info = store.stat("out", naming.page_figure_name(doc, 1, 1, "jpg"))
    assert info is not None and info.content_type == "image/jpeg"
    assert pixels(store.read("out", info.name)).format == "JPEG"


HOSTILE = [
    ("![image](image_1.png)100,100,1001,400", "box_out_of_range"),
    ("![image](image_1.png)-5,100,500,400", "box_out_of_range"),
    ("![image](image_1.png)100,100,500,99999999999999999999", "box_out_of_range"),
    ("![image](image_1.png)500,100,100,400", "box_inverted"),
    ("![image](image_1.png)100,400,500,100", "box_inverted"),
    ("![image](image_1.png)100,100,100,400", "box_empty"),
    ("![image](image_1.png)100,100,500", "box_malformed"),
    ("![image](image_1.png)", "no_box"),
]


@pytest.mark.parametrize(("reference", "reason"), HOSTILE)
def test_a_reference_that_cannot_be_cropped_is_left_as_text_and_reported(
    reference: str, reason: str
) -> None:
    store = RecordingStore()
    doc, message = prepare(store, page_image())
    reply = f"Before.\n\n{reference}\n\nAfter."
    deliver(store, message, reply)
    assert store.read("out", naming.page_markdown_name(doc, 1)).decode() == reply
    assert not [n for n in store.names("out") if ".figure-" in n]
    index = read_json(store, naming.document_index_name(doc))
    assert index["figures"] == []
    provenance = index["pages"][0]["provenance"]
    assert provenance["figures"] == 0
    assert provenance["figures_not_cropped"] == [
        {"reference": 1, "target": "image_1.png", "reason": reason}
    ]


@pytest.mark.parametrize(
    "target",
    ["../../../../etc/passwd", "/abs/evil.png", "a/../../b.png", "https://x.example/i.png",
     "..%2F..%2Fx.png", "image_1.png?x=../../y"],
)  # fmt: skip
def test_a_target_with_path_segments_never_names_a_file(target: str) -> None:
    store = RecordingStore()
    doc, message = prepare(store, page_image())
    deliver(store, message, f"![image]({target})100,100,500,400")
    figures = [n for b, n in store.writes if b == "out" and ".figure-" in n]
    assert figures == [naming.page_figure_name(doc, 1, 1, "png")]
    assert {b for b, _ in store.writes} == {"in", "out", "work"}  # prepare's and the worker's
    page = store.read("out", naming.page_markdown_name(doc, 1)).decode()
    assert page == "![image](00001.figure-1.png)"
    assert all(
        n.startswith(naming.output_prefix(doc)) or n.startswith(naming.name_key(doc.name) + "/@")
        for b, n in store.writes
        if b == "out"
    )


def test_a_repeated_reference_links_one_figure() -> None:
    store = RecordingStore()
    doc, message = prepare(store, page_image())
    reply = "![image](image_1.png)100,100,500,400\n\nagain: ![image](image_1.png)100,100,500,400"
    deliver(store, message, reply)
    page = store.read("out", naming.page_markdown_name(doc, 1)).decode()
    assert page == "![image](00001.figure-1.png)\n\nagain: ![image](00001.figure-1.png)"
    assert [n for _, n in store.writes if ".figure-" in n] == [
        naming.page_figure_name(doc, 1, 1, "png")
    ]


def test_a_thousand_references_crop_at_most_the_limit_and_report_the_rest() -> None:
    store = RecordingStore()
    doc, message = prepare(store, page_image())
    # Each reference has alt text of its own: rows that differ only in their digits are a
    # repetition loop, which the OCR client cuts before the figures are looked at.
    alts = ["".join("abcdefghij"[int(d)] for d in f"{n:04d}") for n in range(1000)]
    refs = [
        f"![{alt}](image_{n}.png){n % 500},{n // 500},{n % 500 + 9},{n // 500 + 9}"
        for n, alt in enumerate(alts)
    ]
    deliver(store, message, "\n".join(refs))
    written = [n for _, n in store.writes if ".figure-" in n]
    assert len(written) == MAX_FIGURES == len(set(written))
    page = store.read("out", naming.page_markdown_name(doc, 1)).decode().splitlines()
    assert page[:2] == ["![aaaa](00001.figure-1.png)", "![aaab](00001.figure-2.png)"]
    assert page[MAX_FIGURES:] == refs[MAX_FIGURES:]  # the rest, as the model wrote them
    metadata = store.stat("out", naming.page_markdown_name(doc, 1)).metadata  # type: ignore[union-attr]
    assert sum(len(k) + len(v) for k, v in metadata.items()) < 8 * 1024  # GCS's limit
    provenance = read_json(store, naming.document_index_name(doc))["pages"][0]["provenance"]
    assert provenance["figures"] == MAX_FIGURES
    assert provenance["figures_not_cropped_count"] == 1000 - MAX_FIGURES
    assert {r["reason"] for r in provenance["figures_not_cropped"]} == {"too_many_figures"}
    assert len(provenance["figures_not_cropped"]) == records.MAX_NOT_CROPPED_LISTED


def test_a_long_hostile_target_is_reported_cut_short() -> None:
    store = MemoryStore()
    doc, message = prepare(store, page_image())
    letters = random.Random(3)  # not one letter 500 times: that is a loop, cut before
    target = "".join(letters.choice(string.ascii_lowercase) for _ in range(500))
    deliver(store, message, f"![image]({target})1,2,3")
    provenance = read_json(store, naming.document_index_name(doc))["pages"][0]["provenance"]
    assert provenance["figures_not_cropped"] == [
        {"reference": 1, "target": target[:100], "reason": "box_malformed"}
    ]


def test_a_page_image_that_cannot_be_decoded_keeps_its_references_as_text() -> None:
    store = MemoryStore()
    doc, message = prepare(store, b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    deliver(store, message, REPLY)
    assert store.read("out", naming.page_markdown_name(doc, 1)).decode() == REPLY
    provenance = read_json(store, naming.document_index_name(doc))["pages"][0]["provenance"]
    assert [r["reason"] for r in provenance["figures_not_cropped"]] == [
        "page_image_unreadable",
        "page_image_unreadable",
    ]


def test_a_later_delivery_keeps_the_first_figure_and_the_record_describes_the_file() -> None:
    store = MemoryStore()
    doc, message = prepare(store, page_image())
    # A first attempt wrote its figure, then the delivery failed before the page's Markdown.
    deliver(store, message, "![image](image_1.png)100,100,500,400")
    store.delete("out", naming.page_markdown_name(doc, 1))
    store.delete("out", naming.document_markdown_name(doc))
    store.delete("out", naming.document_index_name(doc))
    before = store.read("out", naming.page_figure_name(doc, 1, 1, "png"))
    deliver(store, message, "![image](image_1.png)600,700,900,900")  # another sample
    assert store.read("out", naming.page_figure_name(doc, 1, 1, "png")) == before
    (figure,) = read_json(store, naming.document_index_name(doc))["figures"]
    assert figure["box_normalized"] == [100, 100, 500, 400]  # the file's, not the reply's


def test_without_a_bbox_model_the_reply_is_written_byte_for_byte() -> None:
    plain = PLAIN
    assert not plain.ocr_figure_boxes and plain.ocr_model == "lightonai/LightOnOCR-2-1B"
    store = RecordingStore()
    doc, message = prepare(store, page_image())
    deliver(store, message, REPLY, plain)
    page = store.stat("out", naming.page_markdown_name(doc, 1))
    assert page is not None and store.read("out", page.name).decode() == REPLY
    assert set(page.metadata) == {records.USAGE_KEY}
    assert not [n for _, n in store.writes if ".figure-" in n]
    index = read_json(store, naming.document_index_name(doc))
    assert "figures" not in index
    assert set(index["pages"][0]["provenance"]) == {
        "model", "temperature", "finish_reason", "attempts", "prompt_tokens",
        "completion_tokens", "ocr_seconds",
    }  # fmt: skip
    document = store.read("out", naming.document_markdown_name(doc)).decode()
    assert document == f"<!-- page 1 -->\n\n{REPLY}\n"


def test_the_setting_overrides_the_model_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCRPIPE_OCR_MODEL", BBOX_MODEL)
    monkeypatch.setenv("OCRPIPE_OCR_FIGURE_BOXES", "false")
    assert Settings().ocr_figure_boxes is False
    monkeypatch.setenv("OCRPIPE_OCR_MODEL", "someone/fine-tuned-bbox")
    monkeypatch.setenv("OCRPIPE_OCR_FIGURE_BOXES", "true")
    assert Settings().ocr_figure_boxes is True


def test_what_the_server_was_sent_is_the_page_image_alone() -> None:
    store = MemoryStore()
    image = page_image()
    _, message = prepare(store, image)
    server = deliver(store, message, REPLY)
    (request,) = server.requests
    assert request["model"] == BBOX_MODEL
    (part,) = request["messages"][0]["content"]  # type: ignore[index]
    assert base64.b64decode(part["image_url"]["url"].split(",", 1)[1]) == image
