"""What a batch cost: each page's usage from ``document.json``, summed, and the GPU time and
money it stands for (pure: parse, sum, estimate; ``ocrpipe report`` does the I/O).

Only the latest finished generation of each document counts (the one ``ocrpipe get``
fetches, :meth:`DocumentObjects.latest_finished`). Its ``document.json`` gives every page's
state and, where the worker recorded it, its ``provenance``: tokens, OCR seconds, attempts
and the temperature kept. A page without provenance (an older record, a page that failed to
render, no ``document.json`` at all) counts as *usage unknown*; it is in the page counts,
not in the sums nor the estimates.

The work that left no page result is counted too, from the generation's attempt records
(:mod:`ocrpipe.records`, read from the listing's metadata): every delivery the worker nacked
(the OCR server down, timeouts, a budget spent on loops) with what its requests cost, and
every page ``retry --failed-only`` queued again, with the cost of the error record it
deleted (counted once, and only once ``document.json`` no longer describes that record).
A document rejected as a whole is named apart from one that is not finished: it cost no OCR.

GPU time cannot be read off the pages: each page's ``ocr_seconds`` is the time its requests
were open, and a GPU serves many at once (vLLM batches up to ``--max-num-seqs``, 32 here), so
the seconds overlap. Two estimators, both over the pages with usage:

* **concurrency**: ``sum(ocr_seconds) / requests per GPU``: GPU instance-seconds, since
  each instance serving its full batch for ``T`` s holds ``requests per GPU x T`` request
  seconds, whatever the number of instances. Right when every GPU's batch was full the whole
  time; too low when it was not (a small batch, a slow feeder).
* **wall clock**: the time at least one page was at the GPU (the union of the pages'
  intervals ``[end - ocr_seconds, end]``, ``end`` being when its result object was written)
  x GPU instances. Right when every instance was busy with this batch, and only with it;
  idle gaps between pages are left out.

A server that reports no usage (a page's ``prompt_tokens`` recorded as 0) would make the
prompt total too low: those requests are counted at :data:`PROMPT_TOKENS_PER_REQUEST`, what
vLLM counts for an A4 page, and the bill says how many tokens are such estimates.

Neither counts a cold start (~1-2 min of billed GPU time before the first page) nor the idle
minutes before Cloud Run removes an instance. Cost = GPU hours x the price of a GPU instance
hour; per 1,000 pages divides by the pages with usage.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ocrpipe import naming, records
from ocrpipe.listing import DocumentObjects
from ocrpipe.settings import Settings

# The prompt of one request for an A4 page rendered at 1540 px, as vLLM 0.30 counts it for
# LightOnOCR: 2,145 image tokens (ceil(1089/28) x ceil(1540/28)) and 12 of chat template.
# Measured: bench/prompt_tokens.py, bench/results/prompt_tokens.json (which tests/test_bill.py
# checks this against), docs/PERFORMANCE.md section 11 (Letter 2,377; receipt 837; slide
# 1,717; sliver 397).
PROMPT_TOKENS_PER_REQUEST = 2157


class _Provenance(BaseModel):
    """A page's ``provenance`` as the worker writes it (read from a bucket: checked)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str = ""
    temperature: float = Field(ge=0)
    finish_reason: str = ""
    attempts: int = Field(ge=1)
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    ocr_seconds: float = Field(ge=0)


@dataclass(frozen=True)
class Usage:
    """What OCR of one page used, as recorded."""

    model: str
    temperature: float
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    ocr_seconds: float


@dataclass(frozen=True)
class PageUsage:
    page: int
    state: str  # "done" or "failed"
    usage: Usage | None  # None: unknown
    end: float | None = None  # when its result object was written (seconds since the epoch)


NO_SUCH_DOCUMENT = "no such document"
NOT_FINISHED = "not finished"
REJECTED = "rejected as a whole (no OCR; see `ocrpipe status NAME`)"


@dataclass(frozen=True)
class Spend:
    """What some OCR requests cost."""

    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ocr_seconds: float = 0.0

    def __add__(self, other: Spend) -> Spend:
        return Spend(
            self.attempts + other.attempts,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.ocr_seconds + other.ocr_seconds,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ocr_seconds": round(self.ocr_seconds, 3),
        }


