"""Every document under an input prefix, with its output objects, from one listing of each
bucket (the operator's batch commands and the reconciler read the buckets this way).

A listing of the input bucket under the prefix gives every input and its current
generation, including the ones not split yet; a listing of the output bucket under the
prefix's key (:func:`ocrpipe.naming.key_prefix`) gives every manifest, page, document and
error object, grouped by input name and generation, and each input's ``@latest.json``.
GCS lists 1000 objects per call, so D documents of P pages cost about
``ceil(D / 1000) + ceil(D * (P + 3) / 1000)`` list calls.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from ocrpipe import naming
from ocrpipe.settings import Settings
from ocrpipe.storage import ObjectInfo, ObjectStore


@dataclass(frozen=True)
class DocumentObjects:
    """What the two listings found for one input name."""

    name: str
    source: ObjectInfo | None  # the input object, None once it is deleted
    generations: Mapping[int, Mapping[str, ObjectInfo]]  # generation -> {object name: info}
    latest: ObjectInfo | None = None  # its <key>/@latest.json

    @property
    def generation(self) -> int | None:
        """The current generation, chosen like :func:`ocrpipe.operations.status.document_status`."""
        if self.source is not None:
            return self.source.generation
        return max(self.generations) if self.generations else None

    def doc(self, settings: Settings, generation: int) -> naming.DocumentRef:
        return naming.DocumentRef(settings.input_bucket, self.name, generation)

    def latest_finished(self, settings: Settings) -> naming.DocumentRef | None:
        """The newest generation that has ``document.md``."""
        for generation in sorted(self.generations, reverse=True):
            doc = self.doc(settings, generation)
            if naming.document_markdown_name(doc) in self.generations[generation]:
                return doc
        return None


def scan_prefix(
    store: ObjectStore, settings: Settings, prefix: str, names: Collection[str] | None = None
) -> list[DocumentObjects]:
    """Every document whose input name starts with ``prefix`` (only ``names``, if given),
    with its output objects: one listing of each bucket."""
    wanted = set(names) if names is not None else None
    inputs = store.list(settings.input_bucket, prefix)
    outputs = store.list(settings.output_bucket, naming.key_prefix(prefix))
    by_key: dict[str, dict[int, dict[str, ObjectInfo]]] = {}
    latest: dict[str, ObjectInfo] = {}
    for info in outputs:
        parts = naming.split_output_name(info.name)
        if parts is not None:
            key, generation, _ = parts
            by_key.setdefault(key, {}).setdefault(generation, {})[info.name] = info
        elif info.name.endswith(naming.LATEST_SUFFIX):
            latest[info.name.removesuffix(naming.LATEST_SUFFIX)] = info
    found: dict[str, DocumentObjects] = {}
    for source in inputs:
        key = naming.name_key(source.name)
        generations = by_key.pop(key, {})
        if wanted is None or source.name in wanted:
            found[source.name] = DocumentObjects(source.name, source, generations, latest.get(key))
    for key, generations in by_key.items():  # output whose input is gone
        name = naming.key_to_name(key)
        if name is None or not name.startswith(prefix) or name in found:
            continue
        if wanted is None or name in wanted:
            found[name] = DocumentObjects(name, None, generations, latest.get(key))
    return [found[name] for name in sorted(found)]
