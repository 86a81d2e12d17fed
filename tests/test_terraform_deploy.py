"""Structural checks of what a first deployment needs beyond the topology: page images
that outlive every message that can still name them, and a splitter build that can read
its own source (see tests/test_terraform.py for how the HCL is parsed)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import hcl2
import pytest

from ocrpipe.topology import TOPOLOGY_FILE, load_topology
from tests.test_terraform import _clean

TERRAFORM = Path(__file__).resolve().parents[1] / "terraform"
DAY_S = 86400


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    """Every .tf file merged: {"resource": {type: {name: body}}, "variable": {...}, ...}."""
    merged: dict[str, Any] = {"resource": {}, "data": {}, "variable": {}, "locals": {}}
    merged["terraform"] = []
    for path in sorted(TERRAFORM.glob("*.tf")):
        with path.open(encoding="utf-8") as handle:
            doc = _clean(hcl2.load(handle))
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    merged[kind].setdefault(rtype, {}).update(named)
        for block in doc.get("variable", []):
            merged["variable"].update(block)
        for block in doc.get("locals", []):
            merged["locals"].update(block)
        merged["terraform"].extend(doc.get("terraform", []))
    return merged


def topology_seconds(expr: str) -> int:
    """``${local.topology.KEY}s`` -> the number topology.json gives KEY."""
    match = re.fullmatch(r"\$\{local\.topology\.(\w+)\}s", expr)
    assert match, f"{expr!r} does not come from ocrpipe/topology.json"
    value: int = json.loads(TOPOLOGY_FILE.read_text(encoding="utf-8"))[match.group(1)]
    return value


def test_page_images_outlive_every_message_that_can_name_them(tf: dict[str, Any]) -> None:
    subs = tf["resource"]["google_pubsub_subscription"]
    # A page message may wait its full retention on the push subscription, be dead-lettered
    # and wait again on the dead-letter subscription, then be replayed: its image must
    # still be there, with a margin for the replay itself.
    pages_s = topology_seconds(subs["pages_push"]["message_retention_duration"])
    dead_s = topology_seconds(subs["dead_letter_pull"]["message_retention_duration"])
    rule = tf["resource"]["google_storage_bucket"]["work"]["lifecycle_rule"][0]
    assert rule["action"][0]["type"] == "Delete"
    assert rule["condition"][0]["age"] == "${local.topology.page_image_retention_days}"
    age_s = load_topology().page_image_retention_days * DAY_S
    assert age_s >= pages_s + dead_s + DAY_S, (age_s, pages_s, dead_s)