@dataclass(frozen=True)
class ExtraSpend:
    """Work that left no page result: a nacked delivery, or a retried page's earlier one."""

    kind: str  # records.FAILED_DELIVERY or records.RETRIED
    page: int
    spend: Spend
    end: float | None  # when it was recorded (seconds since the epoch)


@dataclass(frozen=True)
class Skipped:
    """A document left out of the bill, and why."""

    name: str
    why: str


def parse_pages(data: bytes) -> list[PageUsage]:
    """The pages of a ``document.json``; a page whose provenance is missing, null or not in
    the worker's format has usage None. Raises ValueError if the record itself is unreadable."""
    try:
        raw = json.loads(data)
        entries = raw["pages"]
        if not isinstance(entries, list):
            raise TypeError("pages is not a list")
        return [_page(entry) for entry in entries]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a document.json: {exc}") from exc


def _page(entry: Any) -> PageUsage:
    page, state = int(entry["page"]), str(entry["state"])
    try:
        found = _Provenance.model_validate(entry.get("provenance"))
    except ValidationError:
        return PageUsage(page, state, None)
    usage = Usage(
        found.model,
        found.temperature,
        found.attempts,
        found.prompt_tokens,
        found.completion_tokens,
        found.ocr_seconds,
    )
    return PageUsage(page, state, usage)


def attempt_spend(
    document: DocumentObjects, doc: naming.DocumentRef, index_updated: float | None
) -> list[ExtraSpend]:
    """The cost of ``doc``'s failed deliveries, and of its retried pages' deleted error
    records that ``document.json`` (written at ``index_updated``) no longer describes."""
    objects = document.generations.get(doc.generation, {})
    prefix = naming.attempts_prefix(doc)
    found: list[ExtraSpend] = []
    counted: set[str] = set()
    for name, info in sorted(objects.items()):
        if naming.parse_attempt_name(name, prefix) is None:
            continue
        attempt = records.parse_attempt(info.metadata)
        if attempt is None or attempt.usage is None:
            continue
        end = attempt.created or info.updated or None
        if attempt.kind == records.RETRIED:
            described = index_updated is None or end is None or index_updated <= end
            if described or attempt.message_id in counted:
                continue  # document.json still has it, or a second run's copy
            counted.add(attempt.message_id)
        elif attempt.kind != records.FAILED_DELIVERY:
            continue
        found.append(ExtraSpend(attempt.kind, attempt.page, _spend(attempt.usage), end))
    return found


def _spend(usage: records.Usage) -> Spend:
    def number(key: str) -> float:
        value = usage.get(key, 0)
        return float(value) if isinstance(value, int | float) and value >= 0 else 0.0

    return Spend(
        int(number("attempts")),
        int(number("prompt_tokens")),
        int(number("completion_tokens")),
        number("ocr_seconds"),
    )


def records_to_read(documents: Iterable[DocumentObjects], settings: Settings) -> dict[str, str]:
    """Input name -> the ``document.json`` to read: that of each document's latest finished
    generation, where the listing has one."""
    wanted: dict[str, str] = {}
    for document in documents:
        doc = document.latest_finished(settings)
        if doc is not None:
            name = naming.document_index_name(doc)
            if name in document.generations[doc.generation]:
                wanted[document.name] = name
    return wanted


def document_pages(
    document: DocumentObjects, settings: Settings, record: bytes | None
) -> list[PageUsage] | Skipped:
    """The pages of ``document``'s latest finished generation, each with when its result
    was written; from ``record`` (its ``document.json``) when there is one, else from the
    listing (usage unknown)."""
    doc = document.latest_finished(settings)
    if doc is None:
        return Skipped(document.name, _why_skipped(document, settings))
    objects = document.generations[doc.generation]
    prefix = naming.pages_prefix(doc)
    pages: list[PageUsage] = []
    if record is not None:
        try:
            pages = parse_pages(record)
        except ValueError:
            pages = []
    if not pages:
        listing = naming.parse_page_listing(list(objects), prefix)
        pages = [PageUsage(n, "done", None) for n in listing.done]
        pages += [PageUsage(n, "failed", None) for n in listing.failed]
    results = naming.page_results(
        ((name, info.generation) for name, info in objects.items()), prefix, len(pages)
    )
    timed = []
    for page in sorted(pages, key=lambda p: p.page):
        result = results.get(page.page)
        end = objects[result.name].updated if result is not None else None
        timed.append(PageUsage(page.page, page.state, page.usage, end or None))
    return timed


