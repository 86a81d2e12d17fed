"""The GCS proxy's permission map, pinned over a grid of requests.

:func:`~ocrpipe.local.iam.gcs_permissions.required` decides which permissions a JSON API call
needs; a wrong answer grants a service more than production would, or refuses what it
needs. The grid crosses every method with every API root (plain, upload, download, and
roots the proxy must refuse) and every path shape GCS has (the bucket list, a bucket, its
objects, an object, rewrite and copy, compose, and shapes the proxy does not map), and each
of those with the query parameters and JSON metadata that change the answer (upload names,
generation preconditions, resumable sessions, list prefixes, compose sources).

The expected answers live in ``gcs_permission_map.txt``, one line per request whose answer
is not the plain refusal ``Unmapped("METHOD /path")``; every request of the grid missing
from it must get exactly that refusal. Regenerate the file (and read its diff) with
``python tests/test_gcs_permission_map.py`` only when a change of the map is meant.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from ocrpipe.local.iam.gcs_permissions import Plan, Unmapped, required

EXPECTED = Path(__file__).with_name("gcs_permission_map.txt")
PROJECT = "proj"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
ROOTS = ("storage/v1", "upload/storage/v1", "download/storage/v1", "batch/storage/v1", "")
SHAPES = (
    "",
    "b",
    "b/",
    "b/in",
    "b/in/",
    "b/in/iam",
    "b/in/o",
    "b/in/o/",
    "b/in/o/doc%2Fp%201.png",
    "b/in/o/a/b",
    "b/in/o/doc/acl",
    "b/in/o/doc/rewriteTo/b/out/o/copy%2F1",
    "b/in/o/doc/copyTo/b/out/o/copy",
    "b/in/o/doc/rewriteTo/b/out/x/copy",
    "b/in/o/doc/moveTo/o/copy",
    "b/in/o/doc/rewriteTo/b/out/o/copy/extra",
    "b/in/o/doc/compose",
    "b/in/o/doc/compose/x",
    "b//o/doc",
    "x/in/o/doc",
)
QUERIES: tuple[Mapping[str, str], ...] = (
    {},
    {"name": "doc/q"},
    {"name": ""},
    {"ifGenerationMatch": "0"},
    {"ifGenerationMatch": "7"},
    {"ifGenerationMatch": "07"},
    {"name": "doc/q", "ifGenerationMatch": "0"},
    {"upload_id": "session-1"},
    {"upload_id": ""},
    {"prefix": "doc/pages/"},
    {"uploadType": "resumable", "name": "doc/q"},
)
BODIES: tuple[Any, ...] = (
    None,
    {},
    {"name": "doc/q"},
    {"name": "doc/b"},
    {"name": ""},
    {"name": 5},
    {"name": "bad\udc80"},
    {"sourceobjects": [{"name": "doc/s1"}, {"name": "doc/s2"}]},
    {"sourceobjects": [{}]},
    {"sourceobjects": [{"name": "bad\udc80"}]},
    ["doc/q"],  # JSON metadata that is not an object
)


def grid() -> Iterator[tuple[str, str, Mapping[str, str], Any]]:
    for method, root, shape, query, body in itertools.product(
        METHODS, ROOTS, SHAPES, QUERIES, BODIES
    ):
        path = "/" + "/".join(p for p in (root, shape) if p)
        yield method, path, query, body


def answer(method: str, path: str, query: Mapping[str, str], body: Any) -> str | None:
    """What ``required`` says, as text; None for the plain ``Unmapped("METHOD /path")``."""
    try:
        plan = required(method, path.encode("latin-1"), query, PROJECT, body)
    except Unmapped as exc:
        if type(exc) is Unmapped and str(exc) == f"{method} {path}":
            return None
        return f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # pinned too: a change here changes what the proxy answers
        return f"{type(exc).__name__}"
    return describe(plan)


def describe(plan: Plan) -> str:
    checks = [f"{c.permission} {c.resource}" for c in plan.checks]
    checks += [f"list_prefix={c.list_prefix!r}" for c in plan.checks if c.list_prefix is not None]
    if plan.write is not None:
        write = plan.write
        checks.append(f"write {write.bucket} {write.name!r} gen={write.if_generation_match}")
    if plan.resumable_session is not None:
        checks.append(f"session {plan.resumable_session}")
    return " | ".join(checks) or "nothing"


def answers() -> list[str]:
    """One line per request whose answer is not the plain refusal, written short: ``*`` for
    the query (or the body) when every variant of it gets the same answer."""
    found: dict[tuple[str, str], dict[tuple[str, str], str | None]] = {}
    for method, path, query, body in grid():
        query_text = "?" + "&".join(f"{k}={v}" for k, v in query.items())
        variants = found.setdefault((method, path), {})
        variants[query_text, json.dumps(body)] = answer(method, path, query, body)
    lines = []
    for (method, path), variants in found.items():
        if len(set(variants.values())) == 1:
            lines += _lines(f"{method} {path} * *", next(iter(variants.values())))
            continue
        for query_text in dict.fromkeys(q for q, _ in variants):
            by_body = {b: a for (q, b), a in variants.items() if q == query_text}
            if len(set(by_body.values())) == 1:
                lines += _lines(f"{method} {path} {query_text} *", next(iter(by_body.values())))
                continue
            for body_text, found_answer in by_body.items():
                lines += _lines(f"{method} {path} {query_text} {body_text}", found_answer)
    return lines


def _lines(request: str, found: str | None) -> list[str]:
    return [] if found is None else [f"{request} -> {found}"]


def expected() -> dict[str, str]:
    lines = EXPECTED.read_text(encoding="utf-8").splitlines()
    return dict(line.split(" -> ", 1) for line in lines if line)


@pytest.mark.parametrize(
    ("raw_path", "query", "body"),
    [
        (b"/storage/v1/b/in/o/doc/compose", {}, ["doc/q"]),
        (b"/storage/v1/b/in/o/doc/compose", {}, {"sourceobjects": ["doc/q"]}),
        (b"/storage/v1/b/in/o/doc/compose", {}, {"sourceobjects": "doc/q"}),
        (b"/upload/storage/v1/b/in/o", {"uploadType": "multipart"}, ["doc/q"]),
        (b"/upload/storage/v1/b/in/o", {"uploadType": "multipart"}, "doc/q"),
    ],
)
def test_metadata_of_the_wrong_shape_is_refused_not_a_crash(
    raw_path: bytes, query: dict[str, str], body: Any
) -> None:
    """Metadata that is JSON but not the object GCS reads (or a compose whose sources are
    not objects) is refused like any call the proxy cannot map: the proxy answers 403 and
    logs it, instead of failing with a 500 from inside the map."""
    with pytest.raises(Unmapped, match="metadata"):
        required("POST", raw_path, query, PROJECT, body)


def test_every_request_of_the_grid_gets_its_pinned_answer() -> None:
    assert answers() == EXPECTED.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "needs"),
    [
        ("GET", "/storage/v1/b", {}, None, "storage.buckets.list projects/proj"),
        (
            "POST",
            "/upload/storage/v1/b/in/o",
            {"name": "d/1"},
            None,
            "storage.objects.create projects/_/buckets/in/objects/d/1 | write in 'd/1' gen=None",
        ),
        (
            "GET",
            "/download/storage/v1/b/in/o/d%2F1",
            {},
            None,
            "storage.objects.get projects/_/buckets/in/objects/d/1",
        ),
        (
            "POST",
            "/storage/v1/b/in/o/d/compose",
            {"ifGenerationMatch": "0"},
            {"sourceobjects": [{"name": "s"}]},
            "storage.objects.get projects/_/buckets/in/objects/s"
            " | storage.objects.create projects/_/buckets/in/objects/d | write in 'd' gen=0",
        ),
        ("GET", "/storage/v1/b/in/iam", {}, None, None),
    ],
)
def test_the_answers_read_as_gcs_documents_them(
    method: str, path: str, query: Mapping[str, str], body: Any, needs: str | None
) -> None:
    assert answer(method, path, query, body) == needs


def test_the_grid_reaches_every_kind_of_answer() -> None:
    found = "\n".join(expected().values())
    for kind in (
        "storage.buckets.create",
        "storage.buckets.get",
        "storage.buckets.update",
        "storage.buckets.delete",
        "storage.objects.list",
        "storage.objects.update",
        "list_prefix=",
        "write out 'copy/1' gen=0",
        "session session-1",
        "Ambiguous: ifGenerationMatch='07'",
        "Ambiguous: an object name that is not valid Unicode",
        "Unmapped: an upload must name exactly one object",
    ):
        assert kind in found, kind


if __name__ == "__main__":
    EXPECTED.write_text("".join(f"{line}\n" for line in answers()), "utf-8")
    sys.exit(0)
