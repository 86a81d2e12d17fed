"""The grants of ``ocrpipe/iam.json`` as a policy engine: may this identity use this
permission on this resource?

Pure: the only I/O is loading the JSON. The local stack's authorizing proxies ask
:meth:`Authorizer.check` before every emulator call, so the grants terraform deploys are the
grants the local stack enforces.

The model follows Google's IAM as documented:

* A predefined role is a set of permissions (:data:`ROLE_PERMISSIONS`). A grant on a bucket
  applies to the bucket and every object in it; on a topic or subscription, to that one.
* Resource names are the ones IAM checks: ``projects/_/buckets/B`` for bucket-level calls
  (``storage.objects.list`` is one of them), ``projects/_/buckets/B/objects/NAME`` for
  object calls, ``projects/P/topics/T`` and ``projects/P/subscriptions/S``.
* A condition is a CEL expression (evaluated by the ``cel`` package, a real CEL
  implementation) over ``resource.name``, ``resource.type``, ``resource.service``,
  ``request.time`` and ``api.getAttribute(key, default)``. For a list call the attribute
  ``storage.googleapis.com/objectListPrefix`` is the requested prefix. A condition that
  fails to evaluate grants nothing, as in IAM allow policies.
* An identity with no grants, or one the file does not name, is refused everything.
* An identity marked ``project_owner`` holds ``roles/owner`` on the project: every
  permission on every resource (the person who runs terraform and gcloud; the local
  stack's ``owner``, which ``ocrpipe follow --local`` uses to make its subscription).

Tests narrow or widen one identity's grants with *overrides* (a mapping, or a JSON file
named by the ``iam_overrides_file`` setting)::

    {"worker": {"revoke": [{"bucket": "output", "permission": "storage.objects.list"}],
                "add": [{"bucket": "input", "role": "roles/storage.objectAdmin"}]}}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cel

from ocrpipe.settings import Settings
from ocrpipe.topology import load_topology

GRANTS_FILE = Path(__file__).resolve().parents[2] / "iam.json"
PROJECT_OWNER_GRANT = "the project (roles/owner)"
LIST_PREFIX_ATTRIBUTE = "storage.googleapis.com/objectListPrefix"
BUCKET_TYPE = "storage.googleapis.com/Bucket"
OBJECT_TYPE = "storage.googleapis.com/Object"
TOPIC_TYPE = "pubsub.googleapis.com/Topic"
SUBSCRIPTION_TYPE = "pubsub.googleapis.com/Subscription"

_OBJECT_USER_STORAGE = (
    "storage.folders.create",
    "storage.folders.delete",
    "storage.folders.get",
    "storage.folders.list",
    "storage.folders.rename",
    "storage.managedFolders.create",
    "storage.managedFolders.delete",
    "storage.managedFolders.get",
    "storage.managedFolders.list",
    "storage.multipartUploads.abort",
    "storage.multipartUploads.create",
    "storage.multipartUploads.list",
    "storage.multipartUploads.listParts",
    "storage.objects.create",
    "storage.objects.delete",
    "storage.objects.get",
    "storage.objects.list",
    "storage.objects.restore",
    "storage.objects.update",
)
# objectAdmin is objectUser plus the objects' own policies and retention.
_OBJECT_ADMIN_STORAGE = (
    *_OBJECT_USER_STORAGE,
    "storage.managedFolders.getIamPolicy",
    "storage.managedFolders.setIamPolicy",
    "storage.objects.getIamPolicy",
    "storage.objects.setIamPolicy",
    "storage.objects.setRetention",
    "storage.objects.overrideUnlockedRetention",
)
_PROJECT_READ = ("resourcemanager.projects.get", "resourcemanager.projects.list")

# Predefined roles as Google's IAM reference lists them (the permissions that matter on a
# bucket, topic or subscription; project-only ones such as resourcemanager.* are kept for
# completeness). Object roles do not include storage.buckets.get.
ROLE_PERMISSIONS: Mapping[str, frozenset[str]] = {
    "roles/storage.objectViewer": frozenset(
        (
            *_PROJECT_READ,
            "storage.folders.get",
            "storage.folders.list",
            "storage.managedFolders.get",
            "storage.managedFolders.list",
            "storage.objects.get",
            "storage.objects.list",
        )
    ),
    "roles/storage.objectCreator": frozenset(
        (
            *_PROJECT_READ,
            "orgpolicy.policy.get",
            "storage.folders.create",
            "storage.managedFolders.create",
            "storage.multipartUploads.abort",
            "storage.multipartUploads.create",
            "storage.multipartUploads.listParts",
            "storage.objects.create",
        )
    ),
    "roles/storage.objectUser": frozenset(
        (*_PROJECT_READ, "orgpolicy.policy.get", *_OBJECT_USER_STORAGE)
    ),
    "roles/storage.objectAdmin": frozenset(
        (*_PROJECT_READ, "orgpolicy.policy.get", *_OBJECT_ADMIN_STORAGE)
    ),
    "roles/storage.admin": frozenset(
        (
            *_PROJECT_READ,
            "orgpolicy.policy.get",
            *_OBJECT_ADMIN_STORAGE,
            "storage.buckets.create",
            "storage.buckets.delete",
            "storage.buckets.get",
            "storage.buckets.getIamPolicy",
            "storage.buckets.list",
            "storage.buckets.setIamPolicy",
            "storage.buckets.update",
        )
    ),
    "roles/pubsub.publisher": frozenset({"pubsub.topics.publish"}),
    "roles/pubsub.subscriber": frozenset(
        {
            "pubsub.snapshots.seek",
            "pubsub.subscriptions.consume",
            "pubsub.topics.attachSubscription",
        }
    ),
    "roles/pubsub.viewer": frozenset(
        (
            *_PROJECT_READ,
            "pubsub.schemas.get",
            "pubsub.schemas.list",
            "pubsub.schemas.listRevisions",
            "pubsub.schemas.validate",
            "pubsub.snapshots.get",
            "pubsub.snapshots.list",
            "pubsub.subscriptions.get",
            "pubsub.subscriptions.list",
            "pubsub.topics.get",
            "pubsub.topics.list",
        )
    ),
}

# Which permissions a grant on each kind of resource can actually exercise there.
# (Folders need a hierarchical-namespace bucket, multipart uploads the XML API: the pipeline
# uses neither, so a report of unused grants leaves them out.)
_KIND_PREFIXES = {
    "bucket": ("storage.objects.", "storage.buckets."),
    "topic": ("pubsub.topics.",),
    "subscription": ("pubsub.subscriptions.",),
}
# Bucket-level permissions: IAM checks them on projects/_/buckets/B, not on an object.
_OBJECT_LEVEL = ("storage.objects.",)
_BUCKET_LEVEL_OBJECT_PERMISSIONS = frozenset({"storage.objects.list"})


class GrantsError(ValueError):
    """The grants file (or an override) does not describe a valid policy."""


@dataclass(frozen=True)
class Decision:
    """One authorization answer, as the usage file records it."""

    allowed: bool
    identity: str
    permission: str
    resource: str
    grant: str | None = None  # the granted pattern that allowed it (see Authorizer.granted)


@dataclass(frozen=True)
class Condition:
    title: str
    description: str
    expression: str  # with the bucket name substituted
    program: Any = field(compare=False, repr=False)

    def allows(self, resource: str, resource_type: str, attributes: Mapping[str, str]) -> bool:
        context = cel.Context(
            variables={
                "resource": {
                    "name": resource,
                    "type": resource_type,
                    "service": resource_type.split("/", 1)[0],
                },
                "request": {"time": datetime.now(UTC)},
                "api": dict(attributes),
            },
            functions={"getAttribute": _get_attribute},
        )
        try:
            return self.program.execute(context) is True
        except (RuntimeError, ValueError, TypeError, KeyError):
            return False  # an allow condition that cannot be evaluated grants nothing


def _get_attribute(api: Any, key: Any, default: Any) -> Any:
    if isinstance(api, Mapping):
        return api.get(key, default)
    return default


@dataclass(frozen=True)
class Grant:
    """One role on one resource (a bucket, topic or subscription), maybe conditional."""

    kind: str  # bucket | topic | subscription
    logical: str  # input, output, pages_topic, ...
    scope: str  # the resource name the role is granted on
    role: str
    permissions: frozenset[str]
    condition: Condition | None = None
    local_only: bool = False

    def covers(self, resource: str) -> bool:
        if resource == self.scope:
            return True
        return self.kind == "bucket" and resource.startswith(self.scope + "/objects/")

    def pattern(self, permission: str) -> str:
        if (
            self.kind == "bucket"
            and permission.startswith(_OBJECT_LEVEL)
            and permission not in _BUCKET_LEVEL_OBJECT_PERMISSIONS
        ):
            base = f"{self.scope}/objects/*"
        else:
            base = self.scope
        return f"{base} if {self.condition.title}" if self.condition else base

    def effective(self) -> frozenset[str]:
        prefixes = _KIND_PREFIXES[self.kind]
        return frozenset(p for p in self.permissions if p.startswith(prefixes))


@dataclass(frozen=True)
class _Revocation:
    scope: str
    kind: str
    permission: str

    def matches(self, permission: str, resource: str) -> bool:
        if permission != self.permission:
            return False
        return resource == self.scope or (
            self.kind == "bucket" and resource.startswith(self.scope + "/objects/")
        )


class Authorizer:
    """Answers :meth:`check` from the grants of each identity."""

    def __init__(
        self,
        grants: Mapping[str, tuple[Grant, ...]],
        revoked: Mapping[str, tuple[_Revocation, ...]] | None = None,
        emails: Mapping[str, str] | None = None,
        owners: Iterable[str] = (),
    ) -> None:
        self._grants = dict(grants)
        self._revoked = dict(revoked or {})
        self._emails = dict(emails or {})
        self._owners = frozenset(owners)

    @classmethod
    def from_grants(
        cls,
        settings: Settings,
        grants_path: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Authorizer:
        """The policy of ``grants_path`` (default: the packaged ``iam.json``) with bucket,
        topic and subscription names from ``settings``. ``overrides`` (default: the JSON
        file named by ``settings.iam_overrides_file``, if any) add or revoke grants."""
        raw = json.loads((grants_path or GRANTS_FILE).read_text(encoding="utf-8"))
        if overrides is None and settings.iam_overrides_file:
            overrides = json.loads(Path(settings.iam_overrides_file).read_text("utf-8"))
        names = _Names(settings)
        identities = raw.get("identities")
        if not isinstance(identities, Mapping):
            raise GrantsError("the grants file has no 'identities' object")
        grants: dict[str, tuple[Grant, ...]] = {}
        emails: dict[str, str] = {}
        owners = [identity for identity, spec in identities.items() if spec.get("project_owner")]
        for identity, spec in identities.items():
            grants[identity] = tuple(names.grant(g) for g in spec.get("grants", []))
            if account := spec.get("service_account"):
                emails[identity] = f"{account}@{settings.project}.iam.gserviceaccount.com"
        revoked: dict[str, tuple[_Revocation, ...]] = {}
        for identity, change in (overrides or {}).items():
            if not isinstance(change, Mapping) or set(change) - {"add", "revoke"}:
                raise GrantsError(f"override for {identity!r}: only 'add' and 'revoke'")
            added = tuple(names.grant(g) for g in change.get("add", []))
            grants[identity] = grants.get(identity, ()) + added
            revoked[identity] = tuple(names.revocation(r) for r in change.get("revoke", []))
        return cls(grants, revoked, emails, owners)

    @property
    def identities(self) -> list[str]:
        return sorted(self._grants)

    def email(self, identity: str) -> str:
        """The principal GCS names in a refusal (the service account, as in production)."""
        return self._emails.get(identity, f"{identity}@local.ocrpipe")

    def check(
        self, identity: str, permission: str, resource: str, *, list_prefix: str | None = None
    ) -> Decision:
        """May ``identity`` use ``permission`` on ``resource``? ``list_prefix`` is the
        prefix of a list call (``storage.objects.list`` on ``projects/_/buckets/B``)."""
        for revocation in self._revoked.get(identity, ()):
            if revocation.matches(permission, resource):
                return Decision(False, identity, permission, resource)
        if identity in self._owners:
            return Decision(True, identity, permission, resource, PROJECT_OWNER_GRANT)
        attributes = {LIST_PREFIX_ATTRIBUTE: list_prefix} if list_prefix is not None else {}
        resource_type = _resource_type(resource)
        for grant in self._grants.get(identity, ()):
            if not grant.covers(resource) or permission not in grant.permissions:
                continue
            if grant.condition and not grant.condition.allows(resource, resource_type, attributes):
                continue
            return Decision(True, identity, permission, resource, grant.pattern(permission))
        return Decision(False, identity, permission, resource)

    def granted(self, identity: str) -> set[tuple[str, str]]:
        """Every (permission, resource pattern) the identity holds: a pattern is a bucket,
        ``<bucket>/objects/*``, a topic or a subscription, followed by ``if <condition
        title>`` for a conditional grant."""
        out: set[tuple[str, str]] = set()
        revoked = self._revoked.get(identity, ())
        for grant in self._grants.get(identity, ()):
            for permission in grant.effective():
                if any(r.permission == permission and r.scope == grant.scope for r in revoked):
                    continue
                out.add((permission, grant.pattern(permission)))
        return out


def usage_report(
    used: Iterable[Decision], authorizer: Authorizer
) -> dict[str, dict[str, list[str]]]:
    """Per identity: ``used`` (granted patterns some allowed call needed),
    ``granted_never_used`` (the rest of its grants: candidates for removal) and
    ``refused`` (calls it made that the grants do not allow)."""
    seen: dict[str, set[tuple[str, str]]] = {}
    refused: dict[str, set[str]] = {}
    for decision in used:
        if decision.allowed and decision.grant is not None:
            seen.setdefault(decision.identity, set()).add((decision.permission, decision.grant))
        elif not decision.allowed:
            refused.setdefault(decision.identity, set()).add(
                f"{decision.permission} on {decision.resource}"
            )
    report: dict[str, dict[str, list[str]]] = {}
    for identity in sorted(set(authorizer.identities) | set(seen) | set(refused)):
        granted = authorizer.granted(identity)
        mine = seen.get(identity, set())
        report[identity] = {
            "used": sorted(f"{p} on {r}" for p, r in mine),
            "granted_never_used": sorted(f"{p} on {r}" for p, r in granted - mine),
            "refused": sorted(refused.get(identity, set())),
        }
    return report


def bucket_resource(bucket: str, name: str | None = None) -> str:
    base = f"projects/_/buckets/{bucket}"
    return base if name is None else f"{base}/objects/{name}"


def _resource_type(resource: str) -> str:
    if "/objects/" in resource:
        return OBJECT_TYPE
    if "/buckets/" in resource:
        return BUCKET_TYPE
    if "/subscriptions/" in resource:
        return SUBSCRIPTION_TYPE
    return TOPIC_TYPE


class _Names:
    """Logical resource names of the grants file -> the names IAM checks."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._buckets = {
            "input": settings.input_bucket,
            "work": settings.work_bucket,
            "output": settings.output_bucket,
        }
        self._topics = {
            "pages_topic": settings.pages_topic,
            "dead_letter_topic": settings.dead_letter_topic,
            "documents_topic": settings.documents_topic,
            "notifications_topic": load_topology().local_notifications_topic,
        }
        self._subscriptions = {
            "pages_push_subscription": settings.pages_subscription,
            "dead_letter_subscription": settings.dead_letter_subscription,
        }

    def scope(self, spec: Mapping[str, Any]) -> tuple[str, str, str]:
        kinds = [k for k in ("bucket", "topic", "subscription") if k in spec]
        if len(kinds) != 1:
            raise GrantsError(f"a grant names exactly one bucket, topic or subscription: {spec}")
        kind = kinds[0]
        logical = str(spec[kind])
        table = {"bucket": self._buckets, "topic": self._topics,
                 "subscription": self._subscriptions}[kind]  # fmt: skip
        if logical not in table:
            raise GrantsError(f"unknown {kind} {logical!r} (known: {sorted(table)})")
        project = self._settings.project
        scope = {
            "bucket": f"projects/_/buckets/{table[logical]}",
            "topic": f"projects/{project}/topics/{table[logical]}",
            "subscription": f"projects/{project}/subscriptions/{table[logical]}",
        }[kind]
        return kind, logical, scope

    def grant(self, spec: Mapping[str, Any]) -> Grant:
        kind, logical, scope = self.scope(spec)
        role = str(spec.get("role", ""))
        if role not in ROLE_PERMISSIONS:
            raise GrantsError(f"unknown role {role!r} (known: {sorted(ROLE_PERMISSIONS)})")
        condition = None
        if raw := spec.get("condition"):
            expression = str(raw["expression"])
            if kind == "bucket":
                expression = expression.replace("${bucket}", self._buckets[logical])
            try:
                program = cel.compile(expression)
            except (RuntimeError, ValueError) as exc:
                raise GrantsError(f"condition {raw.get('title')!r}: {exc}") from exc
            condition = Condition(
                str(raw["title"]), str(raw.get("description", "")), expression, program
            )
        return Grant(
            kind,
            logical,
            scope,
            role,
            ROLE_PERMISSIONS[role],
            condition,
            bool(spec.get("local_only", False)),
        )

    def revocation(self, spec: Mapping[str, Any]) -> _Revocation:
        kind, _, scope = self.scope(spec)
        return _Revocation(scope, kind, str(spec["permission"]))


def grant_identities(grants_path: Path | None = None) -> tuple[str, ...]:
    """The identities ``iam.json`` names, in its order: each gets its own proxies."""
    raw = json.loads((grants_path or GRANTS_FILE).read_text(encoding="utf-8"))
    return tuple(raw["identities"])