def _why_skipped(document: DocumentObjects, settings: Settings) -> str:
    if document.generation is None:
        return NO_SUCH_DOCUMENT
    doc = document.doc(settings, document.generation)
    if naming.document_error_name(doc) in document.generations.get(doc.generation, {}):
        return REJECTED
    return NOT_FINISHED


@dataclass(frozen=True)
class Estimate:
    """GPU time by one estimator, and what it costs."""

    method: str  # "concurrency" or "wall_clock"
    gpu_seconds: float
    cost: float
    cost_per_1000_pages: float | None  # None: no page with usage
    assumption: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "gpu_seconds": round(self.gpu_seconds, 3),
            "cost": round(self.cost, 6),
            "cost_per_1000_pages": (
                None if self.cost_per_1000_pages is None else round(self.cost_per_1000_pages, 4)
            ),
            "assumption": self.assumption,
        }


@dataclass(frozen=True)
class Bill:
    documents: int
    skipped: tuple[Skipped, ...]
    pages_done: int
    pages_failed: int
    pages_with_usage: int
    kept: Spend  # the requests behind the page results kept (document.json's provenance)
    failed_deliveries: Spend  # deliveries the worker nacked (no page result)
    failed_delivery_count: int
    retried: Spend  # earlier results of pages that retry --failed-only queued again
    retried_pages: int
    prompt_tokens_estimated: int  # for requests whose server reported no usage
    loop_retries: int  # pages kept at a temperature above the first of the ladder
    first_start: float | None  # the first page's request opened (epoch seconds)
    last_end: float | None  # the last page's result written
    busy_seconds: float  # time at least one page was at the GPU
    price_per_hour: float
    gpu_instances: int
    concurrency: int  # requests at the GPUs at once, for the concurrency estimate
    estimates: tuple[Estimate, ...]

    @property
    def pages(self) -> int:
        return self.pages_done + self.pages_failed

    @property
    def spent(self) -> Spend:
        """Every request the pipeline made for these pages, kept or not."""
        return self.kept + self.failed_deliveries + self.retried

    @property
    def prompt_tokens(self) -> int:
        """Reported by the server, and estimated where it reported none."""
        return self.spent.prompt_tokens + self.prompt_tokens_estimated

    @property
    def completion_tokens(self) -> int:
        return self.spent.completion_tokens

    @property
    def ocr_seconds(self) -> float:
        return self.spent.ocr_seconds

    @property
    def attempts(self) -> int:
        return self.spent.attempts

    @property
    def pages_unknown(self) -> int:
        return self.pages - self.pages_with_usage

    @property
    def retries(self) -> int:
        """Requests beyond one per page with usage: loops, transient failures, failed
        deliveries and retried pages."""
        return self.attempts - self.pages_with_usage

    @property
    def span_seconds(self) -> float | None:
        if self.first_start is None or self.last_end is None:
            return None
        return max(0.0, self.last_end - self.first_start)

    def estimate(self, method: str) -> Estimate:
        return next(e for e in self.estimates if e.method == method)

    def as_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "not_counted": [{"name": s.name, "why": s.why} for s in self.skipped],
            "rejected": [s.name for s in self.skipped if s.why == REJECTED],
            "not_finished": [s.name for s in self.skipped if s.why == NOT_FINISHED],
            "pages": {
                "total": self.pages,
                "done": self.pages_done,
                "failed": self.pages_failed,
                "usage_known": self.pages_with_usage,
                "usage_unknown": self.pages_unknown,
            },
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "prompt_tokens_estimated": self.prompt_tokens_estimated,
                "completion_tokens": self.completion_tokens,
                "ocr_seconds": round(self.ocr_seconds, 3),
                "attempts": self.attempts,
                "retries": self.retries,
                "loop_retries": self.loop_retries,
                "by_source": {
                    "page_results": self.kept.as_dict(),
                    "failed_deliveries": {
                        "count": self.failed_delivery_count,
                        **self.failed_deliveries.as_dict(),
                    },
                    "retried_pages": {"count": self.retried_pages, **self.retried.as_dict()},
                },
            },
            "time": {
                "first_start": self.first_start,
                "last_end": self.last_end,
                "span_s": None if self.span_seconds is None else round(self.span_seconds, 3),
                "busy_s": round(self.busy_seconds, 3),
            },
            "gpu": {
                "price_per_hour": self.price_per_hour,
                "instances": self.gpu_instances,
                "concurrency": self.concurrency,
            },
            "estimates": {e.method: e.as_dict() for e in self.estimates},
        }


