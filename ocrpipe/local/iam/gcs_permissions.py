"""What each GCS JSON API call needs, as GCS checks it: the permission map of the local
stack's GCS proxy (:mod:`ocrpipe.local.iam.gcs_proxy`).

:func:`required` maps a call google-cloud-storage makes to the permissions and resources
GCS checks, as a :class:`Plan`: the checks before it is forwarded, and the object it
writes, if any (the proxy decides overwrites from it, see its module). The map is a route
table (:data:`ROUTES`: method, API root, path pattern, and the permission or a small
function where the query or the metadata decides); a call the table does not know is
:class:`Unmapped`, and the proxy refuses it: it fails closed.

One reading or none. The proxy authorizes what is parsed here and forwards the request's
bytes, so a request that fake-gcs-server could read otherwise is :class:`Ambiguous`
(refused), never guessed at: a repeated query parameter (Go's ``Query().Get`` takes the
first value, Python the last), a pair holding ``;`` (Go drops it), a malformed ``%`` escape
or raw non-ASCII byte, a non-decimal ``ifGenerationMatch``, JSON metadata with two keys that
differ only in case (Go matches keys to fields whatever their case), a multipart upload
whose ``Content-Type`` is anything but ``multipart/related; boundary=...``, whose body does
not start at its boundary, or whose metadata part has headers beyond ``content-type`` (Go
would decode a ``Content-Transfer-Encoding``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import unquote, unquote_plus

from ocrpipe.local.iam.policy import bucket_resource

CREATE = "storage.objects.create"
DELETE = "storage.objects.delete"
GET = "storage.objects.get"
MAX_METADATA_BYTES = 1 << 20  # the JSON part of a multipart upload, or a small JSON body


class Unmapped(Exception):
    """A request this proxy does not know how to authorize: refused."""


class Ambiguous(Unmapped):
    """A request the emulator could read differently from the proxy: refused."""


@dataclass(frozen=True)
class Check:
    permission: str
    resource: str
    list_prefix: str | None = None


@dataclass(frozen=True)
class Write:
    """The object a request creates (an upload, rewrite, copy or compose destination)."""

    bucket: str
    name: str
    if_generation_match: int | None


@dataclass(frozen=True)
class Plan:
    """What one request needs: checks before forwarding, and the write it makes, if any."""

    checks: tuple[Check, ...]
    write: Write | None = None
    resumable_session: str | None = None  # upload_id of a resumable upload's next chunk


def _segments(raw_path: bytes) -> list[str]:
    path = raw_path.decode("latin-1").split("?", 1)[0]
    return [unquote(s) for s in path.strip("/").split("/")]


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
MULTIPART = re.compile(
    rb'multipart/related; ?boundary=(?:"([^"\\\r\n]{1,70})"|([\w\'()+,./:=?-]{1,70}))'
)


def parse_query(query_string: bytes) -> dict[str, str]:
    """The query's parameters, read the one way both Go and Python read them, or
    :class:`Ambiguous`."""
    text = query_string.decode("latin-1")
    if any(not 0x21 <= ord(c) <= 0x7E for c in text):
        raise Ambiguous("the query holds a byte that is not percent-encoded")
    if ";" in text:
        raise Ambiguous("the query holds ';', which Go drops and Python keeps")
    found: dict[str, str] = {}
    for pair in text.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        key, value = _unquote(key), _unquote(value)
        if key in found:
            raise Ambiguous(f"the query names {key!r} twice")
        found[key] = value
    return found


def _unquote(text: str) -> str:
    if _BAD_ESCAPE.search(text):
        raise Ambiguous("the query holds a malformed % escape")
    try:
        return unquote_plus(text, errors="strict")
    except UnicodeDecodeError:
        raise Ambiguous("the query holds an escape that is not UTF-8") from None


def _generation(query: Mapping[str, str]) -> int | None:
    value = query.get("ifGenerationMatch")
    if value is None:
        return None
    if not _DECIMAL.fullmatch(value):
        raise Ambiguous(f"ifGenerationMatch={value!r} is not a plain decimal number")
    return int(value)


_READ_KEYS = {key.casefold(): key for key in ("name", "sourceObjects")}  # what decides


def _fold_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's keys, case-folded as Go's decoder matches them to fields. Two keys
    that fold alike, or a key the proxy reads spelled in another case (``"Name"``), are
    :class:`Ambiguous`."""
    folded: dict[str, Any] = {}
    for key, value in pairs:
        fold = key.casefold()
        if fold in folded:
            raise Ambiguous(f"the metadata names {key!r} twice (letter case aside)")
        if fold in _READ_KEYS and key != _READ_KEYS[fold]:
            raise Ambiguous(f"the metadata spells {_READ_KEYS[fold]!r} as {key!r}")
        folded[fold] = value
    return folded


