"""Store wrappers for tests and benchmarks: :class:`ForwardingStore` passes every
:class:`~ocrpipe.storage.ObjectStore` call to the store inside, so a wrapper that counts
or refuses some calls overrides only those."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import IO

from ocrpipe.storage import ObjectInfo, ObjectStore


class ForwardingStore:
    """An :class:`ObjectStore` that forwards every call to ``inner``."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner

    def read(self, bucket: str, name: str) -> bytes:
        return self.inner.read(bucket, name)

    def download(
        self, bucket: str, name: str, dest: Path, *, generation: int | None = None
    ) -> None:
        self.inner.download(bucket, name, dest, generation=generation)

    def stat(self, bucket: str, name: str) -> ObjectInfo | None:
        return self.inner.stat(bucket, name)

    def create(self, bucket: str, name: str, data: bytes, content_type: str) -> bool:
        return self.inner.create(bucket, name, data, content_type)

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
        return self.inner.write(
            bucket, name, data, content_type,
            if_generation_match=if_generation_match, metadata=metadata,
        )  # fmt: skip

    def upload(self, bucket: str, name: str, source: IO[bytes], content_type: str) -> int:
        return self.inner.upload(bucket, name, source, content_type)

    def list(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        return self.inner.list(bucket, prefix)

    def delete(self, bucket: str, name: str) -> None:
        self.inner.delete(bucket, name)

    def rewrite_in_place(self, bucket: str, name: str, generation: int) -> int | None:
        return self.inner.rewrite_in_place(bucket, name, generation)

    def copy(
        self, source_bucket: str, source_name: str, source_generation: int, bucket: str, name: str
    ) -> int:
        return self.inner.copy(source_bucket, source_name, source_generation, bucket, name)

    def open_reader(self, bucket: str, name: str, generation: int) -> IO[bytes]:
        return self.inner.open_reader(bucket, name, generation)