def bill(
    documents: Sequence[DocumentObjects], records: Mapping[str, bytes], settings: Settings
) -> Bill:
    """Sum the pages of every document (``records``: input name -> its ``document.json``)
    and estimate GPU time and cost with the settings' price, instances and concurrency."""
    pages: list[PageUsage] = []
    extra: list[ExtraSpend] = []
    skipped: list[Skipped] = []
    counted = 0
    for document in documents:
        found = document_pages(document, settings, records.get(document.name))
        if isinstance(found, Skipped):
            skipped.append(found)
            continue
        counted += 1
        pages += found
        doc = document.latest_finished(settings)
        assert doc is not None  # document_pages found it
        index = document.generations[doc.generation].get(naming.document_index_name(doc))
        extra += attempt_spend(document, doc, index.updated if index is not None else None)
    return summarise(pages, settings, documents=counted, skipped=skipped, extra=extra)


def summarise(
    pages: Sequence[PageUsage],
    settings: Settings,
    *,
    documents: int,
    skipped: Sequence[Skipped] = (),
    extra: Sequence[ExtraSpend] = (),
) -> Bill:
    known = [(p, p.usage) for p in pages if p.usage is not None]
    first_temperature = settings.ocr_temperatures[0]
    intervals = [(p.end - u.ocr_seconds, p.end) for p, u in known if p.end is not None]
    intervals += [(e.end - e.spend.ocr_seconds, e.end) for e in extra if e.end is not None]
    starts = [start for start, _ in intervals] + [p.end for p in pages if p.end is not None]
    ends = [p.end for p in pages if p.end is not None]
    kept = sum(
        (Spend(u.attempts, u.prompt_tokens, u.completion_tokens, u.ocr_seconds) for _, u in known),
        Spend(),
    )
    failed = [e for e in extra if e.kind == records.FAILED_DELIVERY]
    retried = [e for e in extra if e.kind == records.RETRIED]
    failed_spend = sum((e.spend for e in failed), Spend())
    retried_spend = sum((e.spend for e in retried), Spend())
    ocr_seconds = (kept + failed_spend + retried_spend).ocr_seconds
    no_usage = [u.attempts for _, u in known if not u.prompt_tokens]
    no_usage += [e.spend.attempts for e in extra if not e.spend.prompt_tokens]
    estimated = sum(no_usage) * PROMPT_TOKENS_PER_REQUEST
    busy = union_length(intervals)
    instances = settings.gpu_instances
    per_gpu = settings.gpu_concurrent_requests or settings.ocr_max_in_flight
    concurrency = per_gpu * instances
    price = settings.gpu_price_per_hour
    estimates = (
        _estimate(
            "concurrency",
            ocr_seconds / per_gpu,  # instance-seconds: each instance holds per_gpu at once
            price,
            len(known),
            f"the GPUs served {concurrency} requests at once the whole time"
            f" ({per_gpu} per GPU x {instances} GPU instance(s))",
        ),
        _estimate(
            "wall_clock",
            busy * instances,
            price,
            len(known),
            f"{instances} GPU instance(s) up while any page was at the GPU, and busy only"
            " with this batch",
        ),
    )
    return Bill(
        documents=documents,
        skipped=tuple(skipped),
        pages_done=sum(1 for p in pages if p.state == "done"),
        pages_failed=sum(1 for p in pages if p.state != "done"),
        pages_with_usage=len(known),
        kept=kept,
        failed_deliveries=failed_spend,
        failed_delivery_count=len(failed),
        retried=retried_spend,
        retried_pages=len(retried),
        prompt_tokens_estimated=estimated,
        loop_retries=sum(1 for _, u in known if u.temperature > first_temperature),
        first_start=min(starts) if starts else None,
        last_end=max(ends) if ends else None,
        busy_seconds=busy,
        price_per_hour=price,
        gpu_instances=instances,
        concurrency=concurrency,
        estimates=estimates,
    )


def _estimate(method: str, gpu_seconds: float, price: float, pages: int, why: str) -> Estimate:
    cost = gpu_seconds / 3600 * price
    per_1000 = cost / pages * 1000 if pages else None
    return Estimate(method, gpu_seconds, cost, per_1000, why)


