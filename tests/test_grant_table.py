"""docs/DEPLOY.md's table "Who may do what" says what ocrpipe/iam.json grants.

iam.json is the one owner of the pipeline's bucket, topic and subscription grants; the table
is the prose a reader sees. It drifted once (no documents-topic publishers, no
``@latest.json`` for the splitter), so each row is read back and compared: every bucket
grant's role (or "none"), the condition's title and every object its expression allows, and
exactly the topics and subscriptions granted (Pub/Sub roles only in that column).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from ocrpipe.local.iam.policy import GRANTS_FILE
from ocrpipe.topology import TOPOLOGY_FILE
from tests.terraform import TERRAFORM

DEPLOY = Path(__file__).resolve().parents[1] / "docs" / "DEPLOY.md"
GRANTS = json.loads(GRANTS_FILE.read_text(encoding="utf-8"))
TOPOLOGY = json.loads(TOPOLOGY_FILE.read_text(encoding="utf-8"))
BUCKETS = ("input", "work", "output")
COLUMNS = ("identity", "input", "work", "output", "pubsub")
# The row of each identity of iam.json, by the words its first cell starts with.
ROWS = {"splitter": "splitter", "worker": "worker", "eventarc": "Eventarc trigger",
        "operator": "operators", "reconciler": "reconciler"}  # fmt: skip
PUBSUB_ROLES = {"roles/pubsub.publisher": "publisher", "roles/pubsub.subscriber": "subscriber"}


def table() -> dict[str, dict[str, str]]:
    """The rows of "Who may do what", by identity of iam.json."""
    text = DEPLOY.read_text(encoding="utf-8")
    section = text[text.index("## Who may do what") :]
    section = section[: section.index("\n## ")]  # the table of this section, not the next
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["identity", "input bucket", "work bucket", "output bucket", "Pub/Sub"]
    rows = {}
    for line in lines[2:]:
        cells = dict(zip(COLUMNS, (c.strip() for c in line.strip("|").split("|")), strict=True))
        for identity, first in ROWS.items():
            if cells["identity"].startswith(first):
                rows[identity] = cells
    return rows


def grants(identity: str) -> list[dict[str, Any]]:
    return [g for g in GRANTS["identities"][identity]["grants"] if not g.get("local_only")]


def allowed_objects(expression: str) -> list[str]:
    """The object names a condition lets through: its ``endsWith("...")`` suffixes."""
    return re.findall(r'endsWith\(\\?"/?([^"\\]+)\\?"\)', expression)


@pytest.mark.parametrize("identity", list(ROWS))
def test_each_bucket_cell_names_the_granted_role_and_what_its_condition_allows(
    identity: str,
) -> None:
    row = table()[identity]
    by_bucket = {g["bucket"]: g for g in grants(identity) if "bucket" in g}
    for bucket in BUCKETS:
        cell = row[bucket]
        grant = by_bucket.get(bucket)
        if grant is None:
            assert cell == "none", (identity, bucket, cell)
            continue
        role = grant["role"].removeprefix("roles/storage.")
        assert cell.startswith(role), (identity, bucket, cell)
        if "condition" in grant:
            assert f"`{grant['condition']['title']}`" in cell, (identity, bucket, cell)
            for name in allowed_objects(grant["condition"]["expression"]):
                assert name in cell, f"{identity}'s {bucket} cell omits {name}: {cell}"


@pytest.mark.parametrize("identity", list(ROWS))
def test_the_pubsub_cell_names_exactly_the_topics_and_subscriptions_granted(
    identity: str,
) -> None:
    cell = table()[identity]["pubsub"]
    expected = set()
    for grant in grants(identity):
        kind = "topic" if "topic" in grant else "subscription" if "subscription" in grant else ""
        if kind:
            expected.add((PUBSUB_ROLES[grant["role"]], TOPOLOGY[grant[kind]]))
    said = set()
    for role, names in re.findall(
        r"(publisher|subscriber) on ((?:`[^`]+`(?:,| and| or)? ?)+)", cell
    ):
        said |= {(role, name) for name in re.findall(r"`([^`]+)`", names)}
    assert said == expected, cell
    if not expected:
        assert cell.startswith("none"), cell


def test_the_conditions_summary_in_prose_names_every_object_too() -> None:
    """The paragraph above the table repeats what the splitter may create in output."""
    text = DEPLOY.read_text(encoding="utf-8")
    summary = text[text.index("Access, in short") : text.index("## Who may do what")]
    (grant,) = [g for g in grants("splitter") if g.get("bucket") == "output"]
    for name in allowed_objects(grant["condition"]["expression"]):
        assert name in summary, name


def test_iam_tf_points_at_the_table_instead_of_repeating_it() -> None:
    """terraform/iam.tf's header once repeated the bucket and topic grants in prose, and
    drifted: it may list only the grants iam.json does not hold (invokers, build)."""
    header = (TERRAFORM / "iam.tf").read_text(encoding="utf-8").split("\n\n")[0]
    assert "Who may do what" in header and "tests/test_grant_table.py" in header
    listed = re.findall(r"^#   (\w+)\s+(.*)$", header, flags=re.MULTILINE)
    assert listed
    for identity, says in listed:
        assert not re.search(r"\b(input|output|work|topic|subscription|bucket)\b", says), (
            identity,
            says,
        )
