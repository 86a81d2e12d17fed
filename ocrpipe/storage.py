"""Object storage: the :class:`ObjectStore` protocol, the GCS adapter, and an in-memory
fake with the same generation semantics for unit and contract tests.

Every write that must happen once uses ``if_generation_match=0`` ("create only"): a second
writer gets ``False`` back instead of overwriting, which is how duplicate deliveries and two
instances finishing the same document at once stay harmless. The one object that is
rewritten, an assembled document, is replaced with :meth:`ObjectStore.write` only if it is
still at the generation its writer saw, with custom metadata saying what it was built from.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast

from ocrpipe import naming
from ocrpipe.errors import AccessDenied, ObjectMissing, StorageRejected, StorageUnavailable

REWRITTEN_AT_KEY = "ocrpipe-rewritten-at"  # custom metadata of an input rewritten in place
# Objects per list request. GCS's default and maximum; said explicitly because
# fake-gcs-server otherwise answers a listing in one page, hiding what listing costs.
LIST_PAGE_SIZE = 1000
_DENIED_PERMISSION = re.compile(r"Permission '([\w.]+)' denied")


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    generation: int
    size: int
    content_type: str = ""
    updated: float = 0.0  # seconds since the epoch
    metadata: Mapping[str, str] = field(default_factory=dict)  # custom metadata
    # The checksums GCS keeps, base64 as its API gives them ("" when it has none: a
    # composite object has no md5).
    md5: str = ""
    crc32c: str = ""


def md5_of(data: bytes) -> str:
    """``data``'s MD5 the way GCS reports it (base64)."""
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def crc32c_of(data: bytes) -> str:
    """``data``'s CRC32C the way GCS reports it (base64 of the big-endian value)."""
    import google_crc32c

    return _b64_crc(google_crc32c.Checksum(data))  # type: ignore[no-untyped-call]


def file_checksums(path: Path, chunk: int = 1 << 20) -> tuple[str, str]:
    """(md5, crc32c) of a local file, read once in chunks, in GCS's notation."""
    import google_crc32c

    md5 = hashlib.md5()
    crc = google_crc32c.Checksum()  # type: ignore[no-untyped-call]
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            md5.update(block)
            crc.update(block)  # type: ignore[no-untyped-call]
    return base64.b64encode(md5.digest()).decode(), _b64_crc(crc)


def _b64_crc(checksum: Any) -> str:
    digest: bytes = checksum.digest()
    return base64.b64encode(digest).decode()


class ObjectStore(Protocol):
    def read(self, bucket: str, name: str) -> bytes: ...

    def download(
        self, bucket: str, name: str, dest: Path, *, generation: int | None = None
    ) -> None: ...

    def stat(self, bucket: str, name: str) -> ObjectInfo | None: ...

    def create(self, bucket: str, name: str, data: bytes, content_type: str) -> bool:
        """Write ``name`` only if it does not exist. True if this call created it."""
        ...

    def write(
        self,
        bucket: str,
        name: str,
        data: bytes,
        content_type: str,
        *,
        if_generation_match: int,
        metadata: Mapping[str, str] | None = None,
    ) -> int | None:
        """Write ``name`` with ``metadata`` only if it is at ``if_generation_match`` (0: only
        if absent). The new generation, or None if the object was at another generation."""
        ...

    def upload(self, bucket: str, name: str, source: IO[bytes], content_type: str) -> int:
        """Write (or overwrite) ``name`` from a file; return the new generation."""
        ...

    def list(self, bucket: str, prefix: str) -> list[ObjectInfo]: ...

    def delete(self, bucket: str, name: str) -> None: ...

    def rewrite_in_place(self, bucket: str, name: str, generation: int) -> int | None:
        """Copy ``name`` onto itself if it is still at ``generation``: a new generation with
        the same bytes (and a new finalize event). The new generation, or None if the
        object changed or vanished meanwhile."""
        ...

    def copy(
        self, source_bucket: str, source_name: str, source_generation: int, bucket: str, name: str
    ) -> int:
        """Copy one generation of an object to ``bucket``/``name`` (or over it) without the
        bytes passing through this machine; returns the new generation. Content type and
        custom metadata go along. Raises :class:`ObjectMissing` if the source is gone."""
        ...

    def open_reader(self, bucket: str, name: str, generation: int) -> IO[bytes]:
        """A seekable reader of one generation of an object that fetches only the ranges
        read (a PDF's page count needs its trailer and page tree, not its images)."""
        ...


