"""Entering objects that are already in a bucket (``ocrpipe submit gs://BUCKET/PREFIX``)
without downloading them.

Each object is copied into the input bucket by GCS itself (a rewrite: the bytes never pass
through this machine, and a large object takes several calls, each resumed where the last
stopped). The copy is a new object there, so GCS sends its finalize event and the
pipeline processes it exactly as an upload: the same document, the same outputs.

Names mirror a folder: an object becomes ``prefix`` + its name after the source prefix's
last ``/``, so ``gs://corpus/scans/2024/a.pdf`` from ``gs://corpus/scans/`` becomes
``<prefix>2024/a.pdf`` (give the source with a trailing ``/`` for a folder; without one the
prefix matches names, as GCS listings do). As ``submit DIR`` skips hidden files, objects with
a segment starting with ``.`` are skipped, and so are folder placeholders (names ending
with ``/``). An object whose bytes are already in the input bucket under its name (same
size and CRC32C, as GCS keeps them: nothing is read) is skipped, so running the command
again after an interruption copies only what is missing; ``force`` copies everything again
(new generations: processed again). An object that changed or vanished between the listing
and its copy is reported and the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ocrpipe import naming
from ocrpipe.errors import ObjectMissing
from ocrpipe.operations.batch_status import listing_prefix
from ocrpipe.storage import ObjectInfo, ObjectStore

COPY_THREADS = 8


class NotABucketPath(ValueError):
    """A source that is not ``gs://BUCKET/...``."""


@dataclass(frozen=True)
class RemoteFile:
    bucket: str  # where it is
    source: ObjectInfo
    name: str  # its object name in the input bucket

    @property
    def uri(self) -> str:
        return naming.object_uri(self.bucket, self.source.name)

    @property
    def size(self) -> int:
        return self.source.size


def split_source(uri: str) -> tuple[str, str]:
    """``gs://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    if not uri.startswith("gs://") or not uri[5:].split("/", 1)[0]:
        raise NotABucketPath(f"{uri!r} is not gs://BUCKET or gs://BUCKET/PREFIX")
    return naming.split_uri(uri)


def find(store: ObjectStore, uris: Sequence[str], prefix: str = "") -> list[RemoteFile]:
    """The objects under each ``gs://BUCKET/PREFIX``, named for the input bucket, in name
    order. Raises :class:`NotABucketPath`, or ``ValueError`` when two would get one name."""
    found: dict[str, RemoteFile] = {}
    for uri in uris:
        bucket, source_prefix = split_source(uri)
        base = source_prefix[: source_prefix.rfind("/") + 1]
        for info in store.list(bucket, source_prefix):
            relative = info.name[len(base) :]
            if info.name.endswith("/") or any(s.startswith(".") for s in relative.split("/")):
                continue
            name = prefix + relative
            other = found.get(name)
            if other is not None and (other.bucket, other.source.name) != (bucket, info.name):
                raise ValueError(f"{other.uri} and {naming.object_uri(bucket, info.name)}"
                                 f" would both be {name!r}")  # fmt: skip
            found[name] = RemoteFile(bucket, info, name)
    return [found[name] for name in sorted(found)]


@dataclass(frozen=True)
class Copied:
    file: RemoteFile
    generation: int | None  # None: not copied (unchanged, a dry run, or failed)
    unchanged: bool
    failed: str = ""  # why it could not be copied (it changed or vanished since the listing)


@dataclass(frozen=True)
class BackfillReport:
    files: tuple[Copied, ...]
    dry_run: bool

    @property
    def copied(self) -> list[Copied]:
        return [c for c in self.files if not c.unchanged and not c.failed]

    @property
    def failed(self) -> list[Copied]:
        return [c for c in self.files if c.failed]

    @property
    def unchanged(self) -> list[Copied]:
        return [c for c in self.files if c.unchanged]

    @property
    def names(self) -> list[str]:
        """The documents this run leaves in the input bucket (failed ones left out)."""
        return [c.file.name for c in self.files if not c.failed]


def copy(
    store: ObjectStore,
    bucket: str,
    files: Sequence[RemoteFile],
    *,
    force: bool = False,
    dry_run: bool = False,
    threads: int = COPY_THREADS,
    on_file: Callable[[Copied], None] = lambda _: None,
) -> BackfillReport:
    """Copy ``files`` into ``bucket`` unless it has their bytes under their names already.
    One listing of ``bucket`` (under the names' common prefix) gives what is there."""
    existing = {} if force else _existing(store, bucket, (f.name for f in files))

    def one(remote: RemoteFile) -> Copied:
        current = existing.get(remote.name)
        if current is not None and _same_content(remote.source, current):
            result = Copied(remote, None, unchanged=True)
        elif dry_run:
            result = Copied(remote, None, unchanged=False)
        else:
            try:
                generation = store.copy(
                    remote.bucket, remote.source.name, remote.source.generation, bucket,
                    remote.name,
                )  # fmt: skip
            except ObjectMissing:
                why = "it changed or was deleted since it was listed: submit again"
                result = Copied(remote, None, unchanged=False, failed=why)
            else:
                result = Copied(remote, generation, unchanged=False)
        on_file(result)
        return result

    if not files:
        return BackfillReport((), dry_run)
    with ThreadPoolExecutor(max_workers=min(threads, len(files))) as pool:
        return BackfillReport(tuple(pool.map(one, files)), dry_run)


def _existing(store: ObjectStore, bucket: str, names: Iterable[str]) -> dict[str, ObjectInfo]:
    wanted = set(names)
    if not wanted:
        return {}
    common = listing_prefix(wanted)
    if common:
        return {i.name: i for i in store.list(bucket, common) if i.name in wanted}
    # No shared prefix: a listing could be the whole bucket; ask per name.
    return {n: info for n in wanted if (info := store.stat(bucket, n)) is not None}


def _same_content(source: ObjectInfo, current: ObjectInfo) -> bool:
    if source.size != current.size:
        return False
    if source.crc32c and current.crc32c:
        return source.crc32c == current.crc32c
    return bool(source.md5) and source.md5 == current.md5
