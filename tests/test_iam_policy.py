"""The policy engine of the local stack (ocrpipe.local.iam.policy) and the grants of
ocrpipe/iam.json: what each identity may do, evaluated the way IAM evaluates it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from ocrpipe.local.iam.policy import (
    ROLE_PERMISSIONS,
    Authorizer,
    Decision,
    GrantsError,
    usage_report,
)
from ocrpipe.settings import Settings

SETTINGS = Settings(project="p1", input_bucket="in-b", work_bucket="work-b", output_bucket="out.b")
IN, WORK, OUT = "projects/_/buckets/in-b", "projects/_/buckets/work-b", "projects/_/buckets/out.b"
PAGES_TOPIC = f"projects/p1/topics/{SETTINGS.pages_topic}"
DLQ_SUB = f"projects/p1/subscriptions/{SETTINGS.dead_letter_subscription}"
DOC = "report.pdf/@1712"


def obj(bucket: str, name: str) -> str:
    return f"{bucket}/objects/{name}"


@pytest.fixture(scope="module")
def authz() -> Authorizer:
    return Authorizer.from_grants(SETTINGS)


def write_grants(tmp_path: Path, grants: Sequence[Mapping[str, object]]) -> Path:
    path = tmp_path / "iam.json"
    path.write_text(json.dumps({"identities": {"who": {"grants": grants}}}), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("role", "has", "lacks"),
    [
        ("roles/storage.objectViewer", {"storage.objects.get", "storage.objects.list"},
         {"storage.objects.create", "storage.objects.delete", "storage.buckets.get"}),
        ("roles/storage.objectCreator", {"storage.objects.create"},
         {"storage.objects.delete", "storage.objects.get", "storage.objects.list",
          "storage.objects.update"}),
        ("roles/storage.objectUser",
         {"storage.objects.get", "storage.objects.list", "storage.objects.create",
          "storage.objects.update", "storage.objects.delete"},
         {"storage.objects.setIamPolicy", "storage.buckets.get"}),
        ("roles/storage.objectAdmin", {"storage.objects.delete", "storage.objects.setIamPolicy"},
         {"storage.buckets.get", "storage.buckets.delete"}),
        ("roles/storage.admin", {"storage.buckets.get", "storage.buckets.delete",
                                 "storage.objects.delete"}, set()),
        ("roles/pubsub.publisher", {"pubsub.topics.publish"}, {"pubsub.subscriptions.consume"}),
        ("roles/pubsub.subscriber",
         {"pubsub.subscriptions.consume", "pubsub.topics.attachSubscription"},
         {"pubsub.topics.publish", "pubsub.subscriptions.get"}),
        ("roles/pubsub.viewer", {"pubsub.subscriptions.get", "pubsub.topics.get"},
         {"pubsub.subscriptions.consume", "pubsub.topics.publish"}),
    ],
)  # fmt: skip
def test_predefined_roles_expand_as_documented(role: str, has: set[str], lacks: set[str]) -> None:
    assert has <= ROLE_PERMISSIONS[role]
    assert not lacks & ROLE_PERMISSIONS[role]


def test_a_bucket_grant_covers_its_objects_and_nothing_else(tmp_path: Path) -> None:
    path = write_grants(tmp_path, [{"bucket": "input", "role": "roles/storage.objectViewer"}])
    authz = Authorizer.from_grants(SETTINGS, path)
    assert authz.check("who", "storage.objects.get", obj(IN, "a/b.pdf")).allowed
    assert authz.check("who", "storage.objects.list", IN, list_prefix="").allowed
    assert not authz.check("who", "storage.objects.get", obj(WORK, "a")).allowed
    assert not authz.check("who", "storage.objects.create", obj(IN, "a")).allowed
    # A bucket whose name extends another's is another bucket.
    assert not authz.check(
        "who", "storage.objects.get", "projects/_/buckets/in-b2/objects/a"
    ).allowed


def test_unknown_identity_is_refused_everything(authz: Authorizer) -> None:
    decision = authz.check("mallory", "storage.objects.get", obj(IN, "a.pdf"))
    assert decision == Decision(False, "mallory", "storage.objects.get", obj(IN, "a.pdf"))
    assert authz.granted("mallory") == set()


def test_name_condition_never_matches_a_list(authz: Authorizer) -> None:
    """GCS checks storage.objects.list on the bucket, so a condition on object names (the
    splitter's) refuses every list, even of the splitter's own document prefix."""
    for prefix in (f"{DOC}/", f"{DOC}/pages/", ""):
        assert not authz.check("splitter", "storage.objects.list", OUT, list_prefix=prefix).allowed
    assert authz.check("splitter", "storage.objects.create", obj(OUT, f"{DOC}/manifest.json"))


def test_list_prefix_condition_uses_the_api_attribute(tmp_path: Path) -> None:
    expression = (
        "api.getAttribute('storage.googleapis.com/objectListPrefix', '').startsWith('pages/')"
        " || resource.name.startsWith('projects/_/buckets/${bucket}/objects/pages/')"
    )
    grant = {"bucket": "work", "role": "roles/storage.objectViewer",
             "condition": {"title": "pages-only", "expression": expression}}  # fmt: skip
    authz = Authorizer.from_grants(SETTINGS, write_grants(tmp_path, [grant]))
    assert authz.check("who", "storage.objects.list", WORK, list_prefix="pages/d1/").allowed
    assert not authz.check("who", "storage.objects.list", WORK, list_prefix="other/").allowed
    assert not authz.check("who", "storage.objects.list", WORK).allowed  # no prefix attribute
    assert authz.check("who", "storage.objects.get", obj(WORK, "pages/d1/00001.png")).allowed
    assert not authz.check("who", "storage.objects.get", obj(WORK, "other/x")).allowed


def test_conditions_see_resource_type_and_request_time(tmp_path: Path) -> None:
    expression = (
        "resource.type == 'storage.googleapis.com/Object'"
        " && resource.service == 'storage.googleapis.com'"
        " && request.time < timestamp('2999-01-01T00:00:00Z')"
    )
    grant = {"bucket": "input", "role": "roles/storage.objectViewer",
             "condition": {"title": "objects-until-2999", "expression": expression}}  # fmt: skip
    authz = Authorizer.from_grants(SETTINGS, write_grants(tmp_path, [grant]))
    assert authz.check("who", "storage.objects.get", obj(IN, "a")).allowed
    assert not authz.check("who", "storage.objects.list", IN, list_prefix="").allowed


def test_a_condition_that_fails_to_evaluate_grants_nothing(tmp_path: Path) -> None:
    condition = {"title": "broken", "expression": "resource.nosuchfield == 'x'"}
    grant = {"bucket": "input", "role": "roles/storage.objectViewer", "condition": condition}
    authz = Authorizer.from_grants(SETTINGS, write_grants(tmp_path, [grant]))
    assert not authz.check("who", "storage.objects.get", obj(IN, "a")).allowed


@pytest.mark.parametrize(
    "grant",
    [
        {"bucket": "nope", "role": "roles/storage.objectViewer"},
        {"bucket": "input", "role": "roles/owner"},
        {"bucket": "input", "topic": "pages_topic", "role": "roles/pubsub.publisher"},
        {"bucket": "input", "role": "roles/storage.objectViewer",
         "condition": {"title": "bad", "expression": "resource.name.startsWith("}},
    ],
)  # fmt: skip
def test_a_bad_grants_file_is_refused(tmp_path: Path, grant: dict[str, object]) -> None:
    with pytest.raises(GrantsError):
        Authorizer.from_grants(SETTINGS, write_grants(tmp_path, [grant]))


def test_overrides_revoke_one_permission_and_add_a_role() -> None:
    overrides = {
        "worker": {
            "revoke": [{"bucket": "output", "permission": "storage.objects.list"}],
            "add": [{"bucket": "input", "role": "roles/storage.objectAdmin"}],
        }
    }
    authz = Authorizer.from_grants(SETTINGS, overrides=overrides)
    assert not authz.check("worker", "storage.objects.list", OUT, list_prefix=DOC).allowed
    assert authz.check("worker", "storage.objects.get", obj(OUT, f"{DOC}/document.md")).allowed
    assert authz.check("worker", "storage.objects.delete", obj(IN, "report.pdf")).allowed
    assert ("storage.objects.list", OUT) not in authz.granted("worker")


def test_overrides_file_comes_from_settings(tmp_path: Path) -> None:
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps({"worker": {"revoke": [
        {"bucket": "work", "permission": "storage.objects.get"}]}}), encoding="utf-8")  # fmt: skip
    settings = SETTINGS.model_copy(update={"iam_overrides_file": str(path)})
    authz = Authorizer.from_grants(settings)
    assert not authz.check("worker", "storage.objects.get", obj(WORK, "pages/d/00001.png")).allowed


def test_usage_report_separates_used_unused_and_refused(authz: Authorizer) -> None:
    decisions = [
        authz.check("worker", "storage.objects.get", obj(WORK, "pages/d/00001.png")),
        authz.check("worker", "storage.objects.get", obj(WORK, "pages/d/00002.png")),
        authz.check("worker", "storage.objects.create", obj(IN, "x")),
    ]
    report = usage_report(decisions, authz)["worker"]
    assert report["used"] == [f"storage.objects.get on {WORK}/objects/*"]
    assert f"storage.objects.list on {WORK}" in report["granted_never_used"]
    assert f"storage.objects.get on {WORK}/objects/*" not in report["granted_never_used"]
    assert report["refused"] == [f"storage.objects.create on {IN}/objects/x"]


# What each identity does in the decided split of responsibilities (issue 10): every call
# it makes must be allowed, and the calls that belong to someone else must be refused.
# (identity, permission, resource, list prefix)
MUST_ALLOW = [
    ("splitter", "storage.objects.get", obj(IN, "report.pdf"), None),
    ("splitter", "storage.objects.list", IN, "report.pdf"),
    ("splitter", "storage.objects.create", obj(WORK, "pages/d1/00001.png"), None),
    ("splitter", "storage.objects.list", WORK, "pages/d1/"),
    ("splitter", "storage.objects.delete", obj(WORK, "pages/d1/lease-1.json"), None),
    ("splitter", "storage.objects.create", obj(OUT, f"{DOC}/manifest.json"), None),
    ("splitter", "storage.objects.create", obj(OUT, f"{DOC}/error.json"), None),
    ("splitter", "pubsub.topics.publish", PAGES_TOPIC, None),
    ("worker", "storage.objects.get", obj(IN, "report.pdf"), None),
    ("worker", "storage.objects.get", obj(WORK, "pages/d1/00001.png"), None),
    ("worker", "storage.objects.list", OUT, f"{DOC}/pages/"),
    ("worker", "storage.objects.create", obj(OUT, f"{DOC}/pages/00001.md"), None),
    ("worker", "storage.objects.create", obj(OUT, f"{DOC}/pages/00002.error.json"), None),
    ("worker", "storage.objects.create", obj(OUT, f"{DOC}/document.md"), None),
    ("worker", "storage.objects.delete", obj(OUT, f"{DOC}/document.md"), None),  # overwrite
    ("worker", "storage.objects.create", obj(OUT, "_invalid-messages/m1.json"), None),
    ("operator", "storage.objects.create", obj(IN, "report.pdf"), None),  # submit
    ("operator", "storage.objects.delete", obj(IN, "report.pdf"), None),  # retry rewrite
    ("operator", "storage.objects.get", obj(IN, "report.pdf"), None),
    ("operator", "storage.objects.list", IN, ""),  # status of every input
    ("operator", "storage.objects.list", OUT, "report.pdf/@"),
    ("operator", "storage.objects.get", obj(OUT, f"{DOC}/document.md"), None),
    ("operator", "storage.objects.delete", obj(OUT, f"{DOC}/pages/00002.error.json"), None),
    ("operator", "storage.objects.list", WORK, "pages/d1/"),
    ("operator", "pubsub.topics.publish", PAGES_TOPIC, None),
    ("operator", "pubsub.subscriptions.consume", DLQ_SUB, None),
    ("gcs-agent", "pubsub.topics.publish", "projects/p1/topics/ocrpipe-gcs-notifications", None),
]
MUST_REFUSE = [
    ("splitter", "storage.objects.list", OUT, f"{DOC}/pages/"),
    ("splitter", "storage.objects.create", obj(OUT, f"{DOC}/pages/00001.md"), None),
    ("splitter", "storage.objects.create", obj(OUT, f"{DOC}/pages/00001.error.json"), None),
    ("splitter", "storage.objects.create", obj(OUT, f"{DOC}/document.md"), None),
    ("splitter", "storage.objects.delete", obj(IN, "report.pdf"), None),
    ("worker", "storage.objects.create", obj(IN, "report.pdf"), None),
    ("worker", "storage.objects.create", obj(WORK, "pages/d1/00001.png"), None),
    ("worker", "storage.objects.delete", obj(WORK, "pages/d1/00001.png"), None),
    ("worker", "pubsub.topics.publish", PAGES_TOPIC, None),
    ("operator", "storage.objects.create", obj(WORK, "pages/d1/00001.png"), None),
    (
        "operator",
        "pubsub.subscriptions.consume",
        f"projects/p1/subscriptions/{SETTINGS.pages_subscription}",
        None,
    ),
    ("eventarc", "storage.objects.get", obj(IN, "report.pdf"), None),
    ("eventarc", "pubsub.topics.publish", PAGES_TOPIC, None),
    ("gcs-agent", "pubsub.topics.publish", PAGES_TOPIC, None),
    ("gcs-agent", "storage.objects.get", obj(IN, "report.pdf"), None),
]


@pytest.mark.parametrize(("identity", "permission", "resource", "prefix"), MUST_ALLOW)
def test_each_identity_may_do_its_part(
    authz: Authorizer, identity: str, permission: str, resource: str, prefix: str | None
) -> None:
    assert authz.check(identity, permission, resource, list_prefix=prefix).allowed


@pytest.mark.parametrize(("identity", "permission", "resource", "prefix"), MUST_REFUSE)
def test_no_identity_may_do_anothers_part(
    authz: Authorizer, identity: str, permission: str, resource: str, prefix: str | None
) -> None:
    assert not authz.check(identity, permission, resource, list_prefix=prefix).allowed


def test_eventarc_holds_no_grants_and_nobody_holds_bucket_admin(authz: Authorizer) -> None:
    assert authz.granted("eventarc") == set()
    for identity in authz.identities:
        assert not {p for p, _ in authz.granted(identity)} & {
            "storage.buckets.delete", "storage.buckets.setIamPolicy", "storage.objects.setIamPolicy"
        }  # fmt: skip
