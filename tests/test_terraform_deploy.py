"""Structural checks of what a first deployment needs beyond the topology: page images
that outlive every message that can still name them, and a splitter build that can read
its own source (tests/terraform.py parses the HCL)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ocrpipe.topology import TOPOLOGY_FILE, load_topology
from tests.terraform import load_terraform

DAY_S = 86400


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    return load_terraform()


def topology_seconds(expr: str) -> int:
    """``${local.topology.KEY}s`` -> the number topology.json gives KEY."""
    match = re.fullmatch(r"\$\{local\.topology\.(\w+)\}s", expr)
    assert match, f"{expr!r} does not come from ocrpipe/topology.json"
    value: int = json.loads(TOPOLOGY_FILE.read_text(encoding="utf-8"))[match.group(1)]
    return value


def test_page_images_outlive_every_message_that_can_name_them(tf: dict[str, Any]) -> None:
    subs = tf["resource"]["google_pubsub_subscription"]
    # A page message may wait its full retention on the push subscription, be dead-lettered
    # and wait again on the dead-letter subscription, then be replayed: its image must
    # still be there, with a margin for the replay itself.
    pages_s = topology_seconds(subs["pages_push"]["message_retention_duration"])
    dead_s = topology_seconds(subs["dead_letter_pull"]["message_retention_duration"])
    rule = tf["resource"]["google_storage_bucket"]["work"]["lifecycle_rule"][0]
    assert rule["action"][0]["type"] == "Delete"
    assert rule["condition"][0]["age"] == "${local.topology.page_image_retention_days}"
    age_s = load_topology().page_image_retention_days * DAY_S
    assert age_s >= pages_s + dead_s + DAY_S, (age_s, pages_s, dead_s)
    # The reconciler refreshes an image it republishes by the same rule.
    assert age_s >= load_topology().image_needed_seconds


def test_retentions_are_chosen_in_one_place(tf: dict[str, Any]) -> None:
    """Topic, subscriptions and page images: every retention terraform deploys is one of
    topology.json's, the numbers docs/OPERATIONS.md prices together."""
    topic = tf["resource"]["google_pubsub_topic"]["pages"]
    assert topology_seconds(topic["message_retention_duration"]) == (
        load_topology().pages_topic_retention_seconds
    )
    subs = tf["resource"]["google_pubsub_subscription"]
    assert subs["pages_push"]["message_retention_duration"] == (
        "${local.topology.message_retention_seconds}s"
    )
    assert subs["dead_letter_pull"]["message_retention_duration"] == (
        "${local.topology.dead_letter_retention_seconds}s"
    )
    # Pub/Sub's bounds: 10 minutes to 31 days for subscriptions and topics.
    for seconds in (
        load_topology().message_retention_seconds,
        load_topology().dead_letter_retention_seconds,
        load_topology().pages_topic_retention_seconds,
    ):
        assert 600 <= seconds <= 31 * DAY_S


# --- the splitter's build --------------------------------------------------------------------

PROJECT_NUMBER, REGION = "123456789012", "europe-west4"
BUILDER = "${google_service_account.builder.member}"
READ_ROLES = {"roles/storage.objectViewer", "roles/storage.objectUser", "roles/storage.objectAdmin"}


def substitute(text: str, tf: dict[str, Any]) -> str:
    """Fill in string locals, the project number and the region."""
    for name, value in tf["locals"].items():
        if isinstance(value, str):
            text = text.replace(f"${{local.{name}}}", value)
    return text.replace("${data.google_project.this.number}", PROJECT_NUMBER).replace(
        "${var.region}", REGION
    )


def refs(depends_on: list[str]) -> set[str]:
    """``["${a.b}", ...]`` -> {"a.b", ...}"""
    return {d.removeprefix("${").removesuffix("}") for d in depends_on}


def condition_matches(expression: str, resource_name: str) -> bool:
    """Evaluate the small CEL subset these grants use: ``||`` of ``resource.name == "X"``
    and ``resource.name.startsWith("X")``. Anything else fails the test, on purpose."""
    result = False
    for term in expression.split("||"):
        term = term.strip()
        if match := re.fullmatch(r'resource\.name\s*==\s*"([^"]+)"', term):
            result |= resource_name == match.group(1)
        elif match := re.fullmatch(r'resource\.name\.startsWith\("([^"]+)"\)', term):
            result |= resource_name.startswith(match.group(1))
        else:
            raise AssertionError(f"condition term this test cannot evaluate: {term!r}")
    return result


def builder_can(tf: dict[str, Any], action_on: str) -> bool:
    """Whether some grant lets the build account read ``action_on`` (a GCS resource name,
    ``projects/_/buckets/B`` or ``projects/_/buckets/B/objects/O``)."""
    bucket = action_on.split("/")[3]
    for grant in tf["resource"].get("google_storage_bucket_iam_member", {}).values():
        mine = grant["member"] == BUILDER and grant["role"] in READ_ROLES
        if mine and substitute(grant["bucket"], tf) == bucket and "condition" not in grant:
            return True
    for grant in tf["resource"].get("google_project_iam_member", {}).values():
        if grant["member"] == BUILDER and grant["role"] in READ_ROLES:
            conditions = grant.get("condition", [])
            assert conditions, "an unconditioned project-wide storage grant reads every bucket"
            if condition_matches(substitute(conditions[0]["expression"], tf), action_on):
                return True
    return False


