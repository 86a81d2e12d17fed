"""An authorizing reverse proxy in front of fake-gcs-server: the local stack's GCS IAM.

One process listens on several ports, one per identity (``--listen splitter=PORT``); each
service of the stack talks to "its" port as if it were GCS. Every JSON API call that
google-cloud-storage makes is mapped to the permission and resource GCS checks
(:func:`required`), asked of :class:`~ocrpipe.local.iam.policy.Authorizer`, and either
forwarded (bodies streamed both ways, keep-alive pool to the upstream) or answered with
GCS's own 403. The map is a route table (:data:`ROUTES`: method, API root, path pattern,
and the permission or a small function where the query or the metadata decides); anything
the proxy cannot map is refused: it fails closed. Every decision is appended to the usage
file (JSON lines of :class:`~ocrpipe.local.iam.policy.Decision`).

Overwrites. GCS needs ``storage.objects.delete`` besides ``create`` to replace an existing
object. This proxy checks delete whenever the object exists, whatever the precondition:
with ``ifGenerationMatch=0`` on an existing object, a principal that holds delete gets 412
and one that does not gets 403. (That is why the splitter holds objectUser, not
objectCreator, on its two output names: a repeated create-only write must read as "already
there".) GCS does not document the order in which it checks IAM and preconditions; the
stricter reading means a grant set that passes here never fails on an overwrite in
production. How each case is decided without an extra round trip:

* ``ifGenerationMatch=0``: the write can only succeed if nothing is there, so delete is
  needed exactly when the upstream answers 412. With delete granted the 412 passes through
  (and delete is recorded as used); without it the 412 becomes GCS's 403.
* ``ifGenerationMatch=G`` (G > 0): only an existing object can match: delete is required.
* no precondition: the proxy asks the upstream whether the object exists first (unless the
  identity holds delete there and has already been recorded using it).

One reading or none. The proxy authorizes what it parsed and forwards the request's bytes,
so a request that fake-gcs-server could read otherwise is refused (403, "ambiguous"), never
guessed at: a repeated query parameter (Go's ``Query().Get`` takes the first value, Python
the last), a pair holding ``;`` (Go drops it), a malformed ``%`` escape or raw non-ASCII
byte, a non-decimal ``ifGenerationMatch``, JSON metadata with two keys that differ only in
case (Go matches keys to fields whatever their case), a multipart upload whose
``Content-Type`` is anything but ``multipart/related; boundary=...``, whose body does not
start at its boundary, or whose metadata part has headers beyond ``content-type`` (Go would
decode a ``Content-Transfer-Encoding``).

Resumable uploads are authorized when the session starts; the session URL the upstream
hands out is rewritten to point back at the proxy port that started it, and only that
identity may continue it. Object resources in JSON answers carry ``mediaLink`` and
``selfLink`` URLs of the upstream: they are rewritten too, or a download would bypass the
proxy.

Run::

    python -m ocrpipe.local.iam.gcs_proxy --upstream http://127.0.0.1:4443 \\
        --listen splitter=4501 --listen worker=4502 --listen operator=4503 \\
        --usage-file /tmp/usage.jsonl

Bucket names and the project come from the ``OCRPIPE_*`` settings of its environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote, unquote_plus

import httpx

from ocrpipe.local.iam.policy import Authorizer, Decision, bucket_resource
from ocrpipe.logs import configure_logging
from ocrpipe.settings import Settings

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CREATE = "storage.objects.create"
DELETE = "storage.objects.delete"
GET = "storage.objects.get"
MAX_METADATA_BYTES = 1 << 20  # the JSON part of a multipart upload, or a small JSON body
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"upgrade",
        b"host",
        b"proxy-connection",
        b"content-length",
    }
)


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


@dataclass(frozen=True)
class _Session:
    identity: str
    write: Write
    delete: Decision  # may this identity replace the destination?


@dataclass
class UsageLog:
    """Decisions as JSON lines, appended (several proxies may share one file)."""

    handle: IO[str] | None = None
    seen: set[tuple[str, str, str]] = field(default_factory=set)

    def record(self, decision: Decision) -> None:
        if decision.allowed and decision.grant is not None:
            self.seen.add((decision.identity, decision.permission, decision.grant))
        if self.handle is not None:
            self.handle.write(json.dumps(asdict(decision)) + "\n")

    def used(self, decision: Decision) -> bool:
        return (decision.identity, decision.permission, decision.grant or "") in self.seen


def _segments(raw_path: bytes) -> list[str]:
    path = raw_path.decode("latin-1").split("?", 1)[0]
    return [unquote(s) for s in path.strip("/").split("/")]


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_MULTIPART = re.compile(
    rb'multipart/related; ?boundary=(?:"([^"\\\r\n]{1,70})"|([\w\'()+,./:=?-]{1,70}))'
)


def _query(query_string: bytes) -> dict[str, str]:
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


def _metadata_json(raw: bytes) -> Any:
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


def forbidden_body(email: str, permission: str, resource: str) -> bytes:
    """The 403 GCS sends, with its wording."""
    kind = "object" if "/objects/" in resource else "bucket"
    message = (
        f"{email} does not have {permission} access to the Google Cloud Storage {kind}."
        f" Permission '{permission}' denied on resource (or it may not exist)."
    )
    return _error_body(message)


def _error_body(message: str, code: int = 403) -> bytes:
    reason = "forbidden" if code == 403 else "backendError"
    error = {
        "code": code,
        "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}],
    }
    return json.dumps({"error": error}).encode()


class GcsProxy:
    """The ASGI app: identity from the port a request came in on."""

    def __init__(
        self,
        upstream: str,
        identities: Mapping[int, str],
        authorizer: Authorizer,
        project: str,
        usage: UsageLog | None = None,
        external_url: str | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.external = (external_url or upstream).rstrip("/").encode()
        self.identities = dict(identities)
        self.authorizer = authorizer
        self.project = project
        self.usage = usage or UsageLog()
        self.sessions: dict[str, _Session] = {}
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.upstream,
                timeout=httpx.Timeout(300.0, connect=10.0),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        port = int(scope["server"][1]) if scope.get("server") else 0
        identity = self.identities.get(port, f"unknown-port-{port}")
        await self._handle(identity, scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _decide(self, identity: str, check: Check) -> Decision:
        decision = self.authorizer.check(
            identity, check.permission, check.resource, list_prefix=check.list_prefix
        )
        self.usage.record(decision)
        return decision

    async def _handle(self, identity: str, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query_string: bytes = scope.get("query_string", b"")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        body = _Body(receive)
        try:
            query = _query(query_string)
            metadata = await self._metadata(method, raw_path, query, headers, body)
            plan = required(method, raw_path, query, self.project, metadata)
        except (Unmapped, ValueError) as exc:
            what = f"{method} {raw_path.decode('latin-1')}"
            ambiguous = isinstance(exc, Ambiguous)
            kind = "ambiguous" if ambiguous else "unmapped"
            self.usage.record(Decision(False, identity, kind, what))
            logger.warning(
                "refused: %s made a call the proxy %s (%s)",
                identity,
                "could read two ways" if ambiguous else "cannot map",
                exc,
                extra={"reason": "access_denied"},
            )
            why = (
                f"reads as ambiguous ({exc}): the emulator could read it otherwise"
                if ambiguous
                else "cannot map it to a permission"
            )
            message = (
                f"{self.authorizer.email(identity)}: the local stack's authorizing proxy"
                f" {why}, so it refuses {what}."
            )
            await _answer(send, 403, _error_body(message))
            return
        session = None
        if plan.resumable_session is not None:
            session = self.sessions.get(plan.resumable_session)
            if session is None or session.identity != identity:
                await self._refuse(send, identity, Check(CREATE, "resumable upload session"))
                return
        for check in plan.checks:
            if not self._decide(identity, check).allowed:
                await self._refuse(send, identity, check)
                return
        write = plan.write or (session.write if session else None)
        delete = session.delete if session else None
        if plan.write is not None:
            dest = bucket_resource(plan.write.bucket, plan.write.name)
            delete = self.authorizer.check(identity, DELETE, dest)
            if await self._needs_delete(plan.write, delete):
                self.usage.record(delete)
                if not delete.allowed:
                    await self._refuse(send, identity, Check(DELETE, dest))
                    return
        target = _Target(method, raw_path, query_string, query, write, delete)
        await self._forward(identity, scope, target, headers, body, send)

    async def _metadata(
        self,
        method: str,
        raw_path: bytes,
        query: Mapping[str, str],
        headers: Sequence[tuple[bytes, bytes]],
        body: _Body,
    ) -> Any:
        """The JSON metadata that names an upload's object or a compose's sources."""
        if method != "POST":
            return None
        path = raw_path.decode("latin-1")
        content_types = [v for k, v in headers if k.lower() == b"content-type"]
        if len(content_types) > 1:
            raise Ambiguous("two Content-Type headers")
        if path.startswith("/upload/") and query.get("uploadType") == "multipart":
            match = _MULTIPART.fullmatch(content_types[0] if content_types else b"")
            if match is None:
                raise Ambiguous("a multipart Content-Type other than multipart/related; boundary=")
            return await body.multipart_metadata(match.group(1) or match.group(2))
        if (path.startswith("/upload/") and query.get("uploadType") == "resumable") or (
            path.endswith("/compose")
        ):
            return _metadata_json(await body.read_all(MAX_METADATA_BYTES))
        return None

    async def _needs_delete(self, write: Write, delete: Decision) -> bool:
        """Does this write replace an existing object (so it needs delete too)?"""
        if write.if_generation_match == 0:
            return False  # decided by the upstream's answer (412 means it exists)
        if write.if_generation_match is not None:
            return True
        if delete.allowed and self.usage.used(delete):
            return False  # nothing to enforce and nothing new to record
        url = f"/storage/v1/b/{quote(write.bucket, safe='')}/o/{quote(write.name, safe='')}"
        response = await self.client.get(url, params={"fields": "name"})
        return response.status_code == 200

    async def _refuse(self, send: Send, identity: str, check: Check) -> None:
        logger.warning(
            "refused: %s lacks %s on %s",
            identity,
            check.permission,
            check.resource,
            extra={"reason": "access_denied", "status": 403},
        )
        email = self.authorizer.email(identity)
        await _answer(send, 403, forbidden_body(email, check.permission, check.resource))

    async def _forward(
        self,
        identity: str,
        scope: Scope,
        target: _Target,
        headers: list[tuple[bytes, bytes]],
        body: _Body,
        send: Send,
    ) -> None:
        write, delete = target.write, target.delete
        url = target.raw_path.decode("latin-1") + (
            "?" + target.query_string.decode("latin-1") if target.query_string else ""
        )
        length = next((v for k, v in scope["headers"] if k.lower() == b"content-length"), None)
        if length is not None:
            headers = [*headers, (b"content-length", length)]
        has_body = length not in (None, b"0") or any(
            k.lower() == b"transfer-encoding" for k, _ in scope["headers"]
        )
        request = self.client.build_request(
            target.method,
            httpx.URL(self.upstream + url),
            headers=headers,
            content=body.stream() if has_body else None,
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TransportError as exc:  # the emulator is down: a 503, as GCS would
            logger.warning("upstream %s unreachable: %s", self.upstream, exc)
            await _answer(send, 503, _error_body(f"upstream unavailable: {exc}", 503))
            return
        try:
            status = response.status_code
            if target.query.get("upload_id") and status in (200, 201):
                self.sessions.pop(target.query["upload_id"], None)  # the upload is complete
            if write and delete and write.if_generation_match == 0 and status == 412:
                self.usage.record(delete)  # it exists: replacing it needs delete
                if not delete.allowed:
                    await self._refuse(send, identity, Check(DELETE, delete.resource))
                    return
            out = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
            own = self._own_url(scope)
            resumable = target.query.get("uploadType") == "resumable"
            if resumable and target.method == "POST" and write and delete:
                out = self._session_started(out, own, _Session(identity, write, delete))
            content_type = response.headers.get("content-type", "")
            if content_type.startswith("application/json"):
                data = (await response.aread()).replace(self.external, own)
                await _answer(send, status, data, out)
                return
            if "content-length" in response.headers:
                out.append((b"content-length", response.headers["content-length"].encode()))
            await send({"type": "http.response.start", "status": status, "headers": out})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    def _own_url(self, scope: Scope) -> bytes:
        host = next((v for k, v in scope["headers"] if k.lower() == b"host"), None)
        if host is None:
            server = scope.get("server") or ("127.0.0.1", 0)
            host = f"{server[0]}:{server[1]}".encode()
        return b"http://" + host

    def _session_started(
        self, headers: list[tuple[bytes, bytes]], own: bytes, session: _Session
    ) -> list[tuple[bytes, bytes]]:
        out = []
        for key, value in headers:
            if key.lower() == b"location":
                value = value.replace(self.external, own)
                upload_id = _upload_id(value)
                if upload_id:
                    self.sessions[upload_id] = session
            out.append((key, value))
        return out


@dataclass(frozen=True)
class _Target:
    method: str
    raw_path: bytes
    query_string: bytes
    query: Mapping[str, str]
    write: Write | None
    delete: Decision | None


class _Body:
    """The request body: read the head of it (upload metadata) and stream the rest."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._buffer = b""
        self._done = False

    async def _more(self) -> bool:
        if self._done:
            return False
        message = await self._receive()
        self._buffer += message.get("body", b"")
        self._done = not message.get("more_body", False)
        return True

    async def read_all(self, limit: int) -> bytes:
        while await self._more():
            if len(self._buffer) > limit:
                raise ValueError("request body too large for its kind")
        return self._buffer

    async def multipart_metadata(self, boundary: bytes) -> Any:
        """The JSON part at the head of a ``multipart/related`` upload: the body starts at
        its first boundary, and the part has one header, its content type."""
        delimiter = b"--" + boundary + b"\r\n"
        while True:
            if len(self._buffer) >= len(delimiter) and not self._buffer.startswith(delimiter):
                raise Ambiguous("a multipart body that does not start at its boundary")
            head_end = self._buffer.find(b"\r\n\r\n")
            end = self._buffer.find(b"\r\n--" + boundary + b"\r\n", head_end)
            if head_end >= 0 and end >= 0:
                head = self._buffer[len(delimiter) : head_end].split(b"\r\n")
                if len(head) != 1 or not head[0].lower().startswith(b"content-type:"):
                    raise Ambiguous("a metadata part with headers beyond its content type")
                return _metadata_json(self._buffer[head_end + 4 : end])
            if len(self._buffer) > MAX_METADATA_BYTES or not await self._more():
                raise ValueError("multipart upload without a readable metadata part")

    async def stream(self) -> AsyncIterator[bytes]:
        if self._buffer:
            yield self._buffer
            self._buffer = b""
        while not self._done:
            message = await self._receive()
            self._done = not message.get("more_body", False)
            if chunk := message.get("body", b""):
                yield chunk


