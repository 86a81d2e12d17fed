"""The one settings object. Built once per entry point and passed down; nothing else in the
project reads ``os.environ``.

Every field is read from ``OCRPIPE_<FIELD>`` (for example ``OCRPIPE_OCR_URL``). Terraform
sets these variables on the deployed services and ``ocrpipe up`` sets them on the local
ones. The two emulator hosts keep the names Google's client libraries use
(``PUBSUB_EMULATOR_HOST``, ``STORAGE_EMULATOR_HOST``).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ocrpipe.models import SETTINGS_FROM_MODEL, ModelSpec, load_models
from ocrpipe.topology import load_topology

_TOPOLOGY = load_topology()
_MODELS = load_models()

DEFAULT_PUSH_KEYS_STALE_S = 6 * 3600.0
MAX_TEMPERATURE = 2.0  # the highest sampling temperature vLLM's OpenAI API accepts

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})
# Where `ocrpipe up` writes the operator's settings of the stack it runs, in its folder:
# what `--local` (the CLI) and Client.local() (the Python API) read.
LOCAL_ENV_FILE = Path(".ocrpipe/local.env")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="OCRPIPE_", frozen=True, extra="forbid", populate_by_name=True
    )

    project: str = Field("local-project", description="Google Cloud project id.")
    input_bucket: str = Field("ocrpipe-input", description="Where users drop files.")
    work_bucket: str = Field("ocrpipe-work", description="Rendered page images.")
    output_bucket: str = Field("ocrpipe-output", description="Markdown, status, error records.")
    pages_topic: str = _TOPOLOGY.pages_topic
    pages_subscription: str = _TOPOLOGY.pages_push_subscription
    dead_letter_topic: str = _TOPOLOGY.dead_letter_topic
    dead_letter_subscription: str = _TOPOLOGY.dead_letter_subscription
    documents_topic: str = _TOPOLOGY.documents_topic

    # OCR server (vLLM's OpenAI-compatible API, or the local engine).
    ocr_url: str = Field("http://127.0.0.1:8000", description="Base URL, without /v1.")
    ocr_model: str = Field(
        _MODELS.default,
        description="The model's served name. Its entry in ocrpipe/models.json gives the"
        " defaults of ocr_max_model_len, ocr_figure_boxes and render_longest_side.",
    )
    ocr_figure_boxes: bool = Field(
        False,
        description="The model writes a box after each figure reference (LightOnOCR's bbox"
        " variants): the worker crops each figure into a file beside the page. Default: the"
        " model's entry in ocrpipe/models.json; false for a model not there.",
    )
    ocr_max_tokens: int = Field(
        4096,
        gt=0,
        description="Tokens asked for a page's reply. A reply that reaches it without a loop"
        " is asked again with what the model's context leaves (ocr_max_model_len).",
    )
    ocr_max_model_len: int = Field(
        _MODELS.default_model.max_model_len,
        gt=0,
        description="The model's context in tokens, vLLM's max_model_len: the page image's"
        " tokens plus the reply. Default: the model's entry in ocrpipe/models.json, which"
        " gpu_image serves it with (its MAX_MODEL_LEN); set it to what the GPU service serves.",
    )
    ocr_temperatures: tuple[float, ...] = Field(
        (0.2, 0.3, 0.5, 0.8),
        min_length=1,
        description="The temperature of the first request, then one step up per repetition"
        ' loop (JSON list, e.g. OCRPIPE_OCR_TEMPERATURES="[0.2, 0.3, 0.5, 0.8]"), each in'
        " [0, 2]. After the last, the page fails as ocr_repetition_loop.",
    )
    ocr_top_p: float = Field(0.9, gt=0, le=1)
    ocr_request_timeout_s: float = Field(
        300.0, gt=0, description="One HTTP request to the OCR server, queueing included."
    )
    ocr_budget_s: float = Field(
        float(_TOPOLOGY.request_budget_seconds),
        gt=0,
        description="All OCR attempts for one page within one push delivery.",
    )
    ocr_max_in_flight: int = Field(
        32, gt=0, description="Requests this worker process keeps open to the OCR server."
    )
    ocr_malformed_attempts: int = Field(
        3,
        ge=1,
        description="Unparseable 200 replies for one page (per delivery) before it fails for"
        " good with reason ocr_malformed_reply.",
    )
    ocr_auth: Literal["auto", "id-token", "none"] = Field(
        "auto", description="auto: a Google ID token unless the OCR URL is on loopback."
    )

    # Rendering.
    render_longest_side: int = Field(
        _MODELS.default_model.render_longest_side,
        ge=64,
        le=10000,
        description="The longest side of a page image at most, in pixels (default: the"
        " model's entry in ocrpipe/models.json). Pages larger than that are scaled down to it,"
        " smaller ones are never enlarged.",
    )
    render_dpi: float = Field(
        200.0,
        gt=0,
        le=1200,
        description="PDF pages render at this resolution, then are scaled down to"
        " render_longest_side if larger: LightOn's own client renders at 200 dpi.",
    )
    render_processes: int = Field(2, ge=1, le=64)
    max_pages: int = Field(2000, gt=0)
    max_input_bytes: int = Field(512 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(
        100_000_000, gt=0, description="Largest image (or TIFF frame) decoded, in pixels."
    )
    max_page_image_bytes: int | None = Field(
        None,
        gt=0,
        description="Largest page image the worker reads; unset: the largest the splitter"
        " can write at render_longest_side (see page_image_limit).",
    )
    render_page_timeout_s: float = Field(
        60.0, gt=0, description="One page's render; a slower page gets an error record."
    )
    render_memory_mb: int = Field(
        1024, ge=0, description="Address-space limit of each render process (0: none)."
    )
    split_budget_s: float = Field(
        420.0,
        gt=0,
        description="Splitter time per event before it stops and lets Eventarc's retry go on"
        " (540 s function timeout minus one page timeout and a margin).",
    )
    split_deadline_s: float = Field(
        20 * 3600.0,
        gt=0,
        description="An attempt starting this long after a document's first attempt, with"
        " pages still unpublished, ends it as split_timeout (below Eventarc's 24 h of retries).",
    )

    # Who may call the worker.
    verify_push_auth: bool = Field(
        True, description="Verify Pub/Sub's OIDC token. Off only on the local stack."
    )
    push_audience: str = ""
    push_service_account: str = ""
    push_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    push_keys_stale_s: float = Field(
        DEFAULT_PUSH_KEYS_STALE_S,
        ge=0,
        description="How long past their expiry Google's push-signing keys stay in use while"
        " the key endpoint fails.",
    )

    log_level: str = "INFO"
    eventarc_target: str = Field(
        "http://127.0.0.1:8081/", description="Local stack only: where the Eventarc stand-in posts."
    )
    local_delivery_max_in_flight: int | None = Field(
        None,
        gt=0,
        description="Local stack only: page deliveries its push relay keeps open to the worker"
        " (production push grows to what the worker accepts); unset: ocr_max_in_flight, which"
        " matches a GPU's batch, or, when the stack runs its own CPU engine, two per engine"
        " thread (see for_local_engine).",
    )
    local_engine_threads: int | None = Field(
        None,
        gt=0,
        description="Local stack only: pages its CPU OCR engine works on at once; unset: one"
        " per two CPUs this process may run on (at least one).",
    )
    iam_overrides_file: str = Field(
        "",
        description="Local stack only: a JSON file that adds or revokes grants of"
        " ocrpipe/iam.json for the authorizing proxies (tests); see ocrpipe.local.iam.policy.",
    )

    pubsub_emulator_host: str | None = Field(
        None, validation_alias=AliasChoices("PUBSUB_EMULATOR_HOST", "pubsub_emulator_host")
    )
    storage_emulator_host: str | None = Field(
        None, validation_alias=AliasChoices("STORAGE_EMULATOR_HOST", "storage_emulator_host")
    )

    # What a GPU instance costs, for `ocrpipe report`'s estimates (ocrpipe/operations/bill.py).
    gpu_price_per_hour: float = Field(
        1.42,
        ge=0,
        description="US dollars per hour of one GPU instance, GPU plus its CPU and memory"
        " (Cloud Run L4 ~$0.67 + 8 vCPU x ~$0.0648 + 32 GiB x ~$0.0072, published prices).",
    )
    gpu_instances: int = Field(
        1, ge=1, description="GPU instances that served the batch being reported on."
    )
    gpu_pages_per_second: float = Field(
        0.6,
        gt=0,
        description="Pages one GPU instance OCRs per second with a full batch, for `ocrpipe"
        " plan`: LightOnOCR-2-1B on one L4 with 32 requests in flight (a community figure;"
        " 5.71 on an H100 is LightOn's). `ocrpipe plan --calibrate PREFIX` measures it on a"
        " finished batch instead.",
    )
    plan_completion_tokens: int = Field(
        1000,
        gt=0,
        description="Completion tokens `ocrpipe plan` expects per page (about a dense page of"
        " text), unless measured on a finished batch (--calibrate).",
    )
    gpu_concurrent_requests: int | None = Field(
        None,
        gt=0,
        description="Requests one GPU instance serves at once, if measured; unset:"
        " ocr_max_in_flight.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_variables(cls, data: Any) -> Any:
        """A typo in a variable name must not leave a default in force in silence."""
        known = {f"OCRPIPE_{name.upper()}" for name in cls.model_fields}
        unknown = sorted(k for k in os.environ if k.startswith("OCRPIPE_") and k not in known)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
            raise ValueError(f"unknown setting in the environment: {', '.join(hints)}")
        return data

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_model(cls, data: Any) -> Any:
        """Settings that depend on the model default to its entry in models.json."""
        if not isinstance(data, dict):
            return data
        spec = _MODELS.get(str(data.get("ocr_model", _MODELS.default)))
        if spec is None:
            return data
        defaults = {key: getattr(spec, field) for key, field in SETTINGS_FROM_MODEL.items()}
        return {**defaults, **data}

    @model_validator(mode="after")
    def _what_vllm_accepts(self) -> Settings:
        """Values vLLM answers with 400 on every request would fail every page: refused."""
        if self.ocr_max_tokens >= self.ocr_max_model_len:
            raise ValueError(
                f"ocr_max_tokens={self.ocr_max_tokens} must be below the model's context,"
                f" ocr_max_model_len={self.ocr_max_model_len}: vLLM answers 400 to a request"
                " whose max_tokens alone fills the context, so every page would fail"
            )
        outside = [t for t in self.ocr_temperatures if not 0 <= t <= MAX_TEMPERATURE]
        if outside:
            raise ValueError(
                f"ocr_temperatures={list(self.ocr_temperatures)} must each be in"
                f" [0, {MAX_TEMPERATURE:g}], as vLLM accepts them (it answers 400 otherwise);"
                f" outside: {outside}"
            )
        return self

    @model_validator(mode="after")
    def _budget_below_ack_deadline(self) -> Settings:
        if self.ocr_budget_s > _TOPOLOGY.request_budget_seconds:
            raise ValueError(
                f"ocr_budget_s={self.ocr_budget_s} would outlive the push request: it must be"
                f" at most {_TOPOLOGY.request_budget_seconds} s (ack deadline"
                f" {_TOPOLOGY.ack_deadline_seconds} s minus a safety margin)"
            )
        return self

    @property
    def page_image_limit(self) -> int:
        """Bytes of the largest page image the splitter can write, or the explicit limit.

        The largest page is a sliver rendered at 4 x ``render_longest_side`` and padded to
        1:8 (:mod:`ocrpipe.splitter.rendering.page_decoders`): 2 x side^2 pixels. As 3-channel PNG
        at worst (noise that does not compress) that is 3 bytes a pixel plus a filter byte a row
        and zlib's framing; a tenth more and 64 KiB cover both. About 15.6 MB at 1540 px.
        """
        if self.max_page_image_bytes is not None:
            return self.max_page_image_bytes
        pixels = 2 * self.render_longest_side**2
        return int(pixels * 3 * 1.1) + 64 * 1024

    @property
    def model(self) -> ModelSpec | None:
        """``ocr_model``'s entry in ocrpipe/models.json (None for a model not there)."""
        return _MODELS.get(self.ocr_model)

    @property
    def delivery_max_in_flight(self) -> int:
        """Deliveries the local stack's push relay keeps open (see ocrpipe.local.relay)."""
        return self.local_delivery_max_in_flight or self.ocr_max_in_flight

    @property
    def engine_threads(self) -> int:
        """Pages the local CPU engine OCRs at once. rapidocr's models use every core they
        are given (onnxruntime's intra-op threads), so one page per two CPUs keeps each page
        fast and the cores busy; on a 2-core machine it is one page at a time."""
        return self.local_engine_threads or max(1, cpu_count() // 2)

    def for_local_engine(self) -> Settings:
        """These settings sized for the local CPU engine: unless set, the relay keeps two
        deliveries open per engine thread, one being OCR'd and one waiting, instead of a
        GPU's batch. A CPU engine serves one page per thread at a time; 32 pages sent to it
        at once wait in its queue past the worker's budget (measured on 2 busy cores: a
        40-page folder stalled at 23/40 with the worker timing out after 239 s), and a
        request the worker gave up on still costs the engine its page."""
        if self.local_delivery_max_in_flight is not None:
            return self
        return self.model_copy(update={"local_delivery_max_in_flight": 2 * self.engine_threads})

    @property
    def ocr_is_local(self) -> bool:
        return (urlsplit(self.ocr_url).hostname or "") in LOCAL_HOSTS

    @property
    def uses_emulators(self) -> bool:
        return bool(self.storage_emulator_host or self.pubsub_emulator_host)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity, not the machine's count)."""
    sched_getaffinity = getattr(os, "sched_getaffinity", None)
    return len(sched_getaffinity(0)) if sched_getaffinity else (os.cpu_count() or 1)