def test_the_build_account_can_read_the_gcf_v2_sources_bucket_and_nothing_else(
    tf: dict[str, Any],
) -> None:
    # Gen2 copies the uploaded source to gcf-v2-sources-PROJECT_NUMBER-REGION and the build
    # reads it from there ("Access to bucket gcf-v2-sources-... denied" otherwise).
    sources = f"projects/_/buckets/gcf-v2-sources-{PROJECT_NUMBER}-{REGION}"
    assert builder_can(tf, sources)  # list is checked on the bucket
    assert builder_can(tf, f"{sources}/objects/ocrpipe-splitter/function-source.zip")
    for other in ("gcf-v2-sources-999999999999-europe-west4", "my-project-ocrpipe-output"):
        assert not builder_can(tf, f"projects/_/buckets/{other}/objects/x"), other


def test_the_function_waits_for_its_build_grants_to_propagate(tf: dict[str, Any]) -> None:
    sleeps = tf["resource"].get("time_sleep", {})
    function = tf["resource"]["google_cloudfunctions2_function"]["splitter"]
    waits = [name for name in sleeps if f"time_sleep.{name}" in refs(function["depends_on"])]
    assert waits, "the function does not wait for IAM propagation"
    (name,) = waits
    sleep = sleeps[name]
    assert int(sleep["create_duration"].rstrip("s")) >= 30
    grants = {g.split(".")[1] for g in refs(sleep["depends_on"])}
    builder_grants = {
        name
        for rtype in ("google_project_iam_member", "google_storage_bucket_iam_member")
        for name, grant in tf["resource"].get(rtype, {}).items()
        if grant["member"] == BUILDER
    }
    assert builder_grants and builder_grants <= grants, builder_grants - grants
    providers = tf["terraform"][0]["required_providers"][0]
    assert providers["time"]["source"] == "hashicorp/time"
    assert re.fullmatch(r"~> 0\.\d+", providers["time"]["version"]), providers["time"]


# --- the model -------------------------------------------------------------------------------


def test_the_worker_asks_for_the_model_the_gpu_service_is_told_to_serve(
    tf: dict[str, Any],
) -> None:
    local = tf["locals"]
    # Every service (the splitter for its page size, the worker, the CLI) gets the model.
    assert local["common_env"]["OCRPIPE_OCR_MODEL"] == "${local.gpu_model}"
    assert "OCRPIPE_OCR_MODEL" not in local["worker_env"]
    gpu = tf["resource"]["google_cloud_run_v2_service"]["gpu"]
    env = {e["name"]: e["value"] for e in gpu["template"][0]["containers"][0]["env"]}
    assert env["EXPECTED_MODEL"] == "${local.gpu_model}"
    assert env["COMPILE_MODE"] == "${var.gpu_compile_mode}"
    assert tf["variable"]["gpu_model"]["default"] is None
    assert tf["variable"]["gpu_compile_mode"]["default"] == "compiled"


def test_the_model_comes_from_the_model_table(tf: dict[str, Any]) -> None:
    local = tf["locals"]
    assert local["models"] == '${jsondecode(file("${path.module}/../ocrpipe/models.json"))}'
    assert local["gpu_model"] == "${coalesce(var.gpu_model, local.models.default)}"
    gpu = tf["resource"]["google_cloud_run_v2_service"]["gpu"]
    conditions = [c["condition"] for c in gpu["lifecycle"][0]["precondition"]]
    assert "${contains(keys(local.models.models), local.gpu_model)}" in conditions
    assert not tf["variable"]["gpu_model"].get("validation")  # no second list of models


# --- the worker's memory ---------------------------------------------------------------------


def memory_mib(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Gi|Mi)", text).groups()  # type: ignore[union-attr]
    return int(number) * (1024 if unit == "Gi" else 1)


def test_the_worker_memory_holds_its_in_flight_limit_of_the_largest_pages(
    tf: dict[str, Any],
) -> None:
    # Measured by bench/worker_memory.py: 32 pushes of the largest page the splitter makes
    # (1540 x 6160 colour noise, a 27 MiB PNG) peak at ~4.9 GiB in the worker; 1 GiB was
    # the default. The per-page figure lives in worker.tf and a precondition enforces it.
    from tests.test_terraform import optional_defaults

    measured_mib_per_page, measured_base_mib = 150, 140
    local = tf["locals"]
    assert local["worker_mib_per_in_flight"] >= measured_mib_per_page
    assert local["worker_base_mib"] >= measured_base_mib
    resources = optional_defaults(tf["variable"]["worker_resources"]["type"])
    concurrency = tf["variable"]["worker_concurrency"]["default"]
    needed = local["worker_base_mib"] + concurrency * local["worker_mib_per_in_flight"]
    assert memory_mib(resources["memory"]) * local["worker_memory_headroom"] >= needed
    worker = tf["resource"]["google_cloud_run_v2_service"]["worker"]
    (check,) = worker["lifecycle"][0]["precondition"]
    assert "local.worker_memory_needed_mib" in check["condition"]
