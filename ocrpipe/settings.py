"""The one settings object. Built once per entry point and passed down; nothing else in the
project reads ``os.environ``.

Every field is read from ``OCRPIPE_<FIELD>`` (for example ``OCRPIPE_OCR_URL``). Terraform
sets these variables on the deployed services and ``ocrpipe up`` sets them on the local
ones. The two emulator hosts keep the names Google's client libraries use
(``PUBSUB_EMULATOR_HOST``, ``STORAGE_EMULATOR_HOST``).
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ocrpipe.topology import load_topology

_TOPOLOGY = load_topology()

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


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

    # OCR server (vLLM's OpenAI-compatible API, or the local engine).
    ocr_url: str = Field("http://127.0.0.1:8000", description="Base URL, without /v1.")
    ocr_model: str = "lightonai/LightOnOCR-2-1B"
    ocr_max_tokens: int = Field(4096, gt=0)
    ocr_temperature: float = Field(0.2, ge=0)
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
    ocr_auth: Literal["auto", "id-token", "none"] = Field(
        "auto", description="auto: a Google ID token unless the OCR URL is on loopback."
    )

    # Rendering.
    render_longest_side: int = Field(1540, ge=64, le=10000)
    render_processes: int = Field(2, ge=1, le=64)
    max_pages: int = Field(2000, gt=0)
    max_input_bytes: int = Field(512 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(
        100_000_000, gt=0, description="Largest image (or TIFF frame) decoded, in pixels."
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

    # Who may call the worker.
    verify_push_auth: bool = Field(
        True, description="Verify Pub/Sub's OIDC token. Off only on the local stack."
    )
    push_audience: str = ""
    push_service_account: str = ""
    push_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"

    log_level: str = "INFO"
    eventarc_target: str = Field(
        "http://127.0.0.1:8081/", description="Local stack only: where the Eventarc stand-in posts."
    )
    iam_overrides_file: str = Field(
        "",
        description="Local stack only: a JSON file that adds or revokes grants of"
        " ocrpipe/iam.json for the authorizing proxies (tests); see ocrpipe.local.iam_policy.",
    )

    pubsub_emulator_host: str | None = Field(
        None, validation_alias=AliasChoices("PUBSUB_EMULATOR_HOST", "pubsub_emulator_host")
    )
    storage_emulator_host: str | None = Field(
        None, validation_alias=AliasChoices("STORAGE_EMULATOR_HOST", "storage_emulator_host")
    )

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
    def ocr_is_local(self) -> bool:
        return (urlsplit(self.ocr_url).hostname or "") in LOCAL_HOSTS

    @property
    def uses_emulators(self) -> bool:
        return bool(self.storage_emulator_host or self.pubsub_emulator_host)