def union_length(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length covered by the intervals ``(start, end)``, overlaps counted once."""
    total = 0.0
    current: tuple[float, float] | None = None
    for start, end in sorted(intervals):
        if current is None or start > current[1]:
            if current is not None:
                total += current[1] - current[0]
            current = (start, end)
        else:
            current = (current[0], max(current[1], end))
    if current is not None:
        total += current[1] - current[0]
    return total


# --- Before a batch: what it will cost (ocrpipe plan) -------------------------------------

REFERENCE_PROMPT_TOKENS = PROMPT_TOKENS_PER_REQUEST  # an A4 page, at vLLM


@dataclass(frozen=True)
class CostModel:
    """What a page will cost before it is OCR'd: the GPU time one instance spends on it
    with a full batch, from its tokens, at a price per instance hour, shared by
    ``instances`` instances.

    GPU time is taken to grow with a page's tokens, prompt (its image) and completion (its
    text) alike. That is a simplification (a prompt token is cheaper than a decoded one),
    which is why a model measured on a finished batch of the same kind of pages
    (:meth:`measured`) beats the published one (:meth:`published`)."""

    seconds_per_token: float  # GPU time of one instance per token, with a full batch
    completion_tokens: float  # expected per page
    price_per_hour: float
    instances: int
    source: str  # where seconds_per_token and completion_tokens come from

    @classmethod
    def published(
        cls,
        settings: Settings,
        *,
        instances: int | None = None,
        completion_tokens: int | None = None,
    ) -> CostModel:
        """From ``gpu_pages_per_second`` (0.6 on an L4 by default) for a reference page: an
        A4 page (2,157 prompt tokens) with ``plan_completion_tokens`` of text."""
        completion = completion_tokens or settings.plan_completion_tokens
        reference = REFERENCE_PROMPT_TOKENS + completion
        return cls(
            seconds_per_token=1 / (settings.gpu_pages_per_second * reference),
            completion_tokens=float(completion),
            price_per_hour=settings.gpu_price_per_hour,
            instances=instances or settings.gpu_instances,
            source=f"{settings.gpu_pages_per_second:g} pages/s per GPU instance for an A4 page"
            f" of {completion} completion tokens (OCRPIPE_GPU_PAGES_PER_SECOND,"
            " OCRPIPE_PLAN_COMPLETION_TOKENS)",
        )

    @classmethod
    def measured(cls, total: Bill, where: str, *, instances: int | None = None) -> CostModel:
        """From a finished batch (``total``, as ``ocrpipe report`` sums it): its GPU time
        by the concurrency estimate, per instance, over its tokens; its completion tokens
        per page. Raises ValueError if no page of it has usage."""
        if not total.pages_with_usage:
            raise ValueError(f"no page under {where} has recorded usage to measure")
        per_instance = max(1, total.concurrency // total.gpu_instances)
        gpu_seconds = total.ocr_seconds / per_instance
        tokens = total.prompt_tokens + total.completion_tokens
        return cls(
            seconds_per_token=gpu_seconds / tokens if tokens else 0.0,
            completion_tokens=total.completion_tokens / total.pages_with_usage,
            price_per_hour=total.price_per_hour,
            instances=instances or total.gpu_instances,
            source=f"measured on {total.pages_with_usage} pages under {where}: OCR seconds"
            f" over {per_instance} requests at once per GPU instance",
        )

    def gpu_seconds(self, prompt_tokens: int, pages: int) -> float:
        return (prompt_tokens + self.completion_tokens * pages) * self.seconds_per_token

    def assumptions(self) -> list[str]:
        return [
            f"GPU time: {self.seconds_per_token * 1000:.3f} ms per token (prompt and completion"
            f" alike, {1 / self.seconds_per_token:,.0f} tokens/s per instance with a full"
            f" batch): {self.source}"
            if self.seconds_per_token
            else "GPU time: none measured",
            f"completion: {self.completion_tokens:,.0f} tokens per page",
            f"price: ${self.price_per_hour:g} per GPU instance hour (OCRPIPE_GPU_PRICE_PER_HOUR)",
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds_per_token": self.seconds_per_token,
            "completion_tokens_per_page": round(self.completion_tokens, 1),
            "price_per_hour": self.price_per_hour,
            "instances": self.instances,
            "source": self.source,
        }
