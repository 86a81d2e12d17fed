"""Structural checks of terraform/ parsed with python-hcl2 (tests/terraform.py).

The tests pin the decisions a reviewer would otherwise have to re-read the HCL for: names
and numbers from ocrpipe/topology.json, the dead-letter wiring, the GPU shape,
least-privilege IAM, and that terraform sets only settings ocrpipe defines.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ocrpipe.local.iam.policy import GRANTS_FILE, ROLE_PERMISSIONS, Authorizer
from ocrpipe.settings import Settings
from ocrpipe.topology import TOPOLOGY_FILE
from tests.terraform import TERRAFORM, load_terraform

REPO = TERRAFORM.parent
EXPECTED_FILES = {
    "versions.tf", "variables.tf", "outputs.tf", "main.tf", "apis.tf", "storage.tf",
    "pubsub.tf", "iam.tf", "functions.tf", "worker.tf", "gpu.tf", "monitoring.tf",
}  # fmt: skip
WRITE_ROLES = {
    "roles/storage.admin",
    "roles/storage.objectAdmin",
    "roles/storage.objectCreator",
    "roles/storage.objectUser",
    "roles/storage.legacyBucketWriter",
    "roles/storage.legacyBucketOwner",
}


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    return load_terraform()


def res(tf: dict[str, Any], rtype: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = tf["resource"][rtype][name]
    return body


def all_resources(tf: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return list(tf["resource"].get(rtype, {}).values())


def optional_defaults(type_expr: str) -> dict[str, str]:
    """``object({a = optional(number, 30)})`` -> {"a": "30"}."""
    return dict(re.findall(r"(\w+)\s*=\s*optional\([^,()]+,\s*\"?([^\")]+)\"?\)", type_expr))


def test_all_files_parse_and_each_concern_has_its_file(tf: dict[str, Any]) -> None:
    present = {p.name for p in TERRAFORM.glob("*.tf")}
    assert not EXPECTED_FILES - present, EXPECTED_FILES - present
    assert (TERRAFORM / "terraform.tfvars.example").is_file()


def test_providers_are_pinned_to_a_major_version(tf: dict[str, Any]) -> None:
    providers = tf["terraform"][0]["required_providers"][0]
    for name in ("google", "google-beta"):
        assert re.fullmatch(r"~> [67]\.\d+", providers[name]["version"]), providers[name]


def test_topology_local_reads_the_python_topology_file(tf: dict[str, Any]) -> None:
    expr = tf["locals"]["topology"]
    match = re.fullmatch(r'\$\{jsondecode\(file\("\$\{path\.module\}/(.+)"\)\)\}', expr)
    assert match, expr
    assert (TERRAFORM / match.group(1)).resolve() == TOPOLOGY_FILE.resolve()


def test_every_topology_key_terraform_uses_exists() -> None:
    keys = set(json.loads(TOPOLOGY_FILE.read_text(encoding="utf-8")))
    text = "".join(p.read_text(encoding="utf-8") for p in TERRAFORM.glob("*.tf"))
    used = set(re.findall(r"local\.topology\.(\w+)", text))
    assert used and used <= keys, used - keys


def test_pubsub_names_come_from_topology(tf: dict[str, Any]) -> None:
    assert res(tf, "google_pubsub_topic", "pages")["name"] == "${local.topology.pages_topic}"
    assert (
        res(tf, "google_pubsub_topic", "dead_letter")["name"]
        == "${local.topology.dead_letter_topic}"
    )
    push = res(tf, "google_pubsub_subscription", "pages_push")
    assert push["name"] == "${local.topology.pages_push_subscription}"
    pull = res(tf, "google_pubsub_subscription", "dead_letter_pull")
    assert pull["name"] == "${local.topology.dead_letter_subscription}"
    assert pull["ack_deadline_seconds"] == "${local.topology.dead_letter_ack_deadline_seconds}"


def test_push_subscription_delivery_policy(tf: dict[str, Any]) -> None:
    push = res(tf, "google_pubsub_subscription", "pages_push")
    assert push["topic"] == "${google_pubsub_topic.pages.id}"
    assert push["ack_deadline_seconds"] == "${local.topology.ack_deadline_seconds}"
    retry = push["retry_policy"][0]
    assert retry["minimum_backoff"] == "${local.topology.retry_minimum_backoff_seconds}s"
    assert retry["maximum_backoff"] == "${local.topology.retry_maximum_backoff_seconds}s"
    dead = push["dead_letter_policy"][0]
    assert dead["dead_letter_topic"] == "${google_pubsub_topic.dead_letter.id}"
    assert dead["max_delivery_attempts"] == "${local.topology.max_delivery_attempts}"
    config = push["push_config"][0]
    assert config["push_endpoint"].startswith("${google_cloud_run_v2_service.worker.uri}")
    token = config["oidc_token"][0]
    assert token["service_account_email"] == "${google_service_account.push.email}"
    assert token["audience"] == "${local.worker_url}"


def test_dead_letter_topic_has_a_pull_subscription(tf: dict[str, Any]) -> None:
    pulls = [
        sub
        for sub in all_resources(tf, "google_pubsub_subscription")
        if sub["topic"] == "${google_pubsub_topic.dead_letter.id}" and "push_config" not in sub
    ]
    assert len(pulls) == 1


def test_pubsub_service_agent_can_dead_letter_and_mint_push_tokens(tf: dict[str, Any]) -> None:
    agent = tf["locals"]["pubsub_agent"]
    assert agent == (
        "serviceAccount:service-${data.google_project.this.number}"
        "@gcp-sa-pubsub.iam.gserviceaccount.com"
    )
    publisher = res(tf, "google_pubsub_topic_iam_member", "dead_letter_publisher")
    assert publisher["topic"] == "${google_pubsub_topic.dead_letter.name}"
    assert publisher["role"] == "roles/pubsub.publisher"
    assert publisher["member"] == "${local.pubsub_agent}"
    sub = res(tf, "google_pubsub_subscription_iam_member", "dead_letter_source_subscriber")
    assert sub["subscription"] == "${google_pubsub_subscription.pages_push.name}"
    assert (sub["role"], sub["member"]) == ("roles/pubsub.subscriber", "${local.pubsub_agent}")
    minter = res(tf, "google_service_account_iam_member", "pubsub_mints_push_tokens")
    assert minter["service_account_id"] == "${google_service_account.push.name}"
    assert minter["role"] == "roles/iam.serviceAccountTokenCreator"
    assert minter["member"] == "${local.pubsub_agent}"


def test_gpu_service_is_one_l4_scaling_to_zero(tf: dict[str, Any]) -> None:
    gpu = res(tf, "google_cloud_run_v2_service", "gpu")
    template = gpu["template"][0]
    assert template["node_selector"][0]["accelerator"] == "nvidia-l4"
    assert template["gpu_zonal_redundancy_disabled"] is True
    scaling = template["scaling"][0]
    assert scaling["min_instance_count"] == 0
    assert scaling["max_instance_count"] == "${var.gpu_max_instances}"
    assert tf["variable"]["gpu_max_instances"]["default"] == 3
    container = template["containers"][0]
    resources = container["resources"][0]
    assert resources["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert resources["cpu_idle"] is False
    probe = container["startup_probe"][0]
    assert probe["http_get"][0]["path"] == "/health"


def test_gpu_startup_probe_defaults_respect_cloud_run_limits(tf: dict[str, Any]) -> None:
    probe_type = tf["variable"]["gpu_startup_probe"]["type"]
    defaults = {k: int(v) for k, v in optional_defaults(probe_type).items()}
    window = defaults["period_seconds"] * defaults["failure_threshold"]
    assert window <= 240
    assert defaults["initial_delay_seconds"] <= 240
    # Long enough for a model load (30-90 s observed) with room to spare.
    assert defaults["initial_delay_seconds"] + window >= 180


def test_worker_service_takes_pushes_within_the_ack_deadline(tf: dict[str, Any]) -> None:
    worker = res(tf, "google_cloud_run_v2_service", "worker")
    assert worker["ingress"] == "INGRESS_TRAFFIC_INTERNAL_ONLY"
    template = worker["template"][0]
    assert template["timeout"] == "${local.topology.ack_deadline_seconds}s"
    assert template["max_instance_request_concurrency"] == "${var.worker_concurrency}"
    assert template["scaling"][0]["max_instance_count"] == "${var.worker_max_instances}"
    env = tf["locals"]["worker_env"]
    for setting in (
        'OCRPIPE_VERIFY_PUSH_AUTH = "true"',
        'OCRPIPE_OCR_AUTH = "id-token"',
        "OCRPIPE_OCR_URL = google_cloud_run_v2_service.gpu.uri",
        "OCRPIPE_PUSH_AUDIENCE = local.worker_url",
        "OCRPIPE_PUSH_SERVICE_ACCOUNT = google_service_account.push.email",
    ):
        assert setting in env


def test_terraform_sets_only_settings_that_exist() -> None:
    text = "".join(p.read_text(encoding="utf-8") for p in TERRAFORM.glob("*.tf"))
    names = set(re.findall(r"\bOCRPIPE_[A-Z0-9_]+", text))
    fields = {f"OCRPIPE_{name.upper()}" for name in Settings.model_fields}
    assert names and names <= fields, names - fields


def test_splitter_function(tf: dict[str, Any]) -> None:
    fn = res(tf, "google_cloudfunctions2_function", "splitter")
    build = fn["build_config"][0]
    assert (build["runtime"], build["entry_point"]) == ("python311", "on_finalize")
    service = fn["service_config"][0]
    assert service["timeout_seconds"] == 540
    assert service["environment_variables"] == "${local.splitter_env}"
    assert service["service_account_email"] == "${google_service_account.splitter.email}"
    trigger = fn["event_trigger"][0]
    assert trigger["event_type"] == "google.cloud.storage.object.v1.finalized"
    assert trigger["retry_policy"] == "RETRY_POLICY_RETRY"
    assert trigger["event_filters"][0] == {
        "attribute": "bucket",
        "value": "${google_storage_bucket.input.name}",
    }
    archive = tf["data"]["archive_file"]["splitter"]
    assert archive["source_dir"] == "${path.module}/../build/splitter"


def test_buckets_are_private_and_work_pages_expire(tf: dict[str, Any]) -> None:
    buckets = tf["resource"]["google_storage_bucket"]
    assert set(buckets) == {"input", "work", "output", "source"}
    for bucket in buckets.values():
        assert bucket["uniform_bucket_level_access"] is True
        assert bucket["public_access_prevention"] == "enforced"
    rule = buckets["work"]["lifecycle_rule"][0]
    assert rule["action"][0]["type"] == "Delete"
    assert rule["condition"][0]["age"] == "${local.topology.page_image_retention_days}"


def test_no_project_wide_editor_or_owner(tf: dict[str, Any]) -> None:
    for rtype, named in tf["resource"].items():
        if rtype.startswith("google_project_iam"):
            for body in named.values():
                assert body.get("role") not in {"roles/editor", "roles/owner"}, body
    assert "google_project_iam_binding" not in tf["resource"]
    assert "google_project_iam_policy" not in tf["resource"]


def test_nothing_is_granted_to_the_public() -> None:
    for path in TERRAFORM.glob("*.tf"):
        text = path.read_text(encoding="utf-8")
        assert "allUsers" not in text and "allAuthenticatedUsers" not in text, path.name


def iam_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(GRANTS_FILE.read_text(encoding="utf-8"))
    return data


def test_grants_local_reads_the_python_grants_file(tf: dict[str, Any]) -> None:
    expr = tf["locals"]["iam"]
    match = re.fullmatch(r'\$\{jsondecode\(file\("\$\{path\.module\}/(.+)"\)\)\}', expr)
    assert match, expr
    assert (TERRAFORM / match.group(1)).resolve() == GRANTS_FILE.resolve()


def test_terraform_grants_are_exactly_the_grants_file(tf: dict[str, Any]) -> None:
    """Equal by construction: every bucket, topic and subscription grant of a pipeline
    identity is one for_each entry over ocrpipe/iam.json with each field copied through, and
    nothing else grants on those resources but the modelled-only service agents."""
    locals_ = tf["locals"]
    grants = iam_json()["identities"]
    # Every identity of the file has members here, and nothing else does.
    assert set(locals_["iam_members"]) == set(grants)
    assert locals_["iam_members"]["operator"] == "${var.operators}"
    for identity, account in (("splitter", "splitter"), ("worker", "worker"),
                              ("eventarc", "trigger")):  # fmt: skip
        assert locals_["iam_members"][identity] == [f"${{google_service_account.{account}.member}}"]
        sa = res(tf, "google_service_account", account)
        assert sa["account_id"] == f"${{local.iam.identities.{identity}.service_account}}"
    # Every logical name a deployed grant uses is mapped to a terraform resource.
    for spec in grants.values():
        for grant in spec["grants"]:
            if grant.get("local_only"):
                continue
            kind = next(k for k in ("bucket", "topic", "subscription") if k in grant)
            table = {"bucket": "iam_buckets", "topic": "iam_topics",
                     "subscription": "iam_subscriptions"}[kind]  # fmt: skip
            assert grant[kind] in locals_[table], grant
    # The flattening copies role, member, resource and condition; local_only is skipped.
    flat = locals_["iam_grants"]
    for piece in ("for identity, spec in local.iam.identities", "for grant in spec.grants",
                  "for index, member in local.iam_members[identity]", "role = grant.role",
                  "member = member", "condition = try(grant.condition, null)",
                  "if !try(grant.local_only, false)"):  # fmt: skip
        assert piece in flat, piece
    for rtype, attr, table, kind in (
        ("google_storage_bucket_iam_member", "bucket", "iam_buckets", "bucket"),
        ("google_pubsub_topic_iam_member", "topic", "iam_topics", "topic"),
        ("google_pubsub_subscription_iam_member", "subscription", "iam_subscriptions",
         "subscription"),
    ):  # fmt: skip
        body = res(tf, rtype, "grants")
        assert body["for_each"] == f"${{local.iam_{kind}_grants}}"
        assert body[attr] == f"${{local.{table}[each.value.{kind}]}}"
        assert (body["role"], body["member"]) == ("${each.value.role}", "${each.value.member}")
        assert locals_[f"iam_{kind}_grants"] == (
            f"${{{{for key, grant in local.iam_grants : key => grant if grant.{kind} != null}}}}"
        )
        others = {n for n in tf["resource"][rtype] if n != "grants"}
        assert others <= {"builder_reads_source", "dead_letter_publisher",
                          "dead_letter_source_subscriber"}, others  # fmt: skip
    condition = res(tf, "google_storage_bucket_iam_member", "grants")["dynamic"][0]["condition"]
    content = condition["content"][0]
    assert content["title"] == "${condition.value.title}"
    assert content["expression"] == (
        '${replace(condition.value.expression, "$${bucket}", local.iam_buckets[each.value.bucket])}'
    )


def test_the_splitter_never_lists_or_writes_results_in_output() -> None:
    authz = Authorizer.from_grants(Settings(output_bucket="out"))
    out = "projects/_/buckets/out"
    for prefix in ("", "a.pdf/@1/", "a.pdf/@1/pages/"):
        assert not authz.check("splitter", "storage.objects.list", out, list_prefix=prefix).allowed
    for name in ("pages/00001.md", "pages/00001.error.json", "document.md", "document.json"):
        assert not authz.check(
            "splitter", "storage.objects.create", f"{out}/objects/a.pdf/@1/{name}"
        ).allowed
    for name in ("manifest.json", "error.json"):
        assert authz.check(
            "splitter", "storage.objects.create", f"{out}/objects/a.pdf/@1/{name}"
        ).allowed
    # A rejected input is the latest finished generation: the splitter advances the pointer.
    latest = authz.check("splitter", "storage.objects.create", f"{out}/objects/a.pdf/@latest.json")
    assert latest.allowed
    other = authz.check("splitter", "storage.objects.create", f"{out}/objects/a.pdf/latest.json")
    assert not other.allowed
    output = [
        g for g in iam_json()["identities"]["splitter"]["grants"] if g.get("bucket") == "output"
    ]
    assert [g["role"] for g in output] == ["roles/storage.objectUser"]  # 412, not 403, on a repeat
    assert output[0]["condition"]["expression"].count("endsWith") == 3


def test_worker_cannot_write_the_input_or_work_bucket() -> None:
    for grant in iam_json()["identities"]["worker"]["grants"]:
        if grant.get("bucket") in ("input", "work"):
            assert grant["role"] not in WRITE_ROLES, grant


def test_operators_are_a_typed_described_variable(tf: dict[str, Any]) -> None:
    operators = tf["variable"]["operators"]
    assert operators["type"] == "${list(string)}"
    assert operators["default"] == []
    assert "iam.json" in operators["description"]


def test_terraform_grants_only_roles_the_local_policy_knows() -> None:
    for spec in iam_json()["identities"].values():
        for grant in spec["grants"]:
            assert grant["role"] in ROLE_PERMISSIONS, grant


@pytest.mark.parametrize(
    ("service", "invoker"),
    [
        ("${google_cloud_run_v2_service.worker.name}", "push"),
        ("${google_cloud_run_v2_service.gpu.name}", "worker"),
        ("${google_cloudfunctions2_function.splitter.name}", "trigger"),
    ],
)
def test_each_service_has_one_invoker(tf: dict[str, Any], service: str, invoker: str) -> None:
    grants = [
        body["member"]
        for body in all_resources(tf, "google_cloud_run_v2_service_iam_member")
        if body["name"] == service and body["role"] == "roles/run.invoker"
    ]
    assert grants == [f"${{google_service_account.{invoker}.member}}"]


def test_env_vars_output_gives_the_cli_its_settings(tf: dict[str, Any]) -> None:
    assert tf["output"]["env_vars"]["value"] == "${local.common_env}"
    env = tf["locals"]["common_env"]
    for key in (
        "OCRPIPE_PROJECT",
        "OCRPIPE_INPUT_BUCKET",
        "OCRPIPE_OUTPUT_BUCKET",
        "OCRPIPE_WORK_BUCKET",
        "OCRPIPE_PAGES_TOPIC",
        "OCRPIPE_DEAD_LETTER_SUBSCRIPTION",
        "OCRPIPE_DOCUMENTS_TOPIC",
    ):
        assert key in env
    assert env["OCRPIPE_DEAD_LETTER_SUBSCRIPTION"] == "${local.topology.dead_letter_subscription}"


def test_documents_topic_comes_from_the_topology(tf: dict[str, Any]) -> None:
    topic = tf["resource"]["google_pubsub_topic"]["documents"]
    assert topic["name"] == "${local.topology.documents_topic}"


# --- the reconciler ------------------------------------------------------------------------


def test_the_reconciler_job_runs_the_worker_image_as_its_own_account(tf: dict[str, Any]) -> None:
    job = res(tf, "google_cloud_run_v2_job", "reconciler")
    task = job["template"][0]["template"][0]
    assert task["service_account"] == "${google_service_account.reconciler.email}"
    container = task["containers"][0]
    assert container["image"] == "${var.worker_image}"
    assert container["command"] == ["python", "-m", "reconciler_job.main"]
    assert (REPO / "reconciler_job" / "main.py").is_file()
    assert "local.common_env" in tf["locals"]["reconciler_env"]
    sa = res(tf, "google_service_account", "reconciler")
    assert sa["account_id"] == "${local.iam.identities.reconciler.service_account}"


def test_the_scheduler_starts_the_job_and_nothing_else(tf: dict[str, Any]) -> None:
    schedule = res(tf, "google_cloud_scheduler_job", "reconciler")
    assert schedule["schedule"] == "${var.reconciler.schedule}"
    target = schedule["http_target"][0]
    assert target["http_method"] == "POST"
    assert target["uri"] == (
        "https://run.googleapis.com/v2/${google_cloud_run_v2_job.reconciler.id}:run"
    )
    token = target["oauth_token"][0]
    assert token["service_account_email"] == "${google_service_account.scheduler.email}"
    invokers = {
        body["member"]
        for body in all_resources(tf, "google_cloud_run_v2_job_iam_member")
        if body["role"] == "roles/run.invoker"
    }
    assert invokers == {"${google_service_account.scheduler.member}", "${each.value}"}
    operators = res(tf, "google_cloud_run_v2_job_iam_member", "operators_run_reconciler")
    assert operators["for_each"] == "${toset(var.operators)}"
    # The scheduler's account holds nothing else.
    for rtype, named in tf["resource"].items():
        if rtype.endswith("_iam_member"):
            for name, body in named.items():
                if body.get("member") == "${google_service_account.scheduler.member}":
                    assert name == "scheduler_runs_reconciler", (rtype, name)
    assert "cloudscheduler.googleapis.com" in tf["locals"]["apis"]


def test_the_reconciler_never_writes_a_result_and_the_operator_never_an_image() -> None:
    authz = Authorizer.from_grants(Settings(output_bucket="out", work_bucket="work"))
    out, work = "projects/_/buckets/out", "projects/_/buckets/work"
    for name in ("pages/00001.md", "pages/00001.error.json", "document.md", "document.json"):
        assert not authz.check(
            "reconciler", "storage.objects.create", f"{out}/objects/a.pdf/@1/{name}"
        ).allowed
    for name in ("a.pdf/@1/manifest.json", "a.pdf/@1/error.json", "a.pdf/@latest.json"):
        assert authz.check("reconciler", "storage.objects.create", f"{out}/objects/{name}").allowed
    assert authz.check("reconciler", "storage.objects.list", out, list_prefix="").allowed
    image = f"{work}/objects/pages/d1/00001.png"
    for permission in ("storage.objects.create", "storage.objects.delete"):  # rewrite in place
        assert authz.check("reconciler", permission, image).allowed
        assert not authz.check("operator", permission, image).allowed
