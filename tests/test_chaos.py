"""Chaos: 20 documents, over 200 pages, through the local stack while the OCR server fails
on purpose (a 30 s cold start, then 20% 503, 5% hangs, 5% connection resets, 5% repetition
loops), the worker is killed and restarted twice, and finalize events and page messages
are re-sent by hand. The result must be exactly what a clean run gives.

How "no output object written twice" is checked: the output bucket keeps every version
during the chaos run, so each write leaves a (name, generation) behind; no name may have
two, none may be outside the chaos run's documents, and their number must equal the
successful uploads fake-gcs-server logged (a second write of one object is a 412, or an
extra version if a precondition were missing).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ocrpipe import naming
from ocrpipe.local.stack import NOTIFICATIONS_TOPIC, LocalStack, fault_stack
from ocrpipe.messages import PageMessage
from ocrpipe.naming import DocumentRef
from ocrpipe.pubsub import OutgoingMessage, PubSubPublisher, subscriber_client
from ocrpipe.storage import GcsStore
from ocrpipe.testing.pdfs import text_pdf
from ocrpipe.testing.waiting import stack_activity, stack_alive, wait_for
from tests.conftest import output_uploads, wait_for_object, wait_until_announced

pytestmark = pytest.mark.e2e

DOCUMENTS = 20
PAGES = [7 + (i * 5) % 11 for i in range(DOCUMENTS)]  # 7..17 pages, 240 in all
FAULTS = ["--p503", "0.2", "--phang", "0.05", "--preset", "0.05", "--plength", "0.05",
          "--cold-seconds", "30", "--hang-seconds", "3600"]  # fmt: skip


SEED = 11


@pytest.fixture(scope="module")
def chaos_stack() -> Iterator[LocalStack]:
    stack = fault_stack(
        seed=SEED,
        gcs_log_level="info",
        # Hangs must cost seconds, not minutes: the client gives up on a request after 4 s.
        overrides={"ocr_request_timeout_s": 4},
    )
    with stack:
        yield stack


def upload_all(stack: LocalStack, store: GcsStore, prefix: str) -> dict[str, int]:
    """Upload the corpus under ``prefix``; return name -> generation."""
    bucket = store.client.bucket(stack.settings.input_bucket)
    generations = {}
    for index, pages in enumerate(PAGES):
        data, _ = text_pdf(pages, seed=index, lines=4)
        blob = bucket.blob(f"{prefix}doc-{index:02d}.pdf")
        blob.upload_from_string(data, content_type="application/pdf")
        generations[blob.name] = int(blob.generation)
    return generations


def documents(stack: LocalStack, store: GcsStore, generations: dict[str, int]) -> list[bytes]:
    settings = stack.settings
    return [
        store.read(settings.output_bucket,
                   naming.document_markdown_name(DocumentRef(settings.input_bucket, name, gen)))
        for name, gen in sorted(generations.items())
    ]  # fmt: skip


def resend_finalize(stack: LocalStack, store: GcsStore, name: str) -> None:
    """Publish a duplicate of the GCS notification, as a redelivered event would be (as GCS
    publishes it: the gcs-agent identity)."""
    settings = stack.settings_for("gcs-agent")
    blob = store.client.bucket(settings.input_bucket).get_blob(name)
    data = json.dumps(
        {
            "kind": "storage#object",
            "bucket": settings.input_bucket,
            "name": name,
            "generation": str(blob.generation),
            "size": str(blob.size),
        }
    ).encode()
    attributes = {"eventType": "OBJECT_FINALIZE", "bucketId": settings.input_bucket,
                  "objectId": name, "objectGeneration": str(blob.generation),
                  "payloadFormat": "JSON_API_V1"}  # fmt: skip
    publisher = PubSubPublisher.connect(stack.project, settings.pubsub_emulator_host)
    publisher.publish_all(NOTIFICATIONS_TOPIC, [OutgoingMessage(data, attributes)])


def resend_page(stack: LocalStack, store: GcsStore, name: str, generation: int, page: int,
                page_count: int) -> None:  # fmt: skip
    settings = stack.settings
    doc = DocumentRef(settings.input_bucket, name, generation)
    image = naming.page_image_name(doc.doc_id, page, "png")
    message = PageMessage(
        doc_id=doc.doc_id, source_bucket=doc.bucket, source_name=name,
        source_generation=generation, page=page, page_count=page_count,
        image_uri=f"gs://{settings.work_bucket}/{image}", image_mime="image/png",
    )  # fmt: skip
    publisher = PubSubPublisher.connect(stack.project, settings.pubsub_emulator_host)
    publisher.publish_all(
        settings.pages_topic, [OutgoingMessage(message.encode(), message.attributes())]
    )


def dead_letters(stack: LocalStack) -> int:
    settings = stack.settings
    subscriber = subscriber_client(settings.pubsub_emulator_host)
    path = subscriber.subscription_path(stack.project, settings.dead_letter_subscription)
    response = subscriber.pull(subscription=path, max_messages=100, timeout=5)
    subscriber.close()
    return len(response.received_messages)


def chaos_pages(store: GcsStore, bucket: str) -> int:
    """Pages of the chaos run written so far."""
    pages = (o.name for o in store.list(bucket, "chaos/") if "/pages/" in o.name)
    return sum(1 for name in pages if name.endswith(".md"))


def wait_for_pages(stack: LocalStack, store: GcsStore, count: int) -> int:
    """Until the chaos run has written at least ``count`` pages; how many it has."""
    bucket = stack.settings.output_bucket
    written, _ = wait_for(
        lambda: (chaos_pages(store, bucket), stack_activity(stack)),
        lambda reading: reading[0] >= count,
        what=f"{count} pages of the chaos run",
        alive=stack_alive(stack),
    )
    return written


def versions(gcs_url: str, bucket: str) -> set[tuple[str, int]]:
    """Every (name, generation) in ``bucket``, past versions included. (Over HTTP: the
    client library sends ``versions=True``, which fake-gcs-server does not read as true.)"""
    found: set[tuple[str, int]] = set()
    query: dict[str, str] = {"versions": "true"}
    while True:
        response = httpx.get(f"{gcs_url}/storage/v1/b/{bucket}/o", params=query, timeout=60)
        response.raise_for_status()
        listing = response.json()
        found |= {(item["name"], int(item["generation"])) for item in listing.get("items", [])}
        if "nextPageToken" not in listing:
            return found
        query["pageToken"] = listing["nextPageToken"]


def test_chaos_gives_exactly_the_clean_result(chaos_stack: LocalStack, tmp_path: Path) -> None:
    stack = chaos_stack
    settings = stack.settings
    store = GcsStore.connect(stack.project, settings.storage_emulator_host)
    ocr_stats = f"http://127.0.0.1:{stack.ports.ocr}/stats"
    assert stack.log_dir is not None

    # 1. A clean run: the same fault server with no faults.
    started = time.monotonic()
    clean = upload_all(stack, store, "clean/")
    for name in clean:
        assert wait_until_announced(stack, store, name).state == "done"
    clean_seconds = time.monotonic() - started
    clean_requests = httpx.get(ocr_stats).json()["total"]

    # 2. The chaos run: restart the OCR server with faults and a cold start.
    stack.use_fault_server(*FAULTS, seed=SEED, wait_healthy=False)
    # The output bucket keeps every version from here on, so each successful upload of the
    # chaos run leaves a (name, generation) behind, and one object written twice (or a
    # write outside the chaos documents) is named, not only counted.
    gcs_url = stack.admin_settings.storage_emulator_host
    assert gcs_url is not None
    output = GcsStore.connect(stack.project, gcs_url).client.bucket(settings.output_bucket)
    output.versioning_enabled = True
    output.patch()
    before = versions(gcs_url, settings.output_bucket)
    log_offset = (stack.log_dir / "gcs.log").stat().st_size
    started = time.monotonic()
    chaos = upload_all(stack, store, "chaos/")

    # Meddling, each step once the run has reached it (a fixed schedule meddled with a run
    # that a busy machine had not yet started, or one that a fast one had finished).
    for index in (0, 5, 11):  # duplicate finalize events, once the document is split
        name = f"chaos/doc-{index:02d}.pdf"
        manifest = naming.manifest_name(DocumentRef(settings.input_bucket, name, chaos[name]))
        wait_for_object(stack, store, settings.output_bucket, manifest)
        resend_finalize(stack, store, name)
    killed_at = []
    for more in (20, 40):  # the worker killed twice while pages flow, after the cold start
        killed_at.append(wait_for_pages(stack, store, more))
        stack.kill("worker")
        stack.start_worker()
        if more == 20:
            for index, page in ((1, 1), (2, 3), (7, 2)):  # duplicate page messages
                name = f"chaos/doc-{index:02d}.pdf"
                resend_page(stack, store, name, chaos[name], page, PAGES[index])
    assert killed_at[-1] < sum(PAGES), "the run was over before the worker was killed"
    finals = {name: wait_until_announced(stack, store, name) for name in chaos}
    chaos_seconds = time.monotonic() - started
    stats = httpx.get(ocr_stats).json()

    # Every document is complete and equals the clean run's, byte for byte.
    assert {f.state for f in finals.values()} == {"done"}, finals
    assert documents(stack, store, chaos) == documents(stack, store, clean)

    # Every page's Markdown exists exactly once; no page failed.
    for name, generation in chaos.items():
        doc = DocumentRef(settings.input_bucket, name, generation)
        listed = [o.name for o in store.list(settings.output_bucket, naming.pages_prefix(doc))]
        index = int(name[-6:-4])
        assert sorted(listed) == [naming.page_markdown_name(doc, n)
                                  for n in range(1, PAGES[index] + 1)]  # fmt: skip

    # Nothing was dead-lettered.
    assert dead_letters(stack) == 0

    # No output object was written twice: successful uploads == objects written.
    gcs_log = stack.log_dir / "gcs.log"
    meddler_done_uploads = output_uploads([(gcs_log, log_offset)], settings.output_bucket)
    written = versions(gcs_url, settings.output_bucket) - before
    chaos_prefixes = tuple(naming.document_prefix(name) for name in chaos)
    assert [name for name, _ in written if not name.startswith(chaos_prefixes)] == []
    twice = Counter(name for name, _ in written)
    assert {name: n for name, n in twice.items() if n > 1} == {}, "written more than once"
    assert meddler_done_uploads["200"] == len(written)

    figures = {
        "pages": sum(PAGES), "documents": DOCUMENTS,
        "clean_seconds": round(clean_seconds, 1), "clean_ocr_requests": clean_requests,
        "chaos_seconds": round(chaos_seconds, 1), "chaos_ocr_requests": stats["total"],
        "chaos_outcomes": {k: v for k, v in stats.items() if k not in ("total",)},
        "lost_create_races_412": meddler_done_uploads.get("412", 0),
    }  # fmt: skip
    (tmp_path / "chaos.json").write_text(json.dumps(figures, indent=2))
    print("chaos figures:", json.dumps(figures))
    assert stats["total"] > sum(PAGES)  # the faults really happened
    assert stats["503"] > 0 and stats["reset"] > 0 and stats["hang"] > 0 and stats["length"] > 0
