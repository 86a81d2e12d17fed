"""The whole local stack with the real vLLM server as its OCR server (what ``ocrpipe up
--ocr-url`` runs): a PDF dropped in the input bucket ends ``done``, and the provenance the
worker records is vLLM's own token counts."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from ocrpipe import naming
from ocrpipe.local.stack import LocalStack, free_ports
from ocrpipe.naming import DocumentRef
from ocrpipe.storage import GcsStore
from ocrpipe.testing.pdfs import text_pdf
from ocrpipe.testing.tiny_lightonocr import TEMPLATE_TOKENS
from ocrpipe.testing.vllm_server import VllmServer
from tests.conftest import unique_name, wait_until_finished
from tests.test_vllm_contract import A4, image_tokens

pytestmark = [pytest.mark.vllm, pytest.mark.e2e]


def test_a_pdf_is_done_through_vllm_with_vllms_token_counts(vllm: VllmServer) -> None:
    generated = vllm.metric("vllm:generation_tokens_total")
    prompted = vllm.metric("vllm:prompt_tokens_total")
    stack = LocalStack(
        ports=free_ports(),
        ocr_url=vllm.url,
        overrides={"ocr_model": vllm.model_id},
        bucket_suffix=f"-{uuid.uuid4().hex[:6]}",
    )
    with stack:
        settings = stack.settings
        gcs = GcsStore.connect(stack.project, settings.storage_emulator_host)
        data, _ = text_pdf(2, seed=11)  # A4 pages
        name = unique_name("through-vllm")
        blob = gcs.client.bucket(settings.input_bucket).blob(name)
        blob.upload_from_string(data, content_type="application/pdf")
        status = wait_until_finished(stack, gcs, name, on_wait=vllm.raise_if_exited)
        assert status.state == "done", status
        assert (status.page_count, status.done, status.failed) == (2, 2, 0)

        doc = DocumentRef(settings.input_bucket, name, int(blob.generation))
        index = json.loads(gcs.read(settings.output_bucket, naming.document_index_name(doc)))
        document = gcs.read(settings.output_bucket, naming.document_markdown_name(doc)).decode()

    provenance = [page["provenance"] for page in index["pages"]]
    assert [p["model"] for p in provenance] == [vllm.model_id] * 2
    assert [p["finish_reason"] for p in provenance] == ["stop"] * 2
    # One image per attempt; the worker's bill is vLLM's count, not an estimate.
    assert all(
        p["prompt_tokens"] == p["attempts"] * (image_tokens(*A4) + TEMPLATE_TOKENS)
        for p in provenance
    ), provenance
    assert sum(p["prompt_tokens"] for p in provenance) == (
        vllm.metric("vllm:prompt_tokens_total") - prompted
    )
    assert sum(p["completion_tokens"] for p in provenance) == (
        vllm.metric("vllm:generation_tokens_total") - generated
    )
    assert [int(m) for m in re.findall(r"<!-- page (\d+) -->", document)] == [1, 2]