class GcsStore:
    """:class:`ObjectStore` on google-cloud-storage (real GCS or fake-gcs-server)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    def connect(
        cls,
        project: str,
        emulator_host: str | None = None,
        *,
        pool_size: int = 64,
        trust_env: bool = True,
    ) -> GcsStore:
        """A client with ``pool_size`` keep-alive connections: the worker calls GCS from many
        threads at once, and requests' default pool of 10 would open and drop connections on
        every page (measured: about two per page under load).

        ``trust_env=False`` stops requests from looking at the environment on every call
        (proxy variables, ``~/.netrc``, CA-bundle variables: ~0.15 ms of CPU per call here,
        ~18% of a small call). The worker sets it: Cloud Run gives it none of these. The CLI
        keeps the default, so that a user's proxy settings still apply.
        """
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage
        from requests.adapters import HTTPAdapter

        if emulator_host:
            client = storage.Client(
                project=project,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": emulator_host},
            )
        else:
            client = storage.Client(project=project)
        # The client fetches each bucket's metadata (storage.buckets.get) in a background
        # thread, only to label OpenTelemetry spans we never export. Object roles do not
        # include that permission, so every pipeline identity got one 403 per bucket.
        client._bucket_metadata_cache = None
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        for scheme in ("http://", "https://"):
            client._http.mount(scheme, adapter)
        client._http.trust_env = trust_env
        return cls(client)

    @property
    def client(self) -> Any:
        return self._client

    def read(self, bucket: str, name: str) -> bytes:
        # No client-side checksum: TLS already guards the bytes in transit, and hashing every
        # page image and page result again cost ~5-10% of a read's CPU (the worker's hottest
        # call). ``download`` (whole input files) keeps the check.
        with _translated(bucket, name):
            blob = self._client.bucket(bucket).blob(name)
            data: bytes = blob.download_as_bytes(checksum=None)
            return data

    def download(
        self, bucket: str, name: str, dest: Path, *, generation: int | None = None
    ) -> None:
        with _translated(bucket, name):
            blob = self._client.bucket(bucket).blob(name, generation=generation)
            blob.download_to_filename(str(dest))

    def stat(self, bucket: str, name: str) -> ObjectInfo | None:
        with _translated(bucket, name):
            blob = self._client.bucket(bucket).get_blob(name)
        return None if blob is None else _info(blob)

    def create(self, bucket: str, name: str, data: bytes, content_type: str) -> bool:
        from google.api_core import exceptions as gexc

        blob = self._client.bucket(bucket).blob(name)
        try:
            with _translated(bucket, name):
                blob.upload_from_string(data, content_type=content_type, if_generation_match=0)
        except gexc.PreconditionFailed:
            return False
        return True

    def write(
        self,
        bucket: str,
        name: str,
        data: bytes,
        content_type: str,
        *,
        if_generation_match: int,
        metadata: Mapping[str, str] | None = None,
    ) -> int | None:
        from google.api_core import exceptions as gexc

        blob = self._client.bucket(bucket).blob(name)
        if metadata:
            blob.metadata = dict(metadata)
        try:
            with _translated(bucket, name):
                blob.upload_from_string(
                    data, content_type=content_type, if_generation_match=if_generation_match
                )
        except gexc.PreconditionFailed:
            return None
        return int(blob.generation)

    def upload(self, bucket: str, name: str, source: IO[bytes], content_type: str) -> int:
        blob = self._client.bucket(bucket).blob(name)
        with _translated(bucket, name):
            blob.upload_from_file(source, content_type=content_type)
        return int(blob.generation)

    def list(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        with _translated(bucket, prefix):
            blobs = self._client.list_blobs(bucket, prefix=prefix, page_size=LIST_PAGE_SIZE)
            return [_info(blob) for blob in blobs]

    def delete(self, bucket: str, name: str) -> None:
        from google.api_core import exceptions as gexc

        try:
            with _translated(bucket, name):
                self._client.bucket(bucket).blob(name).delete()
        except ObjectMissing:
            pass
        except gexc.NotFound:
            pass

    def rewrite_in_place(self, bucket: str, name: str, generation: int) -> int | None:
        from google.api_core import exceptions as gexc

        handle = self._client.bucket(bucket)
        with _translated(bucket, name):
            current = handle.get_blob(name, generation=generation)
        if current is None:
            return None
        # The copy onto itself changes one thing, as object stores expect of a self-copy: a
        # custom metadata entry with the time. Content type and other metadata are kept.
        target = handle.blob(name)
        target.content_type = current.content_type
        target.metadata = {**(current.metadata or {}), REWRITTEN_AT_KEY: f"{time.time():.3f}"}
        source = handle.blob(name, generation=generation)
        try:
            with _translated(bucket, name):  # large objects take several rewrite calls
                token, _, _ = target.rewrite(source, if_generation_match=generation)
                while token is not None:
                    token, _, _ = target.rewrite(
                        source, token=token, if_generation_match=generation
                    )
        except (gexc.PreconditionFailed, ObjectMissing):
            return None
        return int(target.generation)

    def copy(
        self, source_bucket: str, source_name: str, source_generation: int, bucket: str, name: str
    ) -> int:
        source = self._client.bucket(source_bucket).blob(source_name, generation=source_generation)
        target = self._client.bucket(bucket).blob(name)
        with _translated(source_bucket, source_name):  # large objects take several calls
            token, _, _ = target.rewrite(source)
            while token is not None:
                token, _, _ = target.rewrite(source, token=token)
        return int(target.generation)

    def open_reader(self, bucket: str, name: str, generation: int) -> IO[bytes]:
        blob = self._client.bucket(bucket).blob(name, generation=generation)
        with _translated(bucket, name):
            blob.reload()  # the size, so that seeking from the end needs no request
            reader = blob.open("rb", chunk_size=READ_CHUNK_BYTES)
        return cast(IO[bytes], _TranslatingReader(reader, bucket, name))


READ_CHUNK_BYTES = 64 * 1024  # what a ranged reader fetches at a time (bench/backlog.py)


class _TranslatingReader(io.BufferedIOBase):
    """A reader whose storage errors are ours (:func:`_translated`), wrapping the client
    library's ranged ``BlobReader``."""

    def __init__(self, inner: Any, bucket: str, name: str) -> None:
        super().__init__()
        self._inner = inner
        self._where = (bucket, name)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        with _translated(*self._where):
            data: bytes = self._inner.read(-1 if size is None else size)
            return data

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with _translated(*self._where):
            return int(self._inner.seek(offset, whence))

    def tell(self) -> int:
        return int(self._inner.tell())

    def close(self) -> None:
        self._inner.close()
        super().close()