def metadata_json(raw: bytes) -> Any:
    return json.loads(raw, object_pairs_hook=_fold_keys) if raw.strip() else {}


def _object_name(name: object) -> str:
    text = str(name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Ambiguous("an object name that is not valid Unicode") from None
    return text


@dataclass(frozen=True)
class Call:
    """One JSON API call, as a route reads it: the names its path binds (``bucket``,
    ``object``, ``dest_bucket``, ``dest_object``), its query and its JSON metadata."""

    names: Mapping[str, str]
    query: Mapping[str, str]
    body: Any
    project: str

    def resource(self) -> str:
        """The innermost resource the path names: an object, a bucket, or the project."""
        if "object" in self.names:
            return bucket_resource(self.names["bucket"], self.names["object"])
        if "bucket" in self.names:
            return bucket_resource(self.names["bucket"])
        return f"projects/{self.project}"


def _list(call: Call) -> Plan:
    prefix = call.query.get("prefix", "")
    return Plan((Check("storage.objects.list", call.resource(), prefix),))


def _upload(call: Call) -> Plan:
    """A media, multipart or resumable upload: the object is named in the query or in the
    metadata, never two ways."""
    names = {n for n in (call.query.get("name"), _metadata_object(call).get("name")) if n}
    if len(names) != 1:
        raise Unmapped("an upload must name exactly one object (query or metadata)")
    write = Write(call.names["bucket"], _object_name(names.pop()), _generation(call.query))
    return Plan((Check(CREATE, bucket_resource(write.bucket, write.name)),), write)


def _upload_chunk(call: Call) -> Plan | None:
    """The next chunk of a resumable upload: authorized when its session started."""
    upload_id = call.query.get("upload_id")
    return Plan((), resumable_session=upload_id) if upload_id else None


def _copy(call: Call) -> Plan:
    """A rewrite or copy: read the source, create the destination."""
    write = Write(call.names["dest_bucket"], call.names["dest_object"], _generation(call.query))
    dest = bucket_resource(write.bucket, write.name)
    return Plan((Check(GET, call.resource()), Check(CREATE, dest)), write)


def _metadata_object(call: Call) -> dict[str, Any]:
    """The call's JSON metadata, which GCS reads as an object (none is an empty one)."""
    if call.body is None:
        return {}
    if not isinstance(call.body, dict):
        raise Unmapped("metadata that is not a JSON object")
    return call.body


def _compose(call: Call) -> Plan:
    """A compose: read every source the metadata names, create the object of the path."""
    listed = _metadata_object(call).get("sourceobjects", [])
    if not isinstance(listed, list) or not all(isinstance(s, dict) for s in listed):
        raise Unmapped("compose metadata whose sourceObjects is not a list of objects")
    sources = [_object_name(s.get("name", "")) for s in listed]
    bucket = call.names["bucket"]
    checks = [Check(GET, bucket_resource(bucket, s)) for s in sources]
    write = Write(bucket, call.names["object"], _generation(call.query))
    return Plan((*checks, Check(CREATE, call.resource())), write)


@dataclass(frozen=True)
class Route:
    """One JSON API call GCS knows: its method, its API root, its path below the root
    (``{name}`` binds one segment) and what it needs: a permission on the innermost
    resource the path names, or a function that reads the query or metadata (and answers
    None when the call is not one it maps)."""

    method: str
    root: str
    pattern: str
    needs: str | Callable[[Call], Plan | None]

    @cached_property
    def _parts(self) -> list[str]:
        return self.pattern.split("/")

    def names(self, rest: Sequence[str]) -> dict[str, str] | None:
        """The names the path binds, or None if it does not have this route's shape."""
        if len(self._parts) != len(rest):
            return None
        names = {}
        for want, part in zip(self._parts, rest, strict=True):
            if want.startswith("{"):
                names[want.strip("{}")] = part
            elif want != part:
                return None
        return names


JSON_API, UPLOAD, DOWNLOAD = "storage/v1", "upload/storage/v1", "download/storage/v1"
BUCKETS = "b"
BUCKET = "b/{bucket}"
OBJECTS = "b/{bucket}/o"
OBJECT = "b/{bucket}/o/{object}"
DESTINATION = "b/{dest_bucket}/o/{dest_object}"

ROUTES = (
    Route("GET", JSON_API, BUCKETS, "storage.buckets.list"),
    Route("POST", JSON_API, BUCKETS, "storage.buckets.create"),
    Route("GET", JSON_API, BUCKET, "storage.buckets.get"),
    Route("PATCH", JSON_API, BUCKET, "storage.buckets.update"),
    Route("PUT", JSON_API, BUCKET, "storage.buckets.update"),
    Route("DELETE", JSON_API, BUCKET, "storage.buckets.delete"),
    Route("GET", JSON_API, OBJECTS, _list),
    Route("GET", JSON_API, OBJECT, "storage.objects.get"),
    Route("GET", DOWNLOAD, OBJECT, "storage.objects.get"),
    Route("PATCH", JSON_API, OBJECT, "storage.objects.update"),
    Route("PUT", JSON_API, OBJECT, "storage.objects.update"),
    Route("DELETE", JSON_API, OBJECT, "storage.objects.delete"),
    Route("POST", UPLOAD, OBJECTS, _upload),
    Route("PUT", UPLOAD, OBJECTS, _upload_chunk),
    Route("POST", JSON_API, f"{OBJECT}/rewriteTo/{DESTINATION}", _copy),
    Route("POST", JSON_API, f"{OBJECT}/copyTo/{DESTINATION}", _copy),
    Route("POST", JSON_API, f"{OBJECT}/compose", _compose),
)
_ROOTS = {root: root.split("/") for root in (JSON_API, UPLOAD, DOWNLOAD)}
_BY_METHOD_AND_ROOT = {
    key: [r for r in ROUTES if (r.method, r.root) == key]
    for key in {(r.method, r.root) for r in ROUTES}
}  # the rows a call can match, looked up once per call


def required(
    method: str, raw_path: bytes, query: Mapping[str, str], project: str, body: Any = None
) -> Plan:
    """The permissions a JSON API call needs, as GCS checks them (the upload name, if it is
    in the body, must already be in ``body``): the :data:`ROUTES` row it matches, or
    :class:`Unmapped`."""
    parts = _segments(raw_path)
    root = next((r for r, prefix in _ROOTS.items() if parts[: len(prefix)] == prefix), None)
    if root is not None:
        rest = parts[len(_ROOTS[root]) :]
        for route in _BY_METHOD_AND_ROOT.get((method, root), []):
            names = route.names(rest)
            if names is None:
                continue
            call = Call(names, query, body, project)
            if isinstance(route.needs, str):
                return Plan((Check(route.needs, call.resource()),))
            plan = route.needs(call)
            if plan is not None:
                return plan
    raise Unmapped(f"{method} {raw_path.decode('latin-1')}")