async def _answer(
    send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    out = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]
    out += [
        (b"content-type", b"application/json; charset=UTF-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _upload_id(location: bytes) -> str | None:
    """The session id fake-gcs-server puts last in a resumable upload's URL (an object
    name escaped for a path may hold ``&``, so the query is not parsed whole)."""
    head, sep, upload_id = location.decode("latin-1").rpartition("&upload_id=")
    return unquote_plus(upload_id) if sep and "&" not in upload_id else None


def _parse_listen(values: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        identity, sep, port = value.partition("=")
        if not sep or not identity or not port.isdigit():
            raise argparse.ArgumentTypeError(f"--listen wants IDENTITY=PORT, not {value!r}")
        out[identity] = int(port)
    return out


def _socket(port: int) -> socket.socket:
    # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on accepted connections
    # only when the listening socket says TCP, and without it Nagle's algorithm meets the
    # client's delayed ACK and every call waits about 40 ms (measured: 48 ms per stat).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    return sock


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="fake-gcs-server's URL")
    parser.add_argument(
        "--external-url", help="fake-gcs-server's -external-url (default: upstream)"
    )
    parser.add_argument("--listen", action="append", default=[], metavar="IDENTITY=PORT")
    parser.add_argument("--usage-file", type=Path, help="append every decision here (JSON lines)")
    args = parser.parse_args(argv)
    listen = _parse_listen(args.listen)
    if not listen:
        parser.error("at least one --listen IDENTITY=PORT")
    settings = Settings()
    configure_logging(settings.log_level, service="gcs-proxy")
    handle = args.usage_file.open("a", encoding="utf-8", buffering=1) if args.usage_file else None
    app = GcsProxy(
        args.upstream,
        {port: identity for identity, port in listen.items()},
        Authorizer.from_grants(settings),
        settings.project,
        UsageLog(handle),
        args.external_url,
    )
    sockets = [_socket(port) for port in listen.values()]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    try:
        asyncio.run(uvicorn.Server(config).serve(sockets=sockets))
    finally:
        if handle is not None:
            handle.close()


if __name__ == "__main__":
    main()