def _info(blob: Any) -> ObjectInfo:
    when = blob.updated  # parsed from RFC 3339 on every access (strptime): once per object
    updated = when.timestamp() if when is not None else 0.0
    return ObjectInfo(
        name=blob.name,
        generation=int(blob.generation or 0),
        size=int(blob.size or 0),
        content_type=blob.content_type or "",
        updated=updated,
        metadata=dict(blob.metadata or {}),
        md5=blob.md5_hash or "",
        crc32c=blob.crc32c or "",
    )


@contextmanager
def _translated(bucket: str, name: str) -> Iterator[None]:
    """Wrap google-cloud-storage's exceptions into ours (``raise ... from``).

    ``PreconditionFailed`` passes through: the caller decides what a lost race means. A 403
    becomes :class:`AccessDenied` naming the permission GCS refused and the object (or
    prefix) asked for; any other 4xx becomes :class:`StorageRejected`.
    """
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc
    from requests import exceptions as req_exc

    transient = (
        gexc.TooManyRequests,
        gexc.ServerError,
        req_exc.ConnectionError,
        req_exc.Timeout,
        auth_exc.TransportError,
        ConnectionError,
        TimeoutError,
    )
    where = naming.object_uri(bucket, name)
    try:
        yield
    except gexc.NotFound as exc:
        raise ObjectMissing(where) from exc
    except transient as exc:
        raise StorageUnavailable(f"storage trouble at {where}: {exc}") from exc
    except gexc.Forbidden as exc:
        match = _DENIED_PERMISSION.search(str(exc.message))
        permission = match.group(1) if match else "unknown"
        raise AccessDenied(
            f"access denied: {permission} on {where}: {exc.message}",
            permission=permission,
            resource=where,
        ) from exc
    except gexc.PreconditionFailed:
        raise
    except gexc.ClientError as exc:
        raise StorageRejected(f"GCS refused the request for {where}: {exc}") from exc
