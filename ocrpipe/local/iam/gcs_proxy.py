"""An authorizing reverse proxy in front of fake-gcs-server: the local stack's GCS IAM.

One process listens on several ports, one per identity (``--listen splitter=PORT``); each
service of the stack talks to "its" port as if it were GCS. Every JSON API call that
google-cloud-storage makes is mapped to the permission and resource GCS checks
(:func:`~ocrpipe.local.iam.gcs_permissions.required`, a route table that fails closed),
asked of :class:`~ocrpipe.local.iam.policy.Authorizer`, and either forwarded (bodies
streamed both ways, keep-alive pool to the upstream) or answered with GCS's own 403. A
request the map does not know, or that the emulator could read otherwise than the map did,
is refused. Every decision is appended to the usage file (JSON lines of
:class:`~ocrpipe.local.iam.policy.Decision`).

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
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote_plus

import httpx

from ocrpipe.local.iam.gcs_permissions import (
    CREATE,
    DELETE,
    MAX_METADATA_BYTES,
    MULTIPART,
    Ambiguous,
    Check,
    Unmapped,
    Write,
    metadata_json,
    parse_query,
    required,
)
from ocrpipe.local.iam.policy import Authorizer, Decision, bucket_resource
from ocrpipe.logs import configure_logging
from ocrpipe.settings import Settings

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

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
            query = parse_query(query_string)
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
            match = MULTIPART.fullmatch(content_types[0] if content_types else b"")
            if match is None:
                raise Ambiguous("a multipart Content-Type other than multipart/related; boundary=")
            return await body.multipart_metadata(match.group(1) or match.group(2))
        if (path.startswith("/upload/") and query.get("uploadType") == "resumable") or (
            path.endswith("/compose")
        ):
            return metadata_json(await body.read_all(MAX_METADATA_BYTES))
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
                return metadata_json(self._buffer[head_end + 4 : end])
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
